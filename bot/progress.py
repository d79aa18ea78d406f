"""A terminal progress bar for jobs, fed by the service's job updates."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from types import TracebackType

from tqdm import tqdm

from bot.service import ImagineService, JobUpdate


class ProgressDisplay:
    """Shows jobs finished and the current denoising step on stderr, only when it is a terminal."""

    def __init__(self, service: ImagineService, job_ids: Sequence[str], *, enabled: bool | None = None) -> None:
        self._service = service
        self._ids = set(job_ids)
        self._done: set[str] = set()
        self._enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: tqdm | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def __enter__(self) -> ProgressDisplay:
        if self._enabled and self._ids:
            self._bar = tqdm(total=len(self._ids), unit="job", file=sys.stderr, dynamic_ncols=True)
            self._unsubscribe = self._service.subscribe(self.on_update)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._bar is not None:
            self._bar.close()

    def on_update(self, update: JobUpdate) -> None:
        if self._bar is None or update.job_id not in self._ids:
            return
        if update.step is not None:
            self._bar.set_postfix_str(f"step {update.step}/{update.total}")
        elif update.state.finished and update.job_id not in self._done:
            self._done.add(update.job_id)
            self._bar.update(1)
