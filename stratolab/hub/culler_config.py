# Configuration file for jupyterhub-idle-culler, run as a hub-managed service (see culling.py).
import os
from typing import TYPE_CHECKING

from stratolab.hub.culling import make_gpu_aware_arbiter

if TYPE_CHECKING:  # traitlets' loader puts get_config in this file's namespace when it loads it
    from traitlets.config import Config

    def get_config() -> Config: ...


c = get_config()
c.IdleCuller.cull_arbiter_hook = make_gpu_aware_arbiter(
    int(os.environ.get("STRATOLAB_CULL_GPU_TIMEOUT", "900"))
)
