"""`rlhflab rm heads=odin` end to end on a tiny model and real batch13 pairs: both heads trained, saved and loaded
back, the quality head alone is the score everywhere (PPO, best-of-N, the classifier export), the run resumes, and
rm-eval reports each head apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch  # noqa: E402

from rlhflab.core.config import load_config  # noqa: E402
from rlhflab.eval import rm_eval  # noqa: E402
from rlhflab.models.reward import length_head_scores, load_reward_model  # noqa: E402
from rlhflab.train.reward import RewardConfig, train  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _cfg(*extra: str) -> RewardConfig:
    return load_config(RewardConfig, REPO / "configs/rm/tiny.yaml",
                       ["heads=odin", "max_steps=4", "save_every=2", "eval_every=2", *extra])


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_an_odin_rm_trains_saves_both_heads_and_scores_with_the_quality_head(tmp_path, shared_data):
    summary = train(_cfg(), str(tmp_path / "rm"))
    assert summary["heads"] == "odin" and summary["dev_length_correlation"] is not None
    evals = [r for r in _metrics(tmp_path / "rm") if "eval/accuracy" in r]
    assert all("eval/length_correlation" in r and "eval/length_head_correlation" in r for r in evals)
    rm = load_reward_model(tmp_path / "rm")
    assert rm.heads == "odin" and rm.length_head is not None
    q, r = [rm.encode_query("SUBREDDIT: r/x\n\nTITLE: t\n\nPOST: p\n\nTL;DR:")] * 2, [rm.encode_response("a b"),
                                                                                     rm.encode_response("c")]
    scores = rm.score_ids(q, r)
    states = [rm.last_states(*_one(qq + rr)) for qq, rr in zip(q, r)]
    with torch.no_grad():
        quality_only = torch.cat([rm.read(h) for h in states])
        lengths = torch.cat([rm.read_length(h) for h in states])
    assert torch.allclose(scores, quality_only, atol=1e-6)  # the score is the quality head (plus the bias)
    assert not torch.allclose(scores, quality_only + lengths, atol=1e-3)  # ...not the sum training fitted
    assert torch.allclose(length_head_scores(rm, q, r), lengths, atol=1e-6)
    cls = json.loads((tmp_path / "rm/model/config.json").read_text())
    assert cls["id2label"] == {"0": "LABEL_0"}  # the classifier export carries the quality head alone


def _one(ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)


def test_an_interrupted_odin_run_resumes_to_the_same_heads(tmp_path, shared_data):
    train(_cfg(), str(tmp_path / "straight"))
    assert train(_cfg(), str(tmp_path / "resumed"), stop_after=2) == {"stopped_at": 2}
    train(_cfg(), str(tmp_path / "resumed"))
    a, b = load_reward_model(tmp_path / "straight"), load_reward_model(tmp_path / "resumed")
    assert torch.equal(a.length_head.weight, b.length_head.weight) and torch.equal(a.head.weight, b.head.weight)


def test_rm_eval_reports_each_head_apart(tmp_path, shared_data):
    train(_cfg(), str(tmp_path / "rm"))
    cfg = load_config(rm_eval.RMEvalConfig, None, [f"model={tmp_path / 'rm'}", "limit=48", "split=all",
                                                   "plot=false"])
    rm_eval.evaluate(cfg, str(tmp_path / "eval"))
    report = json.loads((tmp_path / "eval/report.json").read_text())
    assert report["heads"] == "odin" and set(report["per_head"]) == {"quality", "length", "sum"}
    assert report["per_head"]["quality"]["accuracy"] == report["accuracy"]
    assert report["per_head"]["quality"]["score_length_correlation"] == pytest.approx(
        report["score_length_correlation"])
    assert all(-1 <= h["score_length_correlation"] <= 1 for h in report["per_head"].values())
