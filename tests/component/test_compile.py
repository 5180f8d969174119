"""compile=true (issue 17): each decoder layer runs through torch.compile in the training forward+backward only,
and a compiled run gives the eager run's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch._dynamo.utils import counters  # noqa: E402

from rlhflab.core.config import load_config  # noqa: E402
from rlhflab.models.compiled import compiled_layers  # noqa: E402
from rlhflab.models.family import decoder_layers  # noqa: E402
from rlhflab.models.loading import load_model  # noqa: E402
from rlhflab.train import ppo  # noqa: E402
from rlhflab.train.distributed import Processes  # noqa: E402
from rlhflab.train.sft import SFTConfig  # noqa: E402
from rlhflab.train.sft import train as train_sft  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_compiled_layers_are_swapped_in_for_the_block_only_and_give_the_same_logits():
    model, _ = load_model("tiny")
    keys = list(model.state_dict())
    ids = torch.randint(0, 200, (2, 9))
    eager = model(input_ids=ids).logits
    with compiled_layers(model):
        inside = [type(layer).__name__ for layer in decoder_layers(model)]
        assert list(model.state_dict()) != keys  # the wrappers really are in the model during the block
        out = model(input_ids=ids).logits
    assert inside == ["OptimizedModule"] * len(inside)
    assert {type(layer).__name__ for layer in decoder_layers(model)} != {"OptimizedModule"}
    assert list(model.state_dict()) == keys  # and gone after it: checkpoints never see them
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
    originals = list(decoder_layers(model))
    with compiled_layers(model, enabled=False):  # off: the very same layer objects, nothing wrapped
        assert all(a is b for a, b in zip(decoder_layers(model), originals, strict=True))


def test_a_compiled_ppo_run_gives_the_eager_runs_numbers(tmp_path):
    """Policy and value model compiled, with frozen-layer reuse on top (the compiled list is what gets sliced)."""
    def run(name: str, *extra: str) -> list[dict]:
        cfg = load_config(ppo.PPOConfig, REPO / "configs/ppo/tiny.yaml",
                          ["reward=python:tests.component.test_ppo:lowercase_fraction", "total_episodes=16",
                           "freeze_layers=1", "save_every=0", *extra])
        ppo.train(cfg, str(tmp_path / name))
        return metrics(tmp_path / name)

    eager = run("eager")
    counters.clear()
    compiled = run("compiled", "compile=true")
    assert 1 <= counters["stats"]["unique_graphs"] <= 4  # compiled, and not once per layer (recompiles)
    assert len(eager) == len(compiled) == 2
    for a, b in zip(eager, compiled):
        for key in ("objective/score", "objective/kl", "ppo/policy_loss", "ppo/value_loss", "ppo/approxkl"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-5), key


def test_a_compiled_sft_run_gives_the_eager_runs_losses(tmp_path, shared_data):
    def run(name: str, *extra: str) -> list[float]:
        cfg = load_config(SFTConfig, "configs/sft/tiny.yaml",
                          [f"data.train={shared_data / 'tldr' / 'train.jsonl.gz'}", "data.eval=null", "max_steps=3",
                           "save_every=0", "n_samples=0", *extra])
        train_sft(cfg, str(tmp_path / name))
        return [row["train/loss"] for row in metrics(tmp_path / name) if "train/loss" in row]

    eager, compiled = run("eager"), run("compiled", "compile=true")
    assert len(eager) == 3
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_compile_is_refused_under_fsdp():
    from rlhflab.train.common import check_compile

    sharded = Processes(rank=0, world_size=2, device=torch.device("cpu"), shard=True)
    with pytest.raises(ValueError, match="compile=true with FSDP"):
        check_compile(True, sharded)
    check_compile(False, sharded)
