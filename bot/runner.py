"""The seam between the service's dispatcher and whatever runs batches: the ``Runner`` protocol.

Two runners exist. ``models.worker.Worker`` runs batches on a thread of this process (the embedded
default, one batch at a time); ``bot.remote.RedisRunner`` sends them to worker processes on other
machines through Redis Streams (as many as the live workers announce slots for, per model). Either
way a batch comes back as the same ``JobOutcome`` values, so recording and posting have one code path.

Credit-based dispatch: the dispatcher asks ``can_start(model, in_flight)`` before it pops a batch
from the fair scheduler, and pops the next one only when a credit is free, so the per-guild fair
order is the execution order and nothing piles up in a remote queue. A job whose model has no free
worker is passed over (its guild waits; see ``bot.scheduler``), never sent to wait in a stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from models.types import GenerationRequest, StepProgress
from models.worker import JobOutcome


class Runner(Protocol):
    """Runs batches of compatible requests: generate -> safety -> mark, somewhere."""

    def can_start(self, model: str, in_flight: Sequence[str]) -> bool:
        """Whether a batch for ``model`` may start now, with batches of ``in_flight`` models (one entry
        per batch) already running here."""
        ...

    @property
    def outage(self) -> str | None:
        """A user-facing sentence while batches cannot be dispatched (workers unreachable), else None."""
        ...

    async def run(
        self, requests: Sequence[GenerationRequest], on_progress: Callable[[StepProgress], None] | None = None
    ) -> list[JobOutcome]:
        """One outcome per request, in order; ``on_progress`` is called on the event loop."""
        ...

    def cancel(self, job_id: str) -> None:
        """Ask for a running job to stop; its outcome then comes back ``CANCELLED``."""
        ...

    async def preload(self, model: str) -> None:
        """Load ``model`` now where that is this process's job (a no-op for remote workers)."""
        ...
