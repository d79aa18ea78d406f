"""What the bot's messages say: sizes for aspect ratios, queue/progress/result text. Pure functions."""

from __future__ import annotations

import math

from bot.jobs import VARIATION_STRENGTH, Job, JobKind, JobRequest, JobState, shown_error

ASPECTS: dict[str, tuple[int, int]] = {"1:1": (1, 1), "3:2": (3, 2), "2:3": (2, 3), "16:9": (16, 9), "9:16": (9, 16)}


def size_for(aspect: str, base: int) -> tuple[int, int]:
    """Width and height (multiples of 64) with about ``base``² pixels in the given aspect ratio.

    Raises:
        ValueError: an aspect ratio that is not offered.
    """
    if aspect not in ASPECTS:
        raise ValueError(f"aspect {aspect!r} is not one of {', '.join(ASPECTS)}")
    a, b = ASPECTS[aspect]
    width = max(64, round(base * math.sqrt(a / b) / 64) * 64)
    height = max(64, round(base * math.sqrt(b / a) / 64) * 64)
    return width, height


def queued_text(prompt: str, position: int | None, eta: float | None) -> str:
    where = f"position {position} in this server's queue" if position else "starting"
    when = f", about {eta:.0f} s" if eta is not None else ""
    return f"**{_clip(prompt)}** — queued ({where}{when})"


def progress_text(prompt: str, step: int, total: int) -> str:
    filled = round(10 * step / max(total, 1))
    return f"**{_clip(prompt)}** — generating `{'█' * filled}{'░' * (10 - filled)}` step {step}/{total}"


def result_text(job: Job, mention: str | None = None) -> str:
    r = job.request
    head = f"{mention} " if mention else ""
    return (
        f"{head}**{_clip(r.prompt)}**{origin_text(r)}\n"
        f"seed `{r.seed}` · {r.width}x{r.height} · {r.steps} steps · guidance {r.guidance:g} · `{r.model}`"
    )


def origin_text(request: JobRequest) -> str:
    """`` — variations (strong) of image 2`` / `` — upscaled x2 from image 1``; empty for a new image."""
    if request.source_index is None:
        return ""
    image = f"image {request.source_index + 1}"
    if request.kind is JobKind.UPSCALE:
        return f" — upscaled \u00d72 from {image}"
    mode = next((name for name, value in VARIATION_STRENGTH.items() if value == request.strength), None)
    return f" — variations{f' ({mode})' if mode else ''} of {image}"


def tally_text(tally: dict[int, int]) -> str:
    """``Votes: 1 ▸ 2 · 3 ▸ 1`` (images without votes left out); empty when nobody voted."""
    if not tally:
        return ""
    parts = [f"{index + 1} ▸ {votes}" for index, votes in sorted(tally.items())]
    return "Votes: " + " · ".join(parts)


_ENDINGS = {
    JobState.FLAGGED: "was held for a moderator to review ({reason}). You'll hear back once it has been looked at.",
    JobState.BLOCKED: "was blocked by the safety filter: {reason}",
    JobState.FAILED: "could not be generated. Please try again in a moment.",
    JobState.CANCELLED: "was cancelled.",
}


def ending_text(job: Job, reason: str = "") -> str:
    """What the requester sees when a job ends without a posted result."""
    if job.state is JobState.FAILED and shown_error(job.error):
        return f"**{_clip(job.request.prompt)}** could not be made: {job.error}."
    template = _ENDINGS.get(job.state, "finished.")
    default = "the safety policy" if job.state is JobState.FLAGGED else "it did not pass."
    return f"**{_clip(job.request.prompt)}** " + template.format(reason=reason or default)


def _clip(prompt: str, limit: int = 180) -> str:
    text = prompt.replace("*", "").replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"
