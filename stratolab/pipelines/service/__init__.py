"""The pipelines service: runs `.pipeline` files (stratolab/pipelines/engine.py) behind an HTTP API."""
