"""`rlhflab dpo`: the loss on a hand-computed case, a tiny run on real batch13 pairs that raises the chosen-vs-
rejected margin from the reference's 0, the reference's log-probs cached once, and an interrupted run that
resumes to the same numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch  # noqa: E402

from rlhflab.cli import main  # noqa: E402
from rlhflab.core.config import load_config  # noqa: E402
from rlhflab.models.loading import load_model  # noqa: E402
from rlhflab.ops.losses import dpo_losses  # noqa: E402
from rlhflab.train import dpo  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_the_dpo_loss_by_hand():
    # policy log-probs (chosen -10, rejected -12), reference (-11, -11), β = 0.5:
    # r_c = 0.5·(−10 + 11) = 0.5, r_r = 0.5·(−12 + 11) = −0.5, loss = −log σ(1) = log(1 + e^−1)
    loss, rc, rr = dpo_losses(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]),
                              torch.tensor([-11.0]), beta=0.5)
    assert float(rc) == 0.5 and float(rr) == -0.5
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    same, _, _ = dpo_losses(torch.tensor([-3.0]), torch.tensor([-4.0]), torch.tensor([-3.0]), torch.tensor([-4.0]),
                            beta=0.1)
    assert float(same) == pytest.approx(math.log(2), abs=1e-6)  # the policy is the reference: Δ = 0


def test_summary_logprobs_are_the_summed_token_logprobs():
    model, tok = load_model("tiny")
    pair = dpo.Pair([5, 6, 7], [8, 9], [10])
    lp = dpo.summary_logprobs(model, dpo.collate([pair], tok.pad_token_id))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).logits.log_softmax(-1)[0]
    expected = float(logits[2, 8] + logits[3, 9])  # position t predicts token t+1
    assert float(lp[0]) == pytest.approx(expected, abs=1e-4)
    with torch.no_grad():
        logits_r = model(input_ids=torch.tensor([[5, 6, 7, 10]])).logits.log_softmax(-1)[0]
    assert float(lp[1]) == pytest.approx(float(logits_r[2, 10]), abs=1e-4)


def _cfg(*extra: str) -> dpo.DPOConfig:
    return load_config(dpo.DPOConfig, REPO / "configs/dpo/tiny.yaml",
                       ["max_steps=8", "save_every=2", "eval_every=4", "optim.lr=3e-3", *extra])


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_tiny_dpo_run_raises_the_margin_and_caches_the_reference(tmp_path, shared_data):
    cfg = _cfg("data.limit=48", "epochs=6", "max_steps=null")
    summary = dpo.train(cfg, str(tmp_path / "dpo"))
    rows = _metrics(tmp_path / "dpo")
    assert rows[0]["step"] == 0 and rows[0]["eval/margin"] == pytest.approx(0.0, abs=1e-4)  # π = π_ref at start
    assert rows[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-4)
    model, tok = load_model(str(tmp_path / "dpo"))  # the policy saved as a plain model
    train_pairs, _ = dpo.load_pairs(cfg, tok)
    ref = torch.load(tmp_path / "dpo" / dpo.REFERENCE_CACHE, weights_only=True)  # computed once, kept
    assert ref["train"].shape == (len(train_pairs), 2)
    after = dpo.evaluate(model, train_pairs, ref["train"], tok.pad_token_id, cfg)
    assert after["eval/margin"] > 0.5 and after["eval/accuracy"] > 0.8  # the chosen summaries pulled ahead
    assert after["eval/loss"] < math.log(2)
    assert summary["stage"] == "dpo" and summary["train_pairs"] == len(train_pairs)
    assert (tmp_path / "dpo/model/README.md").read_text().count("direct preference optimisation") == 1


def test_an_interrupted_dpo_run_resumes_to_the_same_numbers(tmp_path, shared_data):
    dpo.train(_cfg(), str(tmp_path / "straight"))
    assert dpo.train(_cfg(), str(tmp_path / "resumed"), stop_after=3) == {"stopped_at": 3}
    dpo.train(_cfg(), str(tmp_path / "resumed"))
    drop = ("train/pairs_per_s",)
    a = [{k: v for k, v in r.items() if k not in drop} for r in _metrics(tmp_path / "straight")]
    b = [{k: v for k, v in r.items() if k not in drop} for r in _metrics(tmp_path / "resumed")]
    assert a == b
    wa, wb = (load_model(str(tmp_path / x))[0].state_dict() for x in ("straight", "resumed"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_cli_runs_dpo_and_rejects_a_bad_beta(tmp_path, capsys, shared_data):
    assert main(["dpo", "--config", "configs/dpo/tiny.yaml", "--out", str(tmp_path / "bad"), "beta=0"]) == 2
    assert "beta" in capsys.readouterr().err
    assert main(["dpo", "--config", "configs/dpo/tiny.yaml", "--out", str(tmp_path / "ok"), "max_steps=2"]) == 0
    assert json.loads((tmp_path / "ok/DONE.json").read_text())["stage"] == "dpo"
