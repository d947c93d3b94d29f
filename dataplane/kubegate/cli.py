"""The ``kubegate`` command: ``serve``, ``compile``, ``echo``, ``crd`` (``operator`` with the operator extra).

Argument parsing only; each subcommand hands off to the module that does the work, imported lazily so that
``kubegate serve`` never imports the operator or kopf.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

QUICKSTART = Path(__file__).parent / "quickstart.yaml"


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"KUBEGATE_{name}", default)


# argparse applies `type` to string defaults too, so a bad KUBEGATE_* value gets the same clear error as a
# bad flag ("argument --port: ..."), never a traceback. Each message names the variable as well.
def _port(env: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a port number (flag or KUBEGATE_{env})"
            ) from None
        if not 1 <= value <= 65535:
            raise argparse.ArgumentTypeError(
                f"{value} is not a port number from 1 to 65535 (flag or KUBEGATE_{env})"
            )
        return value

    return parse


def _seconds(env: str, *, zero: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number of seconds (flag or KUBEGATE_{env})"
            ) from None
        if value < 0 or (value == 0 and not zero) or value != value or value == float("inf"):
            least = "0 or more" if zero else "more than 0"
            raise argparse.ArgumentTypeError(f"{text} seconds: must be {least} (flag or KUBEGATE_{env})")
        return value

    return parse


def _seconds_flag(
    parser: argparse.ArgumentParser, flag: str, env: str, default: str, *, zero: bool, help: str
) -> None:
    """A flag holding seconds, defaulting to ``$KUBEGATE_<env>`` (checked as strictly as the flag)."""
    parser.add_argument(flag, type=_seconds(env, zero=zero), default=_env(env, default), help=help)


def _trusted_proxies(text: str) -> str:
    from kubegate.dataplane.ratelimiting import parse_trusted_proxies

    try:
        parse_trusted_proxies(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


_SIZE_SUFFIXES = {"": 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def _size(env: str) -> Callable[[str], int]:
    """A byte count: digits, optionally with a Ki, Mi or Gi suffix (as Kubernetes quantities)."""

    def parse(text: str) -> int:
        number, suffix = text.rstrip("KMGi"), text[len(text.rstrip("KMGi")) :]
        if not number.isdigit() or suffix not in _SIZE_SUFFIXES:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a size such as 67108864, 512Ki, 64Mi or 1Gi (flag or KUBEGATE_{env})"
            )
        return int(number) * _SIZE_SUFFIXES[suffix]

    return parse


def _certificate_files(text: str) -> tuple[Path, Path]:
    cert, comma, key = text.partition(",")
    if not comma or not cert or not key:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected CERT,KEY (two PEM files) (flag or KUBEGATE_DEFAULT_CERTIFICATE)"
        )
    return Path(cert), Path(key)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubegate", description="A Kubernetes-native API gateway.")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run a data-plane process (traffic port + admin port)")
    s.add_argument(
        "--routes", type=Path, default=_env("ROUTES"), help="GatewayRoute YAML file (standalone mode)"
    )
    s.add_argument(
        "--demo",
        action="store_true",
        help="serve the built-in quickstart routes and run their echo backend on 127.0.0.1:9001",
    )
    s.add_argument(
        "--bootstrap", type=Path, default=_env("BOOTSTRAP"), help="compiled table to serve at start-up"
    )
    s.add_argument(
        "--host", default=_env("HOST", "0.0.0.0"), help="bind address of both ports (default 0.0.0.0)"
    )
    s.add_argument("--port", type=_port("PORT"), default=_env("PORT", "8080"), help="traffic port (8080)")
    s.add_argument("--admin-host", default=_env("ADMIN_HOST"), help="bind address of the admin port (--host)")
    s.add_argument(
        "--admin-port", type=_port("ADMIN_PORT"), default=_env("ADMIN_PORT", "9090"), help="admin port (9090)"
    )
    s.add_argument(
        "--push-token-file",
        type=Path,
        default=_env("PUSH_TOKEN_FILE"),
        help="file holding the bearer token for PUT /table (else $KUBEGATE_PUSH_TOKEN)",
    )
    _seconds_flag(
        s,
        "--push-token-grace",
        "PUSH_TOKEN_GRACE",
        "600",
        zero=True,
        help="seconds the push token before a change of --push-token-file is still admitted (600)",
    )
    _seconds_flag(
        s,
        "--drain-timeout",
        "DRAIN_TIMEOUT",
        "25",
        zero=True,
        help="seconds to finish in-flight requests on SIGTERM (25)",
    )
    _seconds_flag(
        s,
        "--drain-linger",
        "DRAIN_LINGER",
        "2",
        zero=True,
        help="seconds an idle keep-alive connection stays open once draining, for a request already on its "
        "way (2)",
    )
    _seconds_flag(
        s,
        "--watch-interval",
        "WATCH_INTERVAL",
        "1",
        zero=True,
        help="seconds between checks of --routes for changes; 0 = only on SIGHUP (1)",
    )
    _seconds_flag(
        s,
        "--header-timeout",
        "HEADER_TIMEOUT",
        "10",
        zero=False,
        help="seconds a client has to send a request head (10)",
    )
    _seconds_flag(
        s,
        "--keepalive-timeout",
        "KEEPALIVE_TIMEOUT",
        "75",
        zero=False,
        help="seconds an idle client connection stays open (75)",
    )
    _seconds_flag(
        s,
        "--tunnel-idle-timeout",
        "TUNNEL_IDLE_TIMEOUT",
        "300",
        zero=False,
        help="seconds a WebSocket tunnel may carry no byte either way before it is closed (300)",
    )
    s.add_argument(
        "--escaped-slashes",
        choices=["reject", "unescape", "keep"],
        default=_env("ESCAPED_SLASHES", "reject"),
        help="request paths with %%2F or %%5C: reject (400, default), unescape to '/' before matching, "
        "or keep (forwarded encoded)",
    )
    s.add_argument(
        "--access-log", action="store_true", default=_env("ACCESS_LOG") == "1", help="JSON access log lines"
    )
    s.add_argument(
        "--redis-url",
        default=_env("REDIS_URL") or None,
        help="redis://host:6379/0: rate limits with scope Global (the default with Redis) and response "
        "caches with store Redis (the default with Redis) are shared by every replica through it; without "
        "it every limit and cache is per replica",
    )
    s.add_argument(
        "--cache-memory-bytes",
        type=_size("CACHE_MEMORY_BYTES"),
        default=_env("CACHE_MEMORY_BYTES", "64Mi"),
        help="size of the replica's in-memory response cache (routes with cache.store Memory), an LRU "
        "bounded in bytes: a number, or with a suffix Ki, Mi or Gi (default 64Mi)",
    )
    s.add_argument(
        "--trusted-proxies",
        type=_trusted_proxies,
        default=_env("TRUSTED_PROXIES", ""),
        help="comma-separated CIDRs of proxies in front of the gateway: only for a request from one of "
        "them is X-Forwarded-Proto kept (a balancer that terminated TLS) and X-Forwarded-For read (right "
        "to left) to find the client of a rate limit",
    )
    s.add_argument(
        "--tls-port",
        type=_port("TLS_PORT"),
        default=_env("TLS_PORT"),
        help="HTTPS port, certificates chosen by SNI from the routes' spec.tls (default: no TLS listener)",
    )
    s.add_argument(
        "--default-certificate",
        type=_certificate_files,
        default=_env("DEFAULT_CERTIFICATE"),
        metavar="CERT,KEY",
        help="PEM files served to handshakes without SNI or for a name no route serves (else they fail)",
    )
    s.add_argument(
        "--tls-redirect-port",
        type=_port("TLS_REDIRECT_PORT"),
        default=_env("TLS_REDIRECT_PORT"),
        help="the HTTPS port redirectHTTP sends clients to, when the public port differs (--tls-port)",
    )
    s.add_argument(
        "--log-level", type=str.lower, choices=LOG_LEVELS, default=_env("LOG_LEVEL", "info"), help="(info)"
    )

    c = sub.add_parser("compile", help="compile a GatewayRoute YAML file and print the table and statuses")
    c.add_argument("file", type=Path, help="GatewayRoute YAML file; - reads standard input")
    c.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")

    e = sub.add_parser("echo", help="run a small echo backend (for the quickstart and demos)")
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=_port("ECHO_PORT"), default=_env("ECHO_PORT", "9001"), help="(9001)")
    e.add_argument("--name", default=None, help="name reported in responses (default echo-PORT)")

    sub.add_parser(
        "operator",
        add_help=False,
        help="run the kopf operator (needs the 'operator' extra); `kubegate operator --help` for its flags",
    )

    d = sub.add_parser("crd", help="print the GatewayRoute CustomResourceDefinition (or --write it to crds/)")
    d.add_argument("--write", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["operator"]:  # its flags belong to the operator's own parser
        try:
            from kubegate_operator.__main__ import main as operator_main
        except ModuleNotFoundError as exc:
            print(
                f"kubegate operator needs the 'operator' extra (missing module {exc.name!r}): "
                "pip install 'kubegate[operator]'",
                file=sys.stderr,
            )
            return 2
        return operator_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        if args.demo and args.routes is not None:
            parser.error(
                "--demo serves the built-in quickstart routes: leave out --routes (or KUBEGATE_ROUTES)"
            )
        if args.tls_port is None and (args.default_certificate or args.tls_redirect_port):
            parser.error("--default-certificate and --tls-redirect-port need --tls-port")
        from kubegate.dataplane.server import ServeOptions, serve
        from kubegate.logs import setup_logging

        setup_logging(args.log_level)
        opts = ServeOptions(
            host=args.host,
            port=args.port,
            admin_host=args.admin_host or args.host,
            admin_port=args.admin_port,
            routes=args.routes or (QUICKSTART if args.demo else None),
            demo=args.demo,
            bootstrap=args.bootstrap,
            push_token_file=args.push_token_file,
            push_token_grace=args.push_token_grace,
            drain_timeout=args.drain_timeout,
            access_log=args.access_log,
            header_timeout=args.header_timeout,
            watch_interval=args.watch_interval,
            keepalive_timeout=args.keepalive_timeout,
            tunnel_idle_timeout=args.tunnel_idle_timeout,
            drain_linger=args.drain_linger,
            escaped_slashes=args.escaped_slashes,
            redis_url=args.redis_url,
            trusted_proxies=args.trusted_proxies,
            tls_port=args.tls_port,
            default_certificate=args.default_certificate,
            tls_redirect_port=args.tls_redirect_port,
            cache_memory_bytes=args.cache_memory_bytes,
        )
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
            return asyncio.run(serve(opts))
        return uvloop.run(serve(opts))
    if args.command == "compile":
        from kubegate.compiler.render import compile_main

        return compile_main(str(args.file), args.output, sys.stdout, sys.stderr, datetime.now(UTC))
    if args.command == "echo":
        from kubegate.echo import run_echo
        from kubegate.logs import setup_logging

        setup_logging("info")

        run_echo(args.host, args.port, args.name or f"echo-{args.port}")
        return 0
    if args.command == "crd":
        from kubegate.api import crd

        return crd.main(["--write"] if args.write else [])
    return 2


if __name__ == "__main__":
    sys.exit(main())
