"""An issuer's signing keys, fetched from its ``jwksUri`` in the background: a JWT route's key source.

Every data-plane replica fetches the JWKS of each JWT route itself (the route table carries the URI, not
the keys). Unlike the other modules of this package, this one does I/O, but never on the hot path: the
verifier (:class:`~kubegate.dataplane.policies.jwt.JwtVerifier`) only reads :meth:`JwksSource.current`,
a plain attribute; fetching happens in tasks and timers on the event loop.

- **First load**: :meth:`JwksSource.start` fetches at once; until that first attempt ends ``loading`` is
  true, the verifier answers *pending*, and the proxy parks the exchange with :meth:`~JwksSource.add_waiter`
  (every waiter is called once when the attempt ends, successfully or not, or when the source is closed).
  When it failed, the route answers 503 until a retry succeeds.
- **Refresh**: the key set is cached for the response's ``Cache-Control: max-age`` clamped to
  ``[min_ttl, max_ttl]`` (``no-cache``/``no-store``: ``min_ttl``; none: ``default_ttl``) and refetched in
  the background at :data:`REFRESH_AT` of that TTL, so that it never goes stale while the issuer answers.
- **Issuer down**: a failed fetch (connection, timeout, non-200, over :data:`MAX_BYTES`, not a JWKS, no
  usable key) keeps the last good key set serving, for as long as it takes, and retries with a backoff
  from :data:`BACKOFF_FIRST` doubling to :data:`BACKOFF_MAX` seconds. ``state()`` shows the error.
- **Unknown kid**: a token naming a ``kid`` that is not in the set asks for a refresh (the issuer may
  have rotated); at most one per ``unknown_kid_interval`` (injected clock), so that tokens with random
  ``kid`` values cannot make the gateway hammer the issuer. Until the refresh lands such tokens fail (401).
- **Generation**: ``generation`` grows only when the *content* of the key set changes (a refetch of the
  same keys keeps it), so the verifier's token cache survives routine refreshes and is invalidated by a
  rotation: tokens of a key that left the set stop being admitted.

Keys are parsed leniently one by one (:func:`~kubegate.dataplane.policies.jwt.parse_key` with
``allow_secret=False``): symmetric keys and keys that carry private members are skipped (a published
private key is a leaked one), as are keys with another ``use``, an unsupported ``kty``/``alg`` or bad
material; the skipped ones are listed by ``kid`` and reason in ``state()``, which never holds key material.
The default fetch uses httpx (imported on first use): plain GET, http or https only, no redirects
followed, ``timeout`` seconds in all, at most :data:`MAX_BYTES` of (decoded) body.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kubegate.dataplane.policies.jwt import KeySet

logger = logging.getLogger("kubegate.jwks")

#: ``fetch(uri) -> (status, headers with lower-case names, body)``
Fetch = Callable[[str], Awaitable[tuple[int, dict[str, str], bytes]]]
#: Largest JWKS response accepted (after content decoding).
MAX_BYTES = 1 << 20
#: Refresh when this fraction of the TTL has passed.
REFRESH_AT = 0.8
#: Retry delays after a failed fetch: the first, doubling up to the last.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
USER_AGENT = "kubegate-jwks"


class FetchError(Exception):
    """A JWKS response that cannot be used (the message is shown in ``state()`` and the logs)."""


async def http_fetch(
    uri: str, *, timeout: float = 5.0, max_bytes: int = MAX_BYTES
) -> tuple[int, dict[str, str], bytes]:
    """GET ``uri`` with httpx: status, headers (lower-case names), body of at most ``max_bytes``."""
    import httpx  # off the hot path, and only when some route has a jwksUri

    headers = {"user-agent": USER_AGENT, "accept": "application/jwk-set+json, application/json"}
    async with (
        httpx.AsyncClient(timeout=timeout, follow_redirects=False, headers=headers) as client,
        client.stream("GET", uri) as response,
    ):
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_bytes:
            raise FetchError(f"response larger than {max_bytes} bytes")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise FetchError(f"response larger than {max_bytes} bytes")
        return response.status_code, {k.lower(): v for k, v in response.headers.items()}, bytes(body)


def cache_ttl(cache_control: str | None, *, default: float, low: float, high: float) -> float:
    """Seconds to keep a response: ``max-age`` clamped to ``[low, high]``; no-cache/no-store: ``low``."""
    uncached = False
    for directive in (cache_control or "").split(","):
        name, _, value = directive.partition("=")
        name = name.strip().lower()
        if name == "max-age":
            value = value.strip().strip('"')
            if value.isdigit():
                return min(max(float(value), low), high)
        elif name in ("no-cache", "no-store"):
            uncached = True
    return low if uncached else default


def redact_uri(uri: str) -> str:
    """``uri`` without its user-info (a password must not reach the admin view or the logs)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


class JwksSource:
    """A :class:`~kubegate.dataplane.policies.jwt.KeySource` backed by a JWKS URI (see the module docstring).

    ``clock`` (monotonic seconds) drives the unknown-kid rate limit and the ages in ``state()``; the
    refresh timers run on ``loop`` (by default the loop running when :meth:`start` is called).
    """

    def __init__(
        self,
        uri: str,
        clock: Callable[[], float],
        fetch: Fetch | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        min_ttl: float = 30.0,
        default_ttl: float = 300.0,
        max_ttl: float = 86400.0,
        unknown_kid_interval: float = 30.0,
        timeout: float = 5.0,
    ) -> None:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("a JWKS URI must be an absolute http or https URL")
        self.uri = uri
        self._clock = clock
        self._fetch: Fetch = fetch if fetch is not None else functools.partial(http_fetch, timeout=timeout)
        self._loop = loop
        self._min_ttl = min_ttl
        self._default_ttl = default_ttl
        self._max_ttl = max_ttl
        self._unknown_kid_interval = unknown_kid_interval
        self._timeout = timeout
        self._keys: KeySet | None = None
        self._waiters: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._backoff = 0.0
        self._last_unknown_kid: float | None = None
        self._started = False
        self._closed = False
        self.generation = 0
        self.loading = False
        self.ttl: float | None = None  # of the last good response
        self.last_success: float | None = None  # clock() when the last fetch succeeded
        self.last_error: str | None = None  # why the last fetch failed (None after a success)
        self.fetches = 0  # attempts, in total
        self.failures = 0  # ... that failed
        self.unknown_kid_refreshes = 0  # refreshes asked for by unknown kids (after the rate limit)

    # -- KeySource --------------------------------------------------------------------------------------

    def current(self) -> KeySet | None:
        return self._keys

    def refresh_unknown_kid(self) -> None:
        """A token named a kid that is not in the set: refetch, unless one ran in the last interval."""
        if not self._started or self._closed or self._task is not None:
            return  # a fetch in flight will bring the new keys, if there are any
        now = self._clock()
        if self._last_unknown_kid is not None and now - self._last_unknown_kid < self._unknown_kid_interval:
            return
        self._last_unknown_kid = now
        self.unknown_kid_refreshes += 1
        self._spawn()

    def add_waiter(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the first load has ended (soon, on the loop, if it already has)."""
        if self.loading:
            self._waiters.append(callback)
        elif self._loop is not None:
            self._loop.call_soon(callback)
        else:
            callback()

    # -- life cycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the first fetch (on ``loop``, or on the running loop when none was given)."""
        if self._started or self._closed:
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._started = True
        self.loading = self._keys is None
        self._spawn()

    def close(self) -> None:
        """Cancel the timer and a fetch in flight; wake the waiters (they will find no keys: 503)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._first_load_over()

    async def refresh(self) -> bool:
        """Fetch now (or join the fetch in flight) and wait for it; True when the key set is fresh."""
        if self._closed:
            return False
        if self._started:
            self._spawn()  # nothing to do when a fetch is in flight already: it is joined
        else:
            self.start()
        task = self._task
        if task is not None:
            await asyncio.wait({task})  # a task cancelled by close() ends the wait, it does not raise
        return self.last_error is None and not self._closed

    # -- fetching ---------------------------------------------------------------------------------------

    def _spawn(self) -> None:
        if self._closed or self._task is not None or self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._task = self._loop.create_task(self._run())

    async def _run(self) -> None:
        self.fetches += 1
        keys: KeySet | None = None
        headers: dict[str, str] = {}
        error: str | None = None
        try:
            status, headers, body = await asyncio.wait_for(self._fetch(self.uri), self._timeout)
            if status != 200:
                raise FetchError(f"HTTP {status}")
            if len(body) > MAX_BYTES:
                raise FetchError(f"response larger than {MAX_BYTES} bytes")
            keys = KeySet.from_jwks(body, allow_secret=False)
            if not keys:
                raise FetchError(
                    f"no usable key in the key set (skipped: {'; '.join(keys.skipped) or 'none'})"
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever went wrong with the issuer, keep serving and retry
            error = self._describe(exc)
        self._task = None
        if error is None and keys is not None:
            if self._keys is None or keys.fingerprint != self._keys.fingerprint:
                self.generation += 1
                logger.info("JWKS %s: %d keys %s", redact_uri(self.uri), len(keys), keys.kids)
            self._keys = keys
            self.last_success = self._clock()
            self.last_error = None
            self._backoff = 0.0
            self.ttl = cache_ttl(
                headers.get("cache-control"), default=self._default_ttl, low=self._min_ttl, high=self._max_ttl
            )
            self._schedule(self.ttl * REFRESH_AT)
        else:
            self.failures += 1
            self.last_error = error
            self._backoff = min(max(self._backoff * 2, BACKOFF_FIRST), BACKOFF_MAX)
            serving = "keeping the last good key set" if self._keys is not None else "no key set yet"
            logger.warning(
                "JWKS %s: fetch failed (%s); %s, retrying in %gs",
                redact_uri(self.uri),
                error,
                serving,
                self._backoff,
            )
            self._schedule(self._backoff)
        self._first_load_over()

    def _schedule(self, delay: float) -> None:
        if self._closed or self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, self._spawn)

    def _first_load_over(self) -> None:
        if not self.loading and not self._waiters:
            return
        self.loading = False
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            try:
                callback()
            except Exception:
                logger.exception("JWKS waiter failed")

    def _describe(self, exc: BaseException) -> str:
        text = str(exc).replace(self.uri, redact_uri(self.uri))
        if isinstance(exc, FetchError):
            return text
        name = type(exc).__name__
        return f"{name}: {text}"[:200] if text else name

    # -- admin view -------------------------------------------------------------------------------------

    @property
    def fetching(self) -> bool:
        """Is a fetch in flight?"""
        return self._task is not None

    @property
    def next_refresh_in(self) -> float | None:
        """Seconds until the scheduled refresh (None when none is: fetching, closed, not started)."""
        if self._timer is None or self._loop is None or self._timer.cancelled():
            return None
        return max(0.0, self._timer.when() - self._loop.time())

    def state(self) -> dict[str, Any]:
        """For ``/routes`` and the logs: where, how many keys, how fresh, the last error. No key material."""
        keys = self._keys
        return {
            "source": "jwksUri",
            "uri": redact_uri(self.uri),
            "loaded": keys is not None,
            "loading": self.loading,
            "keys": len(keys) if keys is not None else 0,
            "kids": keys.kids if keys is not None else [],
            "skipped": list(keys.skipped) if keys is not None else [],
            "generation": self.generation,
            "last_success_ago": None if self.last_success is None else self._clock() - self.last_success,
            "last_error": self.last_error,
            "ttl": self.ttl,
            "next_refresh_in": self.next_refresh_in,
            "fetches": self.fetches,
            "failures": self.failures,
            "unknown_kid_refreshes": self.unknown_kid_refreshes,
        }

    def __repr__(self) -> str:
        keys = len(self._keys) if self._keys is not None else 0
        status = "loading" if self.loading else "ok" if self.last_error is None else "failing"
        return f"<JwksSource {redact_uri(self.uri)} {status} keys={keys} generation={self.generation}>"
