"""The Helm chart ``charts/kubegate``, checked offline with real helm 3 and helm 4 binaries.

Aspects covered: ``helm lint --strict`` for every value set; golden files (``golden/<case>.values.yaml``
→ ``golden/<case>.out.yaml``, exactly what ``helm template`` prints, the generated push token masked;
``pytest --regen-golden`` rewrites them and deletes stale ones); the rendered manifests validated with
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
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
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
FOREIGN_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
GENERATED = '"<generated: 48 random letters and digits>"'


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


def mask_generated_token(text: str, values: dict[str, Any]) -> str:
    """Replace the random push token with a placeholder, after checking that it looks generated."""
    token_values = values.get("pushToken", {})
    if token_values.get("value") or token_values.get("existingSecret"):
        return text
    pattern = re.compile(
        r"(# Source: kubegate/templates/push-token-secret\.yaml\n(?:.*\n)*?data:\n  [-._a-zA-Z0-9]+: )"
        r'"([^"]*)"'
    )
    match = pattern.search(text)
    assert match, "no generated push token found in the push-token Secret"
    token = base64.b64decode(match.group(2)).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{48}", token), f"generated token has the wrong shape: {token!r}"
    return pattern.sub(lambda m: m.group(1) + GENERATED, text)


# ---------------------------------------------------------------------------------------------- lint


@pytest.mark.parametrize("case", CASES)
def test_lint_strict(helm: helmtools.Helm, case: str) -> None:
    result = helm.run("lint", "--strict", str(helmtools.CHART), "-f", str(GOLDEN / f"{case}.values.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


# -------------------------------------------------------------------------------------------- golden


@pytest.mark.parametrize("case", CASES)
def test_golden(helm: helmtools.Helm, case: str, regen_golden: bool) -> None:
    actual = mask_generated_token(render(helm, case), values_of(case))
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


def test_generated_token_is_random(newest_helm: helmtools.Helm) -> None:
    """Without a cluster (no lookup), each render generates a new token: it is not a constant."""
    first, second = (newest_helm.template().stdout for _ in range(2))
    assert mask_generated_token(first, {}) == mask_generated_token(second, {})
    assert first != second


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


@pytest.mark.parametrize("case", CASES)
def test_wiring(newest_helm: helmtools.Helm, case: str) -> None:
    values = values_of(case)
    r = Rendered(render(newest_helm, case))
    ns = helmtools.NAMESPACE

    dataplane = r.one("Deployment", "-dataplane")
    dp_pod = dataplane["spec"]["template"]["spec"]
    dp_labels = dataplane["spec"]["selector"]["matchLabels"]
    (dp,) = dp_pod["containers"]
    operator = r.one("Deployment", "-operator")
    op_pod = operator["spec"]["template"]["spec"]
    op_labels = operator["spec"]["selector"]["matchLabels"]
    (op,) = op_pod["containers"]

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
    assert dp_pod["automountServiceAccountToken"] is False
    _check_hardened(dp_pod, dp)
    _check_hardened(op_pod, op)

    # Bootstrap Secret: an optional volume in the data plane, the same name for the operator and RBAC.
    bootstrap = _mount_of(dp_pod, dp, str(serve.bootstrap))
    assert bootstrap["volume"]["secret"]["optional"] is True
    assert bootstrap["relative"] == values.get("bootstrap", {}).get("key", "table.json.gz")
    bootstrap_secret = bootstrap["volume"]["secret"]["secretName"]
    op_args = _args(op)
    assert op_args["--bootstrap-secret"] == [f"{ns}/{bootstrap_secret}"]

    # Push token: one Secret mounted as the file each side reads.
    token_secrets = set()
    for pod, container, path in [
        (dp_pod, dp, str(serve.push_token_file)),
        (op_pod, op, op_args["--push-token-file"][0]),
    ]:
        mount = _mount_of(pod, container, path)
        secret = mount["volume"]["secret"]
        assert secret.get("optional") is not True
        assert secret["items"] == [
            {"key": values.get("pushToken", {}).get("key", "token"), "path": mount["relative"]}
        ]
        token_secrets.add(secret["secretName"])
    (token_secret,) = token_secrets
    existing = values.get("pushToken", {}).get("existingSecret")
    rendered_secrets = [s["metadata"]["name"] for s in r.all("Secret")]
    assert rendered_secrets == ([] if existing else [token_secret])
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
        assert admin_from[1:] == values.get("networkPolicy", {}).get("adminFrom", [])
    else:
        assert policies == []

    # Autoscaling replaces the fixed replica count; the PDB and HPA point at the data plane.
    hpas = r.all("HorizontalPodAutoscaler")
    autoscaling = values.get("dataplane", {}).get("autoscaling", {}).get("enabled", False)
    assert len(hpas) == int(autoscaling)
    assert ("replicas" in dataplane["spec"]) == (not autoscaling)
    for hpa in hpas:
        assert hpa["spec"]["scaleTargetRef"]["name"] == dataplane["metadata"]["name"]
    for pdb in r.all("PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"] == dp_labels


def check_chart_redis(
    r: Rendered, values: dict[str, Any], dp_labels: dict[str, str]
) -> dict[str, Any] | None:
    """The chart's own Redis (redis.enabled), checked; its Service (None when it is not rendered: then
    no Redis object is). One pod, replaced rather than rolled (never two behind the Service), counters in
    memory only (--save '' --appendonly no), non-root on a read-only root with an emptyDir /data, probed
    with `redis-cli ping` and a TCP connection, a ClusterIP Service on 6379, and with the chart's
    NetworkPolicies a policy admitting only the data-plane pods on 6379 and no egress."""
    redis = redis_values(values)
    labelled = [d for d in r.docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "redis"]
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
        (container,) = r.one("Deployment", "-operator")["spec"]["template"]["spec"]["containers"]
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
    bootstrap Secret and the leader Lease, named by its arguments)."""
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
    for flag, kind in (("--bootstrap-secret", "Secret"), ("--leader-lease", "Lease")):
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
