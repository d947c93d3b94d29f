"""Request-path normalisation: the one canonical form that route matching and upstreams both see.

Routes are matched against the *normalised* path, never the raw one, so that ``/public/../admin``,
``/public/%2e%2e/admin`` or ``//admin`` cannot reach a route the client was not meant to reach through a
more permissive prefix. The rules:

* percent-escapes of unreserved characters (ALPHA / DIGIT / ``-`` ``.`` ``_`` ``~``) are decoded, every other
  escape keeps its encoding with upper-case hex; nothing is decoded twice;
* encoded slashes and backslashes (``%2F``, ``%5C``) follow the gateway-wide ``escaped_slashes`` setting, as
  in Envoy: ``reject`` (the default: :class:`BadPath`, because a backend that decodes them would see
  ``/public/..%2Finternal`` as ``/internal``), ``unescape`` (both become ``/`` before dot segments are
  removed, so the route is matched against what such a backend sees) or ``keep`` (data, forwarded as
  ``%2F``/``%5C``);
* runs of slashes are merged, then dot segments are removed (RFC 3986 §5.2.4), including dots that arrived
  as ``%2e``; a trailing slash is kept;
* :class:`BadPath` (answer 400) for anything that cannot be made safe: not starting with ``/``, climbing above
  the root, malformed escapes, ``%00``, control characters or raw non-ASCII; and for what some backends read
  as a dot segment or a separator although it is none here: a dot segment with path parameters (``..;x``,
  which Tomcat and Spring resolve as ``..``) and a raw backslash (a separator for IIS-style servers).

It runs once per request, so the common case (an already-normal path) is a handful of C-level checks.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = ["ESCAPED_SLASH_MODES", "BadPath", "EscapedSlashes", "is_normal", "normalize_path"]

EscapedSlashes = Literal["reject", "unescape", "keep"]
ESCAPED_SLASH_MODES: Final[tuple[EscapedSlashes, ...]] = ("reject", "unescape", "keep")

_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEXDIGITS: Final = frozenset("0123456789abcdefABCDEF")
_SHOWN: Final = 80  # characters of the offending path quoted in error messages


class BadPath(ValueError):
    """The request path cannot be normalised safely; the request must be rejected with 400."""


def normalize_path(raw: str, escaped_slashes: EscapedSlashes = "reject") -> str:
    """Return the normal form of ``raw`` (the path part of the request-target, query already split off).

    Raises :class:`BadPath` when the path is malformed or would climb above ``/``.
    """
    if raw.isascii() and is_normal(raw.encode("ascii")):  # the fast path: nothing to do
        return raw
    return _normalize_slow(raw, escaped_slashes)


def is_normal(raw: bytes) -> bool:
    """Whether ``raw`` (a path's bytes) is already in normal form by the fast test of
    :func:`normalize_path`: it starts with "/", is printable ASCII without "%" or "\\", and has no empty
    segment and no segment starting with a dot (a superset of the dot segments). One pass over the bytes
    (compiled, a few instructions a byte); the proxy calls it on the request's bytes before decoding them."""
    n = len(raw)
    if n == 0 or raw[0] != 0x2F:  # "/"
        return False
    previous = 0x2F
    for i in range(1, n):
        c = raw[i]
        if c < 0x20 or c > 0x7E or c == 0x25 or c == 0x5C:  # not printable ASCII, "%", "\\"
            return False
        if previous == 0x2F and (c == 0x2F or c == 0x2E):  # "//", "/."
            return False
        previous = c
    return True


def _normalize_slow(raw: str, escaped_slashes: EscapedSlashes) -> str:
    if raw[:1] != "/":
        raise BadPath(f"path must start with '/': {raw[:_SHOWN]!r}")
    if not raw.isascii():
        raise BadPath(f"raw non-ASCII character in path: {raw[:_SHOWN]!r}")
    if not raw.isprintable():  # for ASCII: the C0 controls and DEL
        raise BadPath(f"control character in path: {raw[:_SHOWN]!r}")
    if "\\" in raw:
        raise BadPath(f"backslash in path: {raw[:_SHOWN]!r}")
    path = _decode_unreserved(raw, escaped_slashes) if "%" in raw else raw
    return _remove_dot_segments(path)


def _decode_unreserved(raw: str, escaped_slashes: EscapedSlashes) -> str:
    parts = raw.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        hexpair = part[:2]
        if len(hexpair) != 2 or hexpair[0] not in _HEXDIGITS or hexpair[1] not in _HEXDIGITS:
            raise BadPath(f"malformed percent-escape in path: {raw[:_SHOWN]!r}")
        char = chr(int(hexpair, 16))
        if char in _UNRESERVED:
            out.append(char)
        elif char == "\x00":
            raise BadPath(f"encoded NUL in path: {raw[:_SHOWN]!r}")
        elif char in "/\\" and escaped_slashes != "keep":
            if escaped_slashes == "reject":
                raise BadPath(f"encoded slash or backslash in path: {raw[:_SHOWN]!r}")
            out.append("/")
        else:
            out.append("%" + hexpair.upper())
        out.append(part[2:])
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    segments: list[str] = []
    trailing_slash = False
    # path starts with "/", so the first element of the split is always "" and is skipped.
    for segment in path.split("/")[1:]:
        if segment == "..":
            if not segments:
                raise BadPath(f"path climbs above the root: {path[:_SHOWN]!r}")
            segments.pop()
            trailing_slash = True
        elif segment in ("", "."):  # an empty segment is a duplicate (or trailing) slash
            trailing_slash = True
        elif segment[:1] == "." and segment.split(";", 1)[0] in (".", ".."):
            raise BadPath(f"dot segment with path parameters: {path[:_SHOWN]!r}")
        else:
            segments.append(segment)
            trailing_slash = False
    if not segments:
        return "/"
    return "/" + "/".join(segments) + ("/" if trailing_slash else "")
