"""Reading the bot's job messages off the fake Discord: one definition for the e2e tests and the bench."""

from __future__ import annotations

from tests.e2e.call_log import Call
from tests.e2e.fake_discord import FakeDiscord
from tests.e2e.fake_models import JSON
from tests.e2e.fake_state import InteractionRecord


def original_path(server: FakeDiscord, record: InteractionRecord) -> str:
    """The route of the interaction's original response (the job's one message)."""
    return server.webhook_path(record) + "/messages/@original"


async def final_upload(server: FakeDiscord, record: InteractionRecord, *, timeout: float = 60) -> Call:  # noqa: ASYNC109
    """The edit of the job's message that uploads its result (the grid or the single image)."""
    path = original_path(server, record)
    return await server.wait_for(lambda c: c.method == "PATCH" and c.path == path and bool(c.files), timeout=timeout)


async def final_message(server: FakeDiscord, record: InteractionRecord) -> JSON:
    """The job's message once its result is posted."""
    await final_upload(server, record)
    message = server.original_message(record)
    assert message is not None
    return message


def custom_ids(message: JSON) -> list[str]:
    return [c["custom_id"] for row in message.get("components", []) for c in row.get("components", [])]


def job_of(message: JSON) -> str:
    """The job id a result message's buttons carry (``ib:<action>:<job>[:<index>]``)."""
    return custom_ids(message)[0].split(":")[2]
