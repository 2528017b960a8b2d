"""The runs whose agents may call the scheduler, and the token each agent proves itself with.

A run's token is HMAC-SHA256(executor secret, run key): the scheduler can check it without storing
it, and it grants exactly one run's routes. The secret is STRATOLAB_EXECUTOR_SECRET (the chart keeps
it across upgrades, so a restarted scheduler still recognises tokens it never stored); unset, it is
random per process, so a restarted scheduler refuses the pods of its previous life, whose runs its
recovery has already closed.

The executor registers a run when its Job exists and removes it when the run has ended; the agent
routes (service/executor_handlers.py) find it here. Everything runs on the service's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from stratolab.errors import NotFound, StratolabError
from stratolab.jobs.executor import RunSpec
from stratolab.platform.tokens import sign, verify


def executor_secret(environ: Mapping[str, str] | None = None) -> bytes:
    """The secret as the scheduler's settings say (stratolab.jobs.kube.settings, `executor_secret`)."""
    from stratolab.jobs.kube.settings import KubernetesJobsSettings

    return KubernetesJobsSettings(environ=environ).secret()


def run_token(secret: bytes, key: str) -> str:
    return sign(secret, key)


@dataclass
class AgentRun:
    """A run whose agent is expected: where its files go, what it is told, whether it should stop."""

    spec: RunSpec
    #: the run's variables as the pod sees them (paths as $(STRATOLAB_WORKDIR)/...)
    run_env: dict[str, str]
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    stop_requested: bool = False
    #: loop time of the agent's last call (a sign of life, shown in errors)
    last_seen: float | None = None


class AgentRuns:
    def __init__(self, secret: bytes):
        self._secret = secret
        self._runs: dict[str, AgentRun] = {}

    def token_for(self, key: str) -> str:
        return run_token(self._secret, key)

    def register(self, spec: RunSpec, run_env: dict[str, str]) -> AgentRun:
        run = AgentRun(spec, dict(run_env))
        self._runs[spec.key] = run
        return run

    def remove(self, key: str, run: AgentRun | None = None) -> None:
        """Forget `key` (only if it is still `run`, when given: a newer start of the key stays)."""
        if run is None or self._runs.get(key) is run:
            self._runs.pop(key, None)

    def get(self, key: str) -> AgentRun | None:
        return self._runs.get(key)

    def __len__(self) -> int:
        return len(self._runs)

    def authorize(self, key: str, token: str | None) -> AgentRun:
        """The run `key` if `token` is its token. The token is checked first, so that without one no
        caller learns which runs exist: a wrong token is 403 whether or not the run is known."""
        if not token:
            raise StratolabError("authentication required: send the run's token (Authorization: token ...)",
                                 status=401)
        if not verify(self._secret, key, token):
            raise StratolabError("this token is not the token of this run", status=403)
        run = self._runs.get(key)
        if run is None:
            raise NotFound(f"the scheduler expects no agent for run {key!r} (it ended, or the scheduler restarted)")
        run.last_seen = asyncio.get_running_loop().time()
        return run
