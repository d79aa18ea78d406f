"""Storage against real SQLite files: schema, jobs and their state machine, outputs, settings, audit."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.errors import IllegalTransitionError, JobNotFoundError, StorageError
from bot.jobs import ACTIVE_STATES, MAX_GUIDANCE, Job, JobKind, JobRequest, JobState
from bot.migrations import SCHEMA_VERSION, statements
from bot.records import OutputRecord, VerdictRecord
from bot.storage import Storage

TABLES = {"jobs", "job_events", "outputs", "verdicts", "guild_settings", "audit_log"}
REPO_ROOT = Path(__file__).resolve().parents[2]


def make_request(**overrides: object) -> JobRequest:
    base = JobRequest.create(
        "a red fox in the snow", model="tiny", seed=42, steps=20, width=512, height=512, guidance=7.5
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def make_job(job_id: str, *, created_at: float = 1000.0, state: JobState = JobState.QUEUED, **request: object) -> Job:
    return Job(id=job_id, request=make_request(**request), state=state, created_at=created_at, updated_at=created_at)


def make_output(job_id: str, index: int, *, path: str | None = None) -> OutputRecord:
    return OutputRecord(job_id, index, path or f"out/{job_id}/{index}.png", f"{index:064x}", 512, 512, 42 + index)


def make_verdict(job_id: str, index: int, *, decision: str = "allow") -> VerdictRecord:
    return VerdictRecord(
        job_id=job_id,
        index=index,
        stage="policy",
        decision=decision,
        category=None if decision == "allow" else "sexual",
        reason="passed every safety check",
        scores={"nsfw.sexual": 0.125 * index, "faces.count": 0.0},
        model_versions={"nsfw": "clip-vit-b32@1", "faces": "nudenet-320n"},
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "bot.sqlite3"  # "data/" does not exist yet: open() must create it


@pytest.fixture
async def storage(db_path: Path) -> AsyncIterator[Storage]:
    async with await Storage.open(db_path) as opened:
        yield opened


def file_pragma(path: Path, name: str) -> object:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


# -- schema and migrations --------------------------------------------------------------------------


async def test_open_migrates_an_empty_file(storage: Storage, db_path: Path) -> None:
    assert await storage.schema_version() == SCHEMA_VERSION
    assert file_pragma(db_path, "user_version") == SCHEMA_VERSION
    with sqlite3.connect(db_path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert tables >= TABLES


async def test_reopening_is_a_no_op(db_path: Path) -> None:
    async with await Storage.open(db_path) as first:
        await first.insert_job(make_job("j1"))
    with sqlite3.connect(db_path) as conn:
        schema_before = conn.execute("SELECT type, name, sql FROM sqlite_schema ORDER BY name").fetchall()
    async with await Storage.open(db_path) as second:
        assert await second.schema_version() == SCHEMA_VERSION
        assert (await second.get_job("j1")).id == "j1"
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT type, name, sql FROM sqlite_schema ORDER BY name").fetchall() == schema_before


async def test_a_newer_schema_is_refused_and_left_alone(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match=rf"schema version {SCHEMA_VERSION + 1} is newer .*\({SCHEMA_VERSION}\)"):
        await Storage.open(db_path)
    assert file_pragma(db_path, "user_version") == SCHEMA_VERSION + 1
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0] == 0


async def test_wal_durability_and_foreign_keys_are_on(storage: Storage, db_path: Path) -> None:
    assert file_pragma(db_path, "journal_mode") == "wal"  # WAL is a property of the file
    # synchronous and foreign_keys are per connection: ask the storage's own connection.
    pragmas: dict[str, object] = {}
    for name in ("synchronous", "foreign_keys", "busy_timeout"):
        async with storage._db.execute(f"PRAGMA {name}") as cursor:
            row = await cursor.fetchone()
        pragmas[name] = None if row is None else row[0]
    assert pragmas == {"synchronous": 2, "foreign_keys": 1, "busy_timeout": 5000}  # 2 is FULL


async def test_in_memory_database_works() -> None:
    async with await Storage.open(":memory:") as memory:
        await memory.insert_job(make_job("m1"))
        assert (await memory.get_job("m1")).request.prompt == "a red fox in the snow"


async def test_closing_twice_is_harmless(db_path: Path) -> None:
    opened = await Storage.open(db_path)
    await opened.aclose()
    await opened.aclose()


def test_statements_split_only_between_statements() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (a TEXT DEFAULT 'x;y');
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = 'z;'; END;
    -- trailing comment
    """
    first, second = statements(script)
    assert "CREATE TABLE t (a TEXT DEFAULT 'x;y');" in first
    assert second.startswith("CREATE TRIGGER tr") and second.endswith("END;")
    with pytest.raises(ValueError, match="incomplete statement"):
        statements("CREATE TABLE t (a TEXT); CREATE TABLE u (b")
    with pytest.raises(ValueError, match="incomplete statement"):
        statements("INSERT INTO t VALUES ('a;b');\nINSERT INTO t VALUES ('c;d);")


# -- jobs ------------------------------------------------------------------------------------------


async def test_job_round_trips_with_optional_fields_unset(storage: Storage) -> None:
    job = make_job("plain")
    await storage.insert_job(job)
    assert await storage.get_job("plain") == job


async def test_job_round_trips_with_every_optional_field_set(storage: Storage) -> None:
    await storage.insert_job(make_job("parent"))
    job = Job(
        id="full",
        request=make_request(
            negative_prompt="blurry",
            channel_id="c9",
            parent_job_id="parent",
            guild_id="g7",
            user_id="u7",
            count=4,
            guidance=0.1 + 0.2,  # not exactly representable in decimal: REAL must keep every bit
            seed=2**32 - 4,
            kind=JobKind.VARY,
            source_job_id="parent",
            source_index=3,
            strength=0.1 + 0.3,
        ),
        state=JobState.FAILED,
        created_at=1.5,
        updated_at=2.25,
        started_at=1.75,
        finished_at=2.25,
        error="worker lost",
        grid_path="out/full/grid.png",
    )
    await storage.insert_job(job)
    assert await storage.get_job("full") == job


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prompt=st.text(min_size=1, max_size=40).filter(str.strip).map(str.strip),
    negative=st.text(max_size=20),
    optional=st.one_of(st.none(), st.text(max_size=10)),
    guidance=st.floats(min_value=0.0, max_value=MAX_GUIDANCE),
    seed=st.integers(min_value=0, max_value=2**32 - 4),
    times=st.tuples(st.floats(0, 2e9), st.one_of(st.none(), st.floats(0, 2e9))),
)
async def test_any_job_round_trips(
    prompt: str, negative: str, optional: str | None, guidance: float, seed: int, times: tuple[float, float | None]
) -> None:
    job = Job(
        id="h",
        request=make_request(
            prompt=prompt, negative_prompt=negative, channel_id=optional, guidance=guidance, seed=seed
        ),
        created_at=times[0],
        updated_at=times[0],
        started_at=times[1],
        error=optional,
        grid_path=optional,
    )
    async with await Storage.open(":memory:") as memory:
        await memory.insert_job(job)
        assert await memory.get_job("h") == job


async def test_unknown_job_is_not_found(storage: Storage) -> None:
    with pytest.raises(JobNotFoundError, match="nope"):
        await storage.get_job("nope")
    with pytest.raises(JobNotFoundError):
        await storage.transition("nope", JobState.RUNNING)


async def test_duplicate_id_or_missing_parent_is_a_storage_error(storage: Storage) -> None:
    await storage.insert_job(make_job("j1"))
    with pytest.raises(StorageError, match="j1"):
        await storage.insert_job(make_job("j1"))
    with pytest.raises(StorageError, match="orphan"):
        await storage.insert_job(make_job("orphan", parent_job_id="missing"))
    assert [job.id for job in await storage.list_jobs()] == ["j1"]
    assert len(await storage.events("j1")) == 1


async def test_list_jobs_newest_first_with_filters(storage: Storage) -> None:
    jobs = [
        make_job("a", created_at=1.0, guild_id="g1", user_id="u1"),
        make_job("b", created_at=2.0, guild_id="g1", user_id="u2", state=JobState.RUNNING),
        make_job("c", created_at=3.0, guild_id="g2", user_id="u1", state=JobState.DONE),
        make_job("d", created_at=4.0, guild_id="g1", user_id="u1", state=JobState.DONE),
    ]
    for job in jobs:
        await storage.insert_job(job)

    async def ids(**filters: object) -> list[str]:
        return [job.id for job in await storage.list_jobs(**filters)]  # type: ignore[arg-type]

    assert await ids() == ["d", "c", "b", "a"]
    assert await ids(limit=2) == ["d", "c"]
    assert await ids(guild_id="g1") == ["d", "b", "a"]
    assert await ids(user_id="u1") == ["d", "c", "a"]
    assert await ids(guild_id="g1", user_id="u1") == ["d", "a"]
    assert await ids(states=ACTIVE_STATES) == ["b", "a"]
    assert await ids(states={JobState.DONE}, guild_id="g2") == ["c"]
    assert await ids(states=()) == []
    with pytest.raises(ValueError, match="limit"):
        await storage.list_jobs(limit=0)


async def test_jobs_in_states_oldest_first(storage: Storage) -> None:
    # Inserted out of order; equal creation times keep insertion order.
    for job in [
        make_job("late", created_at=30.0, state=JobState.RUNNING),
        make_job("early", created_at=10.0),
        make_job("done", created_at=5.0, state=JobState.DONE),
        make_job("tie1", created_at=20.0),
        make_job("tie2", created_at=20.0, state=JobState.RUNNING),
    ]:
        await storage.insert_job(job)
    resumable = await storage.jobs_in_states(ACTIVE_STATES)
    assert [job.id for job in resumable] == ["early", "tie1", "tie2", "late"]
    assert [job.id for job in await storage.jobs_in_states([JobState.DONE])] == ["done"]


# -- transitions -----------------------------------------------------------------------------------


async def test_transitions_persist_and_record_events(storage: Storage) -> None:
    await storage.insert_job(make_job("j", created_at=100.0))
    running = await storage.transition("j", JobState.RUNNING, at=110.0, detail="worker-0")
    failed = await storage.transition("j", JobState.FAILED, at=125.5, error="out of memory")

    assert running.state is JobState.RUNNING and running.started_at == 110.0
    assert await storage.get_job("j") == failed
    assert (failed.state, failed.started_at, failed.finished_at) == (JobState.FAILED, 110.0, 125.5)
    assert (failed.updated_at, failed.error, failed.created_at) == (125.5, "out of memory", 100.0)
    events = await storage.events("j")
    assert [(e.from_state, e.to_state, e.at, e.detail) for e in events] == [
        (None, JobState.QUEUED, 100.0, None),
        (JobState.QUEUED, JobState.RUNNING, 110.0, "worker-0"),
        (JobState.RUNNING, JobState.FAILED, 125.5, None),
    ]
    assert all(e.job_id == "j" for e in events)


async def test_transition_defaults_to_now(storage: Storage) -> None:
    await storage.insert_job(make_job("j"))
    before = time.time()
    job = await storage.transition("j", JobState.RUNNING)
    assert job.started_at is not None and before <= job.started_at <= time.time()
    assert (await storage.events("j"))[-1].at == job.started_at


async def test_illegal_transition_changes_nothing(storage: Storage) -> None:
    await storage.insert_job(make_job("j"))
    await storage.transition("j", JobState.RUNNING, at=1.0)
    await storage.transition("j", JobState.DONE, at=2.0)
    before, events_before = await storage.get_job("j"), await storage.events("j")

    with pytest.raises(IllegalTransitionError, match="j: cannot go from done to running"):
        await storage.transition("j", JobState.RUNNING, at=3.0, error="x")

    assert await storage.get_job("j") == before
    assert await storage.events("j") == events_before
    # The failed transaction was rolled back and the lock released: the storage still works.
    await storage.insert_job(make_job("k"))


async def test_concurrent_transitions_one_wins(storage: Storage) -> None:
    await storage.insert_job(make_job("j"))
    await storage.transition("j", JobState.RUNNING)
    results = await asyncio.gather(
        storage.transition("j", JobState.DONE),
        storage.transition("j", JobState.CANCELLED),
        return_exceptions=True,
    )
    await _assert_exactly_one_won(storage, results)


async def test_concurrent_transitions_across_connections_one_wins(db_path: Path) -> None:
    # Two Storage objects are two connections (as a second process would be): the asyncio.Lock does
    # not help here; BEGIN IMMEDIATE does.
    async with await Storage.open(db_path) as one, await Storage.open(db_path) as two:
        await one.insert_job(make_job("j"))
        await one.transition("j", JobState.RUNNING)
        results = await asyncio.gather(
            one.transition("j", JobState.DONE),
            two.transition("j", JobState.CANCELLED),
            return_exceptions=True,
        )
        await _assert_exactly_one_won(one, results)


async def _assert_exactly_one_won(storage: Storage, results: Sequence[Job | BaseException]) -> None:
    winners = [r for r in results if isinstance(r, Job)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1 and len(losers) == 1
    assert isinstance(losers[0], IllegalTransitionError)
    assert (await storage.get_job("j")).state is winners[0].state
    events = await storage.events("j")
    assert [e.to_state for e in events] == [JobState.QUEUED, JobState.RUNNING, winners[0].state]


# -- outputs and verdicts --------------------------------------------------------------------------


async def test_save_outputs_is_idempotent(storage: Storage, db_path: Path) -> None:
    await storage.insert_job(make_job("j", count=3))
    outputs = [make_output("j", 0), make_output("j", 2)]
    verdicts = [make_verdict("j", 0), make_verdict("j", 1, decision="block"), make_verdict("j", 2)]
    grid = ("out/j/grid.png", "ab" * 32)

    await storage.save_outputs("j", outputs, verdicts, grid)
    first = (await storage.outputs_for("j"), await storage.verdicts_for("j"), await storage.grid_for("j"))
    await storage.save_outputs("j", outputs, verdicts, grid)
    second = (await storage.outputs_for("j"), await storage.verdicts_for("j"), await storage.grid_for("j"))

    assert first == second == (outputs, verdicts, grid)
    assert (await storage.get_job("j")).grid_path == "out/j/grid.png"
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM outputs").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM verdicts").fetchone()[0] == 3


async def test_saving_again_replaces_the_earlier_result(storage: Storage) -> None:
    # A re-run whose policy blocks image 2 must not leave image 2 (or the old grid) behind.
    await storage.insert_job(make_job("j", count=3))
    await storage.save_outputs(
        "j", [make_output("j", i) for i in range(3)], [make_verdict("j", i) for i in range(3)], ("g.png", "00")
    )
    rerun_outputs = [make_output("j", 0, path="rerun/0.png")]
    rerun_verdicts = [make_verdict("j", 0), make_verdict("j", 1, decision="block")]
    await storage.save_outputs("j", rerun_outputs, rerun_verdicts, None)

    assert await storage.outputs_for("j") == rerun_outputs
    assert await storage.verdicts_for("j") == rerun_verdicts
    assert await storage.grid_for("j") is None
    assert (await storage.get_job("j")).grid_path is None


async def test_save_outputs_rejects_bad_input_and_writes_nothing(storage: Storage) -> None:
    await storage.insert_job(make_job("j"))
    with pytest.raises(ValueError, match="job 'other'"):
        await storage.save_outputs("j", [make_output("other", 0)], [], None)
    with pytest.raises(ValueError, match="repeat"):
        await storage.save_outputs("j", [], [make_verdict("j", 0), make_verdict("j", 0)], None)
    with pytest.raises(JobNotFoundError):
        await storage.save_outputs("ghost", [make_output("ghost", 0)], [], None)
    verdict = replace(make_verdict("j", 0), scores={"nsfw.sexual": math.nan})
    with pytest.raises(ValueError, match="JSON"):
        await storage.save_outputs("j", [make_output("j", 0)], [verdict], ("g.png", "00"))
    assert await storage.outputs_for("j") == []
    assert await storage.grid_for("j") is None


@dataclass(frozen=True)
class FakeVerdict:
    """Shaped like ``models.types.Verdict`` (and ``safety.verdict.Verdict``)."""

    decision: str
    stage: str
    reason: str
    category: str | None = None
    scores: Mapping[str, float] = field(default_factory=dict)
    model_versions: Mapping[str, str] = field(default_factory=dict)


async def test_verdict_json_round_trips(storage: Storage) -> None:
    await storage.insert_job(make_job("j", count=2))
    scores = {"nsfw.sexual": 0.1 + 0.2, "nsfw.gore": 1e-12, "faces.count": 2.0, "zz.last": -0.0}
    source = FakeVerdict("flag", "faces", "looks like a real person", "deepfake", scores, {"faces": "dlib 19.24"})
    record = VerdictRecord.from_verdict("j", 1, source)
    await storage.save_outputs("j", [], [make_verdict("j", 0), record], None)

    [_, loaded] = await storage.verdicts_for("j")
    assert loaded == record
    assert dict(loaded.scores) == scores and dict(loaded.model_versions) == {"faces": "dlib 19.24"}
    assert (loaded.decision, loaded.category, loaded.stage) == ("flag", "deepfake", "faces")
    with pytest.raises(TypeError):
        loaded.scores["nsfw.sexual"] = 0.0  # type: ignore[index]


# -- guild settings and audit ----------------------------------------------------------------------


async def test_guild_settings(storage: Storage) -> None:
    assert await storage.get_guild_setting("g1", "strictness") is None
    assert await storage.get_guild_setting("g1", "strictness", "standard") == "standard"
    await storage.set_guild_setting("g1", "strictness", "strict")
    await storage.set_guild_setting("g1", "limits", {"per_user": 2, "channels": ["c1", "c2"], "on": True})
    await storage.set_guild_setting("g2", "strictness", "relaxed")
    await storage.set_guild_setting("g1", "strictness", "standard")  # overwrite

    assert await storage.get_guild_setting("g1", "strictness", "x") == "standard"
    assert await storage.get_guild_setting("g2", "strictness") == "relaxed"
    assert await storage.get_guild_setting("g1", "limits") == {"per_user": 2, "channels": ["c1", "c2"], "on": True}
    await storage.set_guild_setting("g1", "cleared", None)
    assert await storage.get_guild_setting("g1", "cleared", "default") is None  # a stored null is not "unset"
    with pytest.raises(TypeError):
        await storage.set_guild_setting("g1", "bad", {1, 2})  # type: ignore[arg-type]


async def test_audit_log(storage: Storage) -> None:
    await storage.audit("job.approve", guild_id="g1", actor_id="mod1", target="j1", detail={"reason": "fine"})
    await storage.audit("settings.set", guild_id="g2", actor_id="admin", detail={"key": "strictness", "value": 1})
    await storage.audit("bot.start")

    entries = await storage.audit_entries()
    assert [e.action for e in entries] == ["bot.start", "settings.set", "job.approve"]
    approve = entries[2]
    assert (approve.guild_id, approve.actor_id, approve.target) == ("g1", "mod1", "j1")
    assert dict(approve.detail) == {"reason": "fine"} and approve.at > 0
    assert entries[0].detail == {} and entries[0].guild_id is None
    assert [e.action for e in await storage.audit_entries(guild_id="g2")] == ["settings.set"]
    assert [e.action for e in await storage.audit_entries(limit=1)] == ["bot.start"]


# -- ETA seeding -----------------------------------------------------------------------------------


async def test_recent_runs_measure_completed_runs(storage: Storage) -> None:
    async def run(job_id: str, moves: list[tuple[JobState, float]], **request: Any) -> None:
        await storage.insert_job(make_job(job_id, **request))
        for state, at in moves:
            await storage.transition(job_id, state, at=at)

    R = JobState.RUNNING
    await run("done", [(R, 10.0), (JobState.DONE, 13.0)], steps=10, width=128, height=64, count=2)
    await run("failed", [(R, 14.0), (JobState.FAILED, 15.0)])  # partial runs are not samples
    await run("never-ran", [(JobState.CANCELLED, 16.0)])
    # Approval rewrites finished_at; the run still ended when it left running.
    await run("flagged", [(R, 20.0), (JobState.FLAGGED, 24.0), (JobState.APPROVED, 500.0)])
    # A requeued job is measured from its last start.
    await run("requeued", [(R, 30.0), (JobState.QUEUED, 31.0), (R, 40.0), (JobState.BLOCKED, 45.0)])
    await run("queued", [])

    default_cost = make_request().cost
    assert await storage.recent_runs() == [(default_cost, 5.0), (default_cost, 4.0), (10 * 2 * 1 * 2, 3.0)]
    assert await storage.recent_runs(limit=1) == [(default_cost, 5.0)]


# -- crash resume ----------------------------------------------------------------------------------


async def test_active_jobs_survive_a_hard_crash(db_path: Path) -> None:
    # A child process persists jobs and dies without closing anything (os._exit): no checkpoint, no
    # clean shutdown. Everything it committed must be there on reopen.
    child = textwrap.dedent(
        f"""
        import asyncio, os
        from bot.jobs import Job, JobRequest, JobState
        from bot.storage import Storage

        def make_job(job_id, created_at):
            request = JobRequest.create("a fox", model="tiny", steps=20, width=512, height=512, guidance=7.5)
            return Job(id=job_id, request=request, created_at=created_at, updated_at=created_at)

        async def main():
            storage = await Storage.open({str(db_path)!r})
            await storage.insert_job(make_job("queued", created_at=1.0))
            await storage.insert_job(make_job("running", created_at=2.0))
            await storage.insert_job(make_job("finished", created_at=3.0))
            await storage.transition("running", JobState.RUNNING, at=5.0)
            await storage.transition("finished", JobState.CANCELLED, at=6.0)
            os._exit(0)

        asyncio.run(main())
        """
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", child, cwd=REPO_ROOT)
    assert await asyncio.wait_for(process.wait(), timeout=60) == 0

    async with await Storage.open(db_path) as reopened:
        resumed = await reopened.jobs_in_states(ACTIVE_STATES)
    assert [(job.id, job.state, job.started_at) for job in resumed] == [
        ("queued", JobState.QUEUED, None),
        ("running", JobState.RUNNING, 5.0),
    ]
