"""The control-plane fixture itself (``tests/controlplane.py``).

Aspects: start-up is bounded and a failure carries the servers' log tails (a server that exits at once,
an API server not ready by the deadline); the admin kubeconfig verifies the serving certificate; the
service-account signer mints tokens (``kubectl create token``) that the API server authenticates, and
RBAC, not the admin's rights, decides what such a token may do.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests import controlplane


@pytest.mark.usefixtures("control_plane")  # for its skip (or failure) when the tools are missing
def test_a_server_that_exits_fails_the_start_at_once_with_its_log(tmp_path: Path) -> None:
    plane = controlplane.ControlPlane(workdir=tmp_path, apiserver_args=["--no-such-flag"])
    started = time.monotonic()
    with pytest.raises(controlplane.ControlPlaneError) as raised:
        plane.start()
    assert time.monotonic() - started < 30
    message = str(raised.value)
    assert "kube-apiserver exited with" in message
    assert "unknown flag: --no-such-flag" in message  # from the log tail
    assert not plane.running()


@pytest.mark.usefixtures("control_plane")
def test_an_api_server_not_ready_by_the_deadline_fails_the_start(tmp_path: Path) -> None:
    plane = controlplane.ControlPlane(workdir=tmp_path, startup_timeout=1.0)  # it needs several seconds
    started = time.monotonic()
    with pytest.raises(controlplane.ControlPlaneError, match=r"not ready within 1 s") as raised:
        plane.start()
    assert time.monotonic() - started < 30
    assert "--- kube-apiserver log" in str(raised.value) and "--- etcd log" in str(raised.value)
    assert not plane.running(), "a failed start leaves no server running"


def test_the_admin_kubeconfig_verifies_the_serving_certificate(
    control_plane: controlplane.ControlPlane,
) -> None:
    assert "certificate-authority-data:" in control_plane.kubeconfig.read_text(encoding="utf-8")
    assert "insecure-skip-tls-verify" not in control_plane.kubeconfig.read_text(encoding="utf-8")
    whoami = control_plane.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert whoami.stdout == controlplane.ADMIN_USER


def test_service_account_tokens_are_minted_and_rbac_decides(control_plane: controlplane.ControlPlane) -> None:
    kubectl = control_plane.kubectl
    kubectl("create", "namespace", "rbac-check")
    kubectl("create", "serviceaccount", "reader", "-n", "rbac-check")
    token = kubectl("create", "token", "reader", "-n", "rbac-check", "--duration=10m").stdout.strip()
    assert token.count(".") == 2, "not a JWT"
    as_reader = ("--token", token, "-n", "rbac-check")

    whoami = kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", *as_reader)
    assert whoami.stdout == "system:serviceaccount:rbac-check:reader"
    denied = kubectl("get", "configmaps", *as_reader, check=False)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr, denied.stderr

    kubectl("create", "role", "read-configmaps", "--verb=list", "--resource=configmaps", "-n", "rbac-check")
    kubectl(
        "create", "rolebinding", "reader", "--role=read-configmaps",
        "--serviceaccount=rbac-check:reader", "-n", "rbac-check",
    )  # fmt: skip
    assert kubectl("get", "configmaps", *as_reader).returncode == 0
    still_denied = kubectl("get", "secrets", *as_reader, check=False)
    assert still_denied.returncode != 0 and "Forbidden" in still_denied.stderr
