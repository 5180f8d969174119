import json
from dataclasses import dataclass

import pytest

from rlhflab.core.rundir import RunDir, RunError, atomic_path, atomic_write_json


@dataclass
class Cfg:
    lr: float = 0.1


def test_atomic_path_leaves_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "f.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("{torn")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temp litter


def test_atomic_path_replaces_directories(tmp_path):
    target = tmp_path / "state"
    for value in ("a", "b"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "x").write_text(value)
    assert (target / "x").read_text() == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_run_lifecycle(tmp_path):
    run = RunDir(tmp_path / "r")
    with pytest.raises(RunError, match="not found"):
        run.require_done()
    run.start("sft", Cfg())
    assert run.read_config()["config"] == {"lr": 0.1}
    with pytest.raises(RunError, match="DONE.json"):
        run.require_done()
    run.require_done(allow_partial=True)
    for step in (1, 2, 3):
        run.log_metrics(step, {"loss": 1.0 / step})
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 4, "lo')  # a torn line from a killed process
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3]
    run.truncate_metrics(2)
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    run.write_done({"step": 2})
    run.require_done()


def test_resume_with_changed_config_is_refused(tmp_path):
    run = RunDir(tmp_path / "r")
    run.start("sft", Cfg())
    run.start("sft", Cfg())  # same config: fine (a resume)
    with pytest.raises(RunError, match="lr"):
        run.start("sft", Cfg(lr=0.2))
    with pytest.raises(RunError, match="stage"):
        run.start("rm", Cfg())


@dataclass
class ResumableCfg:
    RESUMABLE = ("log_every", "eval")
    lr: float = 0.1
    log_every: int = 1
    eval: dict | None = None


def test_resume_may_change_only_the_declared_keys_and_the_change_is_recorded(tmp_path):
    import yaml

    run = RunDir(tmp_path / "r")
    run.start("rm", ResumableCfg())
    run.log_metrics(7, {"loss": 1.0})
    run.start("rm", ResumableCfg(log_every=5, eval={"every": 3}))  # only later steps change: taken
    doc = yaml.safe_load(run.config_path.read_text())
    assert doc["config"]["log_every"] == 5
    assert {"key": "log_every", "old": 1, "new": 5, "at_step": 7} in doc["changes"]
    assert [c["key"] for c in doc["changes"]] == ["eval", "log_every"]
    with pytest.raises(RunError) as err:  # a training key: refused, with the diff and the keys that may change
        run.start("rm", ResumableCfg(lr=0.3, log_every=5, eval={"every": 3}))
    assert "lr: 0.1 -> 0.3" in str(err.value) and "log_every, eval" in str(err.value)
    assert yaml.safe_load(run.config_path.read_text())["config"]["lr"] == 0.1  # nothing saved is lost
