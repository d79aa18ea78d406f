"""Upload limits end to end: the grid fits the interaction's ``attachment_size_limit``, as Discord enforces it."""

from __future__ import annotations

import asyncio
import io
import os

import discord
import pytest
from PIL import Image

from bot.chat.client import ImagineBot
from bot.chat.imagine import ImagineCog
from bot.service import ImagineService
from tests.e2e.fake_discord import FakeDiscord
from tests.e2e.fake_interactions import OptionValue
from tests.e2e.fake_models import FakeGuild
from tests.e2e.fake_state import ATTACHMENT_SIZE_LIMIT
from tests.e2e.results import final_upload, original_path

SMALL_LIMIT = 50_000  # bytes: well under the PNG grid of two 256 px images, above a JPEG of it


def general(guild: FakeGuild) -> int:
    return guild.text_channels[0].id


async def test_interactions_carry_discords_default_limit(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild
) -> None:
    alice = discord_server.add_member(discord_guild.id, name="alice")
    record = await discord_server.slash(discord_guild.id, general(discord_guild), alice, "queue", {})
    await discord_server.wait_for_response(record)
    assert (
        record.payload["attachment_size_limit"] == ATTACHMENT_SIZE_LIMIT == discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
    )


async def test_a_grid_over_the_limit_is_uploaded_smaller(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild
) -> None:
    discord_server.attachment_size_limit = SMALL_LIMIT
    alice = discord_server.add_member(discord_guild.id, name="alice")
    options: dict[str, OptionValue] = {"prompt": "a harbour full of boats", "count": 2, "seed": 4}
    record = await discord_server.slash(discord_guild.id, general(discord_guild), alice, "imagine", options)
    assert record.payload["attachment_size_limit"] == SMALL_LIMIT
    upload = await final_upload(discord_server, record)
    assert upload.status == 200  # not 413: nothing over the limit was sent
    [(filename, data)] = upload.files.items()
    assert filename.endswith(".jpg") and len(data) <= SMALL_LIMIT
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.width == 2 * image.height  # two square images side by side
    # The test means something only if the PNG itself would not have fitted.
    job_id = filename.removesuffix(".jpg")
    job = await bot_service(bot).storage.get_job(job_id)
    assert job.grid_path is not None and await asyncio.to_thread(os.path.getsize, job.grid_path) > SMALL_LIMIT
    message = discord_server.original_message(record)
    assert message is not None and message["attachments"][0]["content_type"] == "image/jpeg"


async def test_a_limit_no_sensible_version_fits_posts_the_result_without_the_grid(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild
) -> None:
    discord_server.attachment_size_limit = 1_000  # far below any real Discord limit
    alice = discord_server.add_member(discord_guild.id, name="alice")
    options: dict[str, OptionValue] = {"prompt": "a quiet orchard", "count": 1, "seed": 9}
    record = await discord_server.slash(discord_guild.id, general(discord_guild), alice, "imagine", options)
    original = original_path(discord_server, record)
    final = await discord_server.wait_for(lambda c: c.method == "PATCH" and c.path == original
                                          and "seed `9`" in str(c.json), timeout=60)  # fmt: skip
    assert final.status == 200 and not final.files  # the text and buttons arrive; no upload was refused
    assert "ib:r:" in str(final.json["components"])  # the result's buttons, not a progress edit
    assert all(c.status != 413 for c in discord_server.calls)


async def test_the_fake_refuses_uploads_over_the_limit_like_discord(
    bot: ImagineBot, discord_server: FakeDiscord, discord_guild: FakeGuild
) -> None:
    discord_server.attachment_size_limit = 1_000
    channel = bot.get_channel(general(discord_guild))
    assert isinstance(channel, discord.TextChannel)
    with pytest.raises(discord.HTTPException) as refused:
        await channel.send(file=discord.File(io.BytesIO(b"\0" * 1_001), filename="big.bin"))
    assert (refused.value.status, refused.value.code) == (413, 40005)
    assert discord_server.state.messages == {}  # nothing of the request happened


def bot_service(bot: ImagineBot) -> ImagineService:
    cog = bot.get_cog("ImagineCog")
    assert isinstance(cog, ImagineCog)
    return cog.service
