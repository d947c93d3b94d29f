"""A real Kubernetes control plane as two local processes: etcd and kube-apiserver.

The binaries come from ``bash hack/tools.sh`` (built from source at pinned versions into ``.tools/bin``);
there is no kubelet, scheduler or controller-manager, so Pods stay Pending, namespaces are never finalised
(they stay Terminating) and nothing is garbage-collected, but storage, discovery, CRDs and their
validation (OpenAPI and CEL), admission, RBAC, the status subresource, server-side apply, watches and
Leases are the real thing.

:class:`ControlPlane` starts etcd (``--unsafe-no-fsync``: a test server loses nothing worth keeping) and
kube-apiserver on free loopback ports with a data directory of its own, with:

- RBAC authorisation (``--authorization-mode=RBAC``) and an admin in ``system:masters`` whose bearer
  token comes from a token file (``--token-auth-file``);
- a service-account key pair generated here, so that ServiceAccount tokens can be minted
  (``kubectl create token``) and verified;
- a self-signed serving certificate written by the API server into ``--cert-dir``, whose issuing CA the
  kubeconfig trusts;
- a kubeconfig for the admin (:attr:`ControlPlane.kubeconfig`);
- an audit log of every request made by a ServiceAccount (:meth:`ControlPlane.audit_events`: one JSON
  line per request, with its verb, resource and answer code), so that a test can show what a component
  running with a minted token asked for and what RBAC refused it. Nobody else's requests are logged.

Start-up is bounded: :meth:`ControlPlane.start` waits for ``/readyz`` until a deadline and otherwise
raises :class:`ControlPlaneError` with the tail of each server's log; a server that exits early fails at
once. ``tests/kube/conftest.py`` runs one per test session. By hand (to try the operator against it)::

    python -m tests.controlplane            # prints `export KUBECONFIG=...`; Ctrl-C stops both servers

The servers die with the process that started them, even when it is killed (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import dataclasses
import datetime
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parents[1]
TOOLS_BIN = ROOT / ".tools" / "bin"
BUILD_COMMAND = "bash hack/tools.sh"
CONTROL_PLANE_TOOLS = ("etcd", "kube-apiserver", "kubectl")

ADMIN_USER = "kubegate-test-admin"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.96.0.0/16"
# Metadata (who, what, answer code) of the requests of ServiceAccounts only: one event per request (a watch
# has two, when it starts and when it ends).
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""


class ControlPlaneError(RuntimeError):
    """The control plane did not start (or stopped); the message carries the servers' log tails."""


def tool(name: str) -> Path | None:
    """The binary ``name``: ``.tools/bin/`` first (the pinned build), then ``$PATH``."""
    built = TOOLS_BIN / name
    if built.is_file() and os.access(built, os.X_OK):
        return built
    found = shutil.which(name)
    return Path(found) if found else None


def missing_tools() -> list[str]:
    """Which of etcd, kube-apiserver and kubectl cannot be found."""
    return [name for name in CONTROL_PLANE_TOOLS if tool(name) is None]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _write_service_account_keys(directory: Path) -> tuple[Path, Path]:
    """An RSA key pair for signing (private) and verifying (public) ServiceAccount tokens."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = directory / "sa.key"
    public = directory / "sa.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    private.chmod(0o600)
    return private, public


_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.DOTALL)


def _die_with_parent() -> None:
    """In the child, before exec: be killed when the process that started it dies, however it dies
    (``PR_SET_PDEATHSIG``), so that a killed test run leaves no server behind."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclasses.dataclass
class _Server:
    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    _log_file: TextIO | None = None

    def start(self) -> None:
        self._log_file = self.log.open("a", encoding="utf-8")
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C meant for pytest does not kill it before teardown
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


@dataclasses.dataclass
class ControlPlane:
    """etcd + kube-apiserver under ``workdir``; :meth:`start`, then :meth:`kubectl`; :meth:`stop`."""

    workdir: Path
    startup_timeout: float = 90.0
    etcd_port: int = dataclasses.field(default_factory=free_port)
    etcd_peer_port: int = dataclasses.field(default_factory=free_port)
    port: int = dataclasses.field(default_factory=free_port)
    admin_token: str = dataclasses.field(default_factory=lambda: secrets.token_urlsafe(32))
    apiserver_args: Sequence[str] = ()  # extra kube-apiserver flags (after ours)
    _servers: list[_Server] = dataclasses.field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        """The CA that issued the API server's serving certificate."""
        return self.workdir / "serving-ca.crt"

    def log(self, name: str) -> Path:
        """The log file of ``etcd`` or ``kube-apiserver``."""
        return self.workdir / f"{name}.log"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: the requests of ServiceAccounts (see :data:`AUDIT_POLICY`)."""
        return self.workdir / "audit.log"

    def audit_events(self, user: str | None = None) -> list[dict[str, Any]]:
        """The audit events written so far (each a finished request, or a watch that started or ended), of
        ``user`` (``system:serviceaccount:NS:NAME``) or of every ServiceAccount. The log backend blocks:
        each event is written as its request ends (or its watch starts), not in batches; a line still
        being written is left out."""
        try:
            text = self.audit_log.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        complete = text[: text.rfind("\n") + 1]
        events = [json.loads(line) for line in complete.splitlines() if line.strip()]
        return [e for e in events if user is None or e.get("user", {}).get("username") == user]

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {s.name} log ({s.log}), last lines:\n{_tail(s.log, lines)}" for s in self._servers
        )

    # --- start and stop ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start etcd, then kube-apiserver; return once ``/readyz`` answers ok (or raise, never hang)."""
        missing = missing_tools()
        if missing:
            raise ControlPlaneError(f"{', '.join(missing)} not found: run `{BUILD_COMMAND}`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.startup_timeout
        try:
            self._start_etcd()
            self._wait_etcd(deadline)
            self._start_apiserver()
            self._wait_ready(deadline)
            self._write_kubeconfig()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both servers (kube-apiserver first); safe to call twice."""
        for server in reversed(self._servers):
            server.stop()

    def running(self) -> bool:
        """Whether every server started is still running."""
        return bool(self._servers) and all(server.exited() is None for server in self._servers)

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver (SIGTERM), leaving etcd and its data as they are: an API server outage."""
        self._apiserver().stop()

    def start_apiserver(self) -> None:
        """Start the stopped kube-apiserver again with the same flags: the same port, etcd, keys, token file
        and serving certificate (``--cert-dir`` keeps it), so that clients and minted tokens stay valid;
        return once ``/readyz`` answers ok (or raise with the log tails, never hang)."""
        server = self._apiserver()
        if server.exited() is None:
            raise ControlPlaneError("kube-apiserver is running: stop_apiserver() first")
        server.start()  # appends to the same log
        try:
            self._wait_ready(time.monotonic() + self.startup_timeout)
        except BaseException:
            server.stop()
            raise

    def _apiserver(self) -> _Server:
        found = [server for server in self._servers if server.name == "kube-apiserver"]
        if not found:
            raise ControlPlaneError("kube-apiserver was never started")
        return found[-1]

    @property
    def etcd_url(self) -> str:
        """etcd's client URL (plain HTTP on loopback; its JSON gateway answers ``POST /v3/...``)."""
        return f"http://127.0.0.1:{self.etcd_port}"

    def _start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        client = f"http://127.0.0.1:{self.etcd_port}"
        server = _Server(
            name="etcd",
            argv=[
                str(tool("etcd")),
                "--name=kubegate-test",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=kubegate-test={peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",  # a test server: speed over durability
                "--log-level=warn",
            ],
            log=self.log("etcd"),
        )
        self._servers.append(server)
        server.start()

    def _wait_etcd(self, deadline: float) -> None:
        url = f"http://127.0.0.1:{self.etcd_port}/health"
        self._poll(deadline, "etcd", lambda: _get(url, context=None, headers={}) == (200, True))

    def _start_apiserver(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        sa_private, sa_public = _write_service_account_keys(pki)
        tokens = pki / "tokens.csv"
        tokens.write_text(
            f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n', encoding="utf-8"
        )
        tokens.chmod(0o600)
        audit_policy = pki / "audit-policy.yaml"
        audit_policy.write_text(AUDIT_POLICY, encoding="utf-8")
        server = _Server(
            name="kube-apiserver",
            argv=[
                str(tool("kube-apiserver")),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={pki / 'serving'}",
                "--authorization-mode=RBAC",
                f"--token-auth-file={tokens}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={sa_public}",
                f"--service-account-signing-key-file={sa_private}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-mode=blocking",
                "--profiling=false",
                "--v=1",
                *self.apiserver_args,
            ],
            log=self.log("kube-apiserver"),
        )
        self._servers.append(server)
        server.start()

    def _wait_ready(self, deadline: float) -> None:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the serving certificate does not exist yet; checked below
        url = f"{self.url}/readyz"
        self._poll(deadline, "kube-apiserver", lambda: _get(url, context=context, headers=headers)[1])
        # Now that the API server wrote its serving certificate, trust its issuer and check the chain.
        self.ca_file.write_bytes(self._serving_ca())
        verified = ssl.create_default_context(cafile=str(self.ca_file))
        status, _ = _get(url, context=verified, headers=headers)
        if status != 200:
            raise ControlPlaneError(f"kube-apiserver answered /readyz with {status} over verified TLS")

    def _serving_ca(self) -> bytes:
        """The last certificate of the self-signed chain that ``--cert-dir`` holds (its issuing CA)."""
        path = self.workdir / "pki" / "serving" / "apiserver.crt"
        blocks: list[bytes] = _PEM_BLOCK.findall(path.read_bytes()) if path.exists() else []
        if not blocks:
            raise ControlPlaneError(f"no serving certificate in {path}")
        return blocks[-1]

    def _poll(self, deadline: float, what: str, ready: Callable[[], bool]) -> None:
        while True:
            for server in self._servers:
                code = server.exited()
                if code is not None:
                    raise ControlPlaneError(
                        f"{server.name} exited with {code} while starting\n{self.log_tails()}"
                    )
            if ready():
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{what} not ready within {self.startup_timeout:.0f} s\n{self.log_tails()}"
                )
            time.sleep(0.2)

    def _write_kubeconfig(self) -> None:
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        self.kubeconfig.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: kubegate-test
  cluster:
    server: {self.url}
    certificate-authority-data: {ca}
users:
- name: {ADMIN_USER}
  user:
    token: {self.admin_token}
contexts:
- name: kubegate-test
  context: {{cluster: kubegate-test, user: {ADMIN_USER}, namespace: default}}
current-context: kubegate-test
""",
            encoding="utf-8",
        )
        self.kubeconfig.chmod(0o600)

    # --- using it -----------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment for a client of this control plane (kubectl's cache kept in the workdir)."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBECACHEDIR": str(self.workdir / "kubecache"),
        }

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as the admin; with ``check``, a non-zero exit raises with kubectl's stderr."""
        result = subprocess.run(
            [str(tool("kubectl")), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result


def _get(url: str, *, context: ssl.SSLContext | None, headers: dict[str, str]) -> tuple[int, bool]:
    """(HTTP status, whether the answer is ok) of a GET; (0, False) when nothing answers yet."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            body = response.read()
            status: int = response.status
    except urllib.error.HTTPError as error:
        return error.code, False
    except (OSError, ssl.SSLError):
        return 0, False
    ok = status == 200 and (body.strip() == b"ok" or b'"health":"true"' in body.replace(b" ", b""))
    return status, ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.controlplane",
        description="Run etcd and kube-apiserver (from .tools/bin) until interrupted.",
    )
    parser.add_argument("--dir", type=Path, help="data directory (default: a new temporary one)")
    parser.add_argument("--port", type=int, default=0, help="kube-apiserver port (default: a free one)")
    args = parser.parse_args(argv)
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="kubegate-controlplane-"))
    plane = ControlPlane(workdir=workdir)
    if args.port:
        plane.port = args.port
    started = datetime.datetime.now()
    try:
        plane.start()
    except ControlPlaneError as error:
        print(error, file=sys.stderr)
        return 1
    print(
        f"control plane ready in {(datetime.datetime.now() - started).total_seconds():.1f} s at {plane.url}\n"
        f"  export KUBECONFIG={plane.kubeconfig}\n"
        f"  logs: {plane.log('etcd')}, {plane.log('kube-apiserver')}\n"
        "Ctrl-C stops both servers.",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill PID` stops the servers too
    try:
        with contextlib.suppress(KeyboardInterrupt):
            while plane.running():
                time.sleep(1)
            print(f"a server exited:\n{plane.log_tails()}", file=sys.stderr)
    finally:
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
