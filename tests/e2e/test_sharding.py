"""Sharding end to end: the bot opens as many shards as Discord recommends and serves each guild on its own.

The fake recommends two shards and holds one guild on each; its gateway routes a guild's events
only to the session of ``(guild_id >> 22) % 2``, as Discord does, so /imagine can only work in both
guilds if both shard connections are open and handled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from bot.chat.client import ImagineBot
from bot.config import Settings
from tests.e2e.fake_discord import FakeDiscord
from tests.e2e.fake_models import FakeGuild, shard_of
from tests.e2e.fake_state import InteractionRecord
from tests.e2e.harness import running
from tests.e2e.results import final_upload


class QuickIdentifyBot(ImagineBot):
    """ImagineBot without discord.py's 5 s pause before each further IDENTIFY.

    The pause keeps a real bot within Discord's identify rate limit (``max_concurrency`` 1); the
    fake has no such limit, and the tests need not wait for it.
    """

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        return None


@pytest.fixture
def guilds(discord_server: FakeDiscord) -> list[FakeGuild]:
    discord_server.recommended_shards = 2
    return [discord_server.add_guild(f"shard {i}", shard=(i, 2)) for i in range(2)]


@pytest.fixture
def settings(tmp_path: Path, guilds: list[FakeGuild]) -> Settings:
    return replace(Settings(data_dir=tmp_path), safety_stages=("prompt", "integrity"),
                   discord_guilds=tuple(g.id for g in guilds))  # fmt: skip


@pytest.fixture
async def bot(settings: Settings, discord_server: FakeDiscord) -> AsyncIterator[ImagineBot]:
    client = QuickIdentifyBot(settings, guild_ready_timeout=0.05)
    async with running(client, discord_server.token, timeout=60):
        yield client


def identified_shards(server: FakeDiscord) -> list[list[int]]:
    return sorted(frame.d["shard"] for frame in server.frames if frame.direction == "recv" and frame.op == 2)


@pytest.mark.parametrize("gateway_configured", [False, True], ids=["gateway-from-discord", "configured-gateway"])
async def test_the_bot_identifies_once_per_recommended_shard(
    settings: Settings, discord_server: FakeDiscord, guilds: list[FakeGuild], gateway_configured: bool
) -> None:
    if gateway_configured:  # IMAGINEBOT_DISCORD_GATEWAY_URL: only the count comes from /gateway/bot
        settings = replace(settings, discord_gateway_url=discord_server.gateway_url)
    client = QuickIdentifyBot(settings, guild_ready_timeout=0.05)
    async with running(client, discord_server.token, timeout=60):
        assert identified_shards(discord_server) == [[0, 2], [1, 2]]
        assert len(discord_server.calls_to("GET", "/gateway/bot")) == 1
        assert client.shard_count == 2 and sorted(client.shards) == [0, 1]
        for guild in guilds:  # each shard's READY brought its own guild
            cached = client.get_guild(guild.id)
            assert cached is not None and cached.shard_id == shard_of(guild.id, 2)


async def imagine_in(server: FakeDiscord, guild: FakeGuild) -> InteractionRecord:
    """/imagine in the guild's #general; returns once the deferral and the final grid have arrived."""
    alice = server.add_member(guild.id, name="alice")
    record = await server.slash(guild.id, guild.text_channels[0].id, alice, "imagine", {"prompt": "a tide pool",
                                                                                       "count": 1})  # fmt: skip
    callback = await server.wait_for_response(record, timeout=30)
    assert callback.json["type"] == 5  # deferred
    await final_upload(server, record)
    return record


async def test_imagine_works_in_guilds_on_different_shards(
    bot: ImagineBot, discord_server: FakeDiscord, guilds: list[FakeGuild]
) -> None:
    shard_by_session = {s.session_id: s.shard for s in discord_server.sessions.values()}
    assert sorted(shard or [] for shard in shard_by_session.values()) == [[0, 2], [1, 2]]
    for guild in guilds:
        record = await imagine_in(discord_server, guild)
        # The interaction reached the bot only over the connection of the guild's shard.
        sent_on = [shard_by_session.get(f.session_id or "") for f in discord_server.frames
                   if f.t == "INTERACTION_CREATE" and f.d["id"] == str(record.id)]  # fmt: skip
        assert sent_on == [[shard_of(guild.id, 2), 2]]
    assert discord_server.unknown_calls == []
