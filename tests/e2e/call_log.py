"""What the fake Discord saw: REST calls and gateway frames, with event-driven waiting.

``EventLog.wait_for`` resolves the moment a matching entry is appended (futures, no polling), so a
test waits exactly as long as the bot takes and fails with the log in its message when it times out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One REST request, as received, and what the fake answered.

    Attributes:
        method: HTTP method, upper case.
        path: the path after the API base (``/channels/1/messages``); unversioned paths as received.
        query: the query string.
        json: the JSON body, or ``payload_json`` of a multipart body; None when there was none.
        files: uploaded files by filename (``files[n]`` parts), their bytes.
        status: the HTTP status the fake answered with.
        response: the JSON the fake answered with (None for 204).
        received_at: ``loop.time()`` when the request arrived.
        unknown: no route of the fake matched (a real Discord would have said 404 too).
    """

    method: str
    path: str
    query: Mapping[str, str]
    json: Any
    files: Mapping[str, bytes]
    status: int
    response: Any
    received_at: float
    unknown: bool = False


@dataclass(frozen=True)
class GatewayFrame:
    """One gateway payload, in either direction.

    Attributes:
        direction: ``"recv"`` (client to fake), ``"send"`` (fake to client), or ``"closed"`` (the
            connection ended; ``op`` is then the close code).
        op: the opcode.
        d: the payload data.
        t: the event name for dispatches (op 0).
        s: the sequence number for dispatches.
        session_id: the gateway session it belongs to, once known.
        at: ``loop.time()`` when it was sent or received.
    """

    direction: str
    op: int
    d: Any
    t: str | None = None
    s: int | None = None
    session_id: str | None = None
    at: float = field(default=0.0)


class EventLog(Generic[T]):
    """An append-only list that coroutines can wait on."""

    def __init__(self, describe: Callable[[T], str] = repr) -> None:
        self._items: list[T] = []
        self._waiters: list[tuple[Callable[[T], bool], int, asyncio.Future[T]]] = []
        self._describe = describe

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> T:
        return self._items[index]

    def snapshot(self) -> list[T]:
        return list(self._items)

    def append(self, item: T) -> None:
        index = len(self._items)
        self._items.append(item)
        still_waiting = []
        for predicate, since, future in self._waiters:
            if future.done():
                continue
            if index >= since and self._matches(predicate, item, future):
                future.set_result(item)
            elif not future.done():
                still_waiting.append((predicate, since, future))
        self._waiters = still_waiting

    @staticmethod
    def _matches(predicate: Callable[[T], bool], item: T, future: asyncio.Future[T]) -> bool:
        # A predicate that raises fails the waiting test rather than the server handler.
        try:
            return predicate(item)
        except Exception as exc:
            future.set_exception(exc)
            return False

    async def wait_for(
        self,
        predicate: Callable[[T], bool],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 -- a default deadline: a test that forgets one still stops
        since: int = 0,
    ) -> T:
        """The first entry at index ``since`` or later that matches; waits for it when there is none yet.

        Raises:
            TimeoutError: nothing matched within ``timeout`` seconds; the message lists what arrived.
        """
        for item in self._items[since:]:
            if predicate(item):
                return item
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, since, future))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            seen = "\n  ".join(self._describe(i) for i in self._items[since:][-20:]) or "(nothing)"
            raise TimeoutError(f"nothing matched within {timeout}s; last entries:\n  {seen}") from None
