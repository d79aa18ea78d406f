"""Credits per model: whether the live workers' slots can hold a set of batches (no Redis needed)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from bot.remote.runner import slots_suffice
from bot.remote.wire import WorkerInfo


def worker(name: str, *models: str, capacity: int = 1) -> WorkerInfo:
    return WorkerInfo(name, capacity, models, 4, None, False)


def test_a_batch_needs_a_worker_that_serves_its_model() -> None:
    workers = [worker("a", "sd-turbo")]
    assert slots_suffice(["sd-turbo"], workers)
    assert not slots_suffice(["sdxl"], workers)
    assert not slots_suffice(["sd-turbo", "sd-turbo"], workers)
    assert slots_suffice(["sd-turbo", "sd-turbo"], [worker("a", "sd-turbo", capacity=2)])


def test_a_shared_worker_is_counted_once_for_all_its_models() -> None:
    # a serves both models, b only sdxl: two sdxl batches take both, so a third batch of any model cannot start
    workers = [worker("a", "sd-turbo", "sdxl"), worker("b", "sdxl")]
    assert slots_suffice(["sdxl", "sdxl"], workers)
    assert slots_suffice(["sd-turbo", "sdxl"], workers)
    assert not slots_suffice(["sdxl", "sdxl", "sd-turbo"], workers)
    assert not slots_suffice(["sd-turbo", "sd-turbo"], workers)  # only a serves sd-turbo


def _matching_exists(batches: list[str], workers: list[WorkerInfo]) -> bool:
    """Brute force: try every assignment of batches to worker slots."""
    slots = [w for w in workers for _ in range(w.capacity)]
    return any(
        all(model in slot.models for model, slot in zip(batches, chosen, strict=True))
        for chosen in itertools.permutations(slots, len(batches))
    )


@given(
    st.lists(st.sampled_from("xyz"), max_size=4),
    st.lists(st.tuples(st.sets(st.sampled_from("xyz"), min_size=1), st.integers(1, 2)), max_size=3),
)
def test_agrees_with_brute_force(batches: list[str], spec: list[tuple[set[str], int]]) -> None:
    workers = [worker(f"w{i}", *sorted(models), capacity=c) for i, (models, c) in enumerate(spec)]
    assert slots_suffice(batches, workers) == _matching_exists(batches, workers)
