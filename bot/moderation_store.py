"""The moderation tables of :class:`bot.storage.Storage`: reviews, strikes, bans, and forgetting a member.

A mixin, so that storage.py keeps to jobs and outputs; it uses the storage's one lock and connection.
Every decision is a single transaction: of two moderators deciding the same review at once exactly
one moves the ``pending`` row, and the other is told who won.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiosqlite

from bot.errors import AlreadyDecidedError, JobNotFoundError, ReviewNotFoundError
from bot.jobs import Job, JobState
from bot.records import BanRecord, ReviewRecord, StrikeRecord

REVIEW_KINDS = ("flag", "appeal")
REVIEW_STATES = ("pending", "approved", "rejected")


@dataclass(frozen=True)
class Forgotten:
    """What :meth:`ModerationTables.forget_user` removed: job ids and the image files to delete."""

    job_ids: tuple[str, ...]
    files: tuple[str, ...]
    votes: int


def _review_from_row(row: sqlite3.Row) -> ReviewRecord:
    return ReviewRecord(
        job_id=row["job_id"], guild_id=row["guild_id"], user_id=row["user_id"], kind=row["kind"],
        state=row["state"], category=row["category"], requested_at=row["requested_at"],
        decided_by=row["decided_by"], decided_at=row["decided_at"], decision=row["decision"],
        card_channel_id=row["card_channel_id"], card_message_id=row["card_message_id"],
        delivered_at=row["delivered_at"],
    )  # fmt: skip


def _ban_from_row(row: sqlite3.Row) -> BanRecord:
    return BanRecord(row["guild_id"], row["user_id"], row["until"], row["moderator_id"], row["reason"], row["at"])


class ModerationTables:
    """Reviews, strikes and bans (schema v7). Mixed into :class:`bot.storage.Storage`."""

    if TYPE_CHECKING:

        def _transaction(self) -> AbstractAsyncContextManager[aiosqlite.Connection]: ...

        async def _fetchall(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]: ...

        async def _transition_in(
            self, db: aiosqlite.Connection, job_id: str, target: JobState, *, error: str | None,
            detail: str | None, at: float,
        ) -> Job: ...  # fmt: skip

    # -- reviews ------------------------------------------------------------------------------------

    async def open_review(
        self, job_id: str, *, guild_id: str, user_id: str, kind: str, category: str | None, at: float | None = None
    ) -> ReviewRecord:
        """Open a review (a flagged job gets one with its transition; this is for appeals).

        Raises:
            AlreadyDecidedError: the job already has a review (pending or decided); nothing changes.
            ValueError: an unknown kind.
        """
        if kind not in REVIEW_KINDS:
            raise ValueError(f"unknown review kind {kind!r}")
        async with self._transaction() as db:
            async with db.execute("SELECT * FROM reviews WHERE job_id = ?", (job_id,)) as cursor:
                row = await cursor.fetchone()
            if row is not None:
                raise AlreadyDecidedError(_review_from_row(row))
            await db.execute(
                "INSERT INTO reviews (job_id, guild_id, user_id, kind, state, category, requested_at)"
                " VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                (job_id, guild_id, user_id, kind, category, time.time() if at is None else at),
            )
            async with db.execute("SELECT * FROM reviews WHERE job_id = ?", (job_id,)) as cursor:
                created = await cursor.fetchone()
        assert created is not None
        return _review_from_row(created)

    async def review(self, job_id: str) -> ReviewRecord | None:
        rows = await self._fetchall("SELECT * FROM reviews WHERE job_id = ?", (job_id,))
        return _review_from_row(rows[0]) if rows else None

    async def reviews(
        self, guild_id: str, *, states: Collection[str] = ("pending",), limit: int = 25, offset: int = 0
    ) -> list[ReviewRecord]:
        """One guild's reviews in some states: pending ones oldest first (a queue), decided ones newest first."""
        order = "requested_at, job_id" if set(states) == {"pending"} else "COALESCE(decided_at, requested_at) DESC"
        rows = await self._fetchall(
            f"SELECT * FROM reviews WHERE guild_id = ? AND state IN (SELECT value FROM json_each(?))"
            f" ORDER BY {order} LIMIT ? OFFSET ?",
            (guild_id, json.dumps(sorted(states)), limit, offset),
        )
        return [_review_from_row(row) for row in rows]

    async def pending_count(self, guild_id: str) -> int:
        rows = await self._fetchall(
            "SELECT COUNT(*) FROM reviews WHERE guild_id = ? AND state = 'pending'", (guild_id,)
        )
        return int(rows[0][0])

    async def decide_review(
        self, job_id: str, *, approve: bool, decision: str, moderator_id: str, at: float | None = None
    ) -> tuple[ReviewRecord, Job | None]:
        """Decide a pending review; for a flagged job, move the job to ``approved``/``rejected`` with it.

        Returns the decided review and, for a flag, the job in its new state.

        Raises:
            ReviewNotFoundError: the job has no review.
            AlreadyDecidedError: someone decided it first (the error carries their decision).
        """
        when = time.time() if at is None else at
        state = "approved" if approve else "rejected"
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE reviews SET state = ?, decision = ?, decided_by = ?, decided_at = ?"
                " WHERE job_id = ? AND state = 'pending'",
                (state, decision, moderator_id, when, job_id),
            )
            async with db.execute("SELECT * FROM reviews WHERE job_id = ?", (job_id,)) as rows:
                row = await rows.fetchone()
            if row is None:
                raise ReviewNotFoundError(f"no review of job {job_id!r}")
            review = _review_from_row(row)
            if cursor.rowcount == 0:
                raise AlreadyDecidedError(review)
            job = None
            if review.kind == "flag":
                target = JobState.APPROVED if approve else JobState.REJECTED
                try:
                    job = await self._transition_in(db, job_id, target, error=None,
                                                    detail=f"{decision} by {moderator_id}", at=when)  # fmt: skip
                except JobNotFoundError:  # deleted by its owner (/privacy delete): the record stays
                    job = None
        return review, job

    async def set_review_card(self, job_id: str, channel_id: str, message_id: str) -> None:
        """Remember where a review's card was posted (to edit it when it is decided elsewhere)."""
        async with self._transaction() as db:
            await db.execute(
                "UPDATE reviews SET card_channel_id = ?, card_message_id = ? WHERE job_id = ?",
                (channel_id, message_id, job_id),
            )

    async def reviews_without_card(self, *, limit: int = 50) -> list[ReviewRecord]:
        """Pending reviews whose card has not been posted (the bot posts it where a review channel is set)."""
        rows = await self._fetchall(
            "SELECT * FROM reviews WHERE state = 'pending' AND card_message_id IS NULL"
            " AND guild_id IN (SELECT guild_id FROM guild_settings WHERE key = 'review_channel' AND value != 'null')"
            " ORDER BY requested_at LIMIT ?",
            (limit,),
        )
        return [_review_from_row(row) for row in rows]

    async def undelivered(self, *, limit: int = 50) -> list[ReviewRecord]:
        """Decided reviews whose outcome the bot has not posted yet, oldest decision first."""
        rows = await self._fetchall(
            "SELECT * FROM reviews WHERE state != 'pending' AND delivered_at IS NULL ORDER BY decided_at LIMIT ?",
            (limit,),
        )
        return [_review_from_row(row) for row in rows]

    async def mark_delivered(self, job_id: str, at: float | None = None) -> bool:
        """Mark a decision's outcome posted; False if it already was (another delivery won)."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE reviews SET delivered_at = ? WHERE job_id = ? AND delivered_at IS NULL",
                (time.time() if at is None else at, job_id),
            )
            return cursor.rowcount > 0

    # -- strikes and bans ---------------------------------------------------------------------------

    async def add_strike(
        self,
        guild_id: str,
        user_id: str,
        *,
        job_id: str | None,
        moderator_id: str,
        reason: str,
        at: float | None = None,
    ) -> StrikeRecord:
        when = time.time() if at is None else at
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO strikes (guild_id, user_id, job_id, moderator_id, reason, at) VALUES (?, ?, ?, ?, ?, ?)",
                (guild_id, user_id, job_id, moderator_id, reason, when),
            )
            strike_id = cursor.lastrowid
        assert strike_id is not None
        return StrikeRecord(strike_id, guild_id, user_id, job_id, moderator_id, reason, when)

    async def strikes(self, guild_id: str, user_ids: Sequence[str], *, since: float = 0.0) -> list[StrikeRecord]:
        """Strikes against any of ``user_ids`` (a member and their pseudonym) since a time, newest first."""
        rows = await self._fetchall(
            "SELECT * FROM strikes WHERE guild_id = ? AND user_id IN (SELECT value FROM json_each(?)) AND at >= ?"
            " ORDER BY at DESC, id DESC",
            (guild_id, json.dumps(list(user_ids)), since),
        )
        return [StrikeRecord(r["id"], r["guild_id"], r["user_id"], r["job_id"], r["moderator_id"], r["reason"],
                             r["at"]) for r in rows]  # fmt: skip

    async def ban(
        self, guild_id: str, user_id: str, *, until: float | None, moderator_id: str, reason: str,
        at: float | None = None,
    ) -> BanRecord:  # fmt: skip
        """Ban a member from the bot in a server (replacing an earlier ban); ``until`` None = until lifted."""
        when = time.time() if at is None else at
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO bans (guild_id, user_id, until, moderator_id, reason, at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (guild_id, user_id) DO UPDATE SET until = excluded.until,"
                " moderator_id = excluded.moderator_id, reason = excluded.reason, at = excluded.at",
                (guild_id, user_id, until, moderator_id, reason, when),
            )
        return BanRecord(guild_id, user_id, until, moderator_id, reason, when)

    async def unban(self, guild_id: str, user_ids: Sequence[str]) -> bool:
        """Lift a ban (of a member or their pseudonym); False if there was none."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "DELETE FROM bans WHERE guild_id = ? AND user_id IN (SELECT value FROM json_each(?))",
                (guild_id, json.dumps(list(user_ids))),
            )
            return cursor.rowcount > 0

    async def active_ban(self, guild_id: str, user_ids: Sequence[str], *, now: float | None = None) -> BanRecord | None:
        """The ban that holds now against any of ``user_ids`` in a server, if one does."""
        when = time.time() if now is None else now
        rows = await self._fetchall(
            "SELECT * FROM bans WHERE guild_id = ? AND user_id IN (SELECT value FROM json_each(?))"
            " AND (until IS NULL OR until > ?) ORDER BY until IS NULL DESC, until DESC LIMIT 1",
            (guild_id, json.dumps(list(user_ids)), when),
        )
        return _ban_from_row(rows[0]) if rows else None

    async def bans(self, guild_id: str, *, now: float | None = None) -> list[BanRecord]:
        """A server's bans that hold now, newest first."""
        when = time.time() if now is None else now
        rows = await self._fetchall(
            "SELECT * FROM bans WHERE guild_id = ? AND (until IS NULL OR until > ?) ORDER BY at DESC",
            (guild_id, when),
        )
        return [_ban_from_row(row) for row in rows]

    # -- privacy ------------------------------------------------------------------------------------

    async def forget_user(self, user_id: str, pseudonym: str) -> Forgotten:
        """Delete a member's jobs (with their images' rows, verdicts and events) and votes, in one
        transaction; moderation records (reviews, strikes, bans, the audit log) keep ``pseudonym``
        instead of the member's id. Other members' variations of their images lose the link.

        Returns what was removed; the caller deletes the files (after the commit).
        """
        async with self._transaction() as db:
            async with db.execute("SELECT id, grid_path FROM jobs WHERE user_id = ?", (user_id,)) as cursor:
                jobs = list(await cursor.fetchall())
            ids = [row["id"] for row in jobs]
            ids_json = json.dumps(ids)
            async with db.execute(
                "SELECT path, preview_path FROM outputs WHERE job_id IN (SELECT value FROM json_each(?))", (ids_json,)
            ) as cursor:
                outputs = list(await cursor.fetchall())
            files = [row["grid_path"] for row in jobs if row["grid_path"]]
            files += [p for row in outputs for p in (row["path"], row["preview_path"]) if p]
            cursor = await db.execute("DELETE FROM votes WHERE user_id = ?", (user_id,))
            votes = cursor.rowcount
            await db.execute(
                "UPDATE jobs SET source_job_id = NULL, source_index = NULL"
                " WHERE source_job_id IN (SELECT value FROM json_each(?))", (ids_json,)
            )  # fmt: skip
            await db.execute("UPDATE jobs SET appeal_of = NULL WHERE appeal_of IN (SELECT value FROM json_each(?))",
                             (ids_json,))  # fmt: skip
            await db.execute("DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?))", (ids_json,))
            for table in ("reviews", "strikes", "bans"):
                await db.execute(f"UPDATE OR REPLACE {table} SET user_id = ? WHERE user_id = ?", (pseudonym, user_id))
            # A member who moderated: their decisions stay, under the pseudonym too (as in the audit log).
            for table, column in (("reviews", "decided_by"), ("strikes", "moderator_id"), ("bans", "moderator_id")):
                await db.execute(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", (pseudonym, user_id))
            await db.execute("UPDATE audit_log SET actor_id = ? WHERE actor_id = ?", (pseudonym, user_id))
            await db.execute("UPDATE audit_log SET target = ? WHERE target = ?", (pseudonym, user_id))
            await db.execute("DELETE FROM dashboard_logins WHERE user_id = ?", (user_id,))
        return Forgotten(tuple(ids), tuple(files), votes)
