"""The moderation tables against real SQLite files: reviews (first decision wins), strikes, bans, the
decision outbox, forgetting a member, and the v6 -> v7 migration."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from bot.errors import AlreadyDecidedError, JobNotFoundError, ReviewNotFoundError
from bot.jobs import Job, JobKind, JobRequest, JobState
from bot.migrations import MIGRATIONS, SCHEMA_VERSION, statements
from bot.records import OutputRecord, ReviewRecord, VerdictRecord
from bot.storage import Storage

G = "g1"


def make_job(job_id: str, *, user: str = "u1", guild: str = G, **request: object) -> Job:
    base = JobRequest.create(
        "a red fox in the snow", model="tiny", seed=42, steps=20, width=512, height=512, guidance=7.5,
        count=2, guild_id=guild, user_id=user,
    )  # fmt: skip
    return Job(id=job_id, request=replace(base, **request), created_at=1000.0, updated_at=1000.0)  # type: ignore[arg-type]


def verdict(job_id: str, index: int, decision: str, category: str | None) -> VerdictRecord:
    return VerdictRecord(job_id, index, "nsfw", decision, category, f"{decision} ({category})", {"nsfw.p": 0.5}, {})


def output(job_id: str, index: int, *, preview: bool = False) -> OutputRecord:
    return OutputRecord(
        job_id, index, f"out/{job_id}-{index}.png", f"{index:064x}", 512, 512, 42 + index,
        f"out/{job_id}-{index}.preview.png" if preview else None,
    )  # fmt: skip


async def finished(storage: Storage, job: Job, decisions: Sequence[tuple[str, str | None]], state: JobState) -> Job:
    """Insert ``job``, run it, store one verdict per image (and the images not blocked), move it to ``state``."""
    await storage.insert_job(job)
    await storage.transition(job.id, JobState.RUNNING)
    verdicts = [verdict(job.id, i, d, c) for i, (d, c) in enumerate(decisions)]
    outputs = [output(job.id, i, preview=d == "flag") for i, (d, _) in enumerate(decisions) if d != "block"]
    grid = (f"out/{job.id}-grid.png", "f" * 64) if outputs else None
    await storage.save_outputs(job.id, outputs, verdicts, grid)
    return await storage.transition(job.id, state)


async def flagged(storage: Storage, job_id: str, *, user: str = "u1", category: str = "gore") -> Job:
    return await finished(storage, make_job(job_id, user=user), [("allow", None), ("flag", category)], JobState.FLAGGED)


async def blocked(storage: Storage, job_id: str, *, user: str = "u1", category: str = "gore") -> Job:
    return await finished(storage, make_job(job_id, user=user), [("block", category)] * 2, JobState.BLOCKED)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "bot.sqlite3"


@pytest.fixture
async def storage(db_path: Path) -> AsyncIterator[Storage]:
    async with await Storage.open(db_path) as opened:
        yield opened


# -- reviews ---------------------------------------------------------------------------------------


async def test_a_flagged_transition_opens_one_pending_review_with_the_flags_category(storage: Storage) -> None:
    job = await flagged(storage, "j1", category="sexual_suggestive")
    review = await storage.review("j1")
    assert review is not None and review.pending
    assert (review.job_id, review.guild_id, review.user_id, review.kind) == ("j1", G, "u1", "flag")
    assert review.category == "sexual_suggestive"  # the flag verdict's, not the allowed image's None
    assert review.requested_at == job.updated_at and review.decided_by is None and review.delivered_at is None
    assert await storage.reviews(G) == [review] and await storage.pending_count(G) == 1
    assert await storage.reviews("other") == [] and await storage.pending_count("other") == 0


async def test_other_outcomes_open_no_review(storage: Storage) -> None:
    await finished(storage, make_job("done"), [("allow", None), ("allow", None)], JobState.DONE)
    await blocked(storage, "blocked")
    assert await storage.review("done") is None and await storage.review("blocked") is None
    assert await storage.pending_count(G) == 0


async def test_the_review_queue_is_oldest_first_and_decided_reviews_newest_first(storage: Storage) -> None:
    for job_id in ("a", "b", "c"):
        await flagged(storage, job_id)
    assert [r.job_id for r in await storage.reviews(G)] == ["a", "b", "c"]
    assert [r.job_id for r in await storage.reviews(G, limit=1, offset=1)] == ["b"]
    await storage.decide_review("c", approve=True, decision="approve", moderator_id="m", at=5_000.0)
    await storage.decide_review("a", approve=False, decision="reject", moderator_id="m", at=6_000.0)
    assert [r.job_id for r in await storage.reviews(G)] == ["b"]
    decided = await storage.reviews(G, states=("approved", "rejected"))
    assert [(r.job_id, r.state) for r in decided] == [("a", "rejected"), ("c", "approved")]


@pytest.mark.parametrize("approve", [True, False])
async def test_deciding_a_flag_moves_the_job_in_the_same_transaction(storage: Storage, approve: bool) -> None:
    await flagged(storage, "j1")
    review, job = await storage.decide_review(
        "j1", approve=approve, decision="approve" if approve else "strike", moderator_id="mod", at=2_000.0
    )
    expected = JobState.APPROVED if approve else JobState.REJECTED
    assert job is not None and job.state is expected and job == await storage.get_job("j1")
    assert (review.state, review.decided_by, review.decided_at) == (expected.value, "mod", 2_000.0)
    assert review.decision == ("approve" if approve else "strike") and review == await storage.review("j1")
    [*_, event] = await storage.events("j1")
    assert (event.to_state, event.detail) == (expected, f"{review.decision} by mod")


async def _race(one: Storage, two: Storage) -> None:
    await flagged(one, "j1")
    results = await asyncio.gather(
        one.decide_review("j1", approve=True, decision="approve", moderator_id="alice"),
        two.decide_review("j1", approve=False, decision="reject", moderator_id="bob"),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, tuple)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1 and len(losers) == 1, results
    [(review, job)] = winners
    [lost] = losers
    assert isinstance(lost, AlreadyDecidedError)
    assert lost.review == review == await one.review("j1")  # the loser is told who won, and how
    assert f"{review.decision} by <@{review.decided_by}>" in str(lost)
    approved = review.decided_by == "alice"
    assert review.state == ("approved" if approved else "rejected")
    assert job is not None and (await one.get_job("j1")).state is (JobState.APPROVED if approved else JobState.REJECTED)
    events = [e.to_state for e in await one.events("j1")]
    assert events == [JobState.QUEUED, JobState.RUNNING, JobState.FLAGGED, job.state]  # moved exactly once


async def test_of_two_concurrent_decisions_the_first_wins(storage: Storage) -> None:
    await _race(storage, storage)


async def test_of_two_concurrent_decisions_across_connections_the_first_wins(db_path: Path) -> None:
    # A moderator in Discord and one on the dashboard: two processes, two connections.
    async with await Storage.open(db_path) as one, await Storage.open(db_path) as two:
        await _race(one, two)


async def test_deciding_an_unknown_or_decided_review(storage: Storage) -> None:
    with pytest.raises(ReviewNotFoundError):
        await storage.decide_review("nope", approve=True, decision="approve", moderator_id="m")
    await flagged(storage, "j1")
    await storage.decide_review("j1", approve=False, decision="ban", moderator_id="m1")
    with pytest.raises(AlreadyDecidedError, match=r"Already decided: ban by <@m1>") as second:
        await storage.decide_review("j1", approve=True, decision="approve", moderator_id="m2")
    assert second.value.review.decided_by == "m1"
    assert (await storage.get_job("j1")).state is JobState.REJECTED


async def test_an_appeal_opens_once_and_leaves_the_blocked_job_blocked(storage: Storage) -> None:
    await blocked(storage, "j1")
    appeal = await storage.open_review("j1", guild_id=G, user_id="u1", kind="appeal", category="gore", at=3_000.0)
    assert (appeal.kind, appeal.state, appeal.category, appeal.requested_at) == ("appeal", "pending", "gore", 3_000.0)
    with pytest.raises(AlreadyDecidedError, match="already waiting for a moderator") as twice:
        await storage.open_review("j1", guild_id=G, user_id="u1", kind="appeal", category="gore")
    assert twice.value.review == appeal
    review, job = await storage.decide_review("j1", approve=True, decision="approve", moderator_id="m")
    assert job is None and review.state == "approved"
    assert (await storage.get_job("j1")).state is JobState.BLOCKED  # an appeal never moves the job itself
    with pytest.raises(AlreadyDecidedError, match="Already decided: approve"):  # decided appeals stay decided
        await storage.open_review("j1", guild_id=G, user_id="u1", kind="appeal", category="gore")
    with pytest.raises(ValueError, match="unknown review kind 'retry'"):
        await storage.open_review("j2", guild_id=G, user_id="u1", kind="retry", category=None)


async def test_a_flagged_job_cannot_also_be_appealed(storage: Storage) -> None:
    await flagged(storage, "j1")
    with pytest.raises(AlreadyDecidedError):
        await storage.open_review("j1", guild_id=G, user_id="u1", kind="appeal", category=None)
    assert [r.kind for r in await storage.reviews(G)] == ["flag"]


async def test_review_cards_are_remembered(storage: Storage) -> None:
    await flagged(storage, "j1")
    await storage.set_review_card("j1", "chan", "msg")
    review = await storage.review("j1")
    assert review is not None and (review.card_channel_id, review.card_message_id) == ("chan", "msg")


# -- the decision outbox ---------------------------------------------------------------------------


async def test_undelivered_decisions_are_delivered_once(storage: Storage) -> None:
    for job_id in ("a", "b", "pending"):
        await flagged(storage, job_id)
    await storage.decide_review("b", approve=True, decision="approve", moderator_id="m", at=20.0)
    await storage.decide_review("a", approve=False, decision="reject", moderator_id="m", at=10.0)
    assert [r.job_id for r in await storage.undelivered()] == ["a", "b"]  # oldest decision first
    assert [r.job_id for r in await storage.undelivered(limit=1)] == ["a"]
    assert await storage.mark_delivered("a", at=30.0) is True
    assert await storage.mark_delivered("a", at=40.0) is False  # another delivery won
    review = await storage.review("a")
    assert review is not None and review.delivered_at == 30.0
    assert [r.job_id for r in await storage.undelivered()] == ["b"]
    assert await storage.mark_delivered("unknown") is False


# -- strikes and bans ------------------------------------------------------------------------------


async def test_strikes_count_within_a_window_for_a_member_and_their_pseudonym(storage: Storage) -> None:
    for at in (100.0, 200.0, 300.0):
        await storage.add_strike(G, "u1", job_id=f"j{int(at)}", moderator_id="m", reason="r", at=at)
    await storage.add_strike(G, "anon-1", job_id=None, moderator_id="m", reason="before forgetting", at=250.0)
    await storage.add_strike(G, "u2", job_id=None, moderator_id="m", reason="someone else", at=300.0)
    await storage.add_strike("g2", "u1", job_id=None, moderator_id="m", reason="another server", at=300.0)
    assert [s.at for s in await storage.strikes(G, ("u1",))] == [300.0, 200.0, 100.0]  # newest first
    assert [s.at for s in await storage.strikes(G, ("u1",), since=200.0)] == [300.0, 200.0]  # the edge counts
    assert [s.user_id for s in await storage.strikes(G, ("u1", "anon-1"), since=150.0)] == ["u1", "anon-1", "u1"]
    [latest, *_] = await storage.strikes(G, ("u1",))
    assert (latest.guild_id, latest.job_id, latest.moderator_id, latest.reason) == (G, "j300", "m", "r")
    assert await storage.strikes(G, ("u1",), since=301.0) == []
    assert await storage.strikes(G, ()) == []


async def test_bans_expire_replace_and_lift(storage: Storage) -> None:
    ban = await storage.ban(G, "u1", until=1_000.0, moderator_id="m", reason="spam", at=500.0)
    assert ban.active(999.0) and not ban.active(1_000.0)
    assert await storage.active_ban(G, ("u1",), now=999.0) == ban
    assert await storage.active_ban(G, ("u1",), now=1_000.0) is None  # over at `until`
    assert await storage.active_ban(G, ("u1",)) is None  # long over by now (until is in the past)
    assert await storage.active_ban("g2", ("u1",), now=999.0) is None  # only in that server
    assert await storage.bans(G, now=999.0) == [ban] and await storage.bans(G) == []

    forever = await storage.ban(G, "u1", until=None, moderator_id="m2", reason="again", at=600.0)  # replaces
    assert await storage.active_ban(G, ("u1",)) == forever and forever.active(1e12)
    assert await storage.bans(G) == [forever]
    assert await storage.unban(G, ("u1",)) is True
    assert await storage.unban(G, ("u1",)) is False
    assert await storage.active_ban(G, ("u1",)) is None


async def test_a_ban_under_a_pseudonym_holds_for_the_member(storage: Storage) -> None:
    await storage.ban(G, "anon-1", until=None, moderator_id="m", reason="kept after /privacy delete")
    assert await storage.active_ban(G, ("u1",)) is None
    held = await storage.active_ban(G, ("u1", "anon-1"))
    assert held is not None and held.user_id == "anon-1"
    # Of two bans (member and pseudonym) the longer one holds.
    await storage.ban(G, "u1", until=2_000.0, moderator_id="m", reason="short")
    assert await storage.active_ban(G, ("u1", "anon-1"), now=1_000.0) == held
    assert await storage.unban(G, ("u1", "anon-1")) is True
    assert await storage.active_ban(G, ("u1", "anon-1"), now=1_000.0) is None


# -- forgetting a member ---------------------------------------------------------------------------


async def test_forget_user_deletes_their_data_and_keeps_moderation_records_under_a_pseudonym(
    storage: Storage,
) -> None:
    await finished(storage, make_job("mine"), [("allow", None), ("allow", None)], JobState.DONE)
    await flagged(storage, "held")
    await blocked(storage, "refused")
    await storage.open_review("refused", guild_id=G, user_id="u1", kind="appeal", category="gore")
    # Another member's variation of my image, their vote on mine, my vote on theirs.
    theirs = make_job("theirs", user="u2", kind=JobKind.VARY, source_job_id="mine", source_index=0,
                      parent_job_id="mine", strength=0.5)  # fmt: skip
    await finished(storage, theirs, [("allow", None), ("allow", None)], JobState.DONE)
    await storage.vote("theirs", "u1", 1, guild_id=G)
    await storage.vote("mine", "u2", 0, guild_id=G)
    await storage.add_strike(G, "u1", job_id="held", moderator_id="m", reason="r")
    await storage.ban(G, "u1", until=None, moderator_id="m", reason="r")
    await storage.audit("ban", guild_id=G, actor_id="m", target="u1")
    await storage.audit("appeal", guild_id=G, actor_id="u1", target="refused")
    await storage.audit("ban", guild_id=G, actor_id="m", target="u2")

    forgotten = await storage.forget_user("u1", "anon-1")

    assert set(forgotten.job_ids) == {"mine", "held", "refused"} and forgotten.votes == 1
    expected_files = {
        "out/mine-grid.png", "out/mine-0.png", "out/mine-1.png",
        "out/held-grid.png", "out/held-0.png", "out/held-1.png", "out/held-1.preview.png",
    }  # fmt: skip
    assert set(forgotten.files) == expected_files
    for job_id in forgotten.job_ids:
        with pytest.raises(JobNotFoundError):
            await storage.get_job(job_id)
        assert await storage.outputs_for(job_id) == [] and await storage.verdicts_for(job_id) == []
        assert await storage.events(job_id) == [] and await storage.tally(job_id) == {}
    assert await storage.list_jobs(user_id="u1") == []

    # The other member's variation stays, unlinked from the deleted source; their outputs too.
    kept = await storage.get_job("theirs")
    assert kept.state is JobState.DONE and kept.request.user_id == "u2"
    assert (kept.request.source_job_id, kept.request.source_index, kept.request.parent_job_id) == (None, None, None)
    assert len(await storage.outputs_for("theirs")) == 2 and await storage.tally("theirs") == {}

    # Moderation records stay, with the pseudonym instead of the member's id.
    reviews = {r.job_id: r for r in await storage.reviews(G, states=("pending", "approved", "rejected"))}
    assert set(reviews) == {"held", "refused"} and {r.user_id for r in reviews.values()} == {"anon-1"}
    assert [s.user_id for s in await storage.strikes(G, ("anon-1",))] == ["anon-1"]
    assert await storage.strikes(G, ("u1",)) == []
    ban = await storage.active_ban(G, ("u1", "anon-1"))
    assert ban is not None and ban.user_id == "anon-1"
    entries = await storage.audit_entries(guild_id=G)
    assert [(e.actor_id, e.target) for e in reversed(entries)] == [("m", "anon-1"), ("anon-1", "refused"), ("m", "u2")]
    assert "u1" not in {e.actor_id for e in entries} | {e.target for e in entries}

    # Forgetting again finds nothing.
    again = await storage.forget_user("u1", "anon-1")
    assert (again.job_ids, again.files, again.votes) == ((), (), 0)


async def test_forget_user_keeps_the_longer_ban_when_both_ids_were_banned(storage: Storage) -> None:
    await storage.ban(G, "anon-1", until=None, moderator_id="m", reason="earlier, permanent")
    await storage.ban(G, "u1", until=None, moderator_id="m", reason="later")
    await storage.forget_user("u1", "anon-1")
    [ban] = await storage.bans(G)
    assert ban.user_id == "anon-1"


async def test_a_rerun_of_a_forgotten_members_appeal_goes_with_them(storage: Storage) -> None:
    await blocked(storage, "refused")
    await storage.insert_job(replace(make_job("rerun", appeal_of="refused", parent_job_id="refused")))
    forgotten = await storage.forget_user("u1", "anon-1")
    assert set(forgotten.job_ids) == {"refused", "rerun"}
    assert await storage.list_jobs() == []


# -- schema ----------------------------------------------------------------------------------------


async def test_a_v6_database_migrates_to_v7_keeping_its_jobs(db_path: Path) -> None:
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        for script in MIGRATIONS[:6]:
            for statement in statements(script):
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 6")
        conn.execute(
            "INSERT INTO jobs (id, guild_id, user_id, prompt, negative_prompt, seed, steps, width, height, count,"
            " guidance, model, state, created_at, updated_at)"
            " VALUES ('old', 'g1', 'u1', 'a fox', '', 1, 20, 512, 512, 1, 7.5, 'tiny', 'flagged', 1.0, 1.0)"
        )
    assert SCHEMA_VERSION >= 7
    async with await Storage.open(db_path) as storage:
        assert await storage.schema_version() == SCHEMA_VERSION
        old = await storage.get_job("old")
        assert old.state is JobState.FLAGGED and old.request.appeal_of is None
        # A job flagged before v7 has no review; it can be decided once one is opened for it.
        assert await storage.review("old") is None
        opened = await storage.open_review("old", guild_id="g1", user_id="u1", kind="flag", category=None)
        assert isinstance(opened, ReviewRecord)
        _, job = await storage.decide_review("old", approve=True, decision="approve", moderator_id="m")
        assert job is not None and job.state is JobState.APPROVED
        await storage.add_strike("g1", "u1", job_id="old", moderator_id="m", reason="r")
        await storage.ban("g1", "u1", until=None, moderator_id="m", reason="r")
    with sqlite3.connect(db_path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert {"reviews", "strikes", "bans"} <= tables and "appeal_of" in columns


async def test_reviews_keep_their_check_constraints(storage: Storage, db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO reviews (job_id, guild_id, user_id, kind, state, requested_at)"
            " VALUES ('j', 'g', 'u', 'flag', 'maybe', 1.0)"
        )


async def test_forgetting_a_moderator_pseudonymises_their_decisions_too(storage: Storage) -> None:
    await flagged(storage, "j1", user="u2")
    await storage.decide_review("j1", approve=False, decision="strike", moderator_id="m1")
    await storage.add_strike(G, "u2", job_id="j1", moderator_id="m1", reason="r")
    await storage.ban(G, "u2", until=None, moderator_id="m1", reason="r")
    await storage.forget_user("m1", "anon-m")
    review = await storage.review("j1")
    assert review is not None and review.decided_by == "anon-m" and review.user_id == "u2"
    [strike] = await storage.strikes(G, ("u2",))
    ban = await storage.active_ban(G, ("u2",))
    assert strike.moderator_id == "anon-m" and ban is not None and ban.moderator_id == "anon-m"
