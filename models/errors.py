"""Exceptions raised by ``models``.

Tree::

    ModelError                  base of everything raised here
    ├── ModelLoadError          weights or pipeline could not be loaded (bad id/path, missing files)
    ├── GenerationError         the pipeline failed while generating a batch
    └── WorkerClosedError       work was submitted to a worker that is stopped
"""

from __future__ import annotations


class ModelError(Exception):
    """Base class for errors raised by the ``models`` package."""


class ModelLoadError(ModelError):
    """A model could not be loaded from its id or local directory."""


class GenerationError(ModelError):
    """The pipeline raised while generating a batch."""


class WorkerClosedError(ModelError):
    """The worker is stopped and accepts no more work."""
