"""report_to: the rows of metrics.jsonl, also in TensorBoard event files under the run (read back with
tensorboard's own EventAccumulator), a resumed run without duplicated steps, and a clear error for a tracker
whose package is missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("tensorboard")

from rlhflab.cli import main  # noqa: E402
from rlhflab.core.config import load_config  # noqa: E402
from rlhflab.train.reward import RewardConfig, train  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def _events(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _cfg(**overrides) -> RewardConfig:
    base = {"data.limit": 64, "max_steps": 6, "eval_every": 3, "save_every": 2, "log_every": 1,
            "normalise_on": "null", "report_to": "tensorboard", **overrides}
    return load_config(RewardConfig, "configs/rm/tiny.yaml", [f"{k}={v}" for k, v in base.items()])


def test_tensorboard_events_hold_the_same_values_as_metrics_jsonl(tmp_path, shared_data):
    run = tmp_path / "rm"
    train(_cfg(), str(run))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = _events(run)
    for tag in ("train/loss", "train/accuracy", "eval/accuracy", "train/lr"):
        expected = [(r["step"], r[tag]) for r in rows if tag in r]
        assert [s for s, _ in events[tag]] == [s for s, _ in expected], tag
        assert [v for _, v in events[tag]] == pytest.approx([v for _, v in expected], rel=1e-6), tag


def test_a_resumed_run_purges_the_steps_after_its_checkpoint(tmp_path, shared_data):
    run = tmp_path / "rm"
    assert train(_cfg(), str(run), stop_after=3) == {"stopped_at": 3}  # checkpoint at 2, step 3 logged then lost
    assert [s for s, _ in _events(run)["train/loss"]] == [1, 2, 3]
    summary = train(_cfg(), str(run))
    steps = [s for s, _ in _events(run)["train/loss"]]
    assert steps == list(range(1, summary["step"] + 1))  # step 3 once: the resumed run's, not both
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = [r["train/loss"] for r in rows if "train/loss" in r]
    assert [v for _, v in _events(run)["train/loss"]] == pytest.approx(expected, rel=1e-6)


def test_a_tracker_whose_package_is_missing_is_a_one_line_error(tmp_path, monkeypatch, capsys, shared_data):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    code = main(["rm", "--config", "configs/rm/tiny.yaml", "--out", str(tmp_path / "rm"), "report_to=wandb",
                 "max_steps=1", "data.limit=16", "normalise_on=null"])
    err = capsys.readouterr().err
    assert code == 2 and "report_to=wandb needs the wandb package: pip install wandb" in err
    assert "Traceback" not in err


def test_the_pipeline_passes_report_to_to_its_training_stages_only(tmp_path, monkeypatch):
    import subprocess

    from rlhflab import pipeline

    cmds = []

    def fake_run(cmd, env=None):  # what the stage would do: write DONE.json
        cmds.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "DONE.json").write_text("{}")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(pipeline.subprocess, "run", fake_run)
    cfg = load_config(pipeline.PipelineConfig, None, ["report_to=tensorboard"])
    runner = pipeline.StageRunner(cfg, str(tmp_path))
    runner.stage("sft", "sft", pipeline.StageSpec(None, ["report_to=none"]), tmp_path / "sft", {})
    runner.stage("ppo", "ppo", pipeline.StageSpec(None, []), tmp_path / "ppo", {})
    runner.stage("sample", "sample", pipeline.StageSpec(None, []), tmp_path / "sample", {})
    sft, ppo, sample = cmds
    assert sft[-2:] == ["report_to=tensorboard", "report_to=none"]  # the stage's own override comes last: it wins
    assert ppo[-1] == "report_to=tensorboard"
    assert not any(a.startswith("report_to") for a in sample)  # sampling trains nothing


def _rm_with(report_to: str, run: Path, env: dict) -> None:
    """The tiny RM stage with `report_to`, in a child process: the trackers read their settings at import."""
    import os
    import subprocess

    subprocess.run([sys.executable, "-m", "rlhflab", "rm", "--config", "configs/rm/tiny.yaml", "--out", str(run),
                    f"report_to={report_to}", "max_steps=3", "data.limit=48", "normalise_on=null", "eval_every=0"],
                   cwd=REPO, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


def test_trackio_offline_holds_the_same_rows_as_metrics_jsonl(tmp_path, shared_data):
    import sqlite3

    pytest.importorskip("trackio")
    _rm_with("trackio", tmp_path / "rm", {"TRACKIO_DIR": str(tmp_path / "trackio")})
    db = sqlite3.connect(tmp_path / "trackio" / "rlhflab.db")
    logged = {step: json.loads(m) for step, m in db.execute("select step, metrics from metrics order by step")}
    rows = [json.loads(line) for line in (tmp_path / "rm/metrics.jsonl").read_text().splitlines()]
    for row in rows:
        for key in ("train/loss", "train/lr"):
            if key in row:
                assert logged[row["step"]][key] == pytest.approx(row[key], rel=1e-6), (row["step"], key)
    assert "data/train_rows_in" in logged[0]  # the step-0 data counts too


def test_wandb_offline_writes_one_run_per_run_directory(tmp_path, shared_data):
    pytest.importorskip("wandb")
    from rlhflab.core.tracking import _run_id

    run = tmp_path / "rm"
    _rm_with("wandb", run, {"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1 and files[0].stat().st_size > 0
    assert files[0].name == f"run-{_run_id(run)}.wandb"  # the id a resumed run continues
