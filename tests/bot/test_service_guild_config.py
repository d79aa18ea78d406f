"""ImagineService under a server's /settings: tightened caps, cooldown, strictness, channel NSFW policy."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bot.errors import CooldownError, QueueFullError
from bot.guild_config import GuildConfigStore, NsfwPolicy
from bot.jobs import JobRequest
from bot.service import ImagineService
from safety.policy import CheckContext
from safety.verdict import Decision, Verdict
from tests.bot.test_service import req, service_for


def store_of(service: ImagineService) -> GuildConfigStore:
    return GuildConfigStore(service.storage, service.settings)


async def test_a_servers_per_user_cap_tightens_the_operators(tmp_path: Path) -> None:
    async with service_for(tmp_path, start=False, per_user_cap=3) as service:
        await store_of(service).set_limits("g1", actor_id="admin", per_user_cap=1)
        await service.submit(req("g1", "a"))
        with pytest.raises(QueueFullError, match=r"1 jobs queued or running in this server \(its limit is 1\)"):
            await service.precheck(req("g1", "a"))
        with pytest.raises(QueueFullError, match="its limit is 1"):
            await service.submit(req("g1", "a"))
        await service.submit(req("g1", "b"))  # another member
        await service.submit(req("g2", "a"))  # another server keeps the operator's cap of 3
        await service.submit(req("g2", "a"))
        with pytest.raises(QueueFullError, match=r"the limit is 3\)"):  # the operator's cap counts every server
            await service.submit(req("g2", "a"))
        assert len(await service.storage.list_jobs(user_id="a")) == 3


async def test_a_servers_queue_cap_tightens_the_operators(tmp_path: Path) -> None:
    async with service_for(tmp_path, start=False, per_guild_queue_cap=50) as service:
        await store_of(service).set_limits("g1", actor_id="admin", queue_cap=2)
        await service.submit(req("g1", "a"))
        await service.submit(req("g1", "b"))
        with pytest.raises(QueueFullError, match=r"This server's queue is full \(2 jobs\)"):
            await service.submit(req("g1", "c"))
        await service.submit(req("g2", "c"))
        await service.submit(req("g1", "c"), enforce_caps=False)  # operators are not capped
        assert service.queued_for_guild("g1") == 3


async def test_the_cooldown_counts_from_the_last_accepted_job_in_that_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with service_for(tmp_path, start=False) as service:
        await store_of(service).set_limits("g1", actor_id="admin", cooldown_seconds=60)
        first = await service.submit(req("g1", "a"))
        with pytest.raises(CooldownError, match="60 s cooldown between requests: wait 60 more seconds") as refused:
            await service.precheck(req("g1", "a"))
        assert refused.value.retry_after == 60
        with pytest.raises(CooldownError):
            await service.submit(req("g1", "a"))
        await service.submit(req("g1", "b"))  # another member
        await service.submit(req("g2", "a"))  # another server has no cooldown
        await service.submit(req("g1", "a"), enforce_caps=False)  # nor do operators
        assert len(await service.storage.list_jobs(guild_id="g1")) == 3

        later = first.created_at + 59.5
        monkeypatch.setattr(time, "time", lambda: later)
        with pytest.raises(CooldownError, match="wait 1 more second\\.") as refused:
            await service.precheck(req("g1", "b"))
        assert refused.value.retry_after == 1
        monkeypatch.setattr(time, "time", lambda: later + 1)
        await service.precheck(req("g1", "b"))  # a minute after b's job


class RecordingGate:
    """A prompt gate that allows everything and remembers what it was asked."""

    def __init__(self) -> None:
        self.contexts: list[CheckContext] = []

    def check_prompt(self, context: CheckContext) -> Verdict:
        self.contexts.append(context)
        return Verdict(Decision.ALLOW, "prompt", "ok")


async def test_strictness_and_the_channel_policy_reach_the_prompt_check_and_the_job(tmp_path: Path) -> None:
    gate = RecordingGate()
    async with service_for(tmp_path, start=False, prompt_gate=gate) as service:
        store = store_of(service)
        await store.set_strictness("g1", "strict", actor_id="admin")
        await store.set_nsfw_policy("g1", 7, NsfwPolicy.STRICT, age_restricted=True, actor_id="admin")

        def request(channel: str) -> JobRequest:
            return JobRequest.create(
                "a poster", model="fake", steps=2, width=64, height=64, guidance=1.0, guild_id="g1",
                user_id=f"u{channel}", channel_id=channel, age_restricted=True,
            )  # fmt: skip

        strict = await service.submit(request("7"))
        relaxed = await service.submit(request("8"))
        assert [(c.strictness, c.allow_suggestive) for c in gate.contexts] == [("strict", False), ("strict", True)]
        assert strict.request.age_restricted is False and relaxed.request.age_restricted is True
        assert (await service.storage.get_job(strict.id)).request.age_restricted is False
