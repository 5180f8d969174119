"""Ziegler et al. (2019)'s mock stylistic-continuation experiment on 2 CPU cores: does labels → RM → PPO learn the judge?

A style judge (VADER sentiment, or Empath descriptiveness) plays the labeler. Every arm is measured the same way
by `rlhflab style-eval` on the held-out books (data.schema.HELDOUT_BOOKS): the judge's mean score of sampled and
greedy continuations, and KL from the base model.

    (a) base         the embedded pretrained model (SmolLM2-135M-Instruct), no training
    (b) ppo_judge    PPO directly on the judge: the upper bound
    (c) ppo_rm_Nk    PPO on an RM trained from N offline best-of-4 labels of the base model's continuations
    (d) online_5k    the pipeline's online mode: 5 rounds of 1k labels from the current policy, the RM continuing
                     from its last weights, PPO's updates split over the rounds (the same 40 in all)
    (e) best_of_16   16 continuations of the base model, the one the 5k RM scores highest

Every arm's PPO has the same budget (configs/ppo/<task>.yaml: 40 updates of 16 episodes). The labels: continuations
of ~1,700 shuffled training passages at T=0.7 (12 a passage, 3 tasks each), answered by `rlhflab simulate-labels` with
the judge at temperature 0.1; the RMs' held-out top-1 accuracy is measured on 100 tasks of the held-out books.

    python benchmarks/ziegler.py --task sentiment [--arms base,ppo_judge,...] [--out runs/ziegler] [--reward-norm 256]

--reward-norm N gives every PPO arm Ziegler et al.'s reward normalisation (`reward_norm_episodes=N`: each reward at
mean 0, std 1 on N samples of the policy PPO starts from), so that one β weighs the judge and the RMs alike. Its
PPO arms and evals go to <out>/<task>/reward_norm_N/ and its result to ziegler_<task>_reward_norm.json; the labels,
RMs and best-of-16 (which no normalisation changes) are shared with the raw-score run.

--seed S trains the PPO arms again with PPO's `seed=S` (configs/ppo/<task>.yaml's runs use its default, 1), in
<arm root>/seed_S/, and adds them to the same result file as `seed_replicates` (next to the arms the goal is read
from, which stay the seed-1 runs), so one can see how far one seed's number is from another's. Once the 5k RM arm
and the judge arm both have two or more seeds, `seed_mean` reads the goal from all of them: mean gain over mean gain,
mean KL over mean KL, and the fraction's range over every pairing of seeds; with three or more, `kl_frontier` fits
each arm's gain against its KL and compares the arms at matched KL. --refresh recomputes these derived fields
(and redraws the plot with the fitted lines) from the result file alone, running nothing.

Each step is an ordinary `rlhflab` command (printed before it runs) into its own run directory, skipped when done,
so an interrupted benchmark resumes. Writes benchmarks/results/ziegler_<task>.json and ziegler_<task>.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rlhflab.data.jsonl import read_jsonl, write_jsonl  # noqa: E402
from rlhflab.data.loaders import load_posts, load_samples, write_posts  # noqa: E402
from rlhflab.data.pairs import best_of_n_tasks  # noqa: E402
from rlhflab.data.schema import HELDOUT_BOOKS  # noqa: E402

BOOKS = "../shared/data/books/passages.jsonl.gz"
LABEL_COUNTS = {"1k": 1000, "2k": 2000, "5k": 5000}
ALL_ARMS = ["base", "ppo_judge", "ppo_rm_1k", "ppo_rm_2k", "ppo_rm_5k", "online_5k", "best_of_16"]
COMMANDS: list[str] = []


def rlhflab(*args: str) -> None:
    """Run one `rlhflab` command (skipped by the stage itself when its run directory is DONE)."""
    cmd = [sys.executable, "-m", "rlhflab", *args]
    COMMANDS.append(shlex.join(["rlhflab", *args]))
    print("+ " + COMMANDS[-1], flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def prompts(out: Path) -> tuple[Path, Path]:
    """The training passages shuffled (seed 0), so any prefix of the labels covers every training book; and the
    held-out passages shuffled, for the RM's held-out labels."""
    files = []
    for fmt in ("books-train", "books-heldout"):
        path = out / "data" / f"{fmt}.jsonl"
        if not path.exists():
            posts = list(load_posts(REPO / BOOKS, format=fmt))
            random.Random(0).shuffle(posts)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_posts(path, posts)
        files.append(path)
    return files[0], files[1]


def labels(out: Path, task: str, name: str, posts: Path, limit: int, n: int) -> Path:
    """Continuations of the base model → best-of-4 tasks → the judge's (simulated) picks."""
    run = out / name
    rlhflab("sample", "--config", "configs/sample/books.yaml", "--out", str(run / "sample"), f"posts={posts}",
            "format=posts", f"limit={limit}", f"n={n}", "policy_name=base")
    tasks = run / "tasks.jsonl"
    if not tasks.exists():
        write_jsonl(tasks, best_of_n_tasks(list(load_samples(run / "sample" / "samples.jsonl")), 4))
    rlhflab("simulate-labels", "--out", str(run / "labels"), f"pairs={tasks}", f"judge.name={task}",
            "judge.kind=style", f"judge.spec={task}", "temperature=0.1", f"batch={name}")
    return run / "labels" / "best_of_n.jsonl"


def label_prefixes(out: Path, all_labels: Path, keys: list[str]) -> dict[str, Path]:
    rows = [row for _, row in read_jsonl(all_labels)]
    random.Random(1).shuffle(rows)  # the prefixes are nested random subsets
    files = {}
    for key in keys:
        n = LABEL_COUNTS[key]
        files[key] = out / "labels" / f"labels_{key}.jsonl"
        if not files[key].exists():
            if len(rows) < n:
                raise SystemExit(f"{all_labels}: {len(rows)} labels, fewer than {n}")
            write_jsonl(files[key], rows[:n])
    return files


def arm_root(out: Path, reward_norm: int, seed: int = 0) -> Path:
    """Where the PPO arms and their evals go: apart for each reward normalisation and each replicate seed (labels
    and RMs are shared)."""
    root = out / f"reward_norm_{reward_norm}" if reward_norm else out
    return root / f"seed_{seed}" if seed else root


def online_overrides(task: str, reward_norm: int) -> list[str]:
    """The online pipeline's PPO overrides, with the reward normalisation added (none without it)."""
    if not reward_norm:
        return []
    import yaml

    ppo = yaml.safe_load((REPO / f"configs/pipeline/{task}.yaml").read_text())["ppo"]
    return [f"ppo.overrides=[{','.join([*ppo.get('overrides', []), f'reward_norm_episodes={reward_norm}'])}]"]


def run_arms(task: str, arms: list[str], out: Path, label_posts: int, reward_norm: int = 0,
             seed: int = 0) -> dict[str, str]:
    """Train what the arms need; return {arm: policy or best-of spec} for style-eval."""
    ppo_cfg = f"configs/ppo/{task}.yaml"
    overrides = [f"reward_norm_episodes={reward_norm}"] * bool(reward_norm) + [f"seed={seed}"] * bool(seed)
    root = arm_root(out, reward_norm, seed)
    policies = {"base": "smollm2-135m"}
    if "ppo_judge" in arms:
        rlhflab("ppo", "--config", ppo_cfg, "--out", str(root / "ppo_judge"), f"reward=style:{task}", *overrides)
        policies["ppo_judge"] = str(root / "ppo_judge")
    rm_arms = [a for a in arms if a.startswith("ppo_rm_") or a == "best_of_16"]
    if rm_arms:
        train_posts, heldout_posts = prompts(out)
        all_labels = labels(out, task, "labels", train_posts, label_posts, 12)  # 1850: ~1700 fit, 5,000+ tasks
        dev = labels(out, task, "dev_labels", heldout_posts, 100, 4)
        keys = [k for k in ("5k", "1k", "2k") if f"ppo_rm_{k}" in arms or (k == "5k" and "best_of_16" in arms)]
        prefixes = label_prefixes(out, all_labels, keys)
        for key in keys:  # the goal's arm first
            rlhflab("rm", "--config", "configs/rm/sentiment.yaml", "--out", str(out / f"rm_{key}"),
                    f"data.comparisons={prefixes[key]}", f"data.dev={dev}")
            rlhflab("rm-eval", "--out", str(out / f"rm_eval_{key}"), f"model={out / f'rm_{key}'}",
                    f"comparisons={dev}", "batch_size=64")
            if f"ppo_rm_{key}" in arms:
                rlhflab("ppo", "--config", ppo_cfg, "--out", str(root / f"ppo_rm_{key}"),
                        f"reward={out / f'rm_{key}'}", *overrides)
                policies[f"ppo_rm_{key}"] = str(root / f"ppo_rm_{key}")
    if "online_5k" in arms:
        rlhflab("run", f"configs/pipeline/{task}.yaml", "--out", str(root / "online_5k"),
                *online_overrides(task, reward_norm))
        policies["online_5k"] = str(root / "online_5k" / "round_5" / "ppo")
    return policies


def style_eval(task: str, policies: dict[str, str], arms: list[str], out: Path, reward_norm: int = 0,
               seed: int = 0) -> dict:
    entries = [{"name": name, "model": model} for name, model in policies.items()]
    if "best_of_16" in arms:
        entries.append({"name": "best_of_16", "model": "smollm2-135m", "best_of": 16, "reward": str(out / "rm_5k")})
    # A run of some arms only gets its own eval directory (base is always re-measured beside them, so the
    # merge below can check the two evaluations agree); the same prompts, samples and seed for every arm.
    name = "eval" if arms == ALL_ARMS else "eval_" + "_".join(arms)
    root = arm_root(out, reward_norm, seed)
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / f"style_{name}_{task}.yaml"
    cfg.write_text(json.dumps({"policies": entries, "judge": task, "limit": 128, "samples": 2}))
    rlhflab("style-eval", "--config", str(cfg), "--out", str(root / name))
    return json.loads((root / name / "report.json").read_text()) | {"eval_dir": str(root / name)}  # absolute


def result(task: str, report: dict, out: Path, wall_s: float) -> dict:
    arms = {k: {"judge_score": v["judge_score"], "judge_score_greedy": v.get("judge_score_greedy"),
                "judge_score_ci": v.get("judge_score_ci"), "kl": v["kl"], "mean_tokens": v.get("mean_tokens"),
                "ended_rate": v.get("ended_rate")} for k, v in report["arms"].items()}
    accuracy = {}
    for key in LABEL_COUNTS:
        rep = out / f"rm_eval_{key}" / "report.json"
        if rep.exists():
            r = json.loads(rep.read_text())
            accuracy[key] = {"top1_accuracy": r["top1_accuracy"], "chance": r["chance"],
                             "longest_wins_accuracy": r["longest_wins_accuracy"], "n_labels": r["n_labels"]}
    return {
        "task": task, "judge": report["judge"], "arms": arms, "missing_arms": [a for a in ALL_ARMS if a not in arms],
        "goal": "with 5k labels, ppo_rm_5k recovers >= 70% of ppo_judge's judge-score gain over base at a KL "
                "within 1.5x of ppo_judge's",
        "rm_heldout_accuracy": accuracy,
        "heldout_books": list(HELDOUT_BOOKS), "n_heldout_prompts": report["n_prompts"],
        "judge_score_definition": "mean judge score of 2 sampled continuations (T=0.7) of each of the held-out "
                                  "prompts; judge_score_greedy: of the greedy one; kl: nats per continuation from "
                                  "the base model on the policy's own samples (best-of-16: log 16 - 15/16)",
        "commands": COMMANDS, "wall_s": wall_s, "eval_dir": str(Path(report["eval_dir"]).relative_to(REPO)),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
    }


def recovered_fraction(arm: float, base: float, judge: float) -> float:
    """The share of the judge arm's score gain over base that `arm` reaches: (arm − base) / (judge − base)."""
    return (arm - base) / (judge - base)


GOAL_FRACTION, GOAL_KL_RATIO = 0.7, 1.5  # the goal: ≥ 70% of the judge arm's gain at ≤ 1.5× its KL


def goal_reached(fraction: float, kl_ratio: float) -> bool:
    """Whether a recovered fraction and a KL ratio meet the goal."""
    return bool(fraction >= GOAL_FRACTION and kl_ratio <= GOAL_KL_RATIO)


def with_goal(res: dict) -> dict:
    """The goal's fields, from whichever arms `res` holds (a merge of partial runs included): the 5k RM arm's share
    of the judge arm's score gain over base, its KL against the judge arm's, and the 5k RM's held-out top-1."""
    arms = res["arms"]
    base, judge, rm5 = (arms.get(k, {}).get("judge_score") for k in ("base", "ppo_judge", "ppo_rm_5k"))
    recovered = recovered_fraction(rm5, base, judge) if None not in (base, judge, rm5) and judge != base else None
    kl_ratio = arms["ppo_rm_5k"]["kl"] / arms["ppo_judge"]["kl"] if recovered is not None else None
    return res | {
        "recovered_fraction_5k": recovered, "kl_ratio_5k_to_judge": kl_ratio,
        "goal_met": None if recovered is None else goal_reached(recovered, kl_ratio),
        "rm_top1_accuracy_5k": res.get("rm_heldout_accuracy", {}).get("5k", {}).get("top1_accuracy"),
    }


def run_log(old: dict, new: dict) -> dict:
    """Both runs' commands and wall time, and the earlier run's notes followed by the new run's that it does not
    already hold ("; "-separated): what every merge of a later run into a result keeps."""
    notes = [n for n in (old.get("note") or "").split("; ") if n]
    return {"commands": old["commands"] + new["commands"], "wall_s": old["wall_s"] + new["wall_s"],
            "note": "; ".join(notes + [n for n in (new.get("note") or "").split("; ") if n and n not in notes])}


def merge(old: dict, new: dict) -> dict:
    """Add the arms of a partial run to an earlier result: the new arms replace their null placeholders, the
    earlier arms stay (each keeps the eval that measured it), and base, measured by both, must agree. An earlier
    file that only says "not run" (no arm measured yet) gives way to the new result, its reason kept for the arms
    still missing."""
    if old.get("status") == "not run":
        measured = {k: v | {"measured_in": new["eval_dir"]} for k, v in new["arms"].items()}
        return new | {"arms": {a: measured.get(a, {"judge_score": None, "kl": None}) for a in ALL_ARMS},
                      "not_run": {a: old.get("reason", "not run") for a in new["missing_arms"]}}
    arms = dict(old["arms"])
    fresh = {k: v | {"measured_in": new["eval_dir"]} for k, v in new["arms"].items() if k != "base"}
    arms.update(fresh)
    base_old, base_new = old["arms"]["base"]["judge_score"], new["arms"]["base"]["judge_score"]
    merged = old | {"arms": arms, "missing_arms": [a for a in ALL_ARMS if arms.get(a, {}).get("judge_score") is None]}
    merged["base_in_later_evals"] = old.get("base_in_later_evals", []) + [
        {"eval_dir": new["eval_dir"], "judge_score": base_new, "kl": new["arms"]["base"]["kl"],
         "agrees_with_first": abs(base_new - base_old) < 1e-9}]
    merged |= run_log(old, new)
    merged["not_run"] = {k: why for k, why in old.get("not_run", {}).items() if k not in fresh}
    for key in ("rm_heldout_accuracy",):
        merged[key] = old.get(key, {}) | new.get(key, {})
    return merged


def add_replicates(old: dict, new: dict, seed: int) -> dict:
    """Add a replicate seed's arms to a result as `seed_replicates.<arm>[]`, each with the base measured in its own
    eval; the arms the goal is read from stay as they were."""
    replicates = {k: list(v) for k, v in old.get("seed_replicates", {}).items()}
    base = new["arms"]["base"]["judge_score"]
    for name, arm in new["arms"].items():
        if name == "base":
            continue
        runs = [r for r in replicates.get(name, []) if r["seed"] != seed]
        replicates[name] = runs + [arm | {"seed": seed, "measured_in": new["eval_dir"], "base_in_same_eval": base}]
    return old | {"seed_replicates": replicates} | run_log(old, new)


def replicate_fractions(res: dict) -> dict[str, float] | None:
    """recovered_fraction_5k for every seed of the 5k RM arm ({seed: fraction}), each against the base of its own
    eval and the result's judge arm: how much of the goal's number is one seed's luck."""
    arms, runs = res["arms"], res.get("seed_replicates", {}).get("ppo_rm_5k", [])
    judge, base = arms.get("ppo_judge", {}).get("judge_score"), arms.get("base", {}).get("judge_score")
    rm5 = arms.get("ppo_rm_5k", {}).get("judge_score")
    if None in (judge, base, rm5) or not runs:
        return None
    return {"1": recovered_fraction(rm5, base, judge)} | {
        str(r["seed"]): recovered_fraction(r["judge_score"], r["base_in_same_eval"], judge) for r in runs}


def seed_gains(res: dict, name: str) -> list[tuple[float, float]]:
    """(judge-score gain over the base of its own eval, KL) of every seed of PPO arm `name`, seed 1 first."""
    arm, base = res["arms"][name], res["arms"]["base"]["judge_score"]
    return [(arm["judge_score"] - base, arm["kl"])] + [
        (r["judge_score"] - r["base_in_same_eval"], r["kl"]) for r in res.get("seed_replicates", {}).get(name, [])]


def replicated_arms(res: dict, min_seeds: int) -> dict[str, list[tuple[float, float]]] | None:
    """{arm: seed_gains} of the 5k RM arm and the judge arm, when base and both arms are measured and each arm has at
    least `min_seeds` seeds; else None."""
    arms = res["arms"]
    if any(arms.get(k, {}).get("judge_score") is None for k in ("base", "ppo_judge", "ppo_rm_5k")):
        return None
    runs = {name: seed_gains(res, name) for name in ("ppo_rm_5k", "ppo_judge")}
    return runs if min(len(r) for r in runs.values()) >= min_seeds else None


def seed_mean_goal(res: dict) -> dict | None:
    """The goal read from every seed at once, where the 5k RM arm and the judge arm each have two or more: the mean
    gain of one over the mean gain of the other, the mean KLs' ratio, and the fraction's range over every pairing of
    an RM seed with a judge seed (seeds are independent runs, so no pairing is the right one)."""
    runs = replicated_arms(res, 2)
    if runs is None:
        return None
    rm, judge = runs["ppo_rm_5k"], runs["ppo_judge"]
    stats = {name: {"n_seeds": len(runs), "gain_mean": statistics.fmean(g for g, _ in runs),
                    "gain_std": statistics.stdev(g for g, _ in runs), "kl_mean": statistics.fmean(k for _, k in runs)}
             for name, runs in (("ppo_rm_5k", rm), ("ppo_judge", judge))}
    fraction = stats["ppo_rm_5k"]["gain_mean"] / stats["ppo_judge"]["gain_mean"]
    kl_ratio = stats["ppo_rm_5k"]["kl_mean"] / stats["ppo_judge"]["kl_mean"]
    pairs = [g_rm / g_judge for g_rm, _ in rm for g_judge, _ in judge]
    frac_ci, kl_ci = seed_bootstrap_ci(rm, judge)
    met = goal_reached(frac_ci[0], kl_ci[1])  # even the interval's worst ends meet it
    missed = frac_ci[1] < GOAL_FRACTION or kl_ci[0] > GOAL_KL_RATIO  # even its best ends miss it
    return stats | {"recovered_fraction_5k": fraction, "kl_ratio_5k_to_judge": kl_ratio,
                    "recovered_fraction_5k_range_over_seed_pairs": [min(pairs), max(pairs)],
                    "recovered_fraction_5k_ci95": frac_ci, "kl_ratio_5k_to_judge_ci95": kl_ci,
                    "ci_method": "percentile bootstrap over seeds, each arm's seeds resampled apart, 10,000 draws",
                    "goal_met": goal_reached(fraction, kl_ratio),
                    "goal_settled_by_ci": bool(met or missed)}


def kl_frontier(res: dict) -> dict | None:
    """The arms compared at matched KL, where each has three or more seeds: a least-squares line of judge-score gain
    on KL per arm (how far a run drifts sets most of its score), and the 5k RM arm's fraction of the judge arm's
    gain read off the two lines at the ends and middle of the KL range both arms' seeds cover (no extrapolation)."""
    runs = replicated_arms(res, 3)
    if runs is None:
        return None
    lines = {}
    for name, points in runs.items():
        gains, kls = [g for g, _ in points], [k for _, k in points]
        fit = statistics.linear_regression(kls, gains)
        lines[name] = {"slope_per_nat": fit.slope, "intercept": fit.intercept,
                       "r": statistics.correlation(kls, gains), "kl_range": [min(kls), max(kls)]}
    lo = max(line["kl_range"][0] for line in lines.values())
    hi = min(line["kl_range"][1] for line in lines.values())
    at = lambda name, kl: lines[name]["slope_per_nat"] * kl + lines[name]["intercept"]  # noqa: E731
    fractions = {f"{kl:.2f}": at("ppo_rm_5k", kl) / at("ppo_judge", kl) for kl in (lo, (lo + hi) / 2, hi)
                 if at("ppo_judge", kl) > 0} if lo < hi else {}
    return lines | {"matched_kl_range": [lo, hi] if lo < hi else None, "recovered_fraction_5k_at_kl": fractions}


def seed_bootstrap_ci(rm: list[tuple[float, float]], judge: list[tuple[float, float]], draws: int = 10_000,
                      seed: int = 0) -> tuple[list[float], list[float]]:
    """95% percentile-bootstrap intervals of mean-gain ratio and mean-KL ratio, resampling each arm's (gain, KL)
    seeds with replacement apart (the arms' seeds are independent runs). Coarse with 3 seeds, but honest about it."""
    rng = random.Random(seed)
    fractions, kl_ratios = [], []
    for _ in range(draws):
        r, j = rng.choices(rm, k=len(rm)), rng.choices(judge, k=len(judge))
        j_gain = statistics.fmean(g for g, _ in j)
        if j_gain > 0:  # a resample whose judge arm gained nothing has no defined fraction
            fractions.append(statistics.fmean(g for g, _ in r) / j_gain)
        kl_ratios.append(statistics.fmean(k for _, k in r) / statistics.fmean(k for _, k in j))
    pct = lambda xs, q: sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    return [pct(fractions, 0.025), pct(fractions, 0.975)], [pct(kl_ratios, 0.025), pct(kl_ratios, 0.975)]


def plot_arms(res: dict, path: Path) -> None:
    """Judge score (sampled, 95% CI) against KL from the base model, one point per measured arm."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, arm in res["arms"].items():
        if arm.get("judge_score") is None:
            continue
        lo, hi = arm.get("judge_score_ci") or (arm["judge_score"], arm["judge_score"])
        ax.errorbar(arm["kl"], arm["judge_score"], yerr=[[arm["judge_score"] - lo], [hi - arm["judge_score"]]],
                    fmt="o", capsize=3)
        ax.annotate(name, (arm["kl"], arm["judge_score"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("KL from the base model (nats per continuation)")
    ax.set_ylabel(f"{res['judge']} judge score (sampled, 95% CI)")
    norm = f"\nrewards normalised on {res['reward_norm_episodes']} samples" if res.get("reward_norm_episodes") else ""
    ax.set_title(f"Ziegler et al.'s {res['task']} task on held-out books{norm}", fontsize=10)
    for name, runs in res.get("seed_replicates", {}).items():
        for r in runs:
            ax.plot(r["kl"], r["judge_score"], "x", color="grey")
            ax.annotate(f"{name} seed {r['seed']}", (r["kl"], r["judge_score"]), textcoords="offset points",
                        xytext=(5, -10), fontsize=7, color="grey")
    base = res["arms"]["base"]["judge_score"]
    for name, line in (res.get("kl_frontier") or {}).items():
        if name.startswith("ppo_"):  # each arm's fitted gain-on-KL line over its seeds' KL, drawn above base
            kls = line["kl_range"]
            ax.plot(kls, [base + line["intercept"] + line["slope_per_nat"] * k for k in kls], "--", color="grey",
                    linewidth=0.8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def derived(res: dict) -> dict:
    """The fields computed from the measured arms: the goal (seed 1), each seed's fraction, the seed mean and the
    matched-KL comparison."""
    res = with_goal(res)
    return res | {"recovered_fraction_5k_by_seed": replicate_fractions(res), "seed_mean": seed_mean_goal(res),
                  "kl_frontier": kl_frontier(res)}


def refresh(task: str, reward_norm: int) -> None:
    """--refresh: rewrite a result's derived fields (and, with a KL frontier, its plot) from its measured arms."""
    name = f"ziegler_{task}" + ("_reward_norm" if reward_norm else "")
    path = REPO / "benchmarks" / "results" / f"{name}.json"
    res = derived(json.loads(path.read_text()))
    path.write_text(json.dumps(res, indent=2) + "\n")
    if res.get("kl_frontier"):
        plot_arms(res, path.with_suffix(".png"))
    print(json.dumps({k: res[k] for k in ("recovered_fraction_5k", "recovered_fraction_5k_by_seed", "seed_mean")},
                     indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["sentiment", "descriptiveness"], default="sentiment")
    parser.add_argument("--arms", default=",".join(ALL_ARMS), help="comma-separated, from " + ", ".join(ALL_ARMS))
    parser.add_argument("--out", default="runs/ziegler")
    parser.add_argument("--label-posts", type=int, default=1850,
                        help="training passages whose continuations are labelled (12 each, 3 tasks each; 1850 gives "
                             "the 5k arm's 5,000+ tasks, 740 enough for the 1k and 2k arms)")
    parser.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    parser.add_argument("--reward-norm", type=int, default=0, metavar="N",
                        help="give every PPO arm reward_norm_episodes=N (Ziegler et al.'s reward normalisation; "
                             "a multiple of 16); 0: raw scores, as configs/ppo/<task>.yaml")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="train the PPO arms again with seed=S (not 1, the default seed) and add them to the "
                             "result file as seed_replicates; only base and PPO arms (ppo_judge, ppo_rm_*)")
    parser.add_argument("--refresh", action="store_true",
                        help="recompute the goal, per-seed, seed-mean and KL-frontier fields (and the plot, once there "
                             "is a frontier) from the result file alone, running nothing")
    args = parser.parse_args()
    if args.refresh:
        return refresh(args.task, args.reward_norm)
    arms = [a for a in args.arms.split(",") if a]
    wrong = [a for a in arms if a in ("online_5k", "best_of_16")]
    if args.seed == 1:
        parser.error("--seed 1: the arms the goal is read from are seed 1 already; a replicate needs another seed")
    elif args.seed and wrong:
        parser.error(f"--seed {args.seed}: not for {', '.join(wrong)} (only base and the PPO arms are replicated)")
    out = REPO / args.out / args.task
    t0 = time.time()
    policies = run_arms(args.task, arms, out, args.label_posts, args.reward_norm, args.seed)
    report = style_eval(args.task, policies, arms, out, args.reward_norm, args.seed)
    name = f"ziegler_{args.task}" + ("_reward_norm" if args.reward_norm else "")
    res = result(args.task, report, out, time.time() - t0) | {
        "note": args.note, "reward_norm_episodes": args.reward_norm, "plot": f"benchmarks/results/{name}.png"}
    results = REPO / "benchmarks" / "results"
    path = results / f"{name}.json"
    if args.seed:
        if not path.exists():
            raise SystemExit(f"{path}: --seed adds replicates to a result; run the seed-1 arms first")
        res = add_replicates(json.loads(path.read_text()), res, args.seed)
    elif arms != ALL_ARMS and path.exists():
        res = merge(json.loads(path.read_text()), res)
    res = derived(res)
    path.write_text(json.dumps(res, indent=2) + "\n")
    plot = results / f"{name}.png"
    if arms == ALL_ARMS and not args.seed:
        plot.write_bytes((arm_root(out, args.reward_norm) / "eval" / "style.png").read_bytes())
    else:
        plot_arms(res, plot)
    print(json.dumps({k: res[k] for k in ("recovered_fraction_5k", "kl_ratio_5k_to_judge", "goal_met",
                                          "rm_top1_accuracy_5k")}, indent=2))


if __name__ == "__main__":
    main()
