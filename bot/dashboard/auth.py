"""Who may use the dashboard: one-time login tokens, signed sessions and CSRF tokens.

A moderator never types a password. ``/mod dashboard`` in Discord checks that the member holds the
server's moderator role (or Manage Messages) and answers, privately, with :func:`login_link`: a URL
carrying a token signed with HMAC-SHA256 under ``<data_dir>/keys/dashboard.key``. The token names
the member and the server, expires after :data:`LOGIN_TTL` seconds and carries a random nonce;
the dashboard stores each nonce it accepts (table ``dashboard_logins``), so a link logs in once.

The dashboard process cannot see Discord roles: the role is checked when the link is issued, and a
session lasts at most :data:`SESSION_TTL` seconds, so a moderator who loses the role keeps access
for at most that long.

A session is a signed cookie naming the member, the server and an expiry; every page reads the
server from it and nothing else, so one server's moderator cannot ask for another's data. Every
form carries a CSRF token derived from the session's random id (HMAC), checked on every POST.

Each kind of signed value has its own purpose label in the MAC, so a login token can never be
replayed as a session cookie or a CSRF token, nor the other way round.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from bot.config import Settings
from bot.dashboard.errors import AuthError
from safety.provenance import key_file

KEY_FILE = "dashboard.key"
LOGIN_TTL = 10 * 60  # seconds a login link is valid
SESSION_TTL = 8 * 3600  # seconds a session lasts: also the longest a removed moderator keeps access
LOCAL_GUILD = "local"  # the guild the CLI's jobs are queued under
LOCAL_ADMIN = "local-admin"  # the actor `imaginebot dashboard --local` logs in as
_LOGIN = b"imaginebot/dashboard/login/v1"
_SESSION = b"imaginebot/dashboard/session/v1"
_CSRF = b"imaginebot/dashboard/csrf/v1"


@dataclass(frozen=True)
class LoginGrant:
    """A verified (not yet used) login token."""

    user_id: str
    guild_id: str
    expires_at: float
    nonce: str
    admin: bool = False


@dataclass(frozen=True)
class Session:
    """A signed-in moderator: who, for which server, until when.

    Attributes:
        session_id: random; the CSRF token is derived from it.
        admin: the operator (``--local``): may also remove people from the global protected gallery.
    """

    user_id: str
    guild_id: str
    expires_at: float
    session_id: str
    admin: bool = False


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _check_id(name: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 100:
        raise ValueError(f"{name} must be a non-empty id of at most 100 characters, got {value!r}")
    return value


class Auth:
    """Signs and checks login tokens, session cookies and CSRF tokens with one secret key.

    Args:
        key: at least 32 secret bytes (:meth:`from_settings` reads them from the key file).
        clock: unix time now (tests move it).
    """

    def __init__(self, key: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 32:
            raise ValueError("the dashboard key must be at least 32 bytes")
        self._key = key
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> Auth:
        """The key in ``<keys_dir>/dashboard.key``, created (random, mode 0600) on first use."""
        return cls(key_file(settings.keys_dir / KEY_FILE))

    # -- signing ------------------------------------------------------------------------------------

    def _mac(self, purpose: bytes, body: bytes) -> bytes:
        return hmac.new(self._key, purpose + b"." + body, hashlib.sha256).digest()

    def _sign(self, purpose: bytes, payload: Mapping[str, object]) -> str:
        body = _b64(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
        return f"{body}.{_b64(self._mac(purpose, body.encode()))}"

    def _unsign(self, purpose: bytes, token: str, what: str) -> dict[str, object]:
        body, dot, mac = token.partition(".")
        try:
            expected = self._mac(purpose, body.encode())
            valid = bool(dot) and hmac.compare_digest(_unb64(mac), expected)
            payload = json.loads(_unb64(body)) if valid else None
        except (binascii.Error, ValueError, UnicodeError):
            valid, payload = False, None
        if not valid or not isinstance(payload, dict):
            raise AuthError(f"This {what} is not valid.")
        expires = payload.get("exp")
        if not isinstance(expires, int | float) or expires <= self.clock():
            raise AuthError(f"This {what} has expired.")
        return payload

    # -- login tokens -------------------------------------------------------------------------------

    def login_token(self, user_id: str, guild_id: str, *, admin: bool = False) -> str:
        """A token that logs ``user_id`` into ``guild_id``'s dashboard once, within :data:`LOGIN_TTL`."""
        payload = {"u": _check_id("user_id", user_id), "g": _check_id("guild_id", guild_id),
                   "exp": self.clock() + LOGIN_TTL, "n": secrets.token_urlsafe(16), "a": admin}  # fmt: skip
        return self._sign(_LOGIN, payload)

    def read_login(self, token: str) -> LoginGrant:
        """Check a login token's signature and expiry (whether it was used is the store's business).

        Raises:
            AuthError: tampered with, malformed or expired.
        """
        p = self._unsign(_LOGIN, token, "login link")
        user, guild, nonce = p.get("u"), p.get("g"), p.get("n")
        if not (isinstance(user, str) and isinstance(guild, str) and isinstance(nonce, str)):
            raise AuthError("This login link is not valid.")
        return LoginGrant(user, guild, float(p["exp"]), nonce, p.get("a") is True)  # type: ignore[arg-type]

    # -- sessions -----------------------------------------------------------------------------------

    def open_session(self, grant: LoginGrant) -> tuple[Session, str]:
        """A new session for a used login grant, and its cookie value."""
        session = Session(grant.user_id, grant.guild_id, self.clock() + SESSION_TTL, secrets.token_urlsafe(16),
                          grant.admin)  # fmt: skip
        cookie = self._sign(_SESSION, {"u": session.user_id, "g": session.guild_id, "exp": session.expires_at,
                                       "s": session.session_id, "a": session.admin})  # fmt: skip
        return session, cookie

    def read_session(self, cookie: str) -> Session:
        """The session a cookie carries.

        Raises:
            AuthError: tampered with, malformed or expired.
        """
        p = self._unsign(_SESSION, cookie, "session")
        user, guild, sid = p.get("u"), p.get("g"), p.get("s")
        if not (isinstance(user, str) and isinstance(guild, str) and isinstance(sid, str)):
            raise AuthError("This session is not valid.")
        return Session(user, guild, float(p["exp"]), sid, p.get("a") is True)  # type: ignore[arg-type]

    # -- CSRF ---------------------------------------------------------------------------------------

    def csrf_token(self, session_id: str) -> str:
        """The CSRF token of a session (or of a login form's pre-session id)."""
        return _b64(self._mac(_CSRF, session_id.encode()))

    def check_csrf(self, session_id: str, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.csrf_token(session_id).encode(), token.encode())


def login_link(settings: Settings, user_id: str, guild_id: str, base_url: str, *, admin: bool = False) -> str:
    """The one-time login URL for a moderator of ``guild_id``, valid for :data:`LOGIN_TTL` seconds.

    Call it only after checking that the member may moderate that server: the dashboard trusts the link.

    Args:
        settings: the operator's settings (where the dashboard key lives).
        user_id: the moderator's Discord id.
        guild_id: the server they moderate.
        base_url: where the dashboard is served, e.g. ``https://mod.example.org``.
        admin: the operator themself (``imaginebot dashboard --local``).

    Raises:
        ValueError: an empty id, or a base URL that is not http(s).
    """
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
    token = Auth.from_settings(settings).login_token(user_id, guild_id, admin=admin)
    return f"{base_url.rstrip('/')}/login?{urlencode({'token': token})}"
