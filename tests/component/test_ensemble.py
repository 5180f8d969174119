"""RM ensembles (Coste et al. 2023) as one reward: members' scores combined by mean, min and mean − λ·std, used as
PPO's reward, best-of-N's and a judge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch  # noqa: E402

from rlhflab.core.config import load_config  # noqa: E402
from rlhflab.data.loaders import load_comparisons  # noqa: E402
from rlhflab.eval.judges import JudgeSpec, Text, build_judge  # noqa: E402
from rlhflab.models.reward import load_reward_model  # noqa: E402
from rlhflab.train import ppo  # noqa: E402
from rlhflab.train.reward import RewardConfig, train  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BATCH13 = REPO.parent / "shared/data/comparisons/batch13.jsonl.gz"


@pytest.fixture(scope="module")
def members(tmp_path_factory, shared_data) -> list[Path]:
    root = tmp_path_factory.mktemp("ens")
    runs = []
    for seed in (1, 2, 3):  # different heads and batch orders on the same frozen layer
        cfg = load_config(RewardConfig, REPO / "configs/rm/tiny.yaml", [f"seed={seed}", "max_steps=3",
                                                                        "eval_every=0", "freeze_layers=1"])
        train(cfg, str(root / f"rm{seed}"))
        runs.append(root / f"rm{seed}")
    return runs


def test_an_ensemble_scores_as_its_rule_says(members):
    comps = list(load_comparisons(BATCH13, limit=6))
    posts, texts = [c.post for c in comps], [c.summaries[0].text for c in comps]
    each = torch.stack([load_reward_model(m).score(posts, texts) for m in members])  # (3, 6)
    paths = ",".join(map(str, members))
    assert torch.allclose(load_reward_model(f"ensemble:mean:{paths}").score(posts, texts), each.mean(0), atol=1e-5)
    assert torch.allclose(load_reward_model(f"ensemble:min:{paths}").score(posts, texts), each.min(0).values,
                          atol=1e-5)
    uwo = load_reward_model(f"ensemble:uwo=2:{paths}")
    assert torch.allclose(uwo.score(posts, texts), each.mean(0) - 2 * each.std(0, unbiased=False), atol=1e-5)
    q = [uwo.encode_query(p) for p in posts[:2]]
    r = [uwo.encode_response(t) for t in texts[:4]]
    groups = uwo.score_groups(q, r, 2)
    assert groups.shape == (2, 2) and torch.allclose(groups.reshape(-1), uwo.score_ids(
        [q[0], q[0], q[1], q[1]], r), atol=1e-5)  # the shared-query path gives the full sequences' scores


def test_an_ensemble_is_a_judge_and_ppos_reward(members, tmp_path):
    spec = "ensemble:mean:" + ",".join(map(str, members))
    judge = build_judge(JudgeSpec(name="ens", kind="rm", spec=spec), tmp_path / "judge", load_reward_model)
    comps = list(load_comparisons(BATCH13, limit=3))
    a = [Text(c.summaries[0].text) for c in comps]
    expected = load_reward_model(spec).score([c.post for c in comps], [t.text for t in a]).tolist()
    assert judge.scores([c.post for c in comps], a) == pytest.approx(expected, abs=1e-5)
    cfg = load_config(ppo.PPOConfig, REPO / "configs/ppo/tiny.yaml",
                      [f"reward={spec}", "total_episodes=16", "save_every=0", "freeze_layers=1"])
    summary = ppo.train(cfg, str(tmp_path / "ppo"))
    assert summary["episodes"] == 16


def test_a_missing_member_is_named_before_anything_loads(members, tmp_path):
    spec = f"ensemble:mean:{members[0]},{tmp_path / 'nope'}"
    cfg = load_config(ppo.PPOConfig, REPO / "configs/ppo/tiny.yaml", [f"reward={spec}", "total_episodes=8"])
    with pytest.raises(Exception, match="nope"):
        ppo.preflight(cfg, None)


def test_a_bad_ensemble_spec_is_refused_by_the_judge_and_by_best_of_n(members, tmp_path):
    from rlhflab.core.rundir import RunError
    from rlhflab.eval.best_of_n import BestOfNConfig, load_ranker

    with pytest.raises(RunError, match="judge ens: .*the rule is mean, min or uwo"):
        build_judge(JudgeSpec(name="ens", kind="rm", spec=f"ensemble:avg:{members[0]},{members[1]}"),
                    tmp_path / "judge", load_reward_model)
    with pytest.raises(RunError, match="judge ens: .*not found"):
        build_judge(JudgeSpec(name="ens", kind="rm", spec=f"ensemble:min:{members[0]},{tmp_path / 'nope'}"),
                    tmp_path / "judge", load_reward_model)
    with pytest.raises(RunError, match=f"{tmp_path / 'nope'} not found"):
        load_ranker(BestOfNConfig(reward=f"ensemble:mean:{members[0]},{tmp_path / 'nope'}", posts=str(BATCH13)))
    with pytest.raises(RunError, match="at least two reward models"):
        load_ranker(BestOfNConfig(reward=f"ensemble:mean:{members[0]}", posts=str(BATCH13)))
