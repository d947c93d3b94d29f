"""Path normalisation: the cases mutation testing (``bench/mutation.py pathnorm``) found unchecked.

Aspects: ``ESCAPED_SLASH_MODES`` lists exactly the modes of ``EscapedSlashes``, in order; a percent-escape
whose hex digits are not hex (``%XX``, ``%aX``) is a :class:`BadPath` (not another ``ValueError``) in every
mode; error messages quote at most the first 80 characters of the offending path.
"""

from __future__ import annotations

import typing

import pytest

from kubegate.dataplane import pathnorm


def test_escaped_slash_modes_are_exactly_the_literal_modes() -> None:
    assert typing.get_args(pathnorm.EscapedSlashes) == pathnorm.ESCAPED_SLASH_MODES
    assert pathnorm.ESCAPED_SLASH_MODES == ("reject", "unescape", "keep")


@pytest.mark.parametrize("mode", pathnorm.ESCAPED_SLASH_MODES)
@pytest.mark.parametrize("raw", ["/%XX", "/a%aX/b", "/%Xa", "/%x0", "/%0x", "/%G0", "/%-1"])
def test_escape_with_non_hex_digits_is_a_bad_path(raw: str, mode: pathnorm.EscapedSlashes) -> None:
    with pytest.raises(pathnorm.BadPath, match="malformed percent-escape"):
        pathnorm.normalize_path(raw, mode)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("x" + "a" * 200, "must start with '/'"),
        ("/\x01" + "a" * 200, "control character"),
        ("/%zz" + "a" * 200, "malformed percent-escape"),
        ("/.." + "/a" * 100, "climbs above the root"),
    ],
)
def test_messages_quote_the_first_80_characters(raw: str, reason: str) -> None:
    with pytest.raises(pathnorm.BadPath) as info:
        pathnorm.normalize_path(raw)
    message = str(info.value)
    assert reason in message
    assert message.endswith(repr(raw[:80]))
