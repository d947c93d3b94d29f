"""The operator's settings: command-line flags, each with a ``KUBEGATE_*`` environment variable.

The Helm chart sets environment variables; people set flags; a flag wins over its variable. Parsing is
separate from running so that ``kubegate operator`` (in :mod:`kubegate.cli`) and
``python -m kubegate_operator`` share one definition, and tests can build :class:`Settings` directly.

``--gateway-class`` is checked with the very validator of ``spec.gatewayClassName`` (taken from the
model, not restated here): an operator can only be given a name that a route can name.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydantic

from kubegate.api import models

#: The class of routes without ``spec.gatewayClassName``, and of an operator run without --gateway-class.
DEFAULT_GATEWAY_CLASS = "kubegate"

_CLASS_NAME: pydantic.TypeAdapter[str | None] = pydantic.TypeAdapter(
    models.GatewayRouteSpec.model_fields["gateway_class_name"].rebuild_annotation()
)


@dataclasses.dataclass(frozen=True)
class ObjectRef:
    """``namespace/name`` of one object (the data-plane Service, the bootstrap and push-token Secrets, the
    Lease)."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> ObjectRef:
        namespace, sep, name = text.strip().partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise argparse.ArgumentTypeError(f"expected NAMESPACE/NAME, got {text!r}")
        return cls(namespace=namespace, name=name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    gateway_class: str = DEFAULT_GATEWAY_CLASS  # the routes served: this class (and unset, if default)
    dataplane_service: ObjectRef | None = None
    push_token_file: Path | None = None
    push_token_secret: ObjectRef | None = None  # created with a random token if it does not exist
    push_token_key: str = "token"  # the key of the token in push_token_secret
    push_token_grace: float = 600.0  # seconds the previous token is still sent after a change
    bootstrap_secret: ObjectRef | None = None
    metrics_port: int | None = None
    holdoff: float = 0.05  # seconds of quiet before a compile
    max_delay: float = 0.5  # a compile happens at most this long after the first change of a burst
    resync_interval: float = 5.0  # seconds between GET /table checks of every replica
    push_timeout: float = 10.0
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    leader_lease: ObjectRef | None = None  # HA: only the holder of this Lease publishes and writes
    lease_duration: float = 15.0
    identity: str = ""
    log_level: str = "info"

    def watched_namespaces(self) -> tuple[str, ...]:
        """What kopf watches: the route namespaces plus the data plane's own (for its replicas)."""
        if not self.namespaces:
            return ()
        extra = [ref.namespace for ref in (self.dataplane_service,) if ref is not None]
        return tuple(sorted(set(self.namespaces) | set(extra)))


def _float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return number


def _key(value: str) -> str:
    """A Secret data key: letters, digits, '-', '_' and '.' (what the API server accepts)."""
    if not value or len(value) > 253 or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in value):
        raise argparse.ArgumentTypeError(f"not a Secret key: {value!r}")
    return value


def gateway_class(value: str) -> str:
    """A --gateway-class value: a name ``spec.gatewayClassName`` accepts."""
    try:
        name = _CLASS_NAME.validate_python(value)
    except pydantic.ValidationError as error:
        message = str(error.errors()[0]["msg"]).removeprefix("Value error, ")
        raise argparse.ArgumentTypeError(
            message if repr(value) in message else f"{value!r}: {message}"
        ) from None
    if name is None:
        raise argparse.ArgumentTypeError("a name is required")
    return name


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if environ is None else environ

    def default(name: str, fallback: str | None = None) -> str | None:
        return env.get(f"KUBEGATE_{name}", fallback)

    p = argparse.ArgumentParser(
        prog="kubegate operator",
        description="Compile GatewayRoutes and push the table to every data-plane replica.",
    )
    namespaces = default("NAMESPACES") or default("NAMESPACE") or ""
    p.add_argument(
        "--namespace",
        dest="namespaces",
        action="append",
        default=None,
        help="watch GatewayRoutes in this namespace (repeatable; default all; "
        "$KUBEGATE_NAMESPACES, comma-separated)",
    )
    p.set_defaults(env_namespaces=[n.strip() for n in namespaces.split(",") if n.strip()])
    p.add_argument(
        "--gateway-class",
        type=gateway_class,
        default=default("GATEWAY_CLASS", DEFAULT_GATEWAY_CLASS),
        help="serve the GatewayRoutes whose spec.gatewayClassName is this name (default "
        f"{DEFAULT_GATEWAY_CLASS!r}, which also serves routes that name no class; $KUBEGATE_GATEWAY_CLASS)",
    )
    p.add_argument(
        "--dataplane-service",
        type=ObjectRef.parse,
        default=default("DATAPLANE_SERVICE"),
        help="NS/NAME of the Service whose EndpointSlices list the data-plane replicas (port 'admin')",
    )
    p.add_argument("--push-token-file", type=Path, default=default("PUSH_TOKEN_FILE"))
    p.add_argument(
        "--push-token-secret",
        type=ObjectRef.parse,
        default=default("PUSH_TOKEN_SECRET"),
        help="NS/NAME of the push token's Secret: created at start with a random token if it does not "
        "exist (never overwritten); its token is used until --push-token-file exists",
    )
    p.add_argument(
        "--push-token-key",
        type=_key,
        default=default("PUSH_TOKEN_KEY", "token"),
        help="the key of the token in --push-token-secret (default 'token')",
    )
    p.add_argument(
        "--push-token-grace",
        type=_float,
        default=default("PUSH_TOKEN_GRACE", "600"),
        help="seconds the token before a change is still sent along (kubegate-previous-token; 600)",
    )
    p.add_argument(
        "--bootstrap-secret",
        type=ObjectRef.parse,
        default=default("BOOTSTRAP_SECRET"),
        help="NS/NAME of the Secret holding the last compiled table (table.json.gz)",
    )
    p.add_argument("--metrics-port", type=int, default=default("METRICS_PORT"))
    p.add_argument("--holdoff", type=_float, default=default("HOLDOFF", "0.05"))
    p.add_argument("--max-delay", type=_float, default=default("MAX_DELAY", "0.5"))
    p.add_argument("--resync-interval", type=_float, default=default("RESYNC_INTERVAL", "5"))
    p.add_argument("--push-timeout", type=_float, default=default("PUSH_TIMEOUT", "10"))
    p.add_argument(
        "--leader-lease",
        type=ObjectRef.parse,
        default=default("LEADER_LEASE"),
        help="NS/NAME of a coordination.k8s.io Lease for leader election (HA); default: no election",
    )
    p.add_argument("--lease-duration", type=_float, default=default("LEASE_DURATION", "15"))
    p.add_argument("--identity", default=default("IDENTITY") or env.get("POD_NAME") or "")
    p.add_argument("--log-level", default=default("LOG_LEVEL", "info"))
    return p


def parse(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    args = build_parser(environ).parse_args(argv)

    def ref(value: object) -> ObjectRef | None:
        if value is None or isinstance(value, ObjectRef):
            return value
        return ObjectRef.parse(str(value))  # an environment default arrives as a string

    metrics = args.metrics_port
    return Settings(
        namespaces=tuple(args.namespaces or args.env_namespaces),
        gateway_class=str(args.gateway_class),  # argparse applies type= to a string default too
        dataplane_service=ref(args.dataplane_service),
        push_token_file=Path(args.push_token_file) if args.push_token_file else None,
        push_token_secret=ref(args.push_token_secret),
        push_token_key=_key(str(args.push_token_key)),
        push_token_grace=float(args.push_token_grace),
        bootstrap_secret=ref(args.bootstrap_secret),
        metrics_port=int(metrics) if metrics not in (None, "") else None,
        holdoff=float(args.holdoff),
        max_delay=float(args.max_delay),
        resync_interval=float(args.resync_interval),
        push_timeout=float(args.push_timeout),
        leader_lease=ref(args.leader_lease),
        lease_duration=float(args.lease_duration),
        identity=str(args.identity),
        log_level=str(args.log_level),
    )
