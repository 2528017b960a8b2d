"""The hub: spawner, profiles, GPU assignment, authentication and the services wired into JupyterHub."""
