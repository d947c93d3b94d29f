"""The Helm chart ``charts/kubegate``, checked offline with real helm 3 and helm 4 binaries.

Aspects covered: ``helm lint --strict`` for every value set; golden files (``golden/<case>.values.yaml``
→ ``golden/<case>.out.yaml``, exactly what ``helm template`` prints; ``pytest --regen-golden`` rewrites
them and deletes stale ones); the same render twice with the defaults (no generated token: the GitOps
property) and the push token's Secret left to the operator (its flags, its optional volume, its RBAC);
the rendered manifests validated with
kubernetes-validate (strict) for the two newest Kubernetes versions it bundles; the chart's CRD
identical to ``crds/``; NOTES.txt (how to reach the gateway, a first route); bad values refused with a
message naming the value; and the wiring that golden files would not make obvious (the data plane's
arguments parsed by the real ``kubegate serve`` parser, probes on the admin port, Secrets and names
shared by operator, data plane, Services and RBAC, security contexts, least-privilege rules, the HTTPS
listener with its Service port, NetworkPolicy port and default certificate, the Redis of Global rate
limits (its URL read by ``kubegate serve`` from $KUBEGATE_REDIS_URL, the chart's own Redis with its
Service, probes, security context and NetworkPolicy), and --trusted-proxies); the gateway class
(``gatewayClass``, passed as --gateway-class, named in NOTES' first route); and several instances in one
cluster: two releases (two namespaces, two classes) render no two objects of the same kind, namespace
and name, counting the Secret and Lease each operator creates (the check is shown to catch a collision).

Then what production users meet (issue 12): PodDisruptionBudgets only where they can be satisfied (more
than one replica, or the HPA's minimum) and never blocking a drain (unhealthy pods evictable; budgets of
every pod refused); the operator's budget, spread and readiness probe; the HPA's metrics (CPU optional,
memory, custom) and behavior; the extension points (extra volumes and mounts, init containers, sidecars,
envFrom, Deployment annotations, startup probes, lifecycle, extraObjects rendered with tpl, the image
registry override, the Service's load balancer address and IP families, topology spread constraints with
tpl and a default selector); the CRD as a release object (crds.install) and how NOTES and README say to
upgrade it; the monitors with relabelings and the PrometheusRule, whose every metric is checked against
the real collectors; and the `helm test` Pod, its script run against stand-ins serving real metrics.
"""

from __future__ import annotations

import http.server
import ipaddress
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from kubegate import cli
from tests import golden
from tests.delivery import helm as helmtools
from tests.delivery.conftest import NO_VALIDATOR, import_tool, missing, render_case

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name.removesuffix(".values.yaml") for p in GOLDEN.glob("*.values.yaml"))
CRD_NAME = "gatewayroutes.kubegate.dev.yaml"
# Kinds that kubernetes-validate has no schema for (custom resources of other projects).
FOREIGN_KINDS = {
    ("monitoring.coreos.com/v1", kind) for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule")
}


def values_of(case: str) -> dict[str, Any]:
    return yaml.safe_load((GOLDEN / f"{case}.values.yaml").read_text()) or {}


def redis_values(values: dict[str, Any]) -> dict[str, Any]:
    """``redis`` of a value set over the chart's defaults (values.yaml; only its top-level keys)."""
    defaults = yaml.safe_load((helmtools.CHART / "values.yaml").read_text())["redis"]
    return defaults | values.get("redis", {})


def tls_values(values: dict[str, Any]) -> dict[str, Any]:
    """``dataplane.tls`` of a value set over the chart's defaults (values.yaml)."""
    defaults = yaml.safe_load((helmtools.CHART / "values.yaml").read_text())["dataplane"]["tls"]
    given = values.get("dataplane", {}).get("tls", {})
    certificate = defaults["defaultCertificate"] | given.get("defaultCertificate", {})
    return defaults | given | {"defaultCertificate": certificate}


def render(helm: helmtools.Helm, case: str) -> str:
    return render_case(helm, str(GOLDEN / f"{case}.values.yaml"))


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


# ---------------------------------------------------------------------------------------------- lint


@pytest.mark.parametrize("case", CASES)
def test_lint_strict(helm: helmtools.Helm, case: str) -> None:
    result = helm.run("lint", "--strict", str(helmtools.CHART), "-f", str(GOLDEN / f"{case}.values.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


# -------------------------------------------------------------------------------------------- golden


@pytest.mark.parametrize("case", CASES)
def test_golden(helm: helmtools.Helm, case: str, regen_golden: bool) -> None:
    actual = render(helm, case)
    out = GOLDEN / f"{case}.out.yaml"
    if regen_golden and helm.major == max(helmtools.available()):  # the newest helm writes; others compare
        out.write_text(actual, encoding="utf-8")
        return
    assert out.exists(), f"{out.name} is missing: run pytest with --regen-golden"
    assert actual == out.read_text(encoding="utf-8"), (
        f"helm {helm.version}: {out.name} differs: review, then pytest --regen-golden"
    )


def test_no_stale_golden_outputs(regen_golden: bool) -> None:
    golden.check_no_stale_outputs(GOLDEN, CASES, regen=regen_golden)


@pytest.mark.parametrize(
    "sets", [(), ("pushToken.value=0123456789abcdef",), ("pushToken.existingSecret=mine",)]
)
def test_every_render_is_the_same(helm: helmtools.Helm, sets: tuple[str, ...]) -> None:
    """What GitOps tools need (they render without a cluster, again and again): nothing generated, no
    lookup of the push token, so two renders are identical and a sync changes nothing."""
    args = [arg for setting in sets for arg in ("--set", setting)]
    first, second = (helm.template(*args).stdout for _ in range(2))
    assert first == second
    template = (helmtools.CHART / "templates" / "push-token-secret.yaml").read_text()
    assert re.findall(r"\{\{[^}]*\b(lookup|rand\w*|uuidv4)\b", template) == []


def test_the_operator_makes_the_push_token_secret_by_default(newest_helm: helmtools.Helm) -> None:
    """No token Secret is rendered; the operator is told to make it (same name and key as the chart's
    would be), its own mount of it is optional (it starts before the Secret exists), the data plane's is
    not (its pods wait for the Secret), and the Role lets it read that Secret by name and create Secrets
    in the release namespace, nothing more. With pushToken.value or existingSecret, none of that."""
    ns = helmtools.NAMESPACE
    cases: list[tuple[tuple[str, ...], bool]] = [
        ((), True),
        (("pushToken.key=tok",), True),
        (("pushToken.value=0123456789abcdef",), False),
        (("pushToken.existingSecret=mine",), False),
    ]
    for sets, made in cases:
        args = [arg for setting in sets for arg in ("--set", setting)]
        r = Rendered(newest_helm.template(*args).stdout)
        key = "tok" if "pushToken.key=tok" in sets else "token"
        existing = "pushToken.existingSecret=mine" in sets
        name = "mine" if existing else f"{helmtools.RELEASE}-push-token"  # the release is called kubegate
        op_pod = r.one("Deployment", "-operator")["spec"]["template"]["spec"]
        op = container_of(op_pod, "operator")
        op_args = _args(op)
        volume = _mount_of(op_pod, op, op_args["--push-token-file"][0])["volume"]["secret"]
        dp_pod = r.one("Deployment", "-dataplane")["spec"]["template"]["spec"]
        dp_volume = next(v for v in dp_pod["volumes"] if v["name"] == "push-token")["secret"]
        assert volume["secretName"] == dp_volume["secretName"] == name
        assert dp_volume.get("optional") is not True
        role = r.one("Role", "-operator-self")["rules"]
        by_name = [rule for rule in role if rule.get("resourceNames") == [name]]
        rendered = [s["metadata"]["name"] for s in r.all("Secret")]
        if made:
            assert op_args["--push-token-secret"] == [f"{ns}/{name}"]
            assert op_args["--push-token-key"] == [key]
            assert volume["optional"] is True
            assert rendered == []
            assert by_name == [
                {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [name], "verbs": ["get"]}
            ]
        else:
            assert "--push-token-secret" not in op_args and "--push-token-key" not in op_args
            assert volume.get("optional") is not True
            assert by_name == []
            assert rendered == ([] if existing else [name])
        creates = [rule for rule in role if rule["resources"] == ["secrets"] and "resourceNames" not in rule]
        assert creates == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]


# ------------------------------------------------------------------------------- kubernetes-validate


def _validator() -> Any:
    return import_tool("kubernetes_validate.utils", NO_VALIDATOR)


def newest_kubernetes_versions(kv: Any) -> list[str]:
    return sorted(set(kv.all_versions()), key=lambda v: tuple(int(x) for x in v.split(".")))[-2:]


def validation_errors(kv: Any, docs: list[dict[str, Any]], version: str) -> list[str]:
    errors = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            errors.append(f"{where} (Kubernetes {version}): {path}: {error.message}")
        except kv.SchemaNotFoundError:
            if (doc["apiVersion"], doc["kind"]) not in FOREIGN_KINDS:
                errors.append(f"{where}: no schema for {doc['apiVersion']} {doc['kind']}")
    return errors


@pytest.mark.parametrize("case", CASES)
def test_rendered_manifests_validate(newest_helm: helmtools.Helm, case: str) -> None:
    kv = _validator()
    docs = documents(render(newest_helm, case))
    versions = newest_kubernetes_versions(kv)
    assert len(versions) == 2
    for version in versions:
        assert validation_errors(kv, docs, version) == []


def test_the_validator_catches_a_wrong_manifest(newest_helm: helmtools.Helm) -> None:
    """Guard: strict validation does reject what the API server would (a misspelled field, a bad type)."""
    kv = _validator()
    docs = documents(render(newest_helm, "default"))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    service = next(d for d in docs if d["kind"] == "Service")
    service["spec"]["ports"][0]["port"] = "eighty"
    errors = validation_errors(kv, [deployment, service], newest_kubernetes_versions(kv)[-1])
    assert len(errors) == 2, errors


# ----------------------------------------------------------------------------------------------- CRD


def test_chart_crd_is_identical_to_crds() -> None:
    chart_crd = helmtools.CHART / "crds" / CRD_NAME
    assert chart_crd.read_bytes() == (helmtools.ROOT / "crds" / CRD_NAME).read_bytes(), (
        f"charts/kubegate/crds/{CRD_NAME} differs from crds/{CRD_NAME}: "
        f"cp crds/{CRD_NAME} charts/kubegate/crds/"
    )
    assert sorted(p.name for p in (helmtools.CHART / "crds").iterdir()) == [CRD_NAME]


def test_helm_installs_the_crd(helm: helmtools.Helm) -> None:
    """``helm install`` applies crds/ first; ``--include-crds`` shows what it applies."""
    docs = documents(helm.template("--include-crds").stdout)
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert crds == [yaml.safe_load((helmtools.ROOT / "crds" / CRD_NAME).read_text())]
    assert not any(d["kind"] == "CustomResourceDefinition" for d in documents(render(helm, "default")))
    kv = _validator()
    for version in newest_kubernetes_versions(kv):
        assert validation_errors(kv, crds, version) == []


# --------------------------------------------------------------------------------------------- NOTES

REACH = {
    "LoadBalancer": "{.status.loadBalancer.ingress[0].ip}",
    "NodePort": "{.spec.ports[0].nodePort}",
    "ClusterIP": "port-forward service/",
}


@pytest.mark.parametrize("case", CASES)
def test_notes_tell_how_to_reach_the_gateway_and_apply_a_route(case: str) -> None:
    helm = helmtools.available().get(4)
    if helm is None:
        missing("NOTES.txt renders offline only with helm 4 (`helm install --dry-run=client`)")
    values = values_of(case)
    result = helm.run(
        "install", helmtools.RELEASE, str(helmtools.CHART), "--namespace", helmtools.NAMESPACE,
        "--dry-run=client", "-f", str(GOLDEN / f"{case}.values.yaml"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("\nNOTES:\n", 1)[1]
    service_type = values.get("service", {}).get("type", "LoadBalancer")
    assert REACH[service_type] in notes
    assert "kind: GatewayRoute" in notes and "kubectl get gatewayroutes" in notes
    for namespace in values.get("operator", {}).get("watchNamespaces", []):
        assert namespace in notes
    gateway_class = values.get("gatewayClass", "kubegate")
    if gateway_class == "kubegate":  # routes naming no class are served: the first route names none
        assert "gatewayClassName" not in notes
    else:
        assert f"     gatewayClassName: {gateway_class}\n     match:" in notes
        assert f"This release serves gateway class {gateway_class}" in notes
    scraped = values.get("serviceMonitor", {}).get("enabled") and values.get("networkPolicy", {}).get(
        "adminFrom"
    )
    assert ("WARNING" in notes) == bool(values.get("serviceMonitor", {}).get("enabled") and not scraped)
    redis = redis_values(values)
    assert ("Redis" in notes) == bool(redis["enabled"] or redis["url"] or redis["existingSecret"])
    if redis["enabled"]:
        name = f"{values.get('fullnameOverride') or helmtools.RELEASE}-redis"
        assert f"Service {name}\nport 6379" in notes
        assert f"rollout status deployment/{name}" in notes
    elif redis["url"]:
        assert "the Redis of redis.url" in notes and redis["url"] not in notes  # it may hold a password


# ---------------------------------------------------------------------------------------- bad values

BAD_VALUES = [
    # (--set, words that the message must contain: the value's name and what is wrong)
    ("dataplane.replicas=0", ["replicas", "1"]),
    ("dataplane.replica=3", ["replica", "not allowed"]),
    ("service.type=Ingress", ["type", "LoadBalancer"]),
    ("operator.metricsPort=80", ["metricsPort", "1024"]),
    ("dataplane.drainTimeoutSeconds=soon", ["drainTimeoutSeconds", "integer"]),
    ("operator.watchNamespaces[0]=Team_A", ["watchNamespaces", "pattern"]),
    ("dataplane.image.digest=latest", ["digest", "pattern"]),
    ("service.nodePort=80", ["nodePort", "30000"]),
    ("dataplane.logLevel=verbose", ["logLevel", "info"]),
    ("dataplane.escapedSlashes=decode", ["escapedSlashes", "reject"]),
    ("dataplane.tunnelIdleTimeoutSeconds=0", ["tunnelIdleTimeoutSeconds"]),
    ("gatewayClass=Internal_GW", ["gatewayClass", "pattern"]),
    ("gatewayClass=", ["gatewayClass"]),
    # Checks across values, in templates/validate.yaml:
    (
        "dataplane.terminationGracePeriodSeconds=20",
        ["terminationGracePeriodSeconds (20) must be greater than", "5 + 25"],
    ),
    ("operator.leaderElection.enabled=false", ["leaderElection.enabled is false", "1 replica"]),
    ("pushToken.value=short", ["pushToken.value", "at least 16"]),
    (
        "dataplane.podDisruptionBudget.maxUnavailable=1",
        ["set exactly one of minAvailable and maxUnavailable"],
    ),
    ("dataplane.adminPort=8080", ["port and dataplane.adminPort must differ"]),
    ("service.nodePort=30080", ["service.nodePort is set but service.type is ClusterIP"]),
    ("dataplane.tls.port=443", ["tls", "port", "1024"]),
    ("dataplane.tls.servicePort=0", ["servicePort", "1"]),
    ("dataplane.tls.nodePort=443", ["nodePort", "30000"]),
    ("dataplane.tls.redirectPort=https", ["redirectPort", "integer"]),
    ("dataplane.tls.enabled=yes", ["enabled", "boolean"]),
    ("dataplane.tls.defaultCertificate.secretName=Edge_TLS", ["secretName", "pattern"]),
    ("dataplane.tls.defaultCertificate.secret=edge-tls", ["secret", "not allowed"]),
    ("dataplane.tls.port=8080", ["dataplane.tls.port (8080) must differ from dataplane.port"]),
    ("dataplane.tls.port=9090", ["dataplane.tls.port (9090) must differ", "adminPort"]),
    ("dataplane.tls.servicePort=80", ["tls.servicePort and service.port are both 80"]),
    (
        "service.type=ClusterIP,dataplane.tls.nodePort=30443",
        ["dataplane.tls.nodePort is set but service.type is ClusterIP"],
    ),
    (
        "service.type=NodePort,service.nodePort=30080,dataplane.tls.nodePort=30080",
        ["tls.nodePort and service.nodePort are both 30080"],
    ),
    (
        "dataplane.tls.enabled=false,dataplane.tls.defaultCertificate.secretName=edge-tls",
        ["defaultCertificate.secretName is set but dataplane.tls.enabled is false"],
    ),
    ("dataplane.trustedProxies[0]=10.0.0.0/33", ["trustedProxies", "pattern"]),
    ("dataplane.trustedProxies[0]=proxy.example.com", ["trustedProxies", "pattern"]),
    ("dataplane.trustedProxies=10.0.0.0/8", ["trustedProxies", "array"]),
    ("redis.enabled=yes", ["enabled", "boolean"]),
    ("redis.url=http://cache:6379", ["url", "pattern"]),
    ("redis.existingSecret=Cache_URL", ["existingSecret", "pattern"]),
    ("redis.maxMemory=lots", ["maxMemory", "pattern"]),
    ("redis.image.tag=", ["tag"]),
    ("redis.password=secret", ["password", "not allowed"]),
    (
        "redis.enabled=true,redis.url=redis://cache:6379/0",
        ["redis.enabled is true and redis.url is set", "not both"],
    ),
    (
        "redis.enabled=true,redis.existingSecret=cache-url",
        ["redis.enabled is true and redis.existingSecret is set", "not both"],
    ),
    (
        "redis.url=redis://cache:6379/0,redis.existingSecret=cache-url",
        ["redis.url and redis.existingSecret are both set"],
    ),
    # Disruption budgets that would block every drain (checked where one is rendered: several replicas).
    (
        "dataplane.podDisruptionBudget.minAvailable=2",
        ["minAvailable (2) keeps all 2 pods", "block every drain"],
    ),
    ("dataplane.podDisruptionBudget.minAvailable=60%", ["minAvailable (60%) keeps all 2 pods"]),
    (
        "dataplane.autoscaling.enabled=true,dataplane.autoscaling.minReplicas=3,"
        "dataplane.podDisruptionBudget.minAvailable=3",
        ["keeps all 3 pods (dataplane.autoscaling.minReplicas)"],
    ),
    (
        "dataplane.podDisruptionBudget.minAvailable=null,dataplane.podDisruptionBudget.maxUnavailable=0",
        ["maxUnavailable (0) lets no pod go"],
    ),
    (
        "dataplane.podDisruptionBudget.minAvailable=null,dataplane.podDisruptionBudget.maxUnavailable=0%",
        ["maxUnavailable (0%) lets no pod go"],
    ),
    (
        "dataplane.podDisruptionBudget.unhealthyPodEvictionPolicy=Never",
        ["unhealthyPodEvictionPolicy", "AlwaysAllow"],
    ),
    (
        "dataplane.autoscaling.enabled=true,dataplane.autoscaling.targetCPUUtilizationPercentage=null",
        ["dataplane.autoscaling has no metric"],
    ),
    ("dataplane.autoscaling.customMetrics[0].type=Custom", ["type", "Pods"]),
    ("dataplane.autoscaling.behavior.scaleSideways.selectPolicy=Max", ["scaleSideways", "not allowed"]),
    ("operator.podDisruptionBudget.maxUnavailable=2", ["maxUnavailable", "not allowed"]),
    # Extension points: shapes the schema can check, and what only works together.
    (
        "service.type=NodePort,service.loadBalancerIP=203.0.113.1",
        ["loadBalancerIP is set but service.type is NodePort"],
    ),
    ("service.loadBalancerIP=lb.example.com", ["loadBalancerIP", "pattern"]),
    ("service.ipFamilies={IPv4,IPv6}", ["ipFamilies names two families", "PreferDualStack"]),
    ("service.ipFamilyPolicy=DualStack", ["ipFamilyPolicy", "PreferDualStack"]),
    ("service.ipFamilies={IPv5}", ["ipFamilies", "IPv4"]),
    ("imageRegistry=https://mirror.example.com", ["imageRegistry", "pattern"]),
    ("dataplane.extraVolumes[0].configMap.name=x", ["extraVolumes", "name"]),
    ("operator.sidecars[0].image=busybox", ["sidecars", "name"]),
    ("dataplane.extraVolumeMounts[0].name=x", ["extraVolumeMounts", "mountPath"]),
    ("dataplane.startupProbe.path=/x", ["path", "not allowed"]),
    ("dataplane.deploymentAnnotations.replicas=3", ["deploymentAnnotations", "string"]),
    ("extraObjects[0]=3", ["extraObjects"]),
    (
        "dataplane.topologySpreadConstraints[0].maxSkew=1,"
        "dataplane.topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname,"
        "dataplane.topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
        ["set dataplane.spreadAcrossNodes to false"],
    ),
    # Monitoring, the CRD, helm test.
    ("serviceMonitor.dataplaneKind=Probe", ["dataplaneKind", "PodMonitor"]),
    ("prometheusRule.disabled={KubegateEverything}", ["disabled", "KubegateNoRouteTable"]),
    ("prometheusRule.serverErrorRatio=5", ["serverErrorRatio", "1"]),
    ("prometheusRule.serverErrorRatio=0", ["serverErrorRatio", "0"]),
    ("crds.install=yes", ["install", "boolean"]),
    ("crds.upgrade=true", ["upgrade", "not allowed"]),
    ("tests.timeoutSeconds=0", ["timeoutSeconds", "1"]),
]


@pytest.mark.parametrize(("setting", "words"), BAD_VALUES, ids=[s for s, _ in BAD_VALUES])
def test_bad_values_are_rejected(helm: helmtools.Helm, setting: str, words: list[str]) -> None:
    extra = ["--set", "service.type=ClusterIP"] if setting.startswith("service.nodePort=30080") else []
    result = helm.template("--set", setting, *extra)
    assert result.returncode != 0, f"--set {setting} was accepted"
    message = re.sub(r"(\d),(\d)", r"\1\2", result.stderr)  # helm 4 writes 1,024
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in helm's message:\n{message}"


def test_good_values_still_render(helm: helmtools.Helm) -> None:
    """Guard for the list above: the same keys with sound values render."""
    good = [
        "dataplane.replicas=3",
        "service.type=NodePort",
        "service.nodePort=30080",
        "operator.metricsPort=9100",
        "operator.watchNamespaces[0]=team-a",
        "dataplane.terminationGracePeriodSeconds=31",
        "operator.replicas=1",
        "operator.leaderElection.enabled=false",
        "pushToken.value=0123456789abcdef",
        "dataplane.podDisruptionBudget.minAvailable=null",
        "dataplane.podDisruptionBudget.maxUnavailable=1",
        "dataplane.tls.port=9443",
        "dataplane.tls.servicePort=8443",
        "dataplane.tls.nodePort=30443",
        "dataplane.tls.redirectPort=30443",
        "dataplane.tls.defaultCertificate.secretName=edge-tls",
        "dataplane.trustedProxies[0]=10.0.0.0/8",
        "dataplane.trustedProxies[1]=fd00::/8",
        "redis.enabled=true",
        "redis.maxMemory=1gb",
        "redis.image.tag=7.4-alpine",
        "gatewayClass=edge.example.com",
        "dataplane.podDisruptionBudget.unhealthyPodEvictionPolicy=IfHealthyBudget",
        "dataplane.autoscaling.enabled=true",
        "dataplane.autoscaling.targetCPUUtilizationPercentage=null",
        "dataplane.autoscaling.customMetrics[0].type=External",
        "dataplane.autoscaling.behavior.scaleDown.stabilizationWindowSeconds=600",
        "service.type=LoadBalancer",
        "service.loadBalancerIP=2001:db8::10",
        "service.ipFamilyPolicy=PreferDualStack",
        "service.ipFamilies={IPv6,IPv4}",
        "imageRegistry=mirror.example.com:5000/proxy",
        "dataplane.extraVolumes[0].name=x",
        "dataplane.extraVolumes[0].emptyDir.medium=Memory",
        "dataplane.extraVolumeMounts[0].name=x",
        "dataplane.extraVolumeMounts[0].mountPath=/x",
        "operator.sidecars[0].name=proxy",
        "operator.sidecars[0].image=envoyproxy/envoy:v1.31",
        "operator.startupProbe.enabled=true",
        "dataplane.spreadAcrossNodes=false",
        "dataplane.topologySpreadConstraints[0].maxSkew=1",
        "dataplane.topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname",
        "dataplane.topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
        "serviceMonitor.dataplaneKind=PodMonitor",
        "prometheusRule.disabled={KubegateCircuitBreakerOpen}",
        "prometheusRule.serverErrorRatio=1",
        "crds.install=true",
        "tests.enabled=false",
    ]
    result = helm.template(*[arg for setting in good for arg in ("--set", setting)])
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------ wiring


class Rendered:
    """The objects of one render, looked up by kind and name."""

    def __init__(self, text: str) -> None:
        self.docs = documents(text)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, suffix: str = "") -> dict[str, Any]:
        found = [d for d in self.all(kind) if d["metadata"]["name"].endswith(suffix)]
        assert len(found) == 1, f"{kind} *{suffix}: {[d['metadata']['name'] for d in found]}"
        return found[0]


def serve_args(container: dict[str, Any], secrets: dict[tuple[str, str], str] | None = None) -> Any:
    """The data plane's settings as the real ``kubegate serve`` parser reads them: its arguments, and its
    environment (``value``, or ``secretKeyRef`` looked up in ``secrets`` by (Secret, key)) in place of the
    test process's KUBEGATE_* variables."""
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = (secrets or {})[(ref["name"], ref["key"])]
    kept = {k: v for k, v in os.environ.items() if not k.startswith("KUBEGATE_")}
    with mock.patch.dict(os.environ, kept | env, clear=True):
        return cli.build_parser().parse_args(["serve", *container["args"]])


def _args(container: dict[str, Any]) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for arg in container["args"]:
        key, _, value = arg.partition("=")
        parsed.setdefault(key, []).append(value)
    return parsed


def _mount_of(pod: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume that holds file ``path`` in the container (by its mount's directory)."""
    mounts = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert len(mounts) == 1, f"{path} is not under exactly one mount: {container['volumeMounts']}"
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[0]["name"])
    relative = path[len(mounts[0]["mountPath"].rstrip("/")) + 1 :]
    return {"volume": volume, "relative": relative, "mount": mounts[0]}


def _default_certificate_secret(pod: dict[str, Any], container: dict[str, Any], serve: Any) -> str | None:
    """The Secret whose tls.crt and tls.key are the files of ``--default-certificate`` (None without it):
    mounted read-only, not optional (a missing Secret must not start a gateway without it)."""
    if serve.default_certificate is None:
        return None
    secrets = set()
    for path, key in zip(serve.default_certificate, ("tls.crt", "tls.key"), strict=True):
        mount = _mount_of(pod, container, str(path))
        assert mount["mount"].get("readOnly") is True
        secret = mount["volume"]["secret"]
        assert secret.get("optional") is not True
        assert {"key": key, "path": mount["relative"]} in secret["items"]
        secrets.add(secret["secretName"])
    (secret_name,) = secrets
    return secret_name


def _check_hardened(pod: dict[str, Any], container: dict[str, Any], writable: str = "/tmp") -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    tmp = _mount_of(pod, container, f"{writable}/x")["volume"]
    assert "emptyDir" in tmp
    assert container["resources"]["requests"] and container["resources"]["limits"]


def container_of(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod["containers"] if c["name"] == name]
    return found


def selects(obj: dict[str, Any]) -> dict[str, str]:
    """The selector labels among an object's labels (those that the chart's selectors use)."""
    keys = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component")
    return {key: obj["metadata"]["labels"][key] for key in keys}


STARTUP_PROBES = {
    "dataplane": {"path": "/health", "port": "admin"},
    "operator": {"path": "/metrics", "port": "metrics"},
}


def check_extension_points(
    pod: dict[str, Any], container: dict[str, Any], given: dict[str, Any], name: str
) -> None:
    """What a component's values add to its pod (init containers, sidecars, volumes and their mounts,
    envFrom, a startup probe, lifecycle hooks) is there as given, after the chart's own."""
    assert pod.get("initContainers", []) == given.get("initContainers", [])
    assert [c for c in pod["containers"] if c["name"] != name] == given.get("sidecars", [])
    extra = given.get("extraVolumes", [])
    assert pod["volumes"][len(pod["volumes"]) - len(extra) :] == extra
    mounts = given.get("extraVolumeMounts", [])
    assert container["volumeMounts"][len(container["volumeMounts"]) - len(mounts) :] == mounts
    volumes = {v["name"] for v in pod["volumes"]}
    for c in pod.get("initContainers", []) + pod["containers"]:
        assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes, c["name"]
    assert container.get("envFrom", []) == given.get("envFrom", [])
    startup = given.get("startupProbe", {})
    if startup.get("enabled"):  # what answers as soon as the process serves: /health, or the metrics
        probe = container["startupProbe"]
        assert probe["httpGet"] == STARTUP_PROBES[name]
        assert {k: v for k, v in startup.items() if k != "enabled"}.items() <= probe.items()
    else:
        assert "startupProbe" not in container
    if given.get("lifecycle"):
        assert container["lifecycle"] == given["lifecycle"]


@pytest.mark.parametrize("case", CASES)
def test_wiring(newest_helm: helmtools.Helm, case: str) -> None:
    values = values_of(case)
    r = Rendered(render(newest_helm, case))
    ns = helmtools.NAMESPACE

    dataplane = r.one("Deployment", "-dataplane")
    dp_pod = dataplane["spec"]["template"]["spec"]
    dp_labels = dataplane["spec"]["selector"]["matchLabels"]
    dp = container_of(dp_pod, "dataplane")
    operator = r.one("Deployment", "-operator")
    op_pod = operator["spec"]["template"]["spec"]
    op_labels = operator["spec"]["selector"]["matchLabels"]
    op = container_of(op_pod, "operator")
    dp_values, op_values = values.get("dataplane", {}), values.get("operator", {})

    # The data plane's arguments and environment, parsed by the real `kubegate serve` parser.
    redis = redis_values(values)
    secret_url = "redis://:hunter2@cache.example:6379/0"  # what existingSecret would hold
    serve = serve_args(dp, {(redis["existingSecret"], redis["existingSecretKey"]): secret_url})
    assert serve.trusted_proxies == ",".join(values.get("dataplane", {}).get("trustedProxies", []))
    assert not any(arg.startswith("--redis-url") for arg in dp["args"])  # a URL may carry a password
    ports = {p["name"]: p["containerPort"] for p in dp["ports"]}
    tls = tls_values(values)
    assert (serve.tls_port is not None) == tls["enabled"]
    https = {"https": serve.tls_port} if tls["enabled"] else {}
    assert ports == {"http": serve.port, "admin": serve.admin_port, **https}
    assert _default_certificate_secret(dp_pod, dp, serve) == (tls["defaultCertificate"]["secretName"] or None)
    assert dp["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert dp["livenessProbe"]["httpGet"] == {"path": "/health", "port": "admin"}
    sleep = dp["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    assert dp_pod["terminationGracePeriodSeconds"] > int(sleep[1]) + serve.drain_timeout
    if "lifecycle" not in dp_values:  # else the user's, checked below
        assert sleep[1] == str(dp_values.get("preStopSleepSeconds", 5))
    assert dp_pod["automountServiceAccountToken"] is False
    _check_hardened(dp_pod, dp)
    _check_hardened(op_pod, op)
    check_extension_points(dp_pod, dp, dp_values, "dataplane")
    check_extension_points(op_pod, op, op_values, "operator")
    for deployment, given in ((dataplane, dp_values), (operator, op_values)):
        assert deployment["metadata"].get("annotations", {}) == given.get("deploymentAnnotations", {})
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        for constraint in deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
            selected = constraint["labelSelector"]["matchLabels"]  # every one has a selector
            assert selected.items() <= pod_labels.items(), constraint
    # The operator: ready once it serves /metrics, reached through its headless metrics Service.
    assert op["readinessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    op_service = r.one("Service", "-operator")
    assert op_service["spec"]["clusterIP"] == "None"
    assert op_service["spec"]["selector"] == op_labels
    assert [(p["name"], p["targetPort"]) for p in op_service["spec"]["ports"]] == [("metrics", "metrics")]

    # Bootstrap Secret: an optional volume in the data plane, the same name for the operator and RBAC.
    bootstrap = _mount_of(dp_pod, dp, str(serve.bootstrap))
    assert bootstrap["volume"]["secret"]["optional"] is True
    assert bootstrap["relative"] == values.get("bootstrap", {}).get("key", "table.json.gz")
    bootstrap_secret = bootstrap["volume"]["secret"]["secretName"]
    op_args = _args(op)
    assert op_args["--bootstrap-secret"] == [f"{ns}/{bootstrap_secret}"]

    # Push token: one Secret mounted as the file each side reads; rendered with pushToken.value, else
    # made by the operator (its mount then optional: it starts before the Secret exists).
    existing = values.get("pushToken", {}).get("existingSecret")
    by_operator = not (existing or values.get("pushToken", {}).get("value"))
    token_secrets = set()
    for pod, container, path in [
        (dp_pod, dp, str(serve.push_token_file)),
        (op_pod, op, op_args["--push-token-file"][0]),
    ]:
        mount = _mount_of(pod, container, path)
        secret = mount["volume"]["secret"]
        assert secret.get("optional") is (True if by_operator and container is op else None)
        assert secret["items"] == [
            {"key": values.get("pushToken", {}).get("key", "token"), "path": mount["relative"]}
        ]
        token_secrets.add(secret["secretName"])
    (token_secret,) = token_secrets
    rendered_secrets = [s["metadata"]["name"] for s in r.all("Secret")]
    assert rendered_secrets == ([] if existing or by_operator else [token_secret])
    assert op_args.get("--push-token-secret") == ([f"{ns}/{token_secret}"] if by_operator else None)
    if existing:
        assert token_secret == existing

    # Services: the public one carries the traffic ports (http first: NOTES reads its nodePort as
    # ports[0]); the admin one is what the operator watches.
    admin = r.one("Service", "-admin")
    public = [s for s in r.all("Service") if s["spec"]["selector"] == dp_labels and s is not admin]
    assert len(public) == 1
    traffic = ["http", "https"] if tls["enabled"] else ["http"]
    assert [p["name"] for p in public[0]["spec"]["ports"]] == traffic
    assert [p["targetPort"] for p in public[0]["spec"]["ports"]] == traffic
    if tls["enabled"]:
        assert public[0]["spec"]["ports"][1]["port"] == tls["servicePort"]
    assert public[0]["spec"]["type"] == values.get("service", {}).get("type", "LoadBalancer")
    assert admin["spec"]["selector"] == dp_labels
    assert admin["spec"]["publishNotReadyAddresses"] is True
    assert [(p["name"], p["targetPort"]) for p in admin["spec"]["ports"]] == [("admin", "admin")]
    assert op_args["--dataplane-service"] == [f"{ns}/{admin['metadata']['name']}"]
    assert op_args.get("--namespace", []) == values.get("operator", {}).get("watchNamespaces", [])
    assert op_args["--gateway-class"] == [values.get("gatewayClass", "kubegate")]
    metrics_port = {p["name"]: p["containerPort"] for p in op["ports"]}["metrics"]
    assert op_args["--metrics-port"] == [str(metrics_port)]

    # Leader election: on with more than one replica; the Lease named in RBAC is the one passed.
    lease_arg = op_args.get("--leader-lease")
    if operator["spec"]["replicas"] > 1:
        assert lease_arg is not None

    # RBAC: the operator's ServiceAccount is bound; nothing is granted by wildcard; Secrets are read
    # where routes live (routes' spec.auth names them), written only by name (except create); routes are
    # read-only apart from their status.
    sa = op_pod["serviceAccountName"]
    bindings = r.all("RoleBinding") + r.all("ClusterRoleBinding")
    assert bindings and all(
        b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": ns}] for b in bindings
    )
    watched = values.get("operator", {}).get("watchNamespaces", [])
    assert bool(r.all("ClusterRoleBinding")) == (not watched)
    route_bindings = {
        b["metadata"]["namespace"] for b in r.all("RoleBinding") if b["roleRef"]["kind"] == "ClusterRole"
    }
    assert route_bindings == (set(watched) | {ns} if watched else set())  # kopf also watches its own
    cluster_role = r.one("ClusterRole")["metadata"]["name"]
    assert ns in cluster_role  # releases of one name in two namespaces: no shared name, see below
    assert {b["metadata"]["name"] for b in bindings if b["roleRef"]["kind"] == "ClusterRole"} == {
        cluster_role
    }
    rules = [rule for role in r.all("Role") + r.all("ClusterRole") for rule in role["rules"]]
    read = {"get", "list", "watch"}
    for role in r.all("Role") + r.all("ClusterRole"):
        for rule in role["rules"]:
            if "secrets" not in rule["resources"] or rule["verbs"] == ["create"]:
                continue
            if role["kind"] == "ClusterRole" and "resourceNames" not in rule:
                assert set(rule["verbs"]) == read, rule  # routes' Secrets: read, never written
            elif rule["resourceNames"] == [token_secret]:  # made by the operator: only ever read back
                assert by_operator and rule["verbs"] == ["get"], rule
            else:
                assert rule["resourceNames"] == [bootstrap_secret], rule
    for rule in rules:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        if "gatewayroutes" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
        if "gatewayroutes/status" in rule["resources"]:
            assert rule["verbs"] == ["patch"], rule
    lease_rules = [rule for rule in rules if "leases" in rule["resources"]]
    if lease_arg is None:
        assert lease_rules == []
    else:
        named = [rule for rule in lease_rules if "resourceNames" in rule]
        assert [f"{ns}/{n}" for rule in named for n in rule["resourceNames"]] == lease_arg

    # Redis: the URL of the chart's own (its Service), of existingSecret, or redis.url reaches the data
    # plane; the chart's own Redis is checked by check_chart_redis.
    own = check_chart_redis(r, values, dp_labels)
    if own is not None:
        assert serve.redis_url == f"redis://{own['metadata']['name']}:6379/0"
    elif redis["existingSecret"]:
        assert serve.redis_url == secret_url
    else:
        assert serve.redis_url == (redis["url"] or None)

    # NetworkPolicy: the traffic ports (http, https) admit trafficFrom (anyone by default); the admin
    # port the operator's pods (plus adminFrom), nothing else.
    policies = [p for p in r.all("NetworkPolicy") if p["spec"]["podSelector"]["matchLabels"] == dp_labels]
    if values.get("networkPolicy", {}).get("enabled", True):
        (policy,) = policies
        assert policy["spec"]["podSelector"]["matchLabels"] == dp_labels
        by_port = {tuple(port["port"] for port in rule["ports"]): rule for rule in policy["spec"]["ingress"]}
        assert set(by_port) == {tuple(traffic), ("admin",)}
        assert by_port[tuple(traffic)].get("from", []) == values.get("networkPolicy", {}).get(
            "trafficFrom", []
        )
        admin_from = by_port[("admin",)]["from"]
        assert admin_from[0] == {"podSelector": {"matchLabels": op_labels}}
        tests_on = values.get("tests", {}).get("enabled", True)
        assert admin_from[1 : len(admin_from) - tests_on] == values.get("networkPolicy", {}).get(
            "adminFrom", []
        )
        if tests_on:  # the `helm test` Pod reaches /ready and /metrics
            (test_pod,) = r.all("Pod")
            assert admin_from[-1] == {"podSelector": {"matchLabels": selects(test_pod)}}
    else:
        assert policies == []

    # Autoscaling replaces the fixed replica count; the HPA points at the data plane; a PDB selects the
    # pods of one Deployment, rendered only where there are several.
    hpas = r.all("HorizontalPodAutoscaler")
    autoscaling = dp_values.get("autoscaling", {}).get("enabled", False)
    assert len(hpas) == int(autoscaling)
    assert ("replicas" in dataplane["spec"]) == (not autoscaling)
    for hpa in hpas:
        assert hpa["spec"]["scaleTargetRef"]["name"] == dataplane["metadata"]["name"]
    fewest = hpas[0]["spec"]["minReplicas"] if hpas else dataplane["spec"]["replicas"]
    budgets = {pdb["metadata"]["name"]: pdb for pdb in r.all("PodDisruptionBudget")}
    for deployment, count in ((dataplane, fewest), (operator, operator["spec"]["replicas"])):
        pdb = budgets.pop(deployment["metadata"]["name"], None)
        assert (pdb is not None) == (count > 1), deployment["metadata"]["name"]
        if pdb is not None:
            assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
            assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert budgets == {}

    # The `helm test` Pod: checked by test_release_test_pod.
    assert len(r.all("Pod")) == int(values.get("tests", {}).get("enabled", True))


def check_chart_redis(
    r: Rendered, values: dict[str, Any], dp_labels: dict[str, str]
) -> dict[str, Any] | None:
    """The chart's own Redis (redis.enabled), checked; its Service (None when it is not rendered: then
    no Redis object is). One pod, replaced rather than rolled (never two behind the Service), counters in
    memory only (--save '' --appendonly no), non-root on a read-only root with an emptyDir /data, probed
    with `redis-cli ping` and a TCP connection, a ClusterIP Service on 6379, and with the chart's
    NetworkPolicies a policy admitting only the data-plane pods on 6379 and no egress."""
    redis = redis_values(values)
    labelled = [
        d for d in r.docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "redis"
    ]
    if not redis["enabled"]:
        assert labelled == []
        return None
    deployment = r.one("Deployment", "-redis")
    service = r.one("Service", "-redis")
    network_policy_on = values.get("networkPolicy", {}).get("enabled", True)
    assert len(labelled) == 2 + network_policy_on
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    labels = spec["selector"]["matchLabels"]
    assert labels["app.kubernetes.io/component"] == "redis" and labels != dp_labels
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    image = redis["image"]
    digest = image.get("digest")
    assert container["image"] == (
        f"{image['repository']}@{digest}" if digest else f"{image['repository']}:{image['tag']}"
    )
    args = container["args"]
    assert args[0] == "redis-server"
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert options == {
        "--port": "6379",
        "--save": "",
        "--appendonly": "no",
        "--protected-mode": "no",
        "--maxmemory": redis["maxMemory"],
        "--maxmemory-policy": "allkeys-lru",
    }
    assert container["ports"] == [{"name": "redis", "containerPort": 6379, "protocol": "TCP"}]
    ping = container["readinessProbe"]["exec"]["command"]
    assert "redis-cli -p 6379 ping" in ping[-1] and "PONG" in ping[-1]
    assert container["livenessProbe"]["tcpSocket"] == {"port": "redis"}
    _check_hardened(pod, container, writable="/data")
    assert container["resources"] == redis["resources"]
    for key in ("nodeSelector", "tolerations", "priorityClassName"):
        assert pod.get(key) == (redis.get(key) or None)

    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"] == [
        {"name": "redis", "port": 6379, "targetPort": "redis", "protocol": "TCP"}
    ]

    policies = [p for p in r.all("NetworkPolicy") if p["spec"]["podSelector"]["matchLabels"] == labels]
    if not network_policy_on:
        assert policies == []
        return service
    (policy,) = policies
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "egress" not in policy["spec"]  # Egress without a rule: none at all
    assert policy["spec"]["ingress"] == [
        {
            "ports": [{"port": "redis", "protocol": "TCP"}],
            "from": [{"podSelector": {"matchLabels": dp_labels}}],
        }
    ]
    return service


# (--set, then what $KUBEGATE_REDIS_URL holds: a value, a Secret's (name, key), or None; whether the chart
# deploys its own Redis)
REDIS_SETTINGS = [
    ("", (None, False)),
    ("redis.url=rediss://:pw@cache.example:6380/1", ("rediss://:pw@cache.example:6380/1", False)),
    ("redis.existingSecret=cache-url", (("cache-url", "url"), False)),
    ("redis.existingSecret=cache-url,redis.existingSecretKey=uri", (("cache-url", "uri"), False)),
    ("redis.enabled=true", ("redis://kubegate-redis:6379/0", True)),
    ("redis.enabled=true,networkPolicy.enabled=false", ("redis://kubegate-redis:6379/0", True)),
    ("redis.enabled=true,fullnameOverride=edge", ("redis://edge-redis:6379/0", True)),
    (
        "redis.url=redis://cache:6379/0,dataplane.extraEnv[0].name=TZ,dataplane.extraEnv[0].value=UTC",
        ("redis://cache:6379/0", False),
    ),
]


@pytest.mark.parametrize(
    ("setting", "expected"), REDIS_SETTINGS, ids=[s or "defaults" for s, _ in REDIS_SETTINGS]
)
def test_redis_url_reaches_the_data_plane(
    newest_helm: helmtools.Helm, setting: str, expected: tuple[str | tuple[str, str] | None, bool]
) -> None:
    """Each way of giving Redis ends in one $KUBEGATE_REDIS_URL that `kubegate serve` reads as
    --redis-url: a plain value (redis.url, or the chart's own Redis by its Service's name), or a
    secretKeyRef (redis.existingSecret), never an argument. dataplane.extraEnv is kept beside it."""
    url, own = expected
    result = newest_helm.template(*(["--set", setting] if setting else []))
    assert result.returncode == 0, result.stderr
    r = Rendered(result.stdout)
    dataplane = r.one("Deployment", "-dataplane")
    (container,) = dataplane["spec"]["template"]["spec"]["containers"]
    env = [v for v in container.get("env", []) if v["name"] == "KUBEGATE_REDIS_URL"]
    from_secret = "redis://:hunter2@cache.example:6379/0"
    if url is None:
        assert env == []
        assert serve_args(container).redis_url is None
    elif isinstance(url, tuple):
        assert env == [
            {"name": "KUBEGATE_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": url[0], "key": url[1]}}}
        ]
        assert serve_args(container, {url: from_secret}).redis_url == from_secret
    else:
        assert env == [{"name": "KUBEGATE_REDIS_URL", "value": url}]
        assert serve_args(container).redis_url == url
    if "extraEnv" in setting:
        assert {"name": "TZ", "value": "UTC"} in container["env"]
    values: dict[str, Any] = {}
    for assignment in filter(None, setting.split(",")):
        key, _, value = assignment.partition("=")
        if key in ("redis.enabled", "networkPolicy.enabled"):
            section, field = key.split(".")
            values.setdefault(section, {})[field] = value == "true"
    service = check_chart_redis(r, values, dataplane["spec"]["selector"]["matchLabels"])
    assert (service is not None) == own
    if service is not None:
        assert url == f"redis://{service['metadata']['name']}:6379/0"


TRUSTED_PROXIES = [
    ([], None),
    (["10.0.0.0/8"], "10.0.0.0/8"),
    (["10.0.0.0/8", "192.168.1.7", "fd00::/8"], "10.0.0.0/8,192.168.1.7,fd00::/8"),
]


@pytest.mark.parametrize(("cidrs", "flag"), TRUSTED_PROXIES, ids=[str(len(c)) for c, _ in TRUSTED_PROXIES])
def test_trusted_proxies(newest_helm: helmtools.Helm, cidrs: list[str], flag: str | None) -> None:
    """dataplane.trustedProxies becomes one --trusted-proxies that the real parser (which checks every
    CIDR) accepts; without it there is no flag and no proxy is trusted."""
    from kubegate.dataplane.ratelimiting import parse_trusted_proxies

    sets = [arg for i, cidr in enumerate(cidrs) for arg in ("--set", f"dataplane.trustedProxies[{i}]={cidr}")]
    result = newest_helm.template(*sets)
    assert result.returncode == 0, result.stderr
    (container,) = Rendered(result.stdout).one("Deployment", "-dataplane")["spec"]["template"]["spec"][
        "containers"
    ]
    assert _args(container).get("--trusted-proxies") == ([flag] if flag else None)
    serve = serve_args(container)
    assert [str(n) for n in parse_trusted_proxies(serve.trusted_proxies)] == [
        str(ipaddress.ip_network(c, strict=False)) for c in cidrs
    ]


# (--set, then: --tls-port, --tls-redirect-port, the https Service port and its nodePort, the default
# certificate's Secret); None for --tls-port: no HTTPS listener, port or mount at all.
TLS_SETTINGS = [
    ("", (8443, 443, 443, None, None)),
    ("dataplane.tls.defaultCertificate.secretName=edge-tls", (8443, 443, 443, None, "edge-tls")),
    ("dataplane.tls.port=9443,dataplane.tls.servicePort=8443", (9443, 8443, 8443, None, None)),
    ("dataplane.tls.servicePort=8443", (8443, None, 8443, None, None)),  # clients reach the pod's port
    ("dataplane.tls.redirectPort=8443", (8443, None, 443, None, None)),
    (
        "service.type=NodePort,dataplane.tls.nodePort=30443,dataplane.tls.redirectPort=30443",
        (8443, 30443, 443, 30443, None),
    ),
    ("dataplane.tls.enabled=false", (None, None, None, None, None)),
]


@pytest.mark.parametrize(
    ("setting", "expected"), TLS_SETTINGS, ids=[s or "defaults" for s, _ in TLS_SETTINGS]
)
def test_tls_listener(
    newest_helm: helmtools.Helm,
    setting: str,
    expected: tuple[int | None, int | None, int | None, int | None, str | None],
) -> None:
    """The HTTPS listener's flags (read by the real ``kubegate serve`` parser) agree with the container
    port "https", the traffic Service's port "https", the NetworkPolicy and the default certificate's
    mount; with TLS off none of it is rendered. The probes stay on the admin port either way."""
    tls_port, redirect, service_port, node_port, secret = expected
    result = newest_helm.template(*(["--set", setting] if setting else []))
    assert result.returncode == 0, result.stderr
    r = Rendered(result.stdout)
    pod = r.one("Deployment", "-dataplane")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    serve = cli.build_parser().parse_args(["serve", *container["args"]])
    assert (serve.tls_port, serve.tls_redirect_port) == (tls_port, redirect)
    if serve.tls_port is None:  # what `kubegate serve` refuses (cli.main): these need --tls-port
        assert serve.default_certificate is None and serve.tls_redirect_port is None
    assert _default_certificate_secret(pod, container, serve) == secret
    volumes = {v["name"] for v in pod["volumes"]}
    assert ("default-certificate" in volumes) == (secret is not None)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports.get("https") == tls_port
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "admin"

    service = r.one("Service", "kubegate")
    https = [p for p in service["spec"]["ports"] if p["name"] == "https"]
    if tls_port is None:
        assert https == []
    else:
        assert https == [
            {"name": "https", "port": service_port, "targetPort": "https", "protocol": "TCP"}
            | ({"nodePort": node_port} if node_port else {})
        ]
    (policy,) = r.all("NetworkPolicy")
    traffic = policy["spec"]["ingress"][0]  # the traffic rule, open to trafficFrom (anyone here)
    assert [p["port"] for p in traffic["ports"]] == (["http"] if tls_port is None else ["http", "https"])
    assert "from" not in traffic


def test_operator_arguments_parse_with_the_real_parser(newest_helm: helmtools.Helm) -> None:
    """The flags the chart passes to ``kubegate operator`` mean what the chart intends, read by the
    operator's own settings parser with an empty environment."""
    from kubegate_operator import settings

    ns = helmtools.NAMESPACE
    for case in CASES:
        values = values_of(case)
        r = Rendered(render(newest_helm, case))
        container = container_of(r.one("Deployment", "-operator")["spec"]["template"]["spec"], "operator")
        parsed = settings.parse(container["args"], environ={})
        admin = r.one("Service", "-admin")["metadata"]["name"]
        assert str(parsed.dataplane_service) == f"{ns}/{admin}"
        assert list(parsed.namespaces) == values.get("operator", {}).get("watchNamespaces", [])
        assert parsed.push_token_file is not None and parsed.bootstrap_secret is not None
        assert parsed.metrics_port == values.get("operator", {}).get("metricsPort", 8000)
        elected = values.get("operator", {}).get("leaderElection", {}).get("enabled", True)
        assert (parsed.leader_lease is not None) == elected
        assert parsed.gateway_class == values.get("gatewayClass", "kubegate")


# ------------------------------------------------------------------------------ several instances

# Kinds without a namespace (the CRD is not rendered: it comes from crds/, is shared by every release,
# and Helm installs it once, with the first release).
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}
ObjectKey = tuple[str, str, str]  # kind, namespace ("" when cluster-scoped), name


def release_objects(helm: helmtools.Helm, release: str, namespace: str, *sets: str) -> list[ObjectKey]:
    """Every object one release puts in a cluster: those it renders, and those its operator creates (the
    bootstrap and push-token Secrets and the leader Lease, named by its arguments)."""
    args = [arg for setting in sets for arg in ("--set", setting)]
    result = helm.run("template", release, str(helmtools.CHART), "--namespace", namespace, *args)
    assert result.returncode == 0, result.stderr
    keys = []
    for doc in documents(result.stdout):
        meta = doc["metadata"]
        scope = "" if doc["kind"] in CLUSTER_SCOPED else meta.get("namespace", namespace)
        keys.append((doc["kind"], scope, meta["name"]))
    (operator,) = [d for d in documents(result.stdout) if d["metadata"]["name"].endswith("-operator")
                   and d["kind"] == "Deployment"]  # fmt: skip
    (container,) = operator["spec"]["template"]["spec"]["containers"]
    op_args = _args(container)
    for flag, kind in (
        ("--bootstrap-secret", "Secret"),
        ("--push-token-secret", "Secret"),
        ("--leader-lease", "Lease"),
    ):
        for ref in op_args.get(flag, []):
            ref_namespace, _, name = ref.partition("/")
            keys.append((kind, ref_namespace, name))
    return keys


def collisions(*releases: list[ObjectKey]) -> list[ObjectKey]:
    seen = [key for keys in releases for key in keys]
    return sorted({key for key in seen if seen.count(key) > 1})


TWO_RELEASES = {
    # (release, namespace, --set ...) of each: two classes, whichever way the releases are named
    "same-name": [
        ("kubegate", "kubegate-system", ()),
        ("kubegate", "kubegate-internal", ("gatewayClass=internal",)),
    ],
    "same-name-watching-the-same-namespaces": [
        ("kubegate", "kubegate-system", ("operator.watchNamespaces={team-a,team-b}",)),
        ("kubegate", "kubegate-internal", ("gatewayClass=internal", "operator.watchNamespaces={team-a}")),
    ],
    "two-names-every-component": [
        ("public", "gateways", ("redis.enabled=true", "serviceMonitor.enabled=true")),
        (
            "internal",
            "internal",
            ("gatewayClass=internal", "redis.enabled=true", "serviceMonitor.enabled=true"),
        ),
    ],
}


@pytest.mark.parametrize("case", sorted(TWO_RELEASES))
def test_two_releases_share_no_object(newest_helm: helmtools.Helm, case: str) -> None:
    """Issue 13: a release per gateway class, each in its namespace, in one cluster. No two objects share
    a kind, namespace and name (a second ``helm install`` would fail on one the first owns, or two
    operators would share a Lease or a bootstrap Secret)."""
    renders = [release_objects(newest_helm, name, ns, *sets) for name, ns, sets in TWO_RELEASES[case]]
    assert all(len(set(keys)) == len(keys) for keys in renders)
    assert collisions(*renders) == []
    kinds = {kind for keys in renders for kind, _, _ in keys}
    assert {"Secret", "Lease", "ClusterRole"} <= kinds


def test_the_collision_check_catches_a_shared_name(newest_helm: helmtools.Helm) -> None:
    """Guard: two releases of one name in one namespace share every name; and the same bootstrap Secret
    and Lease given to two releases in one namespace are found although no template renders them."""
    once = release_objects(newest_helm, "kubegate", "kubegate-system")
    assert collisions(once, once) == sorted(set(once))
    shared = ("bootstrap.secretName=last-table", "operator.leaderElection.leaseName=leader")
    found = collisions(
        release_objects(newest_helm, "public", "gateways", *shared),
        release_objects(newest_helm, "internal", "gateways", "gatewayClass=internal", *shared),
    )
    assert found == [("Lease", "gateways", "leader"), ("Secret", "gateways", "last-table")]


# ------------------------------------------------------------------------- disruption and autoscaling


def _render(helm: helmtools.Helm, *args: str) -> Rendered:
    result = helm.template(*args)
    assert result.returncode == 0, result.stderr
    return Rendered(result.stdout)


def _with_values(tmp_path: Path, values: dict[str, Any]) -> list[str]:
    """``-f FILE`` for a value set (keeps strings, nulls and lists as written, unlike --set)."""
    path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return ["-f", str(path)]


def _budget(r: Rendered, component: str) -> dict[str, Any] | None:
    found = [p for p in r.all("PodDisruptionBudget") if p["metadata"]["name"].endswith(f"-{component}")]
    return found[0]["spec"] if found else None


# (values, then the data plane's PDB spec without its selector, or None when none is rendered)
PDB_CASES: list[tuple[dict[str, Any], dict[str, Any] | None]] = [
    ({}, {"minAvailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow"}),
    ({"replicas": 1}, None),
    ({"replicas": 1, "podDisruptionBudget": {"minAvailable": 5}}, None),  # never rendered: never checked
    ({"replicas": 1, "autoscaling": {"enabled": True}}, {"minAvailable": 1}),  # the HPA's minimum, 2
    ({"autoscaling": {"enabled": True, "minReplicas": 1}}, None),
    ({"autoscaling": {"enabled": True, "minReplicas": 3}, "podDisruptionBudget": {"minAvailable": 2}}, {}),
    ({"replicas": 3, "podDisruptionBudget": {"minAvailable": "66%"}}, {"minAvailable": "66%"}),
    (
        {"podDisruptionBudget": {"minAvailable": None, "maxUnavailable": "25%"}},
        {"maxUnavailable": "25%"},
    ),
    (
        {"podDisruptionBudget": {"unhealthyPodEvictionPolicy": "IfHealthyBudget"}},
        {"unhealthyPodEvictionPolicy": "IfHealthyBudget"},
    ),
    ({"podDisruptionBudget": {"enabled": False}}, None),
]


@pytest.mark.parametrize(("dataplane", "expected"), PDB_CASES, ids=[str(v) for v, _ in PDB_CASES])
def test_pdb_only_when_it_can_be_satisfied(
    newest_helm: helmtools.Helm, tmp_path: Path, dataplane: dict[str, Any], expected: dict[str, Any] | None
) -> None:
    """The data plane's PodDisruptionBudget is rendered only with more than one replica (replicas, or the
    HPA's minimum), and then lets unhealthy pods go (a pod waiting for its first table is NotReady);
    budgets that would block every drain are refused (BAD_VALUES)."""
    r = _render(newest_helm, *_with_values(tmp_path, {"dataplane": dataplane}))
    spec = _budget(r, "dataplane")
    if expected is None:
        assert spec is None
        return
    assert spec is not None
    assert expected.items() <= spec.items()
    assert spec.get("unhealthyPodEvictionPolicy") in ("AlwaysAllow", "IfHealthyBudget")
    assert (
        spec["selector"]["matchLabels"]
        == r.one("Deployment", "-dataplane")["spec"]["selector"]["matchLabels"]
    )


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("", {"maxUnavailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow"}),
        ("operator.replicas=3", {"maxUnavailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow"}),
        ("operator.replicas=1", None),
        ("operator.podDisruptionBudget.enabled=false", None),
    ],
)
def test_operator_pdb_spread_and_readiness(
    newest_helm: helmtools.Helm, setting: str, expected: dict[str, Any] | None
) -> None:
    """The operator's budget lets one replica go at a time (the standby takes the Lease over), and only
    with more than one; its replicas spread over nodes; each turns ready once it serves /metrics."""
    r = _render(newest_helm, *(["--set", setting] if setting else []))
    spec = _budget(r, "operator")
    operator = r.one("Deployment", "-operator")
    if expected is None:
        assert spec is None
    else:
        assert spec is not None and expected.items() <= spec.items()
        assert spec["selector"]["matchLabels"] == operator["spec"]["selector"]["matchLabels"]
    pod = operator["spec"]["template"]["spec"]
    (spread,) = pod["topologySpreadConstraints"]
    assert (
        spread["topologyKey"] == "kubernetes.io/hostname" and spread["whenUnsatisfiable"] == "ScheduleAnyway"
    )
    assert spread["labelSelector"]["matchLabels"] == operator["spec"]["selector"]["matchLabels"]
    assert container_of(pod, "operator")["readinessProbe"]["httpGet"] == {
        "path": "/metrics",
        "port": "metrics",
    }


CPU = {
    "type": "Resource",
    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
}
MEMORY = {
    "type": "Resource",
    "resource": {"name": "memory", "target": {"type": "Utilization", "averageUtilization": 80}},
}
RPS = {
    "type": "Pods",
    "pods": {
        "metric": {"name": "requests_per_second"},
        "target": {"type": "AverageValue", "averageValue": "100"},
    },
}
BEHAVIOR = {
    "scaleDown": {
        "stabilizationWindowSeconds": 600,
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
    }
}
HPA_CASES: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
    ({}, [CPU]),
    ({"targetMemoryUtilizationPercentage": 80}, [CPU, MEMORY]),
    ({"targetCPUUtilizationPercentage": None, "targetMemoryUtilizationPercentage": 80}, [MEMORY]),
    ({"targetCPUUtilizationPercentage": None, "customMetrics": [RPS]}, [RPS]),
    ({"customMetrics": [RPS], "behavior": BEHAVIOR}, [CPU, RPS]),
]


@pytest.mark.parametrize(("autoscaling", "metrics"), HPA_CASES, ids=[str(a) for a, _ in HPA_CASES])
def test_hpa_metrics_and_behavior(
    newest_helm: helmtools.Helm, tmp_path: Path, autoscaling: dict[str, Any], metrics: list[dict[str, Any]]
) -> None:
    """The HPA's metrics: CPU unless turned off (null), memory when given, then customMetrics as given;
    behavior as given, else none (Kubernetes' defaults). An HPA without a metric is refused (BAD_VALUES)."""
    values = {"dataplane": {"autoscaling": {"enabled": True, **autoscaling}}}
    r = _render(newest_helm, *_with_values(tmp_path, values))
    spec = r.one("HorizontalPodAutoscaler")["spec"]
    assert spec["metrics"] == metrics
    assert spec.get("behavior") == autoscaling.get("behavior")
    assert "replicas" not in r.one("Deployment", "-dataplane")["spec"]


# ---------------------------------------------------------------------------------- extension points


def test_extra_objects_are_rendered_with_tpl(newest_helm: helmtools.Helm, tmp_path: Path) -> None:
    """extraObjects: maps and strings of YAML, each rendered with tpl (values, release, the chart's own
    named templates), each a document of its own."""
    values = {
        "fullnameOverride": "edge",
        "extraObjects": [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": '{{ include "kubegate.fullname" . }}-extra',
                    "namespace": "{{ .Release.Namespace }}",
                },
                "data": {"class": "{{ .Values.gatewayClass }}", "plain": "kept"},
            },
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {{ .Release.Name }}-extra\n"
            "stringData:\n  port: {{ .Values.dataplane.port | quote }}\n",
        ],
    }
    r = _render(newest_helm, *_with_values(tmp_path, values))
    config_map = r.one("ConfigMap", "edge-extra")
    assert config_map["metadata"]["namespace"] == helmtools.NAMESPACE
    assert config_map["data"] == {"class": "kubegate", "plain": "kept"}
    secret = r.one("Secret", f"{helmtools.RELEASE}-extra")
    assert secret["stringData"] == {"port": "8080"}


# (imageRegistry, then the repository each image is pulled from: operator, data plane and the test Pod,
# the chart's Redis) with repositories kubegate/operator, registry.example.com:5000/kubegate/dataplane,
# redis.
REGISTRY_CASES = [
    ("", ("kubegate/operator", "registry.example.com:5000/kubegate/dataplane", "redis")),
    (
        "mirror.example.com",
        (
            "mirror.example.com/kubegate/operator",
            "mirror.example.com/kubegate/dataplane",
            "mirror.example.com/redis",
        ),
    ),
    (
        "localhost:5000/proxy/",
        (
            "localhost:5000/proxy/kubegate/operator",
            "localhost:5000/proxy/kubegate/dataplane",
            "localhost:5000/proxy/redis",
        ),
    ),
]


@pytest.mark.parametrize(
    ("registry", "expected"), REGISTRY_CASES, ids=[r or "none" for r, _ in REGISTRY_CASES]
)
def test_image_registry_override(
    newest_helm: helmtools.Helm, registry: str, expected: tuple[str, str, str]
) -> None:
    """imageRegistry replaces the registry of every image the chart runs (a first part with a dot, a colon
    or localhost), or goes in front of a repository without one; tags and digests are kept."""
    digest = "sha256:" + "4" * 64
    r = _render(
        newest_helm,
        "--set", f"imageRegistry={registry}",
        "--set", "dataplane.image.repository=registry.example.com:5000/kubegate/dataplane",
        "--set", f"dataplane.image.digest={digest}",
        "--set", "redis.enabled=true",
    )  # fmt: skip
    operator, dataplane, redis = expected
    images = {
        name: container_of(r.one("Deployment", f"-{name}")["spec"]["template"]["spec"], name)["image"]
        for name in ("operator", "dataplane", "redis")
    }
    assert images == {
        "operator": f"{operator}:0.1.0",
        "dataplane": f"{dataplane}@{digest}",
        "redis": f"{redis}:7-alpine",
    }
    (test_pod,) = r.all("Pod")
    assert container_of(test_pod["spec"], "test")["image"] == images["dataplane"]


def test_topology_spread_tpl_and_default_selector(newest_helm: helmtools.Helm, tmp_path: Path) -> None:
    """User constraints are rendered with tpl, and one without a labelSelector gets the component's pods;
    spreadAcrossNodes adds its own after them."""
    constraints = [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"},
        {
            "maxSkew": 2,
            "topologyKey": "example.com/rack",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"release": "{{ .Release.Name }}"}},
        },
    ]
    values = {
        "operator": {"topologySpreadConstraints": constraints},
        "dataplane": {"topologySpreadConstraints": constraints},
    }
    r = _render(newest_helm, *_with_values(tmp_path, values))
    for name in ("operator", "dataplane"):
        deployment = r.one("Deployment", f"-{name}")
        pods = deployment["spec"]["selector"]["matchLabels"]
        zone, rack, nodes = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert zone == constraints[0] | {"labelSelector": {"matchLabels": pods}}
        assert rack["labelSelector"] == {"matchLabels": {"release": helmtools.RELEASE}}
        assert (
            nodes["topologyKey"] == "kubernetes.io/hostname" and nodes["labelSelector"]["matchLabels"] == pods
        )


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        ((), {}),
        (
            (
                "service.loadBalancerIP=203.0.113.7",
                "service.ipFamilyPolicy=RequireDualStack",
                "service.ipFamilies={IPv6,IPv4}",
            ),
            {
                "loadBalancerIP": "203.0.113.7",
                "ipFamilyPolicy": "RequireDualStack",
                "ipFamilies": ["IPv6", "IPv4"],
            },
        ),
        (
            ("service.type=NodePort", "service.ipFamilyPolicy=SingleStack", "service.ipFamilies={IPv6}"),
            {"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"]},
        ),
    ],
)
def test_service_address_fields(
    newest_helm: helmtools.Helm, sets: tuple[str, ...], expected: dict[str, Any]
) -> None:
    """loadBalancerIP (type LoadBalancer only), ipFamilyPolicy and ipFamilies reach the traffic Service and
    nothing else; mismatched ones are refused (BAD_VALUES)."""
    r = _render(newest_helm, *[arg for s in sets for arg in ("--set", s)])
    spec = r.one("Service", helmtools.RELEASE)["spec"]
    fields = ("loadBalancerIP", "ipFamilyPolicy", "ipFamilies")
    assert {k: spec[k] for k in fields if k in spec} == expected
    for service in r.all("Service"):
        if service["metadata"]["name"] != helmtools.RELEASE:
            assert not set(fields) & set(service["spec"])


# ------------------------------------------------------------------------------------- CRD upgrades


def test_crds_install_templates_the_chart_crd(helm: helmtools.Helm) -> None:
    """crds.install: the CRD becomes a release object (so `helm upgrade` upgrades it), identical to the
    chart's crds/ file (.Files.Get) but for Helm's keep policy and the chart's labels; without it, none."""
    assert not [d for d in documents(render(helm, "default")) if d["kind"] == "CustomResourceDefinition"]
    result = helm.template("--set", "crds.install=true", "--set", "commonLabels.team=platform", "--skip-crds")
    assert result.returncode == 0, result.stderr
    (rendered,) = [d for d in documents(result.stdout) if d["kind"] == "CustomResourceDefinition"]
    source = yaml.safe_load((helmtools.CHART / "crds" / CRD_NAME).read_text())
    metadata = rendered.pop("metadata")
    assert rendered == {k: v for k, v in source.items() if k != "metadata"}
    assert metadata["name"] == source["metadata"]["name"]
    assert metadata["annotations"]["helm.sh/resource-policy"] == "keep"
    assert metadata["labels"]["app.kubernetes.io/instance"] == helmtools.RELEASE
    assert metadata["labels"]["team"] == "platform"
    kv = _validator()
    assert (
        validation_errors(kv, [rendered | {"metadata": metadata}], newest_kubernetes_versions(kv)[-1]) == []
    )


def test_notes_say_how_to_upgrade_the_crd() -> None:
    """NOTES: the CRD of crds/ is applied by hand (server-side) before an upgrade, and values are passed
    again rather than reused; with crds.install the release upgrades it."""
    helm = helmtools.available().get(4)
    if helm is None:
        missing("NOTES.txt renders offline only with helm 4 (`helm install --dry-run=client`)")
    notes = {}
    for install in ("false", "true"):
        result = helm.run(
            "install", helmtools.RELEASE, str(helmtools.CHART), "--namespace", helmtools.NAMESPACE,
            "--dry-run=client", "--skip-crds", "--set", f"crds.install={install}",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        notes[install] = result.stdout.split("\nNOTES:\n", 1)[1]
    assert "kubectl apply --server-side --force-conflicts -f CHART/crds/" in notes["false"]
    assert "CHART/crds/" not in notes["true"] and "belongs to this release (crds.install)" in notes["true"]
    for text in notes.values():
        assert "not --reuse-values" in text and "-f values.yaml" in text
        assert f"helm test {helmtools.RELEASE} -n {helmtools.NAMESPACE}" in text


def test_readme_does_not_advise_reuse_values() -> None:
    """README's "Install with Helm": upgrades pass a values file (--reuse-values keeps the old release's
    values and hides a new chart's new defaults), after the CRD is applied server-side; crds.install is
    the other way."""
    readme = (helmtools.ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Install with Helm", 1)[1].split("\n## ", 1)[0]
    upgrades = [line for line in section.splitlines() if line.startswith("$ helm upgrade")]
    assert upgrades and all("--reuse-values" not in line and " -f " in line for line in upgrades)
    assert "$ kubectl apply --server-side --force-conflicts -f charts/kubegate/crds/" in section
    assert "`crds.install: true`" in section and "$ helm test " in section


# ------------------------------------------------------------------------------------------ monitoring


def _exported_metric_names() -> set[str]:
    """Every sample name that the data plane's and the operator's /metrics can show, from their real
    collectors (a counter family ``x`` shows ``x_total``; a histogram its buckets, sum and count)."""
    from kubegate.dataplane.admin import table_info
    from kubegate.dataplane.policymetrics import PolicyCollector
    from kubegate.dataplane.stats import Stats, StatsCollector
    from kubegate_operator.metrics import Metrics

    families = [
        *StatsCollector(Stats(), table_info=lambda: table_info(None)).collect(),
        *PolicyCollector(lambda: None).collect(),
        *Metrics().registry.collect(),
    ]
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {f.name + suffix for f in families for suffix in suffixes[f.type]}


ALERTS = {
    "KubegateNoRouteTable",
    "KubegateOperatorNotLeading",
    "KubegateTablePushFailures",
    "KubegateReplicasOutOfSync",
    "KubegateHighServerErrorRatio",
    "KubegateCircuitBreakerOpen",
}


def test_prometheus_rule_alerts_name_real_metrics(newest_helm: helmtools.Helm) -> None:
    """Every metric an alert names is one the data plane or the operator exports, with label values they
    use: no table is hash "None", 5xx a status class, 2 the open breaker, error and rejected push results.
    Each alert selects the release's namespace."""
    from kubegate.dataplane import stats
    from kubegate.dataplane.admin import table_info
    from kubegate.dataplane.policies import breaker

    r = _render(
        newest_helm, "--set", "prometheusRule.enabled=true", "--set", "prometheusRule.alertLabels.team=edge"
    )
    (rule,) = r.all("PrometheusRule")
    (group,) = rule["spec"]["groups"]
    alerts = {a["alert"]: a for a in group["rules"]}
    assert set(alerts) == ALERTS
    exported = _exported_metric_names()
    for name, alert in alerts.items():
        named = set(re.findall(r"\bkubegate_[a-z_]+", alert["expr"]))
        assert named and named <= exported, (name, named - exported)
        for selector in re.findall(r"kubegate_[a-z_]+\{([^}]*)\}", alert["expr"]):
            assert f'namespace="{helmtools.NAMESPACE}"' in selector, (name, selector)
        assert alert["labels"]["severity"] in ("critical", "warning") and alert["labels"]["team"] == "edge"
        assert alert["annotations"]["summary"] and "{{ $labels." in alert["annotations"]["description"]
    (no_table,) = [
        sample
        for family in stats.StatsCollector(stats.Stats(), table_info=lambda: table_info(None)).collect()
        for sample in family.samples
        if sample.name == "kubegate_table_info"
    ]
    assert f'hash="{no_table.labels["hash"]}"' in alerts["KubegateNoRouteTable"]["expr"]
    assert (
        "5xx" in stats._STATUS_CLASS
        and 'status_class="5xx"' in alerts["KubegateHighServerErrorRatio"]["expr"]
    )
    assert alerts["KubegateCircuitBreakerOpen"]["expr"].endswith(f"== {breaker.OPEN}")
    publisher = (helmtools.ROOT / "operator" / "kubegate_operator" / "publisher.py").read_text()
    for result in ("error", "rejected"):
        assert f'self._count("{result}")' in publisher or f'"{result}"' in publisher
    assert 'result=~"error|rejected"' in alerts["KubegateTablePushFailures"]["expr"]


def test_prometheus_rule_disabled_alerts_and_additional_rules(
    newest_helm: helmtools.Helm, tmp_path: Path
) -> None:
    values = {
        "prometheusRule": {
            "enabled": True,
            "labels": {"release": "prometheus"},
            "disabled": ["KubegateCircuitBreakerOpen", "KubegateHighServerErrorRatio"],
            "additionalRules": [
                {"record": "kubegate:requests:rate5m", "expr": "sum(rate(kubegate_requests_total[5m]))"}
            ],
        }
    }
    (rule,) = _render(newest_helm, *_with_values(tmp_path, values)).all("PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    rules = rule["spec"]["groups"][0]["rules"]
    assert {r["alert"] for r in rules if "alert" in r} == ALERTS - set(values["prometheusRule"]["disabled"])
    assert rules[-1] == values["prometheusRule"]["additionalRules"][0]
    assert _render(newest_helm).all("PrometheusRule") == []


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PodMonitor"])
def test_monitors_with_relabelings(newest_helm: helmtools.Helm, tmp_path: Path, kind: str) -> None:
    """The data plane is scraped through its admin Service (ServiceMonitor) or its pods (PodMonitor), the
    operator through its metrics Service (which exists without monitoring too); relabelings and
    metricRelabelings go to every endpoint."""
    relabel = [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}]
    drop = [{"sourceLabels": ["__name__"], "regex": "kubegate_panic_picks_total", "action": "drop"}]
    values = {
        "serviceMonitor": {
            "enabled": True,
            "dataplaneKind": kind,
            "relabelings": relabel,
            "metricRelabelings": drop,
        }
    }
    r = _render(newest_helm, *_with_values(tmp_path, values))
    dataplane = r.one("Deployment", "-dataplane")["spec"]["selector"]["matchLabels"]
    operator_service = r.one("Service", "-operator")
    if kind == "PodMonitor":
        monitor = r.one("PodMonitor")
        assert monitor["spec"]["selector"]["matchLabels"] == dataplane
        endpoints = monitor["spec"]["podMetricsEndpoints"]
        assert [m["metadata"]["name"] for m in r.all("ServiceMonitor")] == [f"{helmtools.RELEASE}-operator"]
    else:
        monitor = r.one("ServiceMonitor", "-dataplane")
        assert monitor["spec"]["selector"]["matchLabels"] == selects(r.one("Service", "-admin"))
        endpoints = monitor["spec"]["endpoints"]
        assert r.all("PodMonitor") == []
    operator_monitor = r.one("ServiceMonitor", "-operator")
    assert operator_monitor["spec"]["selector"]["matchLabels"] == selects(operator_service)
    for endpoint in [*endpoints, *operator_monitor["spec"]["endpoints"]]:
        assert endpoint["relabelings"] == relabel and endpoint["metricRelabelings"] == drop
        assert endpoint["path"] == "/metrics"
    assert [e["port"] for e in endpoints] == ["admin"]
    assert _render(newest_helm).one("Service", "-operator")["spec"]["clusterIP"] == "None"


# ----------------------------------------------------------------------------------------- helm test


def test_release_test_pod(newest_helm: helmtools.Helm) -> None:
    """The `helm test` Pod: a test hook (deleted when it passes), the data-plane image (pinned like the
    release's), hardened like the chart's pods, no token, its script the chart's files/release-test.py,
    pointed at the two headless Services; the NetworkPolicy admits it to the admin port. Not rendered
    with tests.enabled false."""
    r = Rendered(render(newest_helm, "production"))
    (pod,) = r.all("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "hook-succeeded" in pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    dataplane = r.one("Deployment", "-dataplane")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == dataplane["serviceAccountName"]
    assert spec["imagePullSecrets"] == dataplane["imagePullSecrets"]
    test = container_of(spec, "test")
    assert test["image"] == container_of(dataplane, "dataplane")["image"]
    assert "@sha256:" in test["image"]  # production pins digests: so is the test's image
    _check_hardened(spec, test)
    assert test["command"] == ["python", "-c"]
    assert test["args"] == [(helmtools.CHART / "files" / "release-test.py").read_text()]
    env = {e["name"]: e["value"] for e in test["env"]}
    ns = helmtools.NAMESPACE
    for variable, service, port in (
        ("KUBEGATE_OPERATOR", r.one("Service", "-operator"), "metrics"),
        ("KUBEGATE_DATAPLANE", r.one("Service", "-admin"), "admin"),
    ):
        assert service["spec"]["clusterIP"] == "None"  # DNS answers with every pod's address
        (service_port,) = [p["port"] for p in service["spec"]["ports"] if p["name"] == port]
        assert env[variable] == f"{service['metadata']['name']}.{ns}.svc:{service_port}"
    assert env["KUBEGATE_TEST_TIMEOUT"] == "120"
    (policy,) = [p for p in r.all("NetworkPolicy") if p["metadata"]["name"].endswith("-dataplane")]
    admin_from = next(
        rule["from"] for rule in policy["spec"]["ingress"] if rule["ports"][0]["port"] == "admin"
    )
    assert {"podSelector": {"matchLabels": selects(pod)}} in admin_from
    off = _render(newest_helm, "--set", "tests.enabled=false")
    assert off.all("Pod") == []
    assert len(off.one("NetworkPolicy")["spec"]["ingress"][1]["from"]) == 1  # the operator's pods only


class _Fake:
    """HTTP servers standing for an operator pod and a data-plane pod: each path's (status, body)."""

    def __init__(self, routes: dict[str, tuple[int, str]]) -> None:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = fake.routes.get(self.path, (404, "not found"))
                data = body.encode()
                self.send_response(status)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.routes = routes
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _operator_metrics(*, leader: bool, replicas: int, in_sync: int) -> str:
    from prometheus_client import generate_latest

    from kubegate_operator.metrics import Metrics

    metrics = Metrics()
    metrics.leader.set(int(leader))
    metrics.replicas.set(replicas)
    metrics.replicas_in_sync.set(in_sync)
    return generate_latest(metrics.registry).decode()


def _dataplane_metrics(table: dict[str, Any] | None) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    from kubegate.dataplane.admin import table_info
    from kubegate.dataplane.stats import Stats, StatsCollector

    registry = CollectorRegistry(auto_describe=False)
    info = table or table_info(None)
    registry.register(StatsCollector(Stats(), table_info=lambda: info))
    return generate_latest(registry).decode()


TABLE = {"version": 7, "hash": "3f2a9c", "routes": 4, "loadedAt": 0.0}
READY = (200, '{"ready": true, "version": 7}')
NOT_READY = '{"ready": false, "reason": "no route table loaded"}'
# (the operator's figures, the data plane's /ready and table; then the exit status and what it prints)
RELEASE_TESTS = [
    (
        (True, 1, 1),
        READY,
        TABLE,
        0,
        "ok: operator 127.0.0.1 leads (1 operator pods); 1 data-plane pods ready, all serving table 3f2a9c",
    ),
    ((False, 1, 1), READY, TABLE, 1, "FAILED: 0 of the 1 operator pods (127.0.0.1) lead, not exactly one"),
    ((True, 2, 2), READY, TABLE, 1, "FAILED: the leader (127.0.0.1) counts 2 data-plane replicas, DNS has 1"),
    ((True, 1, 0), READY, TABLE, 1, "FAILED: 0 of 1 data-plane replicas serve the leader's current table"),
    (
        (True, 1, 1),
        (503, NOT_READY),
        None,
        1,
        "FAILED: data-plane pod 127.0.0.1: /ready answered 503 " + NOT_READY,
    ),
    (
        (True, 1, 1),
        READY,
        None,
        1,
        "FAILED: data-plane pod 127.0.0.1: no kubegate_table_info with a table's hash",
    ),
]


@pytest.mark.parametrize(
    ("operator", "ready", "table", "status", "output"),
    RELEASE_TESTS,
    ids=[o.split(":")[0] + str(i) for i, (*_, o) in enumerate(RELEASE_TESTS)],
)
def test_release_test_script(
    newest_helm: helmtools.Helm,
    operator: tuple[bool, int, int],
    ready: tuple[int, str],
    table: dict[str, Any] | None,
    status: int,
    output: str,
) -> None:
    """The script the test Pod runs, as rendered, against stand-ins for an operator pod and a data-plane
    pod serving the real collectors' /metrics: it passes only when one operator leads and every replica
    is counted, in sync, ready and serving the same table, and says which check failed."""
    (pod,) = Rendered(render(newest_helm, "default")).all("Pod")
    script = container_of(pod["spec"], "test")["args"][0]
    leader, replicas, in_sync = operator
    fakes = [
        _Fake({"/metrics": (200, _operator_metrics(leader=leader, replicas=replicas, in_sync=in_sync))}),
        _Fake({"/ready": ready, "/metrics": (200, _dataplane_metrics(table))}),
    ]
    try:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "KUBEGATE_OPERATOR": f"127.0.0.1:{fakes[0].port}",
            "KUBEGATE_DATAPLANE": f"127.0.0.1:{fakes[1].port}",
            "KUBEGATE_TEST_TIMEOUT": "0",  # the first answer is final
        }
        result = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        for fake in fakes:
            fake.close()
    assert (result.returncode, result.stderr) == (status, "")
    assert result.stdout.startswith(output), result.stdout


def test_release_test_script_retries_until_its_timeout() -> None:
    """Nothing answering yet (a refused connection, a name without an address) is retried every 2 seconds
    until the timeout, then reported."""
    script = (helmtools.CHART / "files" / "release-test.py").read_text()
    for operator, timeout, error in (
        ("127.0.0.1:9", "1", "ConnectionRefusedError"),
        ("no-such-service.invalid:8000", "0", "gaierror"),
    ):
        env = {
            "KUBEGATE_OPERATOR": operator,
            "KUBEGATE_DATAPLANE": "127.0.0.1:9",
            "KUBEGATE_TEST_TIMEOUT": timeout,
        }
        result = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        lines = result.stdout.splitlines()
        assert result.returncode == 1, result.stdout + result.stderr
        assert lines[-1].startswith(f"FAILED: {error}: ")
        assert [line.split(":")[0] for line in lines[:-1]] == (["waiting"] if timeout == "1" else [])
