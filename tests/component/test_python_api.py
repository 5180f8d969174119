"""The Python API (rlhflab/api.py): the CLI's stages as functions with the same config keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

import rlhflab  # noqa: E402
from rlhflab.core.config import ConfigError, load_config  # noqa: E402
from rlhflab.train.reward import RewardConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def test_overrides_as_dicts_or_dotted_keys_build_the_clis_config():
    from rlhflab.api import build_config

    cli = load_config(RewardConfig, "configs/rm/tiny.yaml", ["data.limit=32", "epochs=2", "optim.lr=0.01"])
    nested = build_config(RewardConfig, "configs/rm/tiny.yaml", data={"limit": 32}, epochs=2, optim={"lr": 0.01})
    dotted = build_config(RewardConfig, "configs/rm/tiny.yaml", **{"data.limit": 32, "epochs": 2, "optim.lr": 0.01})
    assert nested == cli == dotted
    assert nested.data.max_query_tokens == cli.data.max_query_tokens  # the YAML's other data keys are kept
    assert build_config(RewardConfig, cli) is cli
    assert build_config(RewardConfig, cli, epochs=3).epochs == 3
    with pytest.raises(ConfigError, match="no_such_key"):
        build_config(RewardConfig, "configs/rm/tiny.yaml", no_such_key=1)
    with pytest.raises(TypeError):
        from rlhflab.train.sft import SFTConfig

        build_config(RewardConfig, SFTConfig())


def test_a_stage_runs_from_python_and_returns_its_summary(tmp_path, shared_data):
    out = tmp_path / "rm"
    summary = rlhflab.rm(out, "configs/rm/tiny.yaml", data={"limit": 48}, max_steps=2, eval_every=0,
                         normalise_on=None)
    assert summary == json.loads((out / "DONE.json").read_text()) and summary["step"] == 2
    again = rlhflab.rm(out, "configs/rm/tiny.yaml", data={"limit": 48}, max_steps=2, eval_every=0, normalise_on=None)
    assert again == summary  # a finished run is returned as it is, like the CLI
    ev = rlhflab.rm_eval(tmp_path / "ev", "configs/rm-eval/tiny.yaml", model=str(out), limit=16, plot=False)
    assert ev["n_pairs"] > 0 and "length_baseline_accuracy" in ev


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError):
        rlhflab.no_such_stage  # noqa: B018
