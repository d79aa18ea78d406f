"""Job history (search, filters, pages), one job's page, the gallery ranked by votes, and images.

An image is served only to a session of the server its job belongs to; another server's image is a
404, exactly like a missing one.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from bot.dashboard.auth import Session
from bot.dashboard.web import current_session, dashboard, render
from bot.errors import JobNotFoundError
from bot.jobs import Job, JobState

PAGE = 25
GALLERY_SIZE = 24
GALLERY_DAYS = (1, 7, 30, 365)
VARIANTS = ("full", "preview")


async def job_in(request: Request, session: Session, job_id: str) -> Job:
    """The job, only if it belongs to the session's server (404 otherwise, as for a missing one)."""
    try:
        job = await dashboard(request).storage.get_job(job_id)
    except JobNotFoundError:
        raise HTTPException(404) from None
    if job.request.guild_id != session.guild_id:
        raise HTTPException(404)
    return job


def _int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name, "")
    return int(raw) if raw.isdigit() else default


async def history(request: Request) -> Response:
    """The server's jobs, newest first: search the prompt (or an id), filter by member and state."""
    session = current_session(request)
    q = request.query_params.get("q", "").strip()[:200]
    user = request.query_params.get("user", "").strip()[:100]
    raw_state = request.query_params.get("state", "")
    state = JobState(raw_state) if raw_state in {s.value for s in JobState} else None
    page = max(1, _int(request, "page", 1))
    d = dashboard(request)
    found = await d.store.search_jobs(session.guild_id, text=q, user_id=user, state=state, limit=PAGE,
                                      offset=(page - 1) * PAGE)  # fmt: skip
    jobs = [await d.storage.get_job(job_id) for job_id in found.job_ids]
    pages = max(1, -(-found.total // PAGE))
    return render(request, "jobs.html", {"session": session, "jobs": jobs, "q": q, "user": user,
                                         "state": state.value if state else "", "states": [s.value for s in JobState],
                                         "page_no": page, "pages": pages, "total": found.total})  # fmt: skip


async def job_page(request: Request) -> Response:
    """One job: its request, state history, images (blurred if held, unless ?reveal=1), verdicts, review."""
    session = current_session(request)
    job = await job_in(request, session, request.path_params["job_id"])
    storage = dashboard(request).storage
    context = {
        "session": session,
        "job": job,
        "events": await storage.events(job.id),
        "outputs": await storage.outputs_for(job.id),
        "verdicts": await storage.verdicts_for(job.id),
        "review": await storage.review(job.id),
        "reveal": request.query_params.get("reveal") == "1",
        "decided": request.query_params.get("decided", ""),
    }
    return render(request, "job.html", context)


async def gallery(request: Request) -> Response:
    """The server's most-voted images of the last N days, best first."""
    session = current_session(request)
    days = _int(request, "days", 30)
    days = days if days in GALLERY_DAYS else 30
    storage = dashboard(request).storage
    ranked = await storage.top_voted(session.guild_id, since=time.time() - days * 86400, limit=GALLERY_SIZE)
    items = []
    for job_id, index, votes in ranked:
        try:
            job = await storage.get_job(job_id)
        except JobNotFoundError:  # deleted by its owner since
            continue
        if job.request.guild_id == session.guild_id and await storage.output(job_id, index) is not None:
            items.append({"job": job, "index": index, "votes": votes})
    return render(request, "gallery.html", {"session": session, "items": items, "days": days,
                                            "choices": GALLERY_DAYS})  # fmt: skip


async def image(request: Request) -> Response:
    """A stored image (``full``) or its blurred review copy (``preview``), for this server's session only."""
    session = current_session(request)
    job = await job_in(request, session, request.path_params["job_id"])
    variant = request.path_params["variant"]
    output = await dashboard(request).storage.output(job.id, request.path_params["index"])
    if output is None or variant not in VARIANTS:
        raise HTTPException(404)
    path = output.preview_path if variant == "preview" else output.path
    if path is None:
        raise HTTPException(404)
    # The database names the file; serve it only from the images directory, whatever the row says.
    file = await asyncio.to_thread(_servable, dashboard(request).settings.images_dir, Path(path))
    if file is None:
        raise HTTPException(404)
    return FileResponse(file, media_type="image/png", headers={"Cache-Control": "private, no-store"})


def _servable(root: Path, path: Path) -> Path | None:
    """``path`` if it is an existing file inside ``root`` (symlinks resolved), else None."""
    file = path.resolve()
    return file if file.is_relative_to(root.resolve()) and file.is_file() else None


ROUTES = [
    Route("/jobs", history),
    Route("/jobs/{job_id}", job_page),
    Route("/gallery", gallery),
    Route("/images/{job_id}/{index:int}/{variant}", image),
]
