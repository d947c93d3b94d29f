"""Gateway API durations: valid forms to milliseconds, and readable errors for everything else."""

from __future__ import annotations

import re

import pytest

from kubegate.api import duration


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("0s", 0),
        ("1ms", 1),
        ("500ms", 500),
        ("30s", 30_000),
        ("1m", 60_000),
        ("1h30m", 5_400_000),
        ("1h30m10s500ms", 5_410_500),
        ("99999h", 99_999 * 3_600_000),
        ("1s1s", 2_000),  # the GEP's pattern allows repeated units; they add up
    ],
)
def test_valid(text: str, ms: int) -> None:
    assert duration.parse_duration(text) == ms


@pytest.mark.parametrize(
    "text",
    ["", "30", "1.5s", "-1s", "1d", "1us", "100000s", "1h1m1s1ms1s", " 1s", "1s\n", "1S", "s", "1 s"],
)
def test_invalid(text: str) -> None:
    with pytest.raises(duration.DurationError) as info:
        duration.parse_duration(text)
    message = str(info.value)
    assert repr(text) in message
    assert "e.g. '30s', '1h30m', '500ms'" in message


def test_is_a_value_error_for_pydantic() -> None:
    assert issubclass(duration.DurationError, ValueError)


def test_pattern_agrees_with_parser() -> None:
    pattern = re.compile(duration.DURATION_PATTERN)
    for text in ("0s", "1h30m", "500ms", "1.5s", "1d", ""):
        try:
            duration.parse_duration(text)
            parsed = True
        except duration.DurationError:
            parsed = False
        assert bool(pattern.fullmatch(text)) == parsed, text
