"""The ``imaginebot`` command line: generate, list jobs, resume after a crash, serve the dashboard.

Every command that starts a worker first finishes the jobs a crash left ``queued`` or ``running``.
Bad arguments exit with status 2 and one line naming the option and the bad value.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot import __version__, cli_safety, cli_verify
from bot.app import open_service, serve_worker
from bot.cli_base import Parser, UsageError
from bot.config import Settings
from bot.errors import BotError, InvalidRequestError, UserFacingError
from bot.jobs import Job, JobRequest, JobState
from bot.progress import ProgressDisplay
from bot.report import job_record, render_job
from bot.service import ImagineService
from bot.storage import Storage
from models import catalog
from models.errors import ModelError

logger = logging.getLogger(__name__)


def parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use WIDTHxHEIGHT, e.g. 512x512")
    return int(parts[0]), int(parts[1])


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="imaginebot", description="Self-hosted /imagine bot: generate images safely.")
    parser.add_argument("--version", action="version", version=f"imaginebot {__version__}")
    parser.add_argument("--config", type=Path, help="TOML settings file (default: $IMAGINEBOT_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    gen = commands.add_parser("generate", help="generate images from a prompt (or one job per line of a file)")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("prompt", nargs="?", help="what to draw")
    source.add_argument("--prompts", type=Path, metavar="FILE", help="queue one job per non-empty line")
    gen.add_argument("--negative", default="", help="what to avoid")
    gen.add_argument("--seed", type=int, help="seed of the first image (image i uses seed+i); random if omitted")
    gen.add_argument("--steps", type=int, help="denoising steps (default: the model's preset)")
    gen.add_argument("--size", type=parse_size, metavar="WxH", help="image size (default: the model's preset)")
    gen.add_argument("--count", type=int, default=4, help="images per job, 1-4 (default 4)")
    gen.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's preset)")
    gen.add_argument("--model", help="model id, local directory or builtin:demo (default: $IMAGINEBOT_MODEL)")
    gen.add_argument("--out", type=Path, metavar="DIR", help="also copy the images and grid into DIR")
    gen.add_argument("--guild", default="local", help="guild id to queue under (default: local)")
    gen.add_argument("--json", action="store_true", help="print JSON instead of a report")

    jobs = commands.add_parser("jobs", help="list recent jobs")
    jobs.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    jobs.add_argument("--state", choices=[s.value for s in JobState], help="only jobs in this state")
    jobs.add_argument("--json", action="store_true", help="print JSON")

    resume = commands.add_parser("resume", help="finish the jobs a crash left queued or running")
    resume.add_argument("--json", action="store_true", help="print JSON")
    commands.add_parser("run", help="run the Discord bot (needs DISCORD_TOKEN)")
    invite = commands.add_parser("invite", help="print the link that adds the bot to a Discord server")
    invite.add_argument("client_id", help="the application id from the Discord developer portal")
    dashboard = commands.add_parser("dashboard", help="serve the moderators' web dashboard")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dashboard.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    dashboard.add_argument("--base-url", help="the URL moderators reach it at (default http://HOST:PORT)")
    dashboard.add_argument("--local", action="store_true", help='print an admin login link for guild "local"')
    worker = commands.add_parser("worker", help="serve the bot's jobs from Redis on this (GPU) machine")
    worker.add_argument("--redis", metavar="URL", help="the bot's Redis (default: $IMAGINEBOT_REDIS_URL)")
    worker.add_argument(
        "--model", action="append", help="a model to serve; repeat for more (default: $IMAGINEBOT_MODEL)"
    )
    worker.add_argument("--max-batch", type=int, metavar="N", help="most images per pipeline call "
                        "(default: $IMAGINEBOT_MAX_BATCH_IMAGES)")  # fmt: skip
    worker.add_argument("--name", help="consumer name, unique among live workers (default: HOST-PID)")
    cli_safety.add_parsers(commands)
    cli_verify.add_parsers(commands)
    return parser


def build_requests(args: argparse.Namespace, settings: Settings) -> list[JobRequest]:
    """Turn generate's options into validated requests (raises UserFacingError naming the option)."""
    model = args.model or settings.model
    preset = catalog.preset_for(model)
    width, height = args.size or (preset.width, preset.height)
    if args.prompts is not None:
        try:
            prompts = [line.strip() for line in args.prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--prompts: cannot read {str(args.prompts)!r}: {exc}") from None
        if not prompts:
            raise UsageError(f"--prompts: {str(args.prompts)!r} has no prompts")
    else:
        prompts = [args.prompt]
    return [
        JobRequest.create(
            prompt,
            model=model,
            negative_prompt=args.negative,
            seed=args.seed,
            steps=args.steps if args.steps is not None else preset.steps,
            width=width,
            height=height,
            count=args.count,
            guidance=args.guidance if args.guidance is not None else preset.guidance,
            guild_id=args.guild,
            user_id="cli",
        )
        for prompt in prompts
    ]


async def _finish(service: ImagineService, jobs: Sequence[Job]) -> list[Job]:
    with ProgressDisplay(service, [j.id for j in jobs]):
        return list(await asyncio.gather(*(service.wait(j.id) for j in jobs)))


OPTION_OF_FIELD = {"negative": "--negative", "seed": "--seed", "steps": "--steps", "size": "--size",
                   "count": "--count", "guidance": "--guidance", "model": "--model"}  # fmt: skip


async def _generate(args: argparse.Namespace, settings: Settings) -> int:
    try:
        requests = build_requests(args, settings)
    except InvalidRequestError as exc:
        field, _, rest = exc.message.partition(":")
        raise UsageError(f"{OPTION_OF_FIELD.get(field, field)}:{rest}") from None
    async with open_service(settings) as service:
        resumed = list(service.resumed)
        try:
            await service.preload(requests[0].model)
        except ModelError as exc:
            raise UsageError(f"--model: {exc}") from None
        try:
            submitted = [await service.submit(r, enforce_caps=False) for r in requests]
        except InvalidRequestError as exc:  # e.g. a size too small for the watermark
            field, _, rest = exc.message.partition(":")
            raise UsageError(f"{OPTION_OF_FIELD.get(field, field)}:{rest}") from None
        finished = await _finish(service, resumed + submitted)
        return await _report(service, finished[len(resumed) :], args)


async def _resume(args: argparse.Namespace, settings: Settings) -> int:
    async with open_service(settings) as service:
        finished = await _finish(service, service.resumed)
        if not args.json:
            print(f"resumed {len(finished)} job(s)")
        return await _report(service, finished, args)


async def _report(service: ImagineService, jobs: Sequence[Job], args: argparse.Namespace) -> int:
    records = [await job_record(service.storage, job, service.timings.get(job.id)) for job in jobs]
    if getattr(args, "out", None):
        for record in records:
            _copy_out(record, args.out)
    if args.json:
        single = getattr(args, "prompt", None) is not None and len(records) == 1
        print(json.dumps(records[0] if single else records, indent=2))
    else:
        for record in records:
            print(render_job(record))
    return 1 if any(j.state is JobState.FAILED for j in jobs) else 0


def _copy_out(record: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for output in record["outputs"]:
        if output["path"]:
            target = out / f"{record['job_id']}-{output['index']}.png"
            shutil.copyfile(output["path"], target)
            output["path"] = str(target)
    if record["grid"]:
        target = out / f"{record['job_id']}-grid.png"
        shutil.copyfile(record["grid"], target)
        record["grid"] = str(target)


async def _jobs(args: argparse.Namespace, settings: Settings) -> int:
    if args.limit < 1:
        raise UsageError(f"--limit: {args.limit} must be at least 1")
    async with await Storage.open(settings.db_path) as storage:
        states = {JobState(args.state)} if args.state else None
        jobs = await storage.list_jobs(limit=args.limit, states=states)
        records = [await job_record(storage, job, None) for job in jobs]
    if args.json:
        print(json.dumps(records, indent=2))
    elif not records:
        print("no jobs yet")
    else:
        for record in records:
            print(render_job(record, brief=True))
    return 0


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from bot.chat.client import run_bot  # imports discord: only for this command

    await run_bot(settings)
    return 0


async def _invite(args: argparse.Namespace, settings: Settings) -> int:
    from bot.chat.client import invite_url  # imports discord: only for this command

    try:
        print(invite_url(args.client_id))
    except ValueError as exc:
        raise UsageError(f"client_id: {exc}") from None
    return 0


async def _dashboard(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn  # the web server: only for this command

    from bot.dashboard import create_app, login_link
    from bot.dashboard.auth import LOCAL_ADMIN, LOCAL_GUILD

    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port: {args.port} is outside 1..65535")
    base_url = args.base_url or f"http://{args.host}:{args.port}"
    if args.local:
        try:
            link = login_link(settings, LOCAL_ADMIN, LOCAL_GUILD, base_url, admin=True)
        except ValueError as exc:
            raise UsageError(f"--base-url: {exc}") from None
        print(f"Open this link within 10 minutes to sign in (it works once):\n{link}", flush=True)
    config = uvicorn.Config(create_app(settings), host=args.host, port=args.port, log_level=settings.log_level.lower())
    await uvicorn.Server(config).serve()
    return 0


async def _worker(args: argparse.Namespace, settings: Settings) -> int:
    url = args.redis or (settings.redis_url.get() if settings.redis_url else None)
    if not url:
        raise UsageError("--redis: no Redis URL (give --redis URL or set IMAGINEBOT_REDIS_URL)")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise UsageError("--redis: must start with redis://, rediss:// or unix://")
    max_batch = args.max_batch if args.max_batch is not None else settings.max_batch_images
    if max_batch < 1:
        raise UsageError(f"--max-batch: {max_batch} must be at least 1")
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    await serve_worker(settings, redis_url=url, models=tuple(dict.fromkeys(args.model or [settings.model])),
                       max_batch_images=max_batch, name=name)  # fmt: skip
    return 0


COMMANDS = {"generate": _generate, "jobs": _jobs, "resume": _resume, "run": _run, "invite": _invite,
            "dashboard": _dashboard, "worker": _worker, **cli_safety.COMMANDS, **cli_verify.COMMANDS}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``imaginebot`` console script."""
    try:
        args = build_parser().parse_args(argv)
        settings = Settings.load(config_file=args.config)
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return asyncio.run(COMMANDS[args.command](args, settings))
    except (UsageError, UserFacingError, BotError) as exc:
        print(f"imaginebot: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imaginebot: interrupted; accepted jobs are kept: run `imaginebot resume`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
