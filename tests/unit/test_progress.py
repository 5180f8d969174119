"""Progress off a terminal: a few dozen plain lines for a long loop, never a redrawn bar."""

from __future__ import annotations

import io
import logging

import pytest
from tqdm import tqdm

from rlhflab.core.progress import LineProgress, progress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_thousand_step_loop_off_a_terminal_writes_about_twenty_lines(caplog, monkeypatch):
    monkeypatch.delenv("RLHFLAB_PROGRESS", raising=False)
    stream = io.StringIO()  # not a TTY
    caplog.set_level(logging.INFO, logger="rlhflab.progress")
    bar = progress(1000, "ppo", "update", stream=stream)
    assert isinstance(bar, LineProgress)
    for _ in range(1000):
        bar.update(1)
        bar.set_postfix(score="0.300")
    bar.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "rlhflab.progress"]
    assert 15 <= len(lines) <= 30, len(lines)  # every 5% (the loop is far faster than 30 s)
    assert lines[0].startswith("ppo: 50/1000 updates (5%)") and lines[-1].startswith("ppo: 1000/1000 updates (100%)")
    assert "score=0.300" in lines[-1] and "left" in lines[0]
    assert stream.getvalue() == "" and not any("\r" in line for line in lines)


def test_a_resumed_loop_starts_at_its_step_and_a_slow_loop_reports_every_30_s(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="rlhflab.progress")
    now = [0.0]
    monkeypatch.setattr("rlhflab.core.progress.time.monotonic", lambda: now[0])
    bar = LineProgress(1000, "sft", "step", initial=400)
    for t in (31.0, 32.0, 70.0):  # a line at 31 s although only 0.1% more is done; none at 32 s; one at 70 s
        now[0] = t
        bar.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" steps")[0] for line in lines] == ["sft: 401/1000", "sft: 403/1000"]


def test_a_terminal_gets_a_bar_and_the_variable_overrides(monkeypatch):
    monkeypatch.delenv("RLHFLAB_PROGRESS", raising=False)
    assert isinstance(progress(10, "x", "step", stream=FakeTTY()), tqdm)
    monkeypatch.setenv("RLHFLAB_PROGRESS", "bar")
    assert isinstance(progress(10, "x", "step", stream=io.StringIO()), tqdm)
    monkeypatch.setenv("RLHFLAB_PROGRESS", "off")
    off = progress(10, "x", "step", stream=FakeTTY())
    assert isinstance(off, LineProgress) and not off.enabled
    monkeypatch.setenv("RLHFLAB_PROGRESS", "loud")
    with pytest.raises(ValueError, match="RLHFLAB_PROGRESS='loud'"):
        progress(10, "x", "step")
