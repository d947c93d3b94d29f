"""Cached responses and the in-memory store, on an injected wall clock (no sleeps).

Aspects: an entry's age (whole seconds, rounded down, never negative), freshness boundary, Vary matching
and size; the binary form (round trips, canonical, the checks of ``decode``: magic, version, truncations,
trailing bytes, lengths, times, status, header lines that could split a response), and a fuzz of
``decode`` (seeded random bytes, every truncation, byte flips of a valid encoding) that only ever raises
``ValueError``; the store's LRU order (hits move a key to the young end), its byte bound under random
operations, eviction counts, replacement, refusal of an entry larger than the store without evicting,
stale entries removed on ``get``, ``max_bytes = 0``, ``status``, ``repr``.
"""

from __future__ import annotations

import random
import struct

import pytest

from kubegate.dataplane.policies.cachestore import (
    ENCODING_VERSION,
    ENTRY_OVERHEAD,
    MAGIC,
    CachedResponse,
    MemoryStore,
)

NOW = 1_700_000_000.0


def entry(
    body: bytes = b"",
    *,
    lines: list[bytes] | None = None,
    expires_at: float = NOW + 60,
    stored_at: float = NOW,
    age_at_store: float = 0.0,
    status: int = 200,
) -> CachedResponse:
    return CachedResponse(
        status=status,
        lines=[b"content-type: text/plain"] if lines is None else lines,
        body=body,
        stored_at=stored_at,
        expires_at=expires_at,
        age_at_store=age_at_store,
    )


def cost(key: bytes, item: CachedResponse) -> int:
    """What the store charges for ``item`` under ``key``."""
    charged: int = item.size + len(key)
    return charged


# --- the entry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age_at_store", "now", "expected"),
    [
        (0.0, NOW, 0),
        (0.0, NOW + 0.999, 0),
        (0.0, NOW + 1.0, 1),
        (0.0, NOW + 59.5, 59),
        (20.0, NOW + 10.4, 30),
        (2.7, NOW + 0.4, 3),
        (0.0, NOW - 5.0, 0),  # the clock stepped back: never negative
        (3.0, NOW - 1.5, 1),
    ],
)
def test_age_is_whole_seconds_rounded_down(age_at_store: float, now: float, expected: int) -> None:
    age = entry(age_at_store=age_at_store).age(now)
    assert age == expected
    assert isinstance(age, int)


def test_fresh_until_expires_at_exclusive() -> None:
    item = entry(expires_at=NOW + 60)
    assert item.fresh(NOW)
    assert item.fresh(NOW + 59.999)
    assert not item.fresh(NOW + 60)
    assert not item.fresh(NOW + 61)


def test_matches_compares_vary_values() -> None:
    item = entry()
    item.vary = (b"accept-encoding", b"origin")
    item.vary_values = (b"gzip,br", None)
    assert item.matches((b"gzip,br", None))
    assert not item.matches((b"gzip,br", b""))
    assert not item.matches((b"gzip", None))
    assert not item.matches((b"gzip,br",))
    assert entry().matches(())
    assert not entry().matches((None,))


def test_size_counts_body_lines_vary_and_overhead() -> None:
    item = entry(b"x" * 1000, lines=[b"a: b", b"content-type: text/html"])
    assert item.size == ENTRY_OVERHEAD + 1000 + 4 + 23
    item.vary = (b"origin",)
    item.vary_values = (b"https://a.io",)
    assert item.size == ENTRY_OVERHEAD + 1000 + 4 + 23 + 6 + 12
    assert entry(b"", lines=[]).size == ENTRY_OVERHEAD


# --- the binary form ---------------------------------------------------------------------------------

SAMPLES = {
    "plain": entry(b"hello"),
    "empty": CachedResponse(204, [], b"", 0.0, 0.0, 0.0),
    "binary-body-and-vary": CachedResponse(
        status=404,
        lines=[b"content-type: application/octet-stream", b"x-thing: \xff\xfe", b'etag: "a,b"'],
        body=bytes(range(256)) * 40,
        stored_at=NOW + 0.125,
        expires_at=NOW + 3600.5,
        age_at_store=17.0,
        vary=(b"accept-encoding", b"origin", b"x-absent"),
        vary_values=(b"gzip,br", b"", None),
    ),
    "negative-times": CachedResponse(999, [b"a:"], b"\x00", -1e9, -5.0, 1e12),
}


@pytest.mark.parametrize("item", SAMPLES.values(), ids=SAMPLES.keys())
def test_encode_decode_round_trip(item: CachedResponse) -> None:
    data = item.encode()
    assert data[:4] == MAGIC + bytes([ENCODING_VERSION])
    decoded = CachedResponse.decode(data)
    assert decoded == item
    assert decoded.encode() == data
    assert isinstance(decoded.body, bytes)
    assert all(type(line) is bytes for line in decoded.lines)


def test_encode_layout() -> None:
    item = CachedResponse(200, [b"a: b"], b"xyz", 1.0, 2.0, 3.0, (b"origin",), (None,))
    expected = (
        b"KGC\x01"
        + struct.pack(">Hddd", 200, 1.0, 2.0, 3.0)
        + struct.pack(">II", 1, 4)
        + b"a: b"
        + struct.pack(">II", 1, 6)
        + b"origin"
        + struct.pack(">i", -1)
        + struct.pack(">I", 3)
        + b"xyz"
    )
    assert item.encode() == expected


def raw(
    *,
    magic: bytes = MAGIC,
    version: int = ENCODING_VERSION,
    status: int = 200,
    times: tuple[float, float, float] = (NOW, NOW + 60, 0.0),
    lines: list[bytes] | None = None,
    vary: list[tuple[bytes, int, bytes]] | None = None,
    body: bytes = b"",
    body_length: int | None = None,
) -> bytes:
    """Bytes in the binary form, built by hand so that they may say what ``encode`` never would."""
    lines = [b"a: b"] if lines is None else lines
    out = magic + struct.pack(">BHddd", version, status, *times) + struct.pack(">I", len(lines))
    for line in lines:
        out += struct.pack(">I", len(line)) + line
    out += struct.pack(">I", len(vary or []))
    for name, length, value in vary or []:
        out += struct.pack(">I", len(name)) + name + struct.pack(">i", length) + value
    return out + struct.pack(">I", len(body) if body_length is None else body_length) + body


def test_raw_builder_agrees_with_encode() -> None:
    assert CachedResponse.decode(raw(body=b"hi")) == CachedResponse(200, [b"a: b"], b"hi", NOW, NOW + 60, 0.0)


BAD = {
    "empty": b"",
    "magic-only": b"KGC",
    "wrong-magic": raw(magic=b"KGD"),
    "version-0": raw(version=0),
    "version-2": raw(version=2),
    "version-255": raw(version=255),
    "trailing-byte": raw() + b"\x00",
    "body-length-past-end": raw(body=b"abc", body_length=4),
    "body-length-huge": raw(body_length=2**32 - 1),
    "line-count-huge": MAGIC + struct.pack(">BHddd", 1, 200, NOW, NOW, 0.0) + struct.pack(">I", 2**32 - 1),
    "status-99": raw(status=99),
    "status-1000": raw(status=1000),
    "status-0": raw(status=0),
    "stored-at-nan": raw(times=(float("nan"), NOW, 0.0)),
    "expires-at-inf": raw(times=(NOW, float("inf"), 0.0)),
    "age-negative": raw(times=(NOW, NOW, -1.0)),
    "age-nan": raw(times=(NOW, NOW, float("nan"))),
    "line-with-crlf": raw(lines=[b"a: b\r\nset-cookie: x=1"]),
    "line-with-lf": raw(lines=[b"a: b\nc: d"]),
    "line-with-cr": raw(lines=[b"a: b\r"]),
    "line-with-nul": raw(lines=[b"a: \x00"]),
    "line-without-colon": raw(lines=[b"just text"]),
    "empty-line": raw(lines=[b""]),
    "vary-name-empty": raw(vary=[(b"", -1, b"")]),
    "vary-name-with-lf": raw(vary=[(b"origin\n", -1, b"")]),
    "vary-value-length-negative": raw(vary=[(b"origin", -2, b"")]),
    "vary-value-past-end": raw(vary=[(b"origin", 100, b"x")])[:-4],
}


@pytest.mark.parametrize("data", BAD.values(), ids=BAD.keys())
def test_decode_refuses(data: bytes) -> None:
    with pytest.raises(ValueError):
        CachedResponse.decode(data)


def test_decode_names_a_wrong_version() -> None:
    with pytest.raises(ValueError, match="version 2"):
        CachedResponse.decode(raw(version=2))


@pytest.mark.parametrize(
    "item",
    [
        entry(lines=[b"a: b\r\nx: y"]),
        entry(lines=[b"no colon"]),
        entry(status=70000),
        entry(status=42),
        entry(expires_at=float("nan")),
        entry(age_at_store=-1.0),
        CachedResponse(200, [], b"", NOW, NOW, 0.0, (b"origin",), ()),
        CachedResponse(200, [], b"", NOW, NOW, 0.0, (b"",), (None,)),
    ],
    ids=[
        "crlf",
        "no-colon",
        "status-too-big",
        "status-too-small",
        "nan",
        "negative-age",
        "vary-mismatch",
        "vary-empty",
    ],
)
def test_encode_refuses_what_decode_would(item: CachedResponse) -> None:
    with pytest.raises(ValueError):
        item.encode()


def decode_or_none(data: bytes) -> CachedResponse | None:
    """The decoded entry, None for a ValueError; any other exception fails the test."""
    try:
        return CachedResponse.decode(data)
    except ValueError:
        return None


def test_decode_every_truncation_of_a_valid_encoding() -> None:
    data = SAMPLES["binary-body-and-vary"].encode()
    for end in range(len(data)):
        assert decode_or_none(data[:end]) is None, end
    assert decode_or_none(data) == SAMPLES["binary-body-and-vary"]


def test_decode_fuzz_random_bytes() -> None:
    rng = random.Random(9111)
    decoded = 0
    for round_ in range(5000):
        size = rng.choice((0, 1, 3, 4, 8, 31, 40, 64, 200))
        data = rng.randbytes(size)
        if round_ % 2:  # get past the magic and the version
            data = MAGIC + bytes([ENCODING_VERSION]) + data
        item = decode_or_none(data)
        if item is not None:
            decoded += 1
            assert item.encode() == data  # the form is canonical
    assert decoded < 50  # random bytes are nearly never an entry


def test_decode_fuzz_mutations_of_a_valid_encoding() -> None:
    rng = random.Random(7234)
    original = SAMPLES["binary-body-and-vary"].encode()
    accepted = refused = 0
    for _ in range(3000):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(data))
            data[position] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data) + 1)] + rng.randbytes(rng.randrange(8))
        item = decode_or_none(bytes(data))
        if item is None:
            refused += 1
        else:
            accepted += 1
            assert item.encode() == bytes(data)
            assert all(b"\r" not in line and b"\n" not in line for line in item.lines)
    # most flips land in the body or the header lines, which stay valid; the rest must be refused
    assert accepted > 0
    assert refused > 0


def test_decode_accepts_any_buffer_of_the_bytes() -> None:
    data = SAMPLES["plain"].encode()
    assert CachedResponse.decode(bytearray(data)) == SAMPLES["plain"]
    assert CachedResponse.decode(memoryview(data)) == SAMPLES["plain"]


# --- the store ---------------------------------------------------------------------------------------


def test_get_and_put() -> None:
    store = MemoryStore(10_000)
    item = entry(b"body")
    assert store.get(b"k", NOW) is None
    assert store.put(b"k", item)
    assert store.get(b"k", NOW + 1) is item
    assert store.entries == 1
    assert len(store) == 1
    assert store.bytes_used == cost(b"k", item)


def test_lru_evicts_least_recently_used_and_hits_refresh_order() -> None:
    items = {key: entry(b"x" * 100) for key in (b"a", b"b", b"c", b"d")}
    store = MemoryStore(3 * cost(b"a", items[b"a"]))
    for key in (b"a", b"b", b"c"):
        assert store.put(key, items[key])
    assert store.get(b"a", NOW) is items[b"a"]  # a is now the youngest; b the oldest
    assert store.put(b"d", items[b"d"])
    assert store.evictions == 1
    assert b"b" not in store
    assert [key for key in (b"a", b"c", b"d") if store.get(key, NOW) is not None] == [b"a", b"c", b"d"]
    # each get above moved its key to the young end, in turn: the order is now a, c, d
    assert store.put(b"e", entry(b"x" * 100))
    assert b"a" not in store
    assert {b"c", b"d", b"e"} == {key for key in (b"a", b"b", b"c", b"d", b"e") if key in store}
    assert store.evictions == 2


def test_a_miss_does_not_change_order() -> None:
    store = MemoryStore(2 * cost(b"a", entry(b"x")))
    store.put(b"a", entry(b"x"))
    store.put(b"b", entry(b"x"))
    assert store.get(b"zz", NOW) is None
    store.put(b"c", entry(b"x"))
    assert b"a" not in store
    assert b"b" in store


def test_one_big_entry_evicts_as_many_as_needed() -> None:
    small = entry(b"x" * 50)
    store = MemoryStore(10 * cost(b"k0", small))
    for index in range(10):
        assert store.put(b"k%d" % index, small)
    assert store.evictions == 0
    big = entry(b"y" * (4 * cost(b"k0", small) - ENTRY_OVERHEAD))
    assert store.put(b"big", big)
    evicted = [b"k%d" % index for index in range(10) if b"k%d" % index not in store]
    assert evicted == [b"k0", b"k1", b"k2", b"k3", b"k4"]
    assert store.evictions == 5
    assert store.bytes_used == 5 * cost(b"k0", small) + cost(b"big", big)
    assert store.bytes_used <= store.max_bytes


def test_oversize_entry_refused_without_evicting() -> None:
    store = MemoryStore(1000)
    keep = entry(b"x" * 100)
    assert store.put(b"keep", keep)
    before = store.status()
    huge = entry(b"y" * 1000)
    assert not store.put(b"huge", huge)
    assert b"huge" not in store
    assert store.status() == before
    assert store.get(b"keep", NOW) is keep


def test_exactly_max_bytes_fits() -> None:
    item = entry(b"z" * 10)
    store = MemoryStore(cost(b"k", item))
    assert store.put(b"k", item)
    assert store.bytes_used == store.max_bytes
    assert not MemoryStore(cost(b"k", item) - 1).put(b"k", item)


def test_oversize_replacement_drops_the_superseded_entry() -> None:
    store = MemoryStore(1000)
    store.put(b"other", entry(b"o"))
    store.put(b"k", entry(b"old"))
    assert not store.put(b"k", entry(b"n" * 2000))
    assert b"k" not in store
    assert b"other" in store
    assert store.evictions == 0
    assert store.bytes_used == cost(b"other", entry(b"o"))


def test_replace_updates_bytes_without_evicting() -> None:
    store = MemoryStore(1000)
    assert store.put(b"k", entry(b"a" * 100))
    assert store.put(b"k", entry(b"b" * 10))
    assert store.entries == 1
    assert store.evictions == 0
    assert store.bytes_used == cost(b"k", entry(b"b" * 10))
    held = store.get(b"k", NOW)
    assert held is not None
    assert held.body == b"b" * 10


def test_replace_makes_the_key_youngest() -> None:
    one = entry(b"x")
    store = MemoryStore(2 * cost(b"a", one))
    store.put(b"a", one)
    store.put(b"b", one)
    store.put(b"a", entry(b"x"))
    store.put(b"c", one)
    assert b"b" not in store
    assert b"a" in store


def test_stale_entry_removed_on_get() -> None:
    store = MemoryStore(10_000)
    store.put(b"short", entry(b"s", expires_at=NOW + 10))
    store.put(b"long", entry(b"l", expires_at=NOW + 100))
    assert store.get(b"short", NOW + 9.99) is not None
    assert store.get(b"short", NOW + 10) is None
    assert b"short" not in store
    assert store.entries == 1
    assert store.bytes_used == cost(b"long", entry(b"l"))
    assert store.evictions == 0
    assert store.get(b"short", NOW) is None  # gone, even for an earlier clock
    assert store.get(b"long", NOW + 10) is not None


def test_delete_and_clear() -> None:
    store = MemoryStore(10_000)
    store.put(b"a", entry(b"a"))
    store.put(b"b", entry(b"b"))
    store.delete(b"a")
    store.delete(b"missing")
    assert b"a" not in store
    assert store.bytes_used == cost(b"b", entry(b"b"))
    store.clear()
    assert store.status() == {"maxBytes": 10_000, "bytes": 0, "entries": 0, "evictions": 0}


def test_zero_bytes_stores_nothing() -> None:
    store = MemoryStore(0)
    assert not store.put(b"k", entry())
    assert store.get(b"k", NOW) is None
    assert store.status() == {"maxBytes": 0, "bytes": 0, "entries": 0, "evictions": 0}


def test_negative_bound_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        MemoryStore(-1)


def test_status_and_repr() -> None:
    item = entry(b"x" * 300)
    store = MemoryStore(2 * cost(b"a", item))
    for key in (b"a", b"b", b"c"):
        store.put(key, item)
    size = cost(b"a", item)
    assert store.status() == {"maxBytes": 2 * size, "bytes": 2 * size, "entries": 2, "evictions": 1}
    assert repr(store) == f"<MemoryStore 2 entries, {2 * size}/{2 * size} bytes, 1 evictions>"


def test_random_operations_keep_the_books() -> None:
    """A model of the store (a list in LRU order) against the real one, seeded."""
    rng = random.Random(4242)
    store = MemoryStore(5000)
    model: list[tuple[bytes, CachedResponse]] = []  # least recently used first
    evictions = 0
    now = NOW
    for _ in range(3000):
        now += rng.random()
        key = b"k%d" % rng.randrange(30)
        operation = rng.random()
        index = next((i for i, (k, _) in enumerate(model) if k == key), None)
        if operation < 0.5:
            item = entry(b"x" * rng.randrange(1500), expires_at=now + rng.choice((1, 5, 50)))
            if index is not None:
                del model[index]
            accepted = store.put(key, item)
            assert accepted == (cost(key, item) <= 5000)
            if accepted:
                while sum(cost(k, v) for k, v in model) + cost(key, item) > 5000:
                    model.pop(0)
                    evictions += 1
                model.append((key, item))
        elif operation < 0.9:
            got = store.get(key, now)
            if index is None:
                assert got is None
            elif model[index][1].fresh(now):
                assert got is model[index][1]
                model.append(model.pop(index))
            else:
                assert got is None
                del model[index]
        else:
            store.delete(key)
            if index is not None:
                del model[index]
        assert store.bytes_used == sum(cost(k, v) for k, v in model) <= 5000
        assert store.entries == len(model)
        assert store.evictions == evictions
    assert evictions > 0
