"""How fast the workers get through queued cost, to turn "cost ahead" into a wait estimate."""

from __future__ import annotations

from collections.abc import Iterable


class ThroughputMeter:
    """Estimates throughput in cost units per second from finished batches.

    The estimate is the ratio of exponentially weighted averages of batch cost and batch
    duration. Dividing averages (rather than averaging per-batch rates) weighs each batch by the
    time it took, so a burst of tiny, fast batches cannot inflate the estimate.

    Args:
        alpha: Weight of the newest batch, in (0, 1]; larger adapts faster, smaller is steadier.

    Raises:
        ValueError: If ``alpha`` is outside (0, 1].
    """

    def __init__(self, *, alpha: float = 0.2) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha: {alpha} is outside (0, 1]")
        self.alpha = alpha
        self._cost = 0.0
        self._seconds = 0.0
        self._samples = 0

    @property
    def samples(self) -> int:
        """Number of batches recorded (including seeded ones)."""
        return self._samples

    @property
    def rate(self) -> float | None:
        """Cost units per second, or None before the first measurement."""
        if self._samples == 0:
            return None
        return self._cost / self._seconds

    def record(self, cost: int, seconds: float) -> None:
        """Add a finished batch: its total cost and how long it took.

        Raises:
            ValueError: If ``cost`` or ``seconds`` is not positive.
        """
        if cost < 1:
            raise ValueError(f"cost: {cost} must be at least 1")
        if not seconds > 0.0:  # also rejects NaN
            raise ValueError(f"seconds: {seconds} must be positive")
        if self._samples == 0:
            self._cost, self._seconds = float(cost), seconds
        else:
            self._cost += self.alpha * (cost - self._cost)
            self._seconds += self.alpha * (seconds - self._seconds)
        self._samples += 1

    def seed(self, samples: Iterable[tuple[int, float]]) -> None:
        """Pre-load history, oldest first, as ``(cost, seconds)`` pairs (e.g. from storage)."""
        for cost, seconds in samples:
            self.record(cost, seconds)

    def eta_seconds(self, cost_ahead: int) -> float | None:
        """Seconds until ``cost_ahead`` units of work are done; None before the first measurement.

        Raises:
            ValueError: If ``cost_ahead`` is negative.
        """
        if cost_ahead < 0:
            raise ValueError(f"cost_ahead: {cost_ahead} must not be negative")
        rate = self.rate
        return None if rate is None else cost_ahead / rate
