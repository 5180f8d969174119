"""Where a PPO update's time goes: median seconds per phase (generation, scoring, training) of finished
`rlhflab ppo` runs, read from their metrics.jsonl, side by side. Compare runs of the same config that differ in one
setting (e.g. reuse_frozen) and were made on the same machine.

    python benchmarks/ppo_phase_split.py runs/ppo/cpu-main runs/ppo/cpu-snap --skip 2 \
        --out benchmarks/results/ppo_phase_split_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import yaml
from _machine import cpu_model

PHASES = ("time/generation_s", "time/scoring_s", "time/training_s", "time/update_s")


def split(run: Path, skip: int) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/update_s" in r][skip:]
    config = yaml.safe_load((run / "config.yaml").read_text())
    config = config.get("config", config)
    return {"run": str(run), "updates_timed": len(rows),
            "median_s": {k.removeprefix("time/"): statistics.median(r[k] for r in rows) for k in PHASES},
            "score_last_3": sum(r["objective/score"] for r in rows[-3:]) / 3, "kl_last": rows[-1]["objective/kl"],
            "settings": {k: config.get(k) for k in ("freeze_layers", "reuse_frozen", "frozen_bf16", "bf16",
                                                    "rollout_batch_size", "ppo_epochs", "max_new_tokens")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--skip", type=int, default=2, help="leading updates left out (warm-up, loading)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--note", default="", help="what differs between the runs, for the record")
    a = parser.parse_args()
    result = {"command": "python benchmarks/ppo_phase_split.py " + " ".join(map(str, a.runs)) + f" --skip {a.skip}" + (" --note ..." if a.note else ""),
              "note": a.note, "runs": [split(r, a.skip) for r in a.runs],
              "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": None,
                          "python": platform.python_version()}}
    text = json.dumps(result, indent=2) + "\n"
    if a.out:
        a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
