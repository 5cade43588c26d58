"""Structured logs: one JSON object per line, with party, round, phase, bytes and seconds where known."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

LOGGER_NAME = "secrobust.net"


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log event ``name`` with its fields as one JSON record."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"srb_fields": fields})


class JsonFormatter(logging.Formatter):
    """Formats a record as {"ts", "level", "party", "event", ...fields}."""

    def __init__(self, party: str) -> None:
        super().__init__()
        self.party = party

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 6), "level": record.levelname.lower(),
                               "party": self.party, "event": record.getMessage()}
        out.update(getattr(record, "srb_fields", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def setup(party: str, stream: TextIO | None = None, path: str | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send this process's secrobust logs as JSON lines to ``stream`` (stderr by default) and/or ``path``."""
    logger = logging.getLogger("secrobust")
    logger.setLevel(level)
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handlers: list[logging.Handler] = []
    if path:
        handlers.append(logging.FileHandler(path))
    if stream is not None or not path:
        handlers.append(logging.StreamHandler(stream or sys.stderr))
    for h in handlers:
        h.setFormatter(JsonFormatter(party))
        logger.addHandler(h)
    logger.propagate = False
    return logger


class Timer:
    """Wall-clock seconds since construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
