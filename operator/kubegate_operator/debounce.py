"""Debouncing: a burst of input changes becomes one compile, and a lone change is still live quickly.

A compile is due ``holdoff`` seconds after the last change, but never later than ``max_delay`` after the
first change of the burst (so a steady trickle cannot starve compiles). The decision is a pure state
machine over an injected clock; :class:`Trigger` is the small asyncio wrapper the reconciler waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable


class Debounce:
    def __init__(self, *, holdoff: float, max_delay: float) -> None:
        self.holdoff = holdoff
        self.max_delay = max(max_delay, holdoff)
        self._first: float | None = None
        self._last: float | None = None
        self.pokes = 0

    def poke(self, now: float) -> None:
        """An input changed at ``now``."""
        if self._first is None:
            self._first = now
        self._last = now
        self.pokes += 1

    @property
    def pending(self) -> bool:
        return self._first is not None

    @property
    def first_change(self) -> float | None:
        return self._first

    def deadline(self) -> float | None:
        """When the pending burst is due, or None when nothing is pending."""
        if self._first is None or self._last is None:
            return None
        return min(self._last + self.holdoff, self._first + self.max_delay)

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def take(self) -> float | None:
        """Start the compile: forget the burst; returns when its first change happened."""
        first = self._first
        self._first = self._last = None
        return first

    def __repr__(self) -> str:
        if self._first is None:
            return f"<Debounce idle holdoff={self.holdoff} max_delay={self.max_delay}>"
        return f"<Debounce pending since {self._first:.3f}, due {self.deadline():.3f}, {self.pokes} pokes>"


class Trigger:
    """Async wrapper: ``poke()`` from event handlers, ``await wait()`` in the reconciler loop."""

    def __init__(
        self, *, holdoff: float, max_delay: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.debounce = Debounce(holdoff=holdoff, max_delay=max_delay)
        self._clock = clock
        self._event = asyncio.Event()

    def poke(self) -> None:
        self.debounce.poke(self._clock())
        self._event.set()

    async def wait(self) -> float:
        """Wait until a burst is due; returns (and forgets) the time of its first change."""
        while True:
            deadline = self.debounce.deadline()
            if deadline is None:
                await self._event.wait()
                self._event.clear()
                continue
            delay = deadline - self._clock()
            if delay <= 0:
                first = self.debounce.take()
                assert first is not None
                return first
            self._event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout=delay)
