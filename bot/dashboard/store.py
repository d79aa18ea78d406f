"""The dashboard's own queries on the bot's database: used login nonces, job search and metrics.

The dashboard runs in its own process on the same SQLite file as the bot (WAL: readers never block
the writer). :class:`bot.storage.Storage` stays the one place that changes jobs and reviews; this
connection only records used login nonces and reads what the search and metrics pages need, which
``Storage`` has no query for. Every value is bound as a parameter.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import aiosqlite

from bot.jobs import JobState

_BUSY_TIMEOUT_MS = 5000
# States whose entry ends a run with generation complete (as in Storage.recent_runs).
_RUN_ENDS = (JobState.DONE.value, JobState.FLAGGED.value, JobState.BLOCKED.value)


@dataclass(frozen=True)
class JobPage:
    """One page of a job search: the matching job ids (newest first) and how many match in all."""

    job_ids: list[str]
    total: int


@dataclass(frozen=True)
class Metrics:
    """What the metrics page draws, for one server since a time.

    Attributes:
        states: jobs by state (created since the time; queued and running ones whenever created).
        waits: seconds from accepted to started, per job.
        runs: seconds of generation (running until done, flagged or blocked), per run.
        verdicts: ``(category, decision) -> count`` of image verdicts (category ``"none"`` for allowed).
    """

    states: dict[str, int]
    waits: list[float]
    runs: list[float]
    verdicts: dict[tuple[str, str], int]


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class DashboardStore:
    """A second connection to the bot's database. Open it with :meth:`open` after ``Storage.open``
    (which creates and migrates the schema); close it with :meth:`aclose`."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._db = connection

    @classmethod
    async def open(cls, path: Path | str) -> DashboardStore:
        connection = await aiosqlite.connect(str(path), isolation_level=None)
        connection.row_factory = sqlite3.Row
        await connection.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_MS)}")
        return cls(connection)

    async def aclose(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> DashboardStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _rows(self, sql: str, params: tuple[object, ...]) -> list[sqlite3.Row]:
        async with self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def claim_login(self, nonce: str, *, user_id: str, guild_id: str, expires_at: float) -> bool:
        """Record a login nonce as used; False if it was used before (the link is spent)."""
        now = time.time()
        try:
            await self._db.execute(
                "INSERT INTO dashboard_logins (nonce, user_id, guild_id, used_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (nonce, user_id, guild_id, now, expires_at),
            )
        except sqlite3.IntegrityError:
            return False
        # Spent nonces of expired links are refused by their expiry anyway: keep the table small.
        await self._db.execute("DELETE FROM dashboard_logins WHERE expires_at < ?", (now - 3600,))
        return True

    async def search_jobs(
        self,
        guild_id: str,
        *,
        text: str = "",
        user_id: str = "",
        state: JobState | None = None,
        limit: int = 25,
        offset: int = 0,
    ) -> JobPage:
        """One server's jobs whose prompt contains ``text`` (or whose id is ``text``), newest first."""
        if limit < 1 or offset < 0:
            raise ValueError(f"limit must be >= 1 and offset >= 0, got {limit} and {offset}")
        clauses, params = ["guild_id = ?"], [guild_id]
        if text:
            clauses.append("(prompt LIKE ? ESCAPE '\\' OR id = ?)")
            params += [_like(text), text]
        if user_id:
            clauses.append("user_id = ?")
            params.append(user_id)
        if state is not None:
            clauses.append("state = ?")
            params.append(state.value)
        where = " AND ".join(clauses)  # constant fragments only
        total = await self._rows(f"SELECT COUNT(*) FROM jobs WHERE {where}", tuple(params))
        rows = await self._rows(
            f"SELECT id FROM jobs WHERE {where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return JobPage([row["id"] for row in rows], int(total[0][0]))

    async def metrics(self, guild_id: str, *, since: float) -> Metrics:
        """Queue depth, waits, generation times and verdict counts of one server since ``since``."""
        states = await self._rows(
            "SELECT state, COUNT(*) AS n FROM jobs WHERE guild_id = ? AND (created_at >= ? OR state IN (?, ?))"
            " GROUP BY state",
            (guild_id, since, JobState.QUEUED.value, JobState.RUNNING.value),
        )
        waits = await self._rows(
            "SELECT started_at - created_at AS s FROM jobs"
            " WHERE guild_id = ? AND created_at >= ? AND started_at IS NOT NULL",
            (guild_id, since),
        )
        runs = await self._rows(
            "SELECT e.at - j.started_at AS s FROM job_events AS e JOIN jobs AS j ON j.id = e.job_id"
            " WHERE j.guild_id = ? AND e.at >= ? AND e.from_state = ? AND e.to_state IN (?, ?, ?)"
            " AND j.started_at IS NOT NULL AND e.at >= j.started_at",
            (guild_id, since, JobState.RUNNING.value, *_RUN_ENDS),
        )
        verdicts = await self._rows(
            "SELECT COALESCE(v.category, 'none') AS category, v.decision, COUNT(*) AS n"
            " FROM verdicts AS v JOIN jobs AS j ON j.id = v.job_id"
            " WHERE j.guild_id = ? AND v.created_at >= ? GROUP BY 1, 2",
            (guild_id, since),
        )
        return Metrics(
            states={row["state"]: int(row["n"]) for row in states},
            waits=[max(0.0, float(row["s"])) for row in waits],
            runs=[max(0.0, float(row["s"])) for row in runs],
            verdicts={(row["category"], row["decision"]): int(row["n"]) for row in verdicts},
        )
