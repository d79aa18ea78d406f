"""Job reports for people (text) and programs (JSON-ready dicts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.jobs import Job
from bot.storage import Storage

STAGES = ("load", "generate", "safety", "mark", "store")


async def job_record(storage: Storage, job: Job, timings: Mapping[str, float] | None) -> dict[str, Any]:
    """Everything about a job as plain data: the ``--json`` shape of ``generate`` and ``jobs``.

    ``outputs`` has one entry per requested image; a blocked image has ``path: null``.
    """
    r = job.request
    paths = {o.index: o for o in await storage.outputs_for(job.id)}
    verdicts = {v.index: v for v in await storage.verdicts_for(job.id)}
    outputs = []
    for index, seed in enumerate(r.seeds):
        output = paths.get(index)
        verdict = verdicts.get(index)
        if output is None and verdict is None:
            continue  # not generated (cancelled, failed, or still queued)
        outputs.append(
            {
                "index": index,
                "seed": seed,
                "path": output.path if output else None,
                "sha256": output.sha256 if output else None,
                "preview": output.preview_path if output else None,
                "verdict": None
                if verdict is None
                else {
                    "decision": verdict.decision,
                    "stage": verdict.stage,
                    "category": verdict.category,
                    "reason": verdict.reason,
                    "scores": dict(verdict.scores),
                },
            }
        )
    return {
        "job_id": job.id,
        "state": str(job.state),
        "prompt": r.prompt,
        "negative_prompt": r.negative_prompt,
        "model": r.model,
        "seed": r.seed,
        "steps": r.steps,
        "width": r.width,
        "height": r.height,
        "count": r.count,
        "guidance": r.guidance,
        "guild_id": r.guild_id,
        "user_id": r.user_id,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "error": job.error,
        "grid": job.grid_path,
        "timings": {k: round(v, 4) for k, v in (timings or {}).items()},
        "outputs": outputs,
    }


def render_job(record: Mapping[str, Any], *, brief: bool = False) -> str:
    """A short human report of one job record."""
    head = (
        f"job {record['job_id']}  {record['state']}  seed {record['seed']}  "
        f"{record['count']}x {record['width']}x{record['height']}  {record['steps']} steps  model {record['model']}"
    )
    lines = [head, f"  prompt: {record['prompt']}"]
    if record["error"]:
        lines.append(f"  error: {record['error']}")
    if brief:
        return "\n".join(lines)
    timings = record["timings"]
    if timings:
        shown = [f"{stage} {timings[stage]:.2f}s" for stage in STAGES if stage in timings]
        lines.append("  timings (batch): " + "  ".join(shown))
    for output in record["outputs"]:
        verdict = output["verdict"] or {}
        decision = verdict.get("decision", "?")
        why = "" if decision == "allow" else f" ({verdict.get('reason', '')})"
        where = output["path"] or "not stored"
        lines.append(f"  [{output['index']}] seed {output['seed']:<10} {decision}{why}  {where}")
    if record["grid"]:
        lines.append(f"  grid: {record['grid']}")
    return "\n".join(lines)
