"""Logging set-up: readable lines by default, JSON lines with ``--log-format json``."""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar

import msgspec

# the id of the request being served, in every line logged while serving it
# (set by `observability.request_ids`; "" outside requests)
request_id: ContextVar[str] = ContextVar("ollamamax_request_id", default="")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        rid = request_id.get()
        if rid:
            doc["request_id"] = rid
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return msgspec.json.encode(doc).decode()


class TextFormatter(logging.Formatter):
    """Readable lines; ``[request-id]`` after the logger's name while serving a request."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        rid = request_id.get()
        record.rid = f" [{rid}]" if rid else ""
        return super().formatMessage(record)


def setup(level: str = "info", fmt: str = "text", name: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        prefix = f"{name} " if name else ""
        formatter = TextFormatter(f"%(asctime)s {prefix}%(levelname)s %(name)s%(rid)s: %(message)s",
                                  "%H:%M:%S")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
