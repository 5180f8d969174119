"""Where a training step's time goes (issue 17, step 1): torch.profiler over one PPO training phase (by default one
micro batch of 4 episodes, forward and backward of policy and value model, and one optimizer step of each) and
over one SFT optimizer step, each op's self CPU time put in one of six buckets:

    matmul          aten::mm / addmm / bmm / matmul / linear (forward and backward)
    attention       scaled-dot-product attention kernels and their backward
    optimizer       everything under AdamW's step (the profiler's "Optimizer.step#AdamW.step" region)
    casts           aten::to / _to_copy / copy_ (every copy_, whatever its dtypes: under bf16 autocast most
                    are its weight and activation casts)
    norm_elementwise  RMSNorm, SiLU, rotary, softmax/log-softmax of the LM head, losses, masks, reductions
    other           whatever is left (indexing, views, Python-side ops, autograd bookkeeping)

The steps are the real ones: `rlhflab ppo` and `rlhflab sft` run in this process, and the function that runs the
timed region (`ppo_epochs`, and SFT's `optimizer_step` marking step boundaries) is wrapped so that the profiler
is on for exactly the k-th call (the first is warm-up). Matmul FLOPs come from the profiler (with_flops), so the
matmul bucket's GFLOP/s can be set against this machine's matmul peak in the precision the steps ran in (bf16
where the CPU has it natively, `--bf16 auto`), measured here too. The profiler
keeps every op's event in memory: one micro batch of the 135M model in full fine-tuning peaks at ~15 GB RSS, and
a whole ppo_vs_trl training phase (4 epochs × 8 episodes) did not fit in 24 GB.

    python benchmarks/profile_step.py                 # full fine-tuning, 512-token queries, 48-token responses
    python benchmarks/profile_step.py --freeze-layers 20 --out benchmarks/results/profile_step_frozen20_cpu.json
    python benchmarks/profile_step.py --compile --out benchmarks/results/profile_step_compile_cpu.json

With --compile, the self time of each compiled graph's call ("## Call CompiledFxGraph …": inductor's fused loops of
norms, activations, casts and adds) counts as norm_elementwise; the matmuls and attention it calls are still
aten ops and count as themselves.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from _flops import matmul_peak_gflops
from _machine import cpu_bf16, cpu_model

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "tldr" / "train.jsonl.gz"
BUCKETS = ("matmul", "attention", "optimizer", "casts", "norm_elementwise", "other")
MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"}
CASTS = {"aten::to", "aten::_to_copy", "aten::copy_", "aten::_autocast_to_reduced_precision"}
NORM_ELEMENTWISE = ("norm", "rsqrt", "silu", "mul", "add", "sub", "div", "pow", "mean", "sum", "softmax",
                    "exp", "log", "neg", "cat", "where", "clamp", "max", "min", "gather", "masked", "sigmoid",
                    "sqrt", "cos", "sin", "threshold", "tanh", "nll", "cross_entropy", "abs", "fill", "zero")


def bucket(name: str, under_optimizer: bool) -> str:
    """The bucket of one op (by its name, and whether AdamW's step encloses it)."""
    if under_optimizer:
        return "optimizer"
    if name in MATMUL or name.startswith("MmBackward") or name.startswith("AddmmBackward"):
        return "matmul"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention"
    if "CompiledFxGraph" in name:  # compile=true: inductor's fused loops (norms, activations, casts, adds); the
        return "norm_elementwise"  # graph's matmuls and attention are its aten children, counted as themselves
    if name in CASTS or name.startswith("ToCopyBackward"):
        return "casts"
    low = name.lower()
    if name.startswith("aten::") and any(k in low for k in NORM_ELEMENTWISE):
        return "norm_elementwise"
    return "other"


def split(prof) -> dict:
    """Self CPU seconds per bucket, the top ops, and the matmuls' FLOPs, from one profile."""
    seconds: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    flops = 0
    for ev in prof.events():
        under_opt, parent = False, ev.cpu_parent
        while parent is not None:
            if parent.name.startswith("Optimizer.step"):
                under_opt = True
                break
            parent = parent.cpu_parent
        s = ev.self_cpu_time_total / 1e6
        seconds[bucket(ev.name, under_opt or ev.name.startswith("Optimizer.step"))] += s
        by_op[ev.name] += s
        if ev.name in MATMUL:
            flops += ev.flops or 0
    total = sum(seconds.values())
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:15]
    return {"total_s": total, "seconds": {b: seconds.get(b, 0.0) for b in BUCKETS},
            "fraction": {b: seconds.get(b, 0.0) / total for b in BUCKETS},
            "matmul_gflop": flops / 1e9, "matmul_gflops_per_s": flops / 1e9 / max(seconds["matmul"], 1e-9),
            "top_ops_s": dict(top)}


def profile_call(module, name: str, call: int, sink: dict, start_after_previous: bool = False):
    """Wrap module.name so that the profiler records its `call`-th call (1-based). With start_after_previous,
    the window runs from the end of call k-1 to the end of call k (SFT: one whole step, optimizer last)."""
    real, count, state = getattr(module, name), [0], {}

    def wrapped(*args, **kwargs):
        count[0] += 1
        if count[0] == call and not start_after_previous:
            with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
                t0 = time.perf_counter()
                out = real(*args, **kwargs)
                sink["wall_s"] = time.perf_counter() - t0
            sink["profile"] = prof
            return out
        out = real(*args, **kwargs)
        if start_after_previous and count[0] == call - 1:
            state["prof"] = profile(activities=[ProfilerActivity.CPU], with_flops=True)
            state["prof"].__enter__()
            state["t0"] = time.perf_counter()
        elif start_after_previous and count[0] == call:
            sink["wall_s"] = time.perf_counter() - state["t0"]
            state["prof"].__exit__(None, None, None)
            sink["profile"] = state["prof"]
        return out

    setattr(module, name, wrapped)


def ppo_profile(a: argparse.Namespace, work: Path) -> dict:
    import rlhflab.train.ppo as ppo
    from rlhflab.core.config import load_config

    cfg = load_config(ppo.PPOConfig, None, [
        f"model={a.model}", "reward=style:sentiment", f"data.posts={DATA}", "data.limit=64",
        f"data.max_query_tokens={a.max_query_tokens}", f"total_episodes={2 * a.rollout}",
        f"rollout_batch_size={a.rollout}", f"mini_batch_size={a.mini}", f"micro_batch_size={a.micro}",
        f"ppo_epochs={a.ppo_epochs}", f"max_new_tokens={a.response_length}", "stop_at_eos=false",
        "no_eos_penalty=null", f"freeze_layers={a.freeze_layers}", f"bf16={a.bf16}", f"frozen_bf16={a.bf16}",
        "device=cpu", "save_every=0", "sample_every=0", f"compile={str(a.compile).lower()}"])
    sink: dict = {}
    profile_call(ppo, "ppo_epochs", 2, sink)  # the second update's training phase; the first is warm-up
    ppo.train(cfg, str(work / "ppo"))
    n_micro = a.ppo_epochs * a.rollout // a.micro
    return {"what": f"one update's training phase: {a.ppo_epochs} PPO epochs × {a.rollout} episodes = {n_micro} "
            f"micro batches of {a.micro} (forward+backward of policy and value model) and "
            f"{a.ppo_epochs * a.rollout // a.mini} optimizer steps of each", "wall_s": sink["wall_s"],
            "micro_batches": n_micro, **split(sink["profile"])}


def sft_profile(a: argparse.Namespace, work: Path) -> dict:
    import rlhflab.train.sft as sft
    from rlhflab.core.config import load_config

    cfg = load_config(sft.SFTConfig, None, [
        f"model={a.model}", f"data.train={DATA}", "data.eval=null", "data.limit_train=64",
        "data.max_query_tokens=512", "data.max_response_tokens=64", f"batch_size={2 * a.micro}",
        f"micro_batch_size={a.micro}", f"freeze_layers={a.freeze_layers}", f"bf16={a.bf16}", "max_steps=3",
        "eval_every=0", "save_every=0", "n_samples=0", "device=cpu", f"compile={str(a.compile).lower()}"])
    sink: dict = {}
    profile_call(sft, "optimizer_step", 3, sink, start_after_previous=True)  # step 3: after step 2 ended
    sft.train(cfg, str(work / "sft"))
    return {"what": f"one SFT optimizer step: 2 micro batches of {a.micro} posts (≤ 512 + 64 tokens), "
            "forward+backward, AdamW", "wall_s": sink["wall_s"], **split(sink["profile"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rollout", type=int, default=4)
    p.add_argument("--mini", type=int, default=4)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--ppo-epochs", type=int, default=1)
    p.add_argument("--response-length", type=int, default=48)
    p.add_argument("--max-query-tokens", type=int, default=512)
    p.add_argument("--freeze-layers", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="compile=true in both stages (the window is after warm-up)")
    p.add_argument("--bf16", choices=["auto", "true", "false"], default="auto",
                   help="both stages' bf16 and PPO's frozen_bf16 (auto: bf16 where this CPU has it natively)")
    p.add_argument("--note", default="")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "profile_step_cpu.json"))
    a = p.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        result = {"command": "python benchmarks/profile_step.py " + " ".join(sys.argv[1:]),
                  "what": __doc__.split("\n\n")[0].replace("\n", " "),
                  "settings": {k: v for k, v in vars(a).items() if k not in ("out", "note")},
                  "ppo_training_phase": ppo_profile(a, Path(tmp)), "sft_step": sft_profile(a, Path(tmp))}
    bf16 = cpu_bf16(a.bf16)
    dtype = torch.bfloat16 if bf16 else torch.float32
    peak = matmul_peak_gflops(dtype)  # in the precision the profiled steps ran in
    result["matmul_peak_gflops"], result["matmul_peak_dtype"] = peak, str(dtype).removeprefix("torch.")
    for k in ("ppo_training_phase", "sft_step"):
        result[k]["matmul_fraction_of_peak"] = result[k]["matmul_gflops_per_s"] / peak
    result["machine"] = {"cpu": cpu_model(), "cores": torch.get_num_threads(), "python": platform.python_version(),
                         "torch": torch.__version__}
    result["note"] = a.note
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: {"wall_s": result[k]["wall_s"], "fraction": result[k]["fraction"]}
                      for k in ("ppo_training_phase", "sft_step")}, indent=2))


if __name__ == "__main__":
    main()
