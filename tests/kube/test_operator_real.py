"""The operator's whole lifecycle on a real kube-apiserver, with the chart's RBAC and nothing more (issue 12).

Aspects: with 3 real ``kubegate serve`` processes registered through EndpointSlices of the chart's
data-plane admin Service, a route applied with kubectl is served by every replica and its status says
``Programmed`` 3/3 with the route's ``observedGeneration``; the status is written through the status
subresource only (``managedFields``: the operator's field manager owns ``f:status`` and only that, under
``subresource: status``) and writing it bumps no generation, nor does a label edit, while a spec edit does
(generation 2: traffic, status and every condition follow); a metadata writer racing the operator's
status writes (read-modify-write with ``resourceVersion``, retrying its own 409s) never makes a status
write fail: the operator's patches carry no ``resourceVersion`` (the API server applies them to the
current object, and the generation test keeps them from landing on a newer spec); an EndpointSlice
change moves traffic to the new endpoint only; an invalid route is ``Accepted=False`` naming the field
while the others keep serving; a missing Service gives ``ResolvedRefs=False`` and 500 until it is
created; a route whose API-key Secret existed before it admits the key; the replica set follows the
admin Service's EndpointSlices (3/3, 2/2, 3/3); a cached route (``cache``, Memory store) answers a MISS
then a HIT with ``Age`` through every replica, its upstream reached once per replica, and an edit of its
cache policy is followed by the status (generation 2) and by every replica's answers; a Local rate limit
keyed by Route admits its burst through one replica, then answers 429 with ``Retry-After`` and the
RateLimit headers, while another replica still admits; a deleted route gives 404, and one deleted and
created again at once gets a status of its own (found here: see ``StatusWriter.previous``).

RBAC, least privilege: the chart is rendered (``operator.watchNamespaces``: one routes namespace; leader
election on, as by default), its ServiceAccount, ClusterRole, RoleBindings, Role and admin Service are
applied, a token is minted for the ServiceAccount (``kubectl create token``) and the operator runs with
that credential and the arguments of the chart's Deployment. It creates the push token's Secret (the
chart renders none by default), before its mounted copy exists (the file is never written here: the
operator sends the token it created), and the data planes start with that token once it exists, as
pods waiting for the Secret would. The API server's audit
log (``tests/controlplane.py`` logs the requests of ServiceAccounts) shows that it was refused nothing
through the whole lifecycle (the Lease released at SIGTERM included), never met a 409, and used every
grant of the chart but ``get`` on the kinds it lists and watches; with the same token, changing or
deleting a route, replacing (rather than patching) its status, and reading a Secret of a namespace it does
not watch, or Secrets everywhere, are refused.

The loopback problem: the real API server refuses EndpointSlice addresses in 127.0.0.0/8, and the data
planes and upstreams here are local processes. They are bound to a non-loopback IPv4 address of this
machine instead (:func:`local_address`: the source address the kernel would pick for an outside
destination, learned by connecting a UDP socket, which sends nothing; else the first global address
``ip -4 addr`` lists), and that address goes in the EndpointSlices: all traffic stays on this host. That
is the ``addressType: IPv4`` slice the EndpointSlice controller writes for real pods, where an ``FQDN``
slice (which the compiler accepts for backends) would test a path that real data planes never take. On a
machine without such an address, the tests skip with one line saying so.

What it cannot check: there is no kubelet or controller-manager, so the slices are written by the test,
not by the EndpointSlice controller, and the Pods of the rendered Deployments are never applied.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import functools
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kubegate.api import crd
from kubegate_operator.kube import field_manager
from tests import controlplane
from tests.delivery import helm as helmtools
from tests.delivery.conftest import HOW_TO_GET, missing
from tests.gateway import GatewayProcess
from tests.operator.conftest import Operator, assert_json_log, endpoint_slice, gatewayroute, service
from tests.upstreams import UpstreamServer, wait_for

ROOT = Path(__file__).resolve().parents[2]
RELEASE = "kubegate"
RELEASE_NS = "opreal-system"  # the chart's namespace: the operator's own objects, the data-plane Services
ROUTES_NS = "opreal-routes"  # operator.watchNamespaces
OTHER_NS = "opreal-other"  # not watched: the operator must not read its Secrets
REPLICAS = 3
MANAGER = field_manager("kubegate")
ROUTES = f"/apis/kubegate.dev/v1alpha1/namespaces/{ROUTES_NS}/gatewayroutes"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
TEST_FLAGS = ("--holdoff", "0.02", "--max-delay", "0.2", "--resync-interval", "0.5")


def local_address() -> str | None:
    """A non-loopback IPv4 address of this machine that a socket can bind and reach (None if none)."""
    candidates: list[str] = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("203.0.113.1", 9))  # TEST-NET-3; a UDP connect only picks the route
        candidates.append(probe.getsockname()[0])
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, timeout=5
        ).stdout
        candidates += [line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3]
    for candidate in candidates:
        address = ipaddress.ip_address(candidate)
        if address.is_loopback or address.is_link_local or address.is_unspecified:
            continue  # the API server refuses these in an EndpointSlice
        if _reachable(candidate):
            return candidate
    return None


def _reachable(host: str) -> bool:
    try:
        with socket.socket() as server:
            server.bind((host, 0))
            server.listen(1)
            socket.create_connection(server.getsockname(), timeout=2).close()
    except OSError:
        return False
    return True


class Api:
    """The admin's REST client of the control plane (cheaper than a kubectl process per poll)."""

    def __init__(self, kube: controlplane.ControlPlane) -> None:
        self.http = httpx.Client(
            base_url=kube.url,
            verify=ssl.create_default_context(cafile=str(kube.ca_file)),
            headers={"Authorization": f"Bearer {kube.admin_token}"},
            trust_env=False,
            timeout=10,
        )

    def get(self, path: str) -> dict[str, Any] | None:
        response = self.http.get(path)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return dict(response.json())

    def send(self, method: str, path: str, body: object, content_type: str = "application/json") -> int:
        response = self.http.request(
            method, path, content=json.dumps(body), headers={"Content-Type": content_type}
        )
        return response.status_code


class Rig:
    """The chart's RBAC and Services applied, 3 data planes and 3 upstreams on :attr:`host`, and the
    operator running with the ServiceAccount's token."""

    def __init__(self, kube: controlplane.ControlPlane, tmp: Path, host: str) -> None:
        self.kube = kube
        self.tmp = tmp
        self.host = host
        self.api = Api(kube)
        self.http = httpx.Client(trust_env=False, timeout=5)
        self.rendered = render_chart()
        self.gateways: list[GatewayProcess] = []
        self.upstreams: dict[str, UpstreamServer] = {}
        self.operator: Operator | None = None
        self.token = ""

    # --- set-up ---------------------------------------------------------------------------------------

    def start(self) -> None:
        kubectl = self.kube.kubectl
        kubectl("apply", "-f", str(ROOT / "crds"))
        kubectl("wait", "--for=condition=Established", f"crd/{crd.CRD_NAME}", "--timeout=30s")
        namespaces = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            for ns in (RELEASE_NS, ROUTES_NS, OTHER_NS)
        ]
        self.apply(*namespaces)
        self.apply(*(d for d in self.rendered if d["kind"] in RBAC_KINDS), self.one("Service", "-admin"))
        assert [d for d in self.rendered if d["kind"] == "Secret"] == []  # the operator makes the token's
        self.token = kubectl(
            "create", "token", self.service_account, "-n", RELEASE_NS, "--duration=1h"
        ).stdout.strip()
        for name in ("alpha", "beta", "gamma"):
            self.upstreams[name] = UpstreamServer(name, host=self.host).start()
        token_file = self.tmp / "push-token"  # never written: the optional volume the kubelet has not filled
        self.operator = Operator("operator", self.operator_args(token_file), self.operator_env(), self.log)
        secret = self.wait(
            lambda: self.api.get(f"/api/v1/namespaces/{RELEASE_NS}/secrets/{RELEASE}-push-token"),
            "the operator creates the push token's Secret",
        )
        assert secret["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubegate"
        push_token = base64.b64decode(secret["data"]["token"]).decode()
        assert len(push_token) == 43
        with concurrent.futures.ThreadPoolExecutor(REPLICAS) as pool:
            starting = [
                pool.submit(GatewayProcess, self.tmp, token=push_token, host=self.host)
                for _ in range(REPLICAS)
            ]
            self.gateways = [future.result() for future in starting]
        self.register(self.gateways)

    @property
    def log(self) -> Path:
        return self.tmp / "operator.log"

    @property
    def service_account(self) -> str:
        return str(self.one("ServiceAccount", "-operator")["metadata"]["name"])

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{RELEASE_NS}:{self.service_account}"

    def one(self, kind: str, suffix: str) -> dict[str, Any]:
        """The one rendered object of ``kind`` whose name ends with ``suffix``."""
        found = [d for d in self.rendered if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
        assert len(found) == 1, f"{kind} *{suffix}: {[d['metadata']['name'] for d in found]}"
        return found[0]

    def operator_args(self, token_file: Path) -> list[str]:
        """The arguments of the chart's operator container, with a local token file and metrics port."""
        container = self.one("Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
        args = [sys.executable, "-m", "kubegate_operator"]
        for arg in container["args"]:
            if arg.startswith("--push-token-file="):
                arg = f"--push-token-file={token_file}"
            elif arg.startswith("--metrics-port="):
                continue  # Operator picks a free one
            args.append(arg)
        return [*args, *TEST_FLAGS, "--identity", "operator-real"]

    def operator_env(self) -> dict[str, str]:
        """The environment, with a kubeconfig holding the ServiceAccount's token (and nothing that would
        make the operator load another configuration)."""
        kubeconfig = self.tmp / "operator-kubeconfig"
        ca = base64.b64encode(self.kube.ca_file.read_bytes()).decode()
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "c", "cluster": {"server": self.kube.url, "certificate-authority-data": ca}}
                    ],
                    "users": [{"name": "operator", "user": {"token": self.token}}],
                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "operator"}}],
                    "current-context": "c",
                }
            ),
            encoding="utf-8",
        )
        kubeconfig.chmod(0o600)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("KUBEGATE_", "KUBERNETES_")) and k != "POD_NAME"
        }
        return {**env, "KUBECONFIG": str(kubeconfig), "NO_PROXY": "*"}

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()
        for gateway in self.gateways:
            gateway.stop()
        for upstream in self.upstreams.values():
            upstream.stop()
        self.http.close()
        self.api.http.close()

    # --- the cluster ----------------------------------------------------------------------------------

    def apply(self, *bodies: dict[str, Any]) -> None:
        self.kube.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(b) for b in bodies))

    def register(self, gateways: list[GatewayProcess]) -> None:
        """The admin Service's EndpointSlices list exactly ``gateways``: one slice each (their admin
        ports differ, and a slice has one set of ports), as the EndpointSlice controller would."""
        admin = self.one("Service", "-admin")["metadata"]["name"]
        wanted = {}
        for gateway in gateways:
            body = endpoint_slice(
                f"{admin}-{gateway.admin_port}", admin, [self.host], gateway.admin_port, RELEASE_NS,
                port_name="admin",
            )  # fmt: skip
            wanted[body["metadata"]["name"]] = body
        path = f"/apis/discovery.k8s.io/v1/namespaces/{RELEASE_NS}/endpointslices"
        existing = self.api.get(f"{path}?labelSelector=kubernetes.io/service-name={admin}") or {}
        for item in existing.get("items", []):
            if item["metadata"]["name"] not in wanted:
                assert self.api.send("DELETE", f"{path}/{item['metadata']['name']}", {}) == 200
        self.apply(*wanted.values())

    def backend(self, name: str, upstream: str) -> None:
        """A Service ``name`` whose one endpoint is the upstream ``upstream``."""
        port = self.upstreams[upstream].port
        self.apply(
            service(name, 80, ROUTES_NS), endpoint_slice(f"{name}-1", name, [self.host], port, ROUTES_NS)
        )

    def route(self, name: str, spec: dict[str, Any]) -> None:
        self.apply(gatewayroute(name, spec, ROUTES_NS))

    def get(self, name: str) -> dict[str, Any]:
        body = self.api.get(f"{ROUTES}/{name}")
        assert body is not None, f"route {name} not found"
        return body

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        for cond in (self.get(name).get("status") or {}).get("conditions", []):
            if cond["type"] == type_:
                return dict(cond)
        return {}

    def programmed(self, name: str, generation: int, replicas: int = REPLICAS) -> bool:
        """Programmed n/n, with ``generation`` as the status's and every condition's observedGeneration."""
        body = self.get(name)
        st = body.get("status") or {}
        conditions = {c["type"]: c for c in st.get("conditions", [])}
        programmed = conditions.get("Programmed", {})
        return (
            body["metadata"]["generation"] == generation
            and st.get("observedGeneration") == generation
            and {c.get("observedGeneration") for c in conditions.values()} == {generation}
            and programmed.get("status") == "True"
            and programmed.get("message") == f"{replicas}/{replicas} replicas"
        )

    # --- traffic --------------------------------------------------------------------------------------

    def answers(self, path: str, headers: dict[str, str] | None = None) -> list[tuple[int, str | None]]:
        """(status, x-backend) of one request through each data plane."""
        out: list[tuple[int, str | None]] = []
        for gateway in self.gateways:
            try:
                response = self.http.get(gateway.url + path, headers=headers)
            except httpx.HTTPError:
                out.append((0, None))
                continue
            out.append((response.status_code, response.headers.get("x-backend")))
        return out

    def serves(self, path: str, backend: str, headers: dict[str, str] | None = None) -> bool:
        return self.answers(path, headers) == [(200, backend)] * len(self.gateways)

    def statuses(self, path: str) -> set[int]:
        return {code for code, _ in self.answers(path)}

    def reached(self, upstream: str, target: str) -> int:
        """How many requests for ``target`` (path and query) the upstream ``upstream`` has received."""
        return sum(1 for _, seen, _, _ in list(self.upstreams[upstream].requests) if seen == target)

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
        try:
            return wait_for(predicate, timeout=timeout, interval=0.05)
        except TimeoutError:
            tail = "\n".join(self.operator.log_lines()[-30:]) if self.operator else "(no operator)"
            raise AssertionError(f"not in {timeout} s: {what}\n--- operator log tail:\n{tail}") from None


def render_chart() -> list[dict[str, Any]]:
    """``helm template`` of the chart in :data:`RELEASE_NS`, watching :data:`ROUTES_NS` only."""
    found = helmtools.available()
    if not found:
        missing(HOW_TO_GET[4])
    helm = found[max(found)]
    result = helm.run(
        "template", RELEASE, str(helmtools.CHART), "--namespace", RELEASE_NS,
        "--set", f"operator.watchNamespaces={{{ROUTES_NS}}}", check=True,
    )  # fmt: skip
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module")
def rig(control_plane: controlplane.ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    host = local_address()
    if host is None:
        pytest.skip("no non-loopback IPv4 address on this machine (EndpointSlices refuse 127.0.0.0/8)")
    made = Rig(control_plane, tmp_path_factory.mktemp("operator-real"), host)
    try:
        made.start()
        yield made
    finally:
        made.stop()


def spec_to(prefix: str, backend: dict[str, Any]) -> dict[str, Any]:
    return {"match": {"path": {"type": "Prefix", "value": prefix}}, "backends": [backend]}


# --- the lifecycle ----------------------------------------------------------------------------------------


def test_a_route_is_served_by_every_replica_and_programmed_through_the_status_subresource(rig: Rig) -> None:
    rig.backend("alpha", "alpha")
    rig.route("route-a", spec_to("/a", {"service": "alpha", "port": 80}))
    rig.wait(lambda: rig.serves("/a/x", "alpha"), "route-a served by every replica")
    rig.wait(lambda: rig.programmed("route-a", 1), "route-a Programmed 3/3 at generation 1")
    assert {gateway.table()["version"] for gateway in rig.gateways} == {rig.gateways[0].table()["version"]}, (
        "every replica serves one table"
    )

    body = rig.get("route-a")
    assert body["metadata"]["generation"] == 1, "writing the status bumped the generation"
    conditions = {c["type"]: c["status"] for c in body["status"]["conditions"]}
    assert conditions == {"Accepted": "True", "ResolvedRefs": "True", "Programmed": "True"}
    ours = [e for e in body["metadata"]["managedFields"] if e["manager"] == MANAGER]
    assert ours, f"no managedFields entry of {MANAGER}"
    for entry in ours:
        assert entry.get("subresource") == "status", entry
        assert set(entry["fieldsV1"]) == {"f:status"}, entry

    def events() -> list[tuple[str, str]]:
        listed = rig.api.get(f"/api/v1/namespaces/{ROUTES_NS}/events") or {}
        return [
            (e["type"], e["reason"])
            for e in listed.get("items", [])
            if e["involvedObject"].get("uid") == body["metadata"]["uid"]
        ]

    rig.wait(lambda: events() == [("Normal", "Accepted")], "an Accepted event on route-a")


def test_the_generation_moves_on_spec_edits_only_and_the_status_follows(rig: Rig) -> None:
    rig.route("route-e", spec_to("/e", {"url": rig.upstreams["alpha"].url}))
    rig.wait(lambda: rig.programmed("route-e", 1), "route-e Programmed at generation 1")
    before = rig.get("route-e")

    labelled = rig.api.send(
        "PATCH", f"{ROUTES}/route-e", {"metadata": {"labels": {"team": "e"}}}, "application/merge-patch+json"
    )
    assert labelled == 200
    after = rig.get("route-e")
    assert after["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]
    assert after["metadata"]["generation"] == 1, "a label edit bumped the generation"
    assert rig.programmed("route-e", 1)

    rig.route("route-e", spec_to("/e", {"url": rig.upstreams["beta"].url}))  # kubectl apply: a spec edit
    assert rig.get("route-e")["metadata"]["generation"] == 2
    rig.wait(lambda: rig.serves("/e/1", "beta"), "route-e moved to beta")
    rig.wait(lambda: rig.programmed("route-e", 2), "route-e Programmed at generation 2")


def test_status_writes_never_fail_on_a_concurrent_writer(rig: Rig) -> None:
    """Another client rewrites the route's labels (GET, then PUT with its resourceVersion, retrying its
    own 409s) as fast as it can while the spec changes: the operator's status still lands at each
    generation, and none of its status writes fails."""
    assert rig.operator is not None
    rig.route("route-c", spec_to("/c", {"url": rig.upstreams["alpha"].url}))
    rig.wait(lambda: rig.programmed("route-c", 1), "route-c Programmed at generation 1")
    errors_before = rig.operator.metric("kubegate_operator_status_writes_total", result="error")
    stop = threading.Event()
    codes: list[int] = []  # of the writer's PUTs

    def scribble() -> None:
        client = Api(rig.kube)
        try:
            while not stop.is_set():
                body = client.get(f"{ROUTES}/route-c")
                assert body is not None
                body["metadata"].setdefault("labels", {})["scribble"] = str(len(codes))
                codes.append(client.send("PUT", f"{ROUTES}/route-c", body))
        finally:
            client.http.close()

    scribbler = threading.Thread(target=scribble, daemon=True)
    scribbler.start()
    try:
        for generation, upstream in ((2, "beta"), (3, "gamma"), (4, "alpha")):
            rig.route("route-c", spec_to("/c", {"url": rig.upstreams[upstream].url}))
            rig.wait(functools.partial(rig.serves, "/c", upstream), f"route-c moved to {upstream}")
            rig.wait(functools.partial(rig.programmed, "route-c", generation), f"route-c at {generation}")
    finally:
        stop.set()
        scribbler.join(10)
    assert not scribbler.is_alive()
    # 409: the object changed between the writer's GET and PUT (the operator's writes among the causes)
    assert set(codes) <= {200, 409} and 200 in codes, codes
    errors = rig.operator.metric("kubegate_operator_status_writes_total", result="error")
    assert errors == errors_before, "a status write failed"


def test_an_endpointslice_change_moves_traffic(rig: Rig) -> None:
    rig.backend("moving", "alpha")
    rig.route("route-m", spec_to("/m", {"service": "moving", "port": 80}))
    rig.wait(lambda: rig.serves("/m", "alpha"), "route-m served by alpha")

    rig.backend("moving", "gamma")  # the same slice, another port
    rig.wait(lambda: rig.serves("/m", "gamma"), "traffic moved to gamma")
    seen = {backend for _ in range(5) for _, backend in rig.answers("/m")}
    assert seen == {"gamma"}, "a removed endpoint still gets traffic"


def test_an_invalid_route_is_isolated(rig: Rig) -> None:
    rig.route("route-good", spec_to("/g", {"url": rig.upstreams["beta"].url}))
    rig.wait(lambda: rig.programmed("route-good", 1), "route-good Programmed")
    bad = spec_to("/bad", {"url": rig.upstreams["alpha"].url})
    bad["match"]["headers"] = [{"name": "X-V", "type": "RegularExpression", "value": "(["}]  # the CRD lets it
    rig.route("route-bad", bad)
    rig.wait(lambda: rig.condition("route-bad", "Accepted").get("status") == "False", "route-bad rejected")
    accepted = rig.condition("route-bad", "Accepted")
    assert accepted["reason"] == "Invalid" and "spec.match.headers[0].value" in accepted["message"]
    assert accepted["observedGeneration"] == 1
    assert rig.condition("route-bad", "Programmed")["status"] == "False"
    assert rig.statuses("/bad") == {404}
    assert rig.serves("/g", "beta") and rig.programmed("route-good", 1)


def test_a_missing_service_is_resolvedrefs_false_and_500_until_it_exists(rig: Rig) -> None:
    rig.route("route-missing", spec_to("/missing", {"service": "later", "port": 80}))
    rig.wait(
        lambda: rig.condition("route-missing", "ResolvedRefs").get("reason") == "BackendNotFound",
        "route-missing ResolvedRefs=False",
    )
    resolved = rig.condition("route-missing", "ResolvedRefs")
    assert resolved["status"] == "False" and f"Service {ROUTES_NS}/later not found" in resolved["message"]
    rig.wait(lambda: rig.statuses("/missing") == {500}, "route-missing answers 500")

    rig.backend("later", "beta")
    rig.wait(lambda: rig.serves("/missing", "beta"), "route-missing served once its Service exists")
    rig.wait(lambda: rig.condition("route-missing", "ResolvedRefs").get("status") == "True", "resolved")


def test_a_route_naming_a_secret_that_existed_before_it_admits_its_key(rig: Rig) -> None:
    """The Secret's watch event was dropped (no route named it): the operator reads it once (``get``)."""
    key = base64.b64encode(b"s3cret-key").decode()
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "partner-keys", "namespace": ROUTES_NS},
        "data": {"partner": key},
    }
    rig.apply(secret)
    spec = spec_to("/k", {"url": rig.upstreams["gamma"].url})
    spec["auth"] = {"apiKey": {"header": "X-API-Key", "secretRef": {"name": "partner-keys"}}}
    rig.route("route-k", spec)
    rig.wait(lambda: rig.serves("/k", "gamma", {"X-API-Key": "s3cret-key"}), "route-k admits the key")
    assert rig.statuses("/k") == {401}
    rig.wait(lambda: rig.programmed("route-k", 1), "route-k Programmed")


def test_the_replica_set_follows_the_admin_endpointslices(rig: Rig) -> None:
    rig.route("route-r", spec_to("/r", {"url": rig.upstreams["alpha"].url}))
    rig.wait(lambda: rig.programmed("route-r", 1), "route-r Programmed 3/3")
    rig.register(rig.gateways[:2])
    rig.wait(lambda: rig.programmed("route-r", 1, replicas=2), "route-r Programmed 2/2")
    rig.register(rig.gateways)
    rig.wait(lambda: rig.programmed("route-r", 1), "route-r Programmed 3/3 again")


def test_a_deleted_route_gives_404_and_one_created_again_gets_a_status(rig: Rig) -> None:
    spec = spec_to("/d", {"url": rig.upstreams["alpha"].url})
    rig.route("route-d", spec)
    rig.wait(lambda: rig.programmed("route-d", 1), "route-d Programmed")
    rig.wait(lambda: rig.serves("/d", "alpha"), "route-d served")
    first = rig.get("route-d")["metadata"]["uid"]

    # Deleted and created again at once (kubectl replace --force does this): the same name, generation
    # and spec, a new object without a status.
    assert rig.api.send("DELETE", f"{ROUTES}/route-d", {}) == 200
    assert rig.api.send("POST", ROUTES, gatewayroute("route-d", spec, ROUTES_NS)) == 201
    assert rig.get("route-d")["metadata"]["uid"] != first
    rig.wait(lambda: rig.programmed("route-d", 1), "the new route-d gets a status of its own")

    assert rig.api.send("DELETE", f"{ROUTES}/route-d", {}) == 200
    rig.wait(lambda: rig.statuses("/d") == {404}, "route-d gone: 404")


# --- edge policies through the operator: the response cache and a Local rate limit ------------------------


def cached_route(rig: Rig, **cache: Any) -> dict[str, Any]:
    """route-cache's spec: /cacheable to beta, whose /cacheable answers say nothing of freshness (no
    Cache-Control, no Expires), so the route's ``ttl`` is what keeps them; ``cache`` changes the policy."""
    spec = spec_to("/cacheable", {"url": rig.upstreams["beta"].url})
    spec["cache"] = {"ttl": "60s", "store": "Memory", **cache}
    return spec


def assert_miss_then_hit(rig: Rig, target: str, again: str) -> None:
    """Through each replica in turn: ``target`` is a MISS that reaches beta, then ``again`` is a HIT, the
    stored answer with an ``Age``, that does not: beta sees ``target`` once per replica (each replica's
    Memory store is its own) and ``again``, when it differs, never."""
    for replicas, gateway in enumerate(rig.gateways, 1):
        first = rig.http.get(gateway.url + target)
        assert (first.status_code, first.headers.get("x-backend")) == (200, "beta"), gateway.url
        assert first.headers.get("x-cache") == "MISS" and "age" not in first.headers, first.headers
        assert rig.reached("beta", target) == replicas
        second = rig.http.get(gateway.url + again)
        assert (second.status_code, second.headers.get("x-cache")) == (200, "HIT"), second.headers
        assert int(second.headers["age"]) >= 0
        assert second.content == first.content, "not the stored answer"  # its "served" count is the MISS's
        assert rig.reached("beta", target) == replicas, "the HIT reached the upstream"
    if again != target:
        assert rig.reached("beta", again) == 0


def test_a_cached_route_answers_a_miss_then_a_hit_through_every_replica(rig: Rig) -> None:
    rig.route("route-cache", cached_route(rig))
    # Programmed 3/3: every replica acknowledged a table holding the route (no request is sent before the
    # MISS this test expects).
    rig.wait(lambda: rig.programmed("route-cache", 1), "route-cache Programmed 3/3")
    assert_miss_then_hit(rig, "/cacheable/item?case=first", "/cacheable/item?case=first")
    assert rig.reached("beta", "/cacheable/item?case=first") == REPLICAS


def test_a_local_rate_limit_admits_its_burst_then_answers_429(rig: Rig) -> None:
    """key Route, scope Local: one budget per replica, burst + 1 = 3 requests at once. The rate is one
    request per 100 s, so that what is tested is the burst, never the refill: at 1/s, a pause of a second
    between the first request and the fourth on a slow machine would admit the fourth."""
    spec = spec_to("/limited", {"url": rig.upstreams["gamma"].url})
    spec["rateLimit"] = {"requestsPerSecond": 0.01, "burst": 2, "scope": "Local", "key": "Route"}
    rig.route("route-limit", spec)
    rig.wait(lambda: rig.programmed("route-limit", 1), "route-limit Programmed 3/3")  # nothing sent before
    one = rig.gateways[0]
    answers = [rig.http.get(one.url + "/limited/n") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers.get("x-backend") for a in answers[:3]] == ["gamma"] * 3
    name = f'"{ROUTES_NS}/route-limit"'
    assert [a.headers.get("ratelimit-policy") for a in answers] == [f"{name};q=3;w=100"] * 4
    limits = [a.headers.get("ratelimit", "") for a in answers]
    for limit, remaining in zip(limits, (2, 1, 0, 0), strict=True):
        assert limit.startswith(f"{name};r={remaining};t="), limits
    refused = answers[3]
    assert refused.json()["message"] == "rate limit exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert [a.headers.get("retry-after") for a in answers[:3]] == [None] * 3
    assert rig.reached("gamma", "/limited/n") == 3, "the refused request reached the upstream"
    # Local: the budget spent was that replica's own; another one still admits.
    other = rig.http.get(rig.gateways[1].url + "/limited/n")
    assert (other.status_code, other.headers.get("x-backend")) == (200, "gamma")


def test_a_cache_spec_edit_is_followed_by_the_status_and_by_every_replica(rig: Rig) -> None:
    rig.route("route-cache", cached_route(rig))  # unchanged when the test above ran: still generation 1
    rig.wait(lambda: rig.programmed("route-cache", 1), "route-cache Programmed at generation 1")
    rig.route("route-cache", cached_route(rig, ttl="120s", keyQueryParams="none"))
    assert rig.get("route-cache")["metadata"]["generation"] == 2
    rig.wait(lambda: rig.programmed("route-cache", 2), "route-cache Programmed 3/3 at generation 2")
    assert rig.get("route-cache")["status"]["observedGeneration"] == 2
    # Served with the new policy by every replica: the query is no longer part of the key, so ?v=2 is
    # answered with what ?v=1 stored (under generation 1's keyQueryParams "all", a MISS of its own).
    assert_miss_then_hit(rig, "/cacheable/edited?v=1", "/cacheable/edited?v=2")


# --- RBAC: least privilege (last: it stops the operator) -------------------------------------------------


def _used(event: dict[str, Any]) -> tuple[str, str, str]:
    ref = event.get("objectRef") or {}
    resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return event["verb"], ref.get("apiGroup", ""), resource


def _granted(rig: Rig) -> set[tuple[str, str, str]]:
    rules = rig.one("ClusterRole", "-operator")["rules"] + rig.one("Role", "-operator-self")["rules"]
    return {
        (verb, group, resource)
        for rule in rules
        for verb in rule["verbs"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def test_the_operator_needs_nothing_the_chart_does_not_grant(rig: Rig) -> None:
    """The summary of the lifecycle above (run it with the module): what the operator asked the API
    server for, from its start to its SIGTERM."""
    assert rig.operator is not None
    lease = rig.api.get(f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NS}/leases/{RELEASE}-operator")
    assert lease is not None and lease["spec"]["holderIdentity"] == "operator-real"
    bootstrap = rig.api.get(f"/api/v1/namespaces/{RELEASE_NS}/secrets/{RELEASE}-bootstrap")
    assert bootstrap is not None and "table.json.gz" in bootstrap["data"]
    rig.operator.stop(signal.SIGTERM)  # releases the Lease: its last requests
    assert rig.operator.proc.returncode == 0
    lease = rig.api.get(f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NS}/leases/{RELEASE}-operator")
    assert lease is not None and lease["spec"]["holderIdentity"] == "", "the Lease was not released"

    events = rig.kube.audit_events(rig.user)
    assert events, f"no request of {rig.user} in the audit log"
    answers = {(*_used(e), e["responseStatus"]["code"]) for e in events}
    refused = sorted(a for a in answers if a[3] in (401, 403))
    assert refused == [], f"the chart's RBAC refused the operator: {refused}"
    # 404: the Lease and the bootstrap and push-token Secrets before it created them; 422: a stale status
    # write. Never a 409: its writes carry no resourceVersion (the Lease's is a JSON patch's test: 422
    # when lost), and it alone creates the push token's Secret.
    assert {a[3] for a in answers} <= {200, 201, 404, 422}, sorted(answers)
    used = {_used(e) for e in events if _used(e)[2]}  # discovery (non-resource URLs) aside
    assert used <= _granted(rig)
    # Every grant of the chart was needed, except get on the kinds it lists and watches (the operator
    # never reads one of those by name; a get reveals nothing that the list does not, so the chart keeps
    # the usual get/list/watch). Nothing cluster-wide: kopf's scanning of Namespaces and CRDs is off.
    assert _granted(rig) - used == {
        ("get", "kubegate.dev", "gatewayroutes"),
        ("get", "discovery.k8s.io", "endpointslices"),
        ("get", "", "services"),
    }
    records = assert_json_log(rig.operator.log_lines())
    noisy = [r["message"] for r in records if r["level"] in ("warning", "error", "critical")]
    assert noisy == [], noisy


def test_the_operator_s_token_cannot_change_specs_or_read_unwatched_secrets(rig: Rig) -> None:
    as_operator = ("--token", rig.token)
    rig.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "elsewhere", "namespace": OTHER_NS},
            "stringData": {"k": "v"},
        }
    )
    rig.route("route-x", spec_to("/x", {"url": rig.upstreams["alpha"].url}))
    refusals = {
        "change a route's spec": (
            "patch", "gatewayroute", "route-x", "-n", ROUTES_NS, "--type=merge",
            "-p", '{"spec": {"match": {"path": {"type": "Prefix", "value": "/hijacked"}}}}',
        ),
        "replace a route's status": ("replace", "--subresource=status", "-f", "-"),
        "read a Secret of a namespace it does not watch": ("get", "secret", "elsewhere", "-n", OTHER_NS),
        "list Secrets everywhere": ("get", "secrets", "--all-namespaces"),
        "delete a route": ("delete", "gatewayroute", "route-x", "-n", ROUTES_NS),
    }  # fmt: skip
    route = json.dumps(rig.get("route-x"))
    for what, args in refusals.items():
        result = rig.kube.kubectl(*args, *as_operator, stdin=route, check=False)
        assert result.returncode != 0 and "Forbidden" in result.stderr, f"it may {what}: {result.stderr}"
    assert rig.get("route-x")["spec"]["match"]["path"]["value"] == "/x"
    # ... while what it must do is granted, with the same token.
    allowed = rig.kube.kubectl("get", "secrets", "-n", ROUTES_NS, *as_operator, check=False)
    assert allowed.returncode == 0, allowed.stderr
