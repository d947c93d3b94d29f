"""Pydantic models of the public GatewayRoute resource (``kubegate.dev/v1alpha1``).

These models are the single source of truth for the API: the compiler validates every GatewayRoute's
``spec`` with them (a failure becomes an ``Accepted=False`` condition naming the field), and
:mod:`kubegate.api.crd` generates the CRD's ``openAPIV3Schema`` from their JSON schema, so the field
descriptions below are the documentation ``kubectl explain`` shows.

Conventions: unknown fields are rejected (``extra="forbid"``) and types are strict (``port: "80"`` is an
error, as it is for the API server). Patterns are RE2-compatible because the API server evaluates the
same ones. Every list is annotated with its :class:`ListType` (``x-kubernetes-list-type`` in the CRD),
which also makes these models refuse the duplicates the API server refuses. Every path is checked by
:func:`check_path`: the CRD's :data:`PATH_PATTERN`, and :data:`PATH_RULES` as CEL rules with the same
messages. Checks that need the whole route (regular expressions, glob syntax, weights, duplicate
backends, conflicts) live in the compiler, not here. The limits on RegularExpression matches
(:data:`MAX_REGEX_BYTES`, :data:`MAX_REGEX_MATCHES`) are enforced by the compiler too; the CRD also
states them as CEL rules (``x-kubernetes-validations``) so that the API server refuses such a route at
``kubectl apply`` (CEL counts characters, the compiler bytes of UTF-8: a non-ASCII pattern can pass the
first and fail the second).

The traffic policies (``loadBalancer``, ``retry``, ``circuitBreaker``, ``outlierDetection``,
``healthCheck``, ``bulkhead``) are checked here whole, cross-field rules included (hashOn with
ConsistentHash only, backoff max >= base, health-check timeout <= interval), each error at the field it
concerns; the CRD states the rules JSON schema cannot (duration floors, the cross-field ones) as CEL rules.
The compiler turns them into :mod:`kubegate.compiler.policy` (milliseconds, defaults filled in).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError, core_schema

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
#: A path character other than '/', '.', '%', '?', '#' and backslash: printable ASCII (a request path with
#: raw non-ASCII or control characters is refused with 400 before matching, see
#: :mod:`kubegate.dataplane.pathnorm`, so a route path holding one could never match).
_PATH_CHAR = r"[\x21\x22\x24\x26-\x2D\x30-\x3E\x40-\x5B\x5D-\x7E]"
#: A percent-escape of two hex digits, but not of '.', '/' or backslash (%2E, %2F, %5C in either case).
_PATH_ESCAPE = r"%([01346-9A-Fa-f][0-9A-Fa-f]|2[0-9A-Da-d]|5[0-9ABD-Fabd-f])"
#: A segment: not empty, not '.' or '..' (but '...' is a name).
_PATH_SEGMENT = rf"(\.*({_PATH_CHAR}|{_PATH_ESCAPE})(\.|{_PATH_CHAR}|{_PATH_ESCAPE})*|\.\.\.+)"
#: An absolute path in normal form, without query or fragment: segments as above (so no '//' and no dot
#: segment, raw or encoded), an optional trailing slash, no backslash, no encoded slash or backslash (the
#: empty string matches too: the fields' minLength refuses it). RE2 syntax (the API server evaluates it)
#: that Python's ``re`` reads the same way; :data:`PATH_RULES` say the same with readable messages, and a
#: test checks that both refuse the same paths.
PATH_PATTERN = rf"^(/{_PATH_SEGMENT})*/?$"
#: A coarse shape check for the CRD; :func:`split_http_url` does the precise one.
URL_PATTERN = r"^https?://([^/?#@\s:\[\]]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/?$"

MAX_LIST_ITEMS = 16
#: Longest RegularExpression value, in bytes of UTF-8 (RE2 compiles bytes).
MAX_REGEX_BYTES = 1024
#: Most RegularExpression matches one route may carry, header and query-parameter matches together.
MAX_REGEX_MATCHES = 16

_REGEX_TYPE_DESCRIPTION = (
    "Exact: the value equals value. RegularExpression: value is an RE2 pattern (as in the Gateway API: "
    f"no backreferences or lookaround; at most {MAX_REGEX_BYTES} bytes) that must match the whole {{}} "
    f"value. A route has at most {MAX_REGEX_MATCHES} RegularExpression matches, headers and query "
    "parameters together."
)
_IS_REGEX = "has({0}.type) && {0}.type == 'RegularExpression'"


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


def _field_error(field: str | int, message: str, *loc: str | int) -> ValidationError:
    """An error at ``field`` (by alias; or a list index), then ``loc``, of the model or list whose validator
    raises it: pydantic prefixes their own location, so the message names the field, not just its parent."""
    details = InitErrorDetails(
        type=PydanticCustomError("value_error", message), loc=(field, *loc), input=None
    )
    return ValidationError.from_exception_data("GatewayRouteSpec", [details])


@dataclasses.dataclass(frozen=True)
class ListType:
    """A list's ``x-kubernetes-list-type``, and the models' check of what it refuses: an annotation of the
    list's type that both emits the schema keys and validates.

    ``set`` (scalars) and ``map`` (objects keyed by their field ``key``, which must be required) refuse a
    duplicate item or key at apply time, and let server-side apply merge the items of several managers.
    ``atomic``: the list is one value, which server-side apply replaces whole (order matters, or the
    items have no key); with ``key``, its items must still differ in that field, a CEL rule. The models
    refuse the same duplicates, naming the later item, as the API server's "Duplicate value" does.
    ``fold``: the values are header names, equal whatever their case: the models compare them
    case-insensitively, and the CRD says so with a CEL rule (the API server's own check is exact).
    """

    kind: Literal["atomic", "set", "map"]
    key: str | None = None
    fold: bool = False

    def __post_init__(self) -> None:
        assert self.kind != "map" or self.key is not None, self
        assert self.kind != "set" or self.key is None, self
        assert not self.fold or self.kind != "atomic", self

    @property
    def _checked(self) -> bool:
        return self.kind != "atomic" or self.key is not None

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        schema = handler(source)
        if not self._checked:
            return schema
        return core_schema.no_info_after_validator_function(self._refuse_duplicates, schema)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["x-kubernetes-list-type"] = self.kind
        if self.kind == "map":
            json_schema["x-kubernetes-list-map-keys"] = [self.key]
        if self.fold or (self.kind == "atomic" and self.key is not None):
            item = "{}" if self.key is None else f"{{}}.{self.key}"
            x, y = item.format("x"), item.format("y")
            equal = f"{y}.lowerAscii() == {x}.lowerAscii()" if self.fold else f"{y} == {x}"
            message = (
                "header names must be unique (compared case-insensitively)"
                if self.fold
                else f"each {self.key} must be unique"
            )
            json_schema["x-kubernetes-validations"] = [
                {"rule": f"self.all(x, self.exists_one(y, {equal}))", "message": message}
            ]
        return json_schema

    def _refuse_duplicates(self, items: list[Any]) -> list[Any]:
        first: dict[Hashable, tuple[int, Any]] = {}
        for index, item in enumerate(items):
            value = getattr(item, self.key) if self.key is not None else item
            seen = first.setdefault(value.lower() if self.fold else value, (index, value))
            if seen[0] != index:
                message = f"{value!r} is listed twice"
                if seen[1] != value:
                    message += f" (as {seen[1]!r} at [{seen[0]}]: names are compared case-insensitively)"
                raise _field_error(index, message, *(() if self.key is None else (self.key,)))
        return items


#: The list types of the API's lists (see :class:`ListType`; the README lists which list is which, and why).
SET = ListType("set")
HEADER_SET = ListType("set", fold=True)
ATOMIC = ListType("atomic")


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


@dataclasses.dataclass(frozen=True)
class PathRule:
    """One check of a path field: the CEL rule the CRD states (``self`` is the path), the message both
    the API server and the models give, and the same check in Python."""

    rule: str
    message: str
    refuses: Callable[[str], bool]


#: What a path (``match.path.value``, ``rewrite.pathPrefix``/``fullPath``, ``redirect.path``) must be, in
#: the order the models check it (they report the first broken rule; the API server all of them, beside
#: the pattern's own error). Together they refuse exactly what :data:`PATH_PATTERN` refuses.
PATH_RULES = (
    PathRule("self.startsWith('/')", "must start with '/'", lambda p: not p.startswith("/")),
    PathRule(
        "self.matches('^[!-~]*$') && !self.contains('?') && !self.contains('#')",
        "must be printable ASCII without spaces, '?' or '#' (no query string or fragment; percent-encode "
        "other characters)",
        lambda p: re.fullmatch(r"[!-~]*", p) is None or "?" in p or "#" in p,
    ),
    PathRule(
        "!self.contains('//') && !self.matches('/\\\\.\\\\.?(/|$)')",
        "must not contain '.' or '..' segments or '//'",
        lambda p: "//" in p or re.search(r"/\.\.?(/|$)", p) is not None,
    ),
    PathRule(
        "!self.matches('%(2[eEfF]|5[cC])') && !self.contains('\\\\')",
        "must not contain a backslash, or an encoded dot, slash or backslash (%2E, %2F, %5C)",
        lambda p: re.search(r"%(2[eEfF]|5[cC])", p) is not None or "\\" in p,
    ),
    PathRule(
        "!self.matches('%([^0-9A-Fa-f]|.[^0-9A-Fa-f]|.?$)')",
        "must not contain a '%' that does not start an escape of two hex digits",
        lambda p: re.search(r"%([^0-9A-Fa-f]|.[^0-9A-Fa-f]|.?$)", p) is not None,
    ),
)
#: :data:`PATH_RULES` as the CRD's CEL rules of a path field.
_PATH_CEL_RULES: list[Any] = [{"rule": rule.rule, "message": rule.message} for rule in PATH_RULES]
_PATH_COMPILED = re.compile(PATH_PATTERN)


def check_path(value: str) -> str:
    """Raise ValueError (the first broken :data:`PATH_RULES` rule, with the path) unless ``value`` is a
    path the CRD accepts: normal (no '//', '.' or '..' segment, encoded dot or slash, backslash), so that
    a match can be met by a normalised request path and a rewrite can never climb out of a prefix."""
    for rule in PATH_RULES:
        if rule.refuses(value):
            raise ValueError(f"path {value!r} {rule.message}")
    if not _PATH_COMPILED.fullmatch(value):  # the rules say it all; this is the pattern's own check
        raise ValueError(f"path {value!r} is not a normal absolute path")
    return value


def _path_field(*, default: str | None, description: str, alias: str | None = None) -> Any:
    """A path field: :data:`PATH_PATTERN` and :data:`PATH_RULES` for the API server."""
    return Field(
        default=default,
        min_length=1,
        max_length=1024,
        alias=alias,
        description=description,
        json_schema_extra={"pattern": PATH_PATTERN, "x-kubernetes-validations": _PATH_CEL_RULES},
    )


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
    value: Annotated[str, AfterValidator(check_path)] = _path_field(
        default="/",
        description="The path or pattern; starts with '/', without query string or fragment (match query "
        "parameters with queryParams), in the normal form requests are matched in (paths are normalised "
        "first): printable ASCII, no '//', no '.' or '..' segment, no backslash, no encoded dot, slash or "
        "backslash (%2E, %2F, %5C).",
    )


class HeaderMatch(_Spec):
    """A condition on a request header. All header conditions of a route must hold."""

    # An Exact value may be longer than a pattern: the API server checks the pattern's length with CEL.
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"!({_IS_REGEX.format('self')}) || size(self.value) <= {MAX_REGEX_BYTES}",
                    "message": f"a RegularExpression value is at most {MAX_REGEX_BYTES} characters long",
                }
            ]
        }
    )

    name: Token = Field(description="Header name, compared case-insensitively.")
    value: str = Field(min_length=1, max_length=4096, description="The expected value, or a pattern.")
    type: Literal["Exact", "RegularExpression"] = Field(
        default="Exact", description=_REGEX_TYPE_DESCRIPTION.format("header")
    )


class QueryParamMatch(_Spec):
    """A condition on a query parameter. All query-parameter conditions of a route must hold."""

    name: Token = Field(description="Query parameter name, compared case-sensitively.")
    value: str = Field(min_length=1, max_length=1024, description="The expected value, or a pattern.")
    type: Literal["Exact", "RegularExpression"] = Field(
        default="Exact", description=_REGEX_TYPE_DESCRIPTION.format("parameter")
    )


class RouteMatchSpec(_Spec):
    """Which requests the route takes. Every given condition must hold; an empty match takes everything."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": " + ".join(
                        f"(has(self.{field}) ? size(self.{field}.filter(m, {_IS_REGEX.format('m')})) : 0)"
                        for field in ("headers", "queryParams")
                    )
                    + f" <= {MAX_REGEX_MATCHES}",
                    "message": f"at most {MAX_REGEX_MATCHES} RegularExpression matches per route "
                    "(headers and queryParams together)",
                }
            ]
        }
    )

    path: PathMatchSpec = Field(
        default_factory=PathMatchSpec,
        description="Path condition; defaults to the prefix '/' (every path).",
        json_schema_extra={"default": {}},  # the API server stores the default path: `kubectl get` shows it
    )
    methods: Annotated[list[HttpMethod], SET] = Field(
        default_factory=list,
        max_length=len(HTTP_METHODS),
        description="HTTP methods (upper case); empty means any method.",
    )
    hosts: Annotated[list[Hostname], SET] = Field(
        default_factory=list,
        max_length=MAX_LIST_ITEMS,
        description="Host names (Host header, without port); '*.example.com' matches one or more "
        "labels before example.com. Empty means any host.",
    )
    headers: Annotated[list[HeaderMatch], ListType("map", key="name", fold=True)] = Field(
        default_factory=list,
        max_length=MAX_LIST_ITEMS,
        description="Header conditions; all must hold. At most one per header name (names are "
        "case-insensitive): a request has one value per header to compare.",
    )
    query_params: Annotated[list[QueryParamMatch], ListType("map", key="name")] = Field(
        default_factory=list,
        max_length=MAX_LIST_ITEMS,
        alias="queryParams",
        description="Query-parameter conditions; all must hold. At most one per parameter name.",
    )


@functools.lru_cache(maxsize=65536)  # pure, and called several times per backend per compile
def split_http_url(url: str) -> tuple[str, int]:
    """``http[s]://host[:port][/]`` → ``(host, port)``; raise ValueError saying what is wrong otherwise.

    The host comes back in lower case and without IPv6 brackets; the port defaults to 80 (443 for https).
    """
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"url {url!r} must start with 'http://' or 'https://'")
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
        return host, 443 if url.startswith("https://") else 80
    if not 1 <= port <= 65535:
        raise ValueError(f"url {url!r}: the port must be a number from 1 to 65535")
    return host, port


class BackendRef(_Spec):
    """Where matching requests go: a Service of the route's namespace (service + port) or a static url."""

    model_config = ConfigDict(
        json_schema_extra={
            # Exactly one of (service with port) or url: _check_target's rules and messages, for the API
            # server, as CEL rules (a oneOf/not would only say "must validate one and only one schema").
            # The four conditions exclude each other, as _check_target's branches do, so a backend fails
            # one rule at most and the API server gives the message the compiler would.
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.url) && has(self.service))",
                    "message": "set either service (with port) or url, not both",
                },
                {
                    "rule": "!(has(self.url) && !has(self.service) && has(self.port))",
                    "message": "port is only used with service; put the port in the url",
                },
                {
                    "rule": "has(self.url) || has(self.service)",
                    "message": "a backend needs either service (with port) or url",
                },
                {
                    "rule": "has(self.url) || !has(self.service) || has(self.port)",
                    "message": "port is required with service",
                },
                {
                    "rule": "!has(self.tls) || !has(self.url) || self.url.startsWith('https://')",
                    "message": "tls on a url backend needs an https:// url",
                },
            ]
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
        description="A static target 'http://host[:port]' or 'https://host[:port]' (port defaults to 80 "
        "or 443; no path, query or user info), for standalone use and services outside the cluster; "
        "https speaks TLS to it (verified: see tls). Excludes service and port.",
        json_schema_extra={"pattern": URL_PATTERN},
    )
    tls: BackendTlsSpec | None = Field(
        default=None,
        description="Speak TLS to the backend: a service backend with tls does, a url backend when its "
        "scheme is https (tls then only tunes the verification). The certificate is verified against the "
        "system CAs or caSecretRef, for serverName.",
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
        if self.tls is not None and self.url is not None and not self.url.startswith("https://"):
            raise _field_error("tls", "tls on a url backend needs an https:// url")
        return self

    @property
    def speaks_tls(self) -> bool:
        """Whether the gateway speaks TLS to this backend."""
        return self.tls is not None or (self.url is not None and self.url.startswith("https://"))


def _check_duration(value: str) -> str:
    duration.parse_duration(value)
    return value


# --- traffic policies -------------------------------------------------------------------------------
# Each policy is an optional object of the spec; an empty object ({}) turns the policy on with every
# default. Durations are Gateway API durations with a floor, checked here and, for the API server, by a
# CEL rule; cross-field rules (hashOn with ConsistentHash, backoff max >= base, health-check timeout <=
# interval) fail at the field they concern, and are CEL rules of the CRD as well.

#: What ``retry.retryOn`` accepts besides status codes.
RETRY_ON_WORDS = ("connect-failure", "reset", "timeout", "gateway-error", "5xx")
#: One ``retryOn`` entry: a word above, or a 4xx or 5xx status code as a string ("503").
RETRY_ON_PATTERN = r"^(connect-failure|reset|timeout|gateway-error|5xx|[45][0-9][0-9])$"
#: A health-check request target: an absolute path, optionally with a query string.
HEALTH_PATH_PATTERN = r"^/[^?#\s]*(\?[^#\s]*)?$"
#: Upper bound of the "so many in a row" counts (consecutive failures, half-open trial requests).
MAX_STREAK = 1000
#: Upper bound of the health-check thresholds.
MAX_HEALTH_THRESHOLD = 100
#: Upper bound of request counts (minimumRequests, maxConcurrent, maxQueue).
MAX_REQUESTS = 1_000_000


def _at_least(minimum: str) -> AfterValidator:
    """A duration check: Gateway API syntax, and not shorter than ``minimum``."""
    floor = duration.parse_duration(minimum)

    def check(value: str) -> str:
        if duration.parse_duration(value) < floor:
            raise ValueError(f"{value!r} is shorter than the minimum of {minimum}")
        return value

    return AfterValidator(check)


def _at_most(maximum: str) -> AfterValidator:
    """A duration check: not longer than ``maximum``."""
    ceiling = duration.parse_duration(maximum)

    def check(value: str) -> str:
        if duration.parse_duration(value) > ceiling:
            raise ValueError(f"{value!r} is longer than the maximum of {maximum}")
        return value

    return AfterValidator(check)


def _duration_field(default: str | None, minimum: str, description: str, *, alias: str | None = None) -> Any:
    """A duration field; ``description`` says what it is and its default, the syntax and floor follow."""
    return Field(
        default=default,
        alias=alias,
        description=f"{description} A Gateway API duration (e.g. 500ms, 2s, 1m30s), at least {minimum}.",
        json_schema_extra={
            "pattern": duration.DURATION_PATTERN,
            "x-kubernetes-validations": [
                {"rule": f"duration(self) >= duration('{minimum}')", "message": f"must be at least {minimum}"}
            ],
        },
    )


def _ms(value: str) -> int:
    return duration.parse_duration(value)


Duration1ms = Annotated[str, _at_least("1ms")]
Duration100ms = Annotated[str, _at_least("100ms")]


class HashOnSpec(_Spec):
    """What a ConsistentHash load balancer hashes to pick an endpoint: exactly one of the four fields."""

    model_config = ConfigDict(
        json_schema_extra={
            # _exactly_one's rule and message (without its "(got ...)"), as a CEL rule for the API server.
            "x-kubernetes-validations": [
                {
                    "rule": " + ".join(
                        f"(has(self.{key}) ? 1 : 0)" for key in ("header", "cookie", "sourceIP", "queryParam")
                    )
                    + " == 1",
                    "message": "set exactly one of header, cookie, sourceIP, queryParam",
                }
            ]
        }
    )

    header: Token | None = Field(
        default=None, description="Hash the value of this request header (name compared case-insensitively)."
    )
    cookie: Token | None = Field(default=None, description="Hash the value of this cookie of the request.")
    source_ip: bool | None = Field(
        default=None,
        alias="sourceIP",
        description="true: hash the client's IP address (the connection's peer, not X-Forwarded-For).",
        json_schema_extra={"enum": [True]},
    )
    query_param: Token | None = Field(
        default=None,
        alias="queryParam",
        description="Hash the value of this query parameter (name compared case-sensitively).",
    )

    @field_validator("source_ip")
    @classmethod
    def _source_ip_true(cls, value: bool | None) -> bool | None:
        if value is False:
            raise ValueError("set sourceIP: true to hash the client address, or leave it out")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> HashOnSpec:
        given = [
            name
            for name, value in (
                ("header", self.header),
                ("cookie", self.cookie),
                ("sourceIP", self.source_ip),
                ("queryParam", self.query_param),
            )
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of header, cookie, sourceIP, queryParam "
                f"(got {', '.join(given) if given else 'none'})"
            )
        return self


class LoadBalancerSpec(_Spec):
    """How a request picks an endpoint of the backend it was sent to (backends are picked by weight)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.hashOn) == (has(self.type) && self.type == 'ConsistentHash')",
                    "message": "hashOn is required with type ConsistentHash and allowed only with it",
                }
            ]
        }
    )

    type: Literal["RoundRobin", "LeastRequest", "Random", "ConsistentHash"] = Field(
        default="RoundRobin",
        description="RoundRobin (the default): endpoints in turn. LeastRequest: of two endpoints picked at "
        "random, the one with fewer requests in flight (on this replica). Random: uniformly at random. "
        "ConsistentHash: requests with the same key (see hashOn) go to the same endpoint while it is in "
        "rotation; when one of N endpoints leaves, about 1/N of the keys move. Requests without the key "
        "go round robin.",
    )
    hash_on: HashOnSpec | None = Field(
        default=None,
        alias="hashOn",
        description="The key ConsistentHash hashes; required with type ConsistentHash, not allowed with "
        "the other types.",
    )

    @model_validator(mode="after")
    def _hash_on_with_consistent_hash(self) -> LoadBalancerSpec:
        if self.type == "ConsistentHash" and self.hash_on is None:
            raise _field_error(
                "hashOn", "required with type ConsistentHash: set one of header, cookie, sourceIP, queryParam"
            )
        if self.type != "ConsistentHash" and self.hash_on is not None:
            raise _field_error("hashOn", f"only used with type ConsistentHash (type is {self.type})")
        return self


class BackoffSpec(_Spec):
    """The wait before each retry: exponential (base, 2 x base, 4 x base, ... at most max), with full
    jitter (a random wait between 0 and that bound)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.max) || "
                    "duration(self.max) >= duration(has(self.base) ? self.base : '25ms')",
                    "message": "max must be at least base",
                }
            ]
        }
    )

    base: Duration1ms = _duration_field(
        "25ms", "1ms", "Bound of the wait before the first retry; default 25ms."
    )
    max: Duration1ms | None = _duration_field(
        None,
        "1ms",
        "Largest bound of the wait, at least base; default 10 x base (250ms with the default base).",
    )

    @field_validator("max")
    @classmethod
    def _max_at_least_base(cls, value: str | None, info: ValidationInfo) -> str | None:
        base = info.data.get("base")  # absent when base itself is invalid
        if value is not None and base is not None and _ms(value) < _ms(base):
            raise ValueError(f"{value!r} is shorter than base ({base})")
        return value

    def base_ms(self) -> int:
        return _ms(self.base)

    def max_ms(self) -> int:
        """max in milliseconds; 10 x base when unset."""
        return _ms(self.max) if self.max is not None else 10 * self.base_ms()


RetryOn = Annotated[
    str,
    Field(json_schema_extra={"pattern": RETRY_ON_PATTERN}),
    _pattern_check(
        RETRY_ON_PATTERN, f"one of {', '.join(RETRY_ON_WORDS)} or a 4xx or 5xx status code ('503')"
    ),
]


class RetrySpec(_Spec):
    """Retries of failed requests, to another endpoint when there is one. A request is never retried once
    any byte of the response went to the client, nor when its body was not received whole or is over
    64 KiB."""

    attempts: int = Field(
        default=0, ge=0, le=10, description="Retries after the first try, 0 to 10; default 0 (no retries)."
    )
    retry_on: Annotated[list[RetryOn], SET] = Field(
        default=["connect-failure", "reset", "gateway-error"],
        alias="retryOn",
        min_length=1,
        max_length=MAX_LIST_ITEMS,
        description="What is retried: connect-failure (nothing reached the upstream), reset (the connection "
        "broke before a response), timeout (perTryTimeout elapsed), gateway-error (a 502, 503 or 504 from "
        'the upstream), 5xx (any 5xx from the upstream), or a 4xx or 5xx status code as a string ("503", '
        '"429"). Default [connect-failure, reset, gateway-error].',
    )
    per_try_timeout: Duration1ms | None = _duration_field(
        None,
        "1ms",
        "Time limit of each try (the route's timeout still limits the whole request); unset: none.",
        alias="perTryTimeout",
    )
    backoff: BackoffSpec = Field(
        default_factory=BackoffSpec, description="The wait before each retry; default base 25ms, max 250ms."
    )
    budget_percent: int = Field(
        default=20,
        ge=0,
        le=100,
        alias="budgetPercent",
        description="Retries in flight are at most this percentage of the route's requests in flight on a "
        "replica (3 concurrent retries are always allowed), 0 to 100; default 20. Stops retry storms "
        "when every endpoint fails.",
    )
    retry_non_idempotent: bool = Field(
        default=False,
        alias="retryNonIdempotent",
        description="false (the default): POST and PATCH requests are retried only on connect-failure "
        "(nothing reached the upstream), whatever retryOn lists. true: like other methods.",
    )


class CircuitBreakerSpec(_Spec):
    """Fails fast when the route's backends keep failing: while open, requests get 503 ("circuit open",
    with Retry-After) without contacting an upstream. Failures are connect failures, resets, timeouts and
    5xx answers from upstreams (not 503s from the gateway itself). State is kept per backend of the route
    and per data-plane replica."""

    consecutive_failures: int = Field(
        default=5,
        ge=1,
        le=MAX_STREAK,
        alias="consecutiveFailures",
        description=f"Opens after this many failures in a row, 1 to {MAX_STREAK}; default 5.",
    )
    failure_ratio: float = Field(
        default=0.5,
        gt=0,
        le=1,
        alias="failureRatio",
        description="Also opens when this share of the requests finished within window failed (once at "
        "least minimumRequests finished), a number above 0 and at most 1; default 0.5.",
    )
    minimum_requests: int = Field(
        default=20,
        ge=1,
        le=MAX_REQUESTS,
        alias="minimumRequests",
        description=f"Requests that must finish within window before failureRatio applies, 1 to "
        f"{MAX_REQUESTS}; default 20.",
    )
    window: Duration100ms = _duration_field(
        "10s", "100ms", "The rolling window failureRatio and minimumRequests count in; default 10s."
    )
    open_duration: Duration100ms = _duration_field(
        "30s",
        "100ms",
        "How long the circuit stays open before it half-opens; default 30s.",
        alias="openDuration",
    )
    half_open_requests: int = Field(
        default=3,
        ge=1,
        le=MAX_STREAK,
        alias="halfOpenRequests",
        description="Trial requests let through when half-open: if all succeed the circuit closes, if one "
        f"fails it opens again. 1 to {MAX_STREAK}; default 3.",
    )


class OutlierDetectionSpec(_Spec):
    """Passive, per endpoint: an endpoint that keeps failing leaves rotation for a while (on each data-plane
    replica, from what that replica sees). Failures are as for circuitBreaker."""

    consecutive_failures: int = Field(
        default=5,
        ge=1,
        le=MAX_STREAK,
        alias="consecutiveFailures",
        description=f"Ejects an endpoint after this many failures in a row, 1 to {MAX_STREAK}; default 5.",
    )
    ejection_time: Duration100ms = _duration_field(
        "30s",
        "100ms",
        "How long the first ejection lasts; each repeated ejection of the endpoint lasts longer, up to 10 "
        "times this. Default 30s.",
        alias="ejectionTime",
    )
    max_ejection_percent: int = Field(
        default=50,
        ge=0,
        le=100,
        alias="maxEjectionPercent",
        description="Never eject more than this percentage of a backend's endpoints, 0 to 100; default 50.",
    )


class HealthCheckSpec(_Spec):
    """Active health checks: every data-plane replica sends GET path to each endpoint of the route's
    backends every interval. An endpoint failing them leaves rotation until it passes again; when every
    endpoint of a backend is out, all of them are used."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.timeout) || "
                    "duration(self.timeout) <= duration(has(self.interval) ? self.interval : '5s')",
                    "message": "timeout must not be longer than interval",
                }
            ]
        }
    )

    path: Annotated[
        str,
        _pattern_check(
            HEALTH_PATH_PATTERN, "an absolute path, optionally with a query, without fragment or whitespace"
        ),
    ] = Field(
        default="/healthz",
        min_length=1,
        max_length=1024,
        description="Path (and optional query) of the probe; a probe passes with a 2xx or 3xx answer. "
        "Default /healthz.",
        json_schema_extra={"pattern": HEALTH_PATH_PATTERN},
    )
    interval: Duration100ms = _duration_field(
        "5s", "100ms", "Time between two probes of an endpoint; default 5s."
    )
    timeout: Duration1ms | None = _duration_field(
        None,
        "1ms",
        "A probe not answered within this time fails; at most interval. Default 1s, or interval when "
        "that is shorter.",
    )
    unhealthy_threshold: int = Field(
        default=3,
        ge=1,
        le=MAX_HEALTH_THRESHOLD,
        alias="unhealthyThreshold",
        description=f"Failed probes in a row that take an endpoint out of rotation, 1 to "
        f"{MAX_HEALTH_THRESHOLD}; default 3.",
    )
    healthy_threshold: int = Field(
        default=2,
        ge=1,
        le=MAX_HEALTH_THRESHOLD,
        alias="healthyThreshold",
        description=f"Passed probes in a row that put it back, 1 to {MAX_HEALTH_THRESHOLD}; default 2.",
    )

    @field_validator("timeout")
    @classmethod
    def _timeout_within_interval(cls, value: str | None, info: ValidationInfo) -> str | None:
        interval = info.data.get("interval")  # absent when interval itself is invalid
        if value is not None and interval is not None and _ms(value) > _ms(interval):
            raise ValueError(f"{value!r} is longer than interval ({interval})")
        return value

    def timeout_ms(self) -> int:
        """timeout in milliseconds; 1s or interval, whichever is shorter, when unset."""
        return _ms(self.timeout) if self.timeout is not None else min(1_000, _ms(self.interval))


class BulkheadSpec(_Spec):
    """Caps the route's requests in flight on each data-plane replica, so that one slow backend cannot
    take all of a replica's connections. A request over the cap waits in a queue (if maxQueue allows) or
    gets 503 ("route at capacity", with Retry-After)."""

    max_concurrent: int = Field(
        default=100,
        ge=1,
        le=MAX_REQUESTS,
        alias="maxConcurrent",
        description=f"Requests of this route in flight per replica, 1 to {MAX_REQUESTS}; default 100.",
    )
    max_queue: int = Field(
        default=0,
        ge=0,
        le=MAX_REQUESTS,
        alias="maxQueue",
        description="Requests that may wait for a slot while maxConcurrent are in flight, 0 to "
        f"{MAX_REQUESTS}; default 0 (none wait: the answer is 503 at once).",
    )
    queue_timeout: Duration1ms = _duration_field(
        "1s",
        "1ms",
        "How long a request may wait in the queue before it gets 503; default 1s.",
        alias="queueTimeout",
    )


# --- edge policies: CORS, header transforms, rewrite, redirect -----------------------------------------
# Checked here field by field; the compiler checks what needs the whole route (rewrite.pathPrefix needs a
# Prefix path match; a redirect route has no backends) and the data plane's own validators
# (kubegate.dataplane.policies.transforms) refuse forbidden header names with the field named.

#: Origins in ``cors.allowOrigins``: ``*``, ``scheme://host[:port]``, or ``scheme://*.domain[:port]``.
ORIGIN_PATTERN = r"^(\*|https?://(\*\.)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?|https?://\[[0-9a-f:.]+\](:[0-9]{1,5})?)$"
#: A header value set by a transform: visible ASCII and spaces (no CR, LF or other control characters).
HEADER_VALUE_PATTERN = r"^[\x20-\x7e\t]*$"
HeaderValue = Annotated[
    str,
    _pattern_field(HEADER_VALUE_PATTERN, max_length=4096),
    _pattern_check(
        HEADER_VALUE_PATTERN, "a header value of printable ASCII (no CR, LF or control characters)"
    ),
]
Origin = Annotated[
    str,
    _pattern_field(ORIGIN_PATTERN, max_length=512),
    _pattern_check(
        ORIGIN_PATTERN,
        "an origin: '*', 'https://host[:port]' or 'https://*.domain[:port]' (lower case, no path)",
    ),
]


class CorsSpec(_Spec):
    """Cross-origin resource sharing, answered by the gateway: preflight requests (OPTIONS with Origin and
    Access-Control-Request-Method) get 204 with the allowed methods and headers, or 403 for an origin,
    method or header not allowed, without reaching the backend; other requests from an allowed origin get
    the Access-Control-Allow-Origin header on their response. Responses carry Vary: Origin."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.allowCredentials) && self.allowCredentials && "
                    "has(self.allowOrigins) && '*' in self.allowOrigins)",
                    "message": "allowCredentials cannot be used with the origin '*'",
                }
            ]
        }
    )

    allow_origins: Annotated[list[Origin], SET] = Field(
        min_length=1,
        max_length=64,
        alias="allowOrigins",
        description="Origins allowed to call the route: '*' (any), an exact origin such as "
        "'https://app.example.com', or 'https://*.example.com' for any subdomain (never the domain "
        "itself or a lookalike such as 'https://evil-example.com').",
    )
    allow_methods: Annotated[list[HttpMethod], SET] = Field(
        default_factory=lambda: list[HttpMethod](("GET", "HEAD", "POST")),
        max_length=len(HTTP_METHODS),
        alias="allowMethods",
        description="Methods a cross-origin request may use; default GET, HEAD, POST.",
    )
    allow_headers: Annotated[list[Token], HEADER_SET] = Field(
        default_factory=list,
        max_length=64,
        alias="allowHeaders",
        description="Request headers a cross-origin request may send (case-insensitive); default none "
        "beyond the CORS-safelisted ones.",
    )
    expose_headers: Annotated[list[Token], HEADER_SET] = Field(
        default_factory=list,
        max_length=64,
        alias="exposeHeaders",
        description="Response headers the browser lets the calling page read.",
    )
    allow_credentials: bool = Field(
        default=False,
        alias="allowCredentials",
        description="Let the browser send cookies and credentials; not allowed with the origin '*'.",
    )
    max_age: Annotated[str, _at_least("0s")] | None = Field(
        default=None,
        alias="maxAge",
        description="How long a browser may cache a preflight answer, as a duration such as 10m; unset: "
        "the browser's default.",
        json_schema_extra={"pattern": duration.DURATION_PATTERN},
    )

    @model_validator(mode="after")
    def _no_credentials_with_any_origin(self) -> CorsSpec:
        if self.allow_credentials and "*" in self.allow_origins:
            raise _field_error("allowCredentials", "allowCredentials cannot be used with the origin '*'")
        return self


#: Headers a transform can never set, add or remove: hop-by-hop ones, message framing, and those the
#: gateway sets itself (Host, X-Request-Id, X-Forwarded-*).
UNCHANGEABLE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "host",
        "content-length",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    }
)


def _changeable(name: str) -> str:
    if name.lower() in UNCHANGEABLE_HEADERS:
        raise ValueError(
            f"{name!r} cannot be changed by a transform (hop-by-hop, framing, or set by the gateway)"
        )
    return name


ChangeableHeader = Annotated[
    Token,
    AfterValidator(_changeable),
    Field(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"!(self.lowerAscii() in {sorted(UNCHANGEABLE_HEADERS)!r})",
                    "message": "cannot be changed by a transform "
                    "(hop-by-hop, framing, or set by the gateway)",
                }
            ]
        }
    ),
]


class HeaderValueSpec(_Spec):
    name: ChangeableHeader = Field(description="Header name (case-insensitive).")
    value: HeaderValue = Field(description="Header value.")


_HEADER_MAP = ListType("map", key="name", fold=True)


class HeaderOpsSpec(_Spec):
    """Header changes, applied in the Gateway API's order: set, then add, then remove. Hop-by-hop headers,
    Host, Content-Length and Transfer-Encoding cannot be changed (the gateway frames every message)."""

    set: Annotated[list[HeaderValueSpec], _HEADER_MAP] = Field(
        default_factory=list,
        max_length=MAX_LIST_ITEMS,
        description="Headers to set, replacing any value the message had.",
    )
    add: Annotated[list[HeaderValueSpec], _HEADER_MAP] = Field(
        default_factory=list,
        max_length=MAX_LIST_ITEMS,
        description="Headers to add, beside any the message had.",
    )
    remove: Annotated[list[ChangeableHeader], HEADER_SET] = Field(
        default_factory=list,
        max_length=MAX_LIST_ITEMS,
        description="Headers to remove.",
    )


class RewriteSpec(_Spec):
    """Change the path before the request goes to the backend (the query string is kept). Exactly one of
    pathPrefix or fullPath."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.pathPrefix) != has(self.fullPath)",
                    "message": "set exactly one of pathPrefix or fullPath",
                }
            ]
        }
    )

    path_prefix: Annotated[str, AfterValidator(check_path)] | None = _path_field(
        default=None,
        alias="pathPrefix",
        description="Replaces the prefix the route matched (the route's path match must be a Prefix): "
        "with match /api and pathPrefix /v2, /api/users goes to the backend as /v2/users.",
    )
    full_path: Annotated[str, AfterValidator(check_path)] | None = _path_field(
        default=None, alias="fullPath", description="Replaces the whole path."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> RewriteSpec:
        if (self.path_prefix is None) == (self.full_path is None):
            raise ValueError("set exactly one of pathPrefix or fullPath")
        return self


class RedirectSpec(_Spec):
    """Answer with a redirect instead of proxying (a route with a redirect has no backends). Unset parts
    keep the request's own; the query string is kept."""

    scheme: Literal["http", "https"] | None = Field(
        default=None, description="The scheme of the Location; default the request's."
    )
    hostname: Hostname | None = Field(
        default=None, description="The host of the Location; default the request's."
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="The port of the Location; default the request's, or the new scheme's default port when "
        "scheme changes. A scheme's default port is left out of the Location.",
    )
    path: Annotated[str, AfterValidator(check_path)] | None = _path_field(
        default=None, description="The path of the Location; default the request's."
    )
    status_code: Literal[301, 302, 303, 307, 308] = Field(
        default=302, alias="statusCode", description="301, 302 (default), 303, 307 or 308."
    )


# --- authentication ---------------------------------------------------------------------------------------
#: Algorithms ``auth.jwt.algorithms`` may allow ("none" never).
JWT_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    "HS256", "HS384", "HS512",
)  # fmt: skip
JwtAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    "HS256", "HS384", "HS512",
]  # fmt: skip
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
#: A Secret's name (an RFC 1123 subdomain) and a key of its data.
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
#: A JWKS address: an absolute http(s) URL without user info or fragment.
JWKS_URI_PATTERN = r"^https?://[^/?#@\s]+(/[^#\s]*)?$"
#: A claim name copied to a header.
CLAIM_PATTERN = r"^[A-Za-z0-9_.:/-]+$"

SecretName = Annotated[
    str,
    _pattern_field(SECRET_NAME_PATTERN, max_length=253),
    _pattern_check(SECRET_NAME_PATTERN, "a Secret name (a lower-case RFC 1123 subdomain)"),
]


class SecretKeyRef(_Spec):
    """One key of a Secret in the route's namespace."""

    name: SecretName = Field(description="The Secret's name, in the route's namespace.")
    key: Annotated[str, _pattern_check(SECRET_KEY_PATTERN, "a Secret data key")] = Field(
        min_length=1,
        max_length=253,
        description="The key in the Secret's data.",
        json_schema_extra={"pattern": SECRET_KEY_PATTERN},
    )


class SecretRef(_Spec):
    """A Secret in the route's namespace."""

    name: SecretName = Field(description="The Secret's name, in the route's namespace.")


class CaSecretRef(_Spec):
    """A Secret key holding PEM CA certificates, in the route's namespace."""

    name: SecretName = Field(description="The Secret's name, in the route's namespace.")
    key: Annotated[str, _pattern_check(SECRET_KEY_PATTERN, "a Secret data key")] = Field(
        default="ca.crt",
        min_length=1,
        max_length=253,
        description="The key in the Secret's data holding the PEM CA certificates; default ca.crt.",
        json_schema_extra={"pattern": SECRET_KEY_PATTERN},
    )


class BackendTlsSpec(_Spec):
    """How the gateway verifies a backend that speaks TLS (TLS 1.2 or 1.3, ALPN http/1.1)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.caSecretRef) && has(self.insecureSkipVerify) "
                    "&& self.insecureSkipVerify)",
                    "message": "caSecretRef and insecureSkipVerify exclude each other",
                }
            ]
        }
    )

    ca_secret_ref: CaSecretRef | None = Field(
        default=None,
        alias="caSecretRef",
        description="Verify the backend's certificate against these CAs instead of the system's.",
    )
    server_name: Hostname | None = Field(
        default=None,
        alias="serverName",
        description="The name sent as SNI and that the certificate must be valid for; default: the url's "
        "host, or <service>.<namespace>.svc for a service backend.",
    )
    insecure_skip_verify: bool = Field(
        default=False,
        alias="insecureSkipVerify",
        description="Do not verify the backend's certificate at all (encryption without authentication: "
        "for tests only). Excludes caSecretRef.",
    )

    @model_validator(mode="after")
    def _verify_one_way(self) -> BackendTlsSpec:
        if self.insecure_skip_verify and self.ca_secret_ref is not None:
            raise _field_error("insecureSkipVerify", "caSecretRef and insecureSkipVerify exclude each other")
        return self


class ClaimToHeaderSpec(_Spec):
    claim: Annotated[str, _pattern_check(CLAIM_PATTERN, "a claim name")] = Field(
        min_length=1,
        max_length=256,
        description="A top-level claim of the token (a string, number or boolean; others are skipped).",
        json_schema_extra={"pattern": CLAIM_PATTERN},
    )
    header: ChangeableHeader = Field(
        description="The request header it is copied to (a client's own header of that name is dropped)."
    )


class JwtSpec(_Spec):
    """Bearer JSON Web Tokens (RFC 7519) in the Authorization header, verified by every data-plane replica.
    The algorithm comes from this allow-list, never from the token; exp is required; jku, x5u and jwk
    headers are ignored. Keys come from exactly one of jwksUri, jwksSecretRef or secretRef."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.jwksUri) ? 1 : 0) + (has(self.jwksSecretRef) ? 1 : 0) + "
                    "(has(self.secretRef) ? 1 : 0) == 1",
                    "message": "set exactly one of jwksUri, jwksSecretRef or secretRef",
                },
                {
                    "rule": "!has(self.secretRef) || self.algorithms.all(a, a.startsWith('HS'))",
                    "message": "secretRef (an HMAC key) allows HS256, HS384 and HS512 only",
                },
                {
                    "rule": "!has(self.jwksUri) || !self.algorithms.exists(a, a.startsWith('HS'))",
                    "message": "HS256/384/512 need a secret key: secretRef or jwksSecretRef, never jwksUri",
                },
            ]
        }
    )

    algorithms: Annotated[list[JwtAlgorithm], SET] = Field(
        min_length=1,
        max_length=len(JWT_ALGORITHMS),
        description="The accepted signature algorithms (required; 'none' is never accepted).",
    )
    issuer: str | None = Field(
        default=None, min_length=1, max_length=1024, description="When set, the iss claim must equal it."
    )
    audiences: Annotated[list[Annotated[str, Field(min_length=1, max_length=1024)]], SET] = Field(
        default_factory=list,
        max_length=MAX_LIST_ITEMS,
        description="When set, the aud claim must contain one of them.",
    )
    jwks_uri: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        alias="jwksUri",
        description="An http(s) URL of the issuer's JSON Web Key Set, fetched by each data-plane replica "
        "and cached per its Cache-Control max-age (30s to 24h; default 5m).",
        json_schema_extra={"pattern": JWKS_URI_PATTERN},
    )
    jwks_secret_ref: SecretKeyRef | None = Field(
        default=None, alias="jwksSecretRef", description="A JWKS document in a key of a Secret."
    )
    secret_ref: SecretKeyRef | None = Field(
        default=None,
        alias="secretRef",
        description="An HMAC key in a key of a Secret (its raw bytes), for HS256, HS384 and HS512.",
    )
    clock_skew: Annotated[str, _at_least("0s")] = Field(
        default="30s",
        alias="clockSkew",
        description="Tolerance for exp, nbf and iat; default 30s.",
        json_schema_extra={"pattern": duration.DURATION_PATTERN},
    )
    claims_to_headers: Annotated[list[ClaimToHeaderSpec], ListType("map", key="header", fold=True)] = Field(
        default_factory=list,
        max_length=MAX_LIST_ITEMS,
        alias="claimsToHeaders",
        description="Claims copied to request headers for the backend.",
    )
    forward_token: bool = Field(
        default=True,
        alias="forwardToken",
        description="Keep the Authorization header on the request to the backend; default true.",
    )

    @field_validator("jwks_uri")
    @classmethod
    def _check_uri(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(JWKS_URI_PATTERN, value):
            raise ValueError(f"{value!r} is not an http(s) URL without user info or fragment")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtSpec:
        sources = [self.jwks_uri is not None, self.jwks_secret_ref is not None, self.secret_ref is not None]
        if sum(sources) != 1:
            raise ValueError("set exactly one of jwksUri, jwksSecretRef or secretRef")
        hmac = [a in HMAC_ALGORITHMS for a in self.algorithms]
        if self.secret_ref is not None and not all(hmac):
            raise _field_error("algorithms", "secretRef (an HMAC key) allows HS256, HS384 and HS512 only")
        if self.jwks_uri is not None and any(hmac):
            raise _field_error(
                "algorithms", "HS256/384/512 need a secret key: secretRef or jwksSecretRef, never jwksUri"
            )
        return self


class ApiKeySpec(_Spec):
    """API keys from a Secret: every key of the Secret's data is a client name, its value that client's
    key. Keys are compared in constant time and travel hashed (SHA-256) in the route table."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.header) != has(self.query)",
                    "message": "set exactly one of header or query",
                }
            ]
        }
    )

    header: Token | None = Field(default=None, description="The request header that carries the key.")
    query: Token | None = Field(default=None, description="Or the query parameter that carries it.")
    secret_ref: SecretRef = Field(alias="secretRef", description="The Secret holding the clients' keys.")
    client_header: ChangeableHeader | None = Field(
        default=None,
        alias="clientHeader",
        description="When set, the matched client's name is sent to the backend in this header.",
    )

    @model_validator(mode="after")
    def _one_place(self) -> ApiKeySpec:
        if (self.header is None) == (self.query is None):
            raise ValueError("set exactly one of header or query")
        return self


class AuthSpec(_Spec):
    """Who may use the route. With both jwt and apiKey, either one admits a request. A request without
    a valid credential gets 401 (with WWW-Authenticate), a valid token for another issuer or audience 403;
    the backend is not contacted."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.jwt) || has(self.apiKey)", "message": "set jwt, apiKey or both"}
            ]
        }
    )

    jwt: JwtSpec | None = Field(default=None, description="JSON Web Tokens.")
    api_key: ApiKeySpec | None = Field(default=None, alias="apiKey", description="API keys.")

    @model_validator(mode="after")
    def _something(self) -> AuthSpec:
        if self.jwt is None and self.api_key is None:
            raise ValueError("set jwt, apiKey or both")
        return self


# --- rate limiting ---------------------------------------------------------------------------------------
#: Upper bound of ``rateLimit.requestsPerSecond`` and ``burst``.
MAX_RATE = 1_000_000


class RateLimitSpec(_Spec):
    """Admit at most requestsPerSecond requests per second (plus burst at once) per key; others get 429
    with Retry-After and the IETF RateLimit headers. Global limits are shared by every data-plane replica
    through Redis (`kubegate serve --redis-url`); Local ones are enforced by each replica alone."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.key) && self.key == 'Header') == has(self.header)",
                    "message": "header is required with key Header, and only used with it",
                }
            ]
        }
    )

    requests_per_second: Annotated[float, Field(gt=0, le=MAX_RATE)] = Field(
        alias="requestsPerSecond",
        description=f"The sustained rate per second (a fraction such as 0.5 is allowed), at most {MAX_RATE}.",
    )
    burst: int = Field(
        default=0,
        ge=0,
        le=MAX_RATE,
        description="Requests admitted at once beyond the rate: over any time T a key gets at most "
        "requestsPerSecond x T + burst (+1) requests. Default 0.",
    )
    key: Literal["ClientIP", "User", "Header", "Route"] = Field(
        default="ClientIP",
        description="What is limited: ClientIP (the socket peer, or the X-Forwarded-For entry of the first "
        "untrusted hop when the peer is a --trusted-proxies address), User (the identity auth admitted; "
        "requests without one fall back to ClientIP), Header (the value of header; requests without it "
        "fall back to ClientIP), Route (one budget for the whole route). Default ClientIP.",
    )
    header: Token | None = Field(
        default=None, description="The request header that keys the limit (key Header)."
    )
    scope: Literal["Local", "Global"] | None = Field(
        default=None,
        description="Global: one budget shared by all replicas through Redis; Local: each replica alone. "
        "Unset: Global when the data plane has a Redis URL, else Local. Without Redis, or while it is "
        "unreachable, a Global limit is enforced as a Local one of requestsPerSecond / replicas.",
    )

    @model_validator(mode="after")
    def _header_with_key_header(self) -> RateLimitSpec:
        if (self.key == "Header") != (self.header is not None):
            raise _field_error("header", "header is required with key Header, and only used with it")
        return self


# --- response caching ------------------------------------------------------------------------------------
#: Upper bound of ``cache.maxEntryBytes`` (a response held whole in memory or in Redis).
MAX_CACHE_ENTRY_BYTES = 64 * 1024 * 1024
#: Upper bound of ``cache.ttl``.
MAX_CACHE_TTL = "24h"


def _key_query_params(value: Any) -> Any:
    """``keyQueryParams``: "all", "none" or a list of parameter names (the CRD cannot type a union, so
    the check is here and in the compiler's condition)."""
    if isinstance(value, str):
        if value not in ("all", "none"):
            raise ValueError('must be "all", "none" or a list of query parameter names')
        return value
    if isinstance(value, list):
        if not 1 <= len(value) <= MAX_LIST_ITEMS:
            raise ValueError(f"a list of 1 to {MAX_LIST_ITEMS} query parameter names")
        for name in value:
            if not isinstance(name, str) or not 1 <= len(name) <= 256:
                raise ValueError("each query parameter name is a string of 1 to 256 characters")
        if len(set(value)) != len(value):
            raise ValueError("query parameter names must be unique")
        return value
    raise ValueError('must be "all", "none" or a list of query parameter names')


KeyQueryParams = Annotated[
    Any,
    BeforeValidator(_key_query_params),
    WithJsonSchema(
        {
            "x-kubernetes-preserve-unknown-fields": True,
            "description": 'Which query parameters are part of the key: "all" (default; their order does '
            'not matter), "none", or a list of parameter names.',
        }
    ),
]


class CacheSpec(_Spec):
    """Keep GET responses and answer repeated requests without the backend, as a shared cache (RFC 9111):
    the upstream's Cache-Control and Expires decide what is stored and for how long."""

    ttl: Annotated[str, _at_least("1s"), _at_most(MAX_CACHE_TTL)] = Field(
        default="300s",
        description="How long a response stays fresh when the upstream says nothing (no Cache-Control "
        f"max-age/s-maxage, no Expires): a duration from 1s to {MAX_CACHE_TTL}; default 300s.",
        json_schema_extra={
            "pattern": duration.DURATION_PATTERN,
            "x-kubernetes-validations": [
                {
                    "rule": "duration(self) >= duration('1s') && "
                    f"duration(self) <= duration('{MAX_CACHE_TTL}')",
                    "message": f"must be from 1s to {MAX_CACHE_TTL}",
                }
            ],
        },
    )
    store: Literal["Memory", "Redis"] | None = Field(
        default=None,
        description="Memory: each replica its own LRU (kubegate serve --cache-memory-bytes, default "
        "64 MiB); Redis: one cache shared by every replica (kubegate serve --redis-url). Unset: Redis when "
        "the data plane has a Redis URL, else Memory. While Redis is unreachable, requests bypass the cache.",
    )
    max_entry_bytes: int = Field(
        default=1024 * 1024,
        ge=1,
        le=MAX_CACHE_ENTRY_BYTES,
        alias="maxEntryBytes",
        description="Responses with a larger body are not stored (they stream through uncached); "
        f"at most {MAX_CACHE_ENTRY_BYTES}, default 1048576.",
    )
    key_query_params: KeyQueryParams = Field(default="all", alias="keyQueryParams")
    key_headers: Annotated[list[Token], HEADER_SET] = Field(
        default_factory=list,
        max_length=MAX_LIST_ITEMS,
        alias="keyHeaders",
        description="Request headers whose values are part of the key (compared case-insensitively by "
        "name), besides those the upstream names in Vary.",
    )
    per_user: bool = Field(
        default=False,
        alias="perUser",
        description="Make the identity that auth admitted part of the key, so that responses to "
        "authenticated requests (and Cache-Control: private ones) are cached per user. Without it, "
        "requests with credentials bypass the cache.",
    )

    def ttl_seconds(self) -> float:
        return duration.parse_duration(self.ttl) / 1000


MAX_CERTIFICATE_REFS = 8


class TlsSpec(_Spec):
    """TLS termination for the route's hosts on the HTTPS listener (``kubegate serve --tls-port``)."""

    certificate_refs: Annotated[list[SecretRef], ListType("atomic", key="name")] = Field(
        min_length=1,
        max_length=MAX_CERTIFICATE_REFS,
        alias="certificateRefs",
        description="Secrets of type kubernetes.io/tls (keys tls.crt and tls.key, PEM) in the route's "
        "namespace; a handshake whose SNI name is one of the route's hosts gets the first of them whose "
        "certificate names it (else the first).",
    )
    redirect_http: bool = Field(
        default=False,
        alias="redirectHTTP",
        description="Answer plain-HTTP requests for the route's hosts with 301 to https (only while the "
        "route's TLS is served).",
    )


class GatewayRouteSpec(_Spec):
    """A GatewayRoute sends the requests that match to one of its weighted backends."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.redirect) ? (!has(self.backends) || size(self.backends) == 0) "
                    ": (has(self.backends) && size(self.backends) > 0)",
                    "message": "a route needs at least one backend, or a redirect and no backends",
                },
                {
                    "rule": "!has(self.redirect) || (!has(self.rewrite) && !has(self.requestHeaders))",
                    "message": "a route with a redirect cannot have rewrite or requestHeaders",
                },
                {
                    "rule": "!has(self.tls) || (has(self.match) && has(self.match.hosts) "
                    "&& size(self.match.hosts) > 0)",
                    "message": "a route with tls must list match.hosts",
                },
            ]
        }
    )

    gateway_class_name: (
        Annotated[
            str,
            _pattern_check(
                r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
                "a lower-case RFC 1123 subdomain (a Kubernetes object name)",
            ),
        ]
        | None
    ) = Field(
        default=None,
        min_length=1,
        max_length=253,
        alias="gatewayClassName",
        description="The gateway class whose kubegate instance serves this route: the one whose "
        "operator runs with --gateway-class set to this name (chart value gatewayClass). Unset: the "
        "default class, kubegate. A route belongs to exactly one class; one that names a class no "
        "operator serves is served by none and gets no status.",
        json_schema_extra={"pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
    )
    match: RouteMatchSpec = Field(
        default_factory=RouteMatchSpec,
        description="Which requests this route takes; defaults to every request.",
        json_schema_extra={"default": {}},  # the API server stores the default path: `kubectl get` shows it
    )
    backends: Annotated[list[BackendRef], ATOMIC] = Field(
        default_factory=list,
        max_length=MAX_LIST_ITEMS,
        description="Weighted backends; each request goes to one of them, chosen by weight. At least one, "
        "unless the route has a redirect (then none).",
    )
    timeout: Annotated[str, AfterValidator(_check_duration)] | None = Field(
        default=None,
        description="Time limit for the whole request, as a Gateway API duration such as 30s, 1h30m or "
        "500ms; 0s disables the timeout. Unset means the gateway's default.",
        json_schema_extra={"pattern": duration.DURATION_PATTERN},
    )

    load_balancer: LoadBalancerSpec | None = Field(
        default=None,
        alias="loadBalancer",
        description="How a request picks an endpoint of its backend; unset: round robin.",
    )
    retry: RetrySpec | None = Field(default=None, description="Retries of failed requests; unset: none.")
    circuit_breaker: CircuitBreakerSpec | None = Field(
        default=None,
        alias="circuitBreaker",
        description="Fail fast (503) while the backends keep failing; unset: never.",
    )
    outlier_detection: OutlierDetectionSpec | None = Field(
        default=None,
        alias="outlierDetection",
        description="Take endpoints that keep failing out of rotation for a while; unset: never.",
    )
    health_check: HealthCheckSpec | None = Field(
        default=None,
        alias="healthCheck",
        description="Probe every endpoint and keep failing ones out of rotation; unset: no probes.",
    )
    bulkhead: BulkheadSpec | None = Field(
        default=None,
        description="Cap the route's requests in flight per data-plane replica; unset: no cap.",
    )

    auth: AuthSpec | None = Field(
        default=None, description="Require a JWT or an API key; unset: every client is admitted."
    )
    rate_limit: RateLimitSpec | None = Field(
        default=None, alias="rateLimit", description="Limit each client's request rate; unset: no limit."
    )
    cache: CacheSpec | None = Field(
        default=None, description="Cache GET responses at the gateway; unset: nothing is cached."
    )
    cors: CorsSpec | None = Field(
        default=None, description="Answer browsers' cross-origin checks at the gateway; unset: no CORS."
    )
    request_headers: HeaderOpsSpec | None = Field(
        default=None,
        alias="requestHeaders",
        description="Headers to set, add or remove on the request before it goes to the backend.",
    )
    response_headers: HeaderOpsSpec | None = Field(
        default=None,
        alias="responseHeaders",
        description="Headers to set, add or remove on the response before it goes to the client.",
    )
    rewrite: RewriteSpec | None = Field(
        default=None, description="Change the request path before it goes to the backend."
    )
    redirect: RedirectSpec | None = Field(
        default=None,
        description="Answer with a redirect instead of proxying; the route then has no backends.",
    )
    tls: TlsSpec | None = Field(
        default=None,
        description="Terminate TLS for the route's hosts with certificates from Secrets; needs match.hosts.",
    )

    @model_validator(mode="after")
    def _backends_or_redirect(self) -> GatewayRouteSpec:
        if self.redirect is not None:
            if self.backends:
                raise _field_error("backends", "a route with a redirect has no backends")
            if self.rewrite is not None:
                raise _field_error("rewrite", "a route with a redirect cannot rewrite (set redirect.path)")
            if self.request_headers is not None:
                raise _field_error("requestHeaders", "a route with a redirect sends no request upstream")
        elif not self.backends:
            raise _field_error("backends", "at least one backend is required (or a redirect)")
        if self.tls is not None and not self.match.hosts:
            raise _field_error("tls", "a route with tls must list match.hosts")
        return self

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
        max_length=32768,
        description="Human-readable details, naming the field or object concerned (required, as in "
        "metav1.Condition; kubegate always says something).",
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
    conditions: Annotated[list[Condition], ListType("map", key="type")] = Field(
        default_factory=list,
        max_length=8,
        description="Latest observations of the route's state, one per type.",
    )

    def condition(self, type_: str) -> Condition | None:
        """The condition of that type, if present."""
        return next((c for c in self.conditions if c.type == type_), None)
