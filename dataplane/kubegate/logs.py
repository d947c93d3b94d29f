"""JSON log lines for every kubegate process (one object per line: time, level, logger, message, extras)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

# LogRecord's own attributes, and uvicorn's terminal-coloured duplicate of the message: not extras.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


# uvicorn's start and stop lines, logged by each of its servers: a data plane runs two or three of them
# (traffic, admin, the demo's echo backend), so each line came two or three times, without saying which
# server it was about. kubegate says that in lines of its own.
_UVICORN_LIFECYCLE = (
    "Started server process",
    "Finished server process",
    "Uvicorn running on",
    "Shutting down",
    "Waiting for application startup",
    "Application startup complete",
    "Waiting for application shutdown",
    "Application shutdown complete",
    "Waiting for connections to close",
    "Waiting for background tasks to complete",
)


class UvicornLifecycleFilter(logging.Filter):
    """Turns uvicorn's start and stop lines (:data:`_UVICORN_LIFECYCLE`) into debug lines; its errors and
    warnings pass as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno == logging.INFO
            and isinstance(record.msg, str)
            and record.msg.startswith(_UVICORN_LIFECYCLE)
        ):
            if not logging.getLogger().isEnabledFor(logging.DEBUG):
                return False
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").setLevel("WARNING")
    lifecycle = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, UvicornLifecycleFilter) for f in lifecycle.filters):
        lifecycle.addFilter(UvicornLifecycleFilter())
