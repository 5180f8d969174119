"""Reward-model throughput: rlhflab's `rlhflab rm` against TRL's RewardTrainer, in one run.

Same model (the embedded SmolLM2-135M with a fresh scalar head, full fine-tuning, no frozen layers), same comparison
pairs (the first `--pairs` rows of batch13, tokenised once by rlhflab — query by format_query at
max_query_tokens=256, summaries by format_reference: leading space + EOS — and handed to TRL pre-tokenised as
query+summary ids), same micro batch (4 pairs), gradient accumulation (2), precision (bf16 autocast where the CPU
has native bf16, `--bf16 auto`; fp32 elsewhere), learning rate and schedule. TRL gets the pairs in the order rlhflab
visits them (its length-grouped order) with a sequential sampler, so every micro batch holds the same pairs on both
sides. TRL runs in .venv-bench (benchmarks/setup_bench_venv.sh) with gradient checkpointing off (its fastest
setting). rlhflab runs with its real default share_query=true (each query once, both summaries on its KV cache); TRL
has no such option and runs the 2 × 4 full sequences. The two alternate, `--rounds` times each; the first optimiser
step of every run is warm-up and is not timed; nothing but training happens inside a timed step (rlhflab: no dev
split, no normalisation, checkpoint only after the last step — and its per-step times come from metrics.jsonl, which
exclude those anyway). Throughput = comparison pairs / seconds inside optimiser steps.

    python benchmarks/rm_vs_trl.py --pairs 32 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _machine import cpu_bf16, cpu_model

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "comparisons" / "batch13.jsonl.gz"
BENCH_PY = REPO / ".venv-bench" / "bin" / "python"
MAX_QUERY_TOKENS, MAX_RESPONSE_TOKENS = 256, 64


def overrides(model_dir: Path, n: int, micro: int, accum: int, lr: float, bf16: bool) -> list[str]:
    """The `rlhflab rm` settings of the benchmark: every pair of the first n rows trains, nothing else runs."""
    return [f"model={model_dir}", f"data.comparisons={DATA}", f"data.limit={n}", "data.dev_fraction=0.0",
            "data.duplicates=keep", "data.contradictions=keep",  # the first n rows exactly, as TRL gets them
            f"data.max_query_tokens={MAX_QUERY_TOKENS}", f"data.max_response_tokens={MAX_RESPONSE_TOKENS}",
            f"batch_size={micro * accum}", f"micro_batch_size={micro}", "epochs=1", f"bf16={str(bf16).lower()}",
            "share_query=true", "freeze_layers=0", "loss=pairwise", "device=cpu", f"optim.lr={lr}",
            "optim.betas=[0.9, 0.95]", "optim.min_lr_ratio=0.0", "eval_every=0", "save_every=0",
            "normalise_on=null", "log_every=1"]


def run_rlhflab(args_rm: list[str], work: Path) -> dict:
    out = work / f"rlhflab-{time.time_ns()}"
    cmd = [sys.executable, "-m", "rlhflab", "--log-level", "WARNING", "rm", "--out", str(out), *args_rm]
    subprocess.run(cmd, check=True, cwd=REPO)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/pairs_per_s" in r]
    steps, seen = [], 0
    for r in rows:
        pairs = r["train/pairs_seen"] - seen
        seen = r["train/pairs_seen"]
        seconds = pairs / r["train/pairs_per_s"]
        steps.append({"seconds": seconds, "pairs": pairs, "tokens": round(r["train/tokens_per_s"] * seconds)})
    shutil.rmtree(out, ignore_errors=True)  # a saved 135M model per run; nothing else needs it
    return {"steps": steps}


def run_trl(pairs_path: Path, model_dir: Path, micro: int, accum: int, lr: float, bf16: bool, work: Path) -> dict:
    out = work / f"trl-{time.time_ns()}.json"
    cmd = [str(BENCH_PY), str(REPO / "benchmarks" / "_trl_rm_worker.py"), str(pairs_path), str(model_dir),
           str(out), str(micro), str(accum), str(lr), str(bf16).lower()]
    subprocess.run(cmd, check=True, cwd=work, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def throughput(result: dict) -> float:
    timed = result["steps"][1:]  # the first step is warm-up
    return sum(s["pairs"] for s in timed) / sum(s["seconds"] for s in timed)


def prepare(args_rm: list[str], work: Path):
    """Load and tokenise the pairs exactly as `rlhflab rm` does (its config, its functions), and write them for
    TRL as query+summary ids, in the order rlhflab's first epoch visits them."""
    from rlhflab.core.config import load_config
    from rlhflab.models.reward import new_reward_model
    from rlhflab.train.common import length_grouped_order
    from rlhflab.train.reward import RewardConfig, build_pairs, load_data

    cfg = load_config(RewardConfig, None, args_rm)
    train_rows, dev_rows, _ = load_data(cfg)
    assert not dev_rows and len(train_rows) == cfg.data.limit, (len(train_rows), len(dev_rows))
    rm = new_reward_model(cfg.model, max_query_tokens=cfg.data.max_query_tokens,
                          max_response_tokens=cfg.data.max_response_tokens, seed=cfg.seed)
    pairs = build_pairs(train_rows, rm)
    lengths = [len(p.query_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]
    order = length_grouped_order(lengths, cfg.batch_size, cfg.seed)  # = train()'s order for epoch 0
    rows = [{"chosen_ids": pairs[i].query_ids + pairs[i].chosen_ids,
             "rejected_ids": pairs[i].query_ids + pairs[i].rejected_ids} for i in order]
    pairs_path = work / "pairs.jsonl"
    pairs_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = {"pairs_per_run": len(rows), "query_tokens_mean": statistics.mean(len(p.query_ids) for p in pairs),
             "summary_tokens_mean": statistics.mean(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs) / 2,
             "eos_terminated": all(p.chosen_ids[-1] == rm.tokenizer.eos_token_id for p in pairs)}
    return pairs_path, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=32, help="comparison rows per run (a multiple of micro × accum)")
    parser.add_argument("--micro", type=int, default=4, help="pairs per forward/backward")
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--bf16", choices=["auto", "true", "false"], default="auto",
                        help="bf16 autocast in both trainers (auto: where this CPU computes bf16 natively, else fp32)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "rm_vs_trl.json"))
    args = parser.parse_args()
    if not BENCH_PY.exists():
        sys.exit("run benchmarks/setup_bench_venv.sh first (it installs TRL into .venv-bench)")
    if args.pairs % (args.micro * args.accum):
        sys.exit(f"--pairs must be a multiple of micro × accum = {args.micro * args.accum}")

    from rlhflab.models.loading import EMBEDDED_NAME, cache_dir, load_model

    bf16 = cpu_bf16(args.bf16)  # both trainers

    load_model(EMBEDDED_NAME)  # creates the safetensors cache both trainers load
    model_dir = cache_dir() / EMBEDDED_NAME
    args_rm = overrides(model_dir, args.pairs, args.micro, args.accum, args.lr, bf16)
    work = Path(tempfile.mkdtemp(prefix="rm-bench-"))
    pairs_path, stats = prepare(args_rm, work)
    ours, theirs, ours_steps, theirs_steps = [], [], [], []
    for _ in range(args.rounds):
        r = run_rlhflab(args_rm, work)
        ours.append(throughput(r))
        ours_steps.append(r["steps"])
        t = run_trl(pairs_path, model_dir, args.micro, args.accum, args.lr, bf16, work)
        theirs.append(throughput(t))
        theirs_steps.append(t["steps"])
        print(f"rlhflab {ours[-1]:.3f} pairs/s   TRL {theirs[-1]:.3f} pairs/s", flush=True)
        if t.get("gradient_checkpointing"):
            sys.exit("TRL ran with gradient checkpointing on; the comparison expects it off")
    import transformers

    trl_version = subprocess.run([str(BENCH_PY), "-c", "import trl; print(trl.__version__)"],
                                 capture_output=True, text=True).stdout.strip()
    ours_pps, trl_pps = statistics.median(ours), statistics.median(theirs)
    result = {
        "command": "python benchmarks/rm_vs_trl.py " + " ".join(sys.argv[1:]),
        "what": "reward-model training throughput in comparison pairs/s (optimiser steps after the first), "
                "embedded SmolLM2-135M + scalar head, full fine-tuning, " + ("bf16 autocast" if bf16 else "fp32")
                + ", the same pre-tokenised "
                "batch13 pairs in the same micro batches for both",
        "ratio_vs_trl": ours_pps / trl_pps,
        "rlhflab_pairs_per_s": ours_pps, "trl_pairs_per_s": trl_pps,
        "rlhflab_pairs_per_s_runs": ours, "trl_pairs_per_s_runs": theirs,
        "rlhflab_steps": ours_steps, "trl_steps": theirs_steps,
        "tokens_note": "per-step tokens: rlhflab counts each query once (share_query) plus both summaries; TRL "
                       "counts the real tokens of the 2 full query+summary sequences of each pair",
        "settings": {"bf16": bf16, "pairs": args.pairs, "micro_batch_pairs": args.micro, "grad_accum": args.accum,
                     "pairs_per_step": args.micro * args.accum, "steps_per_run": args.pairs // (args.micro * args.accum),
                     "timed_steps_per_run": args.pairs // (args.micro * args.accum) - 1, "lr": args.lr,
                     "max_query_tokens": MAX_QUERY_TOKENS, "max_response_tokens": MAX_RESPONSE_TOKENS,
                     "data": str(DATA.relative_to(REPO.parent)), **stats,
                     "rlhflab": {"share_query": True, "cli": f"{sys.executable} -m rlhflab rm --out RUN " + " ".join(args_rm)},
                     "trl": {"gradient_checkpointing": False, "bf16": bf16, "use_cpu": True,
                             "train_sampling_strategy": "sequential (rows in rlhflab's batch order)",
                             "columns": "chosen_ids / rejected_ids (pre-tokenised)"}},
        "machine": {"cpu": cpu_model(), "cores": torch.get_num_threads(), "gpu": None,
                    "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl_version},
        "peak_rss_mib_orchestrator": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: result[k] for k in ("ratio_vs_trl", "rlhflab_pairs_per_s", "trl_pairs_per_s")}, indent=2))


if __name__ == "__main__":
    main()
