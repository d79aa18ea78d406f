"""The dashboard's Starlette app: resources, login and logout, errors, and the pages' routes.

Build it with :func:`create_app`; serve it with uvicorn (``imaginebot dashboard``). The app opens its
own connection to the bot's database when it starts (lifespan) and closes it when it stops.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bot.config import Settings
from bot.dashboard import routes_admin, routes_jobs, routes_reviews
from bot.dashboard.auth import LOGIN_TTL, SESSION_TTL, Auth
from bot.dashboard.desk import StoredDesk
from bot.dashboard.errors import AuthError
from bot.dashboard.store import DashboardStore
from bot.dashboard.web import (
    LOGIN_COOKIE,
    NOT_FOUND,
    SESSION_COOKIE,
    Dashboard,
    SecurityHeaders,
    build_templates,
    current_session,
    dashboard,
    posted_form,
    render,
    set_cookie,
)
from bot.guild_config import GuildConfigStore
from bot.moderation import PSEUDONYM_KEY, Moderation, pseudonym
from bot.storage import Storage
from safety.gallery import ProtectedGallery
from safety.provenance import key_file

logger = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


async def login_form(request: Request) -> Response:
    """The link from Discord lands here. Nothing is used up by a GET (link previews fetch it): the
    moderator presses "Sign in", which POSTs the token."""
    token = request.query_params.get("token", "")
    try:
        dashboard(request).auth.read_login(token)
    except AuthError as exc:
        raise HTTPException(401, f"{exc} Ask for a new login link with /mod dashboard in Discord.") from None
    pre_session = secrets.token_urlsafe(16)
    response = render(request, "login.html", {"token": token, "csrf": dashboard(request).auth.csrf_token(pre_session)})
    set_cookie(response, request, LOGIN_COOKIE, pre_session, max_age=LOGIN_TTL, path="/login")
    return response


async def login(request: Request) -> Response:
    """Use a login token once: open a session bound to its member and server."""
    d = dashboard(request)
    form = await request.form(max_files=0, max_fields=5)
    token, csrf = form.get("token"), form.get("csrf")
    pre_session = request.cookies.get(LOGIN_COOKIE, "")
    if not pre_session or not d.auth.check_csrf(pre_session, csrf if isinstance(csrf, str) else None):
        raise HTTPException(403, "This form did not come from this dashboard. Open your login link again.")
    try:
        grant = d.auth.read_login(token if isinstance(token, str) else "")
    except AuthError as exc:
        raise HTTPException(401, f"{exc} Ask for a new login link with /mod dashboard in Discord.") from None
    if not await d.store.claim_login(grant.nonce, user_id=grant.user_id, guild_id=grant.guild_id,
                                     expires_at=grant.expires_at):  # fmt: skip
        raise HTTPException(401, "This login link was used already. Ask for a new one with /mod dashboard in Discord.")
    session, cookie = d.auth.open_session(grant)
    await d.storage.audit("dashboard_login", guild_id=session.guild_id, actor_id=session.user_id,
                          detail={"admin": session.admin})  # fmt: skip
    response = RedirectResponse("/reviews", status_code=303)
    set_cookie(response, request, SESSION_COOKIE, cookie, max_age=SESSION_TTL, path="/")
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


async def logout(request: Request) -> Response:
    await posted_form(request)
    response = RedirectResponse("/signed-out", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def signed_out(request: Request) -> Response:
    return render(request, "message.html", {"title": "Signed out", "message": "You are signed out."})


async def index(request: Request) -> Response:
    current_session(request)
    return RedirectResponse("/reviews", status_code=303)


async def http_error(request: Request, exc: Exception) -> Response:
    """Every error as a page. A missing thing and another server's thing read exactly the same."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = NOT_FOUND if status == 404 else exc.detail if isinstance(exc, HTTPException) else "Something went wrong."
    titles = {401: "Sign in again", 403: "Refused", 404: "Not found", 405: "Not allowed", 409: "Already decided"}
    response: HTMLResponse = render(request, "message.html", {"title": titles.get(status, "Error"), "message": message},
                                    status=status)  # fmt: skip
    return response


def create_app(settings: Settings, *, auth: Auth | None = None) -> Starlette:
    """The dashboard over ``settings``' database, images, keys and protected gallery.

    Args:
        settings: the operator's settings (the same data directory as the bot's).
        auth: the signer (tests pass one with a movable clock); by default the key in ``keys/dashboard.key``.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        storage = await Storage.open(settings.db_path)
        store = await DashboardStore.open(settings.db_path)
        try:
            key = key_file(settings.keys_dir / PSEUDONYM_KEY)
            desk = StoredDesk(storage, GuildConfigStore(storage, settings), lambda user: pseudonym(key, user))
            app.state.dashboard = Dashboard(
                settings=settings,
                auth=auth or Auth.from_settings(settings),
                storage=storage,
                store=store,
                moderation=Moderation(desk, pseudonym_key=key),
                gallery=ProtectedGallery(settings.protected_dir),
                templates=build_templates(),
            )
            yield
        finally:
            await store.aclose()
            await storage.aclose()

    routes = [
        Route("/", index),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/signed-out", signed_out),
        *routes_reviews.ROUTES,
        *routes_jobs.ROUTES,
        *routes_admin.ROUTES,
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={HTTPException: http_error, Exception: http_error},
        lifespan=lifespan,
    )
