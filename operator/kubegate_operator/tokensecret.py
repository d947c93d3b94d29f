"""The push token's Secret, made by the operator rather than by a template (``--push-token-secret``).

A token generated while templating (Helm's ``randAlphaNum``) changes on every render where ``lookup`` has
no cluster to read (``helm template``, Argo CD, Flux): the Secret is forever out of sync and each sync
rotates the token. So by default the chart renders no token Secret, and each operator replica makes sure
at start that it exists: it reads it (``get``), and when there is none creates it (``create``) with
:func:`kubegate.pushtoken.generate` (32 random bytes from :mod:`secrets`). An existing Secret is never
written, whoever made it: a token set by hand (or rotated) stays. Two replicas starting together both
find none and both create: the one that gets 409 AlreadyExists reads the other's.

The token found or made is :attr:`PushTokenSecret.token`; the operator sends it until its own mounted copy
of the Secret (``--push-token-file``, an optional volume: the kubelet fills it some time after the Secret
exists) has a token, and from then on the file, which follows rotations (see :func:`token_source`).
RBAC: ``get`` and ``create`` on Secrets in the Secret's namespace (create cannot be limited by name).
The token never reaches a log line: reads are unparsed by the client (``_preload_content=False``), and
errors carry the HTTP status and reason only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from kubegate import pushtoken
from kubegate_operator.settings import ObjectRef

logger = logging.getLogger("kubegate.operator.pushtoken")

LABELS = {
    "app.kubernetes.io/name": "kubegate",
    "app.kubernetes.io/component": "push-token",
    "app.kubernetes.io/part-of": "kubegate",  # a kubegate Secret: never a route's (state.ClusterState)
    "app.kubernetes.io/managed-by": "kubegate-operator",
}

ReadSecret = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]  # (namespace, name)
CreateSecret = Callable[[ObjectRef, Mapping[str, Any]], Awaitable[bool]]  # False: 409, it exists


def secret_body(ref: ObjectRef, key: str, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": ref.name, "namespace": ref.namespace, "labels": dict(LABELS)},
        "data": {key: base64.b64encode(token.encode()).decode()},
    }


class PushTokenSecret:
    """The token of the Secret ``ref`` (key ``key``), read or made by :meth:`ensure`."""

    def __init__(
        self,
        *,
        ref: ObjectRef,
        key: str,
        read: ReadSecret,
        create: CreateSecret,
        generate: Callable[[], str] = pushtoken.generate,
    ) -> None:
        self.ref = ref
        self.key = key
        self._read = read
        self._create = create
        self._generate = generate
        self.token: str | None = None
        self.created = False  # this replica made the Secret

    def __repr__(self) -> str:
        state = "created" if self.created else "read" if self.token else "not known"
        return f"<PushTokenSecret {self.ref} key {self.key!r}: {state}>"

    async def ensure(self) -> str | None:
        """The token of the Secret, which is created if it does not exist. None (logged) when the Secret
        exists without a usable token under ``key``: it is left alone. Raises on an API error."""
        for _ in range(3):  # read, create, read the other replica's: more is a Secret deleted meanwhile
            found = await self._read(self.ref.namespace, self.ref.name)
            if found is not None:
                self.token = self._token_of(found)
                return self.token
            token = self._generate()
            if await self._create(self.ref, secret_body(self.ref, self.key, token)):
                logger.info("push token Secret %s created (key %r, a new random token)", self.ref, self.key)
                self.token, self.created = token, True
                return token
            logger.info("push token Secret %s was created by another replica meanwhile: reading it", self.ref)
        raise RuntimeError(f"push token Secret {self.ref} keeps disappearing")

    def _token_of(self, secret: Mapping[str, Any]) -> str | None:
        encoded = (secret.get("data") or {}).get(self.key)
        try:
            token = base64.b64decode(encoded or "", validate=True).decode().strip()
        except (binascii.Error, UnicodeDecodeError, TypeError):
            token = ""
        if not token:
            logger.error(
                "push token Secret %s has no token under key %r (left as it is): pushes wait for the "
                "token file",
                self.ref,
                self.key,
            )
            return None
        logger.info("push token Secret %s exists: using its token", self.ref)
        return token

    async def ensure_forever(self, *, initial: float = 1.0, most: float = 30.0) -> None:
        """:meth:`ensure` until it answers (API errors retried with backoff, each logged)."""
        delay = initial
        while True:
            try:
                await self.ensure()
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the API is away or refuses: try again
                logger.warning(
                    "push token Secret %s not read or created: %s (again in %.0f s)", self.ref, error, delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, most)


def token_source(
    path: Path | None, fallback: Callable[[], str | None] = lambda: None
) -> Callable[[], str | None]:
    """The token to send: the file's (re-read on every push: it follows rotations) when the file has one,
    else ``fallback`` (the token of :class:`PushTokenSecret`, while the kubelet has not filled the mounted
    volume yet). A file that cannot be read is logged once when that starts and once when it ends, not
    on every push."""
    problem: list[str | None] = [None]

    def report(now: str | None) -> None:
        if now != problem[0]:
            if now is not None:
                known = fallback() is not None
                (logger.info if known else logger.error)(
                    "%s: %s", now, "sending the token of the push token Secret" if known else "no push token"
                )
            else:
                logger.info("push token file %s read", path)
            problem[0] = now

    def read() -> str | None:
        if path is None:
            return fallback()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            report(f"push token file {path} does not exist (yet)")
            return fallback()
        except (OSError, UnicodeDecodeError) as error:
            report(
                f"cannot read the push token file {path}: {getattr(error, 'strerror', None) or 'not UTF-8'}"
            )
            return fallback()
        if not token:
            report(f"push token file {path} is empty")
            return fallback()
        report(None)
        return token

    return read
