"""The review queue: held jobs and appeals, their (blurred) images, and the moderators' decisions.

Decisions go through :meth:`bot.moderation.Moderation.decide`, the rules Discord's buttons use: the
first decision wins, a strike may ban, a ban is audited. The bot posts the outcome (reviews outbox).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from bot.dashboard.auth import Session
from bot.dashboard.web import current_session, dashboard, posted_form, render
from bot.errors import AlreadyDecidedError, JobNotFoundError, ReviewNotFoundError
from bot.jobs import Job
from bot.moderation import Action, plain_category
from bot.records import OutputRecord, ReviewRecord, VerdictRecord

PAGE = 20


@dataclass(frozen=True)
class ReviewView:
    """A review with what its page shows."""

    review: ReviewRecord
    job: Job | None  # None once its owner deleted it (/privacy delete)
    outputs: list[OutputRecord]
    verdicts: list[VerdictRecord]
    category: str


async def _view(request: Request, review: ReviewRecord) -> ReviewView:
    storage = dashboard(request).storage
    try:
        job: Job | None = await storage.get_job(review.job_id)
    except JobNotFoundError:
        job = None
    outputs = await storage.outputs_for(review.job_id) if job else []
    verdicts = await storage.verdicts_for(review.job_id) if job else []
    return ReviewView(review, job, outputs, verdicts, plain_category(review.category))


async def _review_in(request: Request, session: Session, job_id: str) -> ReviewRecord:
    try:
        return await dashboard(request).moderation.review_in(session.guild_id, job_id)
    except ReviewNotFoundError:
        raise HTTPException(404) from None


def _page(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    return max(1, int(raw)) if raw.isdigit() else 1


async def queue(request: Request) -> Response:
    """The server's pending reviews, oldest first, images blurred."""
    session = current_session(request)
    page = _page(request)
    moderation = dashboard(request).moderation
    reviews = await moderation.pending(session.guild_id, limit=PAGE + 1, offset=(page - 1) * PAGE)
    views = [await _view(request, r) for r in reviews[:PAGE]]
    waiting = await dashboard(request).storage.pending_count(session.guild_id)
    return render(request, "reviews.html", {"session": session, "views": views, "page_no": page,
                                            "more": len(reviews) > PAGE, "waiting": waiting})  # fmt: skip


async def detail(request: Request) -> Response:
    """One review: the prompt, every verdict, the images (blurred unless ?reveal=1) and the decisions."""
    session = current_session(request)
    review = await _review_in(request, session, request.path_params["job_id"])
    return await _detail_page(request, session, review, error=None, status=200)


async def _detail_page(request: Request, session: Session, review: ReviewRecord, *, error: str | None,
                       status: int) -> Response:  # fmt: skip
    view = await _view(request, review)
    reveal = request.query_params.get("reveal") == "1"
    return render(request, "review.html", {"session": session, "view": view, "reveal": reveal, "error": error,
                                           "actions": list(Action)}, status=status)  # fmt: skip


async def decide(request: Request) -> Response:
    """Approve, reject, reject with a strike, or reject and ban: then show the job as it now stands."""
    session, form = await posted_form(request)
    job_id = request.path_params["job_id"]
    await _review_in(request, session, job_id)  # another server's review: 404, like a missing one
    raw = form.get("action")
    try:
        action = Action(raw if isinstance(raw, str) else "")
    except ValueError:
        raise HTTPException(400, f"Unknown decision {raw!r}.") from None
    try:
        await dashboard(request).moderation.decide(session.guild_id, job_id, action, moderator_id=session.user_id)
    except AlreadyDecidedError as exc:
        first = exc.review
        message = f"Already decided: {first.decision} by {first.decided_by}. Nothing was changed."
        return await _detail_page(request, session, first, error=message, status=409)
    except ReviewNotFoundError:
        raise HTTPException(404) from None
    return RedirectResponse(f"/jobs/{job_id}?decided={action.value}", status_code=303)


ROUTES = [
    Route("/reviews", queue),
    Route("/reviews/{job_id}", detail, methods=["GET"]),
    Route("/reviews/{job_id}/decide", decide, methods=["POST"]),
]
