"""Login-to-lab-ready time: our hub versus a bare JupyterHub, side by side in one run.

One iteration, for each hub in turn: a browser-like client logs in through the login form, starts the
server (our hub: the spawn form with the CPU profile; the bare hub: its automatic spawn), follows the
hub until `/user/NAME/lab` answers 200 with JupyterLab's page, and fetches the Stratolab extension's
entry asset named in that page's config. The server is then stopped (not timed).

Baseline: stock JupyterHub with `SimpleLocalProcessSpawner` and `DummyAuthenticator`, the same
configurable-http-proxy and the same single-user environment. Ours runs twice: as `make run` starts it
(servers forked from the servers' fork-server) and with STRATOLAB_SERVER_FORKS=false (each server a
new process, as the bare hub's), so the fork-server's share shows. Prints JSON with medians and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from goals import at_most  # noqa: E402
from support import HubProcess, free_port, unique_name, user_env_for_tests  # noqa: E402

BARE_CONFIG = """
c = get_config()
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.db_url = "sqlite:///{data}/bare.sqlite"
c.JupyterHub.cookie_secret_file = "{data}/cookie_secret"
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{data}/homes/{{username}}"
c.Spawner.cmd = ["{user_env}/bin/jupyterhub-singleuser"]
c.Spawner.default_url = "/lab"
c.Spawner.args = {allow_root}
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = "bare-password"
c.Authenticator.allow_all = True
c.ConfigurableHTTPProxy.command = ["{chp}"]
c.ConfigurableHTTPProxy.pid_file = "{data}/proxy.pid"
"""

PAGE_CONFIG = re.compile(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', re.S)


class BareHub(HubProcess):
    """Stock JupyterHub: same process handling as HubProcess, its own config file."""

    def command(self) -> list[str]:
        config = self.data_dir / "bare_config.py"
        config.write_text(
            BARE_CONFIG.format(
                port=self.port,
                hub_port=free_port(),
                proxy_api_port=free_port(),
                data=self.data_dir,
                user_env=user_env_for_tests(),
                allow_root='["--allow-root"]' if os.geteuid() == 0 else "[]",
                chp=ROOT / "node_modules" / ".bin" / "configurable-http-proxy",
            )
        )
        return [sys.executable, "-m", "jupyterhub", "-f", str(config)]


def lab_ready_seconds(hub_url: str, name: str, password: str, profile: str | None) -> float:
    """Time from the login form's POST to the extension asset of a ready JupyterLab."""
    s = requests.Session()
    s.get(f"{hub_url}/hub/login")
    xsrf = next(c.value for c in s.cookies if c.name == "_xsrf")
    t0 = time.perf_counter()
    r = s.post(
        f"{hub_url}/hub/login",
        data={"username": name, "password": password, "_xsrf": xsrf},
        allow_redirects=False,
    )
    assert r.status_code == 302, r.status_code
    if profile:
        xsrf = next(c.value for c in s.cookies if c.name == "_xsrf" and c.path == "/hub/")
        s.post(f"{hub_url}/hub/spawn", data={"profile": profile, "_xsrf": xsrf}, allow_redirects=False)
    else:
        s.get(f"{hub_url}/hub/spawn", allow_redirects=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        r = s.get(f"{hub_url}/user/{name}/lab")
        m = PAGE_CONFIG.search(r.text) if r.status_code == 200 else None
        if m:
            config = json.loads(m.group(1))
            ext = next(e for e in config["federated_extensions"] if e["name"] == "stratolab-lab")
            base = config["fullLabextensionsUrl"].rstrip("/")
            asset = s.get(f"{hub_url}{base}/{ext['name']}/{ext['load']}")
            assert asset.status_code == 200, asset.status_code
            return time.perf_counter() - t0
        time.sleep(0.05)
    raise RuntimeError(f"lab of {name} never became ready")


def stop_server(hub: HubProcess, token: str, name: str) -> None:
    headers = {"Authorization": f"token {token}"}
    requests.delete(f"{hub.api}/users/{name}/server", headers=headers)
    for _ in range(300):
        model = requests.get(f"{hub.api}/users/{name}", headers=headers).json()
        if "" not in model.get("servers", {}):
            return
        time.sleep(0.1)


def bare_admin_token(hub: HubProcess) -> str:
    from stratolab.client.hub import request_token

    return request_token(hub.url, "benchadmin", "bare-password")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spawns", type=int, default=5, help="spawns per hub (default 5)")
    parser.add_argument(
        "--keep-logs",
        type=Path,
        metavar="DIR",
        help="copy both hubs' logs (ours.log, bare.log) into DIR, to read where a login's time went",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="stratolab-bench-") as tmp:
        tmp = Path(tmp)
        homes = Path(tempfile.mkdtemp(prefix="stratolab-bench-homes-", dir="/tmp"))
        os.chmod(homes, 0o755)
        ours = HubProcess(tmp / "ours", {"STRATOLAB_HOME_ROOT": str(homes), "STRATOLAB_GPUS": ""})
        unforked = HubProcess(tmp / "unforked", {"STRATOLAB_HOME_ROOT": str(homes), "STRATOLAB_GPUS": "",
                                                 "STRATOLAB_SERVER_FORKS": "false"})
        bare = BareHub(tmp / "bare", {}, port=free_port())
        (tmp / "bare").mkdir()
        ours.start()
        unforked.start()
        bare.start()
        try:
            # users exist before timing (sign-up and approval are not part of a login)
            our_users = [ours.create_user() for _ in range(args.spawns)]
            unforked_users = [unforked.create_user() for _ in range(args.spawns)]
            bare_users = [unique_name("bare") for _ in range(args.spawns)]
            bare_token = bare_admin_token(bare)
            samples: dict[str, list[float]] = {"stratolab": [], "stratolab_new_processes": [], "bare_jupyterhub": []}
            for i in range(args.spawns):
                u = our_users[i]
                samples["stratolab"].append(lab_ready_seconds(ours.url, u.name, u.password, "cpu"))
                stop_server(ours, ours.admin_token, u.name)
                u = unforked_users[i]
                samples["stratolab_new_processes"].append(lab_ready_seconds(unforked.url, u.name, u.password, "cpu"))
                stop_server(unforked, unforked.admin_token, u.name)
                b = bare_users[i]
                samples["bare_jupyterhub"].append(lab_ready_seconds(bare.url, b, "bare-password", None))
                stop_server(bare, bare_token, b)
        finally:
            ours.stop()
            unforked.stop()
            bare.stop()
            if args.keep_logs:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for name, hub in (("ours", ours), ("unforked", unforked), ("bare", bare)):
                    if hub.log_path and hub.log_path.exists():
                        shutil.copyfile(hub.log_path, args.keep_logs / f"{name}.log")
            subprocess.run(["rm", "-rf", str(homes)])
            if os.geteuid() == 0:
                for u in [*locals().get("our_users", []), *locals().get("unforked_users", [])]:
                    subprocess.run(["userdel", f"jupyter-{u.name}"], capture_output=True)

    med_ours = statistics.median(samples["stratolab"])
    med_unforked = statistics.median(samples["stratolab_new_processes"])
    med_bare = statistics.median(samples["bare_jupyterhub"])
    print(
        json.dumps(
            {
                "benchmark": "login_to_lab_ready",
                "spawns": args.spawns,
                "isolation": "system-users" if os.geteuid() == 0 else "shared",
                "stratolab_median_s": round(med_ours, 3),
                "stratolab_new_processes_median_s": round(med_unforked, 3),
                "bare_jupyterhub_median_s": round(med_bare, 3),
                "ratio_ours_over_bare": round(med_ours / med_bare, 3),
                "ratio_ours_new_processes_over_bare": round(med_unforked / med_bare, 3),
                "ratio_forked_over_new_processes": round(med_ours / med_unforked, 3),
                "goals": [
                    at_most("login to lab: ours / bare JupyterHub", round(med_ours / med_bare, 3), 0.6),
                    at_most("login to lab: ours, median (s)", round(med_ours, 3), 3.0),
                ],
                "samples_s": {k: [round(x, 3) for x in v] for k, v in samples.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
