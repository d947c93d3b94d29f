"""The data plane's hot path compiled to C with mypyc, when asked: ``hack/compile.sh``.

Why: the per-request work of ``kubegate serve`` is Python. Compiled by mypyc (the compiler mypy and black
ship with, working from the annotations mypy --strict already checks) the same source runs the proxy path
in about 40 % fewer instructions (``bench/README.md``). The container image and CI build it compiled;
without ``KUBEGATE_COMPILE=1`` nothing is compiled and the package is plain Python (development, the
quick start). The compiled modules are listed below; every other module (the admin API, the server's
wiring, the compiler, the operator) stays interpreted.

mypyc must see the dependencies' real types (a class whose base it cannot see, such as a prometheus
``Collector``, would be compiled with the wrong layout), so a compiled build runs without build isolation
in an environment that has them: ``pip install --no-build-isolation`` after the dependencies and mypy are
installed (hack/compile.sh does both steps). Otherwise this script stops with that advice.

With a compiled build, :mod:`kubegate._compiled` refuses to import a module whose source changed after it
was compiled (an editable install whose ``.py`` was edited): rebuild, or ``python -m kubegate._compiled
--clean`` to go back to plain Python.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "dataplane" / "kubegate"

#: The modules of the hot path (relative to dataplane/kubegate), in the order a request meets them.
COMPILED = [
    "dataplane/proxy.py",
    "dataplane/pathnorm.py",
    "dataplane/httpbits.py",
    "dataplane/matcher.py",
    "dataplane/edge.py",
    "dataplane/auth.py",
    "dataplane/ratelimiting.py",
    "dataplane/redislimit.py",
    "dataplane/caching.py",
    "dataplane/attempts.py",
    "dataplane/balancer.py",
    "dataplane/upstream.py",
    "dataplane/upstreamtls.py",
    "dataplane/tunnel.py",
    "dataplane/stats.py",
    "dataplane/snapshot.py",
    "dataplane/accesslog.py",
    "dataplane/policies/apikey.py",
    "dataplane/policies/balancing.py",
    "dataplane/policies/breaker.py",
    "dataplane/policies/bulkhead.py",
    "dataplane/policies/cachecontrol.py",
    "dataplane/policies/cachestore.py",
    "dataplane/policies/cors.py",
    "dataplane/policies/endpoints.py",
    "dataplane/policies/outlier.py",
    "dataplane/policies/ratelimit.py",
    "dataplane/policies/retry.py",
    "dataplane/policies/runtime.py",
    "dataplane/policies/transforms.py",
    "dataplane/policies/jwt.py",
]


def ext_modules() -> list[object]:
    if os.environ.get("KUBEGATE_COMPILE") != "1":
        return []
    #: Imports whose types the compiled modules use: all must be importable (see the docstring).
    needed = [
        "mypyc",
        "httptools",
        "uvicorn",
        "prometheus_client",
        "redis",
        "jwt",
        "cryptography",
        "pydantic",
    ]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"KUBEGATE_COMPILE=1: {', '.join(missing)} not importable here. A compiled build needs the "
            "dependencies and mypy installed first and no build isolation: bash hack/compile.sh"
        )
    from mypyc.build import mypycify

    paths = [str(PACKAGE / m) for m in COMPILED]
    # The manifest kubegate._compiled checks at import: each compiled module's source digest.
    manifest = {
        "kubegate." + m[: -len(".py")].replace("/", "."): hashlib.sha256(
            (PACKAGE / m).read_bytes()
        ).hexdigest()
        for m in COMPILED
    }
    (PACKAGE / "_compiled.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    # The project's mypy settings (strict) are checked by CI on the whole tree; here mypy only types.
    return mypycify(
        ["--config-file=", "--ignore-missing-imports", *paths], group_name="kubegate", opt_level="3"
    )


setup(ext_modules=ext_modules())
