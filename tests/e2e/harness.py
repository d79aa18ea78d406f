"""Pointing the real discord.py at a :class:`FakeDiscord`, and running a bot against it.

discord.py takes its endpoints from two class attributes: ``discord.http.Route.BASE`` (a ``str``;
REST and the interaction webhooks both build URLs from it) and
``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` (a ``yarl.URL`` in 2.7; it appends
``?v=10&encoding=json&compress=zlib-stream`` itself). A non-sharded client (``commands.Bot``)
never asks ``GET /gateway/bot``; it connects to ``DEFAULT_GATEWAY`` directly. An
``AutoShardedClient`` without ``shard_count`` (``ImagineBot``) asks ``GET /gateway/bot`` for the
shard count and the gateway URL, which the fake answers with its own URL and
``recommended_shards``, then opens one connection per shard. Both RESUME at READY's
``resume_gateway_url``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import discord
import discord.gateway
import discord.http
import pytest
import yarl

from tests.e2e.fake_discord import FakeDiscord


def point_discord_at(monkeypatch: pytest.MonkeyPatch, server: FakeDiscord) -> None:
    """Send discord.py's REST and gateway traffic to ``server`` until the test ends."""
    monkeypatch.setattr(discord.http.Route, "BASE", server.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(server.gateway_url))


@asynccontextmanager
async def running(
    bot: discord.Client,
    token: str,
    *,
    timeout: float = 5.0,  # noqa: ASYNC109 -- a default deadline: a test that forgets one still stops
) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``bot.start(token)`` as a task until the block ends; enter once the bot is ready.

    ``async with bot`` binds the client to this loop first, which ``wait_until_ready`` needs. On
    exit the bot is closed and its task awaited, so no task outlives the block; an error the task
    ended with is raised.

    Raises:
        TimeoutError: the bot was not ready within ``timeout`` seconds.
    """
    async with bot:
        task = asyncio.create_task(bot.start(token), name=f"bot.start:{type(bot).__name__}")
        ready = asyncio.create_task(bot.wait_until_ready(), name="bot.wait_until_ready")
        try:
            done, _ = await asyncio.wait({task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if ready not in done:
                if task in done:
                    task.result()  # the reason it stopped
                raise TimeoutError(f"bot not ready within {timeout}s")
            yield task
        finally:
            ready.cancel()
            await bot.close()
            await asyncio.wait_for(asyncio.shield(task), timeout)
            await asyncio.gather(ready, return_exceptions=True)
