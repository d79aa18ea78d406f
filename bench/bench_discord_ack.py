"""Acknowledgement latency of /imagine (INTERACTION_CREATE sent -> defer callback received), and
the bot's own overhead per job (everything but generation, from the interaction to the posted grid).

Usage::

    python bench/bench_discord_ack.py [--n 1000] [--users 100] [--jobs 30] [--steps 4]

The real bot (real discord.py client, service, tiny model and safety stages prompt+integrity) runs
against the tests' fake Discord on loopback, in one process. Each /imagine is one 1-image, 1-step
job, so the worker keeps generating while interactions arrive (a loaded bot). Interactions are sent
one at a time. The baseline, in the same run, is one plain REST round trip (``GET /users/@me``) to
the same fake server from the same loop: the part of an acknowledgement no bot code can remove.

Then ``--jobs`` jobs of 4 images run one at a time on an idle bot. For each: the end-to-end time
(INTERACTION_CREATE sent -> the final edit with the grid received by the fake server) minus the
worker's generation time for that job (``service.timings``) is the bot's overhead: defer, queue,
safety, watermark, PNG writes, SQLite, grid, upload. Generation time is the baseline it is set against.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.chat.client import ImagineBot, use_endpoints  # noqa: E402
from bot.chat.imagine import ImagineCog  # noqa: E402
from bot.config import Settings  # noqa: E402
from tests.e2e.fake_discord import FakeDiscord  # noqa: E402
from tests.e2e.harness import running  # noqa: E402
from tests.e2e.results import final_upload, job_of  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def http_floor(server: FakeDiscord, n: int) -> list[float]:
    """One REST round trip to the same fake server, from this loop (the unavoidable part)."""
    times = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            start = time.perf_counter()
            async with session.get(f"{server.api_base}/users/@me", headers={"Authorization": "Bot x"}) as r:
                await r.read()
            times.append(time.perf_counter() - start)
    return times


async def measure(args: argparse.Namespace) -> None:
    async with FakeDiscord() as server:
        guild = server.add_guild("bench")
        channel = next(iter(guild.channels.values())).id
        with tempfile.TemporaryDirectory() as tmp:
            settings = replace(
                Settings(data_dir=Path(tmp)), safety_stages=("prompt", "integrity"), discord_guilds=(guild.id,),
                per_user_cap=10**3, per_guild_queue_cap=10**5, discord_api_base=server.api_base,
                discord_gateway_url=server.gateway_url,
            )  # fmt: skip
            use_endpoints(settings)
            users = [server.add_member(guild.id, name=f"user{i}") for i in range(args.users)]
            bot = ImagineBot(settings, guild_ready_timeout=0.05)
            async with running(bot, server.token, timeout=120):
                latencies, records = [], []
                for i in range(args.n):
                    since = len(server.frames)
                    record = await server.slash(guild.id, channel, users[i % len(users)], "imagine",
                                                {"prompt": f"a red circle {i}", "count": 1, "steps": 1})  # fmt: skip
                    sent = await server.wait_for_frame(
                        lambda f, rid=record.id: f.t == "INTERACTION_CREATE" and f.d["id"] == str(rid), since=since
                    )
                    callback = await server.wait_for_response(record, timeout=30)
                    records.append(record)
                    latencies.append(callback.received_at - sent.at)
                floor = await http_floor(server, 200)
                cog = bot.get_cog("ImagineCog")
                assert isinstance(cog, ImagineCog)
                await delivered(server, records)  # start the per-job phase on an idle bot
                per_job = await job_overheads(server, guild.id, channel, users[0], cog, args)
    ms = [x * 1000 for x in latencies]
    base = statistics.median(floor) * 1000
    print(f"{args.n} /imagine interactions from {args.users} users, one at a time, worker busy generating")
    print(f"{'measure':40} {'p50 ms':>8} {'p99 ms':>8} {'p50 x floor':>12}")
    print(f"{'ack: INTERACTION_CREATE -> defer':40} {percentile(ms, 50):8.2f} {percentile(ms, 99):8.2f} "
          f"{percentile(ms, 50) / base:11.1f}x")  # fmt: skip
    print(f"{'floor: one REST round trip':40} {base:8.2f} {percentile([f * 1000 for f in floor], 99):8.2f} {1:11.1f}x")
    if per_job:
        print(f"\n{args.jobs} jobs of 4 images (the model's default size), {args.steps} steps, one at a time")
        print(f"{'per job':40} {'p50 ms':>8} {'p99 ms':>8} {'p50 / gen':>12}")
        gen = statistics.median(per_job["generate"])
        for name, values in per_job.items():
            ms_values = [v * 1000 for v in values]
            print(f"{name:40} {percentile(ms_values, 50):8.1f} {percentile(ms_values, 99):8.1f} "
                  f"{statistics.median(values) / gen:11.2f}x")  # fmt: skip


async def delivered(server: FakeDiscord, records: list[Any]) -> None:
    """Wait until every job of the ack phase has its final message (the grid) posted."""
    for record in records:
        await final_upload(server, record, timeout=600)


async def job_overheads(
    server: FakeDiscord, guild_id: int, channel: int, user: object, cog: ImagineCog, args: argparse.Namespace
) -> dict[str, list[float]]:
    """Per job: end to end, generation, and the rest split into the worker's stages and the bot's."""
    result: dict[str, list[float]] = {k: [] for k in ("end to end", "generate", "overhead (all but generate)",
                                                      "  safety + watermark", "  store (PNG, grid, SQLite)",
                                                      "  Discord path + queue")}  # fmt: skip
    for i in range(args.jobs):
        since = len(server.frames)
        record = await server.slash(guild_id, channel, user, "imagine", {"prompt": f"a blue square {i}",
                                    "count": 4, "steps": args.steps, "seed": i})  # fmt: skip
        sent = await server.wait_for_frame(
            lambda f, rid=record.id: f.t == "INTERACTION_CREATE" and f.d["id"] == str(rid), since=since
        )
        done = await final_upload(server, record, timeout=120)
        message = server.original_message(record)
        assert message is not None
        job_id = job_of(message)
        timings = cog.service.timings[job_id]
        total = done.received_at - sent.at
        generate = timings["generate"] + timings.get("load", 0.0)
        worker = timings.get("safety", 0.0) + timings.get("mark", 0.0)
        result["end to end"].append(total)
        result["generate"].append(generate)
        result["overhead (all but generate)"].append(total - generate)
        result["  safety + watermark"].append(worker)
        result["  store (PNG, grid, SQLite)"].append(timings.get("store", 0.0))
        result["  Discord path + queue"].append(total - generate - worker - timings.get("store", 0.0))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=30, help="jobs for the per-job overhead (0: skip)")
    parser.add_argument("--steps", type=int, default=4)
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
