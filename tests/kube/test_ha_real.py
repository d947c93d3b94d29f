"""High availability and restarts of the operator on a real kube-apiserver and etcd (issue 12, item 5).

``tests/operator/test_ha.py`` runs these scenarios against the kmock emulator; here the Lease, the watches
and their expiry are the real API server's, with the chart's RBAC (the rig of ``test_operator_real.py``:
3 local data planes on a non-loopback address, the operator with a minted ServiceAccount token).

Aspects, in order (each continues the previous one):

- two operators with one Lease (``--lease-duration 3``): exactly one holds it (``holderIdentity``) and says
  so (``kubegate_operator_leader``), and only that one pushes tables and writes status; the standby has
  compiled the same table;
- the leader killed with SIGKILL (no release): the standby takes the Lease over once it has expired, not
  before (its ``acquireTime`` lies a whole lease duration after the dead leader's last ``renewTime``),
  and a route created after the kill is served by every replica and ``Programmed`` 3/3;
- kube-apiserver stopped and started again (same port, etcd data, keys and certificate) while the
  operator runs: the data planes keep serving through the outage, the operator survives it and holds
  the Lease again, and a route created right after the restart is served and ``Programmed``;
- a watch that cannot resume (410 Gone): while kube-apiserver is down, a route is written straight into
  etcd (as another API server would have written it: no watch event ever reaches the operator) and etcd
  is compacted at its current revision; once the API server is back, a watch from any resourceVersion
  the operator can have held is refused with 410 (checked here with a watch of our own), so the route
  can only be found by a relist: it is served and ``Programmed``, and the routes from before are too.

The module runs its own control plane: restarting the session's API server would break the other
modules' clients and watches. Waits are hang guards, never measures: how long a take-over or a relist
takes on a loaded machine is not asserted.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import controlplane
from tests.kube import conftest as kube_conftest
from tests.kube.test_operator_real import RELEASE, RELEASE_NS, ROUTES, ROUTES_NS, Rig, local_address, spec_to
from tests.operator.conftest import Operator, assert_json_log, gatewayroute
from tests.upstreams import wait_for

DURATION = 3.0  # --lease-duration: short, so that a take-over after a crash is quick
GUARD = 45.0  # seconds: a hang guard for a take-over or a recovery, never a measure
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NS}/leases/{RELEASE}-operator"
FIRST = "op-a"
PUSHES_AT_LEAST = 3  # one push per data plane


class HaRig(Rig):
    """The rig of ``test_operator_real.py`` with a short lease and any number of operators by identity."""

    def __init__(self, kube: controlplane.ControlPlane, tmp: Path, host: str) -> None:
        super().__init__(kube, tmp, host)
        self.operators: dict[str, Operator] = {}

    def operator_args(self, token_file: Path) -> list[str]:
        args = super().operator_args(token_file)
        assert args[-2:] == ["--identity", "operator-real"], args
        return [*args[:-2], "--lease-duration", str(DURATION), "--identity", FIRST]

    def start(self) -> None:
        super().start()  # starts FIRST
        assert self.operator is not None
        self.operator.name = FIRST  # Rig calls it "operator"; here the name is the identity
        self.operators[FIRST] = self.operator

    def spawn(self, identity: str) -> Operator:
        args = [*self.operator_args(self.tmp / "push-token")[:-1], identity]
        made = Operator(identity, args, self.operator_env(), self.tmp / f"{identity}.log")
        self.operators[identity] = made
        return made

    def stop(self) -> None:
        for op in self.operators.values():
            op.stop()
        super().stop()

    def lease(self) -> dict[str, Any]:
        return dict((self.api.get(LEASE) or {}).get("spec") or {})

    def holder(self) -> str | None:
        value = self.lease().get("holderIdentity")
        return str(value) if value else None

    def leader(self) -> Operator:
        name = self.holder()
        assert name in self.operators, f"Lease holder {name!r} is none of {sorted(self.operators)}"
        return self.operators[name]

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
        """As :meth:`Rig.wait`, with the log tails of every operator (the dead one's included)."""
        try:
            return wait_for(predicate, timeout=timeout, interval=0.05)
        except TimeoutError:
            raise AssertionError(f"not in {timeout} s: {what}\n{self.logs()}") from None

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} log tail:\n" + "\n".join(op.log_lines()[-20:]) for name, op in self.operators.items()
        )


def stamp(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")


def warm(op: Operator, routes: int) -> bool:
    """The operator answers /metrics and has compiled a table of ``routes`` routes."""
    samples = op.samples()
    return samples is not None and samples.get(("kubegate_operator_table_routes", frozenset())) == routes


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[controlplane.ControlPlane]:
    """A control plane of this module's own: it is restarted and its etcd compacted."""
    reason = kube_conftest._missing_reason()
    if reason is not None:
        if os.environ.get(kube_conftest.REQUIRE_TOOLS) == "1":
            pytest.fail(
                f"{reason} ({kube_conftest.REQUIRE_TOOLS}=1: a missing tool is a failure)", pytrace=False
            )
        pytest.skip(reason)
    made = controlplane.ControlPlane(workdir=tmp_path_factory.mktemp("ha-controlplane"))
    made.start()
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture(scope="module")
def ha(plane: controlplane.ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaRig]:
    host = local_address()
    if host is None:
        pytest.skip("no non-loopback IPv4 address on this machine (EndpointSlices refuse 127.0.0.0/8)")
    made = HaRig(plane, tmp_path_factory.mktemp("ha-real"), host)
    try:
        made.start()
        made.spawn("op-b")
        yield made
    finally:
        made.stop()


# --- etcd, under the API server -----------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def etcd(plane: controlplane.ControlPlane, call: str, body: dict[str, Any]) -> dict[str, Any]:
    """One call of etcd's JSON gateway (``POST /v3/kv/...``)."""
    response = httpx.post(f"{plane.etcd_url}/v3/kv/{call}", json=body, timeout=10, trust_env=False)
    assert response.status_code == 200, (call, response.status_code, response.text)
    return dict(response.json())


def write_route_into_etcd(plane: controlplane.ControlPlane, name: str, spec: dict[str, Any]) -> int:
    """A GatewayRoute stored as the API server stores custom resources (JSON under ``/registry``), with
    the metadata the API server would have given it; the revision of the write."""
    body = gatewayroute(name, spec, ROUTES_NS)
    body["metadata"].update(
        uid=str(uuid.uuid4()),
        generation=1,
        creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    key = f"/registry/kubegate.dev/gatewayroutes/{ROUTES_NS}/{name}"
    answer = etcd(plane, "put", {"key": _b64(key), "value": _b64(json.dumps(body))})
    return int(answer["header"]["revision"])


def watch_answer(ha: HaRig, resource_version: str) -> dict[str, Any]:
    """The first thing a watch of the routes from ``resource_version`` says (an event or an error)."""
    with ha.api.http.stream(
        "GET", ROUTES, params={"watch": "1", "resourceVersion": resource_version, "timeoutSeconds": "5"}
    ) as response:
        if response.status_code != 200:
            response.read()
            return {"type": "ERROR", "object": response.json()}
        for line in response.iter_lines():
            if line.strip():
                return dict(json.loads(line))
    return {}


# --- the scenarios ------------------------------------------------------------------------------------


def test_two_operators_one_lease_exactly_one_publishes(ha: HaRig) -> None:
    ha.route("ha-1", spec_to("/ha-1", {"url": ha.upstreams["alpha"].url}))
    ha.wait(lambda: ha.serves("/ha-1", "alpha"), "ha-1 served by every replica")
    ha.wait(lambda: ha.programmed("ha-1", 1), "ha-1 Programmed 3/3")
    leader = ha.leader()
    (standby,) = (op for name, op in ha.operators.items() if name != leader.name)
    ha.wait(lambda: warm(leader, 1) and warm(standby, 1), "both operators compiled the table")

    assert leader.metric("kubegate_operator_leader") == 1
    assert standby.metric("kubegate_operator_leader") == 0
    assert leader.metric("kubegate_operator_pushes_total", result="ok") >= PUSHES_AT_LEAST
    assert leader.metric("kubegate_operator_status_writes_total", result="ok") >= 1
    assert standby.total("kubegate_operator_pushes_total") == 0, "the standby pushed a table"
    assert standby.total("kubegate_operator_status_writes_total") == 0, "the standby wrote a status"
    spec = ha.lease()
    assert spec["holderIdentity"] == leader.name and spec["leaseTransitions"] == 0, spec
    assert spec["leaseDurationSeconds"] == DURATION


def test_the_standby_takes_over_when_the_leader_is_killed(ha: HaRig) -> None:
    leader = ha.leader()
    (standby,) = (op for name, op in ha.operators.items() if name != leader.name)
    leader.stop(signal.SIGKILL)  # a crash: the Lease is not released, it has to expire
    last = ha.lease()  # read after the kill: its renewTime is the dead leader's last (or an earlier) one
    assert last["holderIdentity"] == leader.name, last
    ha.wait(lambda: ha.holder() == standby.name, f"{standby.name} took the Lease over", timeout=GUARD)
    taken = ha.lease()
    gap = stamp(taken["acquireTime"]) - stamp(last["renewTime"])
    assert gap > timedelta(seconds=DURATION - 0.1), ("taken over before the Lease expired", last, taken)
    assert taken["leaseTransitions"] == 1, taken
    ha.wait(lambda: standby.metric("kubegate_operator_leader") == 1, "the new leader says so")

    ha.route("ha-2", spec_to("/ha-2", {"url": ha.upstreams["beta"].url}))
    ha.wait(lambda: ha.serves("/ha-2", "beta"), "ha-2 served after the take-over", timeout=GUARD)
    ha.wait(lambda: ha.programmed("ha-2", 1), "ha-2 Programmed 3/3 by the new leader")
    assert ha.serves("/ha-1", "alpha") and ha.programmed("ha-1", 1)
    assert standby.metric("kubegate_operator_pushes_total", result="ok") >= 1
    assert "acquired leadership" in "\n".join(standby.log_lines())


def test_a_route_created_after_an_api_server_restart_is_programmed(ha: HaRig) -> None:
    survivor = ha.leader()
    ha.kube.stop_apiserver()
    try:
        assert ha.serves("/ha-1", "alpha") and ha.serves("/ha-2", "beta"), "the data planes stopped serving"
        assert survivor.proc.poll() is None
    finally:
        ha.kube.start_apiserver()
    ha.route("ha-3", spec_to("/ha-3", {"url": ha.upstreams["gamma"].url}))
    ha.wait(lambda: ha.serves("/ha-3", "gamma"), "ha-3 served after the restart", timeout=GUARD)
    ha.wait(lambda: ha.programmed("ha-3", 1), "ha-3 Programmed after the restart", timeout=GUARD)
    assert survivor.proc.poll() is None, f"the operator died with the API server\n{ha.logs()}"
    ha.wait(lambda: ha.holder() == survivor.name, "the survivor holds the Lease again")
    assert survivor.metric("kubegate_operator_leader") == 1
    assert ha.programmed("ha-1", 1) and ha.programmed("ha-2", 1)


def test_a_change_behind_a_compacted_watch_is_found_by_a_relist(ha: HaRig) -> None:
    survivor = ha.leader()
    before = str(ha.get("ha-3")["metadata"]["resourceVersion"])  # no watch can hold a later one but ...
    listed = ha.api.get(ROUTES)
    assert listed is not None
    newest = str(listed["metadata"]["resourceVersion"])  # ... the list's, a revision before the outage
    ha.kube.stop_apiserver()
    try:
        written = write_route_into_etcd(
            ha.kube, "ha-etcd", spec_to("/ha-etcd", {"url": ha.upstreams["beta"].url})
        )
        assert written > int(newest)
        revision = int(etcd(ha.kube, "range", {"key": _b64("/registry")})["header"]["revision"])
        etcd(ha.kube, "compaction", {"revision": str(revision), "physical": True})
    finally:
        ha.kube.start_apiserver()
    # The condition the operator's watches met: none can resume from a resourceVersion it could hold.
    for version in (before, newest):
        answer = watch_answer(ha, version)
        assert answer.get("type") == "ERROR" and answer["object"].get("code") == 410, (version, answer)

    ha.wait(lambda: ha.serves("/ha-etcd", "beta"), "the route written behind the watch is served", GUARD)
    ha.wait(lambda: ha.programmed("ha-etcd", 1), "the route written behind the watch is Programmed", GUARD)
    assert survivor.proc.poll() is None, f"the operator died\n{ha.logs()}"
    for name, path, upstream in (
        ("ha-1", "/ha-1", "alpha"),
        ("ha-2", "/ha-2", "beta"),
        ("ha-3", "/ha-3", "gamma"),
    ):
        assert ha.serves(path, upstream) and ha.programmed(name, 1), f"{name} lost after the relist"
    for op in ha.operators.values():
        assert_json_log(op.log_lines())
