"""Where the functions service runs function versions: the classes `FunctionsService.backend_class`
chooses from (`local`, `knative`, or the import string of another `BackendChoice`).

A choice makes its backend in two steps: `prepare` before the event loop starts (the local backend's
fork-server imports the frameworks there), `open` on the loop (the Knative backend's cluster client).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stratolab.functions.backend import FunctionBackend
from stratolab.functions.knative.config import KnativeSettings
from stratolab.platform.service_app import Part, SettingError

if TYPE_CHECKING:
    from stratolab.functions.service.app import FunctionsService


class BackendChoice(Part):
    """A kind of backend, with its own settings."""

    def prepare(self, service: FunctionsService) -> None:
        """What must happen before the event loop starts."""

    async def open(self, service: FunctionsService) -> FunctionBackend:
        raise NotImplementedError

    def runtime_secret(self) -> str | None:
        """The secret revision pods' bundle tokens are signed with (None: no runtime bundle route)."""
        return None


class LocalFunctions(BackendChoice):
    """Worker processes on this machine, forked from a fork-server that imported the frameworks."""

    def prepare(self, service: FunctionsService) -> None:
        self.backend = service.local_backend()

    async def open(self, service: FunctionsService) -> FunctionBackend:
        return self.backend


class KnativeFunctions(BackendChoice):
    """A Knative Service per function in the cluster (credentials of this pod, or ~/.kube/config)."""

    settings_class = KnativeSettings
    settings: KnativeSettings

    def prepare(self, service: FunctionsService) -> None:
        if not self.settings.runtime_secret:
            raise SettingError("the knative backend needs STRATOLAB_RUNTIME_SECRET "
                               "(--KnativeSettings.runtime_secret): it signs the bundle tokens")

    async def open(self, service: FunctionsService) -> FunctionBackend:
        from stratolab.functions.knative.backend import KnativeBackend
        from stratolab.kube.api import KubeClient

        config = self.settings.knative_config()
        return KnativeBackend(await KubeClient.from_environment(config.namespace), config)

    def runtime_secret(self) -> str | None:
        return self.settings.runtime_secret or None


#: the short names of the built-in choices
BACKENDS = {
    "local": f"{__name__}.LocalFunctions",
    "knative": f"{__name__}.KnativeFunctions",
}
