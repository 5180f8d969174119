"""Stiennon et al. (2020) Sec. 4.3 in small: is optimising the reward model better than optimising ROUGE?

Two PPO runs from the same SFT model with the same config (KL control, episodes, seed, value model initialised
from the same RM) differ only in `reward=`: the RM, or `rouge` (ROUGE-L F1 against the post's reference,
rlhflab/models/text_reward.py). One `rlhflab eval` then judges SFT and both policies against the human references
by the gold RM and by a second RM that neither run optimised, with ROUGE, length and KL from SFT beside each.

    python benchmarks/rouge_vs_rm.py --sft runs/sft/cpu --rm runs/rm/cpu --gold runs/gold/cpu \\
        --other-rm runs/rm/cpu-sft-q256 [--profile cpu] [--limit 128]
    python benchmarks/rouge_vs_rm.py --profile tiny      # tiny models trained on the spot: the plumbing, seconds

Each step is an ordinary `rlhflab` command (printed before it runs) into its own run directory, skipped when done,
so an interrupted benchmark resumes. The cpu and gpu profiles write benchmarks/results/rouge_vs_rm.json and .png
(KL curves of both runs, and their gold win rates with CIs); the tiny profile writes under --out only.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS: list[str] = []
ARMS = {"ppo_rm": None, "ppo_rouge": "rouge"}  # arm -> reward (None: the RM given)


def rlhflab(*args: str) -> None:
    """Run one `rlhflab` command (skipped by the stage itself when its run directory is DONE)."""
    COMMANDS.append(shlex.join(["rlhflab", *args]))
    print("+ " + COMMANDS[-1], flush=True)
    subprocess.run([sys.executable, "-m", "rlhflab", *args], cwd=REPO, check=True)


def tiny_models(out: Path) -> dict[str, str]:
    """SFT and three RMs (optimised, gold, other: different seeds and data) from the tiny configs."""
    rlhflab("sft", "--config", "configs/sft/tiny.yaml", "--out", str(out / "sft"))
    models = {"sft": str(out / "sft")}
    for name, seed in (("rm", 1), ("gold", 2), ("other_rm", 3)):
        rlhflab("rm", "--config", "configs/rm/tiny.yaml", "--out", str(out / name), f"seed={seed}",
                "max_steps=4", "eval_every=0")
        models[name] = str(out / name)
    return models


def train_arms(profile: str, models: dict[str, str], out: Path) -> dict[str, str]:
    runs = {}
    for arm, reward in ARMS.items():
        runs[arm] = str(out / arm)
        rlhflab("ppo", "--config", f"configs/ppo/{profile}.yaml", "--out", runs[arm], f"model={models['sft']}",
                f"reward={reward or models['rm']}", f"value_model={models['rm']}")
    return runs


def evaluate(profile: str, models: dict[str, str], runs: dict[str, str], out: Path, limit: int) -> dict:
    policies = [{"name": "sft", "model": models["sft"]}] + [{"name": a, "model": r} for a, r in runs.items()] + \
               [{"name": "reference", "builtin": "reference"}]
    judges = [{"name": "gold", "kind": "rm", "spec": models["gold"], "note": "the gold RM; neither run optimised it"},
              {"name": "other_rm", "kind": "rm", "spec": models["other_rm"], "note": "an RM neither run optimised"}]
    rlhflab("eval", "--config", f"configs/eval/{profile}.yaml", "--out", str(out / "eval"),
            f"policies={json.dumps(policies)}", f"judges={json.dumps(judges)}", f"kl_reference={models['sft']}",
            f"limit={limit}", "ppo_run=null", "best_of_n_run=null", "rm_eval_runs=[]", "transfer.posts=null")
    return json.loads((out / "eval" / "report.json").read_text())


def arm_result(report: dict, name: str, run: str | None) -> dict:
    r = report["policies"][name]
    gold, other = r["by_judge"]["gold"], r["by_judge"]["other_rm"]
    kl_curve = None
    if run is not None:
        rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
        kl_curve = [{"episodes": m["episodes"], "kl": m["objective/kl"], "score": m["objective/score"]} for m in rows]
    return {"gold_win_rate": gold["win_rate"], "gold_win_rate_ci": gold["win_rate_ci"],
            "other_rm_win_rate": other["win_rate"], "other_rm_win_rate_ci": other["win_rate_ci"],
            "gold_length_controlled_win_rate": gold["length_controlled_win_rate"],
            "rouge_l": r["rouge"]["rougeL"], "mean_tokens": r["mean_tokens"], "kl": r["kl"], "n_posts": gold["n"],
            "training_kl_curve": kl_curve}


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for arm in ARMS:
        curve = res[arm]["training_kl_curve"]
        a1.plot([p["episodes"] for p in curve], [p["kl"] for p in curve], marker="o", label=arm)
    a1.set_xlabel("episodes")
    a1.set_ylabel("KL from SFT (nats per response)")
    a1.set_title("PPO's KL during training")
    a1.legend()
    names = ["sft", *ARMS]
    rates = [res[n]["gold_win_rate"] for n in names]
    errs = [[r - res[n]["gold_win_rate_ci"][0] for n, r in zip(names, rates)],
            [res[n]["gold_win_rate_ci"][1] - r for n, r in zip(names, rates)]]
    a2.bar(names, rates, yerr=errs, capsize=4, color=["#999", "#3a7", "#c63"])
    a2.axhline(0.5, color="k", lw=0.8, ls="--")
    a2.set_ylabel("win rate against the reference (gold RM, 95% CI)")
    a2.set_title(f"{res['sft']['n_posts']} TL;DR eval posts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["tiny", "cpu", "gpu"], default="cpu",
                        help="configs/{ppo,eval}/<profile>.yaml; tiny trains its own tiny models")
    parser.add_argument("--sft", help="the SFT run both PPO runs start from (and KL is measured against)")
    parser.add_argument("--rm", help="the RM the first run optimises (both value models start from it)")
    parser.add_argument("--gold", help="the gold RM: the judge")
    parser.add_argument("--other-rm", help="a second judge RM that neither run optimised")
    parser.add_argument("--limit", type=int, default=128, help="TL;DR eval posts (at least 100 for the result)")
    parser.add_argument("--out", default=None, help="default runs/rouge_vs_rm/<profile>")
    parser.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    args = parser.parse_args()
    out = REPO / (args.out or f"runs/rouge_vs_rm/{args.profile}")
    t0 = time.time()
    if args.profile == "tiny":
        models = tiny_models(out)
    else:
        given = {"sft": args.sft, "rm": args.rm, "gold": args.gold, "other_rm": args.other_rm}
        if missing := [k for k, v in given.items() if not v]:
            parser.error(f"--profile {args.profile} needs --{' --'.join(m.replace('_', '-') for m in missing)}")
        models = given
    runs = train_arms(args.profile, models, out)
    report = evaluate(args.profile, models, runs, out, args.limit)
    res = {"sft": arm_result(report, "sft", None), **{a: arm_result(report, a, r) for a, r in runs.items()},
           "profile": args.profile, "models": models, "reward_rouge": "rouge-score rougeL F1, Porter stemming, "
           "against the post's reference (TL;DR: the author's own TL;DR)", "commands": COMMANDS,
           "wall_s": time.time() - t0, "note": args.note,
           "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}}
    res["rm_beats_rouge_on_gold"] = res["ppo_rm"]["gold_win_rate_ci"][0] > res["ppo_rouge"]["gold_win_rate_ci"][1]
    results = out if args.profile == "tiny" else REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "rouge_vs_rm.json").write_text(json.dumps(res, indent=2) + "\n")
    plot(res, results / "rouge_vs_rm.png")
    print(json.dumps({a: {k: res[a][k] for k in ("gold_win_rate", "rouge_l", "mean_tokens", "kl")}
                      for a in ("sft", *ARMS)}, indent=2))


if __name__ == "__main__":
    main()
