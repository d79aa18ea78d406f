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

from bot.chat.buttons import progress_view, result_view
from bot.chat.render import ASPECTS, ending_text, progress_text, queued_text, result_text, size_for, tally_text
from bot.errors import IllegalTransitionError, JobNotFoundError, UserFacingError
from bot.jobs import MAX_GUIDANCE, MAX_IMAGES, MAX_STEPS, Job, JobRequest, JobState
from bot.service import ImagineService, JobUpdate
from models import catalog
from models.types import MAX_SEED

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

    def __init__(self, bot: commands.Bot, service: ImagineService) -> None:
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
            request = self._request(interaction, prompt, negative, aspect, seed, steps, guidance, count, model)
            await self.service.precheck(request)  # prompt filter and caps: refuse privately, before deferring
        except UserFacingError as exc:
            await interaction.response.send_message(exc.message, ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        await self._start(interaction, request)

    @app_commands.command(name="queue")
    @app_commands.guild_only()
    async def queue(self, interaction: discord.Interaction[Any]) -> None:
        """Show your queued and running jobs with their place in line."""
        jobs = await self.service.storage.list_jobs(limit=25, user_id=str(interaction.user.id),
                                                    states={JobState.QUEUED, JobState.RUNNING})  # fmt: skip
        lines = [self._queue_line(job) for job in jobs]
        guild_total = self.service.queued_for_guild(str(interaction.guild_id))
        text = "\n".join(lines) if lines else "You have nothing queued."
        await interaction.response.send_message(f"{text}\nJobs waiting in this server: {guild_total}", ephemeral=True)

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
        elif index is not None:
            await self._upscale(interaction, job, index)

    async def _cancel(self, interaction: discord.Interaction[Any], job: Job) -> None:
        if not _may_moderate(interaction, job):
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
        r = job.request
        try:
            request = JobRequest.create(
                r.prompt, model=r.model, negative_prompt=r.negative_prompt, steps=r.steps, width=r.width,
                height=r.height, count=r.count, guidance=r.guidance, guild_id=str(interaction.guild_id),
                user_id=str(interaction.user.id), channel_id=str(interaction.channel_id), parent_job_id=job.id,
                age_restricted=_age_restricted(interaction),
            )  # fmt: skip
            await self.service.precheck(request)
        except UserFacingError as exc:
            await interaction.response.send_message(exc.message, ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        await self._start(interaction, request)

    async def _delete(self, interaction: discord.Interaction[Any], job: Job) -> None:
        if not _may_moderate(interaction, job):
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
        verdicts = {v.index: v.decision for v in await self.service.storage.verdicts_for(job.id)}
        if job.state not in (JobState.DONE, JobState.APPROVED) or verdicts.get(index) != "allow":
            await interaction.response.send_message("That image can't be voted for.", ephemeral=True)
            return
        tally = await self.service.storage.vote(job.id, str(interaction.user.id), index,
                                                guild_id=str(interaction.guild_id))  # fmt: skip
        allowed = [i for i, d in verdicts.items() if d == "allow"]
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

    async def _upscale(self, interaction: discord.Interaction[Any], job: Job, index: int) -> None:
        outputs = {o.index: o for o in await self.service.storage.outputs_for(job.id)}
        verdicts = {v.index: v for v in await self.service.storage.verdicts_for(job.id)}
        output = outputs.get(index)
        if output is None or job.state not in (JobState.DONE, JobState.APPROVED) or verdicts[index].decision != "allow":
            await interaction.response.send_message("That image is not available.", ephemeral=True)
            return
        file = discord.File(output.path, filename=f"{job.id}-{index + 1}.png")
        await interaction.response.send_message(
            f"Image {index + 1} of **{job.request.prompt[:180]}** · seed `{output.seed}`", file=file
        )

    # --- the job's message ---

    def _request(self, interaction: discord.Interaction[Any], prompt: str, negative: str | None, aspect: str,
                 seed: int | None, steps: int | None, guidance: float | None, count: int,
                 model: str | None) -> JobRequest:  # fmt: skip
        default = self.service.settings.model
        if model not in (None, default):
            raise UserFacingError(f"The model {model!r} is not available here; leave it out to use {default!r}.")
        preset = catalog.preset_for(default)
        width, height = size_for(aspect, preset.width)
        return JobRequest.create(
            prompt, model=default, negative_prompt=negative or "", seed=seed, steps=steps or preset.steps,
            width=width, height=height, count=count, guidance=preset.guidance if guidance is None else guidance,
            guild_id=str(interaction.guild_id), user_id=str(interaction.user.id),
            channel_id=str(interaction.channel_id), age_restricted=_age_restricted(interaction),
        )  # fmt: skip

    async def _start(self, interaction: discord.Interaction[Any], request: JobRequest) -> None:
        try:
            job = await self.service.submit(request)
        except UserFacingError as exc:  # lost a race with the cap since precheck: say so in the message
            await interaction.edit_original_response(content=exc.message)
            return
        channel_id = interaction.channel_id
        self._deliveries[job.id] = Delivery(interaction, channel_id, interaction.user.id)
        text = queued_text(request.prompt, self.service.position(job.id), self.service.eta(job.id))
        await interaction.edit_original_response(content=text, view=progress_view(job.id))

    def _on_update(self, update: JobUpdate) -> None:
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
        content, files, view = await self._final_message(job)
        if delivery is not None and delivery.interaction is not None and \
                time.monotonic() - delivery.started < TOKEN_LIFETIME:  # fmt: skip
            try:
                await delivery.interaction.edit_original_response(content=content, attachments=files, view=view)
                return
            except discord.HTTPException as exc:  # e.g. the token expired early: fall back to the channel
                logger.warning("editing the response of %s failed (%s); posting in the channel", job_id, exc)
                content, files, view = await self._final_message(job)  # the failed upload consumed the files
        await self._post_in_channel(job, content, files, view)

    async def _final_message(self, job: Job) -> tuple[str, list[discord.File], discord.ui.View | None]:
        if job.state is JobState.DONE and job.grid_path:
            verdicts = await self.service.storage.verdicts_for(job.id)
            allowed = [v.index for v in verdicts if v.decision == "allow"]
            file = discord.File(job.grid_path, filename=f"{job.id}.png")
            return result_text(job), [file], result_view(job.id, job.request.count, allowed=allowed)
        reasons = {v.reason for v in await self.service.storage.verdicts_for(job.id) if v.decision == "block"}
        return ending_text(job, next(iter(sorted(reasons)), "")), [], None

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


def _age_restricted(interaction: discord.Interaction[Any]) -> bool:
    """Discord's own age-restricted ("NSFW") channel flag."""
    channel = interaction.channel
    return bool(channel is not None and getattr(channel, "is_nsfw", lambda: False)())


def _may_moderate(interaction: discord.Interaction[Any], job: Job) -> bool:
    """The requester, or a member who can manage messages, may cancel or delete a job."""
    if str(interaction.user.id) == job.request.user_id:
        return True
    permissions = getattr(interaction, "permissions", None)
    return bool(permissions and (permissions.manage_messages or permissions.administrator))
