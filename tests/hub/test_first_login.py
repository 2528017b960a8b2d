"""What the README says happens after the first login: with no GPUs there is one environment and the hub
starts it straight away; with GPUs a form asks which to start. And what it says set-up installs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = " ".join((ROOT / "README.md").read_text().split())


def test_without_gpus_login_goes_straight_to_the_server(hub_factory):
    assert "On a machine without GPUs there is one environment (CPU), so the hub starts it straight away" in README
    hub = hub_factory(STRATOLAB_GPUS="")
    user = hub.create_user()
    browser = hub.browser_session(user.name, user.password)
    r = browser.get(f"{hub.url}/hub/spawn", allow_redirects=False)
    assert r.status_code == 302 and "spawn_form" not in r.text, (r.status_code, r.text[:500])
    assert "/hub/spawn-pending/" in r.headers["Location"] or f"/user/{user.name}/" in r.headers["Location"]
    hub.wait_ready(user)
    hub.stop_server(user)


def test_with_gpus_a_form_asks_which_environment(hub):
    assert "with GPUs (or a profiles file with several profiles" in README
    user = hub.create_user()
    browser = hub.browser_session(user.name, user.password)
    r = browser.get(f"{hub.url}/hub/spawn")
    assert r.status_code == 200 and 'id="spawn_form"' in r.text
    assert 'value="cpu"' in r.text and 'value="gpu-1"' in r.text


def test_the_readme_names_the_set_up_defaults():
    spec = importlib.util.spec_from_file_location("build_env", ROOT / "tools" / "build_env.py")
    build_env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_env)
    assert f"default `{build_env.DEFAULT_TORCH_CPU_WHEELS}`" in README
    assert f"default `{build_env.DEFAULT_TORCH_CPU_INDEX}`" in README
    for key in ("cafile", "registry", "https-proxy", "proxy", "strict-ssl"):
        assert f"`{key}`" in README
