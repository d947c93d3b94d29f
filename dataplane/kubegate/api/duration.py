"""Gateway API durations ("30s", "1h30m", "500ms") to milliseconds.

GatewayRoute timeouts use the Gateway API duration syntax (GEP-2257) rather than Go's
``time.ParseDuration``: one to four ``<number><unit>`` groups, each number at most five digits, units
``h``, ``m``, ``s`` and ``ms``. The same regular expression goes into the CRD schema (so the API server
rejects a malformed value) and into the pydantic model (so ``kubegate compile`` and the operator explain
it in a condition).
"""

from __future__ import annotations

import re

#: The GEP-2257 pattern, also used as the CRD's ``pattern`` (RE2-compatible).
DURATION_PATTERN = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"

_DURATION_RE = re.compile(DURATION_PATTERN)
_GROUP_RE = re.compile(r"([0-9]{1,5})(ms|h|m|s)")
_UNIT_MS = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}


class DurationError(ValueError):
    """A string that is not a Gateway API duration; the message says what is expected."""


def parse_duration(text: str) -> int:
    """Return the duration in milliseconds; ``"0s"`` is valid and gives 0.

    Raises :class:`DurationError` with a message that quotes the value and shows valid examples.
    """
    if not _DURATION_RE.fullmatch(text):
        raise DurationError(
            f"invalid duration {text!r}: expected 1 to 4 groups of <number><unit> "
            "(number of at most 5 digits, unit h, m, s or ms), e.g. '30s', '1h30m', '500ms'"
        )
    return sum(int(number) * _UNIT_MS[unit] for number, unit in _GROUP_RE.findall(text))
