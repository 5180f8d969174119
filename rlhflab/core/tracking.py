"""Experiment tracking: a stage's metrics.jsonl rows, also sent to TensorBoard, W&B or trackio (`report_to`).

The run directory stays the record: every row goes to metrics.jsonl first, under the same names, and a tracker
gets the numeric values of the same row at the same step (`RunDir.log_metrics`). TensorBoard writes its event
files under `<run>/tensorboard/`; W&B and trackio run where their own settings point (`WANDB_MODE=offline`
works without a network; trackio is local-first). The packages are imported only when asked for, with a clear
error naming the one to install.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Any, Protocol

from rlhflab.core.rundir import RunError

REPORT_TO = ("none", "tensorboard", "wandb", "trackio")


class TrackingError(RunError):
    """A tracker that cannot start (its package is missing): the CLI's one-line error, exit 2."""


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, Any]) -> None: ...
    def purge_after(self, step: int) -> None: ...
    def close(self) -> None: ...


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics row (bools count as 0/1; strings, lists and NaN are left out)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


def open_tracker(report_to: str, run_path: Path, stage: str, config: dict[str, Any]) -> Tracker | None:
    if report_to == "none":
        return None
    if report_to not in REPORT_TO:
        raise TrackingError(f"report_to={report_to!r}: choose one of {', '.join(REPORT_TO)}")
    maker = {"tensorboard": TensorBoard, "wandb": WandB, "trackio": Trackio}[report_to]
    return maker(run_path, stage, config)


def _require(module: str, package: str, report_to: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise TrackingError(f"report_to={report_to} needs the {package} package: pip install {package}") from None


class TensorBoard:
    """Event files under `<run>/tensorboard/`, written with tensorboard's own event writer (core stays
    torch-free); a resumed run purges the steps after its checkpoint."""

    def __init__(self, run_path: Path, stage: str, config: dict[str, Any]):
        _require("tensorboard", "tensorboard", "tensorboard")
        self.dir = run_path / "tensorboard"
        self.writer = self._open()

    def _open(self, purge_step: int | None = None) -> Any:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        writer = EventFileWriter(str(self.dir))
        if purge_step is not None:  # TensorBoard drops the events at or after a restart's step
            writer.add_event(Event(wall_time=time.time(), step=purge_step, file_version="brain.Event:2"))
            writer.add_event(Event(wall_time=time.time(), step=purge_step,
                                   session_log=SessionLog(status=SessionLog.START)))
        return writer

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=key, simple_value=value) for key, value in scalars(metrics).items()]
        self.writer.add_event(Event(wall_time=time.time(), step=int(step), summary=Summary(value=values)))
        self.writer.flush()

    def purge_after(self, step: int) -> None:
        self.writer.close()
        self.writer = self._open(purge_step=step + 1)

    def close(self) -> None:
        self.writer.close()


def _run_id(run_path: Path) -> str:
    """One id per run directory, so a resumed run continues the same W&B / trackio run."""
    return hashlib.sha1(str(run_path.resolve()).encode()).hexdigest()[:16]


class WandB:
    def __init__(self, run_path: Path, stage: str, config: dict[str, Any]):
        self.wandb = _require("wandb", "wandb", "wandb")
        self.run = self.wandb.init(project=os.environ.get("WANDB_PROJECT", "rlhflab"), name=run_path.name,
                                   id=_run_id(run_path), resume="allow", dir=str(run_path), job_type=stage,
                                   config=config)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.run.log(scalars(metrics), step=step)

    def purge_after(self, step: int) -> None:  # W&B keeps steps monotonic itself: re-logged steps are dropped
        pass

    def close(self) -> None:
        self.run.finish()


class Trackio:
    def __init__(self, run_path: Path, stage: str, config: dict[str, Any]):
        self.trackio = _require("trackio", "trackio", "trackio")
        self.trackio.init(project=os.environ.get("TRACKIO_PROJECT", "rlhflab"), name=f"{run_path.name}-{_run_id(run_path)}",
                          config=config, resume="allow")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.trackio.log(scalars(metrics), step=step)

    def purge_after(self, step: int) -> None:
        pass

    def close(self) -> None:
        self.trackio.finish()
