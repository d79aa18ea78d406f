"""Time the main job and the service's own overhead, against the bare pipeline in the same run.

Usage::

    python bench/bench_demo.py [--size 256] [--count 4] [--steps 4] [--jobs 5] [--model builtin:tiny]

1. The demo command as a user runs it (a fresh process, cold data dir, then warm), wall time.
2. In one process, the same requests through (a) the bare ``DiffusersGenerator.generate`` — the
   baseline — and (b) the full service path (store → schedule → generate → safety → mark → write
   → record). The difference per job is the service's overhead; reported as ms and as a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.app import load_generator, open_service  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.jobs import Job, JobRequest  # noqa: E402


def cli_wall_time(data_dir: Path, args: argparse.Namespace) -> float:
    command = [sys.executable, "-m", "bot.cli", "generate", "a lighthouse at dusk", "--seed", "7",
               "--count", str(args.count), "--size", f"{args.size}x{args.size}", "--steps", str(args.steps),
               "--model", args.model, "--json"]  # fmt: skip
    env = {**os.environ, "IMAGINEBOT_DATA_DIR": str(data_dir), "IMAGINEBOT_SAFETY_STAGES": args.stages}
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def request(args: argparse.Namespace, i: int) -> JobRequest:
    return JobRequest.create(
        f"a lighthouse at dusk, take {i}", model=args.model, seed=7 + 10 * i, steps=args.steps, width=args.size,
        height=args.size, count=args.count, guidance=1.0,
    )  # fmt: skip


async def service_vs_bare(
    data_dir: Path, args: argparse.Namespace
) -> tuple[list[float], list[float], dict[str, list[float]]]:
    settings = Settings(data_dir=data_dir, model=args.model, max_batch_images=args.count,
                        safety_stages=tuple(args.stages.split(",")))  # fmt: skip
    generator = load_generator(settings, args.model)
    requests = [request(args, i) for i in range(args.jobs)]
    bare = []
    for r in requests:
        generation_request = Job.new(r).generation_request()
        start = time.perf_counter()
        generator.generate([generation_request])
        bare.append(time.perf_counter() - start)
    full = []
    stages: dict[str, list[float]] = {}
    async with open_service(settings) as service:
        await service.preload(args.model)
        for r in requests:
            start = time.perf_counter()
            job = await service.submit(r, enforce_caps=False)
            await service.wait(job.id)
            full.append(time.perf_counter() - start)
            for stage, seconds in service.timings[job.id].items():
                stages.setdefault(stage, []).append(seconds)
    return bare, full, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--model", default="builtin:tiny")
    # nsfw needs CLIP weights, which cannot be downloaded offline (and would block every image).
    parser.add_argument("--stages", default="prompt,integrity,faces", help="safety stages to run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        cold = cli_wall_time(data, args)
        warm = cli_wall_time(data, args)
        bare, full, stages = asyncio.run(service_vs_bare(data, args))
    b, f = statistics.median(bare), statistics.median(full)
    print(f"model {args.model}, {args.count} images of {args.size}x{args.size}, {args.steps} steps, "
          f"{os.cpu_count()} CPUs, median of {args.jobs} jobs, safety stages {args.stages}")  # fmt: skip
    print(f"{'measure':44} {'seconds':>9} {'ratio':>8}")
    print(f"{'CLI demo, cold data dir (builds the model)':44} {cold:9.3f} {cold / b:7.2f}x")
    print(f"{'CLI demo, warm':44} {warm:9.3f} {warm / b:7.2f}x")
    print(f"{'bare pipeline generate (baseline)':44} {b:9.3f} {1:7.2f}x")
    print(f"{'service: submit -> done (all stages)':44} {f:9.3f} {f / b:7.2f}x")
    print(f"{'service overhead per job (total - baseline)':44} {f - b:9.3f} {(f - b) / b:7.2%}")
    for stage, values in stages.items():
        median = statistics.median(values)
        print(f"{'  stage ' + stage:44} {median:9.3f} {median / b:7.2f}x")


if __name__ == "__main__":
    main()
