"""What every dashboard page shares: the app's state, the session check, CSRF, rendering, headers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.datastructures import FormData, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bot.config import Settings
from bot.dashboard.auth import Auth, Session
from bot.dashboard.errors import AuthError
from bot.dashboard.store import DashboardStore
from bot.moderation import Moderation
from bot.storage import Storage
from safety.gallery import ProtectedGallery

SESSION_COOKIE = "ib_session"
LOGIN_COOKIE = "ib_login"  # the login form's pre-session id (its CSRF token is derived from it)
NOT_FOUND = "There is nothing here, or it belongs to another server."

# No script at all, styles only from our stylesheet, images only from us, never framed.
CSP = ("default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; frame-ancestors 'none';"
       " base-uri 'none'")  # fmt: skip
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


@dataclass
class Dashboard:
    """The open resources behind the pages (one per app, built by its lifespan)."""

    settings: Settings
    auth: Auth
    storage: Storage
    store: DashboardStore
    moderation: Moderation
    gallery: ProtectedGallery
    templates: Jinja2Templates
    face_models: Any = field(default=None)  # (detector, embedder), loaded on the first upload


def build_templates() -> Jinja2Templates:
    env = Environment(loader=PackageLoader("bot.dashboard"), autoescape=select_autoescape(default=True))
    env.filters["when"] = _when
    env.filters["seconds"] = _seconds
    return Jinja2Templates(env=env)


def _when(at: float | None) -> str:
    return "—" if at is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def dashboard(request: Request) -> Dashboard:
    return cast(Dashboard, request.app.state.dashboard)


def current_session(request: Request) -> Session:
    """The signed-in moderator, or a 401 page telling them how to get a new link."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise HTTPException(401, "You are not signed in. Ask for a login link with /mod dashboard in Discord.")
    try:
        return dashboard(request).auth.read_session(cookie)
    except AuthError as exc:
        raise HTTPException(401, f"{exc} Ask for a new login link with /mod dashboard in Discord.") from None


async def posted_form(request: Request) -> tuple[Session, FormData]:
    """The session and the submitted form of a POST, after checking its CSRF token (403 otherwise)."""
    session = current_session(request)
    form = await request.form(max_files=1, max_fields=20)
    token = form.get("csrf")
    if not dashboard(request).auth.check_csrf(session.session_id, token if isinstance(token, str) else None):
        raise HTTPException(403, "This form has expired or did not come from this dashboard. Reload the page.")
    return session, form


def render(request: Request, template: str, context: dict[str, Any], *, status: int = 200) -> HTMLResponse:
    """A page with the session's server, the CSRF token and the navigation filled in."""
    session: Session | None = context.get("session")
    if session is not None:
        context.setdefault("csrf", dashboard(request).auth.csrf_token(session.session_id))
    context.setdefault("page", template.removesuffix(".html"))
    return dashboard(request).templates.TemplateResponse(request, template, context, status_code=status)


def set_cookie(response: Response, request: Request, name: str, value: str, *, max_age: int, path: str) -> None:
    """A cookie scripts cannot read, sent only to this site, only over https when served so."""
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")  # fmt: skip


class SecurityHeaders:
    """ASGI middleware: the security headers on every response (errors and static files included);
    pages and images are never cached (they are private to a session)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if not str(scope.get("path", "")).startswith("/static/"):
                    headers["Cache-Control"] = "no-store"
                if scope.get("scheme") == "https":
                    headers["Strict-Transport-Security"] = "max-age=31536000"
            await send(message)

        await self.app(scope, receive, send_with_headers)
