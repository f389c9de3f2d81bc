"""Structured logs: one JSON object per line with tenant, correlation and event ids when given.

Pass context through `extra={"tenant_id": ..., "correlation_id": ..., "event_id": ...}`; never
pass secrets or full phone numbers.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Final

import orjson

_CONTEXT: Final = ("tenant_id", "correlation_id", "event_id", "command_id", "outbound_id")
_QUIET: Final = ("httpx", "httpcore", "twilio")
"""HTTP client libraries log each request's URL at INFO, and a Twilio lookup's URL holds the
contact's number (`To=`): only their warnings are logged."""


class JsonFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "proc": self.process_name,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _CONTEXT:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def configure(level: str, process_name: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process_name))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
