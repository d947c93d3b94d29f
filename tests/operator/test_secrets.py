"""Secrets that routes' ``spec.auth`` names, through the operator: the in-memory view, the reads, end to end.

Aspects: a Secret that no route names is dropped on arrival (only its name is remembered), one that a
route names is kept, and dropped again when no route names it any more; Secrets are namespace-local;
listed Secrets that were dropped count as arrived; a route that starts naming a Secret seen earlier gets
it through one read, and a read overtaken by a watch event or a deletion is thrown away (tickets);
kubegate's own Secrets (the bootstrap Secret, the chart's push-token Secret) are never route Secrets,
even when a route names them; nothing prints a Secret's values (reprs, logs); the operator's reading of
the raw route agrees with the compiler's ``secret_refs``; a compile waits for the first try of a read,
and a failed read is retried without holding back compiles. End to end (kmock, a real operator process,
2 real data planes): an apiKey route whose Secret existed before it admits the right key and refuses a
missing or wrong one (401) on every replica, with ResolvedRefs=True; changing the Secret's data moves the
key without a restart; deleting it gives ResolvedRefs=False/SecretNotFound and 500; creating it again
heals the route; a route naming the bootstrap Secret gets SecretNotFound; the operator reads route
Secrets but never writes them, and its log and the bootstrap table never hold a key in clear.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kubegate.api import models
from kubegate.compiler import backendtls, edge, tls
from kubegate.compiler import compile as compiler
from kubegate_operator import metrics as metrics_mod
from kubegate_operator import publisher, reconciler, state
from tests.gateway import TOKEN
from tests.operator.conftest import BOOTSTRAP, DP_NS, Cluster, gatewayroute
from tests.operator.kube import ROUTES, SECRETS, KubeAPI
from tests.upstreams import UpstreamServer

GUARD = 20.0  # seconds: a hang guard, never a measure
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GOLDEN = Path(__file__).resolve().parents[1] / "compiler" / "golden"


def secret(
    name: str, data: Mapping[str, str], ns: str = "default", *, labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A Secret as the API server stores it: ``data`` in base64."""
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if labels:
        meta["labels"] = dict(labels)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def apikey_spec(prefix: str, secret_name: str, backend: str) -> dict[str, Any]:
    return {
        "match": {"path": {"type": "Prefix", "value": prefix}},
        "backends": [{"url": backend}],
        "auth": {"apiKey": {"header": "X-API-Key", "secretRef": {"name": secret_name}}},
    }


def _route(name: str, spec: dict[str, Any], ns: str = "default", generation: int = 1) -> dict[str, Any]:
    body = gatewayroute(name, spec, ns)
    body["metadata"].update(generation=generation, creationTimestamp="2024-01-01T00:00:00Z", uid=name)
    return body


def _resolved(st: state.ClusterState, route: str) -> models.Condition:
    result = compiler.compile_bundle(st.bundle(), now=datetime(2024, 6, 1, tzinfo=UTC))
    return next(c for c in result.statuses[route].conditions if c.type == "ResolvedRefs")


SPEC = apikey_spec("/k", "keys", "http://127.0.0.1:9")
KEY = ("default", "keys")

# --- the view ---------------------------------------------------------------------------------------


def test_a_secret_nobody_names_is_dropped_on_arrival() -> None:
    st = state.ClusterState()
    assert not st.upsert(state.SECRET, secret("unrelated", {"password": "hunter2"}))
    assert st.objects[state.SECRET] == {} and st.bundle().secrets == []
    assert st.secrets_seen == {("default", "unrelated")}  # the name only
    assert st.revision == 0 and st.wanted == {}
    assert not st.upsert(state.SECRET, secret("unrelated", {"password": "changed"}))
    assert "hunter2" not in repr(st.__dict__) and "changed" not in repr(st.__dict__)


def test_a_named_secret_is_kept_and_dropped_when_no_route_names_it() -> None:
    st = state.ClusterState()
    assert st.upsert(state.GATEWAYROUTE, _route("r1", SPEC))
    assert _resolved(st, "default/r1").reason == edge.SECRET_NOT_FOUND
    assert st.wanted == {}  # never seen: nothing to read; its watch event will bring it
    assert st.upsert(state.SECRET, secret("keys", {"acme": "acme-key"}))
    assert list(st.objects[state.SECRET]) == [KEY]
    assert _resolved(st, "default/r1").status == "True"
    assert not st.upsert(state.SECRET, secret("keys", {"acme": "acme-key"})), "unchanged: no compile"
    assert st.upsert(state.SECRET, secret("keys", {"acme": "other-key"}))

    st.upsert(state.GATEWAYROUTE, _route("r2", SPEC))  # two routes name it ...
    st.delete(state.GATEWAYROUTE, _route("r1", SPEC))
    assert list(st.objects[state.SECRET]) == [KEY]  # ... one still does
    edited = {**SPEC, "auth": {"apiKey": {"header": "X-API-Key", "secretRef": {"name": "other"}}}}
    st.upsert(state.GATEWAYROUTE, _route("r2", edited, generation=2))
    assert st.objects[state.SECRET] == {} and KEY in st.secrets_seen
    assert st.secrets_named() == {("default", "other")}

    assert not st.delete(state.SECRET, secret("keys", {})), "it was not kept: nothing changes"
    assert KEY not in st.secrets_seen


def test_secrets_are_namespace_local() -> None:
    st = state.ClusterState()
    st.upsert(state.GATEWAYROUTE, _route("r1", SPEC, ns="team-a"))
    assert not st.upsert(state.SECRET, secret("keys", {"acme": "k"}, ns="team-b"))
    assert st.upsert(state.SECRET, secret("keys", {"acme": "k"}, ns="team-a"))
    assert list(st.objects[state.SECRET]) == [("team-a", "keys")]
    scoped = state.ClusterState(namespaces=("team-a",))
    assert not scoped.upsert(state.SECRET, secret("keys", {"acme": "k"}, ns="team-b"))
    assert scoped.secrets_seen == set()


def test_listed_secrets_count_as_arrived_when_dropped() -> None:
    """The start-up listing names every Secret; most arrive only to be dropped, and count as arrived."""
    st = state.ClusterState(dataplane_service=("sys", "dp"), reserved=[("sys", "boot")])
    st.upsert(state.SECRET, secret("early", {"a": "b"}))  # before the listing
    st.expect(state.SECRET, {("default", "early"), ("default", "late"), ("sys", "boot")})
    assert st.missing == 2
    st.upsert(state.SECRET, secret("late", {"a": "b"}))
    st.upsert(state.SECRET, secret("boot", {"table.json.gz": "x"}, ns="sys"))
    assert st.missing == 0 and st.objects[state.SECRET] == {}


def test_a_route_that_starts_naming_a_seen_secret_gets_it_through_a_read() -> None:
    st = state.ClusterState()
    st.upsert(state.SECRET, secret("keys", {"acme": "acme-key"}))
    st.upsert(state.GATEWAYROUTE, _route("r1", SPEC))
    ticket = st.wanted[KEY]
    assert st.fetched(KEY, ticket, secret("keys", {"acme": "acme-key"}))
    assert st.wanted == {} and list(st.objects[state.SECRET]) == [KEY]
    assert _resolved(st, "default/r1").status == "True"
    assert not st.fetched(KEY, ticket, secret("keys", {"acme": "late"})), "a second answer is ignored"


def test_a_read_overtaken_by_a_watch_event_or_a_deletion_is_thrown_away() -> None:
    st = state.ClusterState()
    st.upsert(state.SECRET, secret("keys", {"acme": "v1"}))
    st.upsert(state.GATEWAYROUTE, _route("r1", SPEC))
    ticket = st.wanted[KEY]
    assert st.upsert(state.SECRET, secret("keys", {"acme": "v2"}))  # the watch event wins
    assert not st.fetched(KEY, ticket, secret("keys", {"acme": "v1"}))
    assert st.objects[state.SECRET][KEY]["data"] == secret("keys", {"acme": "v2"})["data"]

    # Named, dropped (no route names it), named again: a read started before counts for nothing.
    st.delete(state.GATEWAYROUTE, _route("r1", SPEC))
    st.upsert(state.SECRET, secret("keys", {"acme": "v3"}))  # dropped: nobody names it
    st.upsert(state.GATEWAYROUTE, _route("r1", SPEC))
    first = st.wanted[KEY]
    st.delete(state.GATEWAYROUTE, _route("r1", SPEC))
    st.upsert(state.GATEWAYROUTE, _route("r1", SPEC))
    second = st.wanted[KEY]
    assert second != first
    assert not st.fetched(KEY, first, secret("keys", {"acme": "v2"}))
    assert st.fetched(KEY, second, secret("keys", {"acme": "v3"}))

    # Deleted while being read: the answer (old data) is thrown away.
    st.delete(state.GATEWAYROUTE, _route("r1", SPEC))
    st.upsert(state.GATEWAYROUTE, _route("r1", SPEC))
    ticket = st.wanted[KEY]
    st.delete(state.SECRET, secret("keys", {}))
    assert not st.fetched(KEY, ticket, secret("keys", {"acme": "v3"}))
    assert st.objects[state.SECRET] == {} and _resolved(st, "default/r1").reason == edge.SECRET_NOT_FOUND


def test_a_read_that_finds_nothing_forgets_the_name() -> None:
    st = state.ClusterState()
    st.upsert(state.SECRET, secret("keys", {"acme": "v1"}))
    st.upsert(state.GATEWAYROUTE, _route("r1", SPEC))
    assert not st.fetched(KEY, st.wanted[KEY], None)
    assert st.wanted == {} and KEY not in st.secrets_seen


def test_kubegates_own_secrets_are_never_route_secrets(caplog: pytest.LogCaptureFixture) -> None:
    st = state.ClusterState(dataplane_service=("sys", "dp"), reserved=[("sys", "kubegate-bootstrap")])
    bootstrap = secret("kubegate-bootstrap", {"table.json.gz": "a table"}, ns="sys")
    token = secret(
        "kubegate-push-token", {"token": "s3cr3t"}, ns="sys", labels={state.PART_OF_LABEL: "kubegate"}
    )
    mine = secret("mine", {"token": "mine"}, ns="sys", labels={state.PART_OF_LABEL: "kubegate"})
    for body in (bootstrap, token):
        assert not st.upsert(state.SECRET, body)
    assert st.secrets_seen == set()
    with caplog.at_level(logging.WARNING, logger="kubegate.operator"):
        for name in ("kubegate-bootstrap", "kubegate-push-token", "mine"):
            spec = apikey_spec("/" + name, name, "http://x:1")
            st.upsert(state.GATEWAYROUTE, _route(f"uses-{name}", spec, "sys"))
        assert not st.upsert(state.SECRET, bootstrap), "a bootstrap write is not a route Secret change"
        assert not st.upsert(state.SECRET, mine)
    assert st.objects[state.SECRET] == {} and st.wanted == {}
    assert _resolved(st, "sys/uses-kubegate-bootstrap").reason == edge.SECRET_NOT_FOUND
    assert _resolved(st, "sys/uses-kubegate-push-token").reason == edge.SECRET_NOT_FOUND
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3 and all("belongs to kubegate itself" in m for m in warned), warned
    assert not any("s3cr3t" in m or "a table" in m for m in warned)
    # The label marks kubegate's own Secrets in the data plane's namespace only.
    elsewhere = secret("mine", {"token": "mine"}, labels={state.PART_OF_LABEL: "kubegate"})
    st.upsert(state.GATEWAYROUTE, _route("r1", apikey_spec("/mine", "mine", "http://x:1")))
    assert st.upsert(state.SECRET, elsewhere)


def test_kept_secrets_print_no_values() -> None:
    st = state.ClusterState()
    st.upsert(state.GATEWAYROUTE, _route("r1", SPEC))
    st.upsert(state.SECRET, {**secret("keys", {"acme": "acme-key"}), "stringData": {"globex": "globex-key"}})
    kept = st.objects[state.SECRET][KEY]
    encoded = kept["data"]["acme"]
    for text in (repr(kept), str(kept), repr(st.objects), repr(st), repr(st.bundle().secrets)):
        assert "acme-key" not in text and encoded not in text and "globex-key" not in text, text
    assert repr(kept) == "<Secret default/keys keys=['acme', 'globex']>"


def _auth_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in [*sorted(EXAMPLES.glob("*.yaml")), *sorted(GOLDEN.glob("auth*.in.yaml"))]:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "GatewayRoute":
                spec = doc.get("spec")
                backends = spec.get("backends", []) if isinstance(spec, dict) else []
                backend_tls = any(isinstance(b, dict) and "tls" in b for b in backends)
                if isinstance(spec, dict) and ("auth" in spec or "tls" in spec or backend_tls):
                    yield f"{path.name}:{doc['metadata']['name']}", doc


def test_the_raw_reading_of_auth_agrees_with_the_compiler() -> None:
    """The operator reads the Secret names from the raw route (cheap, and no validation); for every valid
    route with auth, tls or a backend's tls in examples/ and the compiler's golden inputs, it finds what
    the compiler's ``secret_refs`` (auth's, tls's and the backends' tls's) find."""
    checked = 0
    for where, doc in _auth_specs():
        try:
            spec = models.GatewayRouteSpec.model_validate(doc["spec"])
        except ValueError:
            continue  # invalid: rejected whatever its Secrets
        found = edge.secret_refs(spec) + tls.secret_refs(spec) + backendtls.secret_refs(spec)
        assert state.secret_names(doc) == frozenset(found), where
        checked += 1
    assert checked >= 2


# --- the reads, in the reconciler -----------------------------------------------------------------


class Reads:
    """A fake API for the reconciler's Secret reads: fails the first ``failures`` tries, then answers
    once the test releases it."""

    def __init__(self, body: dict[str, Any] | None, failures: int = 0) -> None:
        self.body = body
        self.failures = failures
        self.calls: list[tuple[str, str]] = []
        self.release = asyncio.Event()

    async def __call__(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append((namespace, name))
        if len(self.calls) <= self.failures:
            raise OSError("connection refused")
        await self.release.wait()
        return self.body


def _reconciler(reads: Reads, client: httpx.AsyncClient) -> reconciler.Reconciler:
    pusher = publisher.Publisher(
        client=client, token=lambda: TOKEN, backoff_initial=0.05, backoff_max=0.2, timeout=GUARD
    )
    return reconciler.Reconciler(
        cluster=state.ClusterState(),
        pusher=pusher,
        writer=None,
        bootstrapper=None,
        metrics=metrics_mod.Metrics(),
        holdoff=0.0,
        max_delay=0.0,
        read_secret=reads,
        fetch_wait=GUARD,
    )


def _resolved_in(rec: reconciler.Reconciler, route: str) -> str | None:
    if rec.result is None:
        return None
    return next(c.status for c in rec.result.statuses[route].conditions if c.type == "ResolvedRefs")


async def _spin(rounds: int = 50) -> None:
    """Let every ready task of the loop run a few steps (no time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def _until(predicate: Any) -> None:
    async with asyncio.timeout(GUARD):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_a_compile_waits_for_the_read_of_a_newly_named_secret() -> None:
    """The route is not first compiled (and published) with SecretNotFound while its Secret is read."""
    reads = Reads(secret("keys", {"acme": "acme-key"}))
    client = httpx.AsyncClient()
    rec = _reconciler(reads, client)
    rec.upsert(state.SECRET, secret("keys", {"acme": "acme-key"}))  # dropped: nobody names it
    rec.start(resync_interval=3600)
    try:
        rec.upsert(state.GATEWAYROUTE, _route("r1", SPEC))
        await _until(lambda: reads.calls == [KEY])
        await _spin()
        assert rec.compiles == 0, "compiled before the Secret was read"
        reads.release.set()
        await _until(lambda: rec.result is not None)
        await _spin()
        assert _resolved_in(rec, "default/r1") == "True" and rec.compiles == 1
    finally:
        await rec.stop()
        await client.aclose()


async def test_a_failed_read_is_retried_without_holding_back_compiles(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A read that fails (API down, RBAC without get) is retried with backoff; compiles go on meanwhile
    (SecretNotFound), and the route resolves once a read succeeds. The log names the Secret, not the
    error's text."""
    monkeypatch.setattr(reconciler, "FETCH_BACKOFF", (0.01, 0.02))
    reads = Reads(secret("keys", {"acme": "acme-key"}), failures=2)
    reads.release.set()
    client = httpx.AsyncClient()
    rec = _reconciler(reads, client)
    rec.upsert(state.SECRET, secret("keys", {"acme": "acme-key"}))
    rec.start(resync_interval=3600)
    try:
        with caplog.at_level(logging.WARNING, logger="kubegate.operator"):
            rec.upsert(state.GATEWAYROUTE, _route("r1", SPEC))
            await _until(lambda: _resolved_in(rec, "default/r1") == "True")
        assert reads.calls == [KEY] * 3
        failures = [r.getMessage() for r in caplog.records if "cannot read Secret" in r.getMessage()]
        assert len(failures) == 2 and all("default/keys" in m and "(OSError)" in m for m in failures)
        assert not any("connection refused" in m for m in failures)
    finally:
        await rec.stop()
        await client.aclose()


# --- end to end -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, kube_api: KubeAPI) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("secrets"), kube_api)
    try:
        c.start_gateways(2)
        c.start_operator()
        yield c
    finally:
        c.close()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _codes(cluster: Cluster, path: str, key: str | None) -> set[int]:
    headers = {"X-API-Key": key} if key is not None else {}
    return {httpx.get(gw.url + path, headers=headers, timeout=2).status_code for gw in cluster.gateways}


def test_apikey_route_follows_its_secret(secured: Cluster, upstreams: dict[str, UpstreamServer]) -> None:
    api, alpha = secured.api, upstreams["alpha"]
    # The Secret exists before any route names it: the operator drops it, then reads it when the route
    # comes (a route without auth, programmed first, shows that the operator has seen the Secret by then).
    api.create(SECRETS, secret("partner-keys", {"acme": "acme-key-1"}))
    api.create(SECRETS, secret("unrelated", {"password": "hunter2-unrelated"}))
    plain = {"match": {"path": {"type": "Prefix", "value": "/plain"}}, "backends": [{"url": alpha.url}]}
    api.create(ROUTES, gatewayroute("plain", plain))
    secured.wait(lambda: secured.serves_everywhere("/plain", "alpha"), what="the plain route is served")
    api.create(ROUTES, gatewayroute("partners", apikey_spec("/partners", "partner-keys", alpha.url)))

    secured.wait(lambda: _codes(secured, "/partners/x", "acme-key-1") == {200}, what="the key admits")
    assert _codes(secured, "/partners/x", None) == {401}
    assert _codes(secured, "/partners/x", "wrong") == {401}
    secured.wait(
        lambda: secured.condition("partners", "ResolvedRefs").get("status") == "True",
        what="ResolvedRefs=True",
    )
    emulator = api.emulator
    assert emulator is not None
    assert "GET /api/v1/namespaces/default/secrets/partner-keys" in emulator.requested(
        "/secrets/partner-keys"
    )

    # A change of the Secret's data takes effect without a restart: the new key works, the old fails.
    api.patch(SECRETS, "default", "partner-keys", {"data": {"acme": _b64("acme-key-2")}})
    secured.wait(lambda: _codes(secured, "/partners/x", "acme-key-2") == {200}, what="the new key admits")
    assert _codes(secured, "/partners/x", "acme-key-1") == {401}

    # Deleted: ResolvedRefs=False/SecretNotFound, and the route answers 500 (it does not admit).
    api.delete(SECRETS, "default", "partner-keys")
    secured.wait(
        lambda: secured.condition("partners", "ResolvedRefs").get("reason") == edge.SECRET_NOT_FOUND,
        what="ResolvedRefs=False/SecretNotFound",
    )
    resolved = secured.condition("partners", "ResolvedRefs")
    assert resolved["status"] == "False" and "partner-keys" in resolved["message"]
    secured.wait(lambda: _codes(secured, "/partners/x", "acme-key-2") == {500}, what="500 without its Secret")
    assert _codes(secured, "/partners/x", None) == {500}

    # Created again: healed.
    api.create(SECRETS, secret("partner-keys", {"acme": "acme-key-3"}))
    secured.wait(lambda: _codes(secured, "/partners/x", "acme-key-3") == {200}, what="healed")
    secured.wait(
        lambda: secured.condition("partners", "ResolvedRefs").get("status") == "True",
        what="ResolvedRefs=True again",
    )


def test_a_route_naming_the_bootstrap_secret_gets_secret_not_found(
    secured: Cluster, upstreams: dict[str, UpstreamServer]
) -> None:
    ns, name = BOOTSTRAP.split("/")
    assert ns == DP_NS
    spec = apikey_spec("/sneaky", name, upstreams["alpha"].url)
    secured.api.create(ROUTES, gatewayroute("sneaky", spec, ns))
    secured.wait(
        lambda: secured.condition("sneaky", "ResolvedRefs", ns).get("reason") == edge.SECRET_NOT_FOUND,
        what="the bootstrap Secret is not a route Secret",
    )
    secured.wait(lambda: _codes(secured, "/sneaky", None) == {500}, what="500")
    secured.wait(
        lambda: any("belongs to kubegate itself" in line for line in secured.operator.log_lines()),
        what="a warning naming the route",
    )


def test_route_secrets_are_read_never_written_nor_logged(secured: Cluster) -> None:
    emulator = secured.api.emulator
    assert emulator is not None
    ns, name = BOOTSTRAP.split("/")
    writes = {p for p in emulator.requested("/secrets") if p.split()[0] in ("POST", "PUT", "PATCH", "DELETE")}
    assert writes <= {
        f"POST /api/v1/namespaces/{ns}/secrets",
        f"PATCH /api/v1/namespaces/{ns}/secrets/{name}",
    }
    log = "\n".join(secured.operator.log_lines())
    for value in ("acme-key-1", "acme-key-2", "acme-key-3", "hunter2-unrelated"):
        assert value not in log and _b64(value) not in log, value

    def stored() -> bytes | None:
        body = secured.api.get(SECRETS, ns, name)
        return gzip.decompress(base64.b64decode(body["data"]["table.json.gz"])) if body else None

    secured.wait(lambda: b"/partners" in (stored() or b""), what="the bootstrap table holds the route")
    table = stored()
    assert table is not None
    assert b"acme-key" not in table and _b64("acme-key-3").encode() not in table  # hashed, never in clear
