"""What travels through Redis between the bot and its workers: key names and the codecs.

Keys (``imaginebot`` is the default prefix)::

    imaginebot:jobs:<model>     stream, consumer group "workers"; one entry = one batch of compatible
                                requests: field "jobs" (JSON), "ids" (job ids, space-separated),
                                "init:<job>" (PNG of an image-to-image source)
    imaginebot:dead             dead-letter stream: entries delivered more than max_deliveries times
    imaginebot:result:<job>     hash, expires after the result TTL: "meta" (JSON: kind, error,
                                timings, per image index/seed/output id/verdict), "image:<i>" (PNG)
    imaginebot:cancel:<job>     string, expires: the bot asked for this job to stop
    imaginebot:worker:<name>    string, expires after 3 heartbeats: a live worker's WorkerInfo (JSON)

Pub/sub channels: ``imaginebot:done`` (a job id whose result is stored), ``imaginebot:progress``
(JSON step reports), ``imaginebot:cancel`` (a job id to stop now).

Images travel as PNG (zlib level 1) with our ``imaginebot:*`` text chunks, so the metadata
signature the worker embedded arrives intact; decoding gives the same pixels the worker marked.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

from PIL import Image

from bot.outputs import encode_png
from models.types import GenerationRequest
from models.worker import ImageOutcome, JobOutcome, OutcomeKind, WorkerVerdict

GROUP = "workers"
Fields = Mapping[bytes, bytes]


@dataclass(frozen=True)
class RemoteConfig:
    """The transport's timings and limits (from the ``redis_*`` / ``worker_*`` settings).

    Attributes:
        claim_idle_seconds: an entry pending this long without its worker's keep-alive is reclaimed
            by another live worker (XAUTOCLAIM); a live worker refreshes its own every third of it.
        max_deliveries: an entry delivered more often than this goes to the dead-letter stream and
            its jobs fail.
        result_ttl_seconds: how long a result (images included) waits in Redis for the bot.
        heartbeat_seconds: how often a worker announces itself; its key expires after three beats.
        poll_seconds: how often the bot checks heartbeats, missed results and vanished entries.
        prefix: the key prefix.
    """

    claim_idle_seconds: float = 60.0
    max_deliveries: int = 3
    result_ttl_seconds: int = 3600
    heartbeat_seconds: float = 5.0
    poll_seconds: float = 1.0
    prefix: str = "imaginebot"

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)

    @property
    def heartbeat_ttl_ms(self) -> int:
        """How long a worker's heartbeat key lives: three beats."""
        return max(1, int(self.heartbeat_seconds * 3000))


@dataclass(frozen=True)
class Keys:
    """Redis key and channel names under one prefix (several bots may share a Redis with distinct prefixes)."""

    prefix: str = "imaginebot"

    def stream(self, model: str) -> str:
        return f"{self.prefix}:jobs:{model}"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    def result(self, job_id: str) -> str:
        return f"{self.prefix}:result:{job_id}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    @property
    def workers_pattern(self) -> str:
        return f"{self.prefix}:worker:*"

    @property
    def done_channel(self) -> str:
        return f"{self.prefix}:done"

    @property
    def progress_channel(self) -> str:
        return f"{self.prefix}:progress"

    @property
    def cancel_channel(self) -> str:
        return f"{self.prefix}:cancel"


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker announces with each heartbeat."""

    name: str
    capacity: int  # batches it runs at once
    models: tuple[str, ...]  # the models whose streams it reads
    max_batch_images: int
    loaded: str | None  # the model resident now
    busy: bool

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerInfo:
        data = json.loads(raw)
        return cls(str(data["name"]), int(data["capacity"]), tuple(data["models"]), int(data["max_batch_images"]),
                   data.get("loaded"), bool(data.get("busy")))  # fmt: skip


def _png(image: Image.Image) -> bytes:
    return encode_png(image)


def _image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        return opened.copy()  # a plain image; copy() keeps ``info`` (our text chunks)


_REQUEST_FIELDS = ("job_id", "prompt", "negative_prompt", "width", "height", "steps", "guidance", "model",
                   "guild_id", "strictness", "allow_suggestive", "strength", "appealed")  # fmt: skip


def encode_entry(requests: Sequence[GenerationRequest]) -> dict[str, bytes]:
    """A stream entry for one batch (PNG-encodes source images: CPU work, call from a thread)."""
    jobs = [{**{name: getattr(r, name) for name in _REQUEST_FIELDS}, "seeds": list(r.seeds)} for r in requests]
    fields = {"jobs": json.dumps(jobs).encode(), "ids": " ".join(r.job_id for r in requests).encode()}
    for r in requests:
        if r.init_image is not None:
            fields[f"init:{r.job_id}"] = _png(r.init_image)
    return fields


def entry_job_ids(fields: Fields) -> list[str]:
    """The job ids of an entry, without decoding anything else (empty for a malformed entry)."""
    return fields.get(b"ids", b"").decode(errors="replace").split()


def decode_entry(fields: Fields) -> list[GenerationRequest]:
    """The requests of a stream entry.

    Raises:
        ValueError: the entry is malformed (a poison entry: it goes to the dead-letter stream).
    """
    try:
        jobs = json.loads(fields[b"jobs"])
        requests = []
        for job in jobs:
            init = fields.get(f"init:{job['job_id']}".encode())
            values: dict[str, Any] = {name: job[name] for name in _REQUEST_FIELDS}
            requests.append(GenerationRequest(**values, seeds=tuple(job["seeds"]),
                                              init_image=_image(init) if init is not None else None))  # fmt: skip
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise ValueError(f"malformed job entry: {type(exc).__name__}: {exc}") from exc
    if not requests:
        raise ValueError("malformed job entry: no jobs")
    return requests


def _verdict(image: ImageOutcome) -> dict[str, Any]:
    v = image.verdict
    return {"decision": str(v.decision), "stage": v.stage, "reason": v.reason, "category": v.category,
            "scores": dict(v.scores), "model_versions": dict(v.model_versions)}  # fmt: skip


def _image_meta(image: ImageOutcome) -> dict[str, Any]:
    return {"index": image.index, "seed": image.seed, "output_id": image.output_id, "verdict": _verdict(image),
            "has_image": image.image is not None}  # fmt: skip


def encode_outcome(outcome: JobOutcome) -> dict[str, bytes]:
    """A result hash for one job (PNG-encodes its images: CPU work, call from a thread)."""
    meta = {
        "job_id": outcome.job_id,
        "kind": str(outcome.kind),
        "error": outcome.error,
        "timings": dict(outcome.timings),
        "images": [
            {
                "index": i.index,
                "seed": i.seed,
                "output_id": i.output_id,
                "verdict": _verdict(i),
                "has_image": i.image is not None,
            }
            for i in outcome.images
        ],
    }
    fields = {"meta": json.dumps(meta).encode()}
    for i in outcome.images:
        if i.image is not None:
            fields[f"image:{i.index}"] = _png(i.image)
    return fields


def decode_outcome(fields: Fields) -> JobOutcome:
    """The :class:`JobOutcome` a worker stored (PNG-decodes images: call from a thread).

    Raises:
        ValueError: the result is malformed.
    """
    try:
        meta = json.loads(fields[b"meta"])
        images = []
        for item in meta["images"]:
            v = item["verdict"]
            verdict = WorkerVerdict(v["decision"], v["stage"], v["reason"], v["category"],
                                    MappingProxyType({k: float(x) for k, x in v["scores"].items()}),
                                    MappingProxyType({k: str(x) for k, x in v["model_versions"].items()}))  # fmt: skip
            data = fields.get(f"image:{item['index']}".encode())
            if item["has_image"] and data is None:
                raise ValueError(f"image {item['index']} is missing")
            image = _image(data) if item["has_image"] and data is not None else None
            images.append(ImageOutcome(int(item["index"]), int(item["seed"]), str(item["output_id"]), image, verdict))
        return JobOutcome(str(meta["job_id"]), OutcomeKind(meta["kind"]), tuple(images), meta["error"],
                          MappingProxyType({k: float(x) for k, x in meta["timings"].items()}))  # fmt: skip
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise ValueError(f"malformed result: {type(exc).__name__}: {exc}") from exc


async def stop_tasks(tasks: Sequence[asyncio.Task[Any]], *, grace: float = 1.0) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again while one is left.

    redis-py's async reads may swallow a cancellation that lands as their own timeout fires (the
    pub/sub ``get_message(timeout=...)`` loops hit it under load); a task that survives one cancel
    is cancelled again, so closing never hangs.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=grace)
    for task in tasks:  # retrieve results so that nothing is reported as never retrieved
        if not task.cancelled():
            task.exception()
