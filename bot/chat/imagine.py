"""The /imagine cog: accept a request, keep one message up to date, post the result with buttons.

One message per job: queue position and ETA, then live progress (at most one edit per
:data:`EDIT_INTERVAL` seconds per job), then the grid with its buttons — or a plain sentence when
the job was held, blocked, failed or cancelled. Edits go through the interaction's webhook while its
token is valid; after :data:`TOKEN_LIFETIME` (or for jobs resumed after a restart) the result is
posted as a channel message that mentions the requester.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat.attachments import fit_image
from bot.chat.buttons import appeal_view, detached, image_view, progress_view, result_view
from bot.chat.render import ASPECTS, ending_text, progress_text, queued_text, result_text, size_for, tally_text
from bot.errors import (
    AttachmentTooLargeError,
    IllegalTransitionError,
    JobNotFoundError,
    PromptBlockedError,
    UserFacingError,
)
from bot.guild_config import GuildConfig
from bot.jobs import (
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_STEPS,
    VARIATION_STRENGTH,
    Job,
    JobKind,
    JobRequest,
    JobState,
    Requester,
    can_upscale,
    upscale_request,
    variation_request,
)
from bot.moderation import plain_category
from bot.records import OutputRecord, VerdictRecord
from bot.service import ImagineService, JobUpdate
from models import catalog
from models.types import MAX_SEED
from safety.verdict import appealable

logger = logging.getLogger(__name__)

EDIT_INTERVAL = 1.5  # seconds between progress edits of one message (Discord rate limits edits)
TOKEN_LIFETIME = 14 * 60  # interaction tokens last 15 minutes; keep a margin


@dataclass
class Delivery:
    """Where a job's message lives and when it was last edited."""

    interaction: discord.Interaction[Any] | None
    channel_id: int | None
    user_id: int
    started: float = field(default_factory=time.monotonic)
    last_edit: float = 0.0
    pending: tuple[int, int] | None = None  # the latest (step, total) not yet shown
    timer: asyncio.TimerHandle | None = None


class ImagineCog(commands.Cog):
    """/imagine, /queue and /cancel, and the buttons under results."""

    def __init__(self, bot: commands.AutoShardedBot, service: ImagineService) -> None:
        self.bot = bot
        self.service = service
        self._deliveries: dict[str, Delivery] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe = service.subscribe(self._on_update)

    async def cog_unload(self) -> None:
        self._unsubscribe()
        for task in list(self._tasks):
            task.cancel()

    # --- commands ---

    @app_commands.command(name="imagine")
    @app_commands.guild_only()
    @app_commands.choices(aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS])
    async def imagine(
        self,
        interaction: discord.Interaction[Any],
        prompt: app_commands.Range[str, 1, 1000],
        negative: app_commands.Range[str, 0, 1000] | None = None,
        aspect: str = "1:1",
        seed: app_commands.Range[int, 0, MAX_SEED - MAX_IMAGES + 1] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        guidance: app_commands.Range[float, 0.0, MAX_GUIDANCE] | None = None,
        count: app_commands.Range[int, 1, MAX_IMAGES] = MAX_IMAGES,
        model: str | None = None,
    ) -> None:
        """Generate images from a prompt.

        Args:
            prompt: What to draw.
            negative: What to keep out of the picture.
            aspect: Shape of the images.
            seed: Seed of the first image, to reproduce a result (random if left out).
            steps: Denoising steps (more is slower; the model's default if left out).
            guidance: How closely to follow the prompt (the model's default if left out).
            count: How many images, 1 to 4.
            model: Which model (this server's default if left out).
        """
        try:
            request = await self._request(interaction, prompt, negative, aspect, seed, steps, guidance, count, model)
            await self.service.precheck(request)  # prompt filter and caps: refuse privately, before deferring
        except PromptBlockedError as exc:  # the refusal is kept as a blocked job: its requester may appeal
            if exc.job_id is not None and appealable(exc.category):
                await interaction.response.send_message(
                    exc.message, ephemeral=True, view=detached(appeal_view(exc.job_id))
                )
            else:
                await interaction.response.send_message(exc.message, ephemeral=True)
            return
        except UserFacingError as exc:
            await interaction.response.send_message(exc.message, ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        await self._start(interaction, request)

    @imagine.autocomplete("model")
    async def _complete_model(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        """This server's allowed models that contain what was typed (Discord shows at most 25)."""
        config = await self.service.guild_config(str(interaction.guild_id))
        matches = [m for m in config.allowed_models if current.lower() in m.lower() and len(m) <= 100]
        return [app_commands.Choice(name=m, value=m) for m in matches[:25]]

    @app_commands.command(name="queue")
    @app_commands.guild_only()
    async def queue(self, interaction: discord.Interaction[Any]) -> None:
        """Show your queued and running jobs with their place in line."""
        jobs = await self.service.storage.list_jobs(limit=25, user_id=str(interaction.user.id),
                                                    states={JobState.QUEUED, JobState.RUNNING})  # fmt: skip
        lines = [self._queue_line(job) for job in jobs]
        guild_id = str(interaction.guild_id)
        text = "**Yours**\n" + "\n".join(lines) if lines else "You have nothing queued."
        places = self.service.guild_queue(guild_id)
        total = self.service.queued_for_guild(guild_id)
        server = [f"#{p.position} · <@{p.user_id}>" + (f" · ~{p.eta:.0f} s" if p.eta is not None else "")
                  for p in places]  # fmt: skip
        more = f"\n…and {total - len(places)} more" if total > len(places) else ""
        text += f"\n**This server: {total} waiting**" + ("\n" + "\n".join(server) + more if server else "")
        text += f"\n⚠️ {self.service.outage}" if self.service.outage else ""
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="cancel")
    @app_commands.guild_only()
    async def cancel(self, interaction: discord.Interaction[Any], job: str | None = None) -> None:
        """Cancel one of your queued or running jobs.

        Args:
            job: The job id (see /queue); your most recent job if left out.
        """
        mine = await self.service.storage.list_jobs(limit=1, user_id=str(interaction.user.id),
                                                    states={JobState.QUEUED, JobState.RUNNING})  # fmt: skip
        if job is None and not mine:
            await interaction.response.send_message("You have nothing queued or running.", ephemeral=True)
            return
        try:
            target = await self.service.storage.get_job(job) if job else mine[0]
        except JobNotFoundError:
            await interaction.response.send_message(f"There is no job `{(job or '')[:40]}`.", ephemeral=True)
            return
        await self._cancel(interaction, target)

    @app_commands.command(name="history")
    @app_commands.guild_only()
    async def history(self, interaction: discord.Interaction[Any]) -> None:
        """Your recent jobs in this server, with their seeds."""
        jobs = await self.service.storage.list_jobs(limit=10, user_id=str(interaction.user.id),
                                                    guild_id=str(interaction.guild_id))  # fmt: skip
        lines = [f"`{j.id}` {j.state} · seed `{j.request.seed}` · {j.request.prompt[:70]}" for j in jobs]
        await interaction.response.send_message("\n".join(lines) or "No jobs yet.", ephemeral=True)

    def _queue_line(self, job: Job) -> str:
        if job.state is JobState.RUNNING:
            return f"`{job.id}` running — {job.request.prompt[:60]}"
        eta = self.service.eta(job.id)
        return f"`{job.id}` #{self.service.position(job.id)}" + (f", ~{eta:.0f} s" if eta else "") + \
            f" — {job.request.prompt[:60]}"  # fmt: skip

    # --- buttons ---

    async def on_button(
        self, interaction: discord.Interaction[Any], action: str, job_id: str, index: int | None
    ) -> None:
        try:
            job = await self.service.storage.get_job(job_id)
        except JobNotFoundError:
            await interaction.response.send_message("That job no longer exists.", ephemeral=True)
            return
        if action == "x":
            await self._cancel(interaction, job)
        elif action == "r":
            await self._reroll(interaction, job)
        elif action == "k" and index is not None:
            await self._vote(interaction, job, index)
        elif action == "d":
            await self._delete(interaction, job)
        elif action == "u" and index is not None:
            await self._select(interaction, job, index)
        elif action in ("v", "s", "g", "z") and index is not None:
            await self._derive(interaction, job, index, action)

    async def _cancel(self, interaction: discord.Interaction[Any], job: Job) -> None:
        if not _may_moderate(interaction, job, await self.service.guild_config(job.request.guild_id)):
            await interaction.response.send_message("Only the person who asked, or a moderator, can cancel this.",
                                                    ephemeral=True)  # fmt: skip
            return
        try:
            await self.service.cancel(job.id, actor_id=str(interaction.user.id))
        except IllegalTransitionError:
            await interaction.response.send_message("This job has already finished.", ephemeral=True)
            return
        await interaction.response.send_message("Cancelling.", ephemeral=True)

    async def _reroll(self, interaction: discord.Interaction[Any], job: Job) -> None:
        """Same parameters (a variation stays a variation of the same image), new seed."""
        try:
            config = await self._click_config(interaction, job)
            request = job.request.rerolled(_requester(interaction, config), parent_job_id=job.id)
        except UserFacingError as exc:
            await interaction.response.send_message(exc.message, ephemeral=True)
            return
        await self._accept(interaction, request)

    async def _derive(self, interaction: discord.Interaction[Any], job: Job, index: int, action: str) -> None:
        """V1-V4 and Vary (subtle/strong): variations of one image; Upscale x2: that image, twice the size."""
        output = await self._allowed_output(job, index)
        if output is None:
            await interaction.response.send_message("That image is not available.", ephemeral=True)
            return
        try:
            config = await self._click_config(interaction, job)
            by = _requester(interaction, config)
            if action == "z":
                max_side = catalog.preset_for(job.request.model).max_side
                request = upscale_request(job, index, output.seed, by, max_side=max_side)
            else:
                mode = {"s": "subtle", "g": "strong"}.get(action, config.variation_mode)
                request = variation_request(job, index, VARIATION_STRENGTH[mode], by)
        except UserFacingError as exc:
            await interaction.response.send_message(exc.message, ephemeral=True)
            return
        await self._accept(interaction, request)

    async def _accept(self, interaction: discord.Interaction[Any], request: JobRequest) -> None:
        """Check a request made by a click, answer privately if refused, else defer and queue it."""
        try:
            await self.service.precheck(request)
        except UserFacingError as exc:
            await interaction.response.send_message(exc.message, ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        await self._start(interaction, request)

    async def _click_config(self, interaction: discord.Interaction[Any], job: Job) -> GuildConfig:
        """This server's /settings, once a click that makes a new job is allowed here with the job's model.

        Raises:
            UserFacingError: /imagine is not allowed in this channel, or the model no longer is.
        """
        config = await self.service.guild_config(str(interaction.guild_id))
        _check_here(interaction, config, job.request.model, leave_out=False)
        return config

    async def _allowed_output(self, job: Job, index: int) -> OutputRecord | None:
        """Output ``index`` of ``job`` if it may be shown and reused: finished, stored and allowed
        (or held and then approved by a moderator)."""
        if job.state not in (JobState.DONE, JobState.APPROVED):
            return None
        if index not in shown_indexes(job, await self.service.storage.verdicts_for(job.id)):
            return None
        return next((o for o in await self.service.storage.outputs_for(job.id) if o.index == index), None)

    async def _delete(self, interaction: discord.Interaction[Any], job: Job) -> None:
        if not _may_moderate(interaction, job, await self.service.guild_config(job.request.guild_id)):
            await interaction.response.send_message("Only the person who asked, or a moderator, can delete this.",
                                                    ephemeral=True)  # fmt: skip
            return
        await interaction.response.defer()
        if interaction.message is not None:
            with contextlib.suppress(discord.NotFound):
                await interaction.message.delete()
        await self.service.storage.audit("delete_message", guild_id=job.request.guild_id,
                                         actor_id=str(interaction.user.id), target=job.id)  # fmt: skip

    async def _vote(self, interaction: discord.Interaction[Any], job: Job, index: int) -> None:
        allowed = shown_indexes(job, await self.service.storage.verdicts_for(job.id))
        if job.state not in (JobState.DONE, JobState.APPROVED) or index not in allowed:
            await interaction.response.send_message("That image can't be voted for.", ephemeral=True)
            return
        tally = await self.service.storage.vote(job.id, str(interaction.user.id), index,
                                                guild_id=str(interaction.guild_id))  # fmt: skip
        content = result_text(job) + "\n" + tally_text(tally)
        # One vote per member per grid: voting again moves the vote. The tally shows on the message.
        await interaction.response.edit_message(content=content, view=result_view(job.id, job.request.count,
                                                                                   allowed=allowed))  # fmt: skip

    @app_commands.command(name="top")
    @app_commands.guild_only()
    @app_commands.choices(period=[app_commands.Choice(name=p, value=p) for p in ("day", "week", "month", "all")])
    async def top(self, interaction: discord.Interaction[Any], period: str = "week") -> None:
        """The most-voted images of this server.

        Args:
            period: How far back to look.
        """
        since = time.time() - {"day": 86400, "week": 7 * 86400, "month": 30 * 86400}.get(period, time.time())
        best = await self.service.storage.top_voted(str(interaction.guild_id), since=since, limit=10)
        lines = []
        for rank, (job_id, index, votes) in enumerate(best, 1):
            job = await self.service.storage.get_job(job_id)
            lines.append(f"{rank}. **{job.request.prompt[:80]}** — image {index + 1}, {votes} vote(s), "
                         f"seed `{job.request.seeds[index]}`, by <@{job.request.user_id}>")  # fmt: skip
        text = "\n".join(lines) if lines else f"No votes this {period}." if period != "all" else "No votes yet."
        await interaction.response.send_message(text, allowed_mentions=discord.AllowedMentions.none())

    async def _select(self, interaction: discord.Interaction[Any], job: Job, index: int) -> None:
        """U1-U4: post one image of the grid alone, at full size, with its own buttons."""
        output = await self._allowed_output(job, index)
        if output is None:
            await interaction.response.send_message("That image is not available.", ephemeral=True)
            return
        files = await self._fitted(f"{job.id}-{index + 1}", output.path, interaction.filesize_limit)
        view = image_view(job.id, index, upscale=self._upscalable(job))
        await interaction.response.send_message(
            f"Image {index + 1} of **{job.request.prompt[:180]}** · seed `{output.seed}`", files=files, view=view
        )

    @staticmethod
    def _upscalable(job: Job) -> bool:
        return can_upscale(job.request, catalog.preset_for(job.request.model).max_side)

    # --- the job's message ---

    async def _request(self, interaction: discord.Interaction[Any], prompt: str, negative: str | None, aspect: str,
                       seed: int | None, steps: int | None, guidance: float | None, count: int,
                       model: str | None) -> JobRequest:  # fmt: skip
        """The request /imagine makes here, within this server's /settings (channels, models, NSFW policy)."""
        config = await self.service.guild_config(str(interaction.guild_id))
        chosen = model or config.default_model
        _check_here(interaction, config, chosen, leave_out=True)
        preset = catalog.preset_for(chosen)
        width, height = size_for(aspect, preset.width)
        return JobRequest.create(
            prompt, model=chosen, negative_prompt=negative or "", seed=seed, steps=steps or preset.steps,
            width=width, height=height, count=count, guidance=preset.guidance if guidance is None else guidance,
            guild_id=str(interaction.guild_id), user_id=str(interaction.user.id),
            channel_id=str(interaction.channel_id), age_restricted=_age_restricted(interaction, config),
        )  # fmt: skip

    async def _start(self, interaction: discord.Interaction[Any], request: JobRequest) -> None:
        try:
            job = await self.service.submit(request, prechecked=True)  # every caller ran precheck first
        except UserFacingError as exc:  # lost a race with the cap since precheck: say so in the message
            await interaction.edit_original_response(content=exc.message)
            return
        channel_id = interaction.channel_id
        self._deliveries[job.id] = Delivery(interaction, channel_id, interaction.user.id)
        text = queued_text(request.prompt, self.service.position(job.id), self.service.eta(job.id))
        await interaction.edit_original_response(content=text, view=progress_view(job.id))

    def _on_update(self, update: JobUpdate) -> None:
        if update.state in (JobState.APPROVED, JobState.REJECTED):
            return  # a moderator's decision: the moderation cog's outbox delivers it
        delivery = self._deliveries.get(update.job_id)
        if update.state.finished:
            self._spawn(self._finish(update.job_id))
        elif delivery is not None and update.step is not None and update.total is not None:
            self._schedule_edit(update.job_id, delivery, (update.step, update.total))

    def _schedule_edit(self, job_id: str, delivery: Delivery, progress: tuple[int, int]) -> None:
        delivery.pending = progress
        wait = EDIT_INTERVAL - (time.monotonic() - delivery.last_edit)
        if delivery.timer is None:
            loop = asyncio.get_running_loop()
            delivery.timer = loop.call_later(max(0.0, wait), lambda: self._spawn(self._flush(job_id)))

    async def _flush(self, job_id: str) -> None:
        delivery = self._deliveries.get(job_id)
        if delivery is None or delivery.pending is None or delivery.interaction is None:
            return
        delivery.timer = None
        step, total = delivery.pending
        delivery.pending = None
        delivery.last_edit = time.monotonic()
        job = await self.service.storage.get_job(job_id)
        if job.state.finished:
            return
        with contextlib.suppress(discord.HTTPException):
            await delivery.interaction.edit_original_response(content=progress_text(job.request.prompt, step, total))

    async def _finish(self, job_id: str) -> None:
        delivery = self._deliveries.pop(job_id, None)
        if delivery is not None and delivery.timer is not None:
            delivery.timer.cancel()
        job = await self.service.storage.get_job(job_id)
        if delivery is None and job.request.channel_id is None:
            return  # not a chat job (e.g. the CLI)
        interaction = delivery.interaction if delivery is not None and \
            time.monotonic() - delivery.started < TOKEN_LIFETIME else None  # fmt: skip
        content, files, view = await self._final_message(job, self._upload_limit(job, interaction))
        if interaction is not None:
            try:
                await interaction.edit_original_response(content=content, attachments=files, view=view)
                return
            except discord.HTTPException as exc:  # e.g. the token expired early: fall back to the channel
                logger.warning("editing the response of %s failed (%s); posting in the channel", job_id, exc)
                # The failed upload consumed the files; a channel post has the guild's limit.
                content, files, view = await self._final_message(job, self._upload_limit(job, None))
        await self._post_in_channel(job, content, files, view)

    async def _final_message(self, job: Job, limit: int) -> tuple[str, list[discord.File], discord.ui.View | None]:
        if job.state is JobState.DONE and job.grid_path:
            verdicts = await self.service.storage.verdicts_for(job.id)
            allowed = [v.index for v in verdicts if v.decision == "allow"]
            files = await self._fitted(job.id, job.grid_path, limit)
            if job.request.kind is JobKind.UPSCALE:  # one image: its own buttons, not a grid's
                return result_text(job), files, image_view(job.id, 0, upscale=self._upscalable(job), delete=True)
            return result_text(job), files, result_view(job.id, job.request.count, allowed=allowed)
        verdicts = await self.service.storage.verdicts_for(job.id)
        if job.state is JobState.FLAGGED:
            held = next((v.category for v in verdicts if v.decision == "flag"), None)
            return ending_text(job, plain_category(held)), [], None
        blocks = [v for v in verdicts if v.decision == "block"]
        reasons = {v.reason for v in blocks}
        text = ending_text(job, next(iter(sorted(reasons)), ""))
        if job.state is JobState.BLOCKED and blocks and all(appealable(v.category) for v in blocks):
            return text, [], appeal_view(job.id)  # the requester may ask moderators to look again
        return text, [], None

    def _upload_limit(self, job: Job, interaction: discord.Interaction[Any] | None) -> int:
        """Bytes per file where the result goes: the interaction says its limit; a channel post has the guild's."""
        if interaction is not None:
            return interaction.filesize_limit  # the payload's attachment_size_limit
        guild = self.bot.get_guild(int(job.request.guild_id)) if job.request.guild_id.isdigit() else None
        return guild.filesize_limit if guild is not None else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES

    async def _fitted(self, stem: str, path: str, limit: int) -> list[discord.File]:
        """An image as an attachment within ``limit`` (re-encoded off the loop if the PNG is too large)."""
        try:
            return [await asyncio.to_thread(fit_image, path, stem, limit)]
        except AttachmentTooLargeError as exc:  # only with limits far below Discord's: post the text alone
            logger.warning("%s is not attached: %s", stem, exc)
            return []

    async def _post_in_channel(self, job: Job, content: str, files: list[discord.File],
                               view: discord.ui.View | None) -> None:  # fmt: skip
        channel_id = job.request.channel_id
        if channel_id is None:
            return
        channel = self.bot.get_channel(int(channel_id)) or await self.bot.fetch_channel(int(channel_id))
        if not isinstance(channel, discord.abc.Messageable):
            return
        mention = f"<@{job.request.user_id}> "
        kwargs: dict[str, Any] = {"content": mention + content, "files": files}
        if view is not None:
            kwargs["view"] = view
        await channel.send(**kwargs)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("delivering a job update failed", exc_info=task.exception())


def shown_indexes(job: Job, verdicts: list[VerdictRecord]) -> list[int]:
    """Images of a job members may see and reuse: allowed ones, and held ones once a moderator approved."""
    shown = ("allow", "flag") if job.state is JobState.APPROVED else ("allow",)
    return [v.index for v in verdicts if v.decision in shown]


def _requester(interaction: discord.Interaction[Any], config: GuildConfig) -> Requester:
    return Requester(str(interaction.user.id), str(interaction.channel_id), _age_restricted(interaction, config))


def _check_here(interaction: discord.Interaction[Any], config: GuildConfig, model: str, *, leave_out: bool) -> None:
    """Refuse a new job in a channel /settings does not allow, or with a model it does not allow.

    Raises:
        UserFacingError: saying where /imagine is allowed, or which models are.
    """
    if not config.allows_channel(*_channel_ids(interaction)):
        where = ", ".join(f"<#{c}>" for c in sorted(config.allowed_channels))
        raise UserFacingError(f"/imagine is not allowed in this channel; this server allows it in {where}.")
    if model not in config.allowed_models:
        allowed = ", ".join(f"`{m}`" for m in config.allowed_models)
        hint = f"; leave it out to use `{config.default_model}`" if leave_out else ""
        raise UserFacingError(f"The model `{model[:100]}` is not available here (this server allows {allowed}){hint}.")


def _channel_ids(interaction: discord.Interaction[Any]) -> tuple[int, ...]:
    """The channel, and a thread's parent: /settings name channels, and a thread belongs to its parent."""
    parent = getattr(interaction.channel, "parent_id", None)
    return tuple(c for c in (interaction.channel_id, parent) if isinstance(c, int))


def _age_restricted(interaction: discord.Interaction[Any], config: GuildConfig) -> bool:
    """Whether suggestive (never explicit) content may pass here: Discord's own age-restricted ("NSFW")
    channel flag, unless this server's NSFW policy makes the channel (or a thread's parent) strict.
    """
    channel = interaction.channel
    flagged = bool(channel is not None and getattr(channel, "is_nsfw", lambda: False)())
    if not flagged:
        return False
    return all(config.allows_suggestive(c, flagged) for c in _channel_ids(interaction))


def _may_moderate(interaction: discord.Interaction[Any], job: Job, config: GuildConfig) -> bool:
    """The requester, a member who can manage messages, or one with the server's moderator role (/settings)
    may cancel or delete a job."""
    return str(interaction.user.id) == job.request.user_id or may_moderate_here(interaction, config)


def may_moderate_here(interaction: discord.Interaction[Any], config: GuildConfig) -> bool:
    """A member with Manage Messages (or Administrator), or with the server's moderator role."""
    if config.is_moderator(role.id for role in getattr(interaction.user, "roles", ())):
        return True
    permissions = getattr(interaction, "permissions", None)
    return bool(permissions and (permissions.manage_messages or permissions.administrator))
