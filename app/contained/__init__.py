"""Runners that only ever run as `python -m app.contained.<name>` inside the sandbox. They import app.core and app.caffe (and pycaffe) only: never Flask, never the store."""
