"""The JWKS sources of the served table: one per URI, shared by every route that names it, kept across swaps.

Routes with ``auth.jwt.jwksUri`` verify tokens against keys each data-plane replica fetches in the
background (:class:`~kubegate.dataplane.policies.jwks.JwksSource`). A table push must not refetch every key
set, and two routes naming one issuer must not fetch it twice, so the sources live here, by URI, rather than
in the routes: a snapshot being built asks :meth:`JwksSources.source` for its URIs (from any thread: the admin
API builds snapshots on its worker), and :meth:`JwksSources.sync`, called on the event loop when a snapshot
is swapped in, starts the sources it uses and closes those no route names any more.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from kubegate.dataplane.policies.jwks import JwksSource


class JwksSources:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sources: dict[str, JwksSource] = {}
        self._lock = threading.Lock()

    def source(self, uri: str) -> JwksSource:
        """The source of ``uri`` (created, not started, when new)."""
        with self._lock:
            found = self._sources.get(uri)
            if found is None:
                found = self._sources[uri] = JwksSource(uri, self._clock)
            return found

    def sync(self, wanted: set[str]) -> None:
        """On the event loop, at a swap: start the sources of ``wanted`` URIs, close the others."""
        with self._lock:
            for uri in list(self._sources):
                if uri in wanted:
                    self._sources[uri].start()
                else:
                    self._sources.pop(uri).close()

    def close(self) -> None:
        self.sync(set())

    def state(self) -> dict[str, Any]:
        """For the admin API: each source's state (no key material; user info stripped from the URI)."""
        with self._lock:
            sources = list(self._sources.values())
        return {"jwks": [source.state() for source in sources]}
