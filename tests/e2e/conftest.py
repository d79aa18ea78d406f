"""Fixtures: a started :class:`FakeDiscord` with discord.py pointed at it, and one guild to play in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from bot.chat.client import ImagineBot
from bot.config import Settings
from tests.e2e.fake_discord import FakeDiscord
from tests.e2e.fake_models import FakeGuild
from tests.e2e.harness import point_discord_at, running


@pytest.fixture
async def discord_server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    """A fake Discord on a free loopback port; discord.py's endpoints point at it for this test.

    On teardown the server is closed and no task may be left running on the loop.
    """
    async with FakeDiscord() as server:
        point_discord_at(monkeypatch, server)
        yield server
    await asyncio.sleep(0)  # let cancelled callbacks run before looking
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    for task in leftover:
        task.cancel()
    assert not leftover, f"tasks still running after the test: {leftover}"


@pytest.fixture
def discord_guild(discord_server: FakeDiscord) -> FakeGuild:
    """A guild with #general, its owner and the bot; added before any bot connects, so READY lists it."""
    return discord_server.add_guild("imaginebot test")


@pytest.fixture
def settings(tmp_path: Path, discord_guild: FakeGuild) -> Settings:
    """The bot's settings: a fresh data dir, the safety stages that need no weights, commands synced to the guild."""
    return replace(Settings(data_dir=tmp_path), safety_stages=("prompt", "integrity"),
                   discord_guilds=(discord_guild.id,))  # fmt: skip


@pytest.fixture
async def bot(settings: Settings, discord_server: FakeDiscord) -> AsyncIterator[ImagineBot]:
    """The real bot, logged in to the fake Discord and ready."""
    client = ImagineBot(settings, guild_ready_timeout=0.05)
    async with running(client, discord_server.token, timeout=60):
        yield client
