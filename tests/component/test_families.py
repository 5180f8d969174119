"""The seven model families rlhflab supports, as tiny random models built in-process (`tiny-<family>`): SFT, RM
and PPO with frozen layers (and PPO's frozen-layer reuse), and LoRA PPO, each interrupted and resumed; the BOS
token where the family's tokenizer adds one, in every stage's queries; a clear error for a decoder it cannot take
apart."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

pytest.importorskip("torch")

from torch import nn  # noqa: E402

from rlhflab.core.config import load_config  # noqa: E402
from rlhflab.data.format import encode_query, query_prefix  # noqa: E402
from rlhflab.data.loaders import load_posts  # noqa: E402
from rlhflab.models.family import UnsupportedModelError, anatomy, decoder_layers, lora_targets  # noqa: E402
from rlhflab.models.loading import TINY_FAMILIES, TINY_WITH_BOS, load_model  # noqa: E402
from rlhflab.models.reward import load_reward_model  # noqa: E402
from rlhflab.models.trunk import split_matches_full  # noqa: E402
from rlhflab.train import ppo, reward, sft  # noqa: E402
from rlhflab.train.common import freeze_lower_layers  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BOS_ID = 257  # the tiny byte tokenizer's <|bos|>
# GPT-2 adds its position embeddings to inputs_embeds: the frozen lower layers cannot be run apart from the rest
SPLITS = {f: f != "gpt2" for f in TINY_FAMILIES}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _resumed(train, cfg, run: Path, stop_after: int, **kw) -> dict:
    """Train with an interruption after `stop_after` steps, then resume to the end."""
    assert train(cfg, str(run), stop_after=stop_after, **kw) == {"stopped_at": stop_after}
    summary = train(cfg, str(run), **kw)
    assert (run / "DONE.json").exists()
    return summary


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_the_anatomy_of_every_family_is_found_and_its_layers_freeze(family):
    model, tok = load_model(f"tiny-{family}")
    an = anatomy(model)
    assert an.model_type == family
    layers = decoder_layers(model)
    assert len(layers) == 2 and isinstance(layers, nn.ModuleList)
    total = sum(p.numel() for p in model.parameters())
    trainable = freeze_lower_layers(model, 1)
    assert 0 < trainable < total
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in layers[1].parameters())
    assert not model.get_input_embeddings().weight.requires_grad
    assert split_matches_full(model, 1, model.config.vocab_size) is SPLITS[family]
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert all(t.rsplit(".", 1)[-1] in names for t in lora_targets(model))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_queries_start_with_bos_exactly_where_the_tokenizer_adds_one(family):
    _, tok = load_model(f"tiny-{family}")
    expected = [BOS_ID] if family in TINY_WITH_BOS else []
    assert query_prefix(tok) == expected
    assert tok.encode("ab", add_special_tokens=True) == expected + [97, 98]  # the tokenizer's own view agrees
    assert encode_query(tok, "ab") == expected + [97, 98]


def test_a_decoder_without_a_layer_list_is_refused_naming_the_option_and_the_architecture():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(nn.Linear(2, 2))

    with pytest.raises(UnsupportedModelError, match=r"freeze_layers: Odd .*layer list layers/h"):
        freeze_lower_layers(Odd(), 1)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_sft_rm_and_ppo_run_and_resume_on_every_family(family, tmp_path, shared_data, caplog):
    spec = f"tiny-{family}"
    bos = [BOS_ID] if family in TINY_WITH_BOS else []
    # 1. SFT with the lowest layer frozen, interrupted after 2 steps and resumed
    sft_cfg = load_config(sft.SFTConfig, REPO / "configs/sft/tiny.yaml",
                          [f"model={spec}", "freeze_layers=1", "max_steps=4", "save_every=2", "eval_every=2",
                           "data.limit_train=16", "n_samples=1"])
    _resumed(sft.train, sft_cfg, tmp_path / "sft", 2)
    policy, tok = load_model(str(tmp_path / "sft"))
    assert policy.config.model_type == family and query_prefix(tok) == bos
    posts = list(load_posts(sft_cfg.data.train, limit=4))
    _, examples = sft.build_examples(posts, tok, sft_cfg.data)
    assert all(e.query_ids[: len(bos)] == bos and (not bos or e.query_ids[1] != BOS_ID) for e in examples)

    # 2. the RM on the SFT model, lowest layer frozen, interrupted and resumed
    rm_cfg = load_config(reward.RewardConfig, REPO / "configs/rm/tiny.yaml",
                         [f"model={tmp_path / 'sft'}", "freeze_layers=1", "max_steps=4", "save_every=2",
                          "eval_every=2", "data.limit=96", "normalise_limit=8"])
    _resumed(reward.train, rm_cfg, tmp_path / "rm", 2)
    rm = load_reward_model(tmp_path / "rm")
    assert rm.encode_query("ab")[: len(bos)] == bos

    # 3. PPO on the RM with the lowest layer frozen and reused once per rollout where the family splits cleanly
    ppo_args = [f"model={tmp_path / 'sft'}", f"reward={tmp_path / 'rm'}", "total_episodes=16", "save_every=1",
                "sample_every=1"]
    cfg = load_config(ppo.PPOConfig, REPO / "configs/ppo/tiny.yaml", ppo_args + ["freeze_layers=1",
                                                                                "reuse_frozen=true"])
    with caplog.at_level(logging.INFO, logger="rlhflab"):
        _resumed(ppo.train, cfg, tmp_path / "ppo", 1)
    log = caplog.text
    if SPLITS[family]:
        assert "the frozen lower 1 layers run once per rollout" in log
    else:
        assert f"reuse_frozen: {type(policy).__name__} (model_type {family}) does not split cleanly" in log
    _, queries, query_ids = ppo.load_queries(cfg, tok)
    assert all(ids[: len(bos)] == bos for ids in query_ids)
    assert len(_metrics(tmp_path / "ppo")) == 2

    # 4. LoRA PPO on the family's default attention projections, interrupted and resumed
    lora_cfg = load_config(ppo.PPOConfig, REPO / "configs/ppo/tiny.yaml", ppo_args + ["lora.r=4", "lora.alpha=8"])
    _resumed(ppo.train, lora_cfg, tmp_path / "lora", 1)
    rows = _metrics(tmp_path / "lora")
    assert rows[0]["objective/kl"] == pytest.approx(0.0, abs=1e-4)  # reference = the base, adapters off
    assert rows[1]["objective/kl"] != 0.0  # ...and the adapters on the family's projections moved the policy
    merged, _ = load_model(str(tmp_path / "lora"))
    assert merged.config.model_type == family and not any("lora" in n for n in merged.state_dict())
