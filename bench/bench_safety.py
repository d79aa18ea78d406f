"""Cost per image of every safety stage on real photos, against PNG encoding in the same run.

Usage::

    python bench/bench_safety.py [--size 512] [--batch 4] [--repeat 5] [--clip ViT-B-32 [ViT-L-14 ...]] [--threads N]

Images: scikit-image's astronaut (the one photo with a face), coffee, chelsea and rocket, each
centre-cropped to a square and resized to ``--size``. "Batch 1" runs each photo alone, "batch N"
hands the stage one batch of N photos (the four repeated as needed); both are milliseconds per
image, the median of ``--repeat`` passes after one warm-up pass. A second table repeats the face
stage and the policy on the astronaut alone: a face in every image is the expensive case.

Baseline: ``bot.outputs.encode_png`` on the same images (Pillow, ``compress_level=1``), the work
the bot does anyway to store an output.

CLIP: no pretrained weights are reachable here, so each ``--clip`` architecture is built with
``open_clip.create_model(name, pretrained=None)`` (seed 0), saved as a checkpoint file and loaded
through the real ``ClipEncoder.load`` / ``build_suite`` path (``ClipSpec.pretrained`` may be a
checkpoint path). Speed depends on the architecture, not on the weight values; the scores are
meaningless. The first ``--clip`` model serves the realism scorer and the full policy.

Face stage rows: every detector (NudeNet as ``NudeNetFaceDetector.load`` builds it; the same
model with onnxruntime's spin-wait turned off, to show what its idle threads cost the torch pass
that follows on a small CPU; dlib's HOG) times every gallery (empty; the astronaut protected, so
each face is embedded) times every realism scorer (None; ``ClipRealism``).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import cycle, islice
from pathlib import Path
from typing import TypeVar

import onnxruntime as ort
import open_clip
import torch
from PIL import Image, ImageOps
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.outputs import PNG_COMPRESS_LEVEL, encode_png
from safety.clip import ClipEncoder, ClipSpec
from safety.deepfake import FaceStage, RealismScorer
from safety.errors import StageUnavailableError
from safety.faces import FaceDetector, HogFaceDetector, NudeNetFaceDetector, crop_face
from safety.gallery import ProtectedGallery
from safety.identity import FaceEmbedder
from safety.integrity import IntegrityStage
from safety.nsfw import NsfwStage
from safety.prompt_filter import PromptFilter, PromptRules
from safety.realism import ClipRealism
from safety.suite import GuildRules, PromptNames, PromptStage, build_suite
from safety.verdict import Decision

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # only the astronaut shows a face
PROMPT = "a portrait photo of an astronaut in a white spacesuit in front of the american flag"
PROMPTS = (  # for the per-prompt timing: short and long, clean and matching
    PROMPT,
    "a lighthouse at dusk",
    "a cozy cabin in a snowy pine forest at night, warm light in the windows, oil painting, highly detailed",
    "a zombie with open wounds and blood everywhere, horror movie still",
    "a photo of barack obama eating an ice cream cone on a beach",
    "a cute cat wearing a tiny wizard hat, digital art, trending on artstation, 8k, sharp focus",
)
PROTECTED_NAME = "Eileen Collins"  # the astronaut in skimage.data.astronaut()
PROTECTED_GUILD = "guild-protecting-the-astronaut"
POLICY_STAGES = ("prompt", "integrity", "nsfw", "faces")

T = TypeVar("T")
Run = Callable[[list[Image.Image]], object]


@dataclass(frozen=True)
class Request:
    """The request behind a batch (a ``CheckContext``)."""

    prompt: str
    width: int
    height: int
    guild_id: str | None = None
    strictness: str = "standard"
    allow_suggestive: bool = False


@dataclass(frozen=True)
class Row:
    """One line of a table: ms per image at batch 1 and at batch N."""

    stage: str
    batch1: float
    batch_n: float


@dataclass
class Bench:
    """The photos, the timing settings and everything measured so far."""

    photos: dict[str, Image.Image]
    batch: int
    repeat: int
    root: Path
    rows: list[Row] = field(default_factory=list)
    astronaut_rows: list[Row] = field(default_factory=list)
    setup: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def pool(self) -> list[Image.Image]:
        return list(self.photos.values())

    @property
    def astronaut(self) -> Image.Image:
        return self.photos["astronaut"]

    @property
    def cache_dir(self) -> Path:
        return self.root / "text-cache"

    def request(self, guild_id: str | None = None) -> Request:
        return Request(PROMPT, self.astronaut.width, self.astronaut.height, guild_id=guild_id)

    def per_image(self, run: Run, pool: Sequence[Image.Image]) -> Row:
        """Median ms per image with each image alone, and with one batch of ``batch`` images."""
        singles = [[image] for image in pool]
        batched = [list(islice(cycle(pool), self.batch))]
        return Row("", self._median(run, singles), self._median(run, batched))

    def measure(self, stage: str, run: Run, pool: Sequence[Image.Image] | None = None) -> None:
        row = self.per_image(run, self.pool if pool is None else pool)
        self.rows.append(Row(stage, row.batch1, row.batch_n))

    def measure_astronaut(self, stage: str, run: Run) -> None:
        row = self.per_image(run, [self.astronaut])
        self.astronaut_rows.append(Row(stage, row.batch1, row.batch_n))

    def timed(self, what: str, make: Callable[[], T]) -> T:
        """Build something once, recording how long it took as a one-off setup cost."""
        start = time.perf_counter()
        made = make()
        self.setup.append((what, time.perf_counter() - start))
        return made

    def _median(self, run: Run, batches: list[list[Image.Image]]) -> float:
        images = sum(len(b) for b in batches)

        def one_pass() -> float:
            start = time.perf_counter()
            for batch in batches:
                run(batch)
            return (time.perf_counter() - start) * 1000 / images

        one_pass()  # warm-up: first-call allocations, lazy initialisation
        return statistics.median(one_pass() for _ in range(self.repeat))


def load_photos(size: int) -> dict[str, Image.Image]:
    photos = {}
    for name in PHOTOS:
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        photos[name] = ImageOps.fit(image, (size, size), Image.Resampling.LANCZOS)
    return photos


def random_clip(model: str, directory: Path, cache_dir: Path) -> tuple[ClipSpec, ClipEncoder]:
    """A randomly initialised CLIP written as a checkpoint file and loaded the way the bot loads one."""
    torch.manual_seed(0)
    network = open_clip.create_model(model, pretrained=None)
    path = directory / f"{model}-random-init.pt"
    torch.save(network.state_dict(), path)
    del network
    spec = ClipSpec(model=model, pretrained=str(path))
    return spec, ClipEncoder.load(spec, device="cpu", cache_dir=cache_dir)


def prompt_us(prompt_filter: PromptFilter, context: Request, repeat: int, loops: int = 200) -> float:
    """Median µs per ``PromptFilter.check`` over :data:`PROMPTS`, with one protected name in the rules."""
    rules = PromptRules(protected_names=(PROTECTED_NAME,))

    def one_pass() -> float:
        start = time.perf_counter()
        for _ in range(loops):
            for prompt in PROMPTS:
                prompt_filter.check(prompt, context, rules)
        return (time.perf_counter() - start) * 1e6 / (loops * len(PROMPTS))

    one_pass()
    return statistics.median(one_pass() for _ in range(repeat))


def bench_cheap_stages(bench: Bench, prompt_filter: PromptFilter) -> None:
    context = bench.request()
    prompt_stage = PromptStage(prompt_filter, GuildRules(None))
    bench.measure("prompt stage (one prompt check per batch)", lambda b: prompt_stage.check(b, context))
    integrity = IntegrityStage()
    bench.measure("integrity", lambda b: integrity.check(b, context))


def bench_nsfw(bench: Bench, models: Sequence[str]) -> dict[str, tuple[ClipSpec, ClipEncoder]]:
    """The NSFW stage per CLIP architecture; returns the loaded encoders."""
    context = bench.request()
    encoders = {}
    for model in dict.fromkeys(models):
        spec, encoder = bench.timed(
            f"CLIP {model}: create random, save, ClipEncoder.load",
            partial(random_clip, model, bench.root, bench.cache_dir),
        )
        encoders[model] = (spec, encoder)
        nsfw = bench.timed(f"NsfwStage(CLIP {model}): encode the concept phrases", partial(NsfwStage, encoder))
        bench.measure(f"nsfw, CLIP {model} (random init)", partial(nsfw.check, context=context))
    return encoders


def nudenet_without_spinning(threads: int) -> NudeNetFaceDetector:
    """The same 320n detector with onnxruntime's spin-wait off (``NudeNetFaceDetector.load`` leaves it on).

    By default onnxruntime's idle threads keep spinning for a while after each run; on a 2-core CPU
    they then compete with the torch CLIP pass that follows. This variant shows what that costs.
    """
    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        raise StageUnavailableError("the nudenet package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "320n.onnx"
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return NudeNetFaceDetector(session, version="nudenet-320n:no-spin")


def load_detectors(bench: Bench, threads: int) -> dict[str, FaceDetector]:
    """NudeNet as the suite loads it, NudeNet without onnxruntime's spin-wait, and dlib's HOG."""
    detectors: dict[str, FaceDetector] = {}
    try:
        load = partial(NudeNetFaceDetector.load, threads=threads)
        detectors["nudenet"] = bench.timed("NudeNetFaceDetector.load", load)
        detectors["nudenet ORT-spin-off"] = nudenet_without_spinning(threads)
    except StageUnavailableError as exc:
        bench.notes.append(f"NudeNet face detector skipped: {exc}")
    detectors["hog"] = HogFaceDetector()
    for name, detector in detectors.items():
        if name == "nudenet ORT-spin-off":
            continue  # same model, same boxes
        found = ", ".join(f"{photo} {len(detector.detect(image))}" for photo, image in bench.photos.items())
        bench.notes.append(f"faces found by {name}: {found}")
    return detectors


def bench_faces(bench: Bench, detectors: dict[str, FaceDetector], realism: ClipRealism, clip: str) -> None:
    """Realism on a face crop, then the face stage for every detector, gallery and realism scorer."""
    context = bench.request()
    finder = next(iter(detectors.values()))  # NudeNet when it is installed: it finds more faces
    boxes = finder.detect(bench.astronaut)
    if not boxes:
        raise RuntimeError("no face found in the astronaut photo; the face benchmarks would measure nothing")
    crop = crop_face(bench.astronaut, boxes[0])
    bench.measure(
        f"realism, CLIP {clip}, per face crop ({crop.width}x{crop.height})", realism.photo_probability, [crop]
    )

    embedder = bench.timed("FaceEmbedder.load", FaceEmbedder.load)
    empty = ProtectedGallery(bench.root / "gallery-empty")
    protected = ProtectedGallery(bench.root / "gallery-astronaut")
    protected.add(PROTECTED_NAME, [bench.astronaut], guild_id=None, embedder=embedder, detector=finder)
    names = PromptNames(PromptFilter.default())
    galleries = (("empty gallery", empty), ("astronaut protected", protected))
    scorers: tuple[tuple[str, RealismScorer | None], ...] = (("realism None", None), (f"ClipRealism {clip}", realism))
    for detector_name, detector in detectors.items():
        for gallery_name, gallery in galleries:
            for scorer_name, scorer in scorers:
                stage = FaceStage(detector=detector, embedder=embedder, gallery=gallery, names=names, realism=scorer)
                label = f"faces, {detector_name}, {gallery_name}, {scorer_name}"
                run = partial(stage.check, context=context)
                bench.measure(label, run)
                bench.measure_astronaut(label, run)
                (verdict,) = stage.check([bench.astronaut], context)
                if gallery is protected and verdict.decision is not Decision.BLOCK:
                    raise RuntimeError(f"{label}: the protected astronaut was not blocked: {verdict}")


def bench_nudenet_stage(bench: Bench) -> None:
    try:
        from safety.nudenet_stage import NudeNetStage  # AGPL extra, as the suite imports it

        stage = bench.timed("NudeNetStage.load", NudeNetStage.load)
    except (ImportError, StageUnavailableError) as exc:
        bench.notes.append(f"NudeNet second-opinion stage skipped: {exc}")
        return
    bench.measure(
        "nudenet second opinion (nudenet package's own session)", partial(stage.check, context=bench.request())
    )


def bench_policy(bench: Bench, spec: ClipSpec) -> None:
    """The policy exactly as ``build_suite`` assembles it, the CLIP loaded from the random checkpoint."""
    suite = bench.timed(
        f"build_suite({','.join(POLICY_STAGES)}), CLIP from the same file",
        partial(build_suite, POLICY_STAGES, clip=spec, gallery_dir=bench.root / "gallery-suite",
                cache_dir=bench.cache_dir, device="cpu"),
    )  # fmt: skip
    if suite.unavailable:
        raise RuntimeError(f"build_suite could not load: {suite.unavailable}")
    if suite.detector is None or suite.embedder is None:
        raise RuntimeError("build_suite loaded no face detector or embedder")
    # Protected in one guild only: the same policy serves a guild that protects nobody.
    suite.gallery.add(
        PROTECTED_NAME, [bench.astronaut], guild_id=PROTECTED_GUILD, embedder=suite.embedder, detector=suite.detector
    )
    (verdict,) = suite.policy.check([bench.astronaut], bench.request(PROTECTED_GUILD))
    if verdict.decision is not Decision.BLOCK:
        raise RuntimeError(f"the full policy did not block the protected astronaut: {verdict}")
    statuses = "; ".join(f"{s.name}: {s.detail}" for s in suite.statuses)
    bench.notes.append(f"full policy = build_suite(...).policy: {statuses}; face detector {suite.detector.version}")
    for label, context in (
        ("nobody protected", bench.request()),
        ("astronaut protected", bench.request(PROTECTED_GUILD)),
    ):
        run = partial(suite.policy.check, context=context)
        bench.measure(f"full policy ({','.join(POLICY_STAGES)}), {label}", run)
        bench.measure_astronaut(f"full policy, {label}", run)


def fmt_ms(ms: float) -> str:
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3g}"


def print_table(title: str, rows: Sequence[Row], baseline: Row, batch: int) -> None:
    print(title)
    width = max(len(row.stage) for row in rows) + 2
    header = f"{'stage':<{width}}{'ms/img b1':>11}{f'ms/img b{batch}':>11}{'xPNG b1':>10}{f'xPNG b{batch}':>10}"
    print(header)
    print("-" * len(header))
    for row in rows:
        ratios = f"{row.batch1 / baseline.batch1:.3g}x", f"{row.batch_n / baseline.batch_n:.3g}x"
        print(f"{row.stage:<{width}}{fmt_ms(row.batch1):>11}{fmt_ms(row.batch_n):>11}{ratios[0]:>10}{ratios[1]:>10}")
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="square image side in pixels")
    parser.add_argument("--batch", type=int, default=4, help="images per batch in the batched column")
    parser.add_argument("--repeat", type=int, default=5, help="timed passes per figure (median), after a warm-up")
    parser.add_argument("--clip", nargs="+", default=["ViT-B-32"], help="CLIP architectures for the NSFW stage")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads, and onnxruntime threads of the measured NudeNet detectors (build_suite's uses every core)",
    )
    args = parser.parse_args(argv)
    for name in ("size", "batch", "repeat", "threads"):
        value = getattr(args, name)
        if value is not None and value < (64 if name == "size" else 1):
            parser.error(f"--{name} {value} is too small")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    started, load_before = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-safety-") as tmp:
        bench = Bench(load_photos(args.size), args.batch, args.repeat, Path(tmp))
        baseline = bench.per_image(lambda b: [encode_png(image) for image in b], bench.pool)
        baseline = Row(f"PNG encode, compress_level={PNG_COMPRESS_LEVEL} (baseline)", baseline.batch1, baseline.batch_n)
        astronaut_baseline = bench.per_image(lambda b: [encode_png(image) for image in b], [bench.astronaut])
        bench.astronaut_rows.append(Row(baseline.stage, astronaut_baseline.batch1, astronaut_baseline.batch_n))
        prompt_filter = PromptFilter.default()
        per_prompt = prompt_us(prompt_filter, bench.request(), args.repeat)
        bench_cheap_stages(bench, prompt_filter)
        encoders = bench_nsfw(bench, args.clip)
        spec, encoder = encoders[args.clip[0]]
        realism = bench.timed(
            f"ClipRealism(CLIP {args.clip[0]}): encode the class phrases", partial(ClipRealism, encoder)
        )
        bench_faces(bench, load_detectors(bench, args.threads or 0), realism, args.clip[0])
        bench_nudenet_stage(bench)
        bench_policy(bench, spec)

    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    print(
        f"{len(PHOTOS)} scikit-image photos ({', '.join(PHOTOS)}) at {args.size}x{args.size}; ms per image "
        f"at batch 1 and batch {args.batch}; median of {args.repeat} passes after a warm-up"
    )
    print(
        f"CPU count {cpus} ({usable} usable); torch.get_num_threads() = {torch.get_num_threads()}; "
        f"torch {torch.__version__}, open_clip {open_clip.__version__}; 1-minute load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (this run alone adds up to ~2: other work "
        "on the machine skews every figure)"
    )
    print("CLIP weights are RANDOMLY INITIALISED (open_clip.create_model(name, pretrained=None)): pretrained weights "
          "are not available offline. Speed depends on the architecture, not on the weight values, so the timings "
          "hold for the real weights; the scores are meaningless.")  # fmt: skip
    print()
    print_table("All four photos (only the astronaut has a face)", [baseline, *bench.rows], baseline, args.batch)
    print_table(
        "The astronaut alone (one face in every image)", bench.astronaut_rows, bench.astronaut_rows[0], args.batch
    )
    print(f"prompt filter: {per_prompt:.1f} µs per PromptFilter.check (median over {len(PROMPTS)} prompts)")
    print(f"baseline: bot.outputs.encode_png (Pillow PNG, compress_level={PNG_COMPRESS_LEVEL}), what the bot stores")
    for note in bench.notes:
        print(note)
    print()
    print("one-off setup, seconds:")
    for what, seconds in bench.setup:
        print(f"  {what:<70}{seconds:7.2f}")
    print(f"whole run: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
