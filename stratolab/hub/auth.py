"""Authentication: jupyterhub-nativeauthenticator by default, OpenID Connect for production.

`StratolabNativeAuthenticator` keeps NativeAuthenticator's behaviour (bcrypt-hashed passwords, sign-up
that an admin approves at /hub/authorize) and makes sure the admin account exists with its password
from the first start, so the first login needs no sign-up.
"""

from __future__ import annotations

import os

import bcrypt
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.orm import UserInfo
from traitlets import Unicode

from stratolab.hub.admin import ensure_admin_credentials
from stratolab.settings import PlatformSettings


class StratolabNativeAuthenticator(NativeAuthenticator):
    """NativeAuthenticator with an admin account created at start-up."""

    bootstrap_admin_password = Unicode(
        "",
        help="Password the admin account gets if it does not exist yet (or always, when set by env).",
    ).tag(config=True)

    reset_admin_password = Unicode(
        "",
        help="When set (STRATOLAB_ADMIN_PASSWORD), the admin's password is reset to it at every start.",
    ).tag(config=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ensure_admins()

    def _ensure_admins(self) -> None:
        for name in sorted(self.admin_users):
            password = self.reset_admin_password or self.bootstrap_admin_password
            if not password:
                continue
            info = self.get_user(name)
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt())
            if info is None:
                self.db.add(UserInfo(username=name, password=hashed, is_authorized=True))
                self.log.info("Created the admin account %r", name)
            else:
                info.is_authorized = True
                if self.reset_admin_password and not info.is_valid_password(password):
                    info.password = hashed
                    self.log.info("Reset the password of admin %r from the environment", name)
        self.db.commit()


def configure_authentication(c, settings: PlatformSettings) -> None:
    """Select and configure the authenticator for this deployment."""
    c.Authenticator.admin_users = {settings.admin_user}
    if settings.auth == "oidc":
        _configure_oidc(c)
        return
    import nativeauthenticator

    creds = ensure_admin_credentials(settings)
    c.JupyterHub.authenticator_class = StratolabNativeAuthenticator
    c.StratolabNativeAuthenticator.bootstrap_admin_password = creds.password
    if settings.admin_password:
        c.StratolabNativeAuthenticator.reset_admin_password = settings.admin_password
    c.NativeAuthenticator.open_signup = False
    c.NativeAuthenticator.minimum_password_length = 8
    c.NativeAuthenticator.check_common_password = True
    c.NativeAuthenticator.allowed_failed_logins = 10
    c.NativeAuthenticator.seconds_before_next_try = 60
    # Everyone an admin approved may log in (NativeAuthenticator checks approval itself).
    c.Authenticator.allow_all = True
    templates = os.path.join(os.path.dirname(nativeauthenticator.__file__), "templates")
    c.JupyterHub.template_paths = [templates]


def _configure_oidc(c) -> None:
    """GenericOAuthenticator from STRATOLAB_OIDC_* variables (any setting can also be set in config)."""
    env = os.environ
    c.JupyterHub.authenticator_class = "generic-oauth"
    mapping = {
        "client_id": "STRATOLAB_OIDC_CLIENT_ID",
        "client_secret": "STRATOLAB_OIDC_CLIENT_SECRET",
        "oauth_callback_url": "STRATOLAB_OIDC_CALLBACK_URL",
        "authorize_url": "STRATOLAB_OIDC_AUTHORIZE_URL",
        "token_url": "STRATOLAB_OIDC_TOKEN_URL",
        "userdata_url": "STRATOLAB_OIDC_USERDATA_URL",
        "username_claim": "STRATOLAB_OIDC_USERNAME_CLAIM",
        "login_service": "STRATOLAB_OIDC_LOGIN_SERVICE",
    }
    for trait, var in mapping.items():
        if env.get(var):
            setattr(c.GenericOAuthenticator, trait, env[var])
    c.GenericOAuthenticator.scope = env.get("STRATOLAB_OIDC_SCOPES", "openid profile email").split()
    groups = env.get("STRATOLAB_OIDC_ALLOWED_GROUPS")
    if groups:
        c.GenericOAuthenticator.allowed_groups = set(groups.split(","))
        c.GenericOAuthenticator.manage_groups = True
        c.GenericOAuthenticator.auth_state_groups_key = env.get(
            "STRATOLAB_OIDC_GROUPS_CLAIM", "oauth_user.groups"
        )
    else:
        c.GenericOAuthenticator.allow_all = True
