"""Serverless inference functions: capture a notebook cell's handler, bundle it, deploy and serve it."""
