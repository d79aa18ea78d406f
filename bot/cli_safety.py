"""Operator commands for the safety layer: ``doctor``, ``check``, ``calibrate`` and ``protect``.

They share the parser conventions of :mod:`bot.cli`: bad input raises :class:`UsageError`, which
``main`` turns into one line and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from bot.app import build_safety, load_generator
from bot.cli_base import Parser, UsageError
from bot.config import Settings
from bot.service import PromptContext
from bot.storage import Storage
from safety.calibration import Sample, evaluate, find_images, suggest
from safety.faces import FaceDetector
from safety.identity import FaceEmbedder
from safety.nsfw import CATEGORIES, MINORS, NsfwStage
from safety.verdict import STRICTNESS, Verdict, combine


def add_parsers(commands: Any) -> None:
    """Register the safety commands on the ``imaginebot`` sub-command parser."""
    doctor = commands.add_parser("doctor", help="report which safety stages and models are active")
    doctor.add_argument("--json", action="store_true", help="print JSON")

    check = commands.add_parser("check", help="run the safety stages on an image and/or a prompt")
    check.add_argument("image", nargs="?", type=Path, help="image file to judge")
    check.add_argument("--prompt", default=None, help="the prompt (alone: run the prompt stage only)")
    check.add_argument("--guild", default=None, help="judge with this guild's gallery and rules")
    check.add_argument("--strictness", choices=STRICTNESS, help="default: the configured strictness")
    check.add_argument("--age-restricted", action="store_true", help="as in an age-restricted channel")
    check.add_argument("--json", action="store_true", help="print JSON")

    calibrate = commands.add_parser("calibrate", help="measure NSFW thresholds on your own labelled images")
    calibrate.add_argument("folder", type=Path, help="folder with safe/ and category sub-folders (nsfw/, gore/ ...)")
    calibrate.add_argument("--target-fpr", type=float, default=0.01, help="false-positive rate to aim for")
    calibrate.add_argument("--json", action="store_true", help="print JSON")

    protect = commands.add_parser("protect", help="manage the protected-people gallery")
    actions = protect.add_subparsers(dest="action", required=True, parser_class=Parser)
    add = actions.add_parser("add", help="protect a person from deepfakes, from reference photos")
    add.add_argument("name")
    add.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    add.add_argument("--guild", default=None, help="only in this guild (default: every guild)")
    listing = actions.add_parser("list", help="list protected people")
    listing.add_argument("--guild", default=None, help="this guild's people and the global ones")
    listing.add_argument("--json", action="store_true", help="print JSON")
    remove = actions.add_parser("remove", help="stop protecting a person")
    remove.add_argument("name")
    remove.add_argument("--guild", default=None, help="remove from this guild's gallery (default: global)")


def open_image(path: Path) -> Image.Image:
    """Open and decode an image, or raise UsageError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise UsageError(f"image {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"image {str(path)!r} cannot be read: {exc}") from None


def verdict_json(verdict: Verdict) -> dict[str, Any]:
    return {
        "decision": str(verdict.decision),
        "stage": verdict.stage,
        "category": verdict.category,
        "reason": verdict.reason,
        "scores": dict(verdict.scores),
        "model_versions": dict(verdict.model_versions),
    }


async def doctor(args: argparse.Namespace, settings: Settings) -> int:
    """Report settings, storage, the generator and every safety stage; exit 1 if anything is missing."""
    suite = await asyncio.to_thread(build_safety, settings)
    report: dict[str, Any] = {"settings": settings.describe(), "safety": [], "ok": True}
    for status in suite.statuses:
        report["safety"].append({"stage": status.name, "active": status.active, "detail": status.detail})
    async with await Storage.open(settings.db_path) as storage:
        report["database"] = {"path": str(settings.db_path), "schema_version": await storage.schema_version()}
    try:
        generator = await asyncio.to_thread(load_generator, settings, settings.model)
        report["model"] = {"name": settings.model, "loaded": True, "detail": generator.model_id}
    except Exception as exc:
        report["model"] = {"name": settings.model, "loaded": False, "detail": f"{type(exc).__name__}: {exc}"}
    report["ok"] = not suite.unavailable and report["model"]["loaded"]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_render_doctor(report))
    return 0 if report["ok"] else 1


def _render_doctor(report: dict[str, Any]) -> str:
    model = report["model"]
    lines = [f"model    {model['name']}: {'ok' if model['loaded'] else 'NOT LOADABLE'} ({model['detail']})"]
    lines.append(f"database {report['database']['path']} (schema v{report['database']['schema_version']})")
    for stage in report["safety"]:
        state = "active" if stage["active"] else "UNAVAILABLE - blocks every image"
        lines.append(f"safety   {stage['stage']:<10} {state}  {stage['detail']}")
    lines.append("ok" if report["ok"] else "problems found: see above")
    return "\n".join(lines)


def _context(args: argparse.Namespace, settings: Settings, size: tuple[int, int]) -> PromptContext:
    strictness = args.strictness or settings.strictness
    return PromptContext(args.prompt or "", args.guild, strictness, args.age_restricted, size[0], size[1])


async def check(args: argparse.Namespace, settings: Settings) -> int:
    """Show every stage's verdict and scores (for tuning), and the combined verdict."""
    if args.image is None and args.prompt is None:
        raise UsageError("check: give an IMAGE, --prompt, or both")
    image = open_image(args.image) if args.image is not None else None
    if image is None:
        settings = _with_stages(settings, ("prompt",))
    suite = await asyncio.to_thread(build_safety, settings)
    context = _context(args, settings, image.size if image else (512, 512))
    stages: dict[str, Any] = {}
    if image is None:
        if suite.prompt is None:
            raise UsageError("check: the prompt stage could not load")
        combined = suite.prompt.check_prompt(context)
        stages["prompt"] = verdict_json(combined)
    else:
        [by_stage] = await asyncio.to_thread(suite.policy.judge, [image], context)
        combined = combine(by_stage.values())
        stages = {name: verdict_json(verdict) for name, verdict in by_stage.items()}
        for status in suite.unavailable:  # say why, not only that it blocked
            stages[status.name] = {"decision": "block", "error": f"unavailable: {status.detail}"}
    result = {**verdict_json(combined), "stages": stages}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_render_check(result))
    return 0


def _render_check(result: dict[str, Any]) -> str:
    lines = [f"{result['decision'].upper()}  ({result['stage']}: {result['reason']})"]
    for name, stage in result["stages"].items():
        if "error" in stage:
            lines.append(f"  {name:<10} {stage['decision']:<6} {stage['error']}")
            continue
        scores = "  ".join(f"{k.split('.', 1)[-1]}={v:.3f}" for k, v in sorted(stage["scores"].items()))
        lines.append(f"  {name:<10} {stage['decision']:<6} {stage['category'] or '-':<20} {scores}")
    return "\n".join(lines)


def _with_stages(settings: Settings, stages: tuple[str, ...]) -> Settings:
    from dataclasses import replace

    return replace(settings, safety_stages=stages)


async def calibrate(args: argparse.Namespace, settings: Settings) -> int:
    """Precision/recall of the NSFW thresholds on the operator's labelled images, and suggestions."""
    judged = [c for c in CATEGORIES if c != MINORS]
    try:
        files = find_images(args.folder, judged)
        if not 0.0 <= args.target_fpr <= 1.0:
            raise ValueError(f"--target-fpr: {args.target_fpr} is outside 0..1")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    suite = await asyncio.to_thread(build_safety, _with_stages(settings, ("nsfw",)))
    if suite.nsfw is None:
        raise UsageError(f"calibrate: the nsfw stage is unavailable ({suite.statuses[0].detail})")
    samples = await asyncio.to_thread(_score_all, suite.nsfw, files)
    reports = evaluate(samples, _flag_thresholds(suite.nsfw, judged))
    present = sorted({s.category for s in samples if s.category is not None})
    suggestions = [suggest(samples, c, target_fpr=args.target_fpr) for c in present]
    if args.json:
        print(json.dumps({"levels": [vars(r) for r in reports], "suggestions": [vars(s) for s in suggestions]},
                         indent=2, default=_nan_to_none))  # fmt: skip
    else:
        print(_render_calibration(reports, suggestions, len(samples), args.target_fpr))
    return 0


def _flag_thresholds(stage: NsfwStage, categories: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each level's flag threshold per category (categories a level never flags are left out)."""
    table: dict[str, dict[str, float]] = {}
    for level in STRICTNESS:
        limits = stage.thresholds.level(level)
        flags = {c: limits.limits(c, allow_suggestive=False).flag for c in categories}
        table[level] = {c: f for c, f in flags.items() if f is not None}
    return table


def _score_all(stage: NsfwStage, files: Sequence[tuple[Path, str | None]], batch: int = 16) -> list[Sample]:
    samples: list[Sample] = []
    for start in range(0, len(files), batch):
        chunk = files[start : start + batch]
        scores = stage.score([open_image(path) for path, _ in chunk])
        samples.extend(Sample(path, label, s) for (path, label), s in zip(chunk, scores, strict=True))
    return samples


def _nan_to_none(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else str(value)


def _render_calibration(reports: Sequence[Any], suggestions: Sequence[Any], count: int, target: float) -> str:
    lines = [f"{count} images; flag thresholds per strictness level", ""]
    lines.append(f"{'category':<18} {'level':<9} {'threshold':>9} {'precision':>9} {'recall':>7} {'FPR':>7}")
    for r in reports:
        if r.positives:
            lines.append(f"{r.category:<18} {r.level:<9} {r.threshold:9.3f} {r.precision:9.3f} "
                         f"{r.recall:7.3f} {r.false_positive_rate:7.3f}")  # fmt: skip
    lines.append("")
    lines.append(f"suggested thresholds for a false-positive rate <= {target}:")
    for s in suggestions:
        lines.append(f"  {s.category:<18} {s.threshold:.3f}  (FPR {s.false_positive_rate:.3f}, recall {s.recall:.3f})")
    return "\n".join(lines)


def _face_models(settings: Settings) -> tuple[FaceDetector, FaceEmbedder]:
    from bot.app import load_face_models

    return load_face_models(settings)


async def protect(args: argparse.Namespace, settings: Settings) -> int:
    """Add, list or remove protected people; every change goes to the audit log."""
    from safety.gallery import ProtectedGallery

    gallery = ProtectedGallery(settings.protected_dir)
    if args.action == "list":
        people = gallery.list(args.guild)
        rows = [{"name": p.name, "guild_id": p.guild_id, "references": p.references,
                 "created_at": p.created_at.isoformat()} for p in people]  # fmt: skip
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                print(f"{row['name']:<30} {row['guild_id'] or 'global':<20} {row['references']} reference(s)")
            if not rows:
                print("nobody is protected yet")
        return 0
    async with await Storage.open(settings.db_path) as storage:
        if args.action == "add":
            images = [open_image(p) for p in args.images]
            detector, embedder = await asyncio.to_thread(_face_models, settings)
            try:
                person = await asyncio.to_thread(
                    lambda: gallery.add(args.name, images, guild_id=args.guild, embedder=embedder, detector=detector)
                )
            except ValueError as exc:
                raise UsageError(f"protect add: {exc}") from None
            await storage.audit("protect_add", guild_id=args.guild, target=person.name,
                                detail={"references": person.references})  # fmt: skip
            print(f"protected {person.name} ({args.guild or 'every guild'}): {person.references} reference(s)")
            return 0
        removed = gallery.remove(args.name, guild_id=args.guild)
        if not removed:
            raise UsageError(f"protect remove: nobody named {args.name!r} in {args.guild or 'the global gallery'}")
        await storage.audit("protect_remove", guild_id=args.guild, target=args.name)
        print(f"no longer protecting {args.name}")
        return 0


COMMANDS = {"doctor": doctor, "check": check, "calibrate": calibrate, "protect": protect}
