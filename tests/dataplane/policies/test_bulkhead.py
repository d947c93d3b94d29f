"""The bulkhead: a concurrency cap with a FIFO queue of waiters, whose timers belong to the caller.

Aspects: slots up to ``maxConcurrent``; rejection when the queue is full or ``maxQueue`` is 0 (counted);
a released slot handed to the oldest waiter (which keeps it taken); cancel (queue timeout) before and
after the hand-off; a waiter that raises does not leak its slot; seconds for the caller's timer.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kubegate.compiler.policy import BulkheadPolicy
from kubegate.dataplane.policies.bulkhead import Bulkhead


def test_slots_then_rejection_without_a_queue() -> None:
    bh = Bulkhead(BulkheadPolicy(max_concurrent=2, max_queue=0, queue_timeout_ms=1500))
    assert bh.queue_timeout == 1.5
    assert [bh.try_acquire() for _ in range(3)] == [True, True, False]
    assert bh.enqueue(lambda: None) is False
    assert (bh.in_flight, bh.rejected, bh.queued) == (2, 1, 0)
    bh.release()
    assert bh.try_acquire() is True
    bh.release()
    bh.release()
    bh.release()  # one release too many does not go negative
    assert bh.in_flight == 0


def test_released_slots_go_to_the_oldest_waiter_first() -> None:
    bh = Bulkhead(BulkheadPolicy(max_concurrent=1, max_queue=3))
    resumed: list[str] = []

    def waiter(name: str) -> Callable[[], None]:
        def resume() -> None:
            resumed.append(name)

        return resume

    assert bh.try_acquire()
    a, b, c, d = (waiter(n) for n in "abcd")
    assert bh.enqueue(a) and bh.enqueue(b) and bh.enqueue(c)
    assert bh.enqueue(d) is False
    assert (bh.queued, bh.rejected, bh.waiting) == (3, 1, 3)
    assert bh.try_acquire() is False  # a newcomer does not overtake the queue
    bh.release()
    assert resumed == ["a"] and bh.in_flight == 1  # the slot stays taken, by a
    assert repr(bh) == "<Bulkhead 1/1 in flight, 2/3 waiting, rejected=1>"
    bh.release()
    assert resumed == ["a", "b"]
    assert bh.cancel(c) is True  # c's queue timeout fired while it waited
    assert bh.cancel(b) is False  # b already has its slot: the timer lost the race
    bh.release()
    assert resumed == ["a", "b"] and bh.in_flight == 0 and bh.cancelled == 1


def test_a_waiter_that_raises_passes_the_slot_on() -> None:
    bh = Bulkhead(BulkheadPolicy(max_concurrent=1, max_queue=2))
    resumed: list[str] = []

    def broken() -> None:
        raise RuntimeError("client gone")

    def fine() -> None:
        resumed.append("fine")

    assert bh.try_acquire() and bh.enqueue(broken) and bh.enqueue(fine)
    with pytest.raises(RuntimeError):
        bh.release()
    assert resumed == ["fine"] and bh.in_flight == 1 and bh.waiting == 0
