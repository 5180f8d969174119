"""benchmarks/ziegler.py's merge of partial runs into one result file (the fields other scripts read)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _ziegler():
    spec = importlib.util.spec_from_file_location("ziegler_bench", REPO / "benchmarks" / "ziegler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _new(arms: dict, eval_dir: str) -> dict:
    z = _ziegler()
    return {"arms": arms, "missing_arms": [a for a in z.ALL_ARMS if a not in arms], "eval_dir": eval_dir,
            "commands": ["c1"], "wall_s": 10.0, "note": "n1", "rm_heldout_accuracy": {}}


def test_a_first_partial_run_replaces_a_not_run_placeholder_and_keeps_its_reason():
    z = _ziegler()
    placeholder = {"status": "not run", "reason": "compute", "arms": {a: {"judge_score": None, "kl": None}
                                                                      for a in z.ALL_ARMS}}
    new = _new({"base": {"judge_score": 0.1, "kl": 0.0}, "ppo_judge": {"judge_score": 0.5, "kl": 9.0}}, "runs/e1")
    merged = z.merge(placeholder, new)
    assert "status" not in merged and merged["arms"]["ppo_judge"]["judge_score"] == 0.5
    assert merged["arms"]["ppo_judge"]["measured_in"] == "runs/e1"
    assert merged["arms"]["ppo_rm_5k"] == {"judge_score": None, "kl": None}
    assert set(merged["not_run"]) == set(z.ALL_ARMS) - {"base", "ppo_judge"}
    assert set(merged["not_run"].values()) == {"compute"}
    # the next partial run merges into it as before: base must agree, the new arm leaves not_run
    later = z.merge(merged, _new({"base": {"judge_score": 0.1, "kl": 0.0}, "ppo_rm_1k": {"judge_score": 0.3,
                                                                                          "kl": 8.0}}, "runs/e2"))
    assert later["arms"]["ppo_judge"]["judge_score"] == 0.5 and later["arms"]["ppo_rm_1k"]["judge_score"] == 0.3
    assert "ppo_rm_1k" not in later["not_run"] and later["base_in_later_evals"][0]["agrees_with_first"]
    assert later["commands"] == ["c1", "c1"]


def test_the_goal_fields_are_computed_from_the_merged_arms_not_from_one_partial_run():
    z = _ziegler()
    first = _new({"base": {"judge_score": 0.2, "kl": 0.0}, "ppo_judge": {"judge_score": 1.2, "kl": 10.0}}, "runs/e1")
    first = z.with_goal(first)
    assert first["recovered_fraction_5k"] is None and first["goal_met"] is None
    later = _new({"base": {"judge_score": 0.2, "kl": 0.0}, "ppo_rm_5k": {"judge_score": 0.9, "kl": 16.0}}, "runs/e2")
    later["rm_heldout_accuracy"] = {"5k": {"top1_accuracy": 0.41}}
    merged = z.with_goal(z.merge(first, later))
    # (0.9 − 0.2) / (1.2 − 0.2) = 0.7 of the gain, at 16 / 10 = 1.6x the judge arm's KL: over 1.5x, so missed
    assert abs(merged["recovered_fraction_5k"] - 0.7) < 1e-12 and abs(merged["kl_ratio_5k_to_judge"] - 1.6) < 1e-12
    assert merged["goal_met"] is False and merged["rm_top1_accuracy_5k"] == 0.41


def test_reward_norm_arms_go_apart_and_the_online_pipeline_gets_it_beside_its_own_ppo_overrides():
    from rlhflab.core.config import load_config
    from rlhflab.pipeline import PipelineConfig
    from rlhflab.train.ppo import PPOConfig

    z = _ziegler()
    out = Path("runs/ziegler/sentiment")
    assert z.arm_root(out, 0) == out and z.arm_root(out, 256) == out / "reward_norm_256"
    assert z.online_overrides("sentiment", 0) == []
    (override,) = z.online_overrides("sentiment", 256)
    cfg = load_config(PipelineConfig, REPO / "configs/pipeline/sentiment.yaml", [override])
    assert cfg.ppo.overrides == ["total_episodes=128", "save_every=4", "reward_norm_episodes=256"]
    ppo = load_config(PPOConfig, REPO / cfg.ppo.config, cfg.ppo.overrides)
    assert ppo.reward_norm_episodes == 256 and ppo.total_episodes == 128


def test_a_replicate_seed_goes_beside_the_goal_arms_and_gets_its_own_recovered_fraction():
    z = _ziegler()
    first = _new({"base": {"judge_score": 0.2, "kl": 0.0}, "ppo_judge": {"judge_score": 1.2, "kl": 10.0},
                  "ppo_rm_5k": {"judge_score": 0.9, "kl": 9.0}}, "runs/e1")
    assert z.arm_root(Path("o"), 256, 2) == Path("o/reward_norm_256/seed_2") and z.arm_root(Path("o"), 0, 3) == Path(
        "o/seed_3")
    assert z.replicate_fractions(first) is None  # no replicate yet
    seed2 = _new({"base": {"judge_score": 0.3, "kl": 0.0}, "ppo_rm_5k": {"judge_score": 0.6, "kl": 8.0}}, "runs/s2")
    res = z.add_replicates(first, seed2, 2)
    assert res["arms"]["ppo_rm_5k"]["judge_score"] == 0.9  # the goal's arm is untouched
    (rep,) = res["seed_replicates"]["ppo_rm_5k"]
    assert rep["seed"] == 2 and rep["base_in_same_eval"] == 0.3 and rep["measured_in"] == "runs/s2"
    assert "base" not in res["seed_replicates"] and res["commands"] == ["c1", "c1"]
    seed2["note"] = "seed 2 alone"
    assert z.add_replicates(first, seed2, 2)["note"] == "n1; seed 2 alone"  # the replicate's note is kept
    # seed 1: (0.9 − 0.2) / (1.2 − 0.2) = 0.7; seed 2 against its own eval's base: (0.6 − 0.3) / (1.2 − 0.3) = 1/3
    fractions = z.replicate_fractions(res)
    assert abs(fractions["1"] - 0.7) < 1e-12 and abs(fractions["2"] - 1 / 3) < 1e-12
    # the same seed again replaces its earlier replicate instead of counting twice
    again = z.add_replicates(res, _new({"base": {"judge_score": 0.3, "kl": 0.0},
                                        "ppo_rm_5k": {"judge_score": 0.75, "kl": 8.5}}, "runs/s2b"), 2)
    assert [r["judge_score"] for r in again["seed_replicates"]["ppo_rm_5k"]] == [0.75]


def test_the_seed_mean_goal_averages_each_arms_gain_over_its_own_eval_base_and_ranges_over_seed_pairs():
    z = _ziegler()
    first = _new({"base": {"judge_score": 0.2, "kl": 0.0}, "ppo_judge": {"judge_score": 1.2, "kl": 10.0},
                  "ppo_rm_5k": {"judge_score": 0.9, "kl": 9.0}}, "runs/e1")
    rm_only = z.add_replicates(first, _new({"base": {"judge_score": 0.3, "kl": 0.0},
                                            "ppo_rm_5k": {"judge_score": 0.6, "kl": 8.0}}, "runs/s2"), 2)
    assert z.seed_mean_goal(rm_only) is None  # one judge seed: no mean to read the goal from
    res = z.add_replicates(rm_only, _new({"base": {"judge_score": 0.3, "kl": 0.0},
                                          "ppo_judge": {"judge_score": 0.8, "kl": 12.0}}, "runs/s2j"), 2)
    got = z.seed_mean_goal(res)
    # gains: RM 0.7 (seed 1), 0.3 (seed 2, over 0.3); judge 1.0, 0.5 → means 0.5 and 0.75 → 2/3
    assert got["ppo_rm_5k"]["n_seeds"] == 2 and abs(got["ppo_rm_5k"]["gain_mean"] - 0.5) < 1e-12
    assert abs(got["ppo_rm_5k"]["gain_std"] - 0.08 ** 0.5) < 1e-12  # sqrt((0.2² + 0.2²) / 1)
    assert abs(got["recovered_fraction_5k"] - 2 / 3) < 1e-12
    assert abs(got["kl_ratio_5k_to_judge"] - 8.5 / 11.0) < 1e-12  # mean KLs (9 + 8) / 2 over (10 + 12) / 2
    # pairings: 0.7/1.0, 0.7/0.5, 0.3/1.0, 0.3/0.5 → from 0.3 to 1.4
    lo, hi = got["recovered_fraction_5k_range_over_seed_pairs"]
    assert abs(lo - 0.3) < 1e-12 and abs(hi - 1.4) < 1e-12 and got["goal_met"] is False
    assert got["goal_settled_by_ci"] is False  # two seeds that far apart leave 0.7 inside the interval


def test_the_seed_bootstrap_collapses_without_spread_and_brackets_the_seed_mean_with_it():
    z = _ziegler()
    same = [(0.5, 10.0)] * 3
    frac, kl = z.seed_bootstrap_ci(same, [(1.0, 20.0)] * 3, draws=200)
    assert frac == [0.5, 0.5] and kl == [0.5, 0.5]  # no seed spread: the interval is the point
    rm, judge = [(0.7, 9.0), (0.3, 8.0), (0.5, 7.0)], [(1.0, 10.0), (0.5, 12.0), (0.9, 11.0)]
    frac, kl = z.seed_bootstrap_ci(rm, judge, draws=2000)
    # every resampled fraction lies between the extreme seed ratios 0.3/1.0 and 0.7/0.5
    assert 0.3 <= frac[0] < 0.5 / 0.8 < frac[1] <= 1.4 and 7 / 12 <= kl[0] < 8 / 11 < kl[1] <= 0.9


def test_the_kl_frontier_compares_the_arms_on_their_fitted_lines_only_where_both_arms_seeds_reach():
    z = _ziegler()
    # RM gains 0.2·KL − 2 at KL 10, 15, 20 (0, 1, 2); judge gains 0.1·KL at KL 5, 10, 20 (0.5, 1, 2); base 0
    res = {"arms": {"base": {"judge_score": 0.0, "kl": 0.0}, "ppo_rm_5k": {"judge_score": 0.0, "kl": 10.0},
                    "ppo_judge": {"judge_score": 0.5, "kl": 5.0}},
           "seed_replicates": {
               "ppo_rm_5k": [{"seed": s, "judge_score": g, "kl": k, "base_in_same_eval": 0.0}
                             for s, g, k in ((2, 1.0, 15.0), (3, 2.0, 20.0))],
               "ppo_judge": [{"seed": s, "judge_score": g, "kl": k, "base_in_same_eval": 0.0}
                             for s, g, k in ((2, 1.0, 10.0), (3, 2.0, 20.0))]}}
    got = z.kl_frontier(res)
    assert abs(got["ppo_rm_5k"]["slope_per_nat"] - 0.2) < 1e-12 and abs(got["ppo_rm_5k"]["intercept"] + 2) < 1e-12
    assert abs(got["ppo_judge"]["slope_per_nat"] - 0.1) < 1e-12 and abs(got["ppo_judge"]["r"] - 1) < 1e-12
    assert got["matched_kl_range"] == [10.0, 20.0]  # the judge's KL 5 seed is outside the RM seeds' range
    fractions = got["recovered_fraction_5k_at_kl"]  # 0/1 at 10 nats, 1/1.5 at 15, 2/2 at 20
    assert list(fractions) == ["10.00", "15.00", "20.00"]
    assert abs(fractions["10.00"]) < 1e-12 and abs(fractions["15.00"] - 2 / 3) < 1e-12
    assert abs(fractions["20.00"] - 1) < 1e-12
    res["seed_replicates"]["ppo_judge"].pop()  # two judge seeds: no line worth fitting
    assert z.kl_frontier(res) is None
