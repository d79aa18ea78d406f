"""``imaginebot verify FILE... [--json]``: was an image made by this bot, by what evidence, from which job.

Reads the database and the keys; starts no worker and loads no model, so it answers in a moment.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
from pathlib import Path
from typing import Any

from bot.app import open_verifier
from bot.config import Settings
from bot.storage import Storage
from bot.verify import UnreadableImageError, VerifyReport

HELP = (
    "say whether images were made by this bot (C2PA, signed metadata, watermark, registry); "
    "'ours: false' means no evidence was found, which is not proof of anything"
)


def add_parsers(commands: Any) -> None:
    """Register ``verify`` on the ``imaginebot`` sub-command parser."""
    verify = commands.add_parser("verify", help=HELP, description=HELP)
    verify.add_argument("files", nargs="+", type=Path, metavar="FILE", help="image files to check")
    verify.add_argument("--guild", action="append", default=[], metavar="ID",
                        help="you moderate this guild: show the prompts of its jobs (repeatable)")  # fmt: skip
    verify.add_argument("--json", action="store_true", help="print JSON: one object per file")


def report_record(path: Path, report: VerifyReport) -> dict[str, Any]:
    """One file's verdict as JSON-ready data."""
    job = report.job
    c2pa = report.credentials
    return {
        "file": str(path),
        "ours": report.ours,
        "evidence": [{"kind": e.kind, "detail": e.detail, "output_id": e.output_id} for e in report.evidence],
        "job_id": report.job_id,
        "job": None
        if job is None
        else {
            "guild_id": job.guild_id,
            "created_at": job.created_at,
            "model": job.model,
            "kind": job.kind,
            "index": job.index,
            "prompt": job.prompt,
        },
        "c2pa": None
        if c2pa is None
        else {
            "present": c2pa.present,
            "valid": c2pa.valid,
            "trusted": c2pa.trusted,
            "ours": c2pa.ours,
            "state": c2pa.state,
            "errors": list(c2pa.errors),
        },
        "notes": list(report.notes),
    }


def render(record: dict[str, Any]) -> str:
    if "error" in record:
        return f"{record['file']}: error: {record['error']}"
    lines = [f"{record['file']}: {'made by this bot' if record['ours'] else 'no evidence it was made by this bot'}"]
    for e in record["evidence"]:
        lines.append(f"  evidence: {e['kind']}: {e['detail']}" + (f" ({e['output_id']})" if e["output_id"] else ""))
    job = record["job"]
    if job is not None:
        when = datetime.datetime.fromtimestamp(job["created_at"], datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        lines.append(f"  job {record['job_id']}: guild {job['guild_id']}, {when}, model {job['model']}")
        if job["prompt"] is not None:
            lines.append(f"  prompt: {job['prompt']}")
    lines.extend(f"  note: {note}" for note in record["notes"])
    return "\n".join(lines)


async def _verify(args: argparse.Namespace, settings: Settings) -> int:
    records: list[dict[str, Any]] = []
    async with await Storage.open(settings.db_path) as storage:
        verifier = await asyncio.to_thread(open_verifier, settings, storage)
        for path in args.files:
            try:
                data = await asyncio.to_thread(path.read_bytes)
                report = await verifier.verify(data, moderator_of=set(args.guild))
            except (OSError, UnreadableImageError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                records.append({"file": str(path), "error": reason, "ours": None})
                continue
            records.append(report_record(path, report))
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        print("\n".join(render(r) for r in records))
    return 2 if any("error" in r for r in records) else 0


COMMANDS = {"verify": _verify}
