"""The baseline app for bench/http_load.py: one trivial JSON route."""
from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/ping")
def ping():
    return jsonify({"ok": True})
