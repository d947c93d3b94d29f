"""The Helm chart installed, upgraded, rolled back and uninstalled on a real kube-apiserver.

For each helm major found (4 and 3, ``tests/delivery/helm.py``) and each value set of the chart's golden
tests (``tests/delivery/golden/*.values.yaml``: the defaults, which are the HA set with two operators
electing a leader, NetworkPolicy and PDBs; ``minimal``; ``namespaced``, with a bootstrap Secret name, an
existing token Secret and RoleBindings in two watched namespaces; ``production``, with the HPA (and its
behavior), ServiceMonitors with relabelings, the PrometheusRule and a PDB by ``maxUnavailable``;
``extensions``, with init containers, sidecars, extra volumes, extraObjects, a PodMonitor, an HPA on
memory and a custom metric, a load balancer address and dual-stack fields), one release in a namespace of
its own:

- ``helm install --wait=false`` (``hookOnly``, its equivalent, for helm 4) succeeds: the API server
  accepts every object the chart renders (schema, defaulting, admission, Service port allocation), and
  the release renders the same kinds as the golden render of that value set (but its test hook);
- the ``helm test`` Pod (``helm get hooks``) is accepted too: created with kubectl, stored with every
  field rendered, then deleted (``helm test`` itself would wait for a Pod that never runs here);
- every object of the release's manifest exists on the server, under helm's ownership annotations, and
  holds every field the chart rendered, with the value rendered (the server adds defaults, but drops
  and rewrites nothing);
- the GatewayRoute CRD, installed from the chart's ``crds/``, is Established;
- ``helm upgrade`` with a changed ``dataplane.logLevel`` succeeds and the data-plane Deployment on the
  server then passes the new ``--log-level`` (its generation bumped); ``helm rollback`` to revision 1
  restores it; a push token the chart renders (``pushToken.value``) is the same through upgrade and
  rollback (by default the chart renders none: the operator makes it);
- ``helm uninstall`` removes every object of the release, and the CRD stays (Helm never deletes
  ``crds/``).

Then two releases of the same name in two namespaces, of two gateway classes and both watching the same
namespace, coexist (the ClusterRole, its binding and the RoleBindings in watched namespaces carry the
release's namespace in their name), and uninstalling one leaves the other whole.

And ``crds.install``: over the CRD that ``crds/`` installed, the chart stops with the commands that adopt
it; once adopted (those commands), ``helm install --skip-crds`` and ``helm upgrade`` apply it as a release
object, and ``helm uninstall`` keeps it (``helm.sh/resource-policy: keep``). The CRD's metadata is then
restored for the tests that follow.

What it cannot check: there is no kubelet, scheduler or controller-manager, so no Pod is ever created
(no ReplicaSet either) or runs: the test checks the objects, not the pods; ``helm install`` does not
wait for readiness. Prometheus Operator's CRDs (ServiceMonitor, PodMonitor, PrometheusRule) are not
installed here: stand-in CRDs that accept any spec are applied, so those objects are checked for their
names and mapping only, not their schema. Namespaces are left behind (this server has no namespace
controller to finalise them).

Releases that cannot coexist in one cluster: two of the ``minimal`` value set (its fixed nodePort 30080
is allocated once per cluster). So the cases run one after another, each uninstalled before the next.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubegate.api import crd
from tests import controlplane
from tests.delivery import helm as helmtools
from tests.delivery.conftest import HOW_TO_GET, MAJORS, missing
from tests.operator.conftest import Operator
from tests.upstreams import wait_for

GOLDEN = helmtools.ROOT / "tests" / "delivery" / "golden"
CASES = sorted(p.name.removesuffix(".values.yaml") for p in GOLDEN.glob("*.values.yaml"))
# Helm 3 waits only when asked; helm 4 deprecates --wait=false for its default strategy, hookOnly.
NO_WAIT = {4: "--wait=hookOnly", 3: "--wait=false"}
WATCHED = ("team-a", "team-b")  # the namespaced value set's watchNamespaces: they must exist

# Stand-ins for Prometheus Operator's CRDs (the production and extensions value sets render them).
MONITORING_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
MONITORING_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {plural}.monitoring.coreos.com}}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {{kind: {kind}, listKind: {kind}List, plural: {plural}, singular: {singular}}}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
"""
HOOK = "helm.sh/hook"


def values_of(case: str) -> dict[str, Any]:
    return yaml.safe_load((GOLDEN / f"{case}.values.yaml").read_text(encoding="utf-8")) or {}


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module")
def kube(control_plane: controlplane.ControlPlane) -> controlplane.ControlPlane:
    """The session's control plane with the monitoring stand-ins and the namespaces the namespaced value
    set watches."""
    for kind in MONITORING_KINDS:
        singular = kind.lower()
        crd_text = MONITORING_CRD.format(kind=kind, singular=singular, plural=f"{singular}s")
        control_plane.kubectl("apply", "-f", "-", stdin=crd_text)
        control_plane.kubectl(
            "wait", "--for=condition=Established", f"crd/{singular}s.monitoring.coreos.com", "--timeout=30s"
        )
    for namespace in WATCHED:
        if control_plane.kubectl("get", "namespace", namespace, check=False).returncode != 0:
            control_plane.kubectl("create", "namespace", namespace)
    return control_plane


def _helm(major: int) -> helmtools.Helm:
    found = helmtools.available().get(major)
    if found is None:
        missing(HOW_TO_GET[major])
    return found


class Release:
    """One release of the chart on the control plane, driven by one helm binary."""

    def __init__(
        self, kube: controlplane.ControlPlane, helm: helmtools.Helm, name: str, namespace: str, case: str = ""
    ):
        self.kube, self.helm, self.name, self.namespace = kube, helm, name, namespace
        self.case = case  # the golden value set it installs, if any

    def run(self, *args: str) -> str:
        """``helm ARGS -n NAMESPACE --kubeconfig ...`` (helm's own homes isolated by ``helm.py``)."""
        result = self.helm.run(
            *args, "--namespace", self.namespace, "--kubeconfig", str(self.kube.kubeconfig)
        )
        assert result.returncode == 0, f"helm {self.helm.version} {' '.join(args)} failed:\n{result.stderr}"
        return result.stdout

    def install(self, *values: str) -> None:
        self.run("install", self.name, str(helmtools.CHART), NO_WAIT[self.helm.major], *values)

    def upgrade(self, *values: str) -> None:
        self.run("upgrade", self.name, str(helmtools.CHART), NO_WAIT[self.helm.major], *values)

    def rollback(self, revision: int) -> None:
        self.run("rollback", self.name, str(revision), NO_WAIT[self.helm.major])

    def uninstall(self) -> None:
        self.run("uninstall", self.name)

    def manifest(self) -> list[dict[str, Any]]:
        """The objects of the release's current revision, as helm sent them."""
        return documents(self.run("get", "manifest", self.name))

    def hooks(self) -> list[dict[str, Any]]:
        """The release's hooks (the `helm test` Pod), which helm creates only when they run."""
        return documents(self.run("get", "hooks", self.name))

    def status(self) -> tuple[int, str]:
        body = json.loads(self.run("status", self.name, "-o", "json"))
        return body["version"], body["info"]["status"]

    def exists(self) -> bool:
        """Whether helm knows the release (in any state)."""
        args = ("status", self.name, "--namespace", self.namespace, "--kubeconfig", str(self.kube.kubeconfig))
        return self.helm.run(*args).returncode == 0


# --- objects on the server -----------------------------------------------------------------------------

Key = tuple[str, str, str | None]  # (kind, name, namespace or None when cluster-scoped)


def _resource(doc: dict[str, Any]) -> str:
    """``Kind[.version.group]/name``, as kubectl takes it (unambiguous even with CRDs of the same kind)."""
    group, _, version = doc["apiVersion"].rpartition("/")
    kind = doc["kind"] if not group else f"{doc['kind']}.{version}.{group}"
    return f"{kind}/{doc['metadata']['name']}"


def _key(obj: dict[str, Any]) -> Key:
    return obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace")


def live_objects(
    kube: controlplane.ControlPlane, docs: list[dict[str, Any]], namespace: str
) -> dict[Key, dict[str, Any]]:
    """The server's copies of ``docs`` that exist (one ``kubectl get`` per namespace), by key; a rendered
    object without a namespace is looked up in the release's (cluster-scoped ones ignore it)."""
    by_namespace: dict[str, list[str]] = collections.defaultdict(list)
    for doc in docs:
        by_namespace[doc["metadata"].get("namespace", namespace)].append(_resource(doc))
    found: dict[Key, dict[str, Any]] = {}
    for ns, resources in by_namespace.items():
        out = kube.kubectl("get", "-n", ns, "--ignore-not-found", "-o", "json", *resources).stdout
        if not out.strip():
            continue
        body = json.loads(out)
        for item in body["items"] if body.get("kind") == "List" else [body]:
            found[_key(item)] = item
    return found


def _expected_key(doc: dict[str, Any], live: dict[Key, dict[str, Any]], namespace: str) -> Key:
    kind, name = doc["kind"], doc["metadata"]["name"]
    namespaced = (kind, name, doc["metadata"].get("namespace", namespace))
    return namespaced if namespaced in live else (kind, name, None)


def dropped_fields(rendered: object, stored: object, path: str = "") -> list[str]:
    """Where ``stored`` (the server's object) lacks or differs from what ``rendered`` (the chart's) says.
    The server may add fields (defaults, status, metadata), never drop or change the chart's: a field it
    prunes or a value it rewrites (a quantity such as ``0.5`` stored as ``500m``) is reported, so that
    what ``helm get manifest`` shows is what runs."""
    if isinstance(rendered, dict):
        if not isinstance(stored, dict):
            return [f"{path}: {stored!r} instead of an object"]
        return [
            problem
            for key, value in rendered.items()
            for problem in (
                dropped_fields(value, stored[key], f"{path}.{key}")
                if key in stored
                else [f"{path}.{key}: dropped"]
            )
        ]
    if isinstance(rendered, list):
        if not isinstance(stored, list) or len(stored) != len(rendered):
            return [f"{path}: {stored!r} instead of {rendered!r}"]
        return [
            problem
            for i, (r, s) in enumerate(zip(rendered, stored, strict=True))
            for problem in dropped_fields(r, s, f"{path}[{i}]")
        ]
    return [] if rendered == stored else [f"{path}: {stored!r} instead of {rendered!r}"]


def test_dropped_fields_reports_what_the_server_did_not_keep() -> None:
    """Offline guard for the check above: additions pass; drops and changes are reported with a path."""
    rendered = {"spec": {"ports": [{"port": 80, "name": "http"}], "cpu": "0.5", "keep": {}}}
    stored = {"spec": {"ports": [{"port": 80, "name": "http", "protocol": "TCP"}], "cpu": "500m", "keep": {}}}
    assert dropped_fields(rendered, stored | {"status": {}}) == [".spec.cpu: '500m' instead of '0.5'"]
    assert dropped_fields(rendered, {"spec": {"ports": [], "cpu": "0.5"}}) == [
        ".spec.ports: [] instead of [{'port': 80, 'name': 'http'}]",
        ".spec.keep: dropped",
    ]
    assert dropped_fields({"a": [{"b": 1}]}, {"a": [{"b": "1"}]}) == [".a[0].b: '1' instead of 1"]


def check_on_server(release: Release, docs: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Every object of ``docs`` exists on the server, owned by the release, with the fields rendered."""
    live = live_objects(release.kube, docs, release.namespace)
    problems = []
    for doc in docs:
        key = _expected_key(doc, live, release.namespace)
        stored = live.get(key)
        if stored is None:
            problems.append(f"{_resource(doc)}: not on the server")
            continue
        annotations = stored["metadata"].get("annotations", {})
        if annotations.get("meta.helm.sh/release-name") != release.name:
            problems.append(f"{_resource(doc)}: not owned by release {release.name}: {annotations}")
        problems += [f"{_resource(doc)}{p}" for p in dropped_fields(doc, stored)]
    assert problems == [], "\n".join(problems)
    return live


def _one(live: dict[Key, dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    [found] = [obj for (k, name, _), obj in live.items() if k == kind and name.endswith(suffix)]
    return found


def _log_level(deployment: dict[str, Any]) -> str:
    [container] = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "dataplane"
    ]
    levels: list[str] = [
        arg.removeprefix("--log-level=") for arg in container["args"] if arg.startswith("--log-level=")
    ]
    [level] = levels
    return level


def _push_token(live: dict[Key, dict[str, Any]]) -> str | None:
    secrets = [obj for (kind, _, _), obj in live.items() if kind == "Secret"]
    return json.dumps(secrets[0]["data"], sort_keys=True) if secrets else None


def _crd_established(kube: controlplane.ControlPlane) -> bool:
    body = json.loads(kube.kubectl("get", f"crd/{crd.CRD_NAME}", "-o", "json").stdout)
    return {c["type"]: c["status"] for c in body["status"]["conditions"]}.get("Established") == "True"


def check_hooks_accepted(release: Release, hooks: list[dict[str, Any]]) -> None:
    """The API server accepts the hooks (the test Pod: admission included, so its ServiceAccount must
    exist) and stores every field rendered; they are deleted again (no kubelet would ever run them)."""
    for hook in hooks:
        account = hook["spec"].get("serviceAccountName")
        if (
            account
            and release.kube.kubectl(
                "get", "serviceaccount", account, "-n", release.namespace, check=False
            ).returncode
        ):
            # What the controller-manager does for "default" in a real cluster (the minimal value set
            # runs the data plane, and so its test, as "default").
            release.kube.kubectl("create", "serviceaccount", account, "-n", release.namespace)
        text = yaml.safe_dump(hook)
        release.kube.kubectl("create", "-n", release.namespace, "-f", "-", stdin=text)
        try:
            [stored] = live_objects(release.kube, [hook], release.namespace).values()
            assert dropped_fields(hook, stored) == [], f"{_resource(hook)}: {dropped_fields(hook, stored)}"
        finally:
            release.kube.kubectl("delete", "-n", release.namespace, "-f", "-", "--wait=false", stdin=text)


# --- the lifecycle, per helm major and value set -------------------------------------------------------


@pytest.fixture
def release(request: pytest.FixtureRequest, kube: controlplane.ControlPlane) -> Iterator[Release]:
    """A release named after the case in a namespace of its own (created here); uninstalled at the end
    if the test left it installed, so that a failure does not hold the next case's nodePort."""
    major, case = request.param
    helm = _helm(major)
    name = f"kg{major}-{case}"
    namespace = f"chart-h{major}-{case}"
    kube.kubectl("create", "namespace", namespace)
    made = Release(kube, helm, name, namespace, case)
    yield made
    if made.exists():
        made.uninstall()


LIFECYCLE = [(major, case) for major in MAJORS for case in CASES]


@pytest.mark.parametrize("release", LIFECYCLE, ids=[f"helm{m}-{c}" for m, c in LIFECYCLE], indirect=True)
def test_install_upgrade_rollback_uninstall(release: Release) -> None:
    case = release.case
    values_file = ["-f", str(GOLDEN / f"{case}.values.yaml")]
    values = values_of(case)

    # Install: the server accepts every object; the release renders what the golden test renders (the
    # test hook aside: helm keeps it apart, and creates it on `helm test` only).
    release.install(*values_file)
    assert release.status() == (1, "deployed")
    docs = release.manifest()
    golden = documents((GOLDEN / f"{case}.out.yaml").read_text())
    golden_kinds = collections.Counter(
        d["kind"] for d in golden if HOOK not in d["metadata"].get("annotations", {})
    )
    assert collections.Counter(d["kind"] for d in docs) == golden_kinds
    assert "CustomResourceDefinition" not in golden_kinds  # it comes from crds/, outside the release
    live = check_on_server(release, docs)
    hooks = release.hooks()
    assert [(d["kind"], d["metadata"]["annotations"][HOOK]) for d in hooks] == [
        (d["kind"], "test") for d in golden if HOOK in d["metadata"].get("annotations", {})
    ]
    check_hooks_accepted(release, hooks)
    assert _crd_established(release.kube)
    token = _push_token(live)  # rendered with pushToken.value only (else the operator makes it)
    assert (token is not None) == bool(values.get("pushToken", {}).get("value"))

    # Upgrade with another log level: the Deployment on the server changes; a rendered token stays.
    dataplane = _one(live, "Deployment", "-dataplane")
    before = _log_level(dataplane)
    assert before == values.get("dataplane", {}).get("logLevel", "info")
    after = "debug" if before != "debug" else "error"
    release.upgrade(*values_file, "--set", f"dataplane.logLevel={after}")
    assert release.status() == (2, "deployed")
    live = check_on_server(release, release.manifest())
    upgraded = _one(live, "Deployment", "-dataplane")
    assert _log_level(upgraded) == after
    assert upgraded["metadata"]["generation"] == dataplane["metadata"]["generation"] + 1
    assert _push_token(live) == token, "the push token changed on upgrade"

    # Rollback to revision 1: the first log level is back (as revision 3).
    release.rollback(1)
    assert release.status() == (3, "deployed")
    live = check_on_server(release, release.manifest())
    assert _log_level(_one(live, "Deployment", "-dataplane")) == before
    assert _push_token(live) == token

    # Uninstall: every object of the release is gone; the CRD stays.
    release.uninstall()
    assert not release.exists()
    assert live_objects(release.kube, docs, release.namespace) == {}
    assert _crd_established(release.kube), "helm uninstall must leave the CRD (and users' routes)"


# --- two releases in one cluster -----------------------------------------------------------------------


def test_two_releases_of_the_same_name_coexist(kube: controlplane.ControlPlane) -> None:
    """The same release name in two namespaces, two gateway classes, both watching team-a (issue 13): no
    object collides, and uninstalling one release leaves the other's objects in place."""
    helm = _helm(max(helmtools.available(), default=4))
    first, second = (Release(kube, helm, "kubegate", f"chart-twin-{i}") for i in (1, 2))
    classes = {first: "kubegate", second: "internal"}
    try:
        for release in (first, second):
            kube.kubectl("create", "namespace", release.namespace)
            release.install(
                "--set", f"gatewayClass={classes[release]}", "--set", "operator.watchNamespaces={team-a}"
            )
        docs = {release.namespace: release.manifest() for release in (first, second)}
        cluster_roles = {
            d["metadata"]["name"] for ds in docs.values() for d in ds if d["kind"] == "ClusterRole"
        }
        assert len(cluster_roles) == 2, cluster_roles
        in_team_a = {
            d["metadata"]["name"]
            for ds in docs.values()
            for d in ds
            if d["kind"] == "RoleBinding" and d["metadata"]["namespace"] == "team-a"
        }
        assert in_team_a == cluster_roles  # each release's binding there, named like its ClusterRole
        for release in (first, second):
            check_on_server(release, docs[release.namespace])
        first.uninstall()
        assert live_objects(kube, docs[first.namespace], first.namespace) == {}
        check_on_server(second, docs[second.namespace])
    finally:
        for release in (first, second):
            if release.exists():
                release.uninstall()


# --- crds.install: the CRD as a release object ---------------------------------------------------------


def _crd_metadata(kube: controlplane.ControlPlane) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(kube.kubectl("get", f"crd/{crd.CRD_NAME}", "-o", "json").stdout)
    return body["metadata"]


def _restore_crd_metadata(kube: controlplane.ControlPlane, before: dict[str, Any]) -> None:
    """Remove the labels and annotations that adoption and the release added to the shared CRD."""
    now = _crd_metadata(kube)
    for what, verb in (("labels", "label"), ("annotations", "annotate")):
        added = sorted(set(now.get(what, {})) - set(before.get(what, {})))
        if added:
            kube.kubectl(verb, f"crd/{crd.CRD_NAME}", *(f"{key}-" for key in added))
    assert {k: _crd_metadata(kube).get(k, {}) for k in ("labels", "annotations")} == {
        k: before.get(k, {}) for k in ("labels", "annotations")
    }


@pytest.mark.parametrize("major", MAJORS, ids=[f"helm{m}" for m in MAJORS])
def test_crds_install_adopts_upgrades_and_keeps_the_crd(kube: controlplane.ControlPlane, major: int) -> None:
    """Over the CRD that crds/ installed (no release owns it), crds.install stops with the commands that
    adopt it; after them the release applies the CRD on install (--skip-crds) and upgrade, and uninstall
    keeps it, Established, with the users' routes."""
    helm = _helm(major)
    release = Release(kube, helm, "kubegate", f"chart-h{major}-crds")
    kube.kubectl("create", "namespace", release.namespace)
    values = ("--skip-crds", "--set", "crds.install=true")
    if kube.kubectl("get", f"crd/{crd.CRD_NAME}", check=False).returncode != 0:  # as `helm install` does
        kube.kubectl("create", "-f", str(helmtools.CHART / "crds"))
        kube.kubectl("wait", "--for=condition=Established", f"crd/{crd.CRD_NAME}", "--timeout=30s")
    before = _crd_metadata(kube)
    assert "meta.helm.sh/release-name" not in before.get("annotations", {})
    try:
        # Not owned: helm's generic ownership error would come later; the chart names the way out.
        args = ("install", release.name, str(helmtools.CHART), NO_WAIT[major], *values)
        refused = helm.run(*args, "--namespace", release.namespace, "--kubeconfig", str(kube.kubeconfig))
        assert refused.returncode != 0
        message = " ".join(refused.stderr.split())
        for words in (
            "no Helm release owns it",
            "install with --skip-crds",
            f"kubectl annotate crd {crd.CRD_NAME} meta.helm.sh/release-name={release.name} "
            f"meta.helm.sh/release-namespace={release.namespace}",
            f"kubectl label crd {crd.CRD_NAME} app.kubernetes.io/managed-by=Helm",
        ):
            assert words in message, message
        assert not release.exists()

        # Adopted with exactly those commands: install and upgrade apply it as one of the release's objects.
        owner = (
            f"meta.helm.sh/release-name={release.name}",
            f"meta.helm.sh/release-namespace={release.namespace}",
        )
        kube.kubectl("annotate", f"crd/{crd.CRD_NAME}", *owner)
        kube.kubectl("label", f"crd/{crd.CRD_NAME}", "app.kubernetes.io/managed-by=Helm")
        release.install(*values)
        docs = release.manifest()
        [rendered] = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
        check_on_server(release, docs)
        assert _crd_metadata(kube)["annotations"]["helm.sh/resource-policy"] == "keep"
        release.upgrade(*values, "--set", "commonLabels.upgraded=yes")
        assert _crd_metadata(kube)["labels"]["upgraded"] == "yes"
        assert _crd_established(kube)

        # Another release may not take it over.
        other = Release(kube, helm, "other", release.namespace)
        args = ("install", other.name, str(helmtools.CHART), NO_WAIT[major], *values)
        taken = helm.run(*args, "--namespace", other.namespace, "--kubeconfig", str(kube.kubeconfig))
        assert taken.returncode != 0
        assert f"belongs to release {release.name} in namespace {release.namespace}" in taken.stderr

        # Uninstall keeps it (and so every route).
        release.uninstall()
        assert _crd_established(kube)
        assert live_objects(kube, [rendered], release.namespace) != {}
    finally:
        if release.exists():
            release.uninstall()
        _restore_crd_metadata(kube, before)


# --- the push token: made by the operator, and an upgrade from a chart that rendered it -----------------

#: A commit whose chart rendered the push token itself (randAlphaNum, kept with lookup).
RENDERED_TOKEN_COMMIT = "e1e03eb58e2d9343cd6e5f240a149fe6a7ad1d78"


def _old_chart(tmp: Path) -> Path:
    """The chart of :data:`RENDERED_TOKEN_COMMIT`, from git (skips without git history)."""
    archive = subprocess.run(
        ["git", "-C", str(helmtools.ROOT), "archive", RENDERED_TOKEN_COMMIT, "charts/kubegate"],
        capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    if archive.returncode != 0:
        pytest.skip(f"no git history with {RENDERED_TOKEN_COMMIT[:12]}: {archive.stderr.decode()[:200]}")
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True, timeout=60)
    chart = tmp / "charts" / "kubegate"
    assert "randAlphaNum" in (chart / "templates" / "push-token-secret.yaml").read_text()
    return chart


def _run_operator(release: Release, tmp: Path) -> Operator:
    """The release's operator as a local process, with the arguments of its Deployment and a token minted
    for its ServiceAccount (no kubelet here: its Pods never run). Its push-token file is never written
    (the optional volume the kubelet has not filled)."""
    (deployment,) = [
        d
        for d in release.manifest()
        if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")
    ]
    pod = deployment["spec"]["template"]["spec"]
    token = release.kube.kubectl(
        "create", "token", pod["serviceAccountName"], "-n", release.namespace, "--duration=1h"
    ).stdout.strip()
    args = [sys.executable, "-m", "kubegate_operator"]
    for arg in pod["containers"][0]["args"]:
        if arg.startswith("--push-token-file="):
            arg = f"--push-token-file={tmp / 'not-mounted-yet'}"
        elif arg.startswith("--metrics-port="):
            continue
        args.append(arg)
    kubeconfig = tmp / "kubeconfig"
    ca = base64.b64encode(release.kube.ca_file.read_bytes()).decode()
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1", "kind": "Config", "current-context": "c",
                "clusters": [
                    {"name": "c", "cluster": {"server": release.kube.url, "certificate-authority-data": ca}}
                ],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBEGATE_", "KUBERNETES_"))}
    env = {**env, "KUBECONFIG": str(kubeconfig), "NO_PROXY": "*"}
    return Operator("operator", [*args, "--identity", "local"], env, tmp / "operator.log")


def _secret(release: Release, name: str) -> dict[str, Any] | None:
    result = release.kube.kubectl("get", "secret", name, "-n", release.namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


@pytest.mark.parametrize("keep", [False, True], ids=["deleted-by-helm", "kept-by-annotation"])
def test_upgrade_from_a_chart_rendered_token(
    kube: controlplane.ControlPlane, tmp_path: Path, keep: bool
) -> None:
    """``helm upgrade`` from a chart that rendered the token: Helm deletes the Secret it no longer renders,
    and the operator (with the chart's RBAC) creates a new one with a new token; annotated
    ``helm.sh/resource-policy=keep`` first, the Secret is left by Helm and the operator uses it as it is."""
    helm = _helm(max(MAJORS))
    name = "kgtok" + ("keep" if keep else "del")
    release = Release(kube, helm, name, f"chart-token-{'keep' if keep else 'del'}")
    kube.kubectl("create", "namespace", release.namespace)
    secret_name = f"{name}-kubegate-push-token"
    release.run("install", name, str(_old_chart(tmp_path)), NO_WAIT[helm.major])
    old = _secret(release, secret_name)
    assert old is not None
    if keep:
        kube.kubectl(
            "annotate", "secret", secret_name, "-n", release.namespace, "helm.sh/resource-policy=keep"
        )
    release.upgrade()
    assert [d for d in release.manifest() if d["kind"] == "Secret"] == []
    assert (_secret(release, secret_name) is not None) == keep
    operator = _run_operator(release, tmp_path)
    try:
        made = wait_for(lambda: _secret(release, secret_name), timeout=30, interval=0.1)
        logged = wait_for(
            lambda: "push token Secret" in operator.log_path.read_text() and operator.log_path.read_text(),
            timeout=30, interval=0.1,
        )  # fmt: skip
    finally:
        operator.stop(signal.SIGTERM)
    if keep:
        assert made["data"] == old["data"] and "exists: using its token" in logged
    else:
        assert made["data"]["token"] != old["data"]["token"] and "created" in logged
        assert made["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubegate"
        assert len(base64.b64decode(made["data"]["token"])) == 43
    release.uninstall()
    assert _secret(release, secret_name) is not None, "helm uninstall deletes no Secret it did not make"
