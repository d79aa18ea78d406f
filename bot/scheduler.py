"""Per-guild fair scheduling: deficit round-robin (DRR) weighted by job cost.

The scheduler is pure bookkeeping: synchronous, no IO, no clock, no locks. The service owns one
instance and calls it from a single asyncio task.

Algorithm
    Each guild has a FIFO queue. Guilds with queued work form a ring; a guild that becomes active
    joins at the end of the ring with a deficit of 0. A *visit* to the guild at the front of the
    ring adds ``quantum`` to its deficit, then dispatches its head jobs while the head's cost is
    at most the deficit (each dispatch subtracts the job's cost). When the head costs more than
    what is left, the visit ends and the guild moves to the end of the ring, keeping its deficit.
    A guild whose queue empties leaves the ring and its deficit resets to 0. A job costing more
    than ``quantum`` is dispatched only once its guild has saved enough over several visits, so a
    guild of expensive jobs gets proportionally fewer of them: the shares are fair in *cost*
    (GPU time), not in job count.

    A visit is state that persists between calls: a guild being visited keeps dispatching from
    its remaining deficit before the ring moves on. A visit ends as soon as the guild's next head
    is unaffordable, so a guild that arrives afterwards lines up behind it. Rounds in which no
    guild can afford its head are skipped arithmetically rather than simulated, so one dispatch
    is O(1) amortised when ``quantum`` is at least a typical job's cost, and never worse than
    O(active guilds).

Fairness guarantee
    A guild that arrives with one job of cost <= ``quantum`` waits at most for the current visit
    of each other active guild: at most ``quantum`` worth of cost each, plus one job. With every
    job costing exactly ``quantum``, each visit dispatches exactly one job, so the newcomer waits
    for at most one job per other active guild.

Caps
    A user may have at most ``per_user_cap`` jobs queued *or running* (a job dispatched by
    :meth:`FairScheduler.pop_batch` stays counted until :meth:`FairScheduler.finish`); a guild
    may have at most ``per_guild_cap`` jobs queued. :meth:`FairScheduler.restore` bypasses both
    caps: a job that was accepted before a restart is never refused afterwards.

Jobs that cannot start yet
    :meth:`FairScheduler.pop_batch` may be given ``ready``, a test of a job's batch key (with remote
    workers: does a worker serving the job's model have a free slot?). A guild whose head is not
    ready is passed over for this dispatch as if it could not afford its head (a visit to it ends);
    the others are served in their fair order, so a job for a model no free worker serves holds up
    only its own guild's queue. Meanwhile the passed-over guild saves no more deficit than its next
    visit needs to afford that head, so when its model frees up it takes its turn in the ring but
    does not burst ahead of everyone with what it saved while waiting.

Order prediction
    :meth:`FairScheduler.position`, :meth:`FairScheduler.cost_ahead` and
    :meth:`FairScheduler.snapshot` replay the same DRR steps as :meth:`FairScheduler.pop_batch` on
    a copy of the small state (ring, deficits, visit flag) while walking the guild queues with
    iterators, so the prediction is exactly the order in which jobs will be dispatched if nothing
    else arrives. The replay is lazy and cached until the next change, so answering the position
    of every queued job costs one pass in total.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass

from bot.errors import QueueFullError
from bot.jobs import MAX_IMAGES

HeadCost = Callable[[str], int]
Ready = Callable[[Hashable], bool]
_NEVER = 1 << 62  # the head cost a not-ready guild is given while it is passed over


@dataclass(frozen=True)
class QueuedJob:
    """What the scheduler needs to know about a queued job.

    Attributes:
        job_id: The job's id; unique among queued and running jobs.
        guild_id: The guild (server) the job belongs to; the unit of fairness.
        user_id: The requester; the unit of the per-user cap.
        cost: Scheduling cost (steps x pixels x images), at least 1.
        images: Number of images the job generates, 1..MAX_IMAGES.
        key: Batch compatibility key; jobs with equal keys can share one pipeline call.
        enqueued_at: When the job was accepted (seconds since the epoch); informational.
    """

    job_id: str
    guild_id: str
    user_id: str
    cost: int
    images: int
    key: Hashable
    enqueued_at: float

    def __post_init__(self) -> None:
        if self.cost < 1:
            raise ValueError(f"cost: {self.cost} must be at least 1 (job {self.job_id})")
        if not 1 <= self.images <= MAX_IMAGES:
            raise ValueError(f"images: {self.images} is outside 1..{MAX_IMAGES} (job {self.job_id})")


class _Round:
    """The DRR position: ring order, deficits and whether the front guild is mid-visit.

    Shared by the live scheduler and the order replay so both take exactly the same steps. The
    invariant between calls: when ``visiting`` is true, the front guild's head is affordable.
    """

    __slots__ = ("deficit", "quantum", "ring", "visiting")

    def __init__(self, quantum: int) -> None:
        self.quantum = quantum
        self.ring: deque[str] = deque()
        self.deficit: dict[str, int] = {}
        self.visiting = False

    def copy(self) -> _Round:
        twin = _Round(self.quantum)
        twin.ring = self.ring.copy()
        twin.deficit = self.deficit.copy()
        twin.visiting = self.visiting
        return twin

    def join(self, guild: str) -> None:
        """A guild with newly queued work lines up at the end of the ring."""
        self.ring.append(guild)
        self.deficit[guild] = 0

    def leave(self, guild: str) -> None:
        """A guild whose queue emptied leaves the ring; its deficit is forgotten."""
        if self.ring[0] == guild:
            self.ring.popleft()
            self.visiting = False
        else:
            self.ring.remove(guild)
        del self.deficit[guild]

    def find(self, head_cost: HeadCost) -> tuple[int, int]:
        """Locate the next dispatch without changing anything.

        Returns:
            ``(index, laps)``: the ring index of the guild whose head goes next and how many
            more visits (laps of the ring) it needs; ``laps == 0`` means the current visit.
        """
        if self.visiting:
            return 0, 0
        quantum, deficit = self.quantum, self.deficit
        best_index, best_laps = 0, 0
        for index, guild in enumerate(self.ring):
            # Visits needed until the deficit covers the head; every visit adds one quantum.
            laps = max(1, -(-(head_cost(guild) - deficit[guild]) // quantum))
            if laps == 1:
                return index, 1
            if best_laps == 0 or laps < best_laps:
                best_index, best_laps = index, laps
        return best_index, best_laps

    def charge(self, index: int, laps: int, cost: int) -> str:
        """Apply the visits that :meth:`find` located and charge ``cost`` to the winner.

        Returns:
            The guild being dispatched from, now at the front of the ring and mid-visit.
        """
        if laps > 1:
            # Whole laps in which nobody could afford its head: everyone saves a quantum per lap
            # and the ring order is unchanged.
            extra = (laps - 1) * self.quantum
            for guild in self.ring:
                self.deficit[guild] += extra
        if laps >= 1:
            # The guilds before the winner are visited once more, cannot pay, move to the end.
            for offset in range(index):
                self.deficit[self.ring[offset]] += self.quantum
            self.ring.rotate(-index)
            self.deficit[self.ring[0]] += self.quantum
            self.visiting = True
        guild = self.ring[0]
        self.deficit[guild] -= cost
        return guild

    def settle(self, next_cost: int | None) -> None:
        """After a dispatch or a cancellation at the front: end the visit if it is over.

        Args:
            next_cost: Cost of the front guild's new head, or None if its queue is now empty.
        """
        guild = self.ring[0]
        if next_cost is None:
            self.leave(guild)
        elif next_cost > self.deficit[guild]:
            self.ring.rotate(-1)
            self.visiting = False


class _Replay:
    """The dispatch order, computed lazily on a copy of the DRR state; dropped on any change."""

    def __init__(self, source: _Round, queues: dict[str, deque[QueuedJob]]) -> None:
        self.order: list[QueuedJob] = []
        self.cumulative_cost: list[int] = []
        self.index: dict[str, int] = {}
        self._steps = self._run(source.copy(), queues)

    @staticmethod
    def _run(state: _Round, queues: dict[str, deque[QueuedJob]]) -> Iterator[QueuedJob]:
        # Iterators walk the live deques without copying them; the replay is discarded before
        # any of them can be mutated.
        cursors = {guild: iter(queue) for guild, queue in queues.items()}
        heads = {guild: next(cursor) for guild, cursor in cursors.items()}

        def head_cost(guild: str) -> int:
            return heads[guild].cost

        while state.ring:
            index, laps = state.find(head_cost)
            job = heads[state.ring[index]]
            guild = state.charge(index, laps, job.cost)
            following = next(cursors[guild], None)
            if following is None:
                del heads[guild]
            else:
                heads[guild] = following
            state.settle(None if following is None else following.cost)
            yield job

    def extend_to(self, job_id: str) -> int:
        """Replay until ``job_id`` is reached (it must be queued); return its 0-based index."""
        while job_id not in self.index and self.extend():
            pass
        return self.index[job_id]

    def extend(self) -> bool:
        job = next(self._steps, None)
        if job is None:
            return False
        total = self.cumulative_cost[-1] if self.cumulative_cost else 0
        self.index[job.job_id] = len(self.order)
        self.order.append(job)
        self.cumulative_cost.append(total + job.cost)
        return True


class FairScheduler:
    """Per-guild fair queue with per-user and per-guild caps. See the module docstring.

    Args:
        quantum: Cost credited to a guild per visit; set it near a typical job's cost.
        per_user_cap: Most jobs one user may have queued or running at once.
        per_guild_cap: Most jobs one guild may have queued at once.

    Raises:
        ValueError: If a setting is below 1.
    """

    def __init__(self, *, quantum: int, per_user_cap: int, per_guild_cap: int) -> None:
        for name, value in (("quantum", quantum), ("per_user_cap", per_user_cap), ("per_guild_cap", per_guild_cap)):
            if value < 1:
                raise ValueError(f"{name}: {value} must be at least 1")
        self.per_user_cap = per_user_cap
        self.per_guild_cap = per_guild_cap
        self._round = _Round(quantum)
        self._queues: dict[str, deque[QueuedJob]] = {}
        self._queued: dict[str, QueuedJob] = {}
        self._running: dict[str, QueuedJob] = {}
        self._user_active: dict[str, int] = {}
        self._replay: _Replay | None = None

    @property
    def quantum(self) -> int:
        return self._round.quantum

    def __len__(self) -> int:
        """Number of queued (not running) jobs."""
        return len(self._queued)

    def __contains__(self, job_id: object) -> bool:
        """True if a job with this id is queued (not running); O(1)."""
        return job_id in self._queued

    def knows(self, job_id: str) -> bool:
        """True if a job with this id is queued or running here."""
        return job_id in self._queued or job_id in self._running

    def queued_for_guild(self, guild_id: str) -> int:
        queue = self._queues.get(guild_id)
        return len(queue) if queue else 0

    def active_for_user(self, user_id: str) -> int:
        """Jobs of this user that are queued or running."""
        return self._user_active.get(user_id, 0)

    def push(self, job: QueuedJob) -> None:
        """Queue a new job, enforcing the caps.

        Raises:
            ValueError: If a job with this id is already queued or running.
            QueueFullError: If the user or the guild is at its cap; the message is for the user.
        """
        self._check_new(job)
        active = self.active_for_user(job.user_id)
        if active >= self.per_user_cap:
            raise QueueFullError(
                f"You already have {active} {_jobs(active)} queued or running (the limit is {self.per_user_cap}). "
                "Wait for one to finish or cancel one."
            )
        queued = self.queued_for_guild(job.guild_id)
        if queued >= self.per_guild_cap:
            raise QueueFullError(
                f"This server's queue is full ({queued} {_jobs(queued)} waiting, the limit is {self.per_guild_cap}). "
                "Try again when some have finished."
            )
        self._enqueue(job)

    def restore(self, job: QueuedJob) -> None:
        """Queue a job accepted before a restart; caps are not applied.

        Raises:
            ValueError: If a job with this id is already queued or running.
        """
        self._check_new(job)
        self._enqueue(job)

    def pop_batch(self, max_images: int, ready: Ready | None = None) -> list[QueuedJob]:
        """Dispatch the next job in fair order, with the following ones it can share a batch with.

        Following jobs are taken in fair order while they have the first job's key and the batch
        stays within ``max_images``; the batch ends at the first job that does not fit, which
        stays next in line (nothing skips ahead of the fair order). The first job is returned
        even if it alone has more than ``max_images`` images. Returned jobs count as running for
        the per-user cap until :meth:`finish`.

        Args:
            max_images: The most images a batch may have (but see above).
            ready: Whether a job with this batch key can start now; guilds whose head cannot are
                passed over for this dispatch (see the module docstring). None: every job can.

        Returns:
            The batch in dispatch order; empty if nothing is queued or nothing queued is ready.

        Raises:
            ValueError: If ``max_images`` is below 1.
        """
        if max_images < 1:
            raise ValueError(f"max_images: {max_images} must be at least 1")
        located = self._find(ready)
        if located is None:
            return []
        batch = [self._take(*located)]
        images = batch[0].images
        while (located := self._find(ready)) is not None:
            index, _, _ = located
            following = self._queues[self._round.ring[index]][0]
            if following.key != batch[0].key or images + following.images > max_images:
                break
            batch.append(self._take(*located))
            images += following.images
        return batch

    def finish(self, job_id: str) -> None:
        """A dispatched job is over; free its user's slot. Unknown or queued ids are ignored."""
        job = self._running.pop(job_id, None)
        if job is not None:
            self._release_user(job.user_id)

    def remove(self, job_id: str) -> bool:
        """Cancel a queued job.

        Returns:
            True if the job was queued and is now removed; False otherwise (running jobs are
            not touched: cancel those at the worker, then call :meth:`finish`).
        """
        job = self._queued.pop(job_id, None)
        if job is None:
            return False
        self._replay = None
        self._release_user(job.user_id)
        guild = job.guild_id
        queue = self._queues[guild]
        was_head = queue[0] is job
        queue.remove(job)
        at_front = self._round.ring[0] == guild
        if not queue:
            del self._queues[guild]
            self._round.leave(guild)
        elif was_head and at_front and self._round.visiting:
            # The visit may no longer afford the new head: keep the "visiting => affordable" rule.
            self._round.settle(queue[0].cost)
        return True

    def position(self, job_id: str) -> int | None:
        """1-based place in dispatch order if nothing else arrives; None if the job is not queued."""
        if job_id not in self._queued:
            return None
        return self._replayed().extend_to(job_id) + 1

    def cost_ahead(self, job_id: str) -> int | None:
        """Total cost of the queued jobs dispatched before this one, plus its own; None if not queued."""
        if job_id not in self._queued:
            return None
        replay = self._replayed()
        return replay.cumulative_cost[replay.extend_to(job_id)]

    def snapshot(self) -> list[QueuedJob]:
        """All queued jobs in the order they will be dispatched if nothing else arrives."""
        replay = self._replayed()
        while replay.extend():
            pass
        return list(replay.order)

    # --- internals -------------------------------------------------------------------------

    def _check_new(self, job: QueuedJob) -> None:
        if job.job_id in self._queued or job.job_id in self._running:
            raise ValueError(f"job_id: {job.job_id!r} is already queued or running")

    def _enqueue(self, job: QueuedJob) -> None:
        self._replay = None
        queue = self._queues.get(job.guild_id)
        if queue is None:
            queue = self._queues[job.guild_id] = deque()
            self._round.join(job.guild_id)
        queue.append(job)
        self._queued[job.job_id] = job
        self._user_active[job.user_id] = self._user_active.get(job.user_id, 0) + 1

    def _head_cost(self, guild: str) -> int:
        return self._queues[guild][0].cost

    def _find(self, ready: Ready | None) -> tuple[int, int, frozenset[str]] | None:
        """Locate the next dispatch among the guilds whose head is ready; None if there is none."""
        ring = self._round.ring
        if not ring:
            return None
        waiting = frozenset(guild for guild in ring if ready is not None and not ready(self._queues[guild][0].key))
        if not waiting:
            return (*self._round.find(self._head_cost), waiting)
        if len(waiting) == len(ring):
            return None
        if self._round.visiting and ring[0] in waiting:  # its visit ends; it keeps its deficit
            self._replay = None
            ring.rotate(-1)
            self._round.visiting = False
        index, laps = self._round.find(lambda guild: _NEVER if guild in waiting else self._head_cost(guild))
        return index, laps, waiting

    def _take(self, index: int, laps: int, waiting: frozenset[str] = frozenset()) -> QueuedJob:
        """Dispatch the head located by :meth:`_find` and move it to running.

        The ``waiting`` guilds (passed over: their head is not ready) save no more than their next
        visit needs to afford their head.
        """
        self._replay = None
        queue = self._queues[self._round.ring[index]]
        job = queue.popleft()
        deficit = self._round.deficit
        before = {guild: deficit[guild] for guild in waiting}
        self._round.charge(index, laps, job.cost)
        for guild, saved in before.items():
            deficit[guild] = min(deficit[guild], max(saved, self._head_cost(guild) - self._round.quantum))
        if queue:
            self._round.settle(queue[0].cost)
        else:
            del self._queues[job.guild_id]
            self._round.settle(None)
        del self._queued[job.job_id]
        self._running[job.job_id] = job
        return job

    def _release_user(self, user_id: str) -> None:
        left = self._user_active[user_id] - 1
        if left:
            self._user_active[user_id] = left
        else:
            del self._user_active[user_id]

    def _replayed(self) -> _Replay:
        if self._replay is None:
            self._replay = _Replay(self._round, self._queues)
        return self._replay


def _jobs(count: int) -> str:
    return "job" if count == 1 else "jobs"
