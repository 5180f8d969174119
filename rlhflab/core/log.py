"""Logging: one format for every stage. Post and summary text is never logged above DEBUG (it is unmoderated)."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time, not the stream that existed when logging was set up
    (which test runners and notebooks replace and close)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; ignore
        pass


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def setup_logging(level: str | int = "INFO") -> None:
    """One handler on stderr at `level`; off a terminal, the Hugging Face libraries' redrawn bars are turned off
    (rlhflab's own progress is then plain lines: core/progress.py)."""
    from rlhflab.core.progress import quiet_library_bars

    quiet_library_bars()
    root = logging.getLogger()
    if not any(isinstance(h, _CurrentStderrHandler) for h in root.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level)
