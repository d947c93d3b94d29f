"""Pure state of the upstream pool and the balancer, with an injected clock (no sockets, no sleeps).

Aspects: idle connections are reused most-recent-first, closed ones skipped, the per-endpoint cap, expiry
by the sweeper; smooth weighted round robin shares and interleaving; round robin inside a backend.
"""

from __future__ import annotations

from kubegate.compiler.table import CompiledBackend, Endpoint
from kubegate.dataplane.balancer import BackendPool, plain_split
from kubegate.dataplane.upstream import UpstreamConnection, UpstreamPool

KEY = ("127.0.0.1", 8080)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _conn() -> UpstreamConnection:
    return UpstreamConnection(KEY)  # never connected: the pool only looks at its state


def test_pool_reuses_most_recent_and_skips_closed() -> None:
    clock = FakeClock()
    pool = UpstreamPool(clock=clock)
    a, b, c = _conn(), _conn(), _conn()
    for conn in (a, b, c):
        pool.release(conn)
    assert repr(pool) == "<UpstreamPool 1 endpoints, 3 idle>"
    c.closed = True
    got = pool.acquire_idle(KEY)
    assert got is b and got.reused
    assert pool.acquire_idle(KEY) is a
    assert pool.acquire_idle(KEY) is None
    assert pool.acquire_idle(("10.0.0.1", 1)) is None


def test_pool_caps_idle_connections_per_endpoint() -> None:
    pool = UpstreamPool(max_idle_per_endpoint=2, clock=FakeClock())
    conns = [_conn() for _ in range(3)]
    for conn in conns:
        pool.release(conn)
    assert pool.idle_count() == 2 and conns[2].closed


def test_pool_does_not_keep_connections_the_upstream_will_close() -> None:
    pool = UpstreamPool(clock=FakeClock())
    conn = _conn()
    conn.keep = False  # the last response said Connection: close
    pool.release(conn)
    assert pool.idle_count() == 0 and conn.closed


def test_sweeper_expires_idle_connections() -> None:
    clock = FakeClock()
    pool = UpstreamPool(idle_timeout=60, clock=clock)
    old, new = _conn(), _conn()
    pool.release(old)
    clock.now += 50
    pool.release(new)
    clock.now += 20  # old has been idle 70 s, new 20 s
    assert pool.sweep() == 1
    assert old.closed and not new.closed
    assert pool.acquire_idle(KEY) is new


def _backend(name: str, weight: int, *ports: int) -> CompiledBackend:
    return CompiledBackend(
        name=name, weight=weight, endpoints=tuple(Endpoint(host="127.0.0.1", port=p) for p in ports)
    )


def test_smooth_weighted_round_robin() -> None:
    split = plain_split((_backend("a", 5, 1), _backend("b", 1, 2), _backend("c", 1, 3), _backend("z", 0, 4)))
    picks = "".join(b.name for b in (split.pick() for _ in range(70)) if b is not None)
    assert picks.count("a") == 50 and picks.count("b") == 10 and picks.count("c") == 10
    assert "z" not in picks
    assert picks[:7] == "aabacaa"  # nginx's smooth sequence for 5:1:1
    assert repr(split) == "<WeightedSplit a=5, b=1, c=1>"


def test_no_positive_weight_means_no_backend() -> None:
    assert plain_split((_backend("a", 0, 1),)).pick() is None


def test_round_robin_inside_a_backend() -> None:
    pool = BackendPool(_backend("a", 1, 1, 2, 3))
    assert [pool.pick() for _ in range(6)] == [("127.0.0.1", p) for p in (1, 2, 3, 1, 2, 3)]
    assert BackendPool(_backend("e", 1)).pick() is None


class RecordingTransport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def write(self, data: bytes) -> None:
        self.calls.append("write")

    def close(self) -> None:
        self.calls.append("close")


def test_connection_paused_by_back_pressure_reads_again_once_pooled() -> None:
    pool = UpstreamPool(clock=FakeClock())
    conn = _conn()
    transport = RecordingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.pause_reading()  # the client was slow when the response ended
    conn.pause_reading()  # idempotent
    pool.release(conn)
    assert transport.calls == ["pause", "resume"]
    assert pool.acquire_idle(KEY) is conn and not conn.read_paused
