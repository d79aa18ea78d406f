"""Moderators in Discord: review cards, /mod, /privacy, and the outbox that delivers every decision.

A flagged job is never posted unreviewed. When a job is held (or a member appeals a block), a card
goes to the server's review channel: blurred previews, prompt, requester, channel, the stage's
scores and reason, and buttons Reveal, Approve, Reject, Reject + strike, Ban from bot. Only members
with the moderator role or Manage Messages may press them; the first decision wins.

Decisions, whether made here or in the web dashboard (another process on the same database), are
delivered by one loop in this process from the reviews' outbox (``delivered_at``): the approved
result is posted in the original channel (behind a spoiler where its category calls for it), the
requester is told of a rejection, the card is updated. The same loop posts cards that are missing
(a crash, or a review channel set later) and schedules jobs another process queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import logging
import mimetypes
import re
import time
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat.buttons import card_view, detached, result_view
from bot.chat.imagine import may_moderate_here, shown_indexes
from bot.chat.render import result_text
from bot.errors import JobNotFoundError, UserFacingError
from bot.guild_config import BLOCKLIST_CATEGORIES, GuildConfig
from bot.jobs import Job, JobState
from bot.moderation import SPOILER_CATEGORIES, Action, Moderation, plain_category
from bot.records import ReviewRecord, VerdictRecord
from bot.service import ImagineService, JobUpdate

if TYPE_CHECKING:
    from bot.chat.imagine import ImagineCog

logger = logging.getLogger(__name__)

DELIVERY_INTERVAL = 2.0  # seconds between outbox passes when nothing wakes the loop
REFUSAL = "Only moderators (the server's moderator role, or Manage Messages) can do that."
_NO_MENTIONS = discord.AllowedMentions.none()

REVIEW_ACTIONS = {"a": Action.APPROVE, "j": Action.REJECT, "t": Action.STRIKE, "b": Action.BAN}


def _clip(text: str, limit: int = 300) -> str:
    text = text.replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def scores_text(verdicts: list[VerdictRecord]) -> str:
    """The highest non-zero scores over a job's images, e.g. ``nsfw.gore 0.83 · prompt.sexual 1.00``."""
    best: dict[str, float] = {}
    for v in verdicts:
        for name, score in v.scores.items():
            if isinstance(score, int | float) and score > 0:
                best[name] = max(best.get(name, 0.0), float(score))
    top = sorted(best.items(), key=lambda kv: -kv[1])[:6]
    return " · ".join(f"{name} {score:.2f}" for name, score in top) or "none above zero"


def card_text(review: ReviewRecord, job: Job | None, verdicts: list[VerdictRecord]) -> str:
    """A review card: what was held and why, by whom and where; the prompt for moderators only."""
    head = "**Appeal of a block**" if review.kind == "appeal" else "**Held for review**"
    lines = [f"{head} · job `{review.job_id}` · {plain_category(review.category)}"]
    if job is None:
        lines.append("(the requester has deleted their data)")
    else:
        r = job.request
        lines.append(f"Prompt: **{_clip(r.prompt)}**" + (f"\nNegative: {_clip(r.negative_prompt, 120)}"
                                                          if r.negative_prompt else ""))  # fmt: skip
        lines.append(f"Requester: <@{r.user_id}> · Channel: " + (f"<#{r.channel_id}>" if r.channel_id else "none")
                     + f" · `{r.model}` · seed `{r.seed}`")  # fmt: skip
    held = [v for v in verdicts if v.decision in ("flag", "block")]
    if held:
        lines.append(f"Reason ({held[0].stage}): {held[0].reason}")
    lines.append(f"Scores: {scores_text(verdicts)}")
    if not review.pending:
        lines.append(f"**{_decided_words(review)} by <@{review.decided_by}>**")
    return "\n".join(lines)


def _decided_words(review: ReviewRecord) -> str:
    return {"approve": "Approved", "reject": "Rejected", "strike": "Rejected with a strike",
            "ban": "Rejected, requester banned"}.get(review.decision or "", "Decided")  # fmt: skip


def _parse_since(text: str | None) -> float | None:
    """``7d``, ``12h``, ``30m`` ago, or an ISO date (``2026-11-01``); None for no limit.

    Raises:
        UserFacingError: anything else.
    """
    if not text:
        return None
    match = re.fullmatch(r"\s*(\d{1,5})\s*([dhm])\s*", text)
    if match:
        amount, unit = int(match[1]), match[2]
        return time.time() - amount * {"d": 86400, "h": 3600, "m": 60}[unit]
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserFacingError("since: use a duration like `7d`, `12h` or `30m`, or a date like `2026-11-01`.") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


class ModerationCog(commands.Cog):
    """/mod (queue, history, ban, unban, protect, blocklist, audit), /privacy delete, and review cards."""

    mod = app_commands.Group(name="mod", description="Moderate imaginebot in this server", guild_only=True)
    protect = app_commands.Group(name="protect", description="The protected-people gallery", parent=mod)
    blocklist = app_commands.Group(name="blocklist", description="This server's blocked prompt terms", parent=mod)
    privacy = app_commands.Group(name="privacy", description="Your data in imaginebot", guild_only=True)

    def __init__(
        self, bot: commands.AutoShardedBot, service: ImagineService, moderation: Moderation, *, gallery: Any = None,
        face_models: Any = None, interval: float = DELIVERY_INTERVAL,
    ) -> None:  # fmt: skip
        self.bot = bot
        self.service = service
        self.moderation = moderation
        self.storage = service.storage
        self._gallery = gallery
        self._face_models = face_models  # () -> (detector, embedder), loaded on first use
        self._interval = interval
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._unsubscribe = service.subscribe(self._on_update)

    async def cog_load(self) -> None:
        self._loop_task = asyncio.create_task(self._deliver_forever(), name="imaginebot-moderation-outbox")

    async def cog_unload(self) -> None:
        self._unsubscribe()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    # --- permission ---

    async def _moderator(self, interaction: discord.Interaction[Any]) -> GuildConfig | None:
        """This server's config if the member may moderate; else answer with a refusal and return None."""
        config = await self.service.guild_config(str(interaction.guild_id))
        if may_moderate_here(interaction, config):
            return config
        await interaction.response.send_message(REFUSAL, ephemeral=True)
        return None

    # --- buttons ---

    async def on_button(self, interaction: discord.Interaction[Any], action: str, job_id: str) -> None:
        guild_id = str(interaction.guild_id)
        try:
            if action == "p":
                await self.moderation.appeal(guild_id, job_id, user_id=str(interaction.user.id))
                self._wake.set()
                await interaction.response.send_message(
                    "Sent to the moderators. You'll hear back here once they have looked at it.", ephemeral=True
                )
                return
            if await self._moderator(interaction) is None:
                return
            if action == "e":
                await self._reveal(interaction, job_id)
                return
            decided = await self.moderation.decide(guild_id, job_id, Action(REVIEW_ACTIONS[action]),
                                                   moderator_id=str(interaction.user.id))  # fmt: skip
        except UserFacingError as exc:
            await interaction.response.send_message(exc.message, ephemeral=True, allowed_mentions=_NO_MENTIONS)
            return
        extra = ""
        if decided.strikes is not None:
            extra += f" They now have {decided.strikes} strike(s) in the window."
        if decided.ban is not None:
            until = "until lifted" if decided.ban.until is None else f"until <t:{int(decided.ban.until)}:f>"
            extra += f" They are banned from the bot here {until}."
        await interaction.response.send_message(f"{_decided_words(decided.review)}.{extra}", ephemeral=True)
        self._wake.set()  # the outbox posts the result and updates the card

    async def _reveal(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        """The unblurred images, to the moderator alone."""
        await self.moderation.review_in(str(interaction.guild_id), job_id)
        outputs = await self.storage.outputs_for(job_id)
        if not outputs:
            await interaction.response.send_message("No image of this job is stored.", ephemeral=True)
            return
        imagine = self._imagine()
        files = []
        for o in outputs:
            files += await imagine._fitted(f"{job_id}-{o.index + 1}", o.path, interaction.filesize_limit)
        await interaction.response.send_message(f"Job `{job_id}`, unblurred (only you can see this).", files=files,
                                                ephemeral=True)  # fmt: skip

    def _imagine(self) -> ImagineCog:
        cog = self.bot.get_cog("ImagineCog")
        assert cog is not None, "ModerationCog needs ImagineCog"
        return cog  # type: ignore[return-value]

    # --- cards ---

    def _on_update(self, update: JobUpdate) -> None:
        if update.state is JobState.FLAGGED:
            self._wake.set()

    async def _post_card(self, review: ReviewRecord, config: GuildConfig) -> None:
        if config.review_channel is None:
            return
        channel = await self._channel(config.review_channel)
        if channel is None:
            logger.warning("review channel %s of guild %s is not reachable", config.review_channel, review.guild_id)
            return
        job = await self._job(review.job_id)
        verdicts = await self.storage.verdicts_for(review.job_id)
        files = []
        for o in await self.storage.outputs_for(review.job_id):
            if o.preview_path:
                files.append(discord.File(o.preview_path, filename=f"preview-{o.index + 1}.png"))
        view = card_view(review.job_id, appeal=review.kind == "appeal")
        message = await channel.send(card_text(review, job, verdicts), files=files, view=view,
                                     allowed_mentions=_NO_MENTIONS)  # fmt: skip
        await self.storage.set_review_card(review.job_id, str(message.channel.id), str(message.id))

    async def _channel(self, channel_id: int) -> discord.abc.Messageable | None:
        try:
            channel = self.bot.get_channel(channel_id) or await self.bot.fetch_channel(channel_id)
        except discord.HTTPException:
            return None
        return channel if isinstance(channel, discord.abc.Messageable) else None

    async def _job(self, job_id: str) -> Job | None:
        try:
            return await self.storage.get_job(job_id)
        except JobNotFoundError:  # its requester deleted their data; the review stays
            return None

    # --- the outbox ---

    async def _deliver_forever(self) -> None:
        await self.bot.wait_until_ready()
        while True:
            try:
                await self.deliver_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep delivering; what failed stays in the outbox
                logger.exception("moderation outbox pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()

    async def deliver_once(self) -> None:
        """One pass: post missing cards, deliver decided reviews, schedule jobs other processes queued."""
        for review in await self.storage.reviews_without_card():
            await self._post_card(review, await self.service.guild_config(review.guild_id))
        for review in await self.storage.undelivered():
            await self._deliver(review)
            await self.storage.mark_delivered(review.job_id)
        await self.service.adopt_queued()

    async def _deliver(self, review: ReviewRecord) -> None:
        job = await self._job(review.job_id)
        if job is not None and job.request.channel_id is not None:
            imagine = self._imagine()
            if review.kind == "flag" and job.state is JobState.APPROVED:
                await self._post_approved(job)
            elif review.kind == "appeal" and review.state == "approved":
                await imagine._post_in_channel(job, "your request was sent back for generation after review; "
                                                    "a moderator will look at the images before they are posted.",
                                               [], None)  # fmt: skip
            else:
                what = "appeal was declined" if review.kind == "appeal" else "request was not approved"
                await imagine._post_in_channel(job, f"your {what} by a moderator.", [], None)
        await self._update_card(review, job)

    async def _post_approved(self, job: Job) -> None:
        """The approved result in its channel, with its buttons; behind a spoiler where its category calls for it."""
        imagine = self._imagine()
        verdicts = await self.storage.verdicts_for(job.id)
        spoiler = any(v.category in SPOILER_CATEGORIES for v in verdicts if v.decision == "flag")
        files = []
        if job.grid_path:
            files = await imagine._fitted(job.id, job.grid_path, imagine._upload_limit(job, None))
        for f in files:
            f.spoiler = spoiler
        view = result_view(job.id, job.request.count, allowed=shown_indexes(job, verdicts))
        await imagine._post_in_channel(job, result_text(job) + "\n(approved by a moderator)", files, view)

    async def _update_card(self, review: ReviewRecord, job: Job | None) -> None:
        if review.card_channel_id is None or review.card_message_id is None:
            return
        channel = await self._channel(int(review.card_channel_id))
        if channel is None:
            return
        verdicts = await self.storage.verdicts_for(review.job_id) if job is not None else []
        with contextlib.suppress(discord.HTTPException):
            message = channel.get_partial_message(int(review.card_message_id))  # type: ignore[attr-defined]
            await message.edit(content=card_text(review, job, verdicts), view=None, allowed_mentions=_NO_MENTIONS)

    # --- /mod ---

    @mod.command(name="queue")
    async def queue(self, interaction: discord.Interaction[Any]) -> None:
        """What waits for review in this server, oldest first; the oldest with its buttons."""
        config = await self._moderator(interaction)
        if config is None:
            return
        guild_id = str(interaction.guild_id)
        pending = await self.moderation.pending(guild_id, limit=10)
        total = await self.storage.pending_count(guild_id)
        if not pending:
            await interaction.response.send_message("Nothing is waiting for review.", ephemeral=True)
            return
        lines = [f"`{r.job_id}` {'appeal' if r.kind == 'appeal' else 'held'} · {plain_category(r.category)} · "
                 f"<@{r.user_id}> · <t:{int(r.requested_at)}:R>" for r in pending]  # fmt: skip
        where = ("" if config.review_channel is not None else
                 "\nNo review channel is set (/settings review channel): decide here.")  # fmt: skip
        oldest = pending[0]
        text = (
            f"**{total} waiting for review**\n"
            + "\n".join(lines)
            + where
            + "\n\n"
            + card_text(oldest, await self._job(oldest.job_id), await self.storage.verdicts_for(oldest.job_id))
        )
        view = detached(card_view(oldest.job_id, appeal=oldest.kind == "appeal"))
        await interaction.response.send_message(text[:2000], view=view, ephemeral=True,
                                                allowed_mentions=_NO_MENTIONS)  # fmt: skip

    @mod.command(name="dashboard")
    async def dashboard(self, interaction: discord.Interaction[Any]) -> None:
        """A one-time link to the moderators' web dashboard for this server (only you see it)."""
        if await self._moderator(interaction) is None:
            return
        base = self.service.settings.dashboard_url
        if not base:
            text = "The web dashboard is not set up on this bot (its operator sets IMAGINEBOT_DASHBOARD_URL)."
            await interaction.response.send_message(text, ephemeral=True)
            return
        from bot.dashboard.auth import LOGIN_TTL, login_link

        link = await asyncio.to_thread(login_link, self.service.settings, str(interaction.user.id),
                                       str(interaction.guild_id), base)  # fmt: skip
        await interaction.response.send_message(
            f"Your login link (one use, valid {LOGIN_TTL // 60} minutes; don't share it): {link}", ephemeral=True
        )
        await self.storage.audit("dashboard_link", guild_id=str(interaction.guild_id),
                                 actor_id=str(interaction.user.id))  # fmt: skip

    @mod.command(name="history")
    async def history(self, interaction: discord.Interaction[Any], user: discord.User) -> None:
        """A member's recent jobs here, their strikes and any ban.

        Args:
            user: The member.
        """
        if await self._moderator(interaction) is None:
            return
        h = await self.moderation.history(str(interaction.guild_id), str(user.id))
        lines = [f"**<@{user.id}>**: {len(h.strikes)} strike(s) in the window"
                 + (f"; banned {'until lifted' if h.ban.until is None else f'until <t:{int(h.ban.until)}:f>'}"
                    if h.ban else "")]  # fmt: skip
        lines += [f"strike <t:{int(s.at)}:d> by <@{s.moderator_id}>: {s.reason}" for s in h.strikes[:5]]
        lines += [f"`{j.id}` {j.state} · {_clip(j.request.prompt, 70)}" for j in h.jobs]
        await interaction.response.send_message("\n".join(lines), ephemeral=True, allowed_mentions=_NO_MENTIONS)

    @mod.command(name="ban")
    async def ban(self, interaction: discord.Interaction[Any], user: discord.User,
                  hours: app_commands.Range[int, 0, 8760] = 0, reason: str | None = None) -> None:  # fmt: skip
        """Ban a member from using the bot in this server.

        Args:
            user: The member.
            hours: How long (0 = until lifted).
            reason: Why (kept in the audit log).
        """
        if await self._moderator(interaction) is None:
            return
        until = None if hours == 0 else time.time() + hours * 3600
        await self.moderation.ban(str(interaction.guild_id), str(user.id), moderator_id=str(interaction.user.id),
                                  reason=_clip(reason or "banned by a moderator", 200), until=until)  # fmt: skip
        how_long = "until lifted" if until is None else f"until <t:{int(until)}:f>"
        await interaction.response.send_message(f"<@{user.id}> is banned from the bot here {how_long}.",
                                                ephemeral=True, allowed_mentions=_NO_MENTIONS)  # fmt: skip

    @mod.command(name="unban")
    async def unban(self, interaction: discord.Interaction[Any], user: discord.User) -> None:
        """Lift a member's ban from the bot in this server.

        Args:
            user: The member.
        """
        if await self._moderator(interaction) is None:
            return
        lifted = await self.moderation.unban(str(interaction.guild_id), str(user.id),
                                             moderator_id=str(interaction.user.id))  # fmt: skip
        text = f"<@{user.id}> may use the bot again." if lifted else f"<@{user.id}> was not banned."
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=_NO_MENTIONS)

    @mod.command(name="audit")
    async def audit(self, interaction: discord.Interaction[Any], since: str | None = None) -> None:
        """Export this server's audit log as CSV (only you see it).

        Args:
            since: How far back: `7d`, `12h`, `30m`, or a date like `2026-11-01` (everything if left out).
        """
        if await self._moderator(interaction) is None:
            return
        try:
            start = _parse_since(since)
        except UserFacingError as exc:
            await interaction.response.send_message(exc.message, ephemeral=True)
            return
        data = await self.moderation.audit_csv(str(interaction.guild_id), since=start)
        rows = data.count(b"\n") - 1
        await interaction.response.send_message(
            f"{rows} audit entries" + (f" since <t:{int(start)}:f>" if start else "") + ".",
            file=discord.File(io.BytesIO(data), filename="imaginebot-audit.csv"), ephemeral=True,
        )  # fmt: skip

    # --- /mod blocklist ---

    @blocklist.command(name="add")
    @app_commands.choices(category=[app_commands.Choice(name=c, value=c) for c in BLOCKLIST_CATEGORIES])
    async def blocklist_add(self, interaction: discord.Interaction[Any], term: app_commands.Range[str, 1, 60],
                            category: str) -> None:  # fmt: skip
        """Block (or flag, as the filter does for its own terms) prompts with a term in this server.

        Args:
            term: A word or phrase (matched as whole words, spelling tricks included).
            category: Which category it belongs to.
        """
        if await self._moderator(interaction) is None:
            return
        try:
            config = await self.service.guild_configs.add_blocked_term(str(interaction.guild_id), term, category,
                                                                       actor_id=str(interaction.user.id))  # fmt: skip
        except UserFacingError as exc:
            await interaction.response.send_message(exc.message, ephemeral=True)
            return
        await self.service.guild_config(str(interaction.guild_id))  # hands the new list to the prompt filter
        count = sum(len(t) for t in config.blocklist.values())
        await interaction.response.send_message(f"Added. This server lists {count} term(s).", ephemeral=True)

    @blocklist.command(name="remove")
    async def blocklist_remove(self, interaction: discord.Interaction[Any], term: str) -> None:
        """Stop blocking a term in this server.

        Args:
            term: The term, as listed.
        """
        if await self._moderator(interaction) is None:
            return
        try:
            await self.service.guild_configs.remove_blocked_term(str(interaction.guild_id), term,
                                                                 actor_id=str(interaction.user.id))  # fmt: skip
        except UserFacingError as exc:
            await interaction.response.send_message(exc.message, ephemeral=True)
            return
        await self.service.guild_config(str(interaction.guild_id))
        await interaction.response.send_message("Removed.", ephemeral=True)

    @blocklist.command(name="list")
    async def blocklist_list(self, interaction: discord.Interaction[Any]) -> None:
        """This server's own blocked terms, by category."""
        config = await self._moderator(interaction)
        if config is None:
            return
        lines = [f"**{c}**: " + ", ".join(f"`{t}`" for t in terms) for c, terms in sorted(config.blocklist.items())]
        text = "\n".join(lines) or "This server lists no terms of its own."
        await interaction.response.send_message(text[:2000], ephemeral=True)

    # --- /mod protect ---

    @protect.command(name="list")
    async def protect_list(self, interaction: discord.Interaction[Any]) -> None:
        """The people protected from deepfakes in this server (and everywhere)."""
        if await self._moderator(interaction) is None:
            return
        if self._gallery is None:
            await interaction.response.send_message("The face filter is not configured on this bot.", ephemeral=True)
            return
        people = await asyncio.to_thread(self._gallery.list, str(interaction.guild_id))
        lines = [f"{p.name}" + (" (everywhere)" if p.guild_id is None else "") for p in people]
        await interaction.response.send_message(("\n".join(lines) or "Nobody is protected yet.")[:2000],
                                                ephemeral=True)  # fmt: skip

    @protect.command(name="add")
    async def protect_add(self, interaction: discord.Interaction[Any], name: app_commands.Range[str, 2, 100],
                          image: discord.Attachment) -> None:  # fmt: skip
        """Protect a person from deepfakes in this server, from a photo of their face.

        Args:
            name: Their full name (prompts naming them are blocked too).
            image: A clear photo with one face.
        """
        if await self._moderator(interaction) is None:
            return
        if self._gallery is None or self._face_models is None:
            await interaction.response.send_message("The face filter is not configured on this bot.", ephemeral=True)
            return
        kind = image.content_type or mimetypes.guess_type(image.filename)[0] or ""
        if image.size > 10 * 1024 * 1024 or not kind.startswith("image/"):
            await interaction.response.send_message("Attach a photo (PNG, JPEG or WebP) under 10 MB.", ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            data = await image.read()
            person = await asyncio.to_thread(self._add_person, name, data, str(interaction.guild_id))
        except (ValueError, OSError) as exc:
            await interaction.followup.send(f"Could not add {name}: {exc}", ephemeral=True)
            return
        await self.storage.audit("protect_add", guild_id=str(interaction.guild_id),
                                 actor_id=str(interaction.user.id), target=person.name)  # fmt: skip
        await interaction.followup.send(f"{person.name} is now protected in this server.", ephemeral=True)

    def _add_person(self, name: str, data: bytes, guild_id: str) -> Any:
        from PIL import Image

        detector, embedder = self._face_models()
        with Image.open(io.BytesIO(data)) as opened:
            photo = opened.convert("RGB")
        return self._gallery.add(name, [photo], embedder=embedder, detector=detector, guild_id=guild_id)

    @protect.command(name="remove")
    async def protect_remove(self, interaction: discord.Interaction[Any], name: str) -> None:
        """Stop protecting a person in this server.

        Args:
            name: Their name, as listed.
        """
        if await self._moderator(interaction) is None:
            return
        if self._gallery is None:
            await interaction.response.send_message("The face filter is not configured on this bot.", ephemeral=True)
            return
        removed = await asyncio.to_thread(self._gallery.remove, name, guild_id=str(interaction.guild_id))
        if removed:
            await self.storage.audit("protect_remove", guild_id=str(interaction.guild_id),
                                     actor_id=str(interaction.user.id), target=name)  # fmt: skip
        await interaction.response.send_message("Removed." if removed else f"{name} is not protected in this server.",
                                                ephemeral=True)  # fmt: skip

    # --- /privacy ---

    @privacy.command(name="delete")
    async def privacy_delete(self, interaction: discord.Interaction[Any], confirm: bool = False) -> None:
        """Delete your jobs, images and votes from this bot (every server). Moderation records stay, anonymised.

        Args:
            confirm: Set to True to delete; left out, you are told what would be deleted.
        """
        user_id = str(interaction.user.id)
        if not confirm:
            jobs = await self.storage.list_jobs(limit=1000, user_id=user_id)
            await interaction.response.send_message(
                f"This deletes your {len(jobs)}{'+' if len(jobs) == 1000 else ''} job(s), their images and your votes, "
                "in every server, and cancels what is still queued. Moderation records are kept without your id. "
                "Run `/privacy delete confirm:True` to go ahead.", ephemeral=True,
            )  # fmt: skip
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        forgotten = await self.moderation.forget(user_id)
        await interaction.followup.send(
            f"Deleted {len(forgotten.job_ids)} job(s), {len(forgotten.files)} image file(s) and "
            f"{forgotten.votes} vote(s).", ephemeral=True,
        )  # fmt: skip
