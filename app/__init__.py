"""Layerbench: a DIGITS-style service for training Caffe nets with Python layers.

This package file imports nothing: sandboxed runners (``python -m
app.contained.train``) execute it first. The Flask app is ``app.web.create_app``.
"""

__version__ = "1.0.0"   # this service's version: DIGITS's "digits version" key carries it
