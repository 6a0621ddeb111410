"""Structured logs: one line per event, ``event=NAME key=value ...``.

Daemons log what happened to every job, site and share on one line each, so an
operator can grep a job id or a site and see its whole history.
"""

from __future__ import annotations

import logging
import sys


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def line(name: str, **fields: object) -> str:
    """``event=NAME key=value ...`` (None fields are left out)."""
    parts = [f"event={name}"] + [f"{k}={_quote(v)}" for k, v in fields.items() if v is not None]
    return " ".join(parts)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: object) -> None:
    """Log one event with its fields (None fields are left out)."""
    logger.log(level, line(name, **fields))


def setup(level: str = "info") -> None:
    """Log lines to stderr: time, level, component, then the event."""
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
