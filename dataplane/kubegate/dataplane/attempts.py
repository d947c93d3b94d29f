"""A request's way through a route's traffic policies: admission, attempts, outcomes and retries.

Only requests of routes with policies get an :class:`Attempts` (``Exchange.attempts``); the plain path
never reaches this module. The exchange calls it at five named points and it calls the exchange back
through the small :class:`Exchange` protocol below:

1. **admit** (the route matched, the request head is valid): the bulkhead takes a slot, queues the
   request (it resumes from the bulkhead's hand-off, or gets 503 "route at capacity" when its queue
   timeout fires) or refuses it (503). This is the step that may wait; the same shape (return now, resume
   from a callback) is where asynchronous policies such as a Redis rate limit plug in, without a
   coroutine for the routes that have none.
2. **begin**: the weighted split picks a backend; its circuit breaker may refuse (503 "circuit open"
   with Retry-After); its balancer picks an endpoint (least request, consistent hash, ... skipping
   ejected and unhealthy endpoints); the exchange sends the attempt (``Exchange.send``).
3. **succeeded** / **failed**, once per attempt: at the response head (a 5xx is a failure), or on a
   connect failure, reset or per-try timeout. Outcomes feed the breaker and the outlier detector. A
   failure may start a retry (see :mod:`.policies.retry`): only before any response byte went to the
   client, with a body that was fully received and kept (at most :data:`REPLAY_LIMIT`; after a connect
failure nothing was sent, so any body still waiting in the buffer goes to the next attempt), within the
   attempts and the retry budget, after a jittered backoff, to another endpoint when there is one.
4. **body**: request body bytes as sent, kept for a replay.
5. **finished**: the exchange ended however it ended: slots, budget and in-flight counts are returned.

Gateway-made answers (503 for an open circuit or a full bulkhead) never count against a backend.
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

from kubegate.dataplane.policies.endpoints import Addr, EndpointState
from kubegate.dataplane.policies.runtime import PolicyBackend, RoutePolicies
from kubegate.dataplane.upstreamtls import UpstreamTls

#: Request bodies up to this size (framed as sent) are kept so that a failed attempt can be retried.
REPLAY_LIMIT: Final = 64 * 1024


class Exchange(Protocol):
    """What :class:`Attempts` needs of the proxy's exchange."""

    done: bool
    body_done: bool
    resp_started: bool
    method: bytes

    def fail(self, status: int, message: str, *, retry_after: int | None = None) -> None: ...
    def send(self, endpoint: Addr, tls: UpstreamTls | None) -> None: ...
    def try_timed_out(self) -> None: ...


class Attempts:
    """One request's policy state; see the module docstring."""

    __slots__ = (
        "_epoch",
        "_queue_timer",
        "_retry_timer",
        "_try_timer",
        "backend",
        "count",
        "ep",
        "ex",
        "flushed",
        "hash_key",
        "last",
        "loop",
        "pol",
        "replay",
        "replay_bytes",
        "retrying",
        "slot",
        "started",
    )

    def __init__(
        self, ex: Exchange, pol: RoutePolicies, loop: asyncio.AbstractEventLoop, hash_key: bytes | None
    ) -> None:
        self.ex = ex
        self.pol = pol
        self.loop = loop
        self.hash_key = hash_key
        self.backend: PolicyBackend | None = None
        self.ep: EndpointState | None = None  # the endpoint of the attempt in flight
        self.last: Addr | None = None  # the endpoint of the last attempt (answered or not)
        self.count = 0  # attempts made
        self.slot = False  # holds a bulkhead slot
        self.started = False  # counted in the retry budget's requests
        self.retrying = False  # holds a retry budget slot
        self.replay: list[bytes] | None = [] if pol.retrier is not None else None
        self.replay_bytes = 0
        self.flushed = False  # an attempt has sent the head (and any body) upstream
        self._epoch: int | None = None
        self._queue_timer: asyncio.TimerHandle | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self._try_timer: asyncio.TimerHandle | None = None

    # --- 1. admission -----------------------------------------------------------------------------------
    def admit(self) -> None:
        bulkhead = self.pol.bulkhead
        if bulkhead is not None:
            if bulkhead.try_acquire():
                self.slot = True
            elif bulkhead.enqueue(self._slot_granted):
                self._queue_timer = self.loop.call_later(bulkhead.queue_timeout, self._queue_expired)
                return
            else:
                self.ex.fail(503, "route at capacity", retry_after=1)
                return
        self.begin()

    def _slot_granted(self) -> None:
        self.slot = True
        if self._queue_timer is not None:
            self._queue_timer.cancel()
            self._queue_timer = None
        if self.ex.done:  # cannot happen (finished() cancels the wait); never keep a slot for nobody
            self.finished()
            return
        self.begin()

    def _queue_expired(self) -> None:
        self._queue_timer = None
        bulkhead = self.pol.bulkhead
        if bulkhead is not None and bulkhead.cancel(self._slot_granted) and not self.ex.done:
            self.pol.queue_timeouts += 1
            self.ex.fail(503, "route at capacity", retry_after=1)

    # --- 2. the first attempt ---------------------------------------------------------------------------
    def begin(self) -> None:
        ex = self.ex
        backend = self.pol.split.pick()
        if backend is None or backend.error is not None:
            ex.fail(500, backend.error if backend is not None and backend.error else "no usable backend")
            return
        self.backend = backend
        now = self.loop.time()
        breaker = backend.breaker
        if breaker is not None:
            if not breaker.allow(now):
                ex.fail(503, "circuit open", retry_after=breaker.retry_after(now))
                return
            self._epoch = breaker.epoch
        retrier = self.pol.retrier
        if retrier is not None:
            retrier.budget.request_started()
            self.started = True
        ep = backend.balancer.pick(now, self.hash_key)
        if ep is None:
            if breaker is not None:
                breaker.abandon(self._epoch)
            ex.fail(503, f"no ready endpoint for backend {backend.name}")
            return
        self._send(ep)

    def _send(self, ep: EndpointState) -> None:
        backend = self.backend
        assert backend is not None
        backend.endpoints.start(ep)
        self.ep = ep
        self.last = ep.addr
        self.count += 1
        self.pol.attempts += 1
        retrier = self.pol.retrier
        if retrier is not None and retrier.per_try_timeout is not None:
            self._try_timer = self.loop.call_later(retrier.per_try_timeout, self._try_timed_out)
        self.ex.send(ep.addr, backend.tls)

    # --- 3. outcomes and retries ------------------------------------------------------------------------
    def succeeded(self) -> None:
        self._outcome(True)

    def gave_up(self) -> None:
        """The attempt in flight failed and nothing may follow it (the whole request timed out)."""
        self._outcome(False)

    def failed(self, failure: str, status: int | None = None) -> bool:
        """An attempt failed (``failure``: connect-failure, reset, timeout, status). True: a retry follows."""
        self._outcome(False)
        ex = self.ex
        retrier = self.pol.retrier
        if (
            retrier is None
            or ex.done
            or ex.resp_started
            # nothing sent yet (a connect failure): the body is still buffered, whole or not; else it
            # must have been received whole and kept
            or (self.flushed and (not ex.body_done or self.replay is None))
            or self.count > retrier.attempts
            or not retrier.should_retry(ex.method, failure, status)
            or not retrier.budget.try_start_retry()
        ):
            return False
        self.retrying = True
        delay = retrier.backoff(self.count - 1, self.pol.rng)
        self._retry_timer = self.loop.call_later(delay, self._retry)
        return True

    def _outcome(self, success: bool) -> None:
        if self._try_timer is not None:
            self._try_timer.cancel()
            self._try_timer = None
        ep, self.ep = self.ep, None
        backend = self.backend
        if ep is None or backend is None:
            return
        backend.endpoints.finish(ep)
        if self.retrying and self.count > 1:  # the retried attempt is over: its budget slot is free
            self.retrying = False
            retrier = self.pol.retrier
            if retrier is not None:
                retrier.budget.retry_finished()
        now = self.loop.time()
        if backend.breaker is not None:
            backend.breaker.record(success, now, self._epoch)
        if backend.outlier is not None:
            backend.outlier.record(ep, success, now)

    def _retry(self) -> None:
        self._retry_timer = None
        backend = self.backend
        if self.ex.done or backend is None:
            return
        ep = backend.balancer.pick(self.loop.time(), self.hash_key, exclude=self.last)
        if ep is None:
            self.ex.fail(503, f"no ready endpoint for backend {backend.name}")
            return
        self._send(ep)

    def _try_timed_out(self) -> None:
        self._try_timer = None
        self.ex.try_timed_out()

    # --- 4. the body, kept for a replay -----------------------------------------------------------------
    def body(self, data: bytes) -> None:
        replay = self.replay
        if replay is not None:
            self.replay_bytes += len(data)
            if self.replay_bytes > REPLAY_LIMIT:
                self.replay = None  # too big to keep: this request is not retried
            else:
                replay.append(data)

    # --- 5. the end -------------------------------------------------------------------------------------
    def finished(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        if self._try_timer is not None:
            self._try_timer.cancel()
            self._try_timer = None
        bulkhead = self.pol.bulkhead
        if self._queue_timer is not None:
            self._queue_timer.cancel()
            self._queue_timer = None
            if bulkhead is not None:
                bulkhead.cancel(self._slot_granted)
        ep, self.ep = self.ep, None
        if ep is not None and self.backend is not None:  # ended without an outcome (client gone, timeout)
            self.backend.endpoints.finish(ep)
            if self.backend.breaker is not None:
                self.backend.breaker.abandon(self._epoch)
        if self.slot and bulkhead is not None:
            self.slot = False
            bulkhead.release()
        retrier = self.pol.retrier
        if retrier is not None:
            if self.retrying:
                self.retrying = False
                retrier.budget.retry_finished()
            if self.started:
                self.started = False
                retrier.budget.request_finished()
