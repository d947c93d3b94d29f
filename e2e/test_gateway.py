"""kubegate in a real cluster (kind), through real HTTP; runs in file order on one installation.

Aspects covered: the example routes turn Accepted and Programmed (``kubectl get gwr`` columns); traffic
for every example feature flows through the NodePort Service; scaling the data plane from 2 to 4 with
``helm upgrade`` keeps the push token and every replica serves; a rolling restart of the data plane
under a steady request stream loses no request; deleting the operator pods interrupts no traffic and
the new leader serves new routes; with the operator down, a new data-plane replica serves from the
bootstrap Secret; invalid routes are refused by the schema or reported in their status, without
disturbing the others.
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import yaml

from e2e import cluster as c

OPERATOR = f"deployment/{c.RELEASE}-operator"
DATAPLANE = f"deployment/{c.RELEASE}-dataplane"
EXAMPLE_NAMES = sorted(doc["metadata"]["name"] for doc in c.example_routes())


def route(name: str, path: str, backends: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubegate.dev/v1alpha1",
        "kind": "GatewayRoute",
        "metadata": {"name": name},
        "spec": {"match": {"path": {"type": "Prefix", "value": path}, **match}, "backends": backends},
    }


def condition(kube: c.Cluster, name: str, kind: str) -> dict[str, Any]:
    return kube.routes().get(name, {}).get(kind, {})


def wait_programmed(kube: c.Cluster, names: list[str], replicas: int) -> None:
    def check() -> bool:
        routes = kube.routes()
        return all(
            routes.get(n, {}).get("Accepted", {}).get("status") == "True"
            and routes[n].get("Programmed", {}).get("status") == "True"
            and re.search(rf"\b{replicas}/{replicas}\b", routes[n]["Programmed"].get("message", ""))
            for n in names
        )

    c.wait_until(f"routes {names} Accepted and Programmed on {replicas}/{replicas} replicas", check)


def ready_dataplane_pods(kube: c.Cluster, count: int) -> list[str]:
    def check() -> list[str] | None:
        pods = kube.pods(c.NAMESPACE, "dataplane")
        ready = [
            p["metadata"]["name"]
            for p in pods
            if any(x["type"] == "Ready" and x["status"] == "True" for x in p["status"].get("conditions", []))
        ]
        return ready if len(pods) == count and len(ready) == count else None

    return c.wait_until(f"{count} ready data-plane pods", check)


def get(kube: c.Cluster, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(kube.gateway + path, timeout=10, **kwargs)


def test_example_routes_are_accepted_and_programmed(kube: c.Cluster) -> None:
    wait_programmed(kube, EXAMPLE_NAMES, replicas=2)
    lines = kube.kubectl("get", "gwr", "-n", c.APPS).splitlines()
    assert lines[0].split() == ["NAME", "ACCEPTED", "PROGRAMMED", "AGE"]
    rows = {line.split()[0]: line.split()[1:3] for line in lines[1:]}
    assert rows == {name: ["True", "True"] for name in EXAMPLE_NAMES}


def test_traffic_flows_for_every_example(kube: c.Cluster) -> None:
    def backend(response: httpx.Response) -> str:
        assert response.status_code == 200, response.text
        return str(response.json()["backend"])

    def is_canary(name: str) -> bool:
        return name.startswith("echo-canary-")

    echo = get(kube, "/echo/hello?x=1")
    assert echo.json()["path"] == "/echo/hello" and echo.json()["query"] == "x=1"
    assert not is_canary(backend(echo))  # route-prefix: Service "echo" (its pods' names)
    assert get(kube, "/echoes").status_code == 404  # a prefix stops at a segment boundary
    backend(get(kube, "/status"))  # route-exact
    assert get(kube, "/status/more").status_code == 404
    backend(get(kube, "/api/v2/users/7/orders"))  # route-glob
    assert get(kube, "/api/users").status_code == 404
    backend(get(kube, "/catalog/42"))  # route-methods
    assert httpx.delete(kube.gateway + "/catalog/42", timeout=10).status_code == 404
    backend(get(kube, "/anything", headers={"Host": "a.b.demo.example.com"}))  # route-hosts
    assert is_canary(backend(get(kube, "/beta/x", headers={"X-Env": "canary", "X-User-Id": "42"})))
    assert get(kube, "/beta/x", headers={"X-Env": "canary"}).status_code == 404  # route-headers
    assert is_canary(backend(get(kube, "/search?v=2&debug=1")))  # route-query
    assert get(kube, "/search?v=1").status_code == 404
    backend(get(kube, "/static/x"))  # route-url-backend (cluster DNS name)
    backend(get(kube, "/reports"))  # route-timeout
    shares = [is_canary(backend(get(kube, "/shop"))) for _ in range(200)]  # route-weighted, 9:1
    assert 0 < sum(shares) < 50, f"{sum(shares)} of 200 requests went to the canary (expected about 20)"


def test_scaling_from_2_to_4_with_helm_upgrade(kube: c.Cluster) -> None:
    token = kube.get_json("secret", f"{c.RELEASE}-push-token", "-n", c.NAMESPACE)["data"]
    kube.helm(
        "upgrade", c.RELEASE, str(c.CHART), "--namespace", c.NAMESPACE, "--reuse-values",
        "--set", "dataplane.replicas=4", "--timeout", "5m",
    )  # fmt: skip
    assert kube.get_json("secret", f"{c.RELEASE}-push-token", "-n", c.NAMESPACE)["data"] == token
    kube.rollout(DATAPLANE, c.NAMESPACE)
    pods = ready_dataplane_pods(kube, 4)
    for pod in pods:  # each replica itself, not just the Service
        assert kube.via_pod(pod, f"/echo/{pod}")["path"] == f"/echo/{pod}"
    wait_programmed(kube, EXAMPLE_NAMES, replicas=4)


def test_rolling_restart_loses_no_request(kube: c.Cluster) -> None:
    with c.RequestStream(kube.gateway + "/echo/stream") as stream:
        time.sleep(3)
        kube.kubectl("rollout", "restart", DATAPLANE, "-n", c.NAMESPACE)
        kube.rollout(DATAPLANE, c.NAMESPACE, timeout=300)
        time.sleep(3)
    assert stream.failures == [], f"{len(stream.failures)} failed, {stream.ok} ok: {stream.failures[:10]}"
    assert stream.ok > 200


def test_deleting_the_operator_does_not_interrupt_traffic(kube: c.Cluster) -> None:
    selector = f"app.kubernetes.io/instance={c.RELEASE},app.kubernetes.io/component=operator"
    with c.RequestStream(kube.gateway + "/echo/stream") as stream:
        time.sleep(3)
        kube.kubectl("delete", "pod", "-n", c.NAMESPACE, "-l", selector, "--wait=false")
        time.sleep(10)
        kube.rollout(OPERATOR, c.NAMESPACE)
        # The new leader takes over: a route created now is served.
        kube.apply(
            [route("after-operator-restart", "/after-restart", [{"service": "echo", "port": 80}])], c.APPS
        )
        c.wait_until("the new route served", lambda: get(kube, "/after-restart/x").status_code == 200)
    assert stream.failures == [], f"{len(stream.failures)} failed, {stream.ok} ok: {stream.failures[:10]}"
    assert stream.ok > 100


def test_new_replica_serves_from_the_bootstrap_secret_while_the_operator_is_down(kube: c.Cluster) -> None:
    kube.kubectl("scale", OPERATOR, "--replicas=0", "-n", c.NAMESPACE)
    try:
        c.wait_until("no operator pod", lambda: not kube.pods(c.NAMESPACE, "operator"))
        before = set(ready_dataplane_pods(kube, 4))
        kube.kubectl("scale", DATAPLANE, "--replicas=5", "-n", c.NAMESPACE)
        (new,) = set(ready_dataplane_pods(kube, 5)) - before
        assert kube.via_pod(new, "/after-restart/boot")["path"] == "/after-restart/boot"
    finally:
        kube.kubectl("scale", OPERATOR, "--replicas=2", "-n", c.NAMESPACE)
        kube.rollout(OPERATOR, c.NAMESPACE)


def test_invalid_routes_are_reported_and_disturb_nothing(kube: c.Cluster) -> None:
    # Refused by the API server (the CRD schema): never stored.
    bad_schema = route("bad-schema", "/bad-schema", [{"service": "echo", "port": 80}])
    bad_schema["spec"]["match"]["path"]["type"] = "Regex"
    refused = kube.kubectl_result("apply", "-n", c.APPS, "-f", "-", input=yaml.safe_dump(bad_schema))
    assert refused.returncode != 0 and "spec.match.path.type" in refused.stderr, refused.stderr

    # Stored, then reported by the operator.
    bad_regex = route(
        "bad-regex", "/bad-regex", [{"service": "echo", "port": 80}],
        headers=[{"name": "X-V", "value": "v(1|2", "type": "RegularExpression"}],
    )  # fmt: skip
    missing = route("missing-backend", "/missing", [{"service": "no-such-service", "port": 80}])
    kube.apply([bad_regex, missing], c.APPS)

    accepted = c.wait_until(
        "bad-regex Accepted=False",
        lambda: (cond := condition(kube, "bad-regex", "Accepted")).get("status") == "False" and cond,
    )
    assert accepted["reason"] == "Invalid" and "spec.match.headers[0].value" in accepted["message"]
    resolved = c.wait_until(
        "missing-backend ResolvedRefs=False",
        lambda: (
            (cond := condition(kube, "missing-backend", "ResolvedRefs")).get("status") == "False" and cond
        ),
    )
    assert resolved["reason"] == "BackendNotFound" and "no-such-service" in resolved["message"]
    c.wait_until("500 for the unresolved backend", lambda: get(kube, "/missing").status_code == 500)
    assert get(kube, "/bad-regex", headers={"X-V": "v1"}).status_code == 404  # never in the table
    assert get(kube, "/echo/still-fine").status_code == 200
    row = kube.kubectl("get", "gwr", "bad-regex", "-n", c.APPS).splitlines()[1].split()
    assert row[1] == "False"
    events = kube.get_json("events", "-n", c.APPS, "--field-selector", "involvedObject.name=bad-regex")
    assert events["items"], "no Event about the rejected route"
