"""Stratolab: a self-hosted managed notebook platform on JupyterHub.

In a notebook: `stratolab.record(name, value)` records a result (scrapbook-compatible),
`stratolab.report(step, value)` an intermediate value an AutoML search may prune on, and
`stratolab.save_model(model, handler=predict)` the trained model with its handler ("Deploy best").
"""

_TRIAL_API = {"record", "report", "save_model", "TrialPruned"}


def __getattr__(name: str):
    if name in _TRIAL_API:
        from stratolab.jobs.automl import trial_api

        return getattr(trial_api, name)
    raise AttributeError(f"module 'stratolab' has no attribute {name!r}")


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where JupyterLab finds the prebuilt Stratolab lab extension (built into stratolab/labextension)."""
    return [{"src": "labextension", "dest": "stratolab-lab"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The server extension serving the routes the lab extension calls (`GET stratolab/status`)."""
    return [{"module": "stratolab.server"}]
