"""Acknowledgement latency of /imagine: INTERACTION_CREATE sent -> defer callback received.

Usage::

    python bench/bench_discord_ack.py [--n 1000] [--users 100]

The real bot (real discord.py client, service, tiny model and safety stages prompt+integrity) runs
against the tests' fake Discord on loopback, in one process. Each /imagine is one 1-image, 1-step
job, so the worker keeps generating while interactions arrive (a loaded bot). Interactions are sent
one at a time. The baseline, in the same run, is one plain REST round trip (``GET /users/@me``) to
the same fake server from the same loop: the part of an acknowledgement no bot code can remove.
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

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.chat.client import ImagineBot, use_endpoints  # noqa: E402
from bot.config import Settings  # noqa: E402
from tests.e2e.fake_discord import FakeDiscord  # noqa: E402
from tests.e2e.harness import running  # noqa: E402


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
                latencies = []
                for i in range(args.n):
                    since = len(server.frames)
                    record = await server.slash(guild.id, channel, users[i % len(users)], "imagine",
                                                {"prompt": f"a red circle {i}", "count": 1, "steps": 1})  # fmt: skip
                    sent = await server.wait_for_frame(
                        lambda f, rid=record.id: f.t == "INTERACTION_CREATE" and f.d["id"] == str(rid), since=since
                    )
                    callback = await server.wait_for_response(record, timeout=30)
                    latencies.append(callback.received_at - sent.at)
                floor = await http_floor(server, 200)
    ms = [x * 1000 for x in latencies]
    base = statistics.median(floor) * 1000
    print(f"{args.n} /imagine interactions from {args.users} users, one at a time, worker busy generating")
    print(f"{'measure':40} {'p50 ms':>8} {'p99 ms':>8} {'p50 x floor':>12}")
    print(f"{'ack: INTERACTION_CREATE -> defer':40} {percentile(ms, 50):8.2f} {percentile(ms, 99):8.2f} "
          f"{percentile(ms, 50) / base:11.1f}x")  # fmt: skip
    print(f"{'floor: one REST round trip':40} {base:8.2f} {percentile([f * 1000 for f in floor], 99):8.2f} {1:11.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--users", type=int, default=100)
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
