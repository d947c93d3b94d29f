"""``python -m kubegate_operator`` and ``kubegate operator``: parse settings, set up logs, run kopf.

:func:`main` is the entry point both use; it returns the process exit code.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

import kopf

from kubegate.logs import setup_logging
from kubegate_operator import handlers, settings


def main(argv: Sequence[str] | None = None) -> int:
    config = settings.parse(argv)
    setup_logging(config.log_level)
    logging.getLogger("kopf").setLevel(max(logging.WARNING, logging.getLogger().level))
    # httpx logs every request at INFO: every push and every periodic GET /table of every replica.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    # The Kubernetes client logs every response body at debug level: Secrets (and the bootstrap table).
    logging.getLogger("kubernetes_asyncio").setLevel(max(logging.INFO, logging.getLogger().level))
    app = handlers.App(config)
    registry = handlers.build_registry(app)
    namespaces = config.watched_namespaces()
    try:
        asyncio.run(
            kopf.operator(
                registry=registry,
                standalone=True,  # HA is our Lease (see leader.py), not kopf peering
                clusterwide=not namespaces,
                namespaces=namespaces,
            )
        )
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
