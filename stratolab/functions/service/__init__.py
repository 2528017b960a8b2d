"""The functions service: a JupyterHub service that deploys, routes and observes functions."""
