"""The Discord client: opens the service in ``setup_hook``, registers the cog and buttons, syncs commands."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from typing import Any

import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.app import load_face_models, open_moderation, open_service, open_verifier
from bot.chat.buttons import JobButton, ReviewButton
from bot.chat.imagine import ImagineCog
from bot.chat.moderation import DELIVERY_INTERVAL, ModerationCog
from bot.chat.settings import SettingsCog
from bot.chat.verify import VerifyCog
from bot.config import Settings
from bot.errors import ConfigError, UserFacingError
from bot.observability import start_observability
from bot.remote.runner import RedisRunner
from safety.gallery import ProtectedGallery

logger = logging.getLogger(__name__)


# What the bot needs in a channel: see it, answer, post in threads, attach images (and embed them),
# and read the history its buttons live in. Nothing else: no Administrator, no Manage anything.
INVITE_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
)
INVITE_SCOPES = ("bot", "applications.commands")


def invite_url(client_id: str) -> str:
    """The OAuth2 link that adds the bot to a server with :data:`INVITE_PERMISSIONS`.

    Raises:
        ValueError: ``client_id`` is not an application id (a Discord snowflake: digits).
    """
    if not client_id.isdigit() or not 15 <= len(client_id) <= 21:
        raise ValueError(f"{client_id[:40]!r} is not an application id (15-21 digits, from the developer portal)")
    return discord.utils.oauth_url(client_id, permissions=INVITE_PERMISSIONS, scopes=INVITE_SCOPES)


def use_endpoints(settings: Settings) -> None:
    """Point discord.py at a REST proxy and/or gateway proxy (or the tests' fake Discord)."""
    if settings.discord_api_base:
        discord.http.Route.BASE = settings.discord_api_base
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


class ImagineBot(commands.AutoShardedBot):
    """imaginebot in Discord. Async setup lives in :meth:`setup_hook`, never in ``__init__``.

    Sharded automatically: unless ``shard_count`` is passed, discord.py asks ``GET /gateway/bot``
    for the number of shards Discord recommends (it grows with the guild count, one per ~1000 guilds)
    and opens one gateway connection per shard, so a small bot runs one shard and a large one as
    many as Discord requires, without a setting.
    """

    def __init__(self, settings: Settings, *, moderation_interval: float = DELIVERY_INTERVAL, **options: Any) -> None:
        super().__init__(command_prefix=commands.when_mentioned, intents=discord.Intents.default(),
                         allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True),
                         **options)  # fmt: skip
        self.settings = settings
        self._moderation_interval = moderation_interval
        self._resources = AsyncExitStack()

    async def launch_shards(self) -> None:
        if self.shard_count is None and self.settings.discord_gateway_url:
            # discord.py would connect to the URL that /gateway/bot names and bypass the configured
            # gateway; take only the count from Discord, and discord.py then uses DEFAULT_GATEWAY.
            self.shard_count, _, _ = await self.http.get_bot_gateway()
        await super().launch_shards()

    async def setup_hook(self) -> None:
        service = await self._resources.enter_async_context(open_service(self.settings))
        # /metrics, /healthz, /readyz when IMAGINEBOT_METRICS_PORT is set (None otherwise); ready once the gateway is.
        self.observability = await self._resources.enter_async_context(
            start_observability(
                self.settings,
                service,
                ready=self.is_ready,
                probes=[service.runner] if isinstance(service.runner, RedisRunner) else [],
            )
        )
        await self.add_cog(ImagineCog(self, service))
        await self.add_cog(SettingsCog(self, service))
        verifier = await asyncio.to_thread(open_verifier, self.settings, service.storage)
        await self.add_cog(VerifyCog(self, service, verifier))
        moderation = await asyncio.to_thread(open_moderation, self.settings, service)
        gallery = ProtectedGallery(self.settings.protected_dir)
        await self.add_cog(ModerationCog(self, service, moderation, gallery=gallery,
                                         face_models=lambda: load_face_models(self.settings),
                                         interval=self._moderation_interval))  # fmt: skip
        self.add_dynamic_items(JobButton, ReviewButton)
        self.tree.on_error = self.on_app_command_error  # type: ignore[method-assign]
        await self.sync_commands()

    async def sync_commands(self) -> None:
        """Sync to the configured guilds (instant), or globally when none are configured."""
        if not self.settings.discord_guilds:
            await self.tree.sync()
            return
        for guild_id in self.settings.discord_guilds:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)

    async def on_app_command_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        """Nothing raises into the void: log with context, tell the user briefly and privately."""
        cause = getattr(error, "original", error)
        if isinstance(cause, UserFacingError):
            message = cause.message
        elif isinstance(error, app_commands.CheckFailure):
            message = "You can't use this command here."
        else:
            command = interaction.command.qualified_name if interaction.command else "?"
            logger.error("/%s by %s in guild %s failed", command, interaction.user.id, interaction.guild_id,
                         exc_info=cause)  # fmt: skip
            message = "Something went wrong on our side. Please try again."
        if interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True)
        else:
            await interaction.response.send_message(message, ephemeral=True)

    async def close(self) -> None:
        await super().close()
        await self._resources.aclose()


async def run_bot(settings: Settings) -> None:
    """Start the bot with the configured token (``imaginebot run``)."""
    if settings.discord_token is None:
        raise ConfigError("IMAGINEBOT_DISCORD_TOKEN (or DISCORD_TOKEN) is not set: the bot needs a token to run")
    use_endpoints(settings)
    async with ImagineBot(settings) as bot:
        await bot.start(settings.discord_token.get())
