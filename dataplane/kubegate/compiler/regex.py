"""RE2 regular expressions for ``RegularExpression`` header and query-parameter matches.

Route authors write these patterns and clients send the text they run on, so they must not be able to
stall the event loop: Python's ``re`` backtracks (``(a+)+$`` against 26 ``a`` and a ``!`` takes seconds),
RE2 runs in time linear in the input. Patterns therefore use RE2 syntax, as in the Gateway API and
Envoy: no backreferences, no lookaround, ``\\z`` rather than ``\\Z``, ``\\d``/``\\w``/``\\s`` are ASCII.
A pattern must match the *whole* value (RE2 ``ANCHOR_BOTH``, what ``re.fullmatch`` did before).

The compiler (:mod:`kubegate.compiler.compile`, a route's status) and the table model
(:class:`kubegate.compiler.table.ValueMatch`, a pushed table) both refuse what :func:`compile` refuses:
patterns over :data:`MAX_BYTES` bytes of UTF-8 and patterns RE2 cannot compile. The matcher uses the
:class:`Pattern` compiled with the table, so a pattern lives exactly as long as the table that holds it.

The ``re2`` package (google-re2) has no fallback to ``re``: what RE2 cannot run is an error. Its public
``re2.compile`` keeps the last 128 patterns in a module-level LRU cache, which would outlive the tables
that used them, and its match methods rebuild character offsets on every call; so this module builds the
``_re2.RE2`` object (the extension type that ``re2.compile`` wraps) itself and asks it one question: does
the whole text match.
"""

from __future__ import annotations

from typing import Any

import re2  # google-re2
from re2 import _re2

from kubegate.api import models

__all__ = ["MAX_BYTES", "MAX_MEM", "MAX_PROGRAM_SIZE", "Pattern", "RegexError", "compile"]

MAX_BYTES = models.MAX_REGEX_BYTES
#: RE2's memory budget per pattern: the compiled program plus its lazily built DFA. RE2's default is
#: 8 MiB; 1 MiB refuses nothing sensible (``.{1000}`` or a UUID pattern fit easily), refuses things like
#: ``\pL{100}`` ("pattern too large"), and keeps compiling one pattern to about 10 ms instead of 200 ms.
MAX_MEM = 1 << 20
#: RE2 runs in time linear in the input, but the factor is the program's size: ``(?:.*a.{999})*c`` (8,007)
#: takes about half a second over 60 KB. Headers are at most 32 KiB, and ordinary patterns are far below
#: this cap (``^Bearer [A-Za-z0-9._-]+$`` is 9, ``[a-z]{100}`` 104; a 1,024-character literal, the
#: longest pattern allowed, about 1,030); Envoy's default cap is 100.
MAX_PROGRAM_SIZE = 2000

_OPTIONS = re2.Options()
_OPTIONS.max_mem = MAX_MEM
_OPTIONS.never_capture = True  # a yes/no answer needs no submatches, and RE2 is faster without them
_OPTIONS.log_errors = False  # a bad pattern is reported to its author, not to the data plane's stderr
_ANCHOR_BOTH = _re2.RE2.Anchor.ANCHOR_BOTH
_NO_MATCH = (-1, -1)
_LOOKAROUND = tuple(f"invalid perl operator: {op}" for op in ("(?=", "(?!", "(?<=", "(?<!"))


class RegexError(ValueError):
    """A pattern RE2 will not run, or one that is too long; the message says why (without a field name:
    callers prefix the field)."""


class Pattern:
    """One compiled pattern. Immutable; equal to another of the same source."""

    __slots__ = ("_regexp", "source")

    def __init__(self, source: str, regexp: Any) -> None:
        self.source = source
        self._regexp = regexp

    def fullmatch(self, text: str) -> bool:
        """Whether ``text`` matches as a whole."""
        data = text.encode("utf-8", "surrogatepass")
        return bool(self._regexp.Match(_ANCHOR_BOTH, data, 0, len(data))[0] != _NO_MATCH)

    @property
    def program_size(self) -> int:
        """RE2's measure of the compiled program (roughly, the work per input byte once the DFA is full)."""
        return int(self._regexp.ProgramSize())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and other.source == self.source

    def __hash__(self) -> int:
        return hash((Pattern, self.source))

    def __repr__(self) -> str:
        return f"<Pattern {self.source!r}>"

    # The RE2 object is immutable and cannot be pickled: copies share it, a pickle recompiles.
    def __copy__(self) -> Pattern:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Pattern:
        return self

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return compile, (self.source,)


def compile(source: str) -> Pattern:
    """Compile ``source`` with RE2 (UTF-8, whole-value matches); :class:`RegexError` if it cannot be used.

    Nothing is cached here: the caller keeps the :class:`Pattern` as long as it needs it.
    """
    data = source.encode("utf-8", "surrogatepass")
    if len(data) > MAX_BYTES:
        raise RegexError(f"regular expression is {len(data)} bytes long, more than {MAX_BYTES}")
    regexp = _re2.RE2(data, _OPTIONS)
    if not regexp.ok():
        error = regexp.error()
        reason = error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
        raise RegexError(f"invalid regular expression {source!r}: {reason}{_hint(reason)}")
    pattern = Pattern(source, regexp)
    if pattern.program_size > MAX_PROGRAM_SIZE:
        raise RegexError(
            f"regular expression {source[:80]!r} is too complex: RE2 program size {pattern.program_size}, "
            f"at most {MAX_PROGRAM_SIZE} (large repetition counts such as {{999}} are the usual cause)"
        )
    return pattern


def _hint(reason: str) -> str:
    """What to tell a route author whose pattern uses one of the Python ``re`` features RE2 lacks."""
    escape = reason.removeprefix("invalid escape sequence: \\")
    if escape != reason and escape[:1].isdigit():
        return " (RE2 has no backreferences)"
    if escape == "Z":
        return " (RE2 spells the end of the text \\z)"
    if reason.startswith(_LOOKAROUND):
        return " (RE2 has no lookaround)"
    return ""
