#!/usr/bin/env python3
"""Reverse-proxy throughput and latency: kubegate's data plane next to nginx, haproxy and Python candidates.

Every proxy sits in front of the SAME upstream (nginx, one worker, a fixed 100-byte body) and is loaded by
``wrk --latency`` with the same settings. Measurements are interleaved (round 1: every proxy, round 2:
every proxy in a rotated order, ...) so that slow drifts of a shared machine hit all of them alike, and
each figure is also given as a ratio to nginx-as-a-reverse-proxy measured in the same round.

Pinning (2 cores): the proxy under test runs on core 1 (``taskset -c 1``); wrk and the upstream share
core 0. Only one proxy is loaded at a time; the others sit idle.

Needs: Debian packages ``wrk nginx-light haproxy`` (``taskset`` is in util-linux), and for the Python
candidates ``pip install -r bench/requirements.txt`` in the environment whose ``python`` runs this script
(kubegate itself must be installed there too: ``pip install -e .``).

    python bench/proxy_bench.py                 # 3 rounds x every proxy x 10 s (+2 s warm-up each)
    python bench/proxy_bench.py --quick         # 1 round x 3 s
    python bench/proxy_bench.py --proxies nginx,kubegate --rounds 5 --duration 20 --connections 128
    python bench/proxy_bench.py --https        # nginx and kubegate terminating TLS (see bench/README.md)

``--https``: one self-signed certificate (EC P-256, or ``--tls-key rsa-2048``) for ``localhost``, served by
nginx (``listen ... ssl``) and by ``kubegate serve --tls-port`` (a route with ``tls.certificateRefs`` to a
``kubernetes.io/tls`` Secret in its routes file); wrk on ``https://localhost:PORT/``. Loads: keep-alive
req/s, and handshakes/s with a new connection per request (``Connection: close``), resumed (wrk offers its
session ticket; the servers accept it) and full (both servers started without TLS 1.3 session tickets),
each against nginx in the same round. Which handshakes wrk really made is read off the wire first
(``benchlib.HandshakeSniffer``).

A proxy that fails to start, to return the expected body, or dies under load is reported as failed; the
run goes on with the others. Every process the script starts is stopped on exit, Ctrl-C or error (and
gets SIGKILL through PR_SET_PDEATHSIG if this script itself is killed).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import http.client
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib

BENCH_DIR = Path(__file__).resolve().parent
CANDIDATES_DIR = BENCH_DIR / "candidates"
BODY = b"kubegate-bench:" + b"x" * 85  # the upstream's fixed response body
assert len(BODY) == 100
REFERENCE = "nginx"
#: --https: the name clients use (SNI and Host): in the certificate's SAN and the kubegate route's hosts. wrk
#: sends its URL's host as SNI, so it must resolve to 127.0.0.1 (wrk connects to what it resolves to).
TLS_HOST = "localhost"
APT_HINT = "apt-get install -y wrk nginx-light haproxy   (taskset: util-linux)"
PIP_HINT = "pip install -r bench/requirements.txt   (with the python that runs this script)"


class BenchError(Exception):
    """A problem that stops the whole run (missing tool, broken upstream)."""


NOISE = 0.10  # a run during which other processes used more than this share of a core is marked noisy
LOAD_SATURATED = 0.90  # the load core is saturated above this (then others' use of it counts as noise)


class ProxyFailed(Exception):
    """A problem with one proxy: it is marked failed and the run goes on."""


# --------------------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------------------


def _child_setup() -> None:
    """In the child before exec: own process group, and die with this script (Linux PR_SET_PDEATHSIG)."""
    os.setsid()
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        tail = text.strip().splitlines()[-lines:]
        return "\n".join("      | " + line for line in tail) if tail else "      | (empty log)"


class ProcessManager:
    """Starts processes (optionally pinned with taskset) and guarantees they are all stopped."""

    def __init__(self, workdir: Path, pin: bool) -> None:
        self.workdir = workdir
        self.pin = pin
        self.procs: list[Proc] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpu: int | None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        cmd = list(argv)
        if self.pin and cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as fh:
            fh.write(f"$ {' '.join(cmd)}\n".encode())
            fh.flush()
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(cwd or self.workdir),
                preexec_fn=_child_setup,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 3.0) -> None:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(grace)
        else:  # the leader is gone; make sure nothing of its group is left
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_port(port: int, proc: Proc, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise ProxyFailed(
                f"{proc.name} exited with code {proc.popen.returncode} before listening:\n" + proc.log_tail()
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ProxyFailed(
        f"{proc.name} not listening on 127.0.0.1:{port} after {timeout:.0f}s:\n" + proc.log_tail()
    )


def client_tls_context() -> ssl.SSLContext:
    """For the self-signed benchmark certificate: no verification (the certificate is compared instead)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def http_request(
    port: int,
    path: str = "/",
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 3.0,
    https: bool = False,
) -> tuple[int, dict[str, str], bytes]:
    """One request to 127.0.0.1:``port``; ``https``: over TLS to ``TLS_HOST`` (SNI and Host)."""
    conn = (
        http.client.HTTPSConnection(TLS_HOST, port, timeout=timeout, context=client_tls_context())
        if https
        else http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def check_body(
    port: int, what: str, attempts: int = 2, headers: Sequence[str] = (), https: bool = False
) -> None:
    """The proxy must answer 200 with exactly the upstream's 100-byte body (twice: a fresh and a pooled
    upstream connection); ``headers`` are the variant's own ("Name: value", e.g. a credential)."""
    sent = dict(h.split(": ", 1) for h in headers)
    for i in range(attempts):
        try:
            status, _headers, body = http_request(port, f"/bench/check?i={i}", headers=sent, https=https)
        except (OSError, http.client.HTTPException) as exc:
            raise ProxyFailed(f"{what}: GET / failed: {exc!r}") from exc
        if status != 200 or body != BODY:
            raise ProxyFailed(
                f"{what}: GET / gave {status} with a {len(body)}-byte body {body[:80]!r}, "
                f"expected 200 and the {len(BODY)}-byte upstream body"
            )


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process, from /proc (None if unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


Ticks = dict[int, tuple[int, int, int, int]]


def core_ticks() -> Ticks:
    """Per core: (busy, tasks, steal, total) jiffies from /proc/stat (empty if unavailable).

    busy is everything but idle and iowait; tasks is user + nice + system, i.e. busy without interrupt
    and softirq time (loopback packet processing), which no process is charged for.
    """
    out: Ticks = {}
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/stat").read_text().splitlines():
            name, *vals = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                v = [int(x) for x in vals[:8]]
                total = sum(v)
                out[int(name[3:])] = (total - v[3] - v[4], v[0] + v[1] + v[2], v[7], total)
    return out


@dataclass
class CoreUse:
    busy: float  # fractions of the core over the interval
    tasks: float
    steal: float


def core_use(before: Ticks, after: Ticks, core: int | None) -> CoreUse | None:
    if core is None or core not in before or core not in after:
        return None
    d = [b - a for a, b in zip(before[core], after[core], strict=True)]
    if d[3] <= 0:
        return None
    return CoreUse(busy=d[0] / d[3], tasks=d[1] / d[3], steal=d[2] / d[3])


def tcp_passive_opens() -> int | None:
    """Connections accepted on this machine so far (``Tcp: PassiveOpens`` of /proc/net/snmp; None if
    unavailable): counts the connections wrk made, plus whatever other processes accepted meanwhile."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        names, values = (
            line.split()
            for line in Path("/proc/net/snmp").read_text().splitlines()
            if line.startswith("Tcp:")
        )
        return int(values[names.index("PassiveOpens")])
    return None


# --------------------------------------------------------------------------------------------------------
# the upstream and the proxies
# --------------------------------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBEGATE_", "BENCH_"))}
    env.update(extra)
    return env


NGINX_COMMON = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
{body}
}}
"""


def start_nginx(
    pm: ProcessManager, name: str, http_block: str, cpu: int | None, env: dict[str, str] | None = None
) -> Proc:
    d = pm.workdir / name
    d.mkdir(exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(NGINX_COMMON.format(dir=d, body=http_block))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return pm.start(
        name, [nginx, "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)], cpu=cpu, env=env
    )


@dataclass
class Upstream:
    proc: Proc
    port: int
    status_port: int  # stub_status on its own port: connections accepted and requests served

    def counters(self) -> tuple[int, int] | None:
        """(connections accepted, requests served) so far, not counting this query."""
        try:
            _status, _h, body = http_request(self.status_port, "/", timeout=2.0)
            accepts, _handled, requests = (int(x) for x in body.decode().splitlines()[2].split())
        except (OSError, http.client.HTTPException, ValueError, IndexError):
            return None
        return accepts, requests


def start_upstream(pm: ProcessManager, cpu: int | None) -> Upstream:
    port, status_port = free_ports(2)
    block = f"""\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{BODY.decode()}";
        }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        location / {{ stub_status; }}
    }}"""
    proc = start_nginx(pm, "upstream", block, cpu)
    try:
        wait_port(port, proc)
        status, _h, body = http_request(port, "/")
    except (ProxyFailed, OSError, http.client.HTTPException) as exc:
        raise BenchError(f"the upstream nginx did not come up: {exc}") from exc
    if status != 200 or body != BODY:
        raise BenchError(f"the upstream nginx returned {status} {body[:80]!r}, not the 100-byte body")
    upstream = Upstream(proc, port, status_port)
    if upstream.counters() is None:
        print("  note: the upstream's stub_status is unavailable; new upstream connections are not counted")
    return upstream


@dataclass
class Running:
    port: int
    procs: list[Proc]
    note: str = ""  # how it was set up, shown in the report
    headers: tuple[str, ...] = ()  # "Name: value" lines every request carries (credentials)
    https: bool = False  # port speaks TLS (--https): clients use https://TLS_HOST:port/

    @property
    def url(self) -> str:
        return f"https://{TLS_HOST}:{self.port}/" if self.https else f"http://127.0.0.1:{self.port}/"

    @property
    def main(self) -> Proc:
        return self.procs[0]


@dataclass
class TlsSetup:
    """--https: the one certificate both nginx and kubegate serve, and where it is."""

    key_type: str  # benchlib.KEY_TYPES
    cert_pem: str
    key_pem: str
    cert_file: Path
    key_file: Path
    no_tickets_conf: Path  # OPENSSL_CONF of the "full handshake" servers (benchlib.NO_TICKETS_CONF)

    @classmethod
    def create(cls, workdir: Path, key_type: str) -> TlsSetup:
        cert_pem, key_pem = benchlib.self_signed([TLS_HOST], key_type)
        d = workdir / "tls"
        d.mkdir(exist_ok=True)
        cert_file, key_file, conf = d / "cert.pem", d / "key.pem", d / "openssl-no-tickets.cnf"
        cert_file.write_text(cert_pem)
        key_file.write_text(key_pem)
        key_file.chmod(0o600)
        conf.write_text(benchlib.NO_TICKETS_CONF)
        return cls(key_type, cert_pem, key_pem, cert_file, key_file, conf)

    def env(self, tickets: bool) -> dict[str, str]:
        """A server's environment: OpenSSL's defaults, or (``tickets=False``) no TLS 1.3 session tickets."""
        return clean_env() if tickets else clean_env(OPENSSL_CONF=str(self.no_tickets_conf))


@dataclass
class Ctx:
    pm: ProcessManager
    upstream_port: int
    proxy_cpu: int | None
    args: argparse.Namespace
    tls: TlsSetup | None = None  # --https


def kubegate_tls_ciphers() -> str:
    """The TLS 1.2 suites kubegate serves (``kubegate.dataplane.tls.CIPHERS``), for nginx to serve too."""
    try:
        from kubegate.dataplane.tls import CIPHERS
    except ImportError:  # nginx alone, without kubegate installed: the same list
        return (
            "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
            "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
        )
    return str(CIPHERS)


def run_nginx_proxy(ctx: Ctx, *, https: bool = False, tickets: bool = True, name: str = "nginx") -> Running:
    """nginx as the reverse proxy; ``https``: its listener terminates TLS with ``ctx.tls``'s certificate
    (TLS 1.2 and 1.3, kubegate's TLS 1.2 suites, server preference as Python's ssl sets it; session
    tickets on, nginx's default, unless ``tickets=False``: then no TLS 1.3 tickets, through OpenSSL's
    configuration as for kubegate)."""
    (port,) = free_ports(1)
    listen = f"listen 127.0.0.1:{port} backlog=4096;"
    env = None
    if https:
        assert ctx.tls is not None
        listen = f"""listen 127.0.0.1:{port} ssl backlog=4096;
        server_name {TLS_HOST};
        ssl_certificate {ctx.tls.cert_file};
        ssl_certificate_key {ctx.tls.key_file};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {kubegate_tls_ciphers()};
        ssl_prefer_server_ciphers on;"""
        env = ctx.tls.env(tickets)
    block = f"""\
    upstream up {{
        server 127.0.0.1:{ctx.upstream_port};
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 75s;
    }}
    server {{
        {listen}
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    proc = start_nginx(ctx.pm, f"proxy-{name}", block, ctx.proxy_cpu, env=env)
    wait_port(port, proc)
    note = "1 worker, upstream keepalive 64"
    if https:
        note += ", TLS " + ("with session tickets" if tickets else "without session tickets")
    return Running(port, [proc], note, https=https)


def run_haproxy(ctx: Ctx) -> Running:
    exe = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if exe is None:
        raise ProxyFailed(f"haproxy not installed ({APT_HINT})")
    (port,) = free_ports(1)
    d = ctx.pm.workdir / "proxy-haproxy"
    d.mkdir(exist_ok=True)
    conf = d / "haproxy.cfg"
    conf.write_text(f"""\
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 75s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server up 127.0.0.1:{ctx.upstream_port}
""")
    proc = ctx.pm.start("proxy-haproxy", [exe, "-db", "-f", str(conf)], cpu=ctx.proxy_cpu)
    wait_port(port, proc)
    return Running(port, [proc], "1 thread, http-reuse always")


def _kubegate_available() -> None:
    if importlib.util.find_spec("kubegate") is None:
        raise ProxyFailed(
            f"kubegate is not importable by {sys.executable} (pip install -e . from the repo root)"
        )


def _wait_ready(admin_port: int, proc: Proc, timeout: float) -> tuple[bool, str]:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            return False, f"exited with code {proc.popen.returncode}"
        try:
            status, _h, body = http_request(admin_port, "/ready", timeout=1.0)
            if status == 200:
                return True, ""
            last = f"/ready {status} {body[:200].decode(errors='replace')}"
        except (OSError, http.client.HTTPException) as exc:
            last = repr(exc)
        time.sleep(0.1)
    return False, f"not ready after {timeout:.0f}s ({last})"


#: The policies of the `kubegate-policies` variant: configured, none triggered (issue 9's 0.9x target).
POLICY_SPEC = """\
  loadBalancer: {type: LeastRequest}
  circuitBreaker: {consecutiveFailures: 5}
  outlierDetection: {consecutiveFailures: 5}
  retry: {attempts: 2}
  bulkhead: {maxConcurrent: 1000}
"""


#: The `kubegate-cache` variant: a Memory cache whose entry answers every request after the first (issue
#: 11: a hit must be at least as fast as the proxied request).
CACHE_SPEC = """\
  cache: {ttl: 3600s, store: Memory}
"""


#: The `kubegate-ratelimit` variants: a limit so high that every request is admitted (issue 11: a Local
#: limit keeps 0.9x of the unlimited route; a Global one costs one Redis round trip, aim for 0.5x).
RATELIMIT_SPEC = """\
  rateLimit: {{requestsPerSecond: 1000000, burst: 1000000, scope: {scope}}}
"""


def run_kubegate_global_limit(ctx: Ctx) -> Running:
    """kubegate serve with a Global rate limit: a redis-server of its own (no persistence) on the load
    core, as issue 11 measures it ("one core with Redis on the other")."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise ProxyFailed("kubegate-ratelimit-global needs redis-server on PATH")
    port = free_ports(1)[0]
    redis = ctx.pm.start(
        "redis",
        [exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        cpu=ctx.args.load_cpu,
    )
    wait_port(port, redis)
    running = run_kubegate(
        ctx, spec=RATELIMIT_SPEC.format(scope="Global"), extra=("--redis-url", f"redis://127.0.0.1:{port}/0")
    )
    return dataclasses.replace(
        running, procs=[*running.procs, redis], note=running.note + ", Redis on the load core"
    )


def _no_baseline() -> str:
    raise ProxyFailed("kubegate-baseline needs BENCH_BASELINE_SRC=<root of another kubegate checkout>")


#: The `kubegate-apikey` variant: a route with an API key from a Secret of the routes file (issue 10's 0.9x).
APIKEY_SPEC = """\
  auth:
    apiKey: {header: X-API-Key, secretRef: {name: bench-keys}}
---
apiVersion: v1
kind: Secret
metadata: {name: bench-keys, namespace: default}
stringData: {bench: bench-api-key-0123456789}
"""


def _jwt_variant() -> tuple[str, str]:
    """The `kubegate-jwt` variant (issue 10's 0.8x): an RS256 key in a JWKS Secret, one token reused by
    every request (the verified-token cache's case). → (spec, token)."""
    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    document = json.dumps({"keys": [{**public, "kid": "bench", "alg": "RS256", "use": "sig"}]})
    now = int(time.time())
    claims = {"sub": "bench", "iss": "https://bench.test", "iat": now, "exp": now + 24 * 3600}
    token = pyjwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"})
    spec = f"""\
  auth:
    jwt: {{algorithms: [RS256], issuer: "https://bench.test", jwksSecretRef: {{name: bench-jwks, key: jwks}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: bench-jwks, namespace: default}}
stringData: {{jwks: '{document}'}}
"""
    return spec, token


def run_kubegate_jwt(ctx: Ctx) -> Running:
    spec, token = _jwt_variant()
    running = run_kubegate(ctx, spec=spec)
    return dataclasses.replace(running, headers=(f"Authorization: Bearer {token}",))


def _tls_spec(tls: TlsSetup) -> str:
    """The route's ``tls`` and its ``kubernetes.io/tls`` Secret (PEM as JSON strings: valid YAML)."""
    return f"""\
  tls:
    certificateRefs: [{{name: bench-tls}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: bench-tls, namespace: default}}
type: kubernetes.io/tls
stringData:
  tls.crt: {json.dumps(tls.cert_pem)}
  tls.key: {json.dumps(tls.key_pem)}
"""


def run_kubegate(
    ctx: Ctx,
    *,
    extra: tuple[str, ...] = (),
    spec: str = "",
    src: str = "",
    https: bool = False,
    tickets: bool = True,
) -> Running:
    """kubegate serve; ``src``: another checkout's root, whose ``dataplane/`` is run instead (a baseline);
    ``https``: also ``--tls-port``, the route gets ``match.hosts: [TLS_HOST]`` and ``ctx.tls``'s certificate
    (a Secret in the routes file), and the TLS port is the one measured; ``tickets=False``: no TLS 1.3
    session tickets (OpenSSL's configuration, as for nginx)."""
    _kubegate_available()
    env = clean_env(PYTHONPATH=str(Path(src) / "dataplane")) if src else clean_env()
    port, admin, tls_port = free_ports(3)
    hosts = ""
    if https:
        assert ctx.tls is not None
        env.update(ctx.tls.env(tickets))
        extra = (*extra, "--tls-port", str(tls_port))
        spec += _tls_spec(ctx.tls)
        hosts = f"    hosts: [{TLS_HOST}]\n"
    d = ctx.pm.workdir / "kubegate"
    d.mkdir(exist_ok=True)

    def base(port: int, admin: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "kubegate.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--admin-port",
            str(admin),
            "--log-level",
            "warning",
            "--drain-timeout",
            "1",
            *extra,
        ]

    mode = ctx.args.kubegate_mode if not spec else "routes"
    why_not_routes = ""
    if mode in ("auto", "routes"):
        routes = d / f"routes-{port}.yaml"  # one per variant: serve watches its file
        routes.write_text(f"""\
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata:
  name: bench
  namespace: default
spec:
  match:
{hosts}    path:
      type: Prefix
      value: /
  backends:
    - url: "http://127.0.0.1:{ctx.upstream_port}"
{spec}""")
        proc = ctx.pm.start(
            "proxy-kubegate-routes",
            [*base(port, admin), "--routes", str(routes)],
            cpu=ctx.proxy_cpu,
            env=env,
        )
        ok, why = _wait_ready(admin, proc, 20.0)
        if ok and https:
            wait_port(tls_port, proc)
            note = "--routes file, --tls-port, TLS " + ("with" if tickets else "without") + " session tickets"
            return Running(tls_port, [proc], note, https=True)
        if ok:
            wait_port(port, proc)
            return Running(port, [proc], "--routes file")
        why_not_routes = f"--routes did not work ({why}):\n{proc.log_tail(8)}"
        ctx.pm.stop(proc)
        if mode == "routes":
            raise ProxyFailed(f"kubegate {why_not_routes}")
        print(f"  note: kubegate {why_not_routes}\n  falling back to PUT /table", flush=True)
        port, admin = free_ports(2)
    token = secrets.token_hex(16)
    token_file = d / "push-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    proc = ctx.pm.start(
        "proxy-kubegate-push",
        [*base(port, admin), "--push-token-file", str(token_file)],
        cpu=ctx.proxy_cpu,
        env=env,
    )
    wait_port(admin, proc)
    table = {
        "apiVersion": "kubegate.dev/v1alpha1",
        "version": "bench",
        "routes": [
            {
                "id": "default/bench",
                "namespace": "default",
                "name": "bench",
                "match": {"path": {"type": "Prefix", "value": "/"}},
                "backends": [
                    {
                        "name": "url:up",
                        "weight": 1,
                        "endpoints": [{"host": "127.0.0.1", "port": ctx.upstream_port}],
                    }
                ],
            }
        ],
    }
    try:
        status, _h, body = http_request(
            admin,
            "/table",
            method="PUT",
            body=json.dumps(table).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
    except (OSError, http.client.HTTPException) as exc:
        raise ProxyFailed(f"kubegate: PUT /table failed: {exc!r}\n{proc.log_tail()}") from exc
    if status != 200:
        raise ProxyFailed(f"kubegate: PUT /table gave {status}: {body[:300].decode(errors='replace')}")
    ok, why = _wait_ready(admin, proc, 10.0)
    if not ok:
        raise ProxyFailed(f"kubegate after PUT /table: {why}\n{proc.log_tail()}")
    wait_port(port, proc)
    return Running(port, [proc], "PUT /table (push)" + (" — --routes failed" if why_not_routes else ""))


def uvicorn_candidate(module: str, needs: Sequence[str]) -> Callable[[Ctx], Running]:
    def run(ctx: Ctx) -> Running:
        missing = [
            m for m in ("uvicorn", "uvloop", "httptools", *needs) if importlib.util.find_spec(m) is None
        ]
        if missing:
            raise ProxyFailed(f"missing Python packages {', '.join(missing)}: {PIP_HINT}")
        if "httpx" in needs and importlib.util.find_spec("sniffio") is None:
            print(
                "  warning: sniffio is not installed: httpcore then retries `import sniffio` (a full "
                "sys.path scan) several times per request, and httpx is about 1.5x slower still "
                f"(encode/httpcore#1103). {PIP_HINT}",
                flush=True,
            )
        (port,) = free_ports(1)
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(CANDIDATES_DIR),
            f"{module}:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--workers",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
            "--lifespan",
            "on",
            "--backlog",
            "4096",
            "--timeout-keep-alive",
            "75",
        ]
        env = clean_env(
            BENCH_UPSTREAM=f"http://127.0.0.1:{ctx.upstream_port}", BENCH_POOL_SIZE=str(ctx.args.pool_size)
        )
        proc = ctx.pm.start(f"proxy-{module}", argv, cpu=ctx.proxy_cpu, env=env)
        wait_port(port, proc)
        return Running(port, [proc], f"uvicorn uvloop+httptools, pool {ctx.args.pool_size}")

    return run


@dataclass(frozen=True)
class ProxySpec:
    key: str
    description: str
    run: Callable[[Ctx], Running]
    ref: str = REFERENCE  # its ratios are to this spec's figures of the same round
    load: str = ""  # --https: one of HTTPS_LOADS


@dataclass(frozen=True)
class HttpsLoad:
    """--https: one kind of load, measured on nginx (the reference) and kubegate, each its own process."""

    suffix: str  # of the proxies' keys: nginx-tls, kubegate-tls, ...
    tls: bool
    tickets: bool  # the servers send TLS 1.3 session tickets (OpenSSL's default), so clients can resume
    headers: tuple[str, ...]  # wrk's
    unit: str
    description: str


CLOSE = ("Connection: close",)  # wrk then opens a new connection (and TLS handshake) per request
HTTPS_LOADS: dict[str, HttpsLoad] = {
    "keepalive": HttpsLoad("-tls", True, True, (), "req/s", "HTTPS, keep-alive connections"),
    "resumed": HttpsLoad(
        "-tls-resumed",
        True,
        True,
        CLOSE,
        "handshakes/s",
        "HTTPS, a new connection per request; wrk resumes its TLS session (TLS 1.3 ticket)",
    ),
    "full": HttpsLoad(
        "-tls-full",
        True,
        False,
        CLOSE,
        "handshakes/s",
        "HTTPS, a new connection per request; full handshakes (the server sends no session tickets)",
    ),
    "plain": HttpsLoad("", False, True, (), "req/s", "plain HTTP, keep-alive (what TLS costs each)"),
    "close": HttpsLoad(
        "-close",
        False,
        True,
        CLOSE,
        "conns/s",
        "plain HTTP, a new connection per request (a connection's cost without TLS)",
    ),
}
DEFAULT_HTTPS_LOADS = ("keepalive", "resumed", "full")


def _https_run(proxy: str, key: str, load: HttpsLoad) -> Callable[[Ctx], Running]:
    def run(ctx: Ctx) -> Running:
        if proxy == "nginx":
            running = run_nginx_proxy(ctx, https=load.tls, tickets=load.tickets, name=key)
        else:
            running = run_kubegate(ctx, https=load.tls, tickets=load.tickets)
        return dataclasses.replace(running, headers=load.headers)

    return run


HTTPS_PROXIES = ("nginx", "kubegate")


def https_specs(proxies: Sequence[str], loads: Sequence[str]) -> list[ProxySpec]:
    """--https: per load, nginx (the reference) and kubegate, each a process of its own."""
    specs = []
    for load in loads:
        how = HTTPS_LOADS[load]
        for proxy in proxies:
            key = proxy + how.suffix
            run = _https_run(proxy, key, how)
            specs.append(
                ProxySpec(key, f"{proxy}: {how.description}", run, ref=REFERENCE + how.suffix, load=load)
            )
    return specs


PROXIES: list[ProxySpec] = [
    ProxySpec("nginx", "nginx reverse proxy (reference)", run_nginx_proxy),
    ProxySpec("haproxy", "haproxy reverse proxy", run_haproxy),
    ProxySpec("kubegate", "kubegate serve (its data plane)", run_kubegate),
    ProxySpec(
        "kubegate-accesslog",
        "kubegate serve --access-log (JSON lines to its log file)",
        lambda ctx: run_kubegate(ctx, extra=("--access-log",)),
    ),
    ProxySpec(
        "kubegate-baseline",
        "kubegate serve from the checkout in $BENCH_BASELINE_SRC (e.g. a worktree of the last release)",
        lambda ctx: run_kubegate(ctx, src=os.environ.get("BENCH_BASELINE_SRC", "") or _no_baseline()),
    ),
    ProxySpec(
        "kubegate-policies",
        "kubegate serve, route with LeastRequest, breaker, outlier, retry, bulkhead (none triggered)",
        lambda ctx: run_kubegate(ctx, spec=POLICY_SPEC),
    ),
    ProxySpec(
        "kubegate-apikey",
        "kubegate serve, route with an API key (X-API-Key checked against a Secret's hashed keys)",
        lambda ctx: dataclasses.replace(
            run_kubegate(ctx, spec=APIKEY_SPEC), headers=("X-API-Key: bench-api-key-0123456789",)
        ),
    ),
    ProxySpec(
        "kubegate-ratelimit",
        "kubegate serve, route with a Local rate limit that admits everything (GCRA in memory)",
        lambda ctx: run_kubegate(ctx, spec=RATELIMIT_SPEC.format(scope="Local")),
    ),
    ProxySpec(
        "kubegate-ratelimit-global",
        "kubegate serve, route with a Global rate limit admitting everything (one Redis script per request)",
        run_kubegate_global_limit,
    ),
    ProxySpec(
        "kubegate-cache",
        "kubegate serve, route with a Memory response cache (every request after the first is a hit)",
        lambda ctx: run_kubegate(ctx, spec=CACHE_SPEC),
    ),
    ProxySpec(
        "kubegate-jwt",
        "kubegate serve, route with JWT auth (RS256, one token reused: the verified-token cache)",
        run_kubegate_jwt,
    ),
    ProxySpec(
        "starlette-httpx",
        "Starlette + httpx.AsyncClient (the naive design)",
        uvicorn_candidate("starlette_httpx", ["starlette", "httpx"]),
    ),
    ProxySpec(
        "asgi-aiohttp", "plain ASGI + aiohttp.ClientSession", uvicorn_candidate("asgi_aiohttp", ["aiohttp"])
    ),
    ProxySpec(
        "asgi-aiosonic", "plain ASGI + aiosonic.HTTPClient", uvicorn_candidate("asgi_aiosonic", ["aiosonic"])
    ),
]


# --------------------------------------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------------------------------------

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"cannot parse latency {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: dict[str, int]
    proxy_cpu: float | None = None  # fraction of one core used by the proxy process during the run
    upstream_cpu: float | None = None  # the same for the upstream nginx
    proxy_core_busy: float | None = None  # fraction of the proxy's core busy (any process)
    load_core_busy: float | None = None  # fraction of the wrk + upstream core busy (any process)
    steal: float | None = None  # fraction of the proxy's core stolen by the hypervisor
    wrk_cpu: float = 0.0
    others_proxy_core: float | None = None  # CPU that processes not ours used on the proxy's core
    others_load_core: float | None = None  # ... and on the load core
    upstream_conns: int | None = None  # connections the upstream accepted during the run
    upstream_requests: int | None = None  # requests the upstream served during the run
    client_conns: int | None = None  # connections accepted on the machine during the run, but the upstream's

    @property
    def conns_per_request(self) -> float | None:
        return self.client_conns / self.requests if self.client_conns is not None and self.requests else None

    @property
    def others(self) -> float:
        """How much other processes disturbed the run: their share of the proxy's core, or of the load core
        when that core was saturated (otherwise wrk and the upstream had the headroom they needed)."""
        load = self.others_load_core or 0.0
        if self.load_core_busy is not None and self.load_core_busy < LOAD_SATURATED:
            load = 0.0
        return max(self.others_proxy_core or 0.0, load)

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    def error_text(self) -> str:
        parts = []
        if self.non_2xx:
            parts.append(f"non-2xx/3xx {self.non_2xx}")
        parts += [f"{k} {v}" for k, v in self.socket_errors.items() if v]
        return ", ".join(parts)


def parse_wrk(out: str) -> WrkResult:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    total = re.search(r"^\s*(\d+) requests in ", out, re.M)
    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    if not rps or not total or not {"50", "90", "99"} <= pct.keys():
        raise ValueError("unexpected wrk output:\n" + out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True))
        if sock
        else {}
    )
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=_to_ms(pct["50"]),
        p90_ms=_to_ms(pct["90"]),
        p99_ms=_to_ms(pct["99"]),
        requests=int(total.group(1)),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=socket_errors,
    )


def run_wrk(
    pm: ProcessManager,
    url: str,
    args: argparse.Namespace,
    duration: int,
    name: str,
    headers: Sequence[str] = (),
    connections: int | None = None,
) -> str:
    cmd = [
        "wrk",
        f"-t{args.threads}",
        f"-c{connections or args.connections}",
        f"-d{duration}s",
        "--latency",
        f"--timeout={args.wrk_timeout}s",
        *(arg for header in headers for arg in ("-H", header)),
        url,
    ]
    proc = pm.start(name, cmd, cpu=args.load_cpu)
    try:
        proc.popen.wait(duration + 30)
    except subprocess.TimeoutExpired as exc:
        raise ProxyFailed(f"wrk did not finish within {duration + 30:.0f}s") from exc
    finally:
        pm.stop(proc)
    out = proc.log.read_text(errors="replace")
    proc.log.unlink(missing_ok=True)
    if proc.popen.returncode != 0:
        raise ProxyFailed(f"wrk exited with {proc.popen.returncode}: {out.strip()[-300:]}")
    return out


# --------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def fmt_count(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def fmt_cpu(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.0f}%"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int] | None = None) -> None:
    right = right if right is not None else set(range(1, len(headers)))
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model,
        "cpus_online": os.cpu_count(),
        "cpus_usable": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
    }


def _first_line(cmd: Sequence[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (r.stdout + r.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


def versions() -> dict[str, str]:
    out = {"python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})"}
    for dist in (
        "kubegate",
        "uvicorn",
        "uvloop",
        "httptools",
        "starlette",
        "httpx",
        "httpcore",
        "aiohttp",
        "aiosonic",
    ):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    # whether kubegate serve runs its hot path compiled (hack/compile.sh) or as plain Python
    out["kubegate build"] = _first_line([sys.executable, "-m", "kubegate._compiled"])
    out["nginx"] = _first_line(["nginx", "-v"]).replace("nginx version: ", "")
    out["haproxy"] = _first_line(["haproxy", "-v"])
    out["wrk"] = _first_line(["wrk", "-v"])
    return out


@dataclass
class Outcome:
    spec: ProxySpec
    running: Running | None = None
    note: str = ""
    failure: str | None = None  # set when it never started
    results: dict[int, WrkResult] = field(default_factory=dict)  # round -> result
    handshakes: dict[str, int] = field(default_factory=dict)  # --https: what wrk's handshakes were
    round_failures: dict[int, str] = field(default_factory=dict)
    restarts: int = 0


def _per_cpu(r: WrkResult) -> float | None:
    """Requests per second of proxy CPU: throughput independent of which side was the bottleneck."""
    return r.rps / r.proxy_cpu if r.proxy_cpu else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


ROUND_HEADERS = [
    "proxy",
    "req/s",
    "vs nginx",
    "p50 ms",
    "p99 ms",
    "p99 vs nginx",
    "proxy cpu",
    "req/cpu-s",
    "per-cpu vs nginx",
    "load core",
    "new up conns",
    "others",
    "errors",
]


def print_round(rnd: int, order: Sequence[Outcome]) -> None:
    by_key = {o.spec.key: o.results.get(rnd) for o in order}
    rows = []
    for o in order:
        r = o.results.get(rnd)
        ref = by_key.get(o.spec.ref)
        if r is None:
            why = o.round_failures.get(rnd) or o.failure or "not run"
            rows.append([o.spec.key, "FAILED", *["-"] * (len(ROUND_HEADERS) - 3), why.splitlines()[0][:70]])
            continue
        rows.append(
            [
                o.spec.key,
                f"{r.rps:,.0f}",
                fmt_ratio(_ratio(r.rps, ref.rps if ref else None)),
                fmt_ms(r.p50_ms),
                fmt_ms(r.p99_ms),
                fmt_ratio(_ratio(r.p99_ms, ref.p99_ms if ref else None)),
                fmt_cpu(r.proxy_cpu),
                fmt_count(_per_cpu(r)),
                fmt_ratio(_ratio(_per_cpu(r), _per_cpu(ref) if ref else None)),
                fmt_cpu(r.load_core_busy),
                fmt_count(r.upstream_conns),
                fmt_cpu(r.others) + (" noisy" if r.others > NOISE else ""),
                r.error_text() or "0",
            ]
        )
    print_table(ROUND_HEADERS, rows, right=set(range(1, len(ROUND_HEADERS) - 1)))


def _median(values: Iterator[float | None] | list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _quiet(results: dict[int, WrkResult], keep_noisy: bool) -> dict[int, WrkResult]:
    """The rounds to summarize: the quiet ones, or all if none was quiet (or keep_noisy)."""
    quiet = {k: r for k, r in results.items() if r.others <= NOISE}
    return results if keep_noisy or not quiet else quiet


def summarize(outcomes: Sequence[Outcome], rounds: int, keep_noisy: bool = False) -> list[dict[str, Any]]:
    """Per proxy: medians over its quiet rounds (all rounds if none was quiet, or keep_noisy); ratios are
    medians of per-round ratios to nginx of the same round, over rounds quiet for both when there are any."""
    by_key = {o.spec.key: o for o in outcomes}
    summary = []
    for o in outcomes:
        ref = by_key.get(o.spec.ref)
        ref_all = ref.results if ref else {}
        res = o.results
        row: dict[str, Any] = {
            "proxy": o.spec.key,
            "reference": o.spec.ref,
            "load": o.spec.load,
            "description": o.spec.description,
            "setup": o.note,
            "rounds_ok": len(res),
            "rounds": rounds,
            "failure": o.failure,
            "round_failures": {str(k): v for k, v in o.round_failures.items()},
        }
        if res:
            use = _quiet(res, keep_noisy)
            pairs = {k: (r, ref_all[k]) for k, r in res.items() if k in ref_all}
            quiet_pairs = {k: p for k, p in pairs.items() if p[0].others <= NOISE and p[1].others <= NOISE}
            if quiet_pairs and not keep_noisy:
                pairs = quiet_pairs
            rps = [r.rps for r in use.values()]
            row.update(
                rounds_used=sorted(use),
                rps_median=statistics.median(rps),
                rps_min=min(r.rps for r in res.values()),
                rps_max=max(r.rps for r in res.values()),
                ratio_median=_median(_ratio(r.rps, n.rps) for r, n in pairs.values()),
                ratio_rounds=sorted(pairs),
                p50_ms_median=statistics.median(r.p50_ms for r in use.values()),
                p99_ms_median=statistics.median(r.p99_ms for r in use.values()),
                p99_ratio_median=_median(_ratio(r.p99_ms, n.p99_ms) for r, n in pairs.values()),
                proxy_cpu_median=_median(r.proxy_cpu for r in use.values()),
                per_cpu_median=_median(_per_cpu(r) for r in use.values()),
                per_cpu_ratio_median=_median(_ratio(_per_cpu(r), _per_cpu(n)) for r, n in pairs.values()),
                load_core_busy_median=_median(r.load_core_busy for r in use.values()),
                non_2xx=sum(r.non_2xx for r in res.values()),
                socket_errors={
                    k: sum(r.socket_errors.get(k, 0) for r in res.values())
                    for k in ("connect", "read", "write", "timeout")
                },
                requests=sum(r.requests for r in res.values()),
                noisy_rounds=sum(1 for r in res.values() if r.others > NOISE),
                upstream_conns_max=max(
                    (r.upstream_conns for r in res.values() if r.upstream_conns is not None), default=None
                ),
                conns_per_request_median=_median(r.conns_per_request for r in use.values()),
                handshakes=o.handshakes,
            )
            plain = by_key.get("kubegate")
            if o.spec.key.startswith("kubegate-") and plain is not None and plain.results:
                # a route variant against the plain route of the same round (the issues' "same route
                # without the policy" targets): medians of per-round ratios, rounds quiet for both
                same = {k: (r, plain.results[k]) for k, r in res.items() if k in plain.results}
                quiet_same = {k: p for k, p in same.items() if p[0].others <= NOISE and p[1].others <= NOISE}
                if quiet_same and not keep_noisy:
                    same = quiet_same
                row.update(
                    plain_ratio_median=_median(_ratio(r.rps, n.rps) for r, n in same.values()),
                    plain_per_cpu_ratio_median=_median(
                        _ratio(_per_cpu(r), _per_cpu(n)) for r, n in same.values()
                    ),
                    plain_ratios=[round(r.rps / n.rps, 3) for _, (r, n) in sorted(same.items()) if n.rps],
                )
        summary.append(row)
    return summary


def print_variants(summary: Sequence[dict[str, Any]]) -> None:
    """kubegate's route variants against its plain route, measured in the same rounds."""
    rows = [
        [
            s["proxy"],
            fmt_ratio(s["plain_ratio_median"]),
            fmt_ratio(s["plain_per_cpu_ratio_median"]),
            " ".join(f"{x:.2f}" for x in s["plain_ratios"]),
        ]
        for s in summary
        if "plain_ratio_median" in s
    ]
    if rows:
        print("\n== route variants against the plain route (kubegate) of the same round: median of ratios")
        headers = ["variant", "req/s vs plain", "per-cpu vs plain", "per round (req/s)"]
        print_table(headers, rows, right={1, 2})


LEGEND = """\
  proxy cpu: share of one core used by the proxy process under load (near 100%: the proxy is the bottleneck)
  req/cpu-s: requests per second of proxy CPU (req/s / proxy cpu), comparable even when the proxy is not
             the bottleneck; per-cpu vs nginx is its ratio to nginx's in the same round
  load core: how busy the core of wrk + upstream was (near 100%: the load side limits the figure, so that
             proxy's req/s is a lower bound of what it can do)
  new up conns: connections the upstream accepted during a measured run (summary: the most in one round);
             a proxy that pools keep-alive connections opens none once warmed up
  others:    share of a core that processes not started by this script used during the run: of the proxy's
             core, or of the load core if that was saturated (>90%); over 10% the run is marked noisy (a
             shared machine) and its figures are pessimistic"""

SUMMARY_HEADERS = [
    "proxy",
    "req/s",
    "min-max",
    "vs nginx",
    "p50 ms",
    "p99 ms",
    "p99 vs nginx",
    "proxy cpu",
    "req/cpu-s",
    "per-cpu vs nginx",
    "load core",
    "new up conns",
    "rounds",
    "errors",
]


def print_summary(summary: Sequence[dict[str, Any]]) -> None:
    rows = []
    for s in summary:
        if "rps_median" not in s:
            why = (s["failure"] or "every round failed").splitlines()[0][:70]
            rows.append([s["proxy"], "FAILED", *["-"] * (len(SUMMARY_HEADERS) - 3), why])
            continue
        errs = [f"non-2xx {s['non_2xx']}"] if s["non_2xx"] else []
        errs += [f"{k} {v}" for k, v in s["socket_errors"].items() if v]
        rows.append(
            [
                s["proxy"],
                f"{s['rps_median']:,.0f}",
                f"{s['rps_min']:,.0f}-{s['rps_max']:,.0f}",
                fmt_ratio(s["ratio_median"]),
                fmt_ms(s["p50_ms_median"]),
                fmt_ms(s["p99_ms_median"]),
                fmt_ratio(s["p99_ratio_median"]),
                fmt_cpu(s["proxy_cpu_median"]),
                fmt_count(s["per_cpu_median"]),
                fmt_ratio(s["per_cpu_ratio_median"]),
                fmt_cpu(s["load_core_busy_median"]),
                fmt_count(s["upstream_conns_max"]),
                f"{s['rounds_ok']}/{s['rounds']}"
                + (f", {s['noisy_rounds']} noisy" if s["noisy_rounds"] else "")
                + (f", used {len(s['rounds_used'])}" if len(s["rounds_used"]) != s["rounds_ok"] else ""),
                ", ".join(errs) or "0",
            ]
        )
    print_table(SUMMARY_HEADERS, rows, right=set(range(1, len(SUMMARY_HEADERS) - 1)))


def print_https_summary(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """--https: per load, kubegate next to nginx (medians; ratios: medians of the per-round ratios)."""
    rows, out = [], []
    by_key = {s["proxy"]: s for s in summary}
    for load, how in HTTPS_LOADS.items():
        ref, kg = by_key.get(REFERENCE + how.suffix), by_key.get("kubegate" + how.suffix)
        if ref is None or kg is None or "rps_median" not in ref or "rps_median" not in kg:
            continue
        unit = how.unit
        kinds = ", ".join(
            sorted({w.split(" (")[0] for s in (ref, kg) for w in s["handshakes"] if w.startswith("TLS")})
        )
        row = {
            "load": load,
            "unit": unit,
            "nginx": ref["rps_median"],
            "kubegate": kg["rps_median"],
            "ratio": kg["ratio_median"],
            "nginx_per_cpu_s": ref["per_cpu_median"],
            "kubegate_per_cpu_s": kg["per_cpu_median"],
            "per_cpu_ratio": kg["per_cpu_ratio_median"],
            "nginx_cpu": ref["proxy_cpu_median"],
            "kubegate_cpu": kg["proxy_cpu_median"],
            "conns_per_request": [ref["conns_per_request_median"], kg["conns_per_request_median"]],
            "handshakes": kinds,
        }
        out.append(row)
        conns = "/".join("-" if v is None else f"{v:.2f}" for v in row["conns_per_request"])
        rows.append(
            [
                f"{load} ({unit})",
                fmt_count(row["nginx"]),
                fmt_count(row["kubegate"]),
                fmt_ratio(row["ratio"]),
                f"{fmt_cpu(row['nginx_cpu'])}/{fmt_cpu(row['kubegate_cpu'])}",
                fmt_count(row["nginx_per_cpu_s"]),
                fmt_count(row["kubegate_per_cpu_s"]),
                fmt_ratio(row["per_cpu_ratio"]),
                conns,
                kinds,
            ]
        )
    print("\n== HTTPS: kubegate against nginx, both terminating TLS with the same certificate")
    print_table(
        [
            "load",
            "nginx",
            "kubegate",
            "ratio",
            "proxy cpu (n/k)",
            "nginx /cpu-s",
            "kubegate /cpu-s",
            "per-cpu ratio",
            "conns/req (n/k)",
            "handshakes (wrk, seen on the wire)",
        ],
        rows,
        right=set(range(1, 9)),
    )
    print(
        "  conns/req: connections accepted on the machine during the run per request (1.00: a new one\n"
        "             per request; other processes' connections count too)"
    )
    return out


# --------------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    keys = [p.key for p in PROXIES]
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="proxies: "
        + ", ".join(f"{p.key} ({p.description})" for p in PROXIES)
        + f"\n\nneeds: {APT_HINT}\n       {PIP_HINT}\nsee bench/README.md",
    )
    ap.add_argument("--duration", type=int, default=10, help="seconds of load per measurement (10)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each measures every proxy once (3)")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each (2)")
    ap.add_argument("--connections", "-c", type=int, default=64, help="wrk connections (64)")
    ap.add_argument("--threads", "-t", type=int, default=1, help="wrk threads (1)")
    ap.add_argument("--wrk-timeout", type=int, default=2, help="wrk per-request timeout in seconds (2)")
    ap.add_argument(
        "--pool-size", type=int, default=64, help="upstream connection pool of the Python candidates (64)"
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="before each measurement, wait up to this long (s) for the machine to be idle (20; 0: never)",
    )
    ap.add_argument("--keep-noisy", action="store_true", help="summarize all rounds, also those marked noisy")
    ap.add_argument("--quick", action="store_true", help="1 round x 3 s, 1 s warm-up")
    ap.add_argument(
        "--proxies",
        default=None,
        help=f"comma-separated subset of: {','.join(keys)} (all; with --https: of {','.join(HTTPS_PROXIES)})",
    )
    ap.add_argument(
        "--https",
        action="store_true",
        help="HTTPS: nginx and kubegate terminate TLS with one self-signed certificate; keep-alive req/s "
        "and handshakes/s on new connections (resumed and full), each against nginx",
    )
    ap.add_argument(
        "--tls-key",
        choices=benchlib.KEY_TYPES,
        default="ec-p256",
        help="--https: the certificate's key (ec-p256: ECDSA P-256, the default; rsa-2048)",
    )
    ap.add_argument(
        "--https-loads",
        default=",".join(DEFAULT_HTTPS_LOADS),
        help=f"--https: comma-separated subset of {','.join(HTTPS_LOADS)} ({','.join(DEFAULT_HTTPS_LOADS)})",
    )
    ap.add_argument(
        "--kubegate-mode",
        choices=["auto", "routes", "push"],
        default="auto",
        help="how kubegate gets its table: --routes file, PUT /table, or routes then push (auto)",
    )
    ap.add_argument("--proxy-cpu", type=int, default=1, help="core for the proxy under test (1)")
    ap.add_argument("--load-cpu", type=int, default=0, help="core for wrk and the upstream (0)")
    ap.add_argument(
        "--no-pin", action="store_true", help="do not use taskset (results are then not comparable)"
    )
    ap.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    ap.add_argument(
        "--keep-workdir", action="store_true", help="keep configs and logs of the started processes"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.warmup = 3, 1, 1
    if not (0 < args.duration <= 600 and 1 <= args.rounds <= 20 and 0 <= args.warmup <= 60):
        ap.error("need 0 < --duration <= 600, 1 <= --rounds <= 20, 0 <= --warmup <= 60")
    if not (1 <= args.connections <= 10000 and 1 <= args.threads <= args.connections):
        ap.error("need 1 <= --threads <= --connections <= 10000")
    known = list(HTTPS_PROXIES) if args.https else keys
    chosen = [k.strip() for k in (args.proxies or ",".join(known)).split(",") if k.strip()]
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        ap.error(f"unknown proxies {unknown}; known{' with --https' if args.https else ''}: {known}")
    if args.https:
        loads = [k.strip() for k in args.https_loads.split(",") if k.strip()]
        if not loads or set(loads) - set(HTTPS_LOADS):
            ap.error(f"--https-loads: a subset of {','.join(HTTPS_LOADS)}")
        proxies = [p for p in HTTPS_PROXIES if p in chosen]
        if REFERENCE not in proxies:
            proxies.insert(0, REFERENCE)  # the ratios need it
        args.selected = https_specs(proxies, [k for k in HTTPS_LOADS if k in loads])
    else:
        args.selected = [p for p in PROXIES if p.key in chosen]
    return args


def check_tools(args: argparse.Namespace) -> None:
    needed = ["wrk", "nginx"] + ([] if args.no_pin else ["taskset"])
    missing = [t for t in needed if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)}. Install them: {APT_HINT}")
    if args.https:
        try:
            found = {a[4][0] for a in socket.getaddrinfo(TLS_HOST, 443, type=socket.SOCK_STREAM)}
        except OSError as exc:
            raise BenchError(f"--https: {TLS_HOST} does not resolve ({exc}); wrk needs it (SNI)") from exc
        if "127.0.0.1" not in found:
            raise BenchError(f"--https: {TLS_HOST} resolves to {sorted(found)}, not 127.0.0.1")
        if importlib.util.find_spec("cryptography") is None:
            raise BenchError(f"--https needs the Python package cryptography: {PIP_HINT}")
    if args.no_pin:
        args.load_cpu = None
        return
    usable = os.sched_getaffinity(0)
    if args.proxy_cpu == args.load_cpu or not {args.proxy_cpu, args.load_cpu} <= usable:
        raise BenchError(
            f"--proxy-cpu {args.proxy_cpu} and --load-cpu {args.load_cpu} must be two different "
            f"usable cores (usable: {sorted(usable)}); on a 1-core machine use --no-pin"
        )


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="kubegate-proxy-bench-"))
    try:
        yield d
    finally:
        if keep:
            print(f"\nlogs and configs kept in {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)


MAX_RESTARTS = 2


def wait_quiet(max_wait: float, what: str) -> None:
    """Wait (at most max_wait seconds) until the machine is idle: on a shared machine, others' jobs come and
    go, and a run next to a busy one measures them more than the proxy."""
    deadline = time.monotonic() + max_wait
    busy = 0.0
    while time.monotonic() < deadline:
        before = core_ticks()
        time.sleep(0.5)
        after = core_ticks()
        uses = [u for c in after if (u := core_use(before, after, c)) is not None]
        busy = sum(u.tasks for u in uses)
        if busy < 0.15:
            return
    if max_wait > 0:
        print(
            f"  {what}: the machine is still busy ({busy:.0%} of a core used by others) after "
            f"{max_wait:g}s; measuring anyway",
            flush=True,
        )


def check_certificate(port: int, tls: TlsSetup, what: str) -> None:
    """--https: the proxy must serve the benchmark's certificate for TLS_HOST (the same for every proxy)."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=3) as raw,
            client_tls_context().wrap_socket(raw, server_hostname=TLS_HOST) as conn,
        ):
            served = conn.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise ProxyFailed(f"{what}: TLS handshake for {TLS_HOST} failed: {exc!r}") from exc
    if served != ssl.PEM_cert_to_DER_cert(tls.cert_pem):
        raise ProxyFailed(f"{what}: serves another certificate than the benchmark's")


def sniff_handshakes(ctx: Ctx, o: Outcome) -> None:
    """--https: what wrk's handshakes with this proxy are (TLS version, suite, group, full or resumed): wrk
    as measured (its headers; -c2, 1 s) through ``benchlib.HandshakeSniffer``, a relay reading the hellos.
    With ``Connection: close`` wrk reconnects per request, reusing its SSL object and so offering the
    previous session's ticket; only the server decides whether the handshake is resumed."""
    assert o.running is not None
    with benchlib.HandshakeSniffer(o.running.port) as sniffer:
        url = f"https://{TLS_HOST}:{sniffer.port}/"
        run_wrk(ctx.pm, url, ctx.args, 1, f"wrk-sniff-{o.spec.key}", o.running.headers, connections=2)
        time.sleep(0.2)  # the relay's last connections
    o.handshakes = dict(sniffer.seen.most_common())
    print(
        "    handshakes seen (wrk -c2 for 1 s through a relay): "
        + "; ".join(f"{n} x {what}" for what, n in o.handshakes.items()),
        flush=True,
    )


def measure(ctx: Ctx, o: Outcome, rnd: int, upstream: Upstream) -> None:
    args = ctx.args
    if o.running is None or not o.running.main.alive():
        if o.restarts >= MAX_RESTARTS:
            raise ProxyFailed(f"not restarted again (already restarted {o.restarts} times)")
        if o.running is not None:
            dead = o.running.main
            print(
                f"  {o.spec.key}: its process had exited (code {dead.popen.returncode}); restarting.\n"
                f"{dead.log_tail()}",
                flush=True,
            )
            for p in o.running.procs:
                ctx.pm.stop(p)
            o.running = None
        o.restarts += 1
        o.running = o.spec.run(ctx)
        check_body(o.running.port, o.spec.key, headers=o.running.headers, https=o.running.https)
    run = o.running
    check_body(run.port, o.spec.key, attempts=1, headers=run.headers, https=run.https)
    wait_quiet(args.quiet_wait, o.spec.key)
    if args.warmup > 0:
        run_wrk(ctx.pm, run.url, args, args.warmup, f"wrk-warmup-{o.spec.key}", run.headers)
    counters0 = upstream.counters()
    ticks0 = core_ticks()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the only child reaped during the run
    cpu0, up0, t0 = cpu_seconds(run.main.pid), cpu_seconds(upstream.proc.pid), time.monotonic()
    accepted0 = tcp_passive_opens()
    out = run_wrk(ctx.pm, run.url, args, args.duration, f"wrk-{o.spec.key}", run.headers)
    accepted1 = tcp_passive_opens()
    elapsed = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu1, up1 = cpu_seconds(run.main.pid), cpu_seconds(upstream.proc.pid)
    ticks1 = core_ticks()
    time.sleep(0.2)  # let the proxy finish what wrk left in flight before counting upstream requests
    counters1 = upstream.counters()
    if not run.main.alive():
        raise ProxyFailed(f"died under load (code {run.main.popen.returncode}):\n{run.main.log_tail()}")
    try:
        result = parse_wrk(out)
    except ValueError as exc:
        raise ProxyFailed(str(exc)) from exc
    if cpu0 is not None and cpu1 is not None:
        result.proxy_cpu = (cpu1 - cpu0) / elapsed
    result.wrk_cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / elapsed
    if up0 is not None and up1 is not None:
        result.upstream_cpu = (up1 - up0) / elapsed
    if counters0 is not None and counters1 is not None:
        # minus the status query itself (one connection, one request)
        result.upstream_conns = counters1[0] - counters0[0] - 1
        result.upstream_requests = counters1[1] - counters0[1] - 1
    if accepted0 is not None and accepted1 is not None:
        result.client_conns = accepted1 - accepted0 - (result.upstream_conns or 0)
    proxy_core, load_core = core_use(ticks0, ticks1, ctx.proxy_cpu), core_use(ticks0, ticks1, args.load_cpu)
    if load_core is not None:
        result.load_core_busy = load_core.busy
    if proxy_core is not None:
        result.proxy_core_busy, result.steal = proxy_core.busy, proxy_core.steal
        if result.proxy_cpu is not None:
            result.others_proxy_core = max(0.0, proxy_core.tasks - result.proxy_cpu)
        if proxy_core.steal > 0.05:
            print(f"  {o.spec.key}: warning: the hypervisor stole {proxy_core.steal:.0%} of the proxy's core")
    if load_core is not None and result.upstream_cpu is not None:
        result.others_load_core = max(0.0, load_core.tasks - result.upstream_cpu - result.wrk_cpu)
    if result.others > NOISE:
        print(
            f"  {o.spec.key}: noisy: other processes used {result.others_proxy_core or 0:.0%} of the "
            "proxy's core "
            f"and {result.others_load_core or 0:.0%} of the load core during the run",
            flush=True,
        )
    if result.errors:
        print(
            f"  {o.spec.key}: wrk reported errors: {result.error_text()}\n"
            + "\n".join("      | " + line for line in out.strip().splitlines()),
            flush=True,
        )
    try:
        check_body(run.port, o.spec.key + " (after load)", attempts=1, headers=run.headers, https=run.https)
    except ProxyFailed as exc:
        print(f"  warning: {exc}", flush=True)
    o.results[rnd] = result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGINT explicitly too: a shell starts background jobs with SIGINT ignored, and Python then keeps it so.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    try:
        check_tools(args)
    except BenchError as exc:
        print(f"proxy_bench: {exc}", file=sys.stderr)
        return 2

    info, vers = machine_info(), versions()
    print("== machine")
    print(f"  cpu: {info['cpu_model']}; {info['cpus_online']} cores online, usable {info['cpus_usable']}")
    print(
        f"  kernel {info['kernel']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in info['loadavg_at_start'])}"
    )
    print("== versions")
    for k, v in vers.items():
        print(f"  {k}: {v}")
    per = args.warmup + args.duration
    est = args.rounds * len(args.selected) * (per + 1)
    print("== setup")
    pin = (
        "not pinned (--no-pin)"
        if args.no_pin
        else f"proxy on core {args.proxy_cpu}; wrk and upstream on core {args.load_cpu} (taskset)"
    )
    print(f"  {pin}")
    print(
        f"  wrk -t{args.threads} -c{args.connections} --latency, "
        f"{args.duration:g}s measured after {args.warmup:g}s "
        f"warm-up; {args.rounds} round(s) x {len(args.selected)} proxies; about {est / 60:.1f} min"
    )
    print(f"  upstream: nginx, 1 worker, fixed {len(BODY)}-byte body, keep-alive")
    if args.https:
        print(
            f"  HTTPS: one self-signed {args.tls_key} certificate for {TLS_HOST} served by every proxy; "
            f"wrk https://{TLS_HOST}:PORT/ (SNI and Host {TLS_HOST}); loads: "
            + "; ".join(
                f"{k}: {HTTPS_LOADS[k].description}" for k in dict.fromkeys(s.load for s in args.selected)
            )
        )

    outcomes = [Outcome(spec) for spec in args.selected]
    tls_info: dict[str, Any] = {}
    with workspace(args.keep_workdir) as workdir:
        pm = ProcessManager(workdir, pin=not args.no_pin)
        try:
            upstream = start_upstream(pm, args.load_cpu)
            tls = TlsSetup.create(workdir, args.tls_key) if args.https else None
            if tls is not None:
                tls_info = {"key_type": tls.key_type, "host": TLS_HOST, "certificate": tls.cert_pem}
            ctx = Ctx(pm, upstream.port, None if args.no_pin else args.proxy_cpu, args, tls)
            print(f"  upstream on 127.0.0.1:{upstream.port} (pid {upstream.proc.pid})")
            print("== starting proxies")
            for o in outcomes:
                try:
                    o.running = o.spec.run(ctx)
                    o.note = o.running.note
                    check_body(o.running.port, o.spec.key, headers=o.running.headers, https=o.running.https)
                    print(
                        f"  {o.spec.key}: 127.0.0.1:{o.running.port} pid {o.running.main.pid} ({o.note})",
                        flush=True,
                    )
                    if tls is not None and o.running.https:
                        check_certificate(o.running.port, tls, o.spec.key)
                        sniff_handshakes(ctx, o)
                except ProxyFailed as exc:
                    o.failure = str(exc)
                    if o.running is not None:
                        for p in o.running.procs:
                            pm.stop(p)
                        o.running = None
                    print(f"  {o.spec.key}: FAILED: {exc}", flush=True)
            active = [o for o in outcomes if o.failure is None]
            for rnd in range(1, args.rounds + 1):
                shift = (rnd - 1) % max(1, len(active))
                order = active[shift:] + active[:shift]
                load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
                print(
                    f"\n== round {rnd}/{args.rounds} "
                    f"(order: {', '.join(o.spec.key for o in order)}; load {load})",
                    flush=True,
                )
                if not upstream.proc.alive():
                    raise BenchError(f"the upstream nginx died:\n{upstream.proc.log_tail()}")
                for o in order:
                    try:
                        measure(ctx, o, rnd, upstream)
                    except ProxyFailed as exc:
                        o.round_failures[rnd] = str(exc)
                        print(f"  {o.spec.key}: round {rnd} FAILED: {exc}", flush=True)
                    if o.running is not None and not o.note:
                        o.note = o.running.note
                print_round(rnd, order + [o for o in outcomes if o.failure is not None])
        except BenchError as exc:
            print(f"proxy_bench: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("\ninterrupted: stopping every process started", file=sys.stderr)
            return 130
        finally:
            for sig in STOP_SIGNALS:  # a second Ctrl-C must not interrupt the clean-up
                signal.signal(sig, signal.SIG_IGN)
            pm.stop_all()

    completed = [o for o in outcomes if o.results]
    rounds_done = max((max(o.results) for o in completed), default=0)
    summary = summarize(outcomes, rounds_done, keep_noisy=args.keep_noisy)
    which = "all rounds" if args.keep_noisy else "the quiet rounds (all if none was quiet)"
    print(
        f"\n== summary of {rounds_done} round(s) x {args.duration:g}s, wrk -t{args.threads} "
        f"-c{args.connections}: medians over {which}; 'vs nginx' = median of per-round ratios to nginx "
        "in the same round; min-max over all rounds"
    )
    print_summary(summary)
    print_variants(summary)
    for o in outcomes:
        for rnd, why in sorted(o.round_failures.items()):
            print(f"  {o.spec.key} round {rnd} failed: {why.splitlines()[0]}")
    print(LEGEND)
    if args.https:
        tls_info["comparison"] = print_https_summary(summary)
    info["loadavg_at_end"] = os.getloadavg()
    print(
        "\nload average at start "
        + ", ".join(f"{x:.2f}" for x in info["loadavg_at_start"])
        + "; at end "
        + ", ".join(f"{x:.2f}" for x in info["loadavg_at_end"])
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "versions": vers,
                    "settings": {
                        "duration_s": args.duration,
                        "rounds": args.rounds,
                        "warmup_s": args.warmup,
                        "connections": args.connections,
                        "threads": args.threads,
                        "pinned": not args.no_pin,
                        "proxy_cpu": args.proxy_cpu,
                        "load_cpu": args.load_cpu,
                        "https": tls_info or None,
                    },
                    "summary": summary,
                    "rounds": {o.spec.key: {str(k): vars(r) for k, r in o.results.items()} for o in outcomes},
                },
                indent=2,
            )
            + "\n"
        )
        print(f"results written to {args.json}")
    return 0 if all(o.results for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
