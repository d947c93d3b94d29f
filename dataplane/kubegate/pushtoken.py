"""The push token through a rotation: what both ends of a push (operator and data plane) agree on.

The operator sends the token with ``PUT /table``, ``PATCH /table`` and ``PUT /replicas``; every data-plane
replica checks it. Both read it from a file mounted from one Secret, on every push, and the kubelet
updates each pod's copy of a Secret at its own moment (a minute or more apart). So that a rotation
refuses no push, each side remembers the token it saw before the last change for :data:`GRACE_SECONDS`
after it noticed that change (:class:`RotatingToken`): the operator sends its current token as
``Authorization: Bearer`` and, during its grace, the previous one in :data:`PREVIOUS_HEADER`; a data plane
admits a push when either presented token is its current token or, during its grace, its previous one
(:func:`admits`). Whichever side's file changes first, one of the four pairs matches.

Here, rather than in the data plane or the operator, because both import it (the operator may not import
the data plane). Tokens are never logged and never part of a ``repr``.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Callable, Iterable

logger = logging.getLogger("kubegate.pushtoken")

#: The request header carrying the sender's previous token during its grace period.
PREVIOUS_HEADER = "kubegate-previous-token"
#: How long each side keeps accepting (data plane) or sending (operator) the token before a rotation,
#: counted from the moment it noticed the change.
GRACE_SECONDS = 600.0
#: Bytes of randomness in a token the operator generates (``secrets.token_urlsafe``: 43 characters).
TOKEN_BYTES = 32


def generate() -> str:
    """A new push token: :data:`TOKEN_BYTES` random bytes from :mod:`secrets`, URL-safe base64."""
    return secrets.token_urlsafe(TOKEN_BYTES)


class RotatingToken:
    """The current token (read through ``read`` at every call of :meth:`current`) and, for ``grace``
    seconds after it last changed, the one before it.

    A read that finds no token (None: the file is missing, unreadable or empty) is not a change: the
    token before it stays the one a later token is compared with. The first token seen is no rotation.
    """

    def __init__(
        self,
        read: Callable[[], str | None],
        *,
        grace: float = GRACE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self.grace = grace
        self._clock = clock
        self._last: str | None = None  # the last token read (None: none read yet)
        self._previous: str | None = None
        self._changed_at = 0.0
        self.rotations = 0  # changes seen since start

    def current(self) -> str | None:
        """Read the token; None when there is none now."""
        token = self._read()
        if token is not None and token != self._last:
            if self._last is not None:
                self._previous = self._last
                self._changed_at = self._clock()
                self.rotations += 1
                logger.info("the push token changed: the previous one is kept for %.0f s", self.grace)
            self._last = token
        return token

    def previous(self) -> str | None:
        """The token before the last change, while its grace lasts (as of the last :meth:`current`)."""
        if self._previous is not None and self._clock() - self._changed_at >= self.grace:
            self._previous = None  # forgotten for good
        return self._previous

    def accepted(self) -> tuple[str, ...]:
        """The tokens a push may carry now: the current one (if any), then the previous one in its grace.
        Nothing when there is no current token (a token file that cannot be read refuses every push)."""
        token = self.current()
        if token is None:
            return ()
        previous = self.previous()
        return (token,) if previous is None or previous == token else (token, previous)

    def grace_left(self) -> float:
        """Seconds the previous token is still accepted or sent (0 when there is none)."""
        if self.previous() is None:
            return 0.0
        return max(0.0, self.grace - (self._clock() - self._changed_at))

    def __repr__(self) -> str:
        state = "set" if self._last is not None else "none yet"
        previous = f", previous for {self.grace_left():.0f} s" if self.previous() is not None else ""
        return f"<RotatingToken {state}{previous}, {self.rotations} rotations>"


def admits(presented: Iterable[str], accepted: Iterable[str]) -> bool:
    """Whether any presented token is one of the accepted ones. Every pair is compared in constant time
    (:func:`hmac.compare_digest`), and all of them, whatever matched first."""
    wanted = [token.encode() for token in accepted if token]
    ok = False
    for token in presented:
        if not token:
            continue
        given = token.encode()
        for candidate in wanted:
            ok |= hmac.compare_digest(given, candidate)
    return ok
