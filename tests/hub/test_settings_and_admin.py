"""Settings from the environment and the first admin account's credentials."""

from __future__ import annotations

import stat

import pytest

from stratolab.hub.admin import ensure_admin_credentials
from stratolab.settings import PlatformSettings


def test_defaults_and_overrides(tmp_path):
    s = PlatformSettings.from_env({"STRATOLAB_DATA_DIR": str(tmp_path)})
    assert s.port == 8000 and s.admin_user == "admin"
    assert s.hub_db_url == f"sqlite:///{tmp_path / 'jupyterhub.sqlite'}"
    assert s.platform_url == f"sqlite:///{tmp_path / 'platform.sqlite'}"
    pg = "postgresql://postgres@127.0.0.1:5432/x"
    s = PlatformSettings.from_env(
        {"STRATOLAB_PORT": "9000", "STRATOLAB_DB_URL": pg, "STRATOLAB_GPUS": "0, 1", "STRATOLAB_ADMIN_USER": "Boss"}
    )
    assert s.port == 9000 and s.hub_db_url == pg and s.platform_url == pg
    assert s.gpus == ("0", "1") and s.admin_user == "boss"
    assert PlatformSettings.from_env({"STRATOLAB_GPUS": ""}).gpus == ()


@pytest.mark.parametrize(
    "env, message",
    [
        ({"STRATOLAB_PORT": "eighty"}, "STRATOLAB_PORT"),
        ({"STRATOLAB_AUTH": "ldap"}, "STRATOLAB_AUTH"),
        ({"STRATOLAB_ISOLATION": "docker"}, "STRATOLAB_ISOLATION"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        PlatformSettings.from_env(env)


def test_generated_admin_password_is_private_and_stable(tmp_path):
    settings = PlatformSettings.from_env({"STRATOLAB_DATA_DIR": str(tmp_path / "data")})
    first = ensure_admin_credentials(settings)
    assert first.generated and len(first.password) >= 16
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(first.path.parent.stat().st_mode) == 0o700
    second = ensure_admin_credentials(settings)
    assert not second.generated and second.password == first.password


def test_admin_password_from_environment_is_not_stored(tmp_path):
    settings = PlatformSettings.from_env(
        {"STRATOLAB_DATA_DIR": str(tmp_path), "STRATOLAB_ADMIN_PASSWORD": "from-env-123"}
    )
    creds = ensure_admin_credentials(settings)
    assert creds.password == "from-env-123" and creds.path is None
    assert not settings.admin_password_file.exists()
