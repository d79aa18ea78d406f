"""Persistence: jobs, their state changes, outputs, verdicts, guild settings and the audit log.

One :class:`Storage` owns one aiosqlite connection (aiosqlite runs it on its own thread, so the
event loop never blocks on disk). Every statement binds its values as parameters; times are unix
seconds; JSON is written with ``sort_keys=True`` so equal values are stored as equal text.

Typical use::

    async with await Storage.open("data/imaginebot.sqlite3") as storage:
        await storage.insert_job(job)
        job = await storage.transition(job.id, JobState.RUNNING)
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import TypeAlias

import aiosqlite

from bot.errors import JobNotFoundError, StorageError
from bot.jobs import Job, JobKind, JobRequest, JobState
from bot.migrations import MIGRATIONS, SCHEMA_VERSION, statements
from bot.moderation_store import ModerationTables
from bot.records import AuditRecord, JobEvent, OutputRecord, VerdictRecord
from safety.fingerprint import to_signed, to_unsigned

logger = logging.getLogger(__name__)

JSONValue: TypeAlias = "str | int | float | bool | list[JSONValue] | dict[str, JSONValue] | None"
"""A value read back from a JSON column."""

JSONLike: TypeAlias = "str | int | float | bool | Sequence[JSONLike] | Mapping[str, JSONLike] | None"
"""A value that can be written to a JSON column (read back as :data:`JSONValue`)."""

MEMORY = ":memory:"

# STRICT tables need 3.37; the built-in json_each/json_valid (no JSON1 compile flag) need 3.38.
_MIN_SQLITE = (3, 38, 0)

# How long a statement waits for another connection's write lock (another process using the same
# file, e.g. an admin CLI) before failing with "database is locked".
_BUSY_TIMEOUT_MS = 5000

# States in which a run ended with generation complete: their durations are honest samples for the
# ETA estimator. A failed or cancelled run stopped part way and would bias estimates low.
_COMPLETED_RUN_STATES = (JobState.DONE, JobState.FLAGGED, JobState.BLOCKED)


def _dumps(value: object) -> str:
    # allow_nan=False: NaN/Infinity are not JSON; SQLite's json_valid() would reject them anyway,
    # and a NaN safety score is a bug to surface, not to store.
    return json.dumps(value, sort_keys=True, allow_nan=False)


def _job_from_row(row: sqlite3.Row) -> Job:
    request = JobRequest(
        prompt=row["prompt"],
        negative_prompt=row["negative_prompt"],
        seed=row["seed"],
        steps=row["steps"],
        width=row["width"],
        height=row["height"],
        count=row["count"],
        guidance=row["guidance"],
        model=row["model"],
        guild_id=row["guild_id"],
        user_id=row["user_id"],
        channel_id=row["channel_id"],
        parent_job_id=row["parent_job_id"],
        age_restricted=bool(row["age_restricted"]),
        kind=JobKind(row["kind"]),
        source_job_id=row["source_job_id"],
        source_index=row["source_index"],
        strength=row["strength"],
        appeal_of=row["appeal_of"],
    )
    return Job(
        id=row["id"],
        request=request,
        state=JobState(row["state"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=row["error"],
        grid_path=row["grid_path"],
    )


def _states_json(states: Collection[JobState]) -> str:
    # A set of states is bound as one JSON array and expanded with json_each(), so the SQL text is
    # constant whatever the number of states.
    return json.dumps(sorted(JobState(s).value for s in states))


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")


class Storage(ModerationTables):
    """The bot's SQLite database. Build it with :meth:`open`; close it with :meth:`aclose`.

    Every transaction, and every read, holds one ``asyncio.Lock``: aiosqlite runs one statement at a
    time, but without the lock the statements of two tasks' transactions could interleave on the
    shared connection, and a read could see another task's uncommitted half-transaction.
    """

    def __init__(self, connection: aiosqlite.Connection, path: str) -> None:
        self._db = connection
        self._path = path
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(cls, path: Path | str) -> Storage:
        """Open (creating if needed) the database at ``path`` and bring its schema up to date.

        ``":memory:"`` opens a private in-memory database (for tests).

        Raises:
            StorageError: the database was written by a newer imaginebot (its schema version is
                higher than this code knows), or SQLite is too old.
        """
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StorageError(f"SQLite {sqlite3.sqlite_version} is too old; imaginebot needs 3.38 or newer")
        target = str(path)
        if target != MEMORY:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the sqlite3 module opens no implicit transactions; we issue
        # BEGIN IMMEDIATE / COMMIT / ROLLBACK ourselves.
        connection = await aiosqlite.connect(target, isolation_level=None)
        storage = cls(connection, target)
        try:
            await storage._configure()
            await storage._migrate()
        except BaseException:
            await connection.close()
            raise
        return storage

    async def _configure(self) -> None:
        self._db.row_factory = sqlite3.Row
        async with self._db.execute("PRAGMA journal_mode=WAL") as cursor:
            row = await cursor.fetchone()
        mode = row[0] if row else None
        if mode != "wal" and self._path != MEMORY:
            logger.warning("%s: journal_mode is %s, not wal; readers may block writers", self._path, mode)
        # WAL + synchronous=NORMAL survives a crash of this process but may lose the last commits on
        # power loss or an OS crash, since the WAL is only fsynced at checkpoints. We promise that an
        # accepted job is never lost (it is persisted before the user is told it is queued), so we pay
        # one fsync per commit: FULL. We commit a handful of times per job, each job costing seconds
        # of GPU time, so the fsyncs are noise.
        await self._db.execute("PRAGMA synchronous=FULL")
        await self._db.execute("PRAGMA foreign_keys=ON")
        # PRAGMA values cannot be bound parameters; this one is a constant of ours.
        await self._db.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_MS)}")

    async def _migrate(self) -> None:
        # One transaction per migration. user_version is read inside the write transaction, so two
        # processes opening a new file at once cannot both apply the same migration.
        while True:
            async with self._transaction():
                version = await self._user_version()
                if version > SCHEMA_VERSION:
                    raise StorageError(
                        f"{self._path}: database schema version {version} is newer than this imaginebot "
                        f"supports ({SCHEMA_VERSION}); upgrade imaginebot or open a matching backup"
                    )
                if version == SCHEMA_VERSION:
                    return
                for statement in statements(MIGRATIONS[version]):
                    await self._db.execute(statement)
                # PRAGMA values cannot be bound parameters; this one is an int we computed.
                await self._db.execute(f"PRAGMA user_version={int(version + 1)}")
            logger.info("%s: migrated database schema to version %d", self._path, version + 1)

    async def _user_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def schema_version(self) -> int:
        """The schema version of the open database (``PRAGMA user_version``)."""
        async with self._lock:
            return await self._user_version()

    async def aclose(self) -> None:
        """Close the connection. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            await self._db.close()

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Hold the lock and one write transaction; commit on success, roll back on any exception.

        ``BEGIN IMMEDIATE`` takes SQLite's write lock before the first read, so a read-then-write
        (like a state transition) cannot race another connection to the same file.
        """
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await self._db.rollback()
                raise
            await self._db.commit()

    async def _fetchall(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        async with self._lock, self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    # -- jobs ---------------------------------------------------------------------------------------

    async def insert_job(self, job: Job) -> None:
        """Persist a new job and its creation event in one transaction.

        Raises:
            StorageError: a job with this id exists, or its parent job does not.
        """
        r = job.request
        try:
            async with self._transaction() as db:
                await db.execute(
                    "INSERT INTO jobs (id, guild_id, channel_id, user_id, prompt, negative_prompt, seed, steps,"
                    " width, height, count, guidance, model, parent_job_id, state, error, grid_path,"
                    " created_at, updated_at, started_at, finished_at, age_restricted, kind, source_job_id,"
                    " source_index, strength, appeal_of)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job.id, r.guild_id, r.channel_id, r.user_id, r.prompt, r.negative_prompt, r.seed,
                        r.steps, r.width, r.height, r.count, r.guidance, r.model, r.parent_job_id,
                        job.state.value, job.error, job.grid_path,
                        job.created_at, job.updated_at, job.started_at, job.finished_at, int(r.age_restricted),
                        r.kind.value, r.source_job_id, r.source_index, r.strength, r.appeal_of,
                    ),
                )  # fmt: skip
                await db.execute(
                    "INSERT INTO job_events (job_id, from_state, to_state, at) VALUES (?, NULL, ?, ?)",
                    (job.id, job.state.value, job.created_at),
                )
        except sqlite3.IntegrityError as exc:
            raise StorageError(f"job {job.id}: cannot insert ({exc})") from exc

    async def get_job(self, job_id: str) -> Job:
        """The job with this id.

        Raises:
            JobNotFoundError: no such job.
        """
        rows = await self._fetchall("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise JobNotFoundError(f"no job {job_id!r}")
        return _job_from_row(rows[0])

    async def list_jobs(
        self,
        *,
        limit: int = 20,
        guild_id: str | None = None,
        user_id: str | None = None,
        states: Collection[JobState] | None = None,
    ) -> list[Job]:
        """Newest jobs first, optionally only those of one guild, one user and/or some states."""
        _check_limit(limit)
        # The WHERE clause is assembled from constant fragments only; every value is bound.
        clauses: list[str] = []
        params: list[object] = []
        if guild_id is not None:
            clauses.append("guild_id = ?")
            params.append(guild_id)
        if user_id is not None:
            clauses.append("user_id = ?")
            params.append(user_id)
        if states is not None:
            clauses.append("state IN (SELECT value FROM json_each(?))")
            params.append(_states_json(states))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._fetchall(
            f"SELECT * FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (*params, limit),
        )
        return [_job_from_row(row) for row in rows]

    async def jobs_in_states(self, states: Collection[JobState]) -> list[Job]:
        """Every job in one of ``states``, oldest first (resuming after a restart keeps queue order)."""
        rows = await self._fetchall(
            "SELECT * FROM jobs WHERE state IN (SELECT value FROM json_each(?)) ORDER BY created_at, rowid",
            (_states_json(states),),
        )
        return [_job_from_row(row) for row in rows]

    async def transition(
        self,
        job_id: str,
        target: JobState,
        *,
        error: str | None = None,
        detail: str | None = None,
        at: float | None = None,
    ) -> Job:
        """Move a job to ``target`` and record the event, atomically; return the updated job.

        The current state is read inside the write transaction, so of two concurrent transitions
        from the same state exactly one wins and the other sees the winner's state.

        Args:
            job_id: the job.
            target: its new state.
            error: why it failed (stored on the job; ``None`` clears an earlier error).
            detail: free text stored with the event only.
            at: when it happened (unix seconds); now by default.

        Raises:
            JobNotFoundError: no such job.
            IllegalTransitionError: the state machine forbids the change; nothing is written.
        """
        when = time.time() if at is None else at
        async with self._transaction() as db:
            return await self._transition_in(db, job_id, target, error=error, detail=detail, at=when)

    async def _transition_in(
        self, db: aiosqlite.Connection, job_id: str, target: JobState, *, error: str | None, detail: str | None,
        at: float,
    ) -> Job:  # fmt: skip
        """:meth:`transition` inside an open transaction. A job that becomes ``flagged`` gets its pending
        review in the same transaction: a held job is always in the moderators' queue."""
        async with db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        current = _job_from_row(row)
        moved = current.moved_to(target, at=at, error=error)
        await db.execute(
            "UPDATE jobs SET state = ?, error = ?, updated_at = ?, started_at = ?, finished_at = ? WHERE id = ?",
            (moved.state.value, moved.error, moved.updated_at, moved.started_at, moved.finished_at, job_id),
        )
        await db.execute(
            "INSERT INTO job_events (job_id, from_state, to_state, at, detail) VALUES (?, ?, ?, ?, ?)",
            (job_id, current.state.value, moved.state.value, at, detail),
        )
        if target is JobState.FLAGGED:
            await db.execute(
                "INSERT INTO reviews (job_id, guild_id, user_id, kind, state, category, requested_at)"
                " VALUES (?, ?, ?, 'flag', 'pending',"
                " (SELECT category FROM verdicts WHERE job_id = ? AND decision = 'flag' ORDER BY idx LIMIT 1), ?)"
                " ON CONFLICT (job_id) DO NOTHING",
                (job_id, moved.request.guild_id, moved.request.user_id, job_id, at),
            )
        return moved

    async def events(self, job_id: str) -> list[JobEvent]:
        """Every state change of a job, in the order they happened (creation first)."""
        rows = await self._fetchall(
            "SELECT id, job_id, from_state, to_state, at, detail FROM job_events WHERE job_id = ? ORDER BY id",
            (job_id,),
        )
        return [
            JobEvent(
                id=row["id"],
                job_id=row["job_id"],
                from_state=None if row["from_state"] is None else JobState(row["from_state"]),
                to_state=JobState(row["to_state"]),
                at=row["at"],
                detail=row["detail"],
            )
            for row in rows
        ]

    async def recent_runs(self, limit: int = 50) -> list[tuple[int, float]]:
        """``(cost, seconds)`` of the most recent completed runs, newest first, to seed the ETA estimator.

        A run is measured from the job's (last) entry into ``running`` to the event that left
        ``running`` for done, flagged or blocked. The event time is used rather than
        ``finished_at``, which a later moderator decision (flagged -> approved) overwrites.
        """
        _check_limit(limit)
        rows = await self._fetchall(
            "SELECT j.*, e.at AS ended_at FROM job_events AS e JOIN jobs AS j ON j.id = e.job_id"
            " WHERE e.from_state = ? AND e.to_state IN (SELECT value FROM json_each(?))"
            " AND j.started_at IS NOT NULL AND e.at >= j.started_at"
            " ORDER BY e.at DESC, e.id DESC LIMIT ?",
            (JobState.RUNNING.value, _states_json(_COMPLETED_RUN_STATES), limit),
        )
        runs: list[tuple[int, float]] = []
        for row in rows:
            job = _job_from_row(row)
            started = job.started_at if job.started_at is not None else row["ended_at"]
            runs.append((job.request.cost, float(row["ended_at"]) - started))
        return runs

    # -- outputs and verdicts -----------------------------------------------------------------------

    async def save_outputs(
        self,
        job_id: str,
        outputs: Sequence[OutputRecord],
        verdicts: Sequence[VerdictRecord],
        grid: tuple[str, str] | None,
    ) -> None:
        """Store the complete result of one run of a job, in one transaction.

        Saving again replaces the earlier result, so re-running a job after a crash is idempotent:
        rows are upserted by ``(job_id, index)``; rows of indexes absent from this call are deleted
        and ``grid`` (``(path, sha256)``, or ``None`` for no grid) overwrites the job's grid, so
        nothing from an earlier run that this run would not have stored (e.g. an image this
        run's policy blocked) survives.

        Raises:
            ValueError: a record belongs to another job, or an index appears twice.
            JobNotFoundError: no such job.
        """
        _check_records(job_id, "output", [o.job_id for o in outputs], [o.index for o in outputs])
        _check_records(job_id, "verdict", [v.job_id for v in verdicts], [v.index for v in verdicts])
        now = time.time()
        grid_path, grid_sha256 = grid if grid is not None else (None, None)
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE jobs SET grid_path = ?, grid_sha256 = ? WHERE id = ?", (grid_path, grid_sha256, job_id)
            )
            if cursor.rowcount == 0:
                raise JobNotFoundError(f"no job {job_id!r}")
            await db.execute(
                "DELETE FROM outputs WHERE job_id = ? AND idx NOT IN (SELECT value FROM json_each(?))",
                (job_id, json.dumps([o.index for o in outputs])),
            )
            await db.execute(
                "DELETE FROM verdicts WHERE job_id = ? AND idx NOT IN (SELECT value FROM json_each(?))",
                (job_id, json.dumps([v.index for v in verdicts])),
            )
            await db.executemany(
                "INSERT INTO outputs (job_id, idx, path, sha256, width, height, seed, created_at, preview_path,"
                " phash, payload_id, c2pa) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (job_id, idx) DO UPDATE SET path = excluded.path, sha256 = excluded.sha256,"
                " width = excluded.width, height = excluded.height, seed = excluded.seed,"
                " preview_path = excluded.preview_path, phash = excluded.phash, payload_id = excluded.payload_id,"
                " c2pa = excluded.c2pa",
                [
                    (job_id, o.index, o.path, o.sha256, o.width, o.height, o.seed, now, o.preview_path,
                     None if o.phash is None else to_signed(o.phash), o.payload_id, int(o.c2pa))
                    for o in outputs
                ],
            )  # fmt: skip
            await db.executemany(
                "INSERT INTO verdicts (job_id, idx, stage, decision, category, reason, scores, model_versions,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (job_id, idx) DO UPDATE SET stage = excluded.stage, decision = excluded.decision,"
                " category = excluded.category, reason = excluded.reason, scores = excluded.scores,"
                " model_versions = excluded.model_versions",
                [
                    (job_id, v.index, v.stage, v.decision, v.category, v.reason, _dumps(dict(v.scores)),
                     _dumps(dict(v.model_versions)), now)
                    for v in verdicts
                ],
            )  # fmt: skip

    async def outputs_for(self, job_id: str) -> list[OutputRecord]:
        """The stored images of a job, by index."""
        rows = await self._fetchall(f"SELECT {_OUTPUT_COLUMNS} FROM outputs WHERE job_id = ? ORDER BY idx", (job_id,))
        return [_output_from_row(row) for row in rows]

    # -- provenance registry ------------------------------------------------------------------------

    async def outputs_by_sha256(self, sha256: str) -> list[OutputRecord]:
        """Stored images whose file has exactly this SHA-256 (hex)."""
        rows = await self._fetchall(f"SELECT {_OUTPUT_COLUMNS} FROM outputs WHERE sha256 = ?", (sha256,))
        return [_output_from_row(row) for row in rows]

    async def job_by_grid_sha256(self, sha256: str) -> str | None:
        """The id of the job whose grid file has exactly this SHA-256, if any."""
        rows = await self._fetchall("SELECT id FROM jobs WHERE grid_sha256 = ? LIMIT 1", (sha256,))
        return str(rows[0]["id"]) if rows else None

    async def outputs_by_payload(self, payload_id: int) -> list[OutputRecord]:
        """Stored images whose invisible watermark carries this payload."""
        rows = await self._fetchall(f"SELECT {_OUTPUT_COLUMNS} FROM outputs WHERE payload_id = ?", (payload_id,))
        return [_output_from_row(row) for row in rows]

    async def output(self, job_id: str, index: int) -> OutputRecord | None:
        rows = await self._fetchall(f"SELECT {_OUTPUT_COLUMNS} FROM outputs WHERE job_id = ? AND idx = ?",
                                    (job_id, index))  # fmt: skip
        return _output_from_row(rows[0]) if rows else None

    async def perceptual_hashes(self) -> list[tuple[str, int, int]]:
        """``(job_id, index, phash)`` of every stored image that has a perceptual hash (unsigned)."""
        rows = await self._fetchall("SELECT job_id, idx, phash FROM outputs WHERE phash IS NOT NULL")
        return [(row["job_id"], int(row["idx"]), to_unsigned(int(row["phash"]))) for row in rows]

    async def verdicts_for(self, job_id: str) -> list[VerdictRecord]:
        """The verdicts about a job's images, by index."""
        rows = await self._fetchall(
            "SELECT job_id, idx, stage, decision, category, reason, scores, model_versions"
            " FROM verdicts WHERE job_id = ? ORDER BY idx",
            (job_id,),
        )
        return [
            VerdictRecord(
                job_id=row["job_id"],
                index=row["idx"],
                stage=row["stage"],
                decision=row["decision"],
                category=row["category"],
                reason=row["reason"],
                scores=json.loads(row["scores"]),
                model_versions=json.loads(row["model_versions"]),
            )
            for row in rows
        ]

    async def grid_for(self, job_id: str) -> tuple[str, str] | None:
        """The job's grid image as ``(path, sha256)``, or ``None`` if it has none.

        Raises:
            JobNotFoundError: no such job.
        """
        rows = await self._fetchall("SELECT grid_path, grid_sha256 FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise JobNotFoundError(f"no job {job_id!r}")
        path, sha256 = rows[0]
        return None if path is None or sha256 is None else (path, sha256)

    # -- guild settings -----------------------------------------------------------------------------

    async def get_guild_setting(self, guild_id: str, key: str, default: JSONValue = None) -> JSONValue:
        """The stored JSON value of one guild setting, or ``default`` if it was never set."""
        rows = await self._fetchall("SELECT value FROM guild_settings WHERE guild_id = ? AND key = ?", (guild_id, key))
        if not rows:
            return default
        value: JSONValue = json.loads(rows[0]["value"])
        return value

    async def guild_settings(self, guild_id: str) -> dict[str, JSONValue]:
        """Every stored setting of one guild, by key (one read, for building a whole configuration)."""
        rows = await self._fetchall("SELECT key, value FROM guild_settings WHERE guild_id = ?", (guild_id,))
        return {row["key"]: json.loads(row["value"]) for row in rows}

    async def set_guild_setting(self, guild_id: str, key: str, value: JSONLike) -> None:
        """Store one guild setting as JSON, replacing any earlier value.

        Raises:
            TypeError: ``value`` is not JSON-serialisable.
            ValueError: ``value`` contains NaN or an infinity.
        """
        text = _dumps(value)
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO guild_settings (guild_id, key, value, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (guild_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (guild_id, key, text, time.time()),
            )

    # -- audit log ----------------------------------------------------------------------------------

    async def audit(
        self,
        action: str,
        *,
        guild_id: str | None = None,
        actor_id: str | None = None,
        target: str | None = None,
        detail: Mapping[str, object] | None = None,
    ) -> None:
        """Append one entry to the audit log.

        Raises:
            TypeError: ``detail`` is not JSON-serialisable.
        """
        text = _dumps(dict(detail or {}))
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO audit_log (at, guild_id, actor_id, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), guild_id, actor_id, action, target, text),
            )

    # -- votes --------------------------------------------------------------------------------------

    async def vote(self, job_id: str, user_id: str, index: int, *, guild_id: str) -> dict[int, int]:
        """Record (or move) a member's vote on a grid; returns the tally by image index."""
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO votes (job_id, user_id, guild_id, idx, at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (job_id, user_id) DO UPDATE SET idx = excluded.idx, at = excluded.at",
                (job_id, user_id, guild_id, index, time.time()),
            )
            async with db.execute(
                "SELECT idx, COUNT(*) AS n FROM votes WHERE job_id = ? GROUP BY idx", (job_id,)
            ) as cursor:
                return _tally(list(await cursor.fetchall()))

    async def tally(self, job_id: str) -> dict[int, int]:
        rows = await self._fetchall("SELECT idx, COUNT(*) AS n FROM votes WHERE job_id = ? GROUP BY idx", (job_id,))
        return _tally(rows)

    async def top_voted(self, guild_id: str, *, since: float, limit: int = 10) -> list[tuple[str, int, int]]:
        """``(job_id, index, votes)`` of the most-voted images of a guild since a time, best first."""
        _check_limit(limit)
        rows = await self._fetchall(
            "SELECT job_id, idx, COUNT(*) AS n FROM votes WHERE guild_id = ? AND at >= ?"
            " GROUP BY job_id, idx ORDER BY n DESC, MAX(at) DESC LIMIT ?",
            (guild_id, since, limit),
        )
        return [(row["job_id"], int(row["idx"]), int(row["n"])) for row in rows]

    async def audit_entries(
        self, *, guild_id: str | None = None, limit: int = 100, since: float | None = None
    ) -> list[AuditRecord]:
        """Audit entries, newest first; only one guild's if ``guild_id`` is given, only those at or after
        ``since`` if it is."""
        _check_limit(limit)
        columns = "SELECT id, at, action, guild_id, actor_id, target, detail FROM audit_log"
        # Constant fragments only; every value is bound.
        where = " AND ".join(c for c, on in (("guild_id = ?", guild_id is not None), ("at >= ?", since is not None))
                             if on)  # fmt: skip
        params = [v for v in (guild_id, since) if v is not None]
        rows = await self._fetchall(f"{columns} {'WHERE ' + where if where else ''} ORDER BY id DESC LIMIT ?",
                                    (*params, limit))  # fmt: skip
        return [
            AuditRecord(
                id=row["id"],
                at=row["at"],
                action=row["action"],
                guild_id=row["guild_id"],
                actor_id=row["actor_id"],
                target=row["target"],
                detail=json.loads(row["detail"]),
            )
            for row in rows
        ]


_OUTPUT_COLUMNS = "job_id, idx, path, sha256, width, height, seed, preview_path, phash, payload_id, c2pa"


def _output_from_row(row: sqlite3.Row) -> OutputRecord:
    return OutputRecord(
        job_id=row["job_id"],
        index=row["idx"],
        path=row["path"],
        sha256=row["sha256"],
        width=row["width"],
        height=row["height"],
        seed=row["seed"],
        preview_path=row["preview_path"],
        phash=None if row["phash"] is None else to_unsigned(int(row["phash"])),
        payload_id=row["payload_id"],
        c2pa=bool(row["c2pa"]),
    )


def _tally(rows: Sequence[sqlite3.Row]) -> dict[int, int]:
    return {int(row["idx"]): int(row["n"]) for row in rows}


def _check_records(job_id: str, kind: str, job_ids: Sequence[str], indexes: Sequence[int]) -> None:
    for other in job_ids:
        if other != job_id:
            raise ValueError(f"{kind} record of job {other!r} passed to save_outputs for job {job_id!r}")
    if len(set(indexes)) != len(indexes):
        raise ValueError(f"{kind} indexes of job {job_id!r} repeat: {sorted(indexes)}")
