"""/verify and the "Verify image" message menu, end to end against the fake Discord."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from bot.chat.client import ImagineBot
from tests.e2e.fake_discord import FakeDiscord
from tests.e2e.fake_models import JSON, FakeGuild, Permission
from tests.e2e.results import final_message, job_of

EPHEMERAL = 64


def general(guild: FakeGuild) -> int:
    return next(iter(guild.channels.values())).id


def jpeg_without_metadata(data: bytes, *, quality: int = 80) -> bytes:
    """What a site that strips metadata and re-encodes makes of an image."""
    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


async def posted_image(server: FakeDiscord, guild: FakeGuild, user: Any) -> tuple[str, JSON]:
    """/imagine one image, press U1: the job id and the message holding the image alone."""
    record = await server.slash(guild.id, general(guild), user, "imagine",
                                {"prompt": "a red circle on a blue background", "count": 1, "seed": 5})  # fmt: skip
    grid = await final_message(server, record)
    job_id = job_of(grid)
    click = await server.click(guild.id, general(guild), user, grid, f"ib:u:{job_id}:0")
    await server.wait_for_response(click)
    single = server.original_message(click)
    assert single is not None and single["attachments"]
    return job_id, single


async def answer_of(server: FakeDiscord, record: Any) -> JSON:
    """The private follow-up a deferred (ephemeral) command sends."""
    callback = await server.wait_for_response(record)
    assert callback.json["type"] == 5 and callback.json["data"]["flags"] & EPHEMERAL
    path = server.webhook_path(record)
    call = await server.wait_for(lambda c: c.method == "POST" and c.path == path, timeout=60)
    assert call.json["flags"] & EPHEMERAL
    return call.json


async def test_verify_recognises_a_stripped_copy_and_not_a_stranger(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild
) -> None:
    alice = discord_server.add_member(discord_guild.id, name="alice")
    job_id, single = await posted_image(discord_server, discord_guild, alice)
    original = discord_server.attachment_bytes(single["attachments"][0])

    stripped = jpeg_without_metadata(original)
    record = await discord_server.slash(discord_guild.id, general(discord_guild), alice, "verify",
                                        {"image": ("downloaded.jpg", stripped)})  # fmt: skip
    answer = await answer_of(discord_server, record)
    assert "made by this bot" in answer["content"] and f"Job `{job_id}`" in answer["content"]
    assert "this bot's invisible watermark" in answer["content"]  # metadata is gone: the pixels still say so
    assert "this server" in answer["content"] and "Prompt" not in answer["content"]  # members do not see prompts

    noise = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, "PNG")
    record = await discord_server.slash(discord_guild.id, general(discord_guild), alice, "verify",
                                        {"image": ("stranger.png", out.getvalue())})  # fmt: skip
    answer = await answer_of(discord_server, record)
    assert "no evidence that this bot made it" in answer["content"]

    record = await discord_server.slash(discord_guild.id, general(discord_guild), alice, "verify",
                                        {"image": ("notes.png", b"not an image at all")})  # fmt: skip
    assert "not an image this bot can read" in (await answer_of(discord_server, record))["content"]


async def test_the_message_menu_verifies_a_posted_image_and_shows_moderators_the_prompt(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild
) -> None:
    alice = discord_server.add_member(discord_guild.id, name="alice")
    mod = discord_server.add_member(discord_guild.id, name="mod", permissions=Permission.MANAGE_MESSAGES)
    job_id, single = await posted_image(discord_server, discord_guild, alice)
    menus = [c for c in discord_server.commands(discord_guild.id) if c["type"] == 3]
    assert [c["name"] for c in menus] == ["Verify image"]

    record = await discord_server.message_command(discord_guild.id, general(discord_guild), mod, "Verify image",
                                                  single)  # fmt: skip
    answer = await answer_of(discord_server, record)
    assert "made by this bot" in answer["content"] and f"Job `{job_id}`" in answer["content"]
    assert "Prompt (moderators only): a red circle on a blue background" in answer["content"]

    text_only = discord_server.state.create_message(general(discord_guild), {"content": "no pictures here"}, [])
    record = await discord_server.message_command(discord_guild.id, general(discord_guild), mod, "Verify image",
                                                  text_only)  # fmt: skip
    refused = await discord_server.wait_for_response(record)
    assert refused.json["data"]["flags"] & EPHEMERAL and "no image attached" in refused.json["data"]["content"]
