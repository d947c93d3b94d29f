"""A cached response, its binary form, and the in-memory store: the bytes of the route cache.

:mod:`.cachecontrol` decides what is looked up, under which key, and what is stored for how long; this
module holds what was stored. A :class:`CachedResponse` is one entry: the status, the end-to-end header
lines (``b"name: value"``, no framing headers and no ``Age``: the proxy adds ``Age`` from
:meth:`CachedResponse.age` and frames the body itself), the body, and the times (wall-clock epoch
seconds, like HTTP dates): ``stored_at``, ``expires_at`` (fresh while ``now < expires_at``) and the age the
response already had when stored. It also records the Vary names of the response and the values the
fetching request had for them; :meth:`CachedResponse.matches` says whether it may answer another request
(same values, compared as :func:`.cachecontrol.vary_values` normalises them).

**Binary form** (:meth:`CachedResponse.encode`, for the Redis store): big-endian, struct-packed, no pickle::

    b"KGC" version:u8 (1) status:u16 stored_at:f64 expires_at:f64 age_at_store:f64
    lines:u32 { length:u32 bytes }*       vary:u32 { length:u32 name  length:i32 (-1: absent) value }*
    body_length:u32 body

:meth:`CachedResponse.decode` checks everything, since whatever reads Redis may meet foreign or damaged
bytes: the magic and version, every length against what is left, no trailing bytes, finite times, a
status from 100 to 999, header lines with a colon and without CR, LF or NUL (they are written to clients
verbatim), Vary names without them either. Anything else is a ``ValueError``, the only exception it
raises on any input bytes.

**MemoryStore** is one LRU per replica, shared by every route with the Memory store and bounded in bytes:
an entry costs :attr:`CachedResponse.size` (body, header lines, Vary values and a fixed
:data:`ENTRY_OVERHEAD`) plus the length of its key. ``get`` at ``now`` returns a fresh entry and makes
it the most recently used; a stale one is removed on the way (stale entries are never served, and none
is kept for revalidation). ``put`` replaces the key's entry and evicts the least recently used ones
until the new one fits (counted in ``evictions``); an entry that alone costs more than ``max_bytes`` is
refused (``False``): nothing else is evicted, and the key's previous entry, superseded by the response
that was refused, is dropped (not counted as an eviction). ``max_bytes = 0`` stores nothing. Pure like
the rest of the package: no clock (``now`` is passed in), no I/O, O(1) per call besides evictions.
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["ENCODING_VERSION", "ENTRY_OVERHEAD", "MAGIC", "CachedResponse", "MemoryStore"]

#: The fixed cost of an entry (the object, its lists and the table slot), in bytes.
ENTRY_OVERHEAD: Final = 200
#: The first bytes of :meth:`CachedResponse.encode`'s output, then :data:`ENCODING_VERSION`.
MAGIC: Final = b"KGC"
ENCODING_VERSION: Final = 1

_HEAD: Final = struct.Struct(">3sBHddd")
_U32: Final = struct.Struct(">I")
_I32: Final = struct.Struct(">i")
_FORBIDDEN: Final = (b"\r", b"\n", b"\x00")


def _clean(data: bytes) -> bool:
    return not any(char in data for char in _FORBIDDEN)


@dataclass(slots=True)
class CachedResponse:
    """One stored response (see the module docstring); times are wall-clock epoch seconds."""

    status: int
    lines: list[bytes]
    body: bytes
    stored_at: float
    expires_at: float
    age_at_store: float
    vary: tuple[bytes, ...] = ()
    vary_values: tuple[bytes | None, ...] = ()

    def age(self, now: float) -> int:
        """The ``Age`` to send at ``now``: whole seconds, rounded down, >= 0."""
        age = self.age_at_store + (now - self.stored_at)
        return max(0, math.floor(age)) if math.isfinite(age) else 0

    def fresh(self, now: float) -> bool:
        """Whether the entry may still be served at ``now``."""
        return now < self.expires_at

    def matches(self, vary_values: tuple[bytes | None, ...]) -> bool:
        """Whether the entry may answer a request with these values of its :attr:`vary` names."""
        return vary_values == self.vary_values

    @property
    def size(self) -> int:
        """Approximately the bytes the entry holds: body, header lines, Vary, :data:`ENTRY_OVERHEAD`."""
        return (
            ENTRY_OVERHEAD
            + len(self.body)
            + sum(len(line) for line in self.lines)
            + sum(len(name) for name in self.vary)
            + sum(len(value) for value in self.vary_values if value is not None)
        )

    def encode(self) -> bytes:
        """The binary form (see the module docstring); ``ValueError`` for an entry that :meth:`decode`
        would refuse (a field too large for the form, a line with CR or LF, a status out of range...)."""
        if len(self.vary) != len(self.vary_values):
            raise ValueError("vary and vary_values must have the same length")
        _check(self.status, self.lines, self.vary, (self.stored_at, self.expires_at, self.age_at_store))
        try:
            parts = [
                _HEAD.pack(
                    MAGIC, ENCODING_VERSION, self.status, self.stored_at, self.expires_at, self.age_at_store
                ),
                _U32.pack(len(self.lines)),
            ]
            for line in self.lines:
                parts += (_U32.pack(len(line)), line)
            parts.append(_U32.pack(len(self.vary)))
            for name, value in zip(self.vary, self.vary_values, strict=True):
                parts += (_U32.pack(len(name)), name)
                parts += (_I32.pack(-1),) if value is None else (_I32.pack(len(value)), value)
            parts += (_U32.pack(len(self.body)), self.body)
        except struct.error as error:
            raise ValueError(f"the entry does not fit the binary form: {error}") from None
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> CachedResponse:
        """An entry from :meth:`encode`'s output; ``ValueError`` for any other bytes (see the module
        docstring)."""
        reader = _Reader(data)
        magic, version, status, stored_at, expires_at, age_at_store = reader.unpack(_HEAD)
        if magic != MAGIC:
            raise ValueError("not a cached response")
        if version != ENCODING_VERSION:
            raise ValueError(f"unknown version {version} of the cached response form")
        lines = [reader.chunk(reader.u32()) for _ in range(reader.u32())]
        vary: list[bytes] = []
        values: list[bytes | None] = []
        for _ in range(reader.u32()):
            vary.append(reader.chunk(reader.u32()))
            length = reader.i32()
            if length < -1:
                raise ValueError("invalid length")
            values.append(None if length == -1 else reader.chunk(length))
        body = reader.chunk(reader.u32())
        if reader.left:
            raise ValueError("trailing bytes after the cached response")
        _check(status, lines, vary, (stored_at, expires_at, age_at_store))
        return cls(status, lines, body, stored_at, expires_at, age_at_store, tuple(vary), tuple(values))


def _check(status: int, lines: list[bytes], vary: Sequence[bytes], times: tuple[float, float, float]) -> None:
    """``ValueError`` unless the fields are fit to be written to a client (see the module docstring)."""
    if not (isinstance(status, int) and 100 <= status <= 999):
        raise ValueError(f"invalid status {status!r}")
    if not all(math.isfinite(time) for time in times) or times[2] < 0:
        raise ValueError(f"invalid times {times!r}")
    for line in lines:
        if b":" not in line or not _clean(line):
            raise ValueError(f"invalid header line {line[:100]!r}")
    for name in vary:
        if not name or not _clean(name):
            raise ValueError(f"invalid Vary name {name[:100]!r}")


class _Reader:
    """Reads ``data`` front to back; every shortfall is a ``ValueError``."""

    __slots__ = ("data", "left", "offset")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = memoryview(data)
        self.offset = 0
        self.left = self.data.nbytes

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        if layout.size > self.left:
            raise ValueError("truncated cached response")
        values = layout.unpack_from(self.data, self.offset)
        self.offset += layout.size
        self.left -= layout.size
        return values

    def u32(self) -> int:
        value: int = self.unpack(_U32)[0]
        return value

    def i32(self) -> int:
        value: int = self.unpack(_I32)[0]
        return value

    def chunk(self, length: int) -> bytes:
        if length > self.left:
            raise ValueError("truncated cached response")
        start = self.offset
        self.offset += length
        self.left -= length
        return bytes(self.data[start : self.offset])


class MemoryStore:
    """An LRU bounded in bytes, shared by every route of a replica (see the module docstring).

    ``bytes_used``: the cost of the entries held; ``evictions``: entries dropped to make room.
    """

    __slots__ = ("_table", "bytes_used", "evictions", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, not {max_bytes!r}")
        self.max_bytes = max_bytes
        # key -> (entry, its cost when stored), least recently used first
        self._table: OrderedDict[bytes, tuple[CachedResponse, int]] = OrderedDict()
        self.bytes_used = 0
        self.evictions = 0

    @property
    def entries(self) -> int:
        return len(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __bool__(self) -> bool:
        # Stated, not left to __len__: compiled by mypyc, "if x" on an "X | None" tests only for None
        # unless X defines __bool__.
        return len(self) > 0

    def __contains__(self, key: object) -> bool:
        return key in self._table

    def get(self, key: bytes, now: float) -> CachedResponse | None:
        """The key's entry if it is fresh at ``now`` (now the most recently used); a stale one is removed."""
        held = self._table.get(key)
        if held is None:
            return None
        entry = held[0]
        if not entry.fresh(now):
            self.delete(key)
            return None
        self._table.move_to_end(key)
        return entry

    def put(self, key: bytes, entry: CachedResponse) -> bool:
        """Store ``entry`` under ``key``, evicting the least recently used entries until it fits; False
        (and nothing stored or evicted, but the key's previous entry dropped) when it alone is too big."""
        cost = entry.size + len(key)
        self.delete(key)
        if cost > self.max_bytes:
            return False
        table = self._table
        while self.bytes_used + cost > self.max_bytes:
            _, (_, dropped) = table.popitem(last=False)
            self.bytes_used -= dropped
            self.evictions += 1
        table[key] = (entry, cost)
        self.bytes_used += cost
        return True

    def delete(self, key: bytes) -> None:
        """Forget the key's entry, if any."""
        held = self._table.pop(key, None)
        if held is not None:
            self.bytes_used -= held[1]

    def clear(self) -> None:
        """Forget every entry (not counted as evictions)."""
        self._table.clear()
        self.bytes_used = 0

    def status(self) -> dict[str, int]:
        """For the admin API: ``maxBytes``, ``bytes``, ``entries``, ``evictions``."""
        return {
            "maxBytes": self.max_bytes,
            "bytes": self.bytes_used,
            "entries": len(self._table),
            "evictions": self.evictions,
        }

    def __repr__(self) -> str:
        return (
            f"<MemoryStore {len(self._table)} entries, {self.bytes_used}/{self.max_bytes} bytes,"
            f" {self.evictions} evictions>"
        )
