"""``kubegate.malloc.trim``: returns free heap pages to the OS on glibc, and is a harmless no-op elsewhere."""

from __future__ import annotations

import platform

from kubegate import malloc


def test_trim_runs_where_glibc_is() -> None:
    assert malloc.trim() is (platform.libc_ver()[0] == "glibc")
