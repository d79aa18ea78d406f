from __future__ import annotations

import time
from pathlib import Path

from bot.jobs import Job, JobRequest
from bot.storage import Storage


def job(guild: str = "g") -> Job:
    return Job.new(JobRequest.create("two foxes", model="m", steps=1, width=64, height=64, count=4, guidance=0.0,
                                     seed=1, guild_id=guild))  # fmt: skip


async def test_one_vote_per_member_per_grid_and_top(tmp_path: Path) -> None:
    async with await Storage.open(tmp_path / "db.sqlite3") as storage:
        a, b, other = job(), job(), job("elsewhere")
        for j in (a, b, other):
            await storage.insert_job(j)
        assert await storage.vote(a.id, "u1", 0, guild_id="g") == {0: 1}
        assert await storage.vote(a.id, "u2", 0, guild_id="g") == {0: 2}
        assert await storage.vote(a.id, "u2", 3, guild_id="g") == {0: 1, 3: 1}  # moved
        assert await storage.vote(a.id, "u1", 0, guild_id="g") == {0: 1, 3: 1}  # the same vote again
        await storage.vote(b.id, "u3", 2, guild_id="g")
        await storage.vote(other.id, "u1", 1, guild_id="elsewhere")
        assert await storage.tally(a.id) == {0: 1, 3: 1}
        top = await storage.top_voted("g", since=time.time() - 60)
        assert sorted(top) == sorted([(a.id, 0, 1), (a.id, 3, 1), (b.id, 2, 1)])
        assert await storage.top_voted("g", since=time.time() + 60) == []
