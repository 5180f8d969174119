"""Logging: one format for every stage. Post and summary text is never logged above DEBUG (it is unmoderated)."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def setup_logging(level: str | int = "INFO") -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_rlhflab", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler._rlhflab = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
