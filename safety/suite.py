"""Building the configured safety stages into one policy — failing closed on anything that cannot load.

Entry point: :func:`build_suite`. Each configured stage either loads and becomes active, or is
listed as unavailable; the policy blocks every image while any configured stage is unavailable
(``safety check unavailable``), and :attr:`SafetySuite.statuses` says which and why
(``imaginebot doctor`` prints it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from safety.clip import ClipEncoder, ClipSpec
from safety.deepfake import FaceStage
from safety.errors import StageUnavailableError
from safety.faces import FaceDetector, HogFaceDetector, NudeNetFaceDetector
from safety.gallery import ProtectedGallery
from safety.identity import FaceEmbedder
from safety.integrity import IntegrityStage
from safety.nsfw import NsfwStage
from safety.policy import CheckContext, ImageStage, Policy
from safety.prompt_filter import PeopleMention, PromptCategory, PromptFilter, PromptRules
from safety.realism import ClipRealism
from safety.verdict import Verdict

logger = logging.getLogger(__name__)

STAGES = ("prompt", "integrity", "nsfw", "faces", "nudenet")
FACE_DETECTORS = ("auto", "nudenet", "hog")


@dataclass(frozen=True)
class StageStatus:
    """Whether a configured stage runs, with its model version or the reason it cannot."""

    name: str
    active: bool
    detail: str


class GuildRules:
    """Each guild's prompt additions and exceptions, plus the protected names; safe across threads."""

    def __init__(self, gallery: ProtectedGallery | None) -> None:
        self._gallery = gallery
        self._lock = threading.Lock()
        self._rules: dict[str | None, tuple[Mapping[PromptCategory, tuple[str, ...]], tuple[str, ...]]] = {}

    def set(
        self, guild_id: str | None, *, additions: Mapping[PromptCategory, tuple[str, ...]], exceptions: Sequence[str]
    ) -> None:
        rules = PromptRules(additions=additions, exceptions=tuple(exceptions))  # validates
        with self._lock:
            self._rules[guild_id] = (rules.additions, rules.exceptions)

    def for_guild(self, guild_id: str | None) -> PromptRules:
        with self._lock:
            additions, exceptions = self._rules.get(guild_id, ({}, ()))
        names = self._gallery.names(guild_id) if self._gallery is not None else ()
        return PromptRules(additions=additions, exceptions=exceptions, protected_names=names)


class PromptStage:
    """The prompt filter as a stage: it gates requests, and every image carries its prompt's verdict."""

    name = "prompt"

    def __init__(self, prompt_filter: PromptFilter, rules: GuildRules) -> None:
        self.filter = prompt_filter
        self._rules = rules

    def check_prompt(self, context: CheckContext) -> Verdict:
        return self.filter.check(context.prompt, context, self._rules.for_guild(context.guild_id))

    def check(self, images: Sequence[Image.Image], context: CheckContext) -> list[Verdict]:
        verdict = self.check_prompt(context)
        return [verdict for _ in images]


class PromptNames:
    """Adapts the prompt filter to the face stage's ``NameMatcher``."""

    def __init__(self, prompt_filter: PromptFilter) -> None:
        self._filter = prompt_filter

    def people_named(self, prompt: str, protected_names: Sequence[str]) -> PeopleMention:
        return self._filter.people_named(prompt, PromptRules(protected_names=tuple(protected_names)))


@dataclass
class SafetySuite:
    """Everything the safety layer loaded, for the worker (``policy``) and the operator tools."""

    policy: Policy
    statuses: tuple[StageStatus, ...]
    rules: GuildRules
    gallery: ProtectedGallery
    prompt: PromptStage | None = None
    nsfw: NsfwStage | None = None
    detector: FaceDetector | None = None
    embedder: FaceEmbedder | None = None
    stages: dict[str, ImageStage] = field(default_factory=dict)

    @property
    def unavailable(self) -> tuple[StageStatus, ...]:
        return tuple(s for s in self.statuses if not s.active)


def load_face_detector(kind: str) -> FaceDetector:
    """``auto`` uses NudeNet's detector when its (AGPL) weights are installed, else dlib's HOG."""
    if kind not in FACE_DETECTORS:
        raise ValueError(f"face detector {kind!r} is not one of {', '.join(FACE_DETECTORS)}")
    if kind == "hog":
        return HogFaceDetector()
    try:
        return NudeNetFaceDetector.load()
    except StageUnavailableError:
        if kind == "nudenet":
            raise
        logger.info("nudenet is not installed; detecting faces with dlib's HOG detector")
        return HogFaceDetector()


class _Builder:
    """Loads stages one by one into a suite, recording which failed; one CLIP serves nsfw and realism."""

    def __init__(self, suite: SafetySuite, clip: ClipSpec, device: str | None, cache_dir: Path | None,
                 face_detector: str) -> None:  # fmt: skip
        self.suite = suite
        self._clip_spec = clip
        self._device = device
        self._cache_dir = cache_dir
        self._face_detector = face_detector
        self._clip: ClipEncoder | Exception | None = None
        self._filter = PromptFilter.default()
        self.statuses: list[StageStatus] = []

    def load(self, name: str) -> ImageStage | None:
        loaders: dict[str, Callable[[], ImageStage]] = {
            "prompt": self._prompt, "integrity": IntegrityStage, "nsfw": self._nsfw, "faces": self._faces,
            "nudenet": self._nudenet,
        }  # fmt: skip
        try:
            stage = loaders[name]()
        except Exception as exc:  # any failure to load is reported, and the stage blocks (fail closed)
            logger.error("safety stage %s is unavailable: %s", name, exc)
            self.statuses.append(StageStatus(name, False, f"{type(exc).__name__}: {exc}"))
            return None
        self.statuses.append(StageStatus(name, True, getattr(stage, "version", None) or type(stage).__name__))
        return stage

    def _clip_encoder(self) -> ClipEncoder:
        if self._clip is None:
            try:
                self._clip = ClipEncoder.load(self._clip_spec, device=self._device, cache_dir=self._cache_dir)
            except Exception as exc:
                self._clip = exc
        if isinstance(self._clip, Exception):
            raise self._clip
        return self._clip

    def _prompt(self) -> ImageStage:
        self.suite.prompt = PromptStage(self._filter, self.suite.rules)
        return self.suite.prompt

    def _nsfw(self) -> ImageStage:
        self.suite.nsfw = NsfwStage(self._clip_encoder())
        return self.suite.nsfw

    def _faces(self) -> ImageStage:
        self.suite.detector = load_face_detector(self._face_detector)
        self.suite.embedder = FaceEmbedder.load()
        try:
            realism: ClipRealism | None = ClipRealism(self._clip_encoder())
        except Exception as exc:  # no CLIP: every face counts as realistic (fail closed: stricter)
            logger.warning("no CLIP for the realism check (%s); every face counts as realistic", exc)
            realism = None
        return FaceStage(
            detector=self.suite.detector, embedder=self.suite.embedder, gallery=self.suite.gallery,
            names=PromptNames(self._filter), realism=realism,
        )  # fmt: skip

    def _nudenet(self) -> ImageStage:
        from safety.nudenet_stage import NudeNetStage  # AGPL extra: imported only when configured

        return NudeNetStage.load()


def build_suite(
    stages: Sequence[str],
    *,
    clip: ClipSpec,
    gallery_dir: Path,
    cache_dir: Path | None = None,
    device: str | None = None,
    face_detector: str = "auto",
) -> SafetySuite:
    """Load every configured stage; never raises for a stage that cannot load (it blocks instead).

    Raises:
        ValueError: an unknown stage name or face detector, or no stage at all.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ValueError(f"safety stages {list(stages)!r}: use one or more of {', '.join(STAGES)}")
    if face_detector not in FACE_DETECTORS:
        raise ValueError(f"face detector {face_detector!r} is not one of {', '.join(FACE_DETECTORS)}")
    gallery = ProtectedGallery(gallery_dir)
    suite = SafetySuite(policy=Policy([IntegrityStage()]), statuses=(), rules=GuildRules(gallery), gallery=gallery)
    builder = _Builder(suite, clip, device, cache_dir, face_detector)
    for name in dict.fromkeys(stages):
        stage = builder.load(name)
        if stage is not None:
            suite.stages[name] = stage
    suite.statuses = tuple(builder.statuses)
    suite.policy = Policy(list(suite.stages.values()), unavailable=[s.name for s in suite.unavailable])
    return suite
