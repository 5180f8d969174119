"""Progress of long loops: a redrawn tqdm bar on a terminal, plain log lines everywhere else.

A redrawn bar written to a file (a pipeline's child stage, CI, `nohup`) is one line of carriage returns per
redraw: `make demo`'s log was 20 KB of them. Off a terminal, `progress` returns a `LineProgress` instead, which
logs one line (`ppo: 150/1000 updates (15%), 2.31/s, 6m08s left, score=0.300`) each time another `every_percent`
of the total is done, or `every_s` seconds after the last line, and once more at the end — for a 1,000-step
loop about twenty lines.

`RLHFLAB_PROGRESS=bar|lines|off` overrides the choice (e.g. `bar` in a terminal multiplexer that is not a TTY).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

log = logging.getLogger("rlhflab.progress")


def progress(total: int, desc: str, unit: str, initial: int = 0, enabled: bool = True,
             stream: TextIO | None = None) -> tqdm | LineProgress:
    """The progress display of a loop of `total` steps (`initial` already done, e.g. by a resumed run).
    `enabled=False` (a process other than the main one) shows nothing."""
    stream = stream or sys.stderr
    mode = os.environ.get("RLHFLAB_PROGRESS") or ("bar" if _isatty(stream) else "lines")
    if mode not in ("bar", "lines", "off"):
        raise ValueError(f"RLHFLAB_PROGRESS={mode!r}: expected bar, lines or off")
    if mode == "bar":
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, disable=not enabled,
                    file=stream)
    return LineProgress(total, desc, unit, initial, enabled=enabled and mode == "lines")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class LineProgress:
    """tqdm's `update` / `set_postfix` / `close` as occasional log lines (see the module docstring)."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, enabled: bool = True,
                 every_percent: float = 5.0, every_s: float = 30.0) -> None:
        self.total, self.desc, self.unit, self.n, self.enabled = total, desc, unit, initial, enabled
        self.every_percent, self.every_s = every_percent, every_s
        self.postfix: dict[str, Any] = {}
        self._start_n, self._t0 = initial, time.monotonic()
        self._last_t, self._last_bucket, self._last_n = self._t0, self._bucket(initial), initial

    def _bucket(self, n: int) -> int:
        return int(100 * n / self.total // self.every_percent) if self.total else 0

    def update(self, k: int = 1) -> None:
        self.n += k
        if not self.enabled:
            return
        if self._bucket(self.n) > self._last_bucket or time.monotonic() - self._last_t >= self.every_s:
            self._emit()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        if self.enabled and self.n != self._last_n:
            self._emit()
        self.enabled = False

    def line(self) -> str:
        elapsed = time.monotonic() - self._t0
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        units = self.unit[:-1] + "ies" if self.unit.endswith("y") else self.unit + "s"
        parts = [f"{self.desc}: {self.n}/{self.total} {units}"
                 + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        if rate > 0:
            parts.append(f"{rate:.3g} {units}/s")
            if self.total and self.n < self.total:
                parts.append(f"{_duration((self.total - self.n) / rate)} left")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def _emit(self) -> None:
        log.info("%s", self.line())
        self._last_t, self._last_bucket, self._last_n = time.monotonic(), self._bucket(self.n), self.n


def _duration(seconds: float) -> str:
    """`1h02m`, `6m08s`, `42s`."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def quiet_library_bars(stream: TextIO | None = None) -> None:
    """Off a terminal, turn off the Hugging Face libraries' own bars ("Loading weights", dataset maps): they read
    these variables when first imported, which is after logging is set up."""
    if not library_bars_quiet(stream):
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def library_bars_quiet(stream: TextIO | None = None) -> bool:
    """Whether the libraries' own bars are off: off a terminal, unless RLHFLAB_PROGRESS=bar."""
    return os.environ.get("RLHFLAB_PROGRESS") != "bar" and not _isatty(stream or sys.stderr)
