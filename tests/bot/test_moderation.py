"""Moderation over the real service (real storage, worker, scheduler; a fake generator and fake stages)."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from PIL import Image

from bot.config import Settings
from bot.errors import AlreadyDecidedError, BannedError, NotAllowedError, PromptBlockedError, ReviewNotFoundError
from bot.jobs import Job, JobRequest, JobState, Requester, variation_request
from bot.moderation import Action, Moderation, plain_category
from bot.outputs import ImageStore
from bot.service import ImagineService, JobUpdate, PromptGate, RulesSink
from bot.storage import Storage
from models.worker import Worker
from safety.integrity import IntegrityStage
from safety.policy import CheckContext, Policy
from safety.provenance import MetadataSigner
from safety.verdict import Decision, Verdict
from tests.fakes import FakeGenerator

G = "g1"
KEY = b"p" * 32
MOD = "mod-1"


def req(guild: str = G, user: str = "u1", *, prompt: str = "a lighthouse", steps: int = 2, seed: int = 7) -> JobRequest:
    return JobRequest.create(
        prompt, model="fake", steps=steps, width=64, height=64, guidance=1.0, count=2, seed=seed,
        guild_id=guild, user_id=user,
    )  # fmt: skip


def exists(path: str) -> bool:
    return os.path.exists(path)


class Judge:
    """A stage with one fixed opinion (its category may be changed between runs)."""

    def __init__(self, name: str, decision: Decision, category: str | None) -> None:
        self.name = name
        self.decision = decision
        self.category = category

    def check(self, images: Sequence[Image.Image], context: CheckContext) -> list[Verdict]:
        reason = f"{self.name} found {self.category}"
        return [Verdict(self.decision, self.name, reason, self.category, {f"{self.name}.p": 0.9}) for _ in images]


class Broken:
    name = "broken"

    def check(self, images: Sequence[Image.Image], context: CheckContext) -> list[Verdict]:
        raise RuntimeError("weights missing")


@dataclass
class Desk:
    service: ImagineService
    moderation: Moderation
    generator: FakeGenerator
    updates: list[JobUpdate]

    @property
    def storage(self) -> Storage:
        return self.service.storage

    async def run(self, request: JobRequest) -> Job:
        return await self.service.wait((await self.service.submit(request)).id)


@asynccontextmanager
async def desk_for(
    tmp_path: Path,
    *stages: object,
    generator: FakeGenerator | None = None,
    prompt_gate: PromptGate | None = None,
    rules: RulesSink | None = None,
    **settings: object,
) -> AsyncIterator[Desk]:
    s = replace(Settings(data_dir=tmp_path), **settings)  # type: ignore[arg-type]
    gen = generator or FakeGenerator()
    policy = Policy([IntegrityStage(), *stages])  # type: ignore[list-item]
    worker = Worker(lambda m: gen, policy, MetadataSigner(b"k" * 32))
    async with await Storage.open(s.db_path) as storage, worker:
        moderation: Moderation | None = None

        def pseudonym(user_id: str) -> str:
            assert moderation is not None
            return moderation.pseudonym(user_id)

        service = ImagineService(
            s, storage, worker, ImageStore(s.images_dir), quantum=req().cost, prompt_gate=prompt_gate, rules=rules,
            pseudonym=pseudonym,
        )  # fmt: skip
        moderation = Moderation(service, pseudonym_key=KEY)
        updates: list[JobUpdate] = []
        service.subscribe(updates.append)
        try:
            await service.start()
            yield Desk(service, moderation, gen, updates)
        finally:
            await service.aclose()


def flagging(category: str = "sexual") -> Judge:
    return Judge("flagger", Decision.FLAG, category)


def blocking(category: str = "gore") -> Judge:
    return Judge("blocker", Decision.BLOCK, category)


# -- reviews of flagged jobs -----------------------------------------------------------------------


async def test_approving_a_flagged_job_releases_it_notifies_and_audits(tmp_path: Path) -> None:
    async with desk_for(tmp_path, flagging()) as d:
        job = await d.run(req())
        assert job.state is JobState.FLAGGED
        [review] = await d.moderation.pending(G)
        assert (review.job_id, review.kind, review.category, review.user_id) == (job.id, "flag", "sexual", "u1")
        d.updates.clear()
        decided = await d.moderation.decide(G, job.id, Action.APPROVE, moderator_id=MOD)
        assert decided.job is not None and decided.job.state is JobState.APPROVED
        assert (await d.storage.get_job(job.id)).state is JobState.APPROVED
        assert (decided.review.state, decided.review.decided_by, decided.action) == ("approved", MOD, Action.APPROVE)
        assert (decided.rerun, decided.strikes, decided.ban) == (None, None, None)
        assert [(u.job_id, u.state) for u in d.updates] == [(job.id, JobState.APPROVED)]  # listeners are told
        assert (await d.service.wait(job.id)).state is JobState.APPROVED
        [entry] = await d.storage.audit_entries(guild_id=G)
        assert (entry.action, entry.actor_id, entry.target) == ("review_approve", MOD, job.id)
        assert entry.detail == {"kind": "flag", "category": "sexual"}
        assert await d.moderation.pending(G) == []
        with pytest.raises(AlreadyDecidedError, match=f"Already decided: approve by <@{MOD}>"):
            await d.moderation.decide(G, job.id, Action.REJECT, moderator_id="mod-2")
        assert (await d.storage.get_job(job.id)).state is JobState.APPROVED
        assert len(await d.storage.audit_entries(guild_id=G)) == 1  # the losing decision wrote nothing


async def test_rejecting_a_flagged_job(tmp_path: Path) -> None:
    async with desk_for(tmp_path, flagging()) as d:
        job = await d.run(req())
        decided = await d.moderation.decide(G, job.id, Action.REJECT, moderator_id=MOD)
        assert decided.job is not None and decided.job.state is JobState.REJECTED
        assert (decided.strikes, decided.ban) == (None, None)
        assert await d.storage.strikes(G, ("u1",)) == []
        assert [e.action for e in await d.storage.audit_entries(guild_id=G)] == ["review_reject"]


async def test_two_moderators_deciding_at_once_one_wins(tmp_path: Path) -> None:
    async with desk_for(tmp_path, flagging()) as d:
        job = await d.run(req())
        results = await asyncio.gather(
            d.moderation.decide(G, job.id, Action.APPROVE, moderator_id="alice"),
            d.moderation.decide(G, job.id, Action.BAN, moderator_id="bob"),
            return_exceptions=True,
        )
        [lost] = [r for r in results if isinstance(r, BaseException)]
        [won] = [r for r in results if not isinstance(r, BaseException)]
        assert isinstance(lost, AlreadyDecidedError) and lost.review.decided_by == won.review.decided_by
        final = (await d.storage.get_job(job.id)).state
        assert final is (JobState.APPROVED if won.action is Action.APPROVE else JobState.REJECTED)
        banned = await d.storage.active_ban(G, ("u1",))
        assert (banned is not None) == (won.action is Action.BAN)


async def test_a_review_is_only_found_in_its_own_server(tmp_path: Path) -> None:
    async with desk_for(tmp_path, flagging()) as d:
        job = await d.run(req())
        assert (await d.moderation.review_in(G, job.id)).job_id == job.id
        with pytest.raises(ReviewNotFoundError, match="no review of that job in this server"):
            await d.moderation.review_in("g2", job.id)
        with pytest.raises(ReviewNotFoundError):
            await d.moderation.decide("g2", job.id, Action.APPROVE, moderator_id=MOD)
        with pytest.raises(ReviewNotFoundError):
            await d.moderation.review_in(G, "no-such-job")
        assert (await d.storage.get_job(job.id)).state is JobState.FLAGGED
        assert await d.moderation.pending("g2") == [] and len(await d.moderation.pending(G)) == 1


# -- strikes and bans ------------------------------------------------------------------------------


@pytest.mark.parametrize("ban_hours", [2, 0])
async def test_strikes_up_to_the_limit_ban_for_the_configured_time(tmp_path: Path, ban_hours: int) -> None:
    async with desk_for(tmp_path, flagging()) as d:
        await d.service.guild_configs.set_strikes(G, actor_id="admin", limit=2, window_hours=24, ban_hours=ban_hours)
        first, second = [await d.run(req(seed=s)) for s in (1, 2)]
        one = await d.moderation.decide(G, first.id, Action.STRIKE, moderator_id=MOD)
        assert one.job is not None and one.job.state is JobState.REJECTED
        assert (one.strikes, one.ban) == (1, None)
        await d.service.precheck(req())  # one strike: still welcome
        before = time.time()
        two = await d.moderation.decide(G, second.id, Action.STRIKE, moderator_id=MOD)
        assert two.strikes == 2 and two.ban is not None and two.ban.user_id == "u1"
        if ban_hours:
            assert two.ban.until is not None
            assert before + ban_hours * 3600 - 1 <= two.ban.until <= time.time() + ban_hours * 3600 + 1
        else:
            assert two.ban.until is None  # until a moderator lifts it
        assert two.ban == await d.storage.active_ban(G, ("u1",))
        for attempt in (d.service.precheck(req()), d.service.submit(req())):
            with pytest.raises(BannedError, match="banned from using this bot in this server"):
                await attempt
        await d.service.precheck(req(guild="g2"))  # another server is not affected
        actions = [e.action for e in reversed(await d.storage.audit_entries(guild_id=G))]
        assert actions[-5:] == ["review_strike", "strike", "review_strike", "strike", "ban"]
        assert [s.job_id for s in (await d.moderation.history(G, "u1")).strikes] == [second.id, first.id]


async def test_strikes_older_than_the_window_do_not_count(tmp_path: Path) -> None:
    async with desk_for(tmp_path, flagging()) as d:
        await d.service.guild_configs.set_strikes(G, actor_id="admin", limit=2, window_hours=24)
        first, second = [await d.run(req(seed=s)) for s in (1, 2)]
        now = time.time()
        d.moderation._now = lambda: now - 48 * 3600  # the first strike was two days ago
        await d.moderation.decide(G, first.id, Action.STRIKE, moderator_id=MOD)
        d.moderation._now = lambda: now
        decided = await d.moderation.decide(G, second.id, Action.STRIKE, moderator_id=MOD)
        assert (decided.strikes, decided.ban) == (1, None)
        assert len((await d.moderation.history(G, "u1")).strikes) == 1
        assert len(await d.storage.strikes(G, ("u1",))) == 2  # both are kept; only one counts


async def test_a_strike_limit_of_zero_never_bans(tmp_path: Path) -> None:
    async with desk_for(tmp_path, flagging()) as d:
        await d.service.guild_configs.set_strikes(G, actor_id="admin", limit=0)
        jobs = [await d.run(req(seed=s)) for s in (1, 2, 3)]
        for job in jobs:
            decided = await d.moderation.decide(G, job.id, Action.STRIKE, moderator_id=MOD)
        assert (decided.strikes, decided.ban) == (3, None)
        await d.service.precheck(req())


async def test_ban_refuses_requests_until_unbanned(tmp_path: Path) -> None:
    async with desk_for(tmp_path, flagging()) as d:
        job = await d.run(req())
        decided = await d.moderation.decide(G, job.id, Action.BAN, moderator_id=MOD)
        assert decided.job is not None and decided.job.state is JobState.REJECTED
        assert decided.ban is not None and decided.ban.until is None and job.id in decided.ban.reason
        with pytest.raises(BannedError, match="until a moderator lifts it"):
            await d.service.submit(req())
        with pytest.raises(BannedError):
            await d.service.precheck(req())
        assert (await d.moderation.history(G, "u1")).ban == decided.ban
        assert await d.moderation.unban(G, "u1", moderator_id=MOD) is True
        assert await d.moderation.unban(G, "u1", moderator_id=MOD) is False  # nothing left to lift
        assert (await d.run(req(seed=9))).state is JobState.FLAGGED
        actions = [(e.action, e.target) for e in reversed(await d.storage.audit_entries(guild_id=G))]
        assert actions == [("review_ban", job.id), ("ban", "u1"), ("unban", "u1")]


async def test_a_timed_ban_says_until_when(tmp_path: Path) -> None:
    async with desk_for(tmp_path) as d:
        until = time.time() + 3600
        await d.moderation.ban(G, "u1", moderator_id=MOD, reason="spam", until=until)
        with pytest.raises(BannedError, match=rf"until <t:{int(until)}:f>"):
            await d.service.precheck(req())
        await d.moderation.ban(G, "u1", moderator_id=MOD, reason="spam", until=time.time() - 1)  # already over
        await d.service.precheck(req())


# -- appeals ---------------------------------------------------------------------------------------


async def test_an_accepted_appeal_reruns_with_the_same_seeds_and_the_block_becomes_a_flag(tmp_path: Path) -> None:
    async with desk_for(tmp_path, blocking("gore")) as d:
        job = await d.run(req())
        assert job.state is JobState.BLOCKED and await d.storage.outputs_for(job.id) == []
        appeal = await d.moderation.appeal(G, job.id, user_id="u1")
        assert (appeal.kind, appeal.state, appeal.category, appeal.user_id) == ("appeal", "pending", "gore", "u1")
        assert [r.job_id for r in await d.moderation.pending(G)] == [job.id]

        decided = await d.moderation.decide(G, job.id, Action.APPROVE, moderator_id=MOD)
        assert decided.job is None and decided.review.state == "approved"
        assert (await d.storage.get_job(job.id)).state is JobState.BLOCKED  # the original stays as it was
        rerun = decided.rerun
        assert rerun is not None and rerun.id != job.id
        assert (rerun.request.appeal_of, rerun.request.parent_job_id) == (job.id, job.id)
        assert rerun.request.seed == job.request.seed and rerun.request.prompt == job.request.prompt

        final = await d.service.wait(rerun.id)
        assert final.state is JobState.FLAGGED  # reaches the moderators, is not posted
        assert (await d.storage.get_job(rerun.id)).request.appeal_of == job.id
        sent = d.generator.requests[-1]
        assert sent.job_id == rerun.id and sent.appealed and sent.seeds == d.generator.requests[0].seeds
        outputs = await d.storage.outputs_for(rerun.id)
        assert len(outputs) == 2 and all(exists(o.path) and o.preview_path for o in outputs)
        verdicts = await d.storage.verdicts_for(rerun.id)
        assert {(v.decision, v.category) for v in verdicts} == {("flag", "gore")}
        assert all(v.reason.endswith("(on appeal)") for v in verdicts)
        review = await d.moderation.review_in(G, rerun.id)
        assert (review.kind, review.category, review.user_id) == ("flag", "gore", "u1")

        # The moderators decide again, with the pictures in front of them.
        approved = await d.moderation.decide(G, rerun.id, Action.APPROVE, moderator_id=MOD)
        assert approved.job is not None and approved.job.state is JobState.APPROVED and approved.rerun is None
        with pytest.raises(AlreadyDecidedError):  # the original cannot be appealed again
            await d.moderation.appeal(G, job.id, user_id="u1")


async def test_a_hard_block_on_the_rerun_stays_blocked(tmp_path: Path) -> None:
    stage = blocking("gore")
    async with desk_for(tmp_path, stage) as d:
        job = await d.run(req())
        await d.moderation.appeal(G, job.id, user_id="u1")
        stage.category = "minors"  # on the rerun the same images are judged to show minors
        decided = await d.moderation.decide(G, job.id, Action.APPROVE, moderator_id=MOD)
        assert decided.rerun is not None
        final = await d.service.wait(decided.rerun.id)
        assert final.state is JobState.BLOCKED and await d.storage.outputs_for(final.id) == []
        assert {v.category for v in await d.storage.verdicts_for(final.id)} == {"minors"}
        assert await d.storage.review(final.id) is None and await d.moderation.pending(G) == []


async def test_a_hard_category_decides_even_behind_an_appealable_one(tmp_path: Path) -> None:
    # Two stages block the same image: gore (appealable) first, minors (hard) second.
    async with desk_for(tmp_path, blocking("gore"), Judge("nsfw", Decision.BLOCK, "minors")) as d:
        job = await d.run(req())
        with pytest.raises(NotAllowedError, match="content involving minors cannot be appealed"):
            await d.moderation.appeal(G, job.id, user_id="u1")
        # Even were it reopened, its rerun keeps the hard block (nothing stored, nothing to review).
        await d.storage.open_review(job.id, guild_id=G, user_id="u1", kind="appeal", category="gore")
        decided = await d.moderation.decide(G, job.id, Action.APPROVE, moderator_id=MOD)
        assert decided.rerun is not None
        final = await d.service.wait(decided.rerun.id)
        assert final.state is JobState.BLOCKED and await d.storage.outputs_for(final.id) == []


async def test_a_rejected_appeal_queues_nothing(tmp_path: Path) -> None:
    async with desk_for(tmp_path, blocking("gore")) as d:
        job = await d.run(req())
        await d.moderation.appeal(G, job.id, user_id="u1")
        decided = await d.moderation.decide(G, job.id, Action.REJECT, moderator_id=MOD)
        assert (decided.job, decided.rerun) == (None, None)
        assert [j.id for j in await d.storage.list_jobs()] == [job.id]
        actions = [e.action for e in reversed(await d.storage.audit_entries(guild_id=G))]
        assert actions == ["appeal", "review_reject"]


@pytest.mark.parametrize(
    ("stage", "words"),
    [
        (blocking("minors"), "content involving minors"),
        (blocking("protected_identity"), "a protected person's face"),
        (Broken(), "a safety check that could not run"),
    ],
)
async def test_hard_blocks_cannot_be_appealed(tmp_path: Path, stage: object, words: str) -> None:
    async with desk_for(tmp_path, stage) as d:
        job = await d.run(req())
        assert job.state is JobState.BLOCKED
        with pytest.raises(NotAllowedError, match=f"Requests blocked for {words} cannot be appealed"):
            await d.moderation.appeal(G, job.id, user_id="u1")
        assert await d.moderation.pending(G) == [] and await d.storage.audit_entries(guild_id=G) == []


async def test_only_the_owner_may_appeal_only_their_blocked_job_and_only_once(tmp_path: Path) -> None:
    stage = blocking("gore")
    async with desk_for(tmp_path, stage) as d:
        job = await d.run(req())
        stage.decision = Decision.ALLOW
        done = await d.run(req(seed=2))
        assert done.state is JobState.DONE
        with pytest.raises(NotAllowedError, match="Only the person who made this request"):
            await d.moderation.appeal(G, job.id, user_id="u2")
        with pytest.raises(NotAllowedError, match="Only the person who made this request"):
            await d.moderation.appeal("g2", job.id, user_id="u1")  # not from another server either
        with pytest.raises(NotAllowedError, match="Only a blocked request"):
            await d.moderation.appeal(G, done.id, user_id="u1")
        with pytest.raises(NotAllowedError, match="no longer exists"):
            await d.moderation.appeal(G, "gone", user_id="u1")
        await d.moderation.appeal(G, job.id, user_id="u1")
        with pytest.raises(AlreadyDecidedError, match="already waiting for a moderator"):
            await d.moderation.appeal(G, job.id, user_id="u1")
        [entry] = await d.storage.audit_entries(guild_id=G)
        assert (entry.action, entry.actor_id, entry.target, entry.detail) == ("appeal", "u1", job.id,
                                                                              {"category": "gore"})  # fmt: skip


async def test_a_banned_member_cannot_appeal(tmp_path: Path) -> None:
    async with desk_for(tmp_path, blocking("gore")) as d:
        job = await d.run(req())
        await d.moderation.ban(G, "u1", moderator_id=MOD, reason="spam")
        with pytest.raises(BannedError):
            await d.moderation.appeal(G, job.id, user_id="u1")
        assert await d.moderation.pending(G) == []


async def test_an_appealed_prompt_block_is_rerun_and_held_for_review(tmp_path: Path) -> None:
    from safety.prompt_filter import PromptFilter
    from safety.suite import GuildRules, PromptStage

    gate = PromptStage(PromptFilter.default(), GuildRules(None))
    async with desk_for(tmp_path, gate, prompt_gate=gate) as d:
        with pytest.raises(PromptBlockedError) as refused:
            await d.service.submit(req(prompt="a n.u.d.e woman"))
        job_id = refused.value.job_id
        assert job_id is not None and d.generator.requests == []
        appeal = await d.moderation.appeal(G, job_id, user_id="u1")
        assert appeal.category == "sexual"
        decided = await d.moderation.decide(G, job_id, Action.APPROVE, moderator_id=MOD)
        assert decided.rerun is not None
        final = await d.service.wait(decided.rerun.id)
        assert final.state is JobState.FLAGGED and len(await d.storage.outputs_for(final.id)) == 2
        assert (await d.moderation.review_in(G, final.id)).category == "sexual"


async def test_a_prompt_blocked_for_minors_cannot_be_appealed(tmp_path: Path) -> None:
    from safety.prompt_filter import PromptFilter
    from safety.suite import GuildRules, PromptStage

    gate = PromptStage(PromptFilter.default(), GuildRules(None))
    async with desk_for(tmp_path, gate, prompt_gate=gate) as d:
        with pytest.raises(PromptBlockedError) as refused:
            await d.service.submit(req(prompt="a nude child"))
        assert refused.value.category == "minors" and refused.value.job_id is not None
        with pytest.raises(NotAllowedError, match="cannot be appealed"):
            await d.moderation.appeal(G, refused.value.job_id, user_id="u1")


# -- members ---------------------------------------------------------------------------------------


def test_pseudonyms_are_keyed_stable_and_need_a_real_key() -> None:
    class NoDesk:
        storage = None

    one = Moderation(NoDesk(), pseudonym_key=KEY)  # type: ignore[arg-type]
    other = Moderation(NoDesk(), pseudonym_key=b"q" * 32)  # type: ignore[arg-type]
    assert one.pseudonym("u1") == one.pseudonym("u1") != one.pseudonym("u2")
    assert one.pseudonym("u1") != other.pseudonym("u1") and one.pseudonym("u1").startswith("anon-")
    assert "u1" not in one.pseudonym("u1")[5:] and one.identities("u1") == ("u1", one.pseudonym("u1"))
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Moderation(NoDesk(), pseudonym_key=b"short")  # type: ignore[arg-type]


async def test_forget_cancels_and_deletes_everything_of_the_member_but_their_ban_holds(tmp_path: Path) -> None:
    generator = FakeGenerator(step_seconds=0.02)
    async with desk_for(tmp_path, generator=generator, max_batch_images=2) as d:
        done = await d.run(req())
        their = await d.run(variation_request(done, 0, 0.5, Requester("u2", None, False)))
        await d.storage.vote(their.id, "u1", 0, guild_id=G)
        my_files = [o.path for o in await d.storage.outputs_for(done.id)] + [str(done.grid_path)]
        assert all(exists(p) for p in my_files)
        generator.step_started.clear()
        running = await d.service.submit(req(steps=150, seed=3))
        queued = await d.service.submit(req(seed=4), enforce_caps=False)
        await asyncio.to_thread(generator.step_started.wait, 10)
        await d.moderation.ban(G, "u1", moderator_id=MOD, reason="abuse")
        pseudonym = d.moderation.pseudonym("u1")

        forgotten = await d.moderation.forget("u1")

        assert set(forgotten.job_ids) == {done.id, running.id, queued.id} and forgotten.votes == 1
        assert set(my_files) <= set(forgotten.files)
        assert not any(exists(p) for p in forgotten.files)  # the files are gone from disk
        assert await d.storage.list_jobs(user_id="u1") == [] and d.service.queued == 0
        kept = await d.storage.get_job(their.id)  # another member's variation of my image stays
        assert kept.state is JobState.DONE and kept.request.source_job_id is None
        assert all(exists(o.path) for o in await d.storage.outputs_for(their.id))
        # The ban holds under the pseudonym, for the member's id.
        with pytest.raises(BannedError):
            await d.service.precheck(req())
        history = await d.moderation.history(G, "u1")
        assert history.jobs == [] and history.ban is not None and history.ban.user_id == pseudonym
        entries = await d.storage.audit_entries(limit=1000)
        assert "u1" not in {e.actor_id for e in entries} | {e.target for e in entries}
        assert entries[0].action == "privacy_delete" and entries[0].actor_id == pseudonym
        assert entries[0].detail == {"jobs": 3, "files": len(forgotten.files)}
        assert {e.target for e in entries if e.action == "cancel"} == {running.id, queued.id}
        # Unbanning by the member's id lifts the pseudonym's ban.
        assert await d.moderation.unban(G, "u1", moderator_id=MOD) is True
        await d.service.precheck(req())


async def test_a_decision_on_a_forgotten_members_job_strikes_their_pseudonym(tmp_path: Path) -> None:
    async with desk_for(tmp_path, flagging()) as d:
        await d.service.guild_configs.set_strikes(G, actor_id="admin", limit=1)
        job = await d.run(req())
        await d.moderation.forget("u1")
        decided = await d.moderation.decide(G, job.id, Action.STRIKE, moderator_id=MOD)
        assert decided.job is None and decided.review.state == "rejected"
        pseudonym = d.moderation.pseudonym("u1")
        assert decided.strikes == 1 and decided.ban is not None and decided.ban.user_id == pseudonym
        with pytest.raises(BannedError):
            await d.service.submit(req())


# -- the audit log ---------------------------------------------------------------------------------


async def test_audit_csv_has_a_header_rows_a_since_filter_and_no_formulas(tmp_path: Path) -> None:
    async with desk_for(tmp_path) as d:
        await d.moderation.ban(G, "u1", moderator_id=MOD, reason="first")
        await asyncio.sleep(0.01)
        await d.moderation.ban(G, '=HYPERLINK("http://evil")', moderator_id="@mod", reason="=cmd|' /C calc'!A0")
        await d.moderation.ban("g2", "u9", moderator_id=MOD, reason="another server")
        [newest, oldest] = await d.storage.audit_entries(guild_id=G)

        rows = list(csv.reader(io.StringIO((await d.moderation.audit_csv(G)).decode())))
        assert rows[0] == ["time_utc", "action", "actor_id", "target", "detail"]
        assert len(rows) == 3  # another server's entry is not in this one's export
        second, first = rows[1], rows[2]  # newest first
        assert first[0] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(oldest.at))
        assert first[1:4] == ["ban", MOD, "u1"] and '"reason": "first"' in first[4]
        assert second[2:4] == ["'@mod", '\'=HYPERLINK("http://evil")']
        assert "=cmd" in second[4]
        assert not any(cell[:1] in ("=", "+", "-", "@") for row in rows for cell in row)

        since = await d.moderation.audit_csv(G, since=newest.at)
        assert [r[3] for r in csv.reader(io.StringIO(since.decode()))][1:] == ['\'=HYPERLINK("http://evil")']
        assert len((await d.moderation.audit_csv(G, since=time.time() + 60)).decode().splitlines()) == 1


def test_categories_read_in_plain_words() -> None:
    assert plain_category("minors") == "content involving minors"
    assert plain_category("some_new_thing") == "some new thing" and plain_category(None) == "the safety policy"
