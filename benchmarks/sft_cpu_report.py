"""Summarise a finished SFT run into benchmarks/results/sft_cpu.json: eval loss and five summaries, before/after.

    rlhflab sft --config configs/sft/cpu.yaml --out runs/sft/cpu
    python benchmarks/sft_cpu_report.py runs/sft/cpu
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from _machine import cpu_model

REPO = Path(__file__).resolve().parents[1]


def main(run_dir: str, out: str = str(REPO / "benchmarks" / "results" / "sft_cpu.json")) -> None:
    run = Path(run_dir)
    done = json.loads((run / "DONE.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["eval/loss"]) for r in metrics if "eval/loss" in r]
    tables = sorted((run / "samples").glob("step_*.jsonl"))
    before = [json.loads(line) for line in tables[0].read_text().splitlines()]
    after = [json.loads(line) for line in tables[-1].read_text().splitlines()]
    speeds = [r["train/tokens_per_s"] for r in metrics if "train/tokens_per_s" in r]
    config = yaml.safe_load((run / "config.yaml").read_text())
    result = {
        "command": f"rlhflab sft --config configs/sft/cpu.yaml --out {run_dir}",
        "eval_loss_before": evals[0][1], "eval_loss_after": evals[-1][1],
        "eval_loss_curve": [{"step": s, "eval_loss": v} for s, v in evals],
        "eval_set": "first 64 posts of ../shared/data/tldr/eval.jsonl.gz (loss per reference token)",
        "summaries": [{"post_id": b["post_id"], "reference": b["reference"], "before": b["response"],
                       "after": a["response"]} for b, a in zip(before, after)],
        "steps": done["step"], "wall_s": done["wall_s"], "tokens_seen": done["tokens_seen"],
        "median_train_tokens_per_s": sorted(speeds)[len(speeds) // 2] if speeds else None,
        "config": config["config"], "git_revision": config.get("git_revision"),
        "machine": {"cpu": cpu_model(), "gpu": None},
    }
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("eval_loss_before", "eval_loss_after", "wall_s")}, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:])
