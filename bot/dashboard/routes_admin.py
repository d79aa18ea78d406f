"""The audit log (and its CSV), the protected people of the server, and the metrics page."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from bot.config import Settings
from bot.dashboard.charts import Row, bar_chart, histogram, percentile
from bot.dashboard.web import current_session, dashboard, posted_form, render
from bot.jobs import JobState
from bot.moderation import plain_category

logger = logging.getLogger(__name__)

AUDIT_PAGE = 200
MAX_UPLOAD = 10 * 1024 * 1024  # bytes of one reference photo
METRICS_DAYS = (1, 7, 30)
# Decisions in the order the verdict chart stacks them.
DECISIONS = ("block", "flag", "allow")


async def audit(request: Request) -> Response:
    """The server's audit log, newest first (the last N days)."""
    session = current_session(request)
    days = request.query_params.get("days", "30")
    since = time.time() - int(days) * 86400 if days.isdigit() else None
    entries = await dashboard(request).storage.audit_entries(guild_id=session.guild_id, limit=AUDIT_PAGE,
                                                             since=since)  # fmt: skip
    return render(request, "audit.html", {"session": session, "entries": entries, "days": days})


async def audit_csv(request: Request) -> Response:
    session = current_session(request)
    data = await dashboard(request).moderation.audit_csv(session.guild_id)
    name = f"imaginebot-audit-{time.strftime('%Y%m%d', time.gmtime())}.csv"
    return Response(data, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})  # fmt: skip


async def protected(request: Request) -> Response:
    return await _protected_page(request, notice=None, error=None, status=200)


async def _protected_page(request: Request, *, notice: str | None, error: str | None, status: int) -> Response:
    session = current_session(request)
    people = dashboard(request).gallery.list(session.guild_id)
    return render(request, "protected.html", {"session": session, "people": people, "notice": notice,
                                              "error": error}, status=status)  # fmt: skip


async def protected_remove(request: Request) -> Response:
    """Stop protecting someone of this server (the global gallery is the operator's: admin only)."""
    session, form = await posted_form(request)
    name, scope = form.get("name"), form.get("scope")
    if not isinstance(name, str) or not name.strip():
        raise HTTPException(400, "Say whom to remove.")
    guild = None if scope == "global" and session.admin else session.guild_id
    d = dashboard(request)
    try:
        removed = d.gallery.remove(name, guild_id=guild)
    except ValueError as exc:
        return await _protected_page(request, notice=None, error=str(exc), status=400)
    if not removed:
        raise HTTPException(404)
    await d.storage.audit("protect_remove", guild_id=session.guild_id, actor_id=session.user_id, target=name,
                          detail={"scope": "global" if guild is None else "guild"})  # fmt: skip
    return RedirectResponse("/protected", status_code=303)


def _face_models(settings: Settings) -> tuple[Any, Any]:
    from safety.identity import FaceEmbedder
    from safety.suite import load_face_detector

    return load_face_detector(settings.face_detector), FaceEmbedder.load()


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as picture:
        picture.load()
        return picture.convert("RGB")


async def protected_add(request: Request) -> Response:
    """Protect someone in this server from one reference photo showing exactly their face."""
    session, form = await posted_form(request)
    name, photo = form.get("name"), form.get("photo")
    if not isinstance(name, str) or not isinstance(photo, UploadFile):
        return await _protected_page(request, notice=None, error="Give a name and a photo.", status=400)
    data = await photo.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        return await _protected_page(request, notice=None, error="That photo is over 10 MB.", status=400)
    try:
        picture = await asyncio.to_thread(_decode, data)
    except (UnidentifiedImageError, OSError):
        return await _protected_page(request, notice=None, error="That file is not an image.", status=400)
    d = dashboard(request)
    if d.face_models is None:
        try:
            d.face_models = await asyncio.to_thread(_face_models, d.settings)
        except Exception as exc:  # any failure to load means: no adding from here, and say why
            logger.warning("face models could not load: %s", exc)
            message = f"The face models could not load here ({exc}); use `imaginebot protect add` on the server."
            return await _protected_page(request, notice=None, error=message, status=503)
    detector, embedder = d.face_models
    try:
        person = await asyncio.to_thread(
            lambda: d.gallery.add(name, [picture], guild_id=session.guild_id, embedder=embedder, detector=detector)
        )
    except ValueError as exc:
        return await _protected_page(request, notice=None, error=str(exc), status=400)
    await d.storage.audit("protect_add", guild_id=session.guild_id, actor_id=session.user_id, target=person.name,
                          detail={"references": person.references})  # fmt: skip
    return await _protected_page(request, notice=f"Now protecting {person.name}.", error=None, status=200)


async def metrics(request: Request) -> Response:
    """Queue depth, wait and generation times, and verdicts per category, as server-drawn charts."""
    session = current_session(request)
    raw = request.query_params.get("days", "7")
    days = int(raw) if raw.isdigit() and int(raw) in METRICS_DAYS else 7
    d = dashboard(request)
    m = await d.store.metrics(session.guild_id, since=time.time() - days * 86400)
    categories = sorted({c for c, _ in m.verdicts}, key=lambda c: -sum(m.verdicts.get((c, x), 0) for x in DECISIONS))
    verdict_rows = [
        Row(
            "nothing found" if c == "none" else plain_category(c),
            tuple((x, float(m.verdicts.get((c, x), 0))) for x in DECISIONS),
        )
        for c in categories
    ]
    state_rows = [Row(s.value, ((s.value, float(m.states.get(s.value, 0))),)) for s in JobState]
    context = {
        "session": session,
        "days": days,
        "choices": METRICS_DAYS,
        "queued": m.states.get(JobState.QUEUED.value, 0),
        "running": m.states.get(JobState.RUNNING.value, 0),
        "pending": await d.storage.pending_count(session.guild_id),
        "wait_p50": percentile(m.waits, 0.5),
        "wait_p90": percentile(m.waits, 0.9),
        "run_p50": percentile(m.runs, 0.5),
        "run_p90": percentile(m.runs, 0.9),
        "states_chart": bar_chart("Jobs by state", state_rows),
        "wait_chart": bar_chart("Wait before generation", histogram(m.waits, "wait")),
        "run_chart": bar_chart("Generation time", histogram(m.runs, "run")),
        "verdict_chart": bar_chart("Image verdicts by category", verdict_rows),
        "decisions": DECISIONS,
    }
    return render(request, "metrics.html", context)


ROUTES = [
    Route("/audit", audit),
    Route("/audit.csv", audit_csv),
    Route("/protected", protected, methods=["GET"]),
    Route("/protected/add", protected_add, methods=["POST"]),
    Route("/protected/remove", protected_remove, methods=["POST"]),
    Route("/metrics", metrics),
]
