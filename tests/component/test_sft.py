"""SFT on a tiny in-process model and real TL;DR posts: the loss falls, and resume is exact."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from rlhflab.core.config import load_config  # noqa: E402
from rlhflab.core.rundir import RunDir  # noqa: E402
from rlhflab.train.common import length_grouped_order  # noqa: E402
from rlhflab.train.sft import Example, SFTConfig, collate, train  # noqa: E402


def tiny_cfg(shared_data, **overrides) -> SFTConfig:
    base = [f"data.train={shared_data / 'tldr/train.jsonl.gz'}", f"data.eval={shared_data / 'tldr/eval.jsonl.gz'}"]
    return load_config(SFTConfig, "configs/sft/tiny.yaml", base + [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[2])


def test_collate_masks_query_and_padding():
    examples = [Example([5, 6, 7], [8, 9]), Example([5], [8])]
    batch = collate(examples, pad_id=0, loss_on="response")
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 8, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 8, 9], [-100, 8, -100, -100, -100]]
    whole = collate(examples, pad_id=0, loss_on="sequence")
    assert whole["labels"].tolist()[1] == [5, 8, -100, -100, -100]


def test_length_grouped_order_is_a_permutation_of_full_batches():
    lengths = list(range(37))
    order = length_grouped_order(lengths, batch_size=4, seed=3)
    assert len(order) == 36 and len(set(order)) == 36
    assert order == length_grouped_order(lengths, batch_size=4, seed=3)
    assert order != length_grouped_order(lengths, batch_size=4, seed=4)


def test_sft_loss_falls_and_run_dir_is_complete(shared_data, tmp_path):
    out = tmp_path / "sft"
    summary = train(tiny_cfg(shared_data, epochs=4), str(out))
    run = RunDir(out)
    assert run.is_done() and (run.model_dir / "model.safetensors").exists()
    evals = [r["eval/loss"] for r in run.read_metrics() if "eval/loss" in r]
    assert evals[-1] < 0.85 * evals[0], evals  # byte-level model: ~5.6 nats at init
    assert summary["eval_loss_final"] == pytest.approx(evals[-1])
    tables = sorted(run.samples_dir.glob("*.jsonl"))
    assert tables and all("response" in json.loads(line) for line in tables[-1].read_text().splitlines())


def test_interrupted_run_resumes_to_the_same_weights(shared_data, tmp_path):
    cfg = tiny_cfg(shared_data, save_every=3)
    train(cfg, str(tmp_path / "straight"))
    assert train(cfg, str(tmp_path / "resumed"), stop_after=5) == {"stopped_at": 5}
    assert not RunDir(tmp_path / "resumed").is_done()
    train(cfg, str(tmp_path / "resumed"))  # resumes from the step-3 checkpoint, redoing steps 4 and 5

    from safetensors.torch import load_file

    a = load_file(tmp_path / "straight/model/model.safetensors")
    b = load_file(tmp_path / "resumed/model/model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    rows_a, rows_b = RunDir(tmp_path / "straight").read_metrics(), RunDir(tmp_path / "resumed").read_metrics()
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    assert [r.get("train/loss") for r in rows_a] == [r.get("train/loss") for r in rows_b]
    assert RunDir(tmp_path / "resumed").read_done()["step"] == RunDir(tmp_path / "straight").read_done()["step"]
