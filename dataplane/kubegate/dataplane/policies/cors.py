"""CORS for one route: answer browsers' preflights at the gateway and label actual responses.

A route with ``cors`` gets one :class:`CorsPolicy`, built when the route table is loaded. The proxy asks
:meth:`CorsPolicy.is_preflight` on the request head; a preflight (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``) is answered with :meth:`CorsPolicy.preflight` and never reaches the
backend. Every other request of the route is forwarded as usual and :meth:`CorsPolicy.response_headers` are
added to its response. Everything that does not depend on the request is computed in ``__init__``; the
header lists returned are shared between requests where they can be, so **callers must not mutate them**.

Origins (``allow_origins``), each checked in ``__init__`` (``ValueError`` naming the entry otherwise):

* an exact origin ``scheme://host[:port]``: scheme ``http`` or ``https``, no userinfo, path, query or
  trailing slash; scheme and host are compared case-insensitively and an explicit default port (``:443``
  for https, ``:80`` for http) is the same origin as none;
* ``https://*.example.com[:port]``: one **or more** whole DNS labels in front of ``.example.com``, with the
  same scheme and the same port (the default one when the pattern has none). It does not match
  ``https://example.com`` itself, ``https://evil-example.com``, ``https://example.com.evil.io``,
  ``http://x.example.com`` or ``https://x.example.com:8443``. The ``*`` must be the whole leftmost label
  and the rest must have at least two labels (``https://*.com`` is refused);
* ``"*"`` alone: any origin, answered with ``Access-Control-Allow-Origin: *``. Refused together with
  ``allow_credentials`` (a browser ignores ``*`` on a credentialed request, and echoing every origin with
  credentials would hand any site the user's session).

A request's ``Origin`` must be a serialised origin (RFC 6454 §6.2) to match anything but ``"*"``: ``null``,
userinfo, paths, spaces, non-ASCII and the like are disallowed origins. When it matches, the value the
client sent is echoed (it has passed the strict grammar, so it is safe to copy into a header).

Methods are compared case-sensitively (``patch`` is not ``PATCH``, as in Fetch), header names
case-insensitively. Following the Gateway API ``HTTPCORSFilter``: the CORS-safelisted methods ``GET``,
``HEAD`` and ``POST`` are always allowed; ``allow_methods=("*",)`` allows any method (the response says
``*``, or echoes the requested method when credentials are allowed, where ``*`` would be a literal);
``allow_headers=("*",)`` allows any header and echoes the requested ones (a literal ``*`` would not cover
``Authorization`` in browsers); ``expose_headers=("*",)`` is refused with credentials.

Preflight answers: allowed → 204 with ``Access-Control-Allow-Origin``, ``-Allow-Methods`` (the configured
list), ``-Allow-Headers`` (the configured list, or the echoed request for ``*``), ``-Max-Age`` (when
``max_age`` is set), ``-Allow-Credentials: true`` (when configured) and
``Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers``; a disallowed origin,
method or header → 403 with only that ``Vary``. Actual responses always get ``Vary: Origin`` (also when the
origin is missing or disallowed, so that a shared cache never serves one origin's answer to another) and,
for an allowed origin, ``Access-Control-Allow-Origin``, ``-Expose-Headers`` and ``-Allow-Credentials``;
the upstream's own ``Access-Control-*`` headers (:data:`OWN_HEADERS`) are for the proxy to drop, so that a
backend cannot widen what the route allows.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["OWN_HEADERS", "SAFELISTED_METHODS", "CorsPolicy", "Headers"]

Headers = list[tuple[bytes, bytes]]

#: Fetch's CORS-safelisted methods: browsers accept them whatever Access-Control-Allow-Methods says.
SAFELISTED_METHODS: Final[frozenset[bytes]] = frozenset({b"GET", b"HEAD", b"POST"})

_ALLOW_ORIGIN: Final = b"access-control-allow-origin"
_ALLOW_METHODS: Final = b"access-control-allow-methods"
_ALLOW_HEADERS: Final = b"access-control-allow-headers"
_ALLOW_CREDENTIALS: Final = b"access-control-allow-credentials"
_EXPOSE_HEADERS: Final = b"access-control-expose-headers"
_MAX_AGE: Final = b"access-control-max-age"
_VARY: Final = b"vary"
#: The response headers the policy answers with (``vary`` aside): on a route with CORS the gateway's
#: answer is the only one, so the proxy drops the upstream's own copies of these before adding ours.
OWN_HEADERS: Final[frozenset[bytes]] = frozenset(
    {_ALLOW_ORIGIN, _ALLOW_METHODS, _ALLOW_HEADERS, _ALLOW_CREDENTIALS, _EXPOSE_HEADERS, _MAX_AGE}
)
_VARY_ACTUAL: Final = (_VARY, b"Origin")
_VARY_PREFLIGHT: Final = (_VARY, b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")

_DEFAULT_PORTS: Final = {b"http": 80, b"https": 443}
# A serialised origin, lower-cased first: scheme "://" host [":" port]. The host is dot-separated non-empty
# labels (so no empty label, no leading or trailing dot) or a bracketed IPv6 literal; nothing else may
# follow (no path, query, userinfo, whitespace).
_ORIGIN_RE: Final = re.compile(
    rb"(https?)://([a-z0-9_-]+(?:\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\])(?::([0-9]{1,5}))?"
)
# RFC 9110 §5.6.2 token (methods and header names).
_TOKEN_RE: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_MEMO_SIZE: Final = (
    512  # per policy: distinct request origins remembered (clients choose them: keep it bounded)
)

_Origin = tuple[bytes, bytes, int]  # (scheme, host, port), lower-case, port explicit


def _parse_origin(value: bytes) -> _Origin | None:
    """``value`` as (scheme, host, port) if it is a serialised http(s) origin, else None."""
    match = _ORIGIN_RE.fullmatch(value.lower())
    if match is None:
        return None
    scheme, host, port_text = match.groups()
    port = int(port_text) if port_text else _DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        return None
    return scheme, host, port


def _key(origin: _Origin) -> bytes:
    return b"%s://%s:%d" % origin


def _serialise(origin: _Origin) -> bytes:
    """How a browser writes the origin (default port omitted)."""
    scheme, host, port = origin
    if port == _DEFAULT_PORTS[scheme]:
        return b"%s://%s" % (scheme, host)
    return b"%s://%s:%d" % origin


def _dedupe(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _tokens(field: str, items: tuple[str, ...]) -> tuple[bytes, ...]:
    """Check a list of tokens (or a lone ``*``); returns them encoded, in order, duplicates dropped."""
    if "*" in items and len(set(items)) > 1:
        raise ValueError(f"{field}: '*' cannot be combined with other entries")
    out: list[bytes] = []
    for index, item in enumerate(items):
        encoded = item.encode("ascii", "replace")
        if item != "*" and _TOKEN_RE.fullmatch(encoded) is None:
            raise ValueError(f"{field}[{index}]: {item!r} is not a valid token (RFC 9110 §5.6.2)")
        out.append(encoded)
    return tuple(dict.fromkeys(out))


class CorsPolicy:
    """See the module docstring. Pure and synchronous; the only state is a bounded memo of origins."""

    __slots__ = (
        "_any_headers",
        "_any_method",
        "_any_origin",
        "_denied_preflight",
        "_echo_method",
        "_exact",
        "_headers_allowed",
        "_memo",
        "_methods",
        "_preflight_any_origin",
        "_preflight_headers",
        "_preflight_methods",
        "_preflight_rest",
        "_preflight_tail",
        "_response_any_origin",
        "_response_tail",
        "_serialised",
        "_vary_only",
        "_wildcards",
        "allow_credentials",
        "allow_origins",
    )

    def __init__(
        self,
        *,
        allow_origins: tuple[str, ...],
        allow_methods: tuple[str, ...] = (),
        allow_headers: tuple[str, ...] = (),
        expose_headers: tuple[str, ...] = (),
        allow_credentials: bool = False,
        max_age: int | None = None,
    ) -> None:
        self.allow_origins = _dedupe(allow_origins)
        self.allow_credentials = allow_credentials
        self._any_origin = "*" in self.allow_origins
        if self._any_origin and len(self.allow_origins) > 1:
            raise ValueError("allowOrigins: '*' cannot be combined with other origins")
        if self._any_origin and allow_credentials:
            raise ValueError(
                "allowOrigins: '*' cannot be used with allowCredentials: true (list the origins instead)"
            )
        self._exact: frozenset[bytes] = frozenset()  # keys: b"scheme://host:port"
        self._serialised: frozenset[bytes] = frozenset()  # the same origins as browsers write them
        self._wildcards: tuple[tuple[bytes, bytes, int], ...] = ()  # (scheme, ".suffix", port)
        if not self._any_origin:
            self._compile_origins()

        methods = _tokens("allowMethods", allow_methods)
        self._any_method = methods == (b"*",)
        self._methods = frozenset(methods) | SAFELISTED_METHODS
        headers = _tokens("allowHeaders", allow_headers)
        self._any_headers = headers == (b"*",)
        self._headers_allowed = frozenset(h.lower() for h in headers)
        expose = _tokens("exposeHeaders", expose_headers)
        if expose == (b"*",) and allow_credentials:
            raise ValueError(
                "exposeHeaders: '*' cannot be used with allowCredentials: true (browsers read it as a"
                " header named '*'); list the headers instead"
            )
        if max_age is not None and max_age < 0:
            raise ValueError(f"maxAge: must not be negative, got {max_age}")

        # Preflight, after Access-Control-Allow-Origin: methods, headers, max-age, credentials, vary.
        self._echo_method = self._any_method and allow_credentials  # where "*" would be a literal
        self._preflight_methods: tuple[tuple[bytes, bytes], ...] = ()
        if methods and not self._echo_method:
            self._preflight_methods = ((_ALLOW_METHODS, b", ".join(methods)),)
        self._preflight_headers: tuple[tuple[bytes, bytes], ...] = ()
        if headers and not self._any_headers:  # "*" echoes the requested headers
            self._preflight_headers = ((_ALLOW_HEADERS, b", ".join(headers)),)
        rest: Headers = []
        if max_age is not None:
            rest.append((_MAX_AGE, b"%d" % max_age))
        if allow_credentials:
            rest.append((_ALLOW_CREDENTIALS, b"true"))
        rest.append(_VARY_PREFLIGHT)
        self._preflight_rest = tuple(rest)
        self._preflight_tail = (*self._preflight_methods, *self._preflight_headers, *rest)
        self._preflight_any_origin: Headers = [(_ALLOW_ORIGIN, b"*"), *self._preflight_tail]
        self._denied_preflight: Headers = [_VARY_PREFLIGHT]

        # Actual responses, after Access-Control-Allow-Origin: expose, credentials, vary.
        tail: Headers = []
        if expose:
            tail.append((_EXPOSE_HEADERS, b", ".join(expose)))
        if allow_credentials:
            tail.append((_ALLOW_CREDENTIALS, b"true"))
        tail.append(_VARY_ACTUAL)
        self._response_tail = tuple(tail)
        self._response_any_origin: Headers = [(_ALLOW_ORIGIN, b"*"), *tail]
        self._vary_only: Headers = [_VARY_ACTUAL]
        # request Origin -> its actual-response headers (self._vary_only when disallowed)
        self._memo: dict[bytes, Headers] = {}

    def _compile_origins(self) -> None:
        exact: set[bytes] = set()
        serialised: set[bytes] = set()
        wildcards: list[tuple[bytes, bytes, int]] = []
        for index, text in enumerate(self.allow_origins):
            field = f"allowOrigins[{index}]"
            if not text.isascii():
                raise ValueError(f"{field}: {text!r} must be ASCII (write internationalised names as xn--)")
            raw = text.encode("ascii")
            star = raw.find(b"://*.")
            if star != -1:  # "scheme://*.suffix[:port]": parse with a stand-in label for the "*"
                parsed = _parse_origin(raw[:star] + b"://x" + raw[star + 4 :])
            else:
                parsed = _parse_origin(raw)
            if parsed is None:
                problem = "is not an origin: expected scheme://host[:port] with scheme http or https"
                if raw.lower() == b"null":
                    problem = "is not allowed: 'null' is the origin of sandboxed and file: documents"
                elif b"*" in raw:
                    problem = "has a misplaced '*': only 'scheme://*.domain[:port]' or '*' alone are allowed"
                elif b"@" in raw:
                    problem = "must not contain userinfo ('@')"
                elif raw.rstrip(b"/") != raw or b"/" in raw.partition(b"://")[2]:
                    problem = "must not have a path (not even a trailing '/')"
                raise ValueError(f"{field}: {text!r} {problem}")
            if star == -1:
                exact.add(_key(parsed))
                serialised.add(_serialise(parsed))
                continue
            scheme, host, port = parsed
            suffix = host[1:]  # ".example.com" (host is b"x.example.com")
            if host[:1] == b"[" or suffix.count(b".") < 2:
                raise ValueError(
                    f"{field}: {text!r} is too broad: the part after '*.' must have at least two labels"
                )
            wildcards.append((scheme, suffix, port))
        self._exact = frozenset(exact)
        self._serialised = frozenset(serialised)
        self._wildcards = tuple(wildcards)

    # --- matching -----------------------------------------------------------------------------------------
    def origin_allowed(self, origin: bytes) -> bool:
        """Whether ``origin`` (an ``Origin`` header value) may read this route's responses."""
        return self._lookup(origin) is not self._vary_only

    def _lookup(self, origin: bytes) -> Headers:
        """The actual-response headers for a present ``Origin`` (``self._vary_only`` when disallowed)."""
        if self._any_origin:
            return self._response_any_origin
        known = self._memo.get(origin)
        if known is not None:
            return known
        headers = self._vary_only
        if origin in self._serialised or self._match(origin):
            headers = [(_ALLOW_ORIGIN, origin), *self._response_tail]
        if len(self._memo) >= _MEMO_SIZE:
            self._memo.clear()
        self._memo[origin] = headers
        return headers

    def _match(self, origin: bytes) -> bool:
        parsed = _parse_origin(origin)
        if parsed is None:
            return False
        if _key(parsed) in self._exact:
            return True
        scheme, host, port = parsed
        # host is a run of non-empty labels, so ending with ".example.com" means one or more whole labels
        # in front of it: not "example.com", not "evil-example.com", not "example.com.evil.io".
        return any(
            scheme == w_scheme and port == w_port and host.endswith(w_suffix)
            for w_scheme, w_suffix, w_port in self._wildcards
        )

    # --- the proxy's entry points -------------------------------------------------------------------------
    @staticmethod
    def is_preflight(method: bytes, origin: bytes | None, acr_method: bytes | None) -> bool:
        """``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``: answered by the gateway."""
        return method == b"OPTIONS" and origin is not None and acr_method is not None

    def preflight(self, origin: bytes, acr_method: bytes, acr_headers: bytes | None) -> tuple[int, Headers]:
        """Status and headers of the gateway's answer to a preflight (204 allowed, 403 denied).

        ``acr_headers`` is the ``Access-Control-Request-Headers`` value (several headers joined with ``,``).
        The list returned may be shared: do not mutate it.
        """
        denied = 403, self._denied_preflight
        if self._lookup(origin) is self._vary_only:
            return denied
        if acr_method not in self._methods and not (
            self._any_method and _TOKEN_RE.fullmatch(acr_method) is not None
        ):
            return denied
        echoed: bytes | None = None
        if acr_headers:
            names = [name.strip(b" \t").lower() for name in acr_headers.split(b",")]
            names = [name for name in names if name]
            if self._any_headers:
                if any(_TOKEN_RE.fullmatch(name) is None for name in names):
                    return denied
                echoed = b", ".join(names) if names else None
            elif not self._headers_allowed.issuperset(names):
                return denied
        if echoed is None and not self._echo_method:
            if self._any_origin:
                return 204, self._preflight_any_origin
            return 204, [(_ALLOW_ORIGIN, origin), *self._preflight_tail]
        headers: Headers = [(_ALLOW_ORIGIN, b"*" if self._any_origin else origin)]
        if self._echo_method:
            headers.append((_ALLOW_METHODS, acr_method))
        else:
            headers.extend(self._preflight_methods)
        if echoed is not None:
            headers.append((_ALLOW_HEADERS, echoed))
        headers.extend(self._preflight_rest)
        return 204, headers

    def response_headers(self, origin: bytes | None) -> Headers:
        """Headers to add to an actual (non-preflight) response of the route. Shared list: do not mutate."""
        if origin is None:
            return self._vary_only
        return self._lookup(origin)

    def __repr__(self) -> str:
        origins = f"{len(self._exact)} exact, {len(self._wildcards)} wildcard"
        if self._any_origin:
            origins = "*"
        return f"<CorsPolicy origins={origins} credentials={self.allow_credentials}>"
