"""Memory per process, whole (data parallel) against sharded (FSDP2): benchmarks/results/fsdp_memory_cpu.json.

    python benchmarks/fsdp_memory.py [--steps 4] [--out benchmarks/results/fsdp_memory_cpu.json]

Runs the same full fine-tuning SFT job (the embedded SmolLM2-135M, configs/sft/smoke.yaml with freeze_layers=0, so
every weight has a gradient and Adam moments) twice under `accelerate launch --num_processes 2` on CPUs (gloo):
`--multi_gpu` (every process holds the whole model, its gradients and its Adam state) and `--use_fsdp` (every
decoder layer sharded). Two measures per run:
- `state_mib_per_process`: the training state one process holds — weights, a gradient per trainable weight and
  Adam's moments, local shards only (SFT's `train/state_mib_per_process` metric, counted from the tensors). This
  is what sharding divides; it is the number that matters on a GPU, where it must fit in device memory.
- the peak resident memory (RSS) of each rank, sampled every 50 ms. On CPUs it is dominated by loading the
  embedded model (GGUF, dequantised, then rebuilt), which happens whole on every process before sharding, and
  glibc keeps freed memory mapped; rank 0 also gathers the checkpoint (one full copy of weights and Adam moments,
  one tensor at a time). So RSS shows what a CPU run costs, not what sharding saves.
Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def rank_of(proc: psutil.Process) -> int | None:
    try:
        rank = proc.environ().get("RANK")
    except (psutil.Error, OSError):
        return None
    return int(rank) if rank is not None else None


def run_sampled(cmd: list[str], env: dict, log: Path) -> tuple[float, dict[int, float]]:
    """Run `cmd`, sampling the RSS of its rank processes; -> (wall seconds, {rank: peak RSS in MiB})."""
    peaks: dict[int, float] = {}
    t0 = time.time()
    with open(log, "wb") as f:
        launcher = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        parent = psutil.Process(launcher.pid)
        while launcher.poll() is None:
            for child in parent.children(recursive=True):
                rank = rank_of(child)
                if rank is None:
                    continue
                try:
                    rss = child.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                peaks[rank] = max(peaks.get(rank, 0.0), rss)
            time.sleep(0.05)
    if launcher.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed with exit {launcher.returncode}; see {log}")
    return time.time() - t0, peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench_fsdp_memory")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fsdp_memory_cpu.json")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    overrides = ["device=cpu", "freeze_layers=0", f"max_steps={args.steps}", "eval_every=0", "n_samples=0",
                 "save_every=0"]
    results = {}
    for mode, flag in (("whole", "--multi_gpu"), ("fsdp", "--use_fsdp")):
        out = args.work / mode
        subprocess.run(["rm", "-rf", str(out)], check=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", flag, "--num_processes", "2", "--num_machines",
               "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29655", "-m",
               "rlhflab", "sft", "--config", "configs/sft/smoke.yaml", "--out", str(out), *overrides]
        wall_s, peaks = run_sampled(cmd, env, args.work / f"{mode}.log")
        done = json.loads((out / "DONE.json").read_text())
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        state = next(r["train/state_mib_per_process"] for r in rows if "train/state_mib_per_process" in r)
        results[mode] = {"state_mib_per_process": round(state, 1),
                         "peak_rss_mib_by_rank": {str(r): round(v, 1) for r, v in sorted(peaks.items())},
                         "wall_s": round(wall_s, 1), "train_loss_final": done["train_loss_final"]}
        print(mode, results[mode], flush=True)
    whole, fsdp = results["whole"], results["fsdp"]
    report = {
        "command": f"python benchmarks/fsdp_memory.py --steps {args.steps}",
        "what": "training state (weights + gradients + Adam moments) per process and peak RSS per rank of a full "
                f"fine-tuning SFT job (SmolLM2-135M, configs/sft/smoke.yaml, freeze_layers=0, {args.steps} steps of "
                "batch 8), 2 CPU processes (gloo): whole model per process (--multi_gpu) vs decoder layers "
                "sharded (--use_fsdp)",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "state_mib_per_process_ratio_fsdp_vs_whole": round(fsdp["state_mib_per_process"]
                                                           / whole["state_mib_per_process"], 3),
        "peak_rss_ratio_fsdp_vs_whole_rank1": round(fsdp["peak_rss_mib_by_rank"]["1"]
                                                    / whole["peak_rss_mib_by_rank"]["1"], 3),
        "train_loss_final_rel_diff": abs(fsdp["train_loss_final"] - whole["train_loss_final"])
                                     / abs(whole["train_loss_final"]),
        "runs": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
