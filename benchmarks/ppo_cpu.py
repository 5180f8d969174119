"""The real PPO run on CPU: train with configs/ppo/cpu.yaml, then record the curve and summaries before and after.

    python benchmarks/ppo_cpu.py --model runs/sft/cpu --reward runs/rm/cpu-<best> [key=value ...]
    python benchmarks/ppo_cpu.py --model runs/sft/cpu --reward runs/rm/cpu-<best> --report-only

Trains into runs/ppo/cpu-<name> (re-running resumes an interrupted run), then writes greedy summaries of the
first five TL;DR eval posts by the SFT policy and by the PPO policy (`rlhflab sample`), scores both with the
same reward model (`rlhflab score`), and writes benchmarks/results/ppo_cpu.json: the per-update curve (score,
KL, β, entropy, response length, EOS rate, seconds per phase), the five summaries before and after with their
RM scores, the DONE.json summary, the exact commands and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

from _machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "ppo_cpu.json"
CURVE_KEYS = ("episodes", "objective/score", "objective/kl", "objective/kl_coef", "objective/entropy",
              "response/length", "response/eos_rate", "ppo/clipfrac", "ppo/approxkl", "ppo/value_loss",
              "time/generation_s", "time/scoring_s", "time/training_s", "time/update_s")


def run(cmd: list[str]) -> None:
    print("+", shlex.join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def summaries(policy: str, reward: str, out: str, n: int, commands: list[str]) -> list[dict]:
    sample = [sys.executable, "-m", "rlhflab", "sample", "--config", "configs/sample/cpu.yaml", "--out",
              f"{out}/samples", f"model={policy}", f"limit={n}", "max_query_tokens=256"]
    score = [sys.executable, "-m", "rlhflab", "score", "--config", "configs/score/cpu.yaml", "--out",
             f"{out}/scored", f"model={reward}", f"samples={out}/samples/samples.jsonl",
             "posts=../shared/data/tldr/eval.jsonl.gz"]
    for cmd in (sample, score):
        commands.append(shlex.join(cmd))
        run(cmd)
    rows = [json.loads(x) for x in (REPO / out / "scored" / "samples.jsonl").read_text().splitlines()]
    return [{"post_id": r["post_id"], "text": r["text"], "rm_score": r["score"], "eos": r["eos"]} for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="main")
    parser.add_argument("--model", required=True, help="the SFT run (policy init and reference)")
    parser.add_argument("--reward", required=True, help="the RM run")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for `rlhflab ppo`")
    args = parser.parse_args()
    ppo_dir = f"runs/ppo/cpu-{args.name}"
    ppo_cmd = [sys.executable, "-m", "rlhflab", "ppo", "--config", "configs/ppo/cpu.yaml", "--out", ppo_dir,
               f"model={args.model}", f"reward={args.reward}", *args.overrides]
    commands = [shlex.join(ppo_cmd)]
    if not args.report_only:
        run(ppo_cmd)
    before = summaries(args.model, args.reward, f"runs/ppo-report/{args.name}/sft", 5, commands)
    after = summaries(ppo_dir, args.reward, f"runs/ppo-report/{args.name}/ppo", 5, commands)
    rows = [json.loads(x) for x in (REPO / ppo_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [{"update": r["step"], **{k: r[k] for k in CURVE_KEYS if k in r}} for r in rows]
    done = json.loads((REPO / ppo_dir / "DONE.json").read_text())
    first3 = sum(c["objective/score"] for c in curve[:3]) / min(3, len(curve))
    last3 = sum(c["objective/score"] for c in curve[-3:]) / min(3, len(curve))
    result = {
        "score_first_3_updates": first3, "score_last_3_updates": last3, "score_gain": last3 - first3,
        "kl_last": curve[-1]["objective/kl"], "kl_max": max(c["objective/kl"] for c in curve),
        "kl_target": None, "summary": done, "curve": curve,
        "summaries_before_after": [{"post_id": b["post_id"], "sft": b, "ppo": a} for b, a in zip(before, after)],
        "mean_rm_score_sft_greedy": sum(b["rm_score"] for b in before) / len(before),
        "mean_rm_score_ppo_greedy": sum(a["rm_score"] for a in after) / len(after),
        "commands": commands,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": None, "python": platform.python_version()},
    }
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((REPO / ppo_dir / "config.yaml").read_text())))
    result["kl_target"] = (cfg.get("config", cfg).get("kl") or {}).get("target")
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("score_first_3_updates", "score_last_3_updates", "kl_last",
                                             "mean_rm_score_sft_greedy", "mean_rm_score_ppo_greedy")}, indent=2))


if __name__ == "__main__":
    main()
