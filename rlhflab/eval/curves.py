"""The report's curves: over-optimisation (RM score and win rate against KL over a PPO run's snapshots),
best-of-N win rate against N (from a best-of-N run's candidates, no sampling again), and RM accuracy against
labeler confidence (from `rlhflab rm-eval` reports)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhflab.core.rundir import RunDir, RunError
from rlhflab.data.jsonl import DataError
from rlhflab.data.loaders import load_samples
from rlhflab.data.records import Post, Sample
from rlhflab.eval import metrics
from rlhflab.eval.judges import Judge, JudgeSpec, RMJudge, Text
from rlhflab.eval.judging import judge_pairs, pair, references
from rlhflab.eval.models import model_key
from rlhflab.eval.sampling import EvalRun, policy_kl, policy_samples


# ------------------------------------------------------------------------------------------- KL curve


def curve_models(run: RunDir, sft: str) -> tuple[list[tuple[int, str]], int]:
    """[(update, model spec)] from the SFT model (update 0) over the snapshots to the final model; the number
    of snapshots."""
    snaps = sorted((int(d.name.split("_")[-1]), d) for d in (run.path / "snapshots").glob("update_*")
                   if (d / "config.json").exists())
    final = None
    if run.is_done() and (run.model_dir / "config.json").exists():
        final = int(run.read_done().get("updates", (snaps[-1][0] if snaps else 0) + 1))
    # a snapshot taken at the last update holds the final model's weights: only the final model is evaluated
    points = [(0, sft)] + [(u, str(d)) for u, d in snaps if u != final]
    if final is not None:
        points.append((final, str(run.path)))
    return points, len(snaps)


def proxy_judge(ev: EvalRun, reward: str | None) -> Judge | None:
    """The RM the PPO run optimised, as a judge: one of the eval's own judges when it is that RM."""
    if not reward or str(reward).startswith("python:") or not Path(reward).expanduser().exists():
        return None
    same = [j for j in ev.judges if j.kind == "rm" and model_key(j.spec) == model_key(reward)]
    return same[0] if same else RMJudge(JudgeSpec(name="proxy-rm", kind="rm", spec=str(reward)),
                                        ev.path / "judges" / "_curve_reward", ev.models.reward_model,
                                        bf16=ev.cfg.bf16)


def win_rates(ev: EvalRun, posts: list[Post], texts: list[Text], refs: list[Text]) -> dict[str, Any]:
    """judge -> n, win rate and its Wilson interval of `texts` against the references."""
    out = {}
    for judge in ev.judges:
        outcomes = [metrics.win_outcome(v) for v in judge_pairs(judge, posts, texts, refs) if v is not None]
        out[judge.name] = {"n": len(outcomes), "win_rate": metrics.win_rate(outcomes),
                           "win_rate_ci": pair(metrics.wilson_interval(sum(outcomes), len(outcomes),
                                                                       ev.cfg.ci_level))}
    return out


def kl_curve(ev: EvalRun, posts: list[Post]) -> dict[str, Any] | None:
    """None without a `ppo_run` (or when the eval is interrupted while sampling it)."""
    cfg = ev.cfg
    if not cfg.ppo_run:
        return None
    run = RunDir(cfg.ppo_run)
    if not run.path.exists():
        raise RunError(f"ppo_run={cfg.ppo_run}: not found")
    ppo_cfg = run.read_config().get("config", {})
    reward = cfg.curve_reward or ppo_cfg.get("reward")
    models, n_snapshots = curve_models(run, str(cfg.kl_reference or ppo_cfg.get("model")))
    posts = posts[: cfg.curve_limit] if cfg.curve_limit else posts
    proxy = proxy_judge(ev, reward)
    refs = references(posts)
    points = []
    for update, spec in models:
        rows = policy_samples(ev, spec, posts, "main", cfg.max_query_tokens, f"update {update}")
        if ev.interruption.reached:
            return None
        texts = [Text(rows[p.id]["text"], bool(rows[p.id]["eos"])) for p in posts]
        kl = policy_kl(ev, spec, posts, "main", cfg.max_query_tokens, f"update {update}")
        point: dict[str, Any] = {"update": update, "model": spec, "kl": kl.kl, "kl_se": kl.se,
                                 "mean_tokens": sum(ev.models.count_tokens(t.text) for t in texts) / len(posts)}
        if proxy is not None:
            point["reward_score"] = sum(proxy.scores(posts, texts) or []) / len(posts)
        point["by_judge"] = win_rates(ev, posts, texts, refs)
        points.append(point)
    training = [{"update": r["step"], "kl": r.get("objective/kl"), "score": r.get("objective/score")}
                for r in run.read_metrics() if "objective/kl" in r]
    return {"ppo_run": cfg.ppo_run, "reward": reward, "n_posts": len(posts), "points": points,
            "training": training, "n_snapshots": n_snapshots,
            "note": "update 0 is the SFT model; reward_score is the mean score of the RM the PPO run optimised "
                    "(greedy summaries); training is the PPO run's own per-update (KL, score) on its "
                    "sampled rollouts"}


# ------------------------------------------------------------------------------------------- best-of-N curve


def read_candidates(path: Path, posts: list[Post]) -> list[list[Sample]]:
    """Each eval post's n candidates (those that have any), by index; every post must have the same n."""
    groups: dict[str, list[Sample]] = {}
    for s in load_samples(path):
        groups.setdefault(s.post_id, []).append(s)
    ids = [p.id for p in posts if p.id in groups]
    if not ids:
        raise DataError(path, problem=f"has candidates for none of the {len(posts)} eval posts; run "
                                      "best-of-n on the same posts file")
    n = min(len(groups[i]) for i in ids)
    if any(len(groups[i]) != n for i in ids):
        raise DataError(path, problem="posts have different numbers of candidates")
    return [sorted(groups[i], key=lambda s: s.index) for i in ids]


def best_of_n_curve(ev: EvalRun, posts: list[Post]) -> dict[str, Any] | None:
    """E[best of k] for k = 1, 2, 4, … n from the n candidates of each post."""
    if not ev.cfg.best_of_n_run:
        return None
    path = Path(ev.cfg.best_of_n_run)
    cand_path = path / "candidates.jsonl" if path.is_dir() else path
    if not cand_path.exists():
        raise RunError(f"best_of_n_run={ev.cfg.best_of_n_run}: no candidates.jsonl — run `rlhflab best-of-n` with "
                       "write_all=true")
    cands = read_candidates(cand_path, posts)
    n = len(cands[0])
    ks = sorted({2**j for j in range(n.bit_length()) if 2**j <= n} | {n})
    orders = [metrics.rank_order([float(s.score if s.score is not None else 0.0) for s in c]) for c in cands]

    def mean_best_of(values: list[list[float]]) -> list[float]:
        """Per k: the mean over posts of E[the value of the best of k] (values[post][candidate])."""
        return [sum(metrics.expected_best_of_k([v[i] for i in o], k) for v, o in zip(values, orders)) / len(cands)
                for k in ks]

    out: dict[str, Any] = {
        "run": ev.cfg.best_of_n_run, "n": n, "n_posts": len(cands), "k": ks, "kl": [metrics.best_of_n_kl(k) for k in ks],
        "mean_reward_score": mean_best_of([[float(s.score or 0.0) for s in c] for c in cands]),
        "mean_tokens": mean_best_of([[ev.models.count_tokens(s.text) for s in c] for c in cands]),
        "by_judge": {},
        "note": "E[best of k] from the n candidates of each post (no sampling again); KL = log k − (k−1)/k; "
                "mean_reward_score is the best-of-n run's own ranking score"}
    by_id = {p.id: p for p in posts}
    flat_posts = [by_id[c[0].post_id] for c in cands for _ in c]
    flat_texts = [Text(s.text, s.eos) for c in cands for s in c]
    for judge in ev.judges:
        flat = judge_pairs(judge, flat_posts, flat_texts, references(flat_posts))
        per_post = [flat[j * n : (j + 1) * n] for j in range(len(cands))]
        usable = [(pp, o) for pp, o in zip(per_post, orders) if all(v is not None for v in pp)]
        rates = [sum(metrics.expected_best_of_k([metrics.win_outcome(pp[i]) for i in o], k) for pp, o in usable)
                 / len(usable) if usable else None for k in ks]
        out["by_judge"][judge.name] = {"n_posts": len(usable), "win_rate": rates}
    return out


# ------------------------------------------------------------------------------------------- RM accuracy


def rm_accuracy(runs: list[str], ci_level: float) -> list[dict[str, Any]]:
    """Each rm-eval run's accuracy per labeler confidence |c − 5|, with Wilson intervals."""
    out = []
    for spec in runs:
        path = Path(spec)
        report_path = path / "report.json" if path.is_dir() else path
        if not report_path.exists():
            raise RunError(f"rm_eval_runs: {spec}: no report.json — expected an `rlhflab rm-eval` run")
        rep = json.loads(report_path.read_text())
        if "per_confidence" not in rep:
            raise DataError(report_path, field="per_confidence", problem="missing (not an rm-eval report?)")
        per = {}
        for d, b in sorted(rep["per_confidence"].items(), key=lambda kv: int(kv[0])):
            ci = metrics.wilson_interval(b["accuracy"] * b["n"], b["n"], ci_level) if b["n"] else None
            per[d] = {"n": b["n"], "accuracy": b["accuracy"], "accuracy_ci": pair(ci),
                      "length_baseline_accuracy": b["length_baseline_accuracy"]}
        out.append({"run": spec, "model": rep.get("model"), "split": rep.get("split"), "n_pairs": rep.get("n_pairs"),
                    "accuracy": rep.get("accuracy"), "length_baseline_accuracy": rep.get("length_baseline_accuracy"),
                    "per_confidence": per})
    return out
