"""A bulkhead per route: a cap on the requests in flight, so that one slow backend cannot take them all.

``maxConcurrent`` requests of the route run at once per replica; up to ``maxQueue`` more wait in a FIFO
queue, each for at most ``queueTimeout``; the rest are refused (503 "route at capacity" with
``Retry-After``). The queue holds *waiters*, plain callables from the proxy that resume the exchange:
:meth:`Bulkhead.release` hands the freed slot straight to the oldest waiter (the slot stays taken, so no
newcomer can overtake the queue). The timer is the caller's: it arms one for ``queue_timeout`` seconds
after a successful :meth:`enqueue` and, when it fires, calls :meth:`cancel`; True means the request was
still waiting and gets its 503, False that it already got a slot (the timer lost the race).

Flow for a request: ``try_acquire()`` → run; else ``enqueue(resume)`` → wait; else 503 (counted in
``rejected``). Every request that ran calls ``release()`` exactly once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from kubegate.compiler.policy import BulkheadPolicy

Waiter = Callable[[], None]


class Bulkhead:
    """See the module docstring. Counters: ``rejected`` (queue full), ``queued``, ``cancelled``."""

    __slots__ = (
        "_queue",
        "cancelled",
        "in_flight",
        "max_concurrent",
        "max_queue",
        "queue_timeout",
        "queued",
        "rejected",
    )

    def __init__(self, config: BulkheadPolicy) -> None:
        self.max_concurrent = config.max_concurrent
        self.max_queue = config.max_queue
        self.queue_timeout = config.queue_timeout_ms / 1000
        self.in_flight = 0
        self._queue: deque[Waiter] = deque()
        self.rejected = 0
        self.queued = 0
        self.cancelled = 0

    def try_acquire(self) -> bool:
        """Take a slot if one is free (and nobody is queued for one)."""
        if self.in_flight < self.max_concurrent and not self._queue:
            self.in_flight += 1
            return True
        return False

    def enqueue(self, waiter: Waiter) -> bool:
        """Wait for a slot: ``waiter()`` is called when it is handed one. False (rejected): queue full."""
        if len(self._queue) >= self.max_queue:
            self.rejected += 1
            return False
        self._queue.append(waiter)
        self.queued += 1
        return True

    def release(self) -> None:
        """A request ended: its slot goes to the oldest waiter, or becomes free."""
        if self._queue:
            waiter = self._queue.popleft()
            try:
                waiter()
            except BaseException:
                self.release()  # the waiter will never release the slot it was handed
                raise
        elif self.in_flight > 0:
            self.in_flight -= 1

    def cancel(self, waiter: Waiter) -> bool:
        """Stop waiting (queue timeout, client gone); True if ``waiter`` was still in the queue."""
        try:
            self._queue.remove(waiter)
        except ValueError:
            return False
        self.cancelled += 1
        return True

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def __repr__(self) -> str:
        return (
            f"<Bulkhead {self.in_flight}/{self.max_concurrent} in flight, "
            f"{len(self._queue)}/{self.max_queue} waiting, rejected={self.rejected}>"
        )
