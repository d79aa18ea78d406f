"""Moderation: decisions on held jobs and appeals, strikes and bans, and forgetting a member.

Front ends (the Discord cog, the web dashboard) call :class:`Moderation`; it enforces the rules the
same way for both:

- A flagged job is never posted unreviewed. Its review opens with the ``flagged`` transition (see
  :meth:`bot.storage.Storage.transition`); a moderator approves it (posted), rejects it, rejects it
  with a strike, or rejects it and bans the requester. The first decision wins; a second one gets
  :class:`~bot.errors.AlreadyDecidedError` naming the first.
- A member may appeal a block of their own job unless a hard category decided it (minors,
  protected people, a check that could not run). An accepted appeal reruns the job with the same
  seeds; on that rerun appealable blocks become flags, so the images reach the moderators, who
  decide again with the pictures in front of them. Nothing blocked is ever posted on an appeal alone.
- ``strike_limit`` strikes within ``strike_window_hours`` ban the member from the bot in that
  server for ``strike_ban_hours`` (0: until lifted). Banned members' requests are refused.
- ``/privacy delete`` removes a member's jobs, images and votes; moderation records stay with a
  keyed pseudonym instead of their id (so a ban still holds).

Every decision is written to the audit log (actor, action, target job or member).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import hmac
import io
import json
import logging
import time
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from bot.errors import (
    AlreadyDecidedError,
    IllegalTransitionError,
    JobNotFoundError,
    NotAllowedError,
    ReviewNotFoundError,
)
from bot.guild_config import GuildConfig
from bot.jobs import ACTIVE_STATES, Job, JobRequest, JobState
from bot.moderation_store import Forgotten
from bot.records import BanRecord, ReviewRecord, StrikeRecord, VerdictRecord
from bot.storage import Storage
from safety.verdict import appealable

logger = logging.getLogger(__name__)


class Action(StrEnum):
    """What a moderator decides about a review."""

    APPROVE = "approve"
    REJECT = "reject"
    STRIKE = "strike"  # reject + a strike against the requester
    BAN = "ban"  # reject + ban the requester from the bot in this server

    @property
    def approves(self) -> bool:
        return self is Action.APPROVE


FORGET_WAIT = 300.0  # seconds a running job may take to stop before /privacy delete gives up

# Categories whose approved images are posted behind a spoiler.
SPOILER_CATEGORIES = frozenset({"sexual", "sexual_suggestive", "sexual_explicit", "gore", "self_harm"})

# Categories in words a member understands (the prompt filter's and the image stages').
_PLAIN = {
    "sexual": "sexual content",
    "sexual_suggestive": "suggestive content",
    "sexual_explicit": "explicit sexual content",
    "minors": "content involving minors",
    "gore": "graphic violence",
    "hate": "hateful content",
    "self_harm": "self-harm",
    "protected_person": "a protected person",
    "protected_identity": "a protected person's face",
    "protected_name": "a protected person",
    "real_person": "a real, named person",
    "unavailable": "a safety check that could not run",
    "malformed": "a malformed image",
    "blank": "a blank image",
}


def plain_category(category: str | None) -> str:
    """``category`` in plain words ("suggestive content"); unknown ones read as themselves."""
    if category is None:
        return "the safety policy"
    return _PLAIN.get(category, category.replace("_", " "))


PSEUDONYM_KEY = "privacy.key"  # in the keys directory: the secret behind members' pseudonyms


def pseudonym(key: bytes, user_id: str) -> str:
    """A member id's keyed pseudonym (``anon-`` + 16 hex digits): stable, not reversible without the key."""
    digest = hmac.new(key, b"imaginebot/pseudonym/v1" + user_id.encode(), hashlib.sha256).hexdigest()
    return f"anon-{digest[:16]}"


class JobDesk(Protocol):
    """What moderation needs of the service: :class:`bot.service.ImagineService` in the bot; in another
    process (the dashboard), an object that writes to the same database, whose queued jobs the bot
    picks up (see :meth:`bot.service.ImagineService.resume`)."""

    @property
    def storage(self) -> Storage: ...

    async def guild_config(self, guild_id: str) -> GuildConfig: ...

    async def submit(self, request: JobRequest, *, enforce_caps: bool = True, prechecked: bool = False) -> Job: ...

    def notify(self, job: Job) -> None: ...

    async def cancel(self, job_id: str, *, actor_id: str | None = None) -> Job: ...

    async def wait(self, job_id: str) -> Job: ...

    async def check_not_banned(self, guild_id: str, user_id: str) -> None: ...


@dataclass(frozen=True)
class Decided:
    """The result of a decision: the review as decided, the job (None if its owner deleted it), the
    rerun an accepted appeal queued, the strikes the member now has in the window, and a ban it caused."""

    review: ReviewRecord
    job: Job | None
    action: Action
    rerun: Job | None = None
    strikes: int | None = None
    ban: BanRecord | None = None


@dataclass(frozen=True)
class MemberHistory:
    """What /mod history shows: a member's recent jobs here, strikes in the window, and a ban."""

    jobs: list[Job]
    strikes: list[StrikeRecord]
    ban: BanRecord | None


class Moderation:
    """The moderation rules over a :class:`JobDesk` (the running service, its storage and guild configs).

    Args:
        service: the service whose jobs are moderated.
        pseudonym_key: secret for the pseudonyms that replace a forgotten member's id.
    """

    def __init__(self, service: JobDesk, *, pseudonym_key: bytes) -> None:
        if len(pseudonym_key) < 16:
            raise ValueError("the pseudonym key must be at least 16 bytes")
        self.service = service
        self.storage = service.storage
        self._key = pseudonym_key
        self._now = time.time  # tests move it

    def pseudonym(self, user_id: str) -> str:
        """The stable, keyed stand-in for a member's id in kept moderation records."""
        return pseudonym(self._key, user_id)

    def identities(self, user_id: str) -> tuple[str, str]:
        """A member's id and their pseudonym: records under either are theirs."""
        return user_id, self.pseudonym(user_id)

    # -- reviews ------------------------------------------------------------------------------------

    async def pending(self, guild_id: str, *, limit: int = 25, offset: int = 0) -> list[ReviewRecord]:
        """The server's review queue, oldest first."""
        return await self.storage.reviews(guild_id, limit=limit, offset=offset)

    async def review_in(self, guild_id: str, job_id: str) -> ReviewRecord:
        """The review of ``job_id``, only if it belongs to ``guild_id``.

        Raises:
            ReviewNotFoundError: no review of that job in this server (another server's reads the same).
        """
        review = await self.storage.review(job_id)
        if review is None or review.guild_id != guild_id:
            raise ReviewNotFoundError("There is no review of that job in this server.")
        return review

    async def decide(self, guild_id: str, job_id: str, action: Action, *, moderator_id: str) -> Decided:
        """Decide a pending review of this server.

        Raises:
            ReviewNotFoundError: no such review here.
            AlreadyDecidedError: another moderator decided it first (nothing changes).
        """
        await self.review_in(guild_id, job_id)
        review, job = await self.storage.decide_review(
            job_id, approve=action.approves, decision=action.value, moderator_id=moderator_id
        )
        await self.storage.audit(f"review_{action.value}", guild_id=guild_id, actor_id=moderator_id, target=job_id,
                                 detail={"kind": review.kind, "category": review.category})  # fmt: skip
        if job is not None:
            self.service.notify(job)
        decided = Decided(review, job, action)
        if action.approves and review.kind == "appeal":
            decided = replace(decided, rerun=await self._rerun(job_id, moderator_id))
        elif action is Action.STRIKE:
            decided = await self._strike(decided, guild_id, review.user_id, job_id, moderator_id)
        elif action is Action.BAN:
            ban = await self.ban(guild_id, review.user_id, moderator_id=moderator_id, reason=f"job {job_id}")
            decided = replace(decided, ban=ban)
        return decided

    async def _rerun(self, job_id: str, moderator_id: str) -> Job | None:
        """Queue the rerun of an accepted appeal: same request and seeds; appealable blocks become flags."""
        try:
            job = await self.storage.get_job(job_id)
        except JobNotFoundError:
            return None
        request = replace(job.request, parent_job_id=job.id, appeal_of=job.id)
        # The prompt was judged already (that is what was appealed); the images are judged on the rerun.
        return await self.service.submit(request, enforce_caps=False, prechecked=True)

    async def _strike(self, decided: Decided, guild_id: str, user_id: str, job_id: str, moderator_id: str) -> Decided:
        # Recorded on the clock the window is counted on.
        await self.storage.add_strike(guild_id, user_id, job_id=job_id, moderator_id=moderator_id,
                                      reason=f"job {job_id} rejected", at=self._now())  # fmt: skip
        await self.storage.audit("strike", guild_id=guild_id, actor_id=moderator_id, target=user_id,
                                 detail={"job": job_id})  # fmt: skip
        config = await self.service.guild_config(guild_id)
        since = self._now() - config.strike_window_hours * 3600
        count = len(await self.storage.strikes(guild_id, (user_id,), since=since))
        decided = replace(decided, strikes=count)
        if config.strike_limit and count >= config.strike_limit:
            until = None if config.strike_ban_hours == 0 else self._now() + config.strike_ban_hours * 3600
            reason = f"{count} strikes within {config.strike_window_hours} h"
            ban = await self.ban(guild_id, user_id, moderator_id=moderator_id, reason=reason, until=until)
            decided = replace(decided, ban=ban)
        return decided

    async def appeal(self, guild_id: str, job_id: str, *, user_id: str) -> ReviewRecord:
        """A member asks moderators to look again at their blocked job.

        Raises:
            NotAllowedError: not their job, not blocked, or blocked for a reason no appeal reopens.
            AlreadyDecidedError: it was appealed already.
            BannedError: they are banned from the bot here.
        """
        try:
            job = await self.storage.get_job(job_id)
        except JobNotFoundError:
            raise NotAllowedError("That request no longer exists.") from None
        if job.request.guild_id != guild_id or job.request.user_id != user_id:
            raise NotAllowedError("Only the person who made this request can ask for a review of it.")
        if job.state is not JobState.BLOCKED:
            raise NotAllowedError("Only a blocked request can be sent for review.")
        await self.service.check_not_banned(guild_id, user_id)
        blocks = [v for v in await self.storage.verdicts_for(job_id) if v.decision == "block"]
        category = blocks[0].category if blocks else None
        if not all(appealable(v.category) for v in blocks):
            raise NotAllowedError(f"Requests blocked for {plain_category(_hard(blocks))} cannot be appealed.")
        review = await self.storage.open_review(job_id, guild_id=guild_id, user_id=user_id, kind="appeal",
                                                category=category)  # fmt: skip
        await self.storage.audit("appeal", guild_id=guild_id, actor_id=user_id, target=job_id,
                                 detail={"category": category})  # fmt: skip
        return review

    # -- members ------------------------------------------------------------------------------------

    async def ban(
        self, guild_id: str, user_id: str, *, moderator_id: str, reason: str, until: float | None = None
    ) -> BanRecord:
        ban = await self.storage.ban(guild_id, user_id, until=until, moderator_id=moderator_id, reason=reason,
                                     at=self._now())  # fmt: skip
        await self.storage.audit("ban", guild_id=guild_id, actor_id=moderator_id, target=user_id,
                                 detail={"until": until, "reason": reason})  # fmt: skip
        return ban

    async def unban(self, guild_id: str, user_id: str, *, moderator_id: str) -> bool:
        lifted = await self.storage.unban(guild_id, self.identities(user_id))
        if lifted:
            await self.storage.audit("unban", guild_id=guild_id, actor_id=moderator_id, target=user_id)
        return lifted

    async def history(self, guild_id: str, user_id: str, *, limit: int = 10) -> MemberHistory:
        config = await self.service.guild_config(guild_id)
        since = self._now() - config.strike_window_hours * 3600
        return MemberHistory(
            jobs=await self.storage.list_jobs(limit=limit, guild_id=guild_id, user_id=user_id),
            strikes=await self.storage.strikes(guild_id, self.identities(user_id), since=since),
            ban=await self.storage.active_ban(guild_id, self.identities(user_id)),
        )

    async def forget(self, user_id: str) -> Forgotten:
        """/privacy delete: cancel the member's active jobs, then delete their jobs, images and votes.

        Moderation records keep a pseudonym. Files are deleted after the database commit; a file
        that cannot be deleted is logged (the database no longer points to it).
        """
        for job in await self.storage.list_jobs(limit=1000, user_id=user_id, states=ACTIVE_STATES):
            with contextlib.suppress(IllegalTransitionError):  # it finished meanwhile
                await self.service.cancel(job.id, actor_id=self.pseudonym(user_id))
            # A running job stops at its next step; its images must not be written after the delete.
            await asyncio.wait_for(self.service.wait(job.id), timeout=FORGET_WAIT)
        forgotten = await self.storage.forget_user(user_id, self.pseudonym(user_id))
        await asyncio.to_thread(_unlink_all, forgotten.files)
        await self.storage.audit("privacy_delete", actor_id=self.pseudonym(user_id),
                                 detail={"jobs": len(forgotten.job_ids), "files": len(forgotten.files)})  # fmt: skip
        return forgotten

    # -- audit --------------------------------------------------------------------------------------

    async def audit_csv(self, guild_id: str, *, since: float | None = None, limit: int = 10_000) -> bytes:
        """The server's audit log as CSV (newest first): time (UTC, ISO 8601), action, actor, target, detail."""
        entries = await self.storage.audit_entries(guild_id=guild_id, limit=limit, since=since)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["time_utc", "action", "actor_id", "target", "detail"])
        for e in entries:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.at))
            cells = [
                when,
                e.action,
                e.actor_id or "",
                e.target or "",
                # detail is a read-only mapping, which json cannot encode (default=str would write its repr).
                json.dumps(dict(e.detail), sort_keys=True, default=str),
            ]
            writer.writerow([_cell(c) for c in cells])
        return out.getvalue().encode()


def _hard(blocks: list[VerdictRecord]) -> str | None:
    return next((v.category for v in blocks if not appealable(v.category)), None)


def _cell(text: str) -> str:
    # A cell starting with = + - @ (or a tab/CR) is a formula to a spreadsheet: neutralise it (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _unlink_all(paths: tuple[str, ...]) -> None:
    for path in paths:
        try:
            Path(path).unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("could not delete %s: %s", path, exc)


__all__ = ["Action", "AlreadyDecidedError", "Decided", "Moderation", "plain_category"]
