"""RegularExpression matches are RE2 patterns, with limits, refused by the compiler and the table alike.

Aspects:
- :mod:`kubegate.compiler.regex`: whole-value RE2 matches; refused patterns (backreferences, lookaround,
  ``\\Z``, syntax errors, RE2's "pattern too large") with a reason and a hint, never a fallback to Python
  ``re``; the 1024-byte cap counts bytes of UTF-8; nothing lands in ``re``'s or ``re2``'s module cache;
  a compiled pattern compares by source and survives copies and pickles.
- the compiler: a too-long pattern, or more than 16 RegularExpression matches in a route, makes the route
  Invalid with a message naming the field (the golden case ``bad-regex`` shows the others).
- the table (what a data plane validates on ``PUT /table``): the same refusals, naming the field; a
  valid table keeps each compiled pattern on its ValueMatch, and a re-pushed unchanged route keeps its
  pattern object (compiled once).

Correctness only: how long a hostile input takes is measured by ``bench/regex_bench.py``.
"""

from __future__ import annotations

import copy
import pickle
import re
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest
import re2

from kubegate.api import models
from kubegate.compiler import compile as compiler
from kubegate.compiler import regex, resources, table

NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
HOSTILE = "a" * 10_000 + "!"


# --- the regex module ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("v[0-9]+", "v12", True),
        ("v[0-9]+", "xv12", False),  # the whole value, not a search
        ("v[0-9]+", "v12x", False),
        ("(a+)+$", "aaaa", True),
        ("(a+)+$", HOSTILE, False),
        ("(a|aa)*b", "a" * 5000, False),
        ("can.*", "canary", True),
        ("é+", "éé", True),  # characters, not bytes
        ("caf.", "café", True),
        ("(?i)CANARY", "canary", True),
        (r"\d+", "١٢", False),  # RE2: \d is ASCII (Python re would say True)
    ],
)
def test_fullmatch(pattern: str, text: str, matches: bool) -> None:
    assert regex.compile(pattern).fullmatch(text) is matches


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a)\1", r"invalid escape sequence: \1 (RE2 has no backreferences)"),
        (r"(?=a)a", "invalid perl operator: (?= (RE2 has no lookaround)"),
        (r"(?!a)b", "invalid perl operator: (?! (RE2 has no lookaround)"),
        (r"(?<=a)b", "invalid perl operator: (?<= (RE2 has no lookaround)"),
        (r"(?<!a)b", "invalid perl operator: (?<! (RE2 has no lookaround)"),
        (r"v\Z", r"invalid escape sequence: \Z (RE2 spells the end of the text \z)"),
        ("v(1|2", "missing ): v(1|2"),
        ("a{1001}", "invalid repetition size: {1001}"),
        (r"\pL{100}", "pattern too large - compile failed"),  # 9 bytes, but over RE2's memory budget
    ],
)
def test_refused_patterns_say_why(pattern: str, reason: str) -> None:
    with pytest.raises(regex.RegexError) as caught:
        regex.compile(pattern)
    assert str(caught.value) == f"invalid regular expression {pattern!r}: {reason}"


def test_python_re_accepts_what_re2_refuses() -> None:
    """The refusals above are RE2's own: Python ``re`` would have compiled (and backtracked on) these, so
    a silent fallback to it would have let them through."""
    for pattern in (r"(a)\1", r"(?=a)a", r"(?<!a)b", r"v\Z"):
        re.compile(pattern)
        with pytest.raises(regex.RegexError):
            regex.compile(pattern)


def test_size_cap_counts_bytes() -> None:
    assert regex.MAX_BYTES == 1024
    assert regex.compile("a" * 1024).fullmatch("a" * 1024)
    with pytest.raises(regex.RegexError, match=r"^regular expression is 1025 bytes long, more than 1024$"):
        regex.compile("a" * 1025)
    # 513 characters, 1026 bytes
    with pytest.raises(regex.RegexError, match="1026 bytes long"):
        regex.compile("é" * 513)


def test_program_size_cap() -> None:
    """Linear time is not cheap time: a huge RE2 program is refused, a long literal is not."""
    assert regex.compile("a" * 1024).program_size <= regex.MAX_PROGRAM_SIZE
    assert regex.compile("[a-z]{100}").fullmatch("a" * 100)
    with pytest.raises(regex.RegexError, match=r"too complex: RE2 program size 8007, at most 2000"):
        regex.compile("(?:.*a.{999})*c")


def test_no_module_level_cache() -> None:
    """Compiled patterns live on their Pattern only: neither ``re`` nor ``re2`` keeps one."""
    pattern = "(unique-4f1d)+x"
    re2_cached = re2._Regexp._make.cache_info().currsize
    compiled = regex.compile(pattern)
    assert compiled.fullmatch("unique-4f1dx")
    assert re2._Regexp._make.cache_info().currsize == re2_cached
    assert not any(pattern in key for key in re._cache)


def test_pattern_value_semantics() -> None:
    a, b = regex.compile("v[0-9]+"), regex.compile("v[0-9]+")
    assert a == b and hash(a) == hash(b) and a != regex.compile("v[0-9]*")
    assert repr(a) == "<Pattern 'v[0-9]+'>"
    assert copy.copy(a) is a and copy.deepcopy(a) is a
    again = pickle.loads(pickle.dumps(a))
    assert again == a and again.fullmatch("v7")
    assert a.program_size > 0


# --- the compiler -------------------------------------------------------------------------------------


def _compile(match: dict[str, Any]) -> compiler.CompileResult:
    body = {
        "apiVersion": "kubegate.dev/v1alpha1",
        "kind": "GatewayRoute",
        "metadata": {"name": "r", "namespace": "default"},
        "spec": {"match": match, "backends": [{"url": "http://10.0.0.1"}]},
    }
    return compiler.compile_bundle(resources.from_objects([body]), now=NOW)


def _accepted(result: compiler.CompileResult) -> tuple[str, str]:
    [status] = result.statuses.values()
    condition = status.condition(compiler.ACCEPTED)
    assert condition is not None
    return condition.status, condition.message


def _regex(value: str, name: str = "X-R") -> dict[str, str]:
    return {"name": name, "value": value, "type": "RegularExpression"}


def test_compiler_refuses_a_pattern_over_1024_bytes() -> None:
    assert _accepted(_compile({"headers": [_regex("a" * 1024)]}))[0] == "True"
    result = _compile({"headers": [{"name": "X-Ok", "value": "1"}, _regex("a" * 1025)]})
    assert _accepted(result) == (
        "False",
        "spec.match.headers[1].value: regular expression is 1025 bytes long, more than 1024",
    )
    assert result.table.routes == ()
    # under 1024 characters, over 1024 bytes
    status, message = _accepted(_compile({"queryParams": [_regex("é" * 600, name="q")]}))
    assert (status, message) == (
        "False",
        "spec.match.queryParams[0].value: regular expression is 1200 bytes long, more than 1024",
    )


def test_compiler_refuses_more_than_16_regex_matches() -> None:
    headers = [_regex("v[0-9]+", name=f"X-H{i}") for i in range(10)]
    query = [_regex("[a-z]+", name=f"q{i}") for i in range(6)]
    assert _accepted(_compile({"headers": headers, "queryParams": query}))[0] == "True"
    # Exact matches do not count
    exact = [{"name": "x", "value": "1"}]
    assert _accepted(_compile({"headers": headers, "queryParams": query + exact}))[0] == "True"
    status, message = _accepted(_compile({"headers": headers, "queryParams": [*exact, *query, _regex("z")]}))
    assert status == "False"
    assert message == (
        "spec.match.queryParams[7]: RegularExpression match number 17; a route may have at most 16 "
        "(headers and queryParams together)"
    )


def test_compiler_accepts_a_catastrophic_backtracking_pattern() -> None:
    result = _compile({"headers": [_regex("(a+)+$")]})
    assert _accepted(result)[0] == "True"
    [route] = result.table.routes
    pattern = route.match.headers[0].pattern()
    assert pattern is not None and not pattern.fullmatch(HOSTILE) and pattern.fullmatch("aaa")


def test_model_limits_are_the_compilers() -> None:
    assert models.MAX_REGEX_BYTES == regex.MAX_BYTES == 1024
    assert models.MAX_REGEX_MATCHES == 16


# --- the table (a pushed table) -----------------------------------------------------------------------


def _table(*matches: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "v",
        "routes": [
            {"id": f"ns/r{i}", "namespace": "ns", "name": f"r{i}", "backends": [{"name": "b"}], "match": m}
            for i, m in enumerate(matches)
        ],
    }


@pytest.mark.parametrize(
    ("match", "loc", "message"),
    [
        (
            {"headers": [_regex(r"(a)\1")]},
            ("routes", 0, "match", "headers", 0),
            r"value: invalid regular expression '(a)\\1': invalid escape sequence: \1",
        ),
        (
            {"queryParams": [_regex("(?=x)x", name="q")]},
            ("routes", 0, "match", "queryParams", 0),
            "value: invalid regular expression '(?=x)x': invalid perl operator: (?=",
        ),
        (
            {"headers": [_regex("a" * 1025)]},
            ("routes", 0, "match", "headers", 0),
            "value: regular expression is 1025 bytes long, more than 1024",
        ),
        (
            {"headers": [_regex("a", name=f"h{i}") for i in range(9)], "queryParams": [_regex("b")] * 8},
            ("routes", 0, "match"),
            "headers, queryParams: 17 RegularExpression matches, more than 16",
        ),
    ],
)
def test_table_refuses_what_the_compiler_refuses(
    match: dict[str, Any], loc: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        table.RouteTable.from_wire(_table(match))
    [error] = caught.value.errors()
    assert error["loc"] == loc
    assert message in error["msg"]


def test_table_keeps_each_compiled_pattern_and_reuses_it() -> None:
    wire = _table({"headers": [_regex("(a+)+$"), {"name": "x", "value": r"(a)\1"}]}, {"path": {"value": "/"}})
    first = table.RouteTable.from_wire(wire)
    header, exact = first.routes[0].match.headers
    pattern = header.__pydantic_private__["_pattern"]
    assert pattern == regex.compile("(a+)+$")  # compiled when the table was validated
    assert header.pattern() is pattern
    assert exact.pattern() is None  # an Exact value is never compiled, whatever it looks like
    # a push of the same route keeps the validated route object, and so its compiled pattern
    again = table.RouteTable.from_wire(first.to_wire(), previous=first)
    assert again.routes[0] is first.routes[0]


def test_a_regex_value_built_without_validation_is_compiled_on_demand() -> None:
    good = table.ValueMatch.model_construct(name="x", value="v[0-9]+", type="RegularExpression")
    pattern = good.pattern()
    assert pattern is not None and pattern.fullmatch("v1") and good.pattern() is pattern
    bad = table.ValueMatch.model_construct(name="x", value=r"(a)\1", type="RegularExpression")
    with pytest.raises(regex.RegexError, match="backreferences"):
        bad.pattern()
