#!/usr/bin/env bash
# Compile the data plane's hot path with mypyc into this checkout (an editable install), as the container
# image and CI run it; see setup.py. Run it with the project's virtualenv active (or PYTHON=/path/to/python;
# default python3); it needs a C compiler. About 2.5 minutes of one core here.
# `python -m kubegate._compiled` lists what is compiled; `--clean` goes back to plain Python.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# mypyc must see the dependencies' types: install them (and mypy, setuptools) first, then build in place
# without build isolation.
"$PYTHON" -m pip install -q -e . 'mypy>=1.10' 'setuptools>=68' wheel
KUBEGATE_COMPILE=1 "$PYTHON" -m pip install -q --no-build-isolation --no-deps -e .
"$PYTHON" -m kubegate._compiled
