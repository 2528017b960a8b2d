# Configuration file for jupyterhub-idle-culler, run as a hub-managed service (see culling.py).
import os

from stratolab.hub.culling import make_gpu_aware_arbiter

c = get_config()  # noqa: F821 (provided by traitlets when loading this file)
c.IdleCuller.cull_arbiter_hook = make_gpu_aware_arbiter(
    int(os.environ.get("STRATOLAB_CULL_GPU_TIMEOUT", "900"))
)
