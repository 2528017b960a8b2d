# JupyterHub configuration of a Stratolab deployment on one machine.
# Everything is composed in the `stratolab` package; settings come from STRATOLAB_* variables
# (see README.md). Add deployment-specific overrides below the call.
from stratolab.hub.config import configure_hub

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)
configure_hub(c)
