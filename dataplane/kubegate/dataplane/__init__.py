"""The data plane: path normalisation, matcher, balancer, the asyncio proxy and the admin API.

Never imports the operator or kopf.
"""

from kubegate import _compiled

_compiled.check()  # a compiled hot path (setup.py) must match its source: see kubegate/_compiled.py
