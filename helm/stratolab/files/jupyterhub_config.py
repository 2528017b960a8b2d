# JupyterHub configuration of a Stratolab hub in the Helm chart (mounted from the hub ConfigMap).
# The chart sets STRATOLAB_BACKEND=kubernetes, so configure_hub composes the Kubernetes mode
# (stratolab/hub/kube_config.py) from the mounted values.yaml and the Secret's environment.
from stratolab.hub.config import configure_hub

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)
configure_hub(c)
