"""SFT throughput: rlhflab against TRL's SFTTrainer, and against the machine's matmul peak, in one run.

Same model (the embedded SmolLM2-135M, full fine-tuning, no frozen layers), same token sequences (rlhflab's
tokenisation of the same TL;DR posts, handed to TRL pre-tokenised), same micro batch, gradient accumulation,
precision (bf16 autocast where the CPU has native bf16, `--bf16 auto`; fp32 elsewhere), learning rate and schedule.
TRL runs in .venv-bench (benchmarks/setup_bench_venv.sh) with gradient checkpointing off (its fastest setting). The
two alternate, `--rounds` times each; the first optimiser step of every run is warm-up and is not timed. Throughput
= real (non-pad) tokens / seconds inside steps.

    python benchmarks/sft_vs_trl.py --examples 56 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _flops import matmul_peak_gflops, training_flops
from _machine import cpu_bf16, cpu_model

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "tldr" / "train.jsonl.gz"
BENCH_PY = REPO / ".venv-bench" / "bin" / "python"


def run_rlhflab(data_jsonl: Path, model_dir: Path, n: int, micro: int, accum: int, lr: float, bf16: bool,
                work: Path) -> dict:
    out = work / f"rlhflab-{time.time_ns()}"
    cmd = [sys.executable, "-m", "rlhflab", "--log-level", "WARNING", "sft", "--out", str(out),
           f"model={model_dir}", f"data.train={data_jsonl}", "data.eval=null", f"data.limit_train={n}",
           "data.max_query_tokens=512", "data.max_response_tokens=64", f"batch_size={micro * accum}",
           f"micro_batch_size={micro}", "epochs=1", f"bf16={str(bf16).lower()}", "freeze_layers=0", f"optim.lr={lr}",
           "optim.betas=[0.9, 0.95]", "optim.min_lr_ratio=0.0", "save_every=0", "n_samples=0", "eval_every=0"]
    subprocess.run(cmd, check=True, cwd=REPO)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/tokens_per_s" in r]
    steps, seen = [], 0
    for r in rows:
        tokens = r["train/tokens_seen"] - seen
        seen = r["train/tokens_seen"]
        steps.append({"seconds": tokens / r["train/tokens_per_s"], "tokens": tokens})
    return {"steps": steps}


def run_trl(examples_path: Path, model_dir: Path, micro: int, accum: int, lr: float, bf16: bool, work: Path) -> dict:
    out = work / f"trl-{time.time_ns()}.json"
    cmd = [str(BENCH_PY), str(REPO / "benchmarks" / "_trl_sft_worker.py"), str(examples_path), str(model_dir),
           str(out), str(micro), str(accum), str(lr), str(bf16).lower()]
    subprocess.run(cmd, check=True, cwd=work, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def throughput(result: dict) -> float:
    timed = result["steps"][1:]  # the first step is warm-up
    return sum(s["tokens"] for s in timed) / sum(s["seconds"] for s in timed)


def prepare(n: int, work: Path):
    """Tokenise the posts exactly as rlhflab's SFT does and write them for TRL, plus a posts file for rlhflab."""
    from rlhflab.data.loaders import load_tldr, write_posts
    from rlhflab.models.loading import EMBEDDED_NAME, cache_dir, load_model
    from rlhflab.train.sft import SFTData, build_examples

    model, tokenizer = load_model(EMBEDDED_NAME)  # creates the safetensors cache both trainers load
    posts, examples = build_examples(list(load_tldr(DATA, limit=n)), tokenizer,
                                     SFTData(max_query_tokens=512, max_response_tokens=64))
    rows = [{"input_ids": e.query_ids + e.response_ids,
             "completion_mask": [0] * len(e.query_ids) + [1] * len(e.response_ids)} for e in examples]
    examples_path = work / "examples.jsonl"
    examples_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    posts_path = work / "posts.jsonl"
    write_posts(posts_path, posts)
    return model.config, rows, examples_path, posts_path, cache_dir() / EMBEDDED_NAME


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=56, help="posts per run (a multiple of micro × accum)")
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--bf16", choices=["auto", "true", "false"], default="auto",
                        help="bf16 autocast in both trainers (auto: where this CPU computes bf16 natively, else fp32)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "sft_vs_trl.json"))
    args = parser.parse_args()
    if not BENCH_PY.exists():
        sys.exit("run benchmarks/setup_bench_venv.sh first (it installs TRL into .venv-bench)")

    bf16 = cpu_bf16(args.bf16)
    dtype = torch.bfloat16 if bf16 else torch.float32  # both trainers, and the peak they are set against
    work = Path(tempfile.mkdtemp(prefix="sft-bench-"))
    model_config, rows, examples_path, posts_path, model_dir = prepare(args.examples, work)
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(throughput(run_rlhflab(posts_path, model_dir, args.examples, args.micro, args.accum, args.lr,
                                           bf16, work)))
        theirs.append(throughput(run_trl(examples_path, model_dir, args.micro, args.accum, args.lr, bf16, work)))
        print(f"rlhflab {ours[-1]:.1f} tok/s   TRL {theirs[-1]:.1f} tok/s", flush=True)
    peak = matmul_peak_gflops(dtype)

    useful, conventional = training_flops(model_config, rows)
    tokens = sum(len(r["input_ids"]) for r in rows)
    ours_tps, trl_tps = statistics.median(ours), statistics.median(theirs)
    ours_gflops = ours_tps * useful / tokens / 1e9
    import transformers

    trl_version = subprocess.run([str(BENCH_PY), "-c", "import trl; print(trl.__version__)"],
                                 capture_output=True, text=True).stdout.strip()
    result = {
        "command": "python benchmarks/sft_vs_trl.py " + " ".join(sys.argv[1:]),
        "what": "SFT tokens/s (real tokens, optimiser steps after the first), embedded SmolLM2-135M, full "
                "fine-tuning, " + ("bf16 autocast" if bf16 else "fp32")
                + ", same pre-tokenised TL;DR examples and batch for both",
        "ratio_vs_trl": ours_tps / trl_tps,
        "fraction_of_matmul_peak": ours_gflops / peak,
        "rlhflab_tokens_per_s": ours_tps, "trl_tokens_per_s": trl_tps,
        "rlhflab_tokens_per_s_runs": ours, "trl_tokens_per_s_runs": theirs,
        "rlhflab_gflops_useful": ours_gflops,
        "rlhflab_gflops_conventional_6N": ours_tps * conventional / tokens / 1e9,
        "fraction_of_matmul_peak_conventional_6N": ours_tps * conventional / tokens / 1e9 / peak,
        "matmul_peak_gflops": peak, "matmul_peak_dtype": str(dtype).removeprefix("torch."),
        "flops_note": "useful FLOPs count the output head only where a loss is taken (rlhflab skips it on the "
                      "query); conventional counts 6N on every token as most MFU figures do",
        "settings": {"bf16": bf16, "examples": args.examples, "micro_batch": args.micro, "grad_accum": args.accum,
                     "max_query_tokens": 512, "max_response_tokens": 64, "tokens_per_run": tokens},
        "machine": {"cpu": cpu_model(), "cores": torch.get_num_threads(), "gpu": None,
                    "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl_version},
        "peak_rss_mib_orchestrator": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ratio_vs_trl", "fraction_of_matmul_peak")}, indent=2))


if __name__ == "__main__":
    main()
