"""Pydantic models of the public GatewayRoute resource (``kubegate.dev/v1alpha1``).

These models are the single source of truth for the API: the compiler validates every GatewayRoute's
``spec`` with them (a failure becomes an ``Accepted=False`` condition naming the field), and
:mod:`kubegate.api.crd` generates the CRD's ``openAPIV3Schema`` from their JSON schema, so the field
descriptions below are the documentation ``kubectl explain`` shows.

Conventions: unknown fields are rejected (``extra="forbid"``) and types are strict (``port: "80"`` is an
error, as it is for the API server). Patterns are RE2-compatible because the API server evaluates the
same ones. Checks that need the whole route (regular expressions, glob syntax, weights, duplicates,
conflicts) live in the compiler, not here.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import urllib.parse
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from kubegate.api import duration
from kubegate.api.lean import LeanModel

GROUP = "kubegate.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "GatewayRoute"

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]

#: RFC 1123 hostname in lower case, optionally with a leading ``*.`` wildcard label (as in Gateway API).
HOSTNAME_PATTERN = r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
#: RFC 7230 ``token``: the characters allowed in a header name.
TOKEN_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
#: A Service name is an RFC 1035 DNS label.
SERVICE_NAME_PATTERN = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
#: An absolute path without query, fragment or whitespace.
PATH_PATTERN = r"^/[^?#\s]*$"
#: A coarse shape check for the CRD; :func:`split_http_url` does the precise one.
URL_PATTERN = r"^http://([^/?#@\s:\[\]]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/?$"

MAX_LIST_ITEMS = 16


def _pattern_check(pattern: str, what: str) -> AfterValidator:
    """A validator with a readable message, instead of pydantic's "should match pattern '^(...'"."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return AfterValidator(check)


def _pattern_field(pattern: str, *, max_length: int, description: str | None = None) -> Any:
    return Field(
        min_length=1,
        max_length=max_length,
        description=description,
        json_schema_extra={"pattern": pattern},
    )


Hostname = Annotated[
    str,
    _pattern_field(HOSTNAME_PATTERN, max_length=253),
    _pattern_check(
        HOSTNAME_PATTERN, "a lower-case RFC 1123 hostname, optionally with a leading '*.' wildcard"
    ),
]
Token = Annotated[
    str,
    _pattern_field(TOKEN_PATTERN, max_length=256),
    _pattern_check(TOKEN_PATTERN, "a valid name (an RFC 7230 token: letters, digits and !#$%&'*+-.^_`|~)"),
]


class _Spec(LeanModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class PathMatchSpec(_Spec):
    """How the request path is matched."""

    type: Literal["Exact", "Prefix", "Glob"] = Field(
        default="Prefix",
        description=(
            "Exact: the whole path equals value. Prefix: the path equals value or continues it at a '/' "
            "boundary. Glob: value is a pattern of segments where '*' matches exactly one segment and a "
            "final '**' matches any number of remaining segments (e.g. /api/*/users/**)."
        ),
    )
    value: str = Field(
        default="/",
        min_length=1,
        max_length=1024,
        description="The path or pattern; starts with '/', without query string or fragment.",
        json_schema_extra={"pattern": PATH_PATTERN},
    )

    @field_validator("value")
    @classmethod
    def _check_value(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"path {value!r} must start with '/'")
        if re.search(r"[?#\s]", value):
            raise ValueError(
                f"path {value!r} must not contain '?', '#' or whitespace "
                "(match query parameters with queryParams)"
            )
        return value


class HeaderMatch(_Spec):
    """A condition on a request header. All header conditions of a route must hold."""

    name: Token = Field(description="Header name, compared case-insensitively.")
    value: str = Field(min_length=1, max_length=4096, description="The expected value, or a pattern.")
    type: Literal["Exact", "RegularExpression"] = Field(
        default="Exact",
        description="Exact: the value equals value. RegularExpression: value (Python re syntax) matches "
        "the whole header value.",
    )


class QueryParamMatch(_Spec):
    """A condition on a query parameter. All query-parameter conditions of a route must hold."""

    name: Token = Field(description="Query parameter name, compared case-sensitively.")
    value: str = Field(min_length=1, max_length=1024, description="The expected value, or a pattern.")
    type: Literal["Exact", "RegularExpression"] = Field(
        default="Exact",
        description="Exact: the value equals value. RegularExpression: value (Python re syntax) matches "
        "the whole parameter value.",
    )


class RouteMatchSpec(_Spec):
    """Which requests the route takes. Every given condition must hold; an empty match takes everything."""

    path: PathMatchSpec = Field(
        default_factory=PathMatchSpec,
        description="Path condition; defaults to the prefix '/' (every path).",
    )
    methods: list[HttpMethod] = Field(
        default_factory=list,
        max_length=len(HTTP_METHODS),
        description="HTTP methods (upper case); empty means any method.",
    )
    hosts: list[Hostname] = Field(
        default_factory=list,
        max_length=MAX_LIST_ITEMS,
        description="Host names (Host header, without port); '*.example.com' matches one or more "
        "labels before example.com. Empty means any host.",
    )
    headers: list[HeaderMatch] = Field(
        default_factory=list,
        max_length=MAX_LIST_ITEMS,
        description="Header conditions; all must hold.",
    )
    query_params: list[QueryParamMatch] = Field(
        default_factory=list,
        max_length=MAX_LIST_ITEMS,
        alias="queryParams",
        description="Query-parameter conditions; all must hold.",
    )


@functools.lru_cache(maxsize=65536)  # pure, and called several times per backend per compile
def split_http_url(url: str) -> tuple[str, int]:
    """``http://host[:port][/]`` → ``(host, port)``; raise ValueError saying what is wrong otherwise.

    The host comes back in lower case and without IPv6 brackets; the port defaults to 80.
    """
    if not url.startswith("http://"):
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme.lower() == "https":
            raise ValueError(f"url {url!r}: https is not supported yet, use an http:// URL")
        raise ValueError(f"url {url!r} must start with 'http://' (only http is supported for now)")
    if re.search(r"\s", url):
        raise ValueError(f"url {url!r} must not contain whitespace")
    parts = urllib.parse.urlsplit(url)
    if "@" in parts.netloc:
        raise ValueError(f"url {url!r} must not contain user info (user:password@)")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError(f"url {url!r} must not have a query string or fragment")
    if parts.path not in ("", "/"):
        raise ValueError(
            f"url {url!r} must not have a path ({parts.path!r}): the request path is forwarded unchanged"
        )
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"url {url!r} must have a host")
    if parts.netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"url {url!r}: {host!r} is not a valid IPv6 address") from None
    elif not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*", host):
        raise ValueError(f"url {url!r}: {host!r} is not a valid host name or IPv4 address")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"url {url!r}: the port must be a number from 1 to 65535") from None
    if port is None:
        return host, 80
    if not 1 <= port <= 65535:
        raise ValueError(f"url {url!r}: the port must be a number from 1 to 65535")
    return host, port


class BackendRef(_Spec):
    """Where matching requests go: a Service of the route's namespace (service + port) or a static url."""

    model_config = ConfigDict(
        json_schema_extra={
            # Exactly one of (service with port) or url: the same rule as _check_target, for the API server.
            "oneOf": [{"required": ["service", "port"]}, {"required": ["url"]}],
            "not": {"anyOf": [{"required": ["url", "service"]}, {"required": ["url", "port"]}]},
        }
    )

    service: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        description="Name of a Service in the route's namespace; its ready endpoints are read from the "
        "EndpointSlices labelled kubernetes.io/service-name. Requires port; excludes url.",
        json_schema_extra={"pattern": SERVICE_NAME_PATTERN},
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="The Service port; required with service.",
    )
    url: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description="A static target 'http://host[:port]' (port defaults to 80; no path, query or user "
        "info), for standalone use and services outside the cluster. Excludes service and port.",
        json_schema_extra={"pattern": URL_PATTERN},
    )
    weight: int = Field(
        default=1,
        ge=0,
        le=1_000_000,
        description="Relative share of the route's traffic; 0 sends this backend nothing.",
    )

    @field_validator("service")
    @classmethod
    def _check_service(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(SERVICE_NAME_PATTERN, value):
            raise ValueError(f"{value!r} is not a valid Service name (a lower-case RFC 1035 label)")
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None:
            split_http_url(value)
        return value

    @model_validator(mode="after")
    def _check_target(self) -> BackendRef:
        if self.url is not None:
            if self.service is not None:
                raise ValueError("set either service (with port) or url, not both")
            if self.port is not None:
                raise ValueError("port is only used with service; put the port in the url")
        elif self.service is None:
            raise ValueError("a backend needs either service (with port) or url")
        elif self.port is None:
            raise ValueError("port is required with service")
        return self


def _check_duration(value: str) -> str:
    duration.parse_duration(value)
    return value


class GatewayRouteSpec(_Spec):
    """A GatewayRoute sends the requests that match to one of its weighted backends."""

    match: RouteMatchSpec = Field(
        default_factory=RouteMatchSpec,
        description="Which requests this route takes; defaults to every request.",
    )
    backends: list[BackendRef] = Field(
        min_length=1,
        max_length=MAX_LIST_ITEMS,
        description="Weighted backends; each request goes to one of them, chosen by weight.",
    )
    timeout: Annotated[str, AfterValidator(_check_duration)] | None = Field(
        default=None,
        description="Time limit for the whole request, as a Gateway API duration such as 30s, 1h30m or "
        "500ms; 0s disables the timeout. Unset means the gateway's default.",
        json_schema_extra={"pattern": duration.DURATION_PATTERN},
    )

    def timeout_ms(self) -> int | None:
        """The timeout in milliseconds; None when unset or 0s (no timeout)."""
        if self.timeout is None:
            return None
        return duration.parse_duration(self.timeout) or None


CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(LeanModel):
    """One aspect of the route's state, in the standard Kubernetes condition shape."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    type: Annotated[str, _pattern_check(CONDITION_TYPE_PATTERN, "a valid condition type")] = Field(
        min_length=1,
        max_length=316,
        description="Condition type: Accepted, ResolvedRefs or Programmed.",
        json_schema_extra={"pattern": CONDITION_TYPE_PATTERN},
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: Annotated[str, _pattern_check(CONDITION_REASON_PATTERN, "a CamelCase reason")] = Field(
        min_length=1,
        max_length=1024,
        description="A CamelCase word saying why the condition has its status (e.g. Invalid).",
        json_schema_extra={"pattern": CONDITION_REASON_PATTERN},
    )
    message: str = Field(
        default="",
        max_length=32768,
        description="Human-readable details, naming the field or object concerned.",
    )
    last_transition_time: datetime = Field(
        alias="lastTransitionTime",
        description="When status last changed (reason and message changes do not count).",
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        alias="observedGeneration",
        description="The metadata.generation this condition was computed from.",
    )


class GatewayRouteStatus(LeanModel):
    """What kubegate made of the route: conditions Accepted, ResolvedRefs and Programmed."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    observed_generation: int | None = Field(
        default=None,
        ge=0,
        alias="observedGeneration",
        description="The metadata.generation the status was computed from.",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        description="Latest observations of the route's state, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )

    def condition(self, type_: str) -> Condition | None:
        """The condition of that type, if present."""
        return next((c for c in self.conditions if c.type == type_), None)
