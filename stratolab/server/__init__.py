"""Stratolab's Jupyter server extension: the routes the Stratolab lab panel calls in a user's server
(its status, and the functions, scheduler, triggers and usage services reached through the server).

Enabled by jupyter-config/server-config/stratolab.json (installed into etc/jupyter with the wheel).
"""

from __future__ import annotations

from typing import Any

from jupyter_server.utils import url_path_join

from .functions_proxy import FunctionsProxyHandler
from .handlers import StatusHandler
from .terminal import configure_terminals


def _link_jupyter_server_extension(serverapp: Any) -> None:
    configure_terminals(serverapp)


def _load_jupyter_server_extension(serverapp: Any) -> None:
    web_app = serverapp.web_app
    base_url = web_app.settings["base_url"]
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base_url, "stratolab", "status"), StatusHandler),
            (url_path_join(base_url, "stratolab", "functions", "(.*)"), FunctionsProxyHandler),
            (url_path_join(base_url, "stratolab", "scheduler", "(.*)"), FunctionsProxyHandler,
             {"service_path": "/services/scheduler/", "prefixes": ("api/",), "label": "scheduler"}),
            (url_path_join(base_url, "stratolab", "triggers", "(.*)"), FunctionsProxyHandler,
             {"service_path": "/services/triggers/", "prefixes": ("api/",), "label": "triggers"}),
            (url_path_join(base_url, "stratolab", "usage", "(.*)"), FunctionsProxyHandler,
             {"service_path": "/services/usage/", "prefixes": ("api/",), "label": "usage"}),
            (url_path_join(base_url, "stratolab", "pipelines", "(.*)"), FunctionsProxyHandler,
             {"service_path": "/services/pipelines/", "prefixes": ("api/",), "label": "pipelines"}),
        ],
    )
    serverapp.log.info(
        "Stratolab server extension loaded: %sstratolab/status, %sstratolab/functions/, %sstratolab/scheduler/, "
        "%sstratolab/triggers/, %sstratolab/usage/", base_url, base_url, base_url, base_url, base_url)
