"""Stratolab: a self-hosted managed notebook platform on JupyterHub."""
