"""/settings: a server's imaginebot configuration, for members with the Manage Server permission.

``default_permissions(manage_guild=True)`` hides the command from everyone else in Discord's UI,
but a server's admins can override that per role or channel (and our fake Discord does not enforce
it), so every subcommand also checks the member's permissions when it runs. Every answer is
private. Values are validated and audited by :class:`bot.guild_config.GuildConfigStore`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.config import Settings
from bot.errors import UserFacingError
from bot.guild_config import (
    MAX_BAN_HOURS,
    MAX_COOLDOWN,
    MAX_STRIKE_WINDOW_HOURS,
    MAX_STRIKES,
    VARIATION_MODES,
    GuildConfig,
    NsfwPolicy,
)
from bot.service import ImagineService
from safety.verdict import STRICTNESS

logger = logging.getLogger(__name__)

REFUSAL = "You need the Manage Server permission to view or change imaginebot's settings."
_NO_MENTIONS = discord.AllowedMentions.none()
_Setter = Callable[..., Awaitable[GuildConfig]]


class ChannelOption(app_commands.Transformer):
    """A channel /imagine can be used in, exactly as Discord resolved it (even one the bot never cached)."""

    @property
    def type(self) -> discord.AppCommandOptionType:
        return discord.AppCommandOptionType.channel

    @property
    def channel_types(self) -> list[discord.ChannelType]:
        t = discord.ChannelType
        return [t.text, t.news, t.voice, t.forum]  # voice channels have a text chat; forum posts are threads

    async def transform(self, interaction: discord.Interaction[Any], value: Any, /) -> app_commands.AppCommandChannel:
        return value  # type: ignore[no-any-return]  # discord.py hands channel options over resolved


Channel = app_commands.Transform[app_commands.AppCommandChannel, ChannelOption]


# --- what /settings show says ---------------------------------------------------------------------


def channels_line(c: GuildConfig) -> str:
    if not c.allowed_channels:
        return "/imagine works in: every channel."
    return "/imagine works in: " + ", ".join(f"<#{i}>" for i in sorted(c.allowed_channels)) + "."


def limits_line(c: GuildConfig, s: Settings) -> str:
    cooldown = f"{c.cooldown_seconds} s between one member's requests" if c.cooldown_seconds else "no cooldown"
    return (
        f"Limits: {c.per_user_cap} jobs queued or running per member (this bot allows {s.per_user_cap}), "
        f"{cooldown}, {c.queue_cap} jobs waiting in this server (this bot allows {s.per_guild_queue_cap})."
    )


def models_line(c: GuildConfig, s: Settings) -> str:
    allowed = ", ".join(f"`{m}`" for m in c.allowed_models)
    offered = ", ".join(f"`{m}`" for m in s.available_models)
    return f"Models: default `{c.default_model}`; allowed {allowed} (this bot offers {offered})."


def nsfw_line(c: GuildConfig) -> str:
    text = ("NSFW: explicit content is never allowed. Age-restricted channels allow suggestive content "
            "unless set to strict; other channels never do.")  # fmt: skip
    if c.nsfw_policies:
        text += " Per channel: " + ", ".join(f"<#{i}> {p.value}" for i, p in sorted(c.nsfw_policies.items())) + "."
    return text


def review_line(c: GuildConfig) -> str:
    if c.review_channel is None:
        where = "Review channel: none set, so flagged images wait in the queue until a moderator reviews them."
    else:
        where = f"Review channel: <#{c.review_channel}> (flagged images are sent there for review)."
    if c.moderator_role is None:
        who = "Moderators: members with Manage Messages (no moderator role set)."
    else:
        who = f"Moderators: <@&{c.moderator_role}> and members with Manage Messages."
    return f"{where}\n{who}"


def strikes_line(c: GuildConfig) -> str:
    if c.strike_limit == 0:
        return "Strikes: never ban automatically."
    ban = "until a moderator lifts it" if c.strike_ban_hours == 0 else f"for {c.strike_ban_hours} h"
    return f"Strikes: {c.strike_limit} within {c.strike_window_hours} h ban a member from the bot {ban}."


def strictness_line(c: GuildConfig) -> str:
    return f"Safety strictness: {c.strictness}."


def variations_line(c: GuildConfig) -> str:
    return f"Variations (V1-V4): {c.variation_mode}."


def credentials_line(c: GuildConfig) -> str:
    if c.credentials_personal:
        return "Content Credentials: include the prompt (never the member)."
    return "Content Credentials: no personal data (no prompt, no member)."


def summary(c: GuildConfig, s: Settings) -> str:
    """Everything ``/settings show`` lists, one line per setting."""
    lines = [channels_line(c), limits_line(c, s), models_line(c, s), nsfw_line(c), review_line(c),
             strikes_line(c), strictness_line(c), variations_line(c), credentials_line(c)]  # fmt: skip
    return "**imaginebot settings for this server**\n" + "\n".join(lines)


def may_configure(interaction: discord.Interaction[Any]) -> bool:
    """Manage Server, or Administrator (which implies every permission)."""
    permissions = interaction.permissions
    return bool(permissions.manage_guild or permissions.administrator)


# --- the commands ---------------------------------------------------------------------------------


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class SettingsCog(commands.GroupCog, group_name="settings", group_description="This server's imaginebot settings"):
    """/settings show, channels, limits, models, nsfw, review, strictness, variations."""

    channels = app_commands.Group(name="channels", description="Where /imagine can be used")
    models = app_commands.Group(name="models", description="Which models members may use")
    review = app_commands.Group(name="review", description="Where flagged images are reviewed, and by whom")

    def __init__(self, bot: commands.Bot | commands.AutoShardedBot, service: ImagineService) -> None:
        self.bot = bot
        self.settings = service.settings
        self.store = service.guild_configs
        super().__init__()

    @app_commands.command(name="show")
    async def show(self, interaction: discord.Interaction[Any]) -> None:
        """Show every setting of this server."""
        if await self._refused(interaction):
            return
        config = await self.store.load(str(interaction.guild_id))
        waiting = await self.store.storage.pending_count(str(interaction.guild_id))
        text = summary(config, self.settings)
        if waiting:
            text += f"\n{waiting} held image set(s) or appeal(s) wait for review (/mod queue)."
        await _reply(interaction, text)

    @channels.command(name="add")
    async def channels_add(self, interaction: discord.Interaction[Any], channel: Channel) -> None:
        """Allow /imagine in a channel; once one is listed, /imagine works only in listed channels.

        Args:
            channel: The channel to allow.
        """
        await self._change(interaction, channels_line, self.store.allow_channel, channel.id)

    @channels.command(name="remove")
    async def channels_remove(self, interaction: discord.Interaction[Any], channel: Channel) -> None:
        """Take a channel off the list (not the last one: use clear to allow every channel).

        Args:
            channel: The channel to remove.
        """
        await self._change(interaction, channels_line, self.store.disallow_channel, channel.id)

    @channels.command(name="clear")
    async def channels_clear(self, interaction: discord.Interaction[Any]) -> None:
        """Let /imagine work in every channel again."""
        await self._change(interaction, channels_line, self.store.clear_channels)

    @app_commands.command(name="limits")
    async def limits(
        self,
        interaction: discord.Interaction[Any],
        per_user: app_commands.Range[int, 1, 1000] | None = None,
        cooldown: app_commands.Range[int, 0, MAX_COOLDOWN] | None = None,
        queue: app_commands.Range[int, 1, 100_000] | None = None,
    ) -> None:
        """Per-member limits and this server's queue cap (at most what the bot's operator allows).

        Args:
            per_user: Most jobs one member may have queued or running.
            cooldown: Seconds a member waits between requests (0 = none).
            queue: Most jobs this server may have waiting.
        """
        if per_user is None and cooldown is None and queue is None:  # nothing to change: say what they are
            if not await self._refused(interaction):
                await _reply(interaction, limits_line(await self.store.load(str(interaction.guild_id)), self.settings))
            return
        await self._change(interaction, lambda c: limits_line(c, self.settings), self.store.set_limits,
                           per_user_cap=per_user, cooldown_seconds=cooldown, queue_cap=queue)  # fmt: skip

    @models.command(name="default")
    async def models_default(self, interaction: discord.Interaction[Any], model: str) -> None:
        """The model /imagine uses when none is chosen.

        Args:
            model: One of this server's allowed models.
        """
        await self._change(interaction, lambda c: models_line(c, self.settings), self.store.set_default_model, model)

    @models.command(name="allow")
    async def models_allow(self, interaction: discord.Interaction[Any], model: str) -> None:
        """Let members choose a model.

        Args:
            model: One of the models this bot offers.
        """
        await self._change(interaction, lambda c: models_line(c, self.settings), self.store.allow_model, model)

    @models.command(name="disallow")
    async def models_disallow(self, interaction: discord.Interaction[Any], model: str) -> None:
        """Stop members choosing a model (not the default one).

        Args:
            model: The model to take away.
        """
        await self._change(interaction, lambda c: models_line(c, self.settings), self.store.disallow_model, model)

    @models_default.autocomplete("model")
    @models_allow.autocomplete("model")
    @models_disallow.autocomplete("model")
    async def _complete_model(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        matches = [m for m in self.settings.available_models if current.lower() in m.lower() and len(m) <= 100]
        return [app_commands.Choice(name=m, value=m) for m in matches[:25]]

    @app_commands.command(name="nsfw")
    @app_commands.choices(policy=[app_commands.Choice(name=p, value=p) for p in ("strict", "suggestive", "default")])
    async def nsfw(self, interaction: discord.Interaction[Any], channel: Channel, policy: str) -> None:
        """A channel's NSFW policy. Explicit content is never allowed anywhere.

        Args:
            channel: The channel.
            policy: strict = nothing suggestive; suggestive = allowed (age-restricted channels only); default.
        """
        chosen = None if policy == "default" else NsfwPolicy(policy)
        await self._change(interaction, nsfw_line, self.store.set_nsfw_policy, channel.id, chosen,
                           age_restricted=bool(channel.nsfw))  # fmt: skip

    @review.command(name="channel")
    async def review_channel(self, interaction: discord.Interaction[Any], channel: Channel | None = None) -> None:
        """Where moderators review flagged images.

        Args:
            channel: The review channel; leave out to have none (flagged images wait in the queue).
        """
        await self._change(interaction, review_line, self.store.set_review_channel,
                           None if channel is None else channel.id)  # fmt: skip

    @review.command(name="role")
    async def review_role(self, interaction: discord.Interaction[Any], role: discord.Role | None = None) -> None:
        """A role whose members may moderate imaginebot's jobs (besides Manage Messages).

        Args:
            role: The moderator role; leave out to have none.
        """
        await self._change(interaction, review_line, self.store.set_moderator_role, None if role is None else role.id)

    @app_commands.command(name="strikes")
    async def strikes(
        self,
        interaction: discord.Interaction[Any],
        limit: app_commands.Range[int, 0, MAX_STRIKES] | None = None,
        window_hours: app_commands.Range[int, 1, MAX_STRIKE_WINDOW_HOURS] | None = None,
        ban_hours: app_commands.Range[int, 0, MAX_BAN_HOURS] | None = None,
    ) -> None:
        """How many strikes ban a member from the bot, within how long, and for how long.

        Args:
            limit: Strikes that ban (0 = never ban automatically).
            window_hours: How far back strikes count.
            ban_hours: How long the ban lasts (0 = until a moderator lifts it).
        """
        if limit is None and window_hours is None and ban_hours is None:
            if not await self._refused(interaction):
                await _reply(interaction, strikes_line(await self.store.load(str(interaction.guild_id))))
            return
        await self._change(interaction, strikes_line, self.store.set_strikes, limit=limit, window_hours=window_hours,
                           ban_hours=ban_hours)  # fmt: skip

    @app_commands.command(name="strictness")
    @app_commands.choices(level=[app_commands.Choice(name=level, value=level) for level in STRICTNESS])
    async def strictness(self, interaction: discord.Interaction[Any], level: str) -> None:
        """How strict this server's safety checks are.

        Args:
            level: relaxed, standard or strict.
        """
        await self._change(interaction, strictness_line, self.store.set_strictness, level)

    @app_commands.command(name="variations")
    @app_commands.choices(mode=[app_commands.Choice(name=m, value=m) for m in VARIATION_MODES])
    async def variations(self, interaction: discord.Interaction[Any], mode: str) -> None:
        """How far V1-V4 stray from the image they start from.

        Args:
            mode: subtle (close to the image) or strong (freer).
        """
        await self._change(interaction, variations_line, self.store.set_variation_mode, mode)

    @app_commands.command(name="credentials")
    async def credentials(self, interaction: discord.Interaction[Any], include_prompt: bool) -> None:
        """Whether the prompt goes into the images' signed Content Credentials (C2PA).

        Args:
            include_prompt: Put the prompt in each image's credentials (anyone with the file can read it).
        """
        await self._change(interaction, credentials_line, self.store.set_credentials_personal, include_prompt)

    # --- helpers ---

    async def _refused(self, interaction: discord.Interaction[Any]) -> bool:
        if may_configure(interaction):
            return False
        await _reply(interaction, REFUSAL)
        return True

    async def _change(self, interaction: discord.Interaction[Any], line: Callable[[GuildConfig], str],
                      setter: _Setter, *args: Any, **kwargs: Any) -> None:  # fmt: skip
        """Check the permission, apply one change, answer privately with the setting's new value."""
        if await self._refused(interaction):
            return
        guild_id, actor_id = str(interaction.guild_id), str(interaction.user.id)
        try:
            config = await setter(guild_id, *args, actor_id=actor_id, **kwargs)
        except UserFacingError as exc:
            await _reply(interaction, exc.message)
            return
        logger.info("guild %s: settings changed by %s", guild_id, actor_id)
        await _reply(interaction, "Saved. " + line(config))


async def _reply(interaction: discord.Interaction[Any], text: str) -> None:
    # 2000 characters is Discord's limit; the channel lists are capped so that `show` fits.
    await interaction.response.send_message(text[:2000], ephemeral=True, allowed_mentions=_NO_MENTIONS)
