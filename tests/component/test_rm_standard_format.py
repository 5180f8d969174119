"""Reward models in the standard format, both ways: an `rlhflab rm` run's model/ loads with transformers'
AutoModelForSequenceClassification with the trained head and gives rlhflab's score differences on real batch13
pairs; and a sequence-classification RM saved by plain transformers works as PPO's reward and as a judge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig  # noqa: E402

from rlhflab.core.config import load_config  # noqa: E402
from rlhflab.data.loaders import load_comparisons  # noqa: E402
from rlhflab.eval.judges import JudgeSpec, Text, build_judge  # noqa: E402
from rlhflab.models.loading import byte_tokenizer, load_model  # noqa: E402
from rlhflab.models.reward import (  # noqa: E402
    classifier_pad_id,
    load_reward_model,
    pad_sequences,
)
from rlhflab.train import ppo  # noqa: E402
from rlhflab.train.reward import RewardConfig, train  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BATCH13 = REPO.parent / "shared/data/comparisons/batch13.jsonl.gz"


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory, shared_data) -> Path:
    out = tmp_path_factory.mktemp("rm") / "rm"
    cfg = load_config(RewardConfig, REPO / "configs/rm/tiny.yaml", ["max_steps=3", "eval_every=0"])
    train(cfg, str(out))
    return out


def _pairs(rm, n: int = 24):
    """(query ids, chosen ids, rejected ids) of the first n batch13 comparisons, as rlhflab encodes them."""
    comps = list(load_comparisons(BATCH13, limit=n))
    q = [rm.encode_query(c.post) for c in comps]
    chosen = [rm.encode_response(c.summaries[c.choice].text) for c in comps]
    rejected = [rm.encode_response(c.summaries[1 - c.choice].text) for c in comps]
    return q, chosen, rejected


def _hf_scores(model, seqs: list[list[int]], pad_id: int, side: str) -> torch.Tensor:
    """transformers' own reading of a batch: padded with the directory's pad token, no positions given."""
    ids, mask = pad_sequences(seqs, pad_id, side=side)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.squeeze(-1).float()


@pytest.mark.parametrize("side", ["right", "left"])
def test_an_rm_run_loads_as_a_sequence_classifier_with_its_trained_head(rm_run, side):
    model_dir = rm_run / "model"
    hf, info = AutoModelForSequenceClassification.from_pretrained(model_dir, output_loading_info=True)
    assert not info["missing_keys"]  # the head is the trained one, not random
    assert hf.config.num_labels == 1
    rm = load_reward_model(rm_run)
    assert torch.equal(hf.score.weight.float(), rm.head.weight.float())
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert tok.pad_token_id == hf.config.pad_token_id != tok.eos_token_id  # transformers reads at the EOS
    q, chosen, rejected = _pairs(rm)
    ours = rm.score_ids(q, chosen) - rm.score_ids(q, rejected)  # (n,) margins
    seqs_c = [a + b for a, b in zip(q, chosen)]
    seqs_r = [a + b for a, b in zip(q, rejected)]
    theirs = _hf_scores(hf, seqs_c, tok.pad_token_id, side) - _hf_scores(hf, seqs_r, tok.pad_token_id, side)
    assert torch.allclose(ours, theirs, atol=1e-4)
    # the scores themselves differ by the offset config.json states (OpenRLHF's mean with std 1)
    config = json.loads((model_dir / "config.json").read_text())
    offset = config["rlhflab_reward"]["offset"]
    assert config["normalize_reward"] is True and config["mean"] == -offset and config["std"] == 1.0
    assert torch.allclose(rm.score_ids(q, chosen), _hf_scores(hf, seqs_c, tok.pad_token_id, side) + offset,
                          atol=1e-4)


def test_the_rm_directory_still_loads_as_a_causal_lm_without_a_load_report(rm_run, capfd):
    capfd.readouterr()
    lm, _ = load_model(str(rm_run))
    assert "UNEXPECTED" not in capfd.readouterr().err  # score.weight is expected there
    assert lm.config.model_type == "llama"
    plain = AutoModelForCausalLM.from_pretrained(rm_run / "model")  # and any tool gets the same backbone
    assert all(torch.equal(a, b) for a, b in zip(lm.state_dict().values(), plain.state_dict().values()))


def test_the_pad_token_of_the_classifier_view_is_never_eos():
    tok = byte_tokenizer()  # pad == eos, no unk, no bos: a plain id
    assert tok.pad_token_id == tok.eos_token_id and classifier_pad_id(tok) == 0
    bos = byte_tokenizer(bos=True)
    assert classifier_pad_id(bos) == bos.bos_token_id != bos.eos_token_id


# ------------------------------------------------------------------- an RM saved by plain transformers


def _plain_rm(where: Path, normalise: tuple[float, float] | None = None) -> Path:
    """A LlamaForSequenceClassification (num_labels=1) saved by transformers alone, with a pad that is not EOS
    (as TRL's RMs have)."""
    from transformers import LlamaForSequenceClassification

    tok = byte_tokenizer(bos=True)
    tok.pad_token = tok.bos_token
    config = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, num_labels=1,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    if normalise:
        config.normalize_reward, config.mean, config.std = True, *normalise
    torch.manual_seed(3)
    model = LlamaForSequenceClassification(config).eval()
    with torch.no_grad():
        model.score.weight.normal_(std=0.5)
    model.save_pretrained(where)
    tok.save_pretrained(where)
    return where


def test_a_plain_transformers_rm_scores_as_transformers_does(tmp_path):
    where = _plain_rm(tmp_path / "plain")
    rm = load_reward_model(where)
    hf = AutoModelForSequenceClassification.from_pretrained(where).eval()
    seqs = [[257, 72, 105, 256], [257, 97, 98, 99, 100, 256]]
    ours = rm.score_ids([s[:2] for s in seqs], [s[2:] for s in seqs])
    theirs = _hf_scores(hf, seqs, hf.config.pad_token_id, "right")
    assert torch.allclose(ours, theirs, atol=1e-5)
    normalised = load_reward_model(_plain_rm(tmp_path / "openrlhf", normalise=(2.0, 4.0)))
    assert torch.allclose(normalised.score_ids([s[:2] for s in seqs], [s[2:] for s in seqs]), (theirs - 2.0) / 4.0,
                          atol=1e-5)


def test_a_plain_transformers_rm_is_a_judge_and_ppos_reward(tmp_path, shared_data):
    where = _plain_rm(tmp_path / "plain")
    judge = build_judge(JudgeSpec(name="plain", kind="rm", spec=str(where)), tmp_path / "judge",
                        lambda spec: load_reward_model(spec))
    comps = list(load_comparisons(BATCH13, limit=4))
    posts = [c.post for c in comps]
    a = [Text(c.summaries[0].text) for c in comps]
    b = [Text(c.summaries[1].text) for c in comps]
    rm = load_reward_model(where)
    expected = rm.score(posts, [t.text for t in a]).tolist()
    assert judge.scores(posts, a) == pytest.approx(expected, abs=1e-5)
    assert all(0.0 < p < 1.0 for p in judge.prefer(posts, a, b))
    # PPO with the tiny BOS-adding policy (the same byte vocabulary) against the plain RM
    cfg = load_config(ppo.PPOConfig, REPO / "configs/ppo/tiny.yaml",
                      ["model=tiny-llama", f"reward={where}", "total_episodes=16", "save_every=0",
                       "freeze_layers=1", "reuse_frozen=true"])  # the value model starts as the plain RM
    summary = ppo.train(cfg, str(tmp_path / "ppo"))
    rows = [json.loads(line) for line in (tmp_path / "ppo/metrics.jsonl").read_text().splitlines()]
    assert summary["episodes"] == 16 and all(isinstance(r["objective/score"], float) for r in rows)
