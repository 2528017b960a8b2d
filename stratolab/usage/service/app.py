"""The usage service process: a tornado app started by JupyterHub as a managed service (or, on
Kubernetes, run by the chart and registered by URL).

It reads the usage ledger the hub, the scheduler and the functions service write (stratolab.db.usage_ledger),
prices it with the admin's price sheet, answers usage, bills and budget checks, and enforces budgets
while things run (enforce.py). Routes: openapi.py; prose: docs/usage.md.

Its settings (`python -m stratolab.usage.service.app --help-all`) are declared once on `UsageService`, each with
the environment variable it defaults to: the hub starts the service with those variables
(stratolab.hub.config.usage_service), the Helm chart sets them on its Deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from datetime import timedelta
from pathlib import Path

from jupyterhub.services.auth import HubOAuth
from tornado import ioloop
from traitlets import Bool, CaselessStrEnum, Float, Unicode

from stratolab.client.hubapi import HubAPI
from stratolab.db import ensure_schema, make_engine, session_factory
from stratolab.errors import StratolabError
from stratolab.platform.http_front import HTTPFront
from stratolab.platform.mail import SmtpConfig
from stratolab.platform.outbound import ENV as OUTBOUND_ENV
from stratolab.platform.outbound import OutboundPolicy
from stratolab.platform.service_app import EnvConfigurable, HubService, SettingError, until_stopped
from stratolab.usage.budgets import Budget, load_budgets, mails
from stratolab.usage.pricing import DEFAULT_SHEET, load_price_sheet
from stratolab.usage.service import handlers, metrics
from stratolab.usage.service.enforce import Enforcer
from stratolab.usage.service.kube_collector import KubeCollectorSettings, RunningCollector, start_collector
from stratolab.usage.service.openapi import OPENAPI
from stratolab.usage.service.state import UsageState
from stratolab.web import MAX_HEADER_BYTES, service_app

log = logging.getLogger("stratolab.usage")

#: seconds the hub's answers (tokens, users, groups) are reused
TOKEN_CACHE_S = 10
#: the largest request body (the API takes small JSON objects: a budget check); a larger one is a 413
MAX_BODY_SIZE = 1024 * 1024
HERE = Path(__file__).parent

ROUTE_HANDLERS = {
    "/api/usage": handlers.UsageHandler,
    "/api/bill": handlers.BillHandler,
    "/api/budgets": handlers.BudgetsHandler,
    "/api/check": handlers.CheckHandler,
    "/api/notifications": handlers.NotificationsHandler,
    "/api/notifications/{notification_id}/read": handlers.NotificationReadHandler,
    "/api/admin/summary": handlers.SummaryHandler,
    "/api/admin/summary.csv": handlers.SummaryCSVHandler,
    "/admin": handlers.AdminPageHandler,
    "/oauth_callback": handlers.OAuthCallbackHandler,
}


class UsageService(HubService):
    """Stratolab's usage service: usage, bills and budgets from the ledger, and their enforcement.

    Started as `python -m stratolab.usage.service.app`, as the hub and the Helm chart start it."""

    service_name, default_port = "usage", 10104
    classes = [KubeCollectorSettings, SmtpConfig]
    log_name = "usage"

    data_dir = Unicode("", help="The service's folder: prices.yaml and budgets.yaml there are read when no file "
                       "is named, and the login cookie's secret is kept there.").tag(
        config=True, env="STRATOLAB_USAGE_DIR")
    prices_file = Unicode("", help="The price sheet (YAML or JSON); empty: prices.yaml in the data dir, else the "
                          "built-in example sheet.").tag(config=True, env="STRATOLAB_USAGE_PRICES_FILE")
    budgets_file = Unicode("", help="The budgets (YAML or JSON); empty: budgets.yaml in the data dir, else none.").tag(
        config=True, env="STRATOLAB_USAGE_BUDGETS_FILE")
    groups_visible = Bool(True, help="Whether a user may read the usage of the groups they are a member of.").tag(
        config=True, env="STRATOLAB_USAGE_GROUPS_VISIBLE")
    enforce_every = Float(15.0, min=1.0, max=3600.0, help="Seconds between two rounds of budget enforcement.").tag(
        config=True, env="STRATOLAB_USAGE_ENFORCE_EVERY")
    lost_after = Float(300.0, min=30.0, max=7 * 86400.0, help="Seconds after which an open interval no producer has "
                       "seen is closed as lost.").tag(config=True, env="STRATOLAB_USAGE_LOST_AFTER")
    scheduler_url = Unicode("http://127.0.0.1:10102/services/scheduler/", help="The scheduler's API.").tag(
        config=True, env="STRATOLAB_USAGE_SCHEDULER_URL")
    functions_url = Unicode("http://127.0.0.1:10101/services/functions/", help="The functions service's API.").tag(
        config=True, env="STRATOLAB_USAGE_FUNCTIONS_URL")
    pipelines_url = Unicode("", help="The pipelines service's API, through which the pipeline runs of steps run by "
                            "Argo Workflows are stopped over a budget; empty: those steps are not stopped (local "
                            "steps are scheduler runs).").tag(config=True, env="STRATOLAB_USAGE_PIPELINES_URL")
    outbound_allow = Unicode("", help="Networks (comma-separated CIDRs) budget webhooks may reach besides public "
                             "addresses.").tag(config=True, env=OUTBOUND_ENV, default_text="none")
    backend = CaselessStrEnum(["local", "kubernetes"], "local", help="Where the ledger's intervals come from: "
                              "local (the hub, the scheduler and the functions service write them) or kubernetes "
                              "(the platform's pods too, read by this service: kube_collector.py).").tag(
        config=True, env="STRATOLAB_USAGE_BACKEND")

    def init_parts(self) -> None:
        self.kube_settings = KubeCollectorSettings(parent=self) if self.backend == "kubernetes" else None
        # the scheduler's SMTP settings (STRATOLAB_SMTP_*): budget notices are mailed through the same server
        self.smtp_config = SmtpConfig(parent=self)

    def configurables(self) -> list[EnvConfigurable]:
        return [self, self.smtp_config, *([self.kube_settings] if self.kube_settings is not None else [])]

    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        self.required("hub_api_token")
        try:
            self.outbound_policy = OutboundPolicy.from_env({OUTBOUND_ENV: self.outbound_allow})
        except ValueError as e:
            raise SettingError(f"{e} (--UsageService.outbound_allow)") from None
        self.sheet = self._load("prices_file", "prices.yaml", load_price_sheet, DEFAULT_SHEET)
        # webhooks checked against the outbound policy as the file is read: an internal URL stops the start
        self.budget_list: list[Budget] = self._load(
            "budgets_file", "budgets.yaml", lambda path: load_budgets(path, self.outbound_policy), [])
        self.smtp = self.smtp_config.smtp_settings()
        mailing = [b.name for b in self.budget_list if mails(b)]
        if mailing and self.smtp is None:
            # as the scheduler refuses a schedule's notify.email without a server: told at start, not lost later
            raise SettingError(f"budget {mailing[0]!r} sends e-mail (notify.email or notify.email_user) but no SMTP "
                               f"server is set: set STRATOLAB_SMTP_HOST (--SmtpConfig.host) or remove its e-mail "
                               f"(--UsageService.budgets_file)")

    def _load(self, name: str, default_name: str, loader, fallback):
        """A file setting, else the file of that name in the data dir, else `fallback`; a bad file stops
        the service at start with its error (which names the key)."""
        path = getattr(self, name) or ""
        if not path and self.data_dir and (Path(self.data_dir) / default_name).is_file():
            path = str(Path(self.data_dir) / default_name)
        if not path:
            return fallback
        try:
            return loader(path)
        except (OSError, ValueError, StratolabError) as e:
            raise SettingError(f"{path}: {getattr(e, 'message', e)} (--UsageService.{name})") from None

    def cookie_secret(self) -> bytes:
        """The login cookie's signing secret: kept in the data dir so a restart keeps admins logged in."""
        if not self.data_dir:
            return secrets.token_bytes(32)
        path = Path(self.data_dir) / "cookie_secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return bytes.fromhex(path.read_text().strip())

    def prepare(self) -> None:
        db_url = self.required("db_url")
        ensure_schema(db_url)
        self.sessions = session_factory(make_engine(db_url))

    def build_state(self) -> UsageState:
        hub_auth = HubOAuth(api_token=self.hub_api_token, cache_max_age=TOKEN_CACHE_S)
        return UsageState(sessions=self.sessions, hub_auth=hub_auth,
                          hub=HubAPI(hub_auth.api_url, self.hub_api_token, cache_s=TOKEN_CACHE_S),
                          sheet=self.sheet, budgets=self.budget_list, groups_visible=self.groups_visible)

    async def serve(self) -> None:
        state = self.build_state()
        enforcer = Enforcer(state, self.scheduler_url.rstrip("/") + "/", self.functions_url.rstrip("/") + "/",
                            outbound=self.outbound_policy, lost_after=timedelta(seconds=self.lost_after),
                            smtp=self.smtp, public_url=self.public_url,
                            pipelines_url=self.pipelines_url.rstrip("/") + "/" if self.pipelines_url else "")
        app = service_app("stratolab-usage", self.prefix, OPENAPI, ROUTE_HANDLERS, state,
                          metrics_registry=metrics.REGISTRY, cookie_secret=self.cookie_secret(),
                          template_path=str(HERE / "templates"), static_path=str(HERE / "static"),
                          static_url_prefix=f"{self.prefix}static/")
        # the API takes small JSON bodies: a larger one is a 413 before it is read (tornado's own server reads up
        # to 100 MB into memory, and beyond that drops the connection without an answer)
        server = HTTPFront(app, max_body_size=MAX_BODY_SIZE, max_header_size=MAX_HEADER_BYTES)
        await server.listen(self.port, address=self.ip)
        collector: RunningCollector | None = None
        if self.kube_settings is not None:
            collector = await start_collector(self.kube_settings, self.sessions, spot_label=self.sheet.spot_label)

        async def each_round() -> None:
            await enforcer.round()
            await state.db(lambda s: metrics.COUNTERS.refresh(s, state.sheet))

        loop = ioloop.PeriodicCallback(each_round, self.enforce_every * 1000)
        loop.start()
        ioloop.IOLoop.current().add_callback(each_round)
        log.info("usage service ready at http://%s:%s%s (%d budgets, prices in %s, %s)", self.ip, self.port,
                 self.prefix, len(self.budget_list), self.sheet.currency,
                 f"mail through {self.smtp.host}:{self.smtp.port}" if self.smtp else "no e-mail")
        await until_stopped()
        loop.stop()
        with contextlib.suppress(TimeoutError):  # mails under way get a moment, not the whole timeout
            await asyncio.wait_for(enforcer.settle(), 5)
        if collector is not None:
            await collector.stop()
        await server.close()


def main() -> None:
    UsageService.launch_instance()


if __name__ == "__main__":
    main()
