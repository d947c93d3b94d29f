"""Route matching: which compiled route (if any) serves a request, with Gateway API precedence.

The data plane builds one :class:`Matcher` per route table (see :mod:`kubegate.compiler.table`) and swaps it
in atomically; :meth:`Matcher.match` then runs once per request, so it must not scan the table. Layout:

* **host buckets**: one per exact host, one per wildcard suffix (``*.example.com`` -> ``.example.com``) and
  one for routes without hosts. A request tries its exact host first, then the wildcard suffixes from the
  longest to the shortest, then the any-host bucket; the first bucket that yields a match wins.
* inside a bucket, Exact paths live in a dict and Prefix / Glob routes in a **trie of path segments** (literal
  children, a ``*`` child, per-node lists), so a lookup visits only the nodes along the request path.
* every route gets a **global rank** at build time from its Gateway API precedence key (Exact path > longest
  literal prefix, Prefix before Glob on a tie > has methods > most header matches > most query matches >
  oldest ``created``, empty last > ``id``). Candidate lists are kept in rank order; matching evaluates the
  candidates best-first and returns the first whose method, header and query conditions all hold.
* a RegularExpression condition uses the RE2 pattern compiled when the table was validated and kept on
  its :class:`~kubegate.compiler.table.ValueMatch` (:mod:`kubegate.compiler.regex`): it must match the whole
  value, in time linear in the value, and it goes away with the table.

``path`` must already be normalised by :func:`kubegate.dataplane.pathnorm.normalize_path`. Glob patterns
support ``*`` (exactly one segment) and a final ``**`` (zero or more segments) as whole segments only;
:func:`validate_glob` is the check the compiler runs so that the matcher never sees anything else.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Final, Generic, Protocol, TypeVar
from urllib.parse import parse_qsl

from kubegate.compiler import regex, table
from kubegate.dataplane import pathnorm

__all__ = ["Matcher", "normalize_host", "validate_glob"]

T = TypeVar("T")

# (name, expected value, compiled pattern or None for an Exact comparison)
_Cond = tuple[str, str, "regex.Pattern | None"]
# (rank, methods or None for any, header conditions, query conditions, value). Tuples, not objects: the hot
# loop unpacks them, and sorting by rank is an int comparison.
_Entry = tuple[int, "frozenset[str] | None", tuple[_Cond, ...], tuple[_Cond, ...], T]
_by_rank: Final = operator.itemgetter(0)
_by_key: Final = operator.itemgetter(0, 1)  # (precedence key, position in the table)


def normalize_host(host: str) -> str:
    """Lower-case, drop the port and a trailing dot; an IPv6 literal keeps its brackets."""
    if host[:1] == "[":
        end = host.find("]")
        return host[: end + 1].lower() if end != -1 else host.lower()
    colon = host.find(":")
    if colon != -1:
        host = host[:colon]
    if host[-1:] == ".":
        host = host[:-1]
    return host.lower()


def validate_glob(pattern: str) -> str | None:
    """Return why ``pattern`` is not a supported Glob path value, or None when it is.

    Supported: an absolute, normalised path whose segments are literals, ``*`` (exactly one segment) or, as
    the last segment only, ``**`` (zero or more segments). A trailing slash is ignored when matching.
    """
    if not pattern.startswith("/"):
        return "a glob pattern must start with '/'"
    body = pattern[1:-1] if pattern.endswith("/") else pattern[1:]
    segments = body.split("/") if body else []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == "**":
            if index != last:
                return "'**' is only supported as the last segment"
        elif segment != "*" and "*" in segment:
            return f"'*' must be a whole segment, not part of {segment!r}"
        elif segment in ("", ".", ".."):
            return "a glob pattern must not contain empty, '.' or '..' segments"
    try:
        normal = pathnorm.normalize_path(pattern, "keep")  # valid whatever --escaped-slashes says
    except pathnorm.BadPath as exc:
        return str(exc)
    if normal != pattern:
        return f"a glob pattern must be in normal form: {normal!r}"
    return None


class HeaderLookup(Protocol):
    """What the matcher asks of a request's headers (or parsed query): one value by lower-case name.
    A dict is one; the proxy's exchange is another, which decodes its headers only when first asked."""

    def get(self, name: str, /) -> str | None: ...


class _Node(Generic[T]):
    """One trie node; ``prefix`` holds Prefix routes and ``/**`` globs, ``terminal`` globs ending here."""

    __slots__ = ("children", "prefix", "star", "terminal")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}
        self.star: _Node[T] | None = None
        self.prefix: list[_Entry[T]] | None = None
        self.terminal: list[_Entry[T]] | None = None


class _Bucket(Generic[T]):
    """The routes of one host bucket: Exact paths by string, Prefix and Glob routes in a segment trie."""

    __slots__ = ("exact", "root", "size")

    def __init__(self) -> None:
        self.exact: dict[str, list[_Entry[T]]] = {}
        self.root: _Node[T] = _Node()
        self.size = 0

    def add(self, prep: _Prep, entry: _Entry[T]) -> None:
        """Entries must be added in rank order: every list then stays sorted without sorting."""
        self.size += 1
        if prep.exact is not None:
            self.exact.setdefault(prep.exact, []).append(entry)
            return
        node = self.root
        for segment in prep.segments:
            if segment is None:  # a Glob's '*'
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                child = node.children.get(segment)
                if child is None:
                    child = node.children[segment] = _Node()
                node = child
        if prep.everything_below:
            if node.prefix is None:
                node.prefix = []
            node.prefix.append(entry)
        else:
            if node.terminal is None:
                node.terminal = []
            node.terminal.append(entry)

    def find(
        self, method: str, path: str, segs: list[str], n: int, query: str, headers: HeaderLookup
    ) -> _Entry[T] | None:
        """The best matching entry; ``segs[1:n]`` are the path's segments (no trailing empty one)."""
        exact = self.exact.get(path)
        if exact is not None:
            found = _first(exact, method, query, headers)
            if found is not None:
                return found
        # Walk the literal path iteratively; branch into '*' children recursively. As long as no '*' branch
        # and no terminal list was involved, deeper lists outrank shallower ones (each literal segment adds
        # characters), so the lists can be tried deepest first without merging.
        lists: list[list[_Entry[T]]] = []
        ordered = True
        node = self.root
        i = 1
        while True:
            if node.prefix is not None:
                lists.append(node.prefix)
            if i >= n:
                if node.terminal is not None:
                    lists.append(node.terminal)
                    ordered = False
                break
            if node.star is not None:
                _walk(node.star, segs, i + 1, n, lists)
                ordered = False
            child = node.children.get(segs[i])
            if child is None:
                break
            node = child
            i += 1
        if not lists:
            return None
        if ordered:
            for candidates in reversed(lists):
                found = _first(candidates, method, query, headers)
                if found is not None:
                    return found
            return None
        merged = [entry for candidates in lists for entry in candidates]
        merged.sort(key=_by_rank)
        return _first(merged, method, query, headers)


def _walk(node: _Node[T], segs: list[str], i: int, n: int, lists: list[list[_Entry[T]]]) -> None:
    """Collect candidate lists below ``node``, which has consumed ``segs[1:i]``."""
    if node.prefix is not None:
        lists.append(node.prefix)
    if i >= n:
        if node.terminal is not None:
            lists.append(node.terminal)
        return
    if node.star is not None:
        _walk(node.star, segs, i + 1, n, lists)
    child = node.children.get(segs[i])
    if child is not None:
        _walk(child, segs, i + 1, n, lists)


def _first(candidates: list[_Entry[T]], method: str, query: str, headers: HeaderLookup) -> _Entry[T] | None:
    params: dict[str, str] | None = None
    for entry in candidates:
        _, methods, header_conds, query_conds, _ = entry
        if methods is not None and method not in methods:
            continue
        if header_conds and not _holds(header_conds, headers):
            continue
        if query_conds:
            if params is None:
                params = _parse_query(query)
            if not _holds(query_conds, params):
                continue
        return entry
    return None


def _holds(conds: tuple[_Cond, ...], values: HeaderLookup) -> bool:
    for name, expected, pattern in conds:
        actual = values.get(name)
        if actual is None:
            return False
        if pattern is None:
            if actual != expected:
                return False
        elif not pattern.fullmatch(actual):
            return False
    return True


def _parse_query(query: str) -> dict[str, str]:
    """``parse_qsl`` semantics (blank values kept: ``?debug=`` is present); the first value wins."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(name, value)
    return params


def _segments(value: str) -> list[str]:
    """Path segments of a route's Prefix or Glob value; leading and trailing slashes do not count."""
    body = value.strip("/")
    return body.split("/") if body else []


def _precedence_key(route: table.CompiledRoute) -> tuple[object, ...]:
    match = route.match
    path = match.path
    if path.type == "Exact":
        path_key: tuple[int, int, int] = (0, 0, 0)
    elif path.type == "Prefix":
        path_key = (1, -len(path.value.rstrip("/") or "/"), 0)
    else:
        literal = sum(len(s) + 1 for s in _segments(path.value) if s not in ("*", "**"))
        path_key = (1, -literal, 1)
    return (
        path_key,
        0 if match.methods else 1,
        -len(match.headers),
        -len(match.query_params),
        route.created == "",  # no timestamp sorts as the newest
        route.created,
        route.id,
    )


class _Prep:
    """What a matcher needs of one route, apart from its rank: computed once per route object and reused
    by the next matcher (a table swap that changes a few of 10,000 routes prepares a few)."""

    __slots__ = ("buckets", "everything_below", "exact", "headers", "key", "methods", "query", "segments")

    def __init__(self, route: table.CompiledRoute) -> None:
        match = route.match
        path = match.path
        if path.type == "Glob":
            problem = validate_glob(path.value)
            if problem is not None:
                raise ValueError(f"route {route.id}: glob {path.value!r}: {problem}")
        self.key = _precedence_key(route)
        self.methods = frozenset(match.methods) if match.methods else None
        self.headers = tuple(_condition(route, c, lower=True) for c in match.headers)
        self.query = tuple(_condition(route, c, lower=False) for c in match.query_params)
        names = tuple(dict.fromkeys(normalize_host(h) for h in match.hosts))
        self.buckets: tuple[str, ...] = () if "*" in names else names
        self.exact = path.value if path.type == "Exact" else None
        segments: list[str | None] = list(_segments(path.value))
        self.everything_below = path.type == "Prefix"
        if path.type == "Glob":
            if segments and segments[-1] == "**":
                segments.pop()
                self.everything_below = True
            segments = [None if seg == "*" else seg for seg in segments]
        self.segments = tuple(segments)


class Matcher(Generic[T]):
    """An immutable index over ``(route, value)`` pairs; :meth:`match` returns the value of the best route."""

    __slots__ = ("_any", "_by_host", "_by_suffix", "_prepared", "_size")

    def __init__(
        self, entries: Iterable[tuple[table.CompiledRoute, T]], *, previous: Matcher[T] | None = None
    ) -> None:
        """Index ``entries``; routes that ``previous`` indexed (the same objects) reuse its preparation."""
        self._by_host: dict[str, _Bucket[T]] = {}
        self._by_suffix: dict[str, _Bucket[T]] = {}
        self._any: _Bucket[T] | None = None
        known: dict[int, tuple[table.CompiledRoute, _Prep]] = previous._prepared if previous else {}
        prepared: dict[int, tuple[table.CompiledRoute, _Prep]] = {}
        keyed: list[tuple[tuple[object, ...], int, _Prep, T]] = []
        for index, (route, value) in enumerate(entries):
            hit = known.get(id(route))
            prep = hit[1] if hit is not None and hit[0] is route else _Prep(route)
            prepared[id(route)] = (route, prep)
            keyed.append((prep.key, index, prep, value))
        keyed.sort(key=_by_key)
        self._prepared: dict[int, tuple[table.CompiledRoute, _Prep]] = prepared
        self._size = len(keyed)
        for rank, (_, _, prep, value) in enumerate(keyed):
            entry: _Entry[T] = (rank, prep.methods, prep.headers, prep.query, value)
            for bucket in self._buckets_for(prep.buckets):
                bucket.add(prep, entry)

    def _buckets_for(self, names: tuple[str, ...]) -> list[_Bucket[T]]:
        if not names:
            if self._any is None:
                self._any = _Bucket()
            return [self._any]
        buckets = []
        for name in names:
            if name.startswith("*."):
                buckets.append(self._by_suffix.setdefault(name[1:], _Bucket()))
            else:
                buckets.append(self._by_host.setdefault(name, _Bucket()))
        return buckets

    def match(self, method: str, host: str, path: str, query: str, headers: HeaderLookup) -> T | None:
        """The value of the best route for the request, or None.

        ``path`` is normalised, ``query`` the raw query string without '?', ``headers`` maps lower-case
        names to values, ``host`` is the raw Host header.
        """
        segs = path.split("/")
        n = len(segs)
        if n > 1 and not segs[-1]:
            n -= 1  # a trailing slash is not a segment
        if self._by_host or self._by_suffix:
            name = normalize_host(host)
            bucket = self._by_host.get(name)
            if bucket is not None:
                found = bucket.find(method, path, segs, n, query, headers)
                if found is not None:
                    return found[4]
            if self._by_suffix:
                # Leftmost dot first = longest suffix first; a wildcard needs at least one label in front.
                dot = name.find(".")
                while dot != -1:
                    if dot > 0:
                        bucket = self._by_suffix.get(name[dot:])
                        if bucket is not None:
                            found = bucket.find(method, path, segs, n, query, headers)
                            if found is not None:
                                return found[4]
                    dot = name.find(".", dot + 1)
        if self._any is not None:
            found = self._any.find(method, path, segs, n, query, headers)
            if found is not None:
                return found[4]
        return None

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        # Stated, not left to __len__: compiled by mypyc, "if x" on an "X | None" tests only for None
        # unless X defines __bool__.
        return len(self) > 0

    def __repr__(self) -> str:
        buckets = len(self._by_host) + len(self._by_suffix) + (self._any is not None)
        return (
            f"<Matcher: {self._size} routes, {buckets} host buckets "
            f"({len(self._by_host)} exact, {len(self._by_suffix)} wildcard, "
            f"{'1' if self._any is not None else '0'} any-host)>"
        )


def _condition(route: table.CompiledRoute, cond: table.ValueMatch, *, lower: bool) -> _Cond:
    name = cond.name.lower() if lower else cond.name
    try:
        pattern = cond.pattern()  # compiled with the table (RE2), kept on it: no cache outlives the table
    except regex.RegexError as exc:
        raise ValueError(f"route {route.id}: {exc}") from exc
    return (name, cond.value, pattern)
