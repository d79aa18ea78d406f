"""What the bot's messages say: sizes per aspect ratio, queue/progress/result/ending texts."""

from __future__ import annotations

import pytest

from bot.chat.render import (
    ASPECTS,
    ending_text,
    origin_text,
    progress_text,
    queued_text,
    result_text,
    size_for,
    tally_text,
)
from bot.jobs import (
    SOURCE_MISSING,
    VARIATION_STRENGTH,
    WORKERS_GAVE_UP,
    Job,
    JobRequest,
    JobState,
    Requester,
    variation_request,
)


def job(prompt: str = "a lighthouse", **options: object) -> Job:
    base: dict[str, object] = {"model": "builtin:tiny", "seed": 7, "steps": 4, "width": 256, "height": 256,
                               "guidance": 1.0, "count": 4}  # fmt: skip
    return Job.new(JobRequest.create(prompt, **(base | options)))  # type: ignore[arg-type]


@pytest.mark.parametrize("aspect", list(ASPECTS))
@pytest.mark.parametrize("base", [256, 512, 1024])
def test_sizes_keep_the_aspect_and_about_the_area(aspect: str, base: int) -> None:
    width, height = size_for(aspect, base)
    a, b = ASPECTS[aspect]
    assert width % 64 == 0 and height % 64 == 0
    assert abs(width / height - a / b) < 0.15 * a / b
    assert 0.8 < width * height / base**2 < 1.2


def test_square_is_exact_and_unknown_aspects_are_refused() -> None:
    assert size_for("1:1", 512) == (512, 512)
    assert size_for("16:9", 512) == (704, 384)
    with pytest.raises(ValueError, match="aspect '4:3' is not one of"):
        size_for("4:3", 512)


def test_queue_and_progress_texts() -> None:
    assert queued_text("a fox", 3, 41.6) == "**a fox** — queued (position 3 in this server's queue, about 42 s)"
    assert queued_text("a fox", None, None) == "**a fox** — queued (starting)"
    assert progress_text("a fox", 0, 4).endswith("`░░░░░░░░░░` step 0/4")
    assert progress_text("a fox", 2, 4).endswith("`█████░░░░░` step 2/4")
    assert progress_text("a fox", 4, 4).endswith("`██████████` step 4/4")


def test_prompts_cannot_break_the_markdown_and_are_clipped() -> None:
    text = queued_text("**bold** `code` " + "x" * 300, 1, None)
    assert "`code`" not in text and "****" not in text
    assert "…" in text and len(text) < 260


def test_result_text_shows_seed_parameters_and_origin() -> None:
    source = job()
    assert result_text(source) == ("**a lighthouse**\nseed `7` · 256x256 · 4 steps · guidance 1 · `builtin:tiny`")
    varied = Job.new(variation_request(source, 2, VARIATION_STRENGTH["subtle"], Requester("u", None, False)))
    assert origin_text(varied.request) == " — variations (subtle) of image 3"
    assert result_text(varied, "<@1>").startswith("<@1> **a lighthouse** — variations (subtle) of image 3\n")
    assert origin_text(source.request) == ""


def test_tally_and_endings() -> None:
    assert tally_text({}) == ""
    assert tally_text({2: 1, 0: 3}) == "Votes: 1 ▸ 3 · 3 ▸ 1"
    blocked = job().moved_to(JobState.RUNNING, at=1).moved_to(JobState.BLOCKED, at=2)
    assert ending_text(blocked, "sexual content") == "**a lighthouse** was blocked by the safety filter: sexual content"
    failed = job().moved_to(JobState.FAILED, at=1, error="RuntimeError: CUDA out of memory")
    assert "Please try again" in ending_text(failed) and "CUDA" not in ending_text(failed)
    gone = job().moved_to(JobState.FAILED, at=1, error=SOURCE_MISSING)
    assert ending_text(gone) == f"**a lighthouse** could not be made: {SOURCE_MISSING}."
    dropped = job().moved_to(JobState.FAILED, at=1, error=WORKERS_GAVE_UP.format(n=3))
    assert ending_text(dropped) == (
        "**a lighthouse** could not be made: the image workers gave up on it after 3 tries "
        "(a worker crashed or stopped while making it each time)."
    )
