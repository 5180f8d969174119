"""Run directories: how stages hand work to each other on disk.

    <run>/config.yaml    resolved config + git revision, written before step 0
          metrics.jsonl  one JSON object a log step
          samples/       periodic tables of query / response / score
          model/         save_pretrained output
          state/         optimizer, scheduler, RNG, data position ...
          DONE.json      written last: final step, wall time, headline metrics

Every write that a crash could tear is atomic: write a temporary name in the same directory, then rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from rlhflab.core.config import to_dict
from rlhflab.core.log import get_logger

log = get_logger(__name__)


class RunError(RuntimeError):
    """A run directory that is missing, unfinished or of the wrong kind."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it over `path` (file or directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class RunDir:
    """Paths and small helpers of one run directory. Holds no state beyond its path — and, once a stage has
    opened it with `report_to` set, the tracker its metrics also go to (core/tracking.py)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tracker = None

    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    samples_dir = property(lambda self: self.path / "samples")
    model_dir = property(lambda self: self.path / "model")
    state_dir = property(lambda self: self.path / "state")
    done_path = property(lambda self: self.path / "DONE.json")

    def is_done(self) -> bool:
        return self.done_path.exists()

    def has_state(self) -> bool:
        return (self.state_dir / "trainer.json").exists()

    def open(self, stage: str, cfg: Any, write: bool = True) -> dict[str, Any] | None:
        """A stage's first step: a finished run's DONE.json summary (the run is left as it is), or None once the
        run is started or resumed (`start`; `write=False`: another process writes config.yaml)."""
        if self.is_done():
            log.info("%s is already DONE; nothing to do", self.path)
            return self.read_done()
        if write:
            self.start(stage, cfg)
            from rlhflab.core.tracking import open_tracker

            self.tracker = open_tracker(getattr(cfg, "report_to", "none"), self.path, stage, to_dict(cfg))
        return None

    def start(self, stage: str, cfg: Any) -> None:
        """Create the directory and write config.yaml (resolved config + git revision) before step 0.

        Resuming, the config must be the one the run started with — except the keys the stage's config class
        lists in `RESUMABLE` (settings that only affect the steps still to come: logging, checkpoint periods,
        the RM's normalisation...). A change to those is taken and recorded in config.yaml's `changes` (key, old
        and new value, the last logged step); a change to any other key is refused with the diff."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():
            doc = {"stage": stage, "git_revision": git_revision(), "config": to_dict(cfg)}
            atomic_write_text(self.config_path, yaml.safe_dump(doc, sort_keys=False))
            return
        old = self.read_config()
        if old.get("stage") != stage:
            raise RunError(f"{self.path}: holds another stage (stage {old.get('stage')} -> {stage}); use a new --out")
        changes = config_changes(old.get("config", {}), to_dict(cfg))
        if not changes:
            return
        allowed = tuple(getattr(type(cfg), "RESUMABLE", ()))
        refused = [c for c in changes if not any(c[0] == k or c[0].startswith(k + ".") for k in allowed)]
        if refused:
            diff = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in refused)
            raise RunError(f"{self.path}: exists with a different config ({diff}); these keys change what is already "
                           f"done, so use a new --out to start a new run, or the same values to resume"
                           + (f" (keys that may change on resume: {', '.join(allowed)})" if allowed else ""))
        step = self.read_metrics()[-1]["step"] if self.metrics_path.exists() and self.read_metrics() else 0
        old["changes"] = [*old.get("changes", []), *({"key": k, "old": a, "new": b, "at_step": step}
                                                     for k, a, b in changes)]
        old["config"] = to_dict(cfg)
        atomic_write_text(self.config_path, yaml.safe_dump(old, sort_keys=False))
        log.warning("%s: resuming with %s (recorded in config.yaml)", self.path,
                    "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes))

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            raise RunError(f"{self.path}: no config.yaml — not a run directory")
        return yaml.safe_load(self.config_path.read_text())

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self.tracker is not None:  # the same row, same names, same step
            self.tracker.log(step, metrics)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The logged rows; a torn last line from a killed run is left out (and left in the file for
        `truncate_metrics`: reading another run's metrics never changes them)."""
        from rlhflab.core.appendlog import read_complete

        return read_complete(self.metrics_path).rows

    def truncate_metrics(self, last_step: int) -> None:
        """On resume: drop metric rows logged after the checkpoint we resume from."""
        rows = [r for r in self.read_metrics() if r["step"] <= last_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        if self.tracker is not None:
            self.tracker.purge_after(last_step)

    def write_done(self, summary: dict[str, Any]) -> None:
        """DONE.json, after the model card of a training stage's model/ (README.md, core/model_card.py)."""
        summary = {k: _plain(v) for k, v in summary.items()}
        if (self.model_dir / "config.json").exists() and self.config_path.exists():
            from rlhflab.core.model_card import model_card

            doc = self.read_config()
            atomic_write_text(self.model_dir / "README.md", model_card(
                doc.get("stage", summary.get("stage", "")), doc.get("config", {}), summary, doc.get("git_revision")))
        atomic_write_json(self.done_path, summary)
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None

    def read_done(self) -> dict[str, Any]:
        return json.loads(self.done_path.read_text())

    def require_done(self, allow_partial: bool = False) -> None:
        if not self.path.exists():
            raise RunError(f"{self.path}: run directory not found")
        if not self.is_done() and not allow_partial:
            raise RunError(
                f"{self.path}: the run has no DONE.json — it is unfinished. Resume it, or pass "
                "allow_partial to use its last checkpoint anyway."
            )


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "config.yaml").exists()


def config_changes(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) of every leaf that differs between two nested config mappings."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in sorted(set(old) | set(new)) for c in config_changes(old.get(k), new.get(k), f"{prefix}{k}.")]
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        old, new = list(old), list(new)
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars -> Python numbers, so metrics are always valid JSON."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value
