"""Stratolab: a self-hosted managed notebook platform on JupyterHub."""


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where JupyterLab finds the prebuilt Stratolab lab extension (built into stratolab/labextension)."""
    return [{"src": "labextension", "dest": "stratolab-lab"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The server extension serving the routes the lab extension calls (`GET stratolab/status`)."""
    return [{"module": "stratolab.server"}]
