"""What `bf16=true` costs on a CPU that does not compute bf16 natively, against `bf16=auto` (fp32 there).

rlhflab's CPU profiles used to say `bf16: true`, measured on Intel Xeons whose AMX units make bf16 matmuls several
times faster than fp32. On a CPU without AVX512-BF16 or AMX torch emulates bf16, and the same profiles run several
times slower. This measures, on the machine it runs on and with the embedded SmolLM2-135M:

    matmul         GFLOP/s of a 1024 x 1024 matmul in fp32 and in bf16
    train_step     one forward+backward of 4 x 128 tokens (full fine-tuning, a training micro batch)
    generate       4 book-length queries (64 tokens) x 16 sampled tokens, rlhflab's own KV-cache loop

each under `bf16=true` and under `bf16=auto` (rlhflab.models.device.autocast), alternated over --rounds rounds
(median reported), and the loss both settings compute, so the two are seen to do the same work.

    python benchmarks/precision_cpu.py [--rounds 3] [--note "what else ran"]   # -> results/precision_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from _flops import matmul_peak_gflops  # noqa: E402
from _machine import cpu_model  # noqa: E402

from rlhflab.models.device import autocast, native_bf16  # noqa: E402
from rlhflab.models.generation import generate  # noqa: E402
from rlhflab.models.loading import load_model  # noqa: E402

CPU = torch.device("cpu")
SETTINGS = {"bf16_true": True, "auto": "auto"}


def train_step(model, ids: torch.Tensor, setting) -> tuple[float, float]:
    """(seconds, loss) of one forward+backward under `setting`; gradients dropped after."""
    t0 = time.perf_counter()
    with autocast(CPU, setting):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    seconds = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return seconds, loss.item()


def generation(model, tokenizer, ids: torch.Tensor, setting) -> float:
    t0 = time.perf_counter()
    with autocast(CPU, setting):
        generate(model, tokenizer, ids, torch.ones_like(ids), max_new_tokens=16, temperature=0.7,
                 generator=torch.Generator().manual_seed(0), stop_at_eos=False)
    return time.perf_counter() - t0


def cpu_flags() -> dict[str, bool]:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/precision_cpu.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model("smollm2-135m")
    model.train()
    train_ids = torch.randint(100, 40000, (4, 128))  # (B, T)
    query_ids = torch.randint(100, 40000, (4, 64))  # (B, Tq)
    times: dict[str, dict[str, list[float]]] = {k: {"train_step": [], "generate": []} for k in SETTINGS}
    losses: dict[str, float] = {}
    for name, setting in SETTINGS.items():  # warm-up: first calls allocate and pick kernels
        train_step(model, train_ids, setting)
    for _ in range(args.rounds):
        for name, setting in SETTINGS.items():
            seconds, losses[name] = train_step(model, train_ids, setting)
            times[name]["train_step"].append(seconds)
            model.eval()
            times[name]["generate"].append(generation(model, tokenizer, query_ids, setting))
            model.train()
    median = {name: {k: statistics.median(v) for k, v in by.items()} for name, by in times.items()}
    result = {
        "what": "bf16=true against bf16=auto on this CPU, SmolLM2-135M: one training forward+backward of 4x128 "
                "tokens (full fine-tuning) and 4 queries x 16 sampled tokens; medians of alternated rounds",
        "command": "python benchmarks/precision_cpu.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": cpu_model(), "cores": torch.get_num_threads(), "flags": cpu_flags(),
                    "torch": torch.__version__},
        "native_bf16": native_bf16(CPU),
        "auto_resolves_to": "bf16" if native_bf16(CPU) else "fp32",
        "matmul_gflops": {dt: matmul_peak_gflops(getattr(torch, name), sizes=(1024,), repeats=2)
                          for dt, name in (("fp32", "float32"), ("bf16", "bfloat16"))},
        "seconds": median, "all_seconds": times, "rounds": args.rounds,
        "speedup_auto_over_bf16_true": {k: median["bf16_true"][k] / median["auto"][k]
                                        for k in ("train_step", "generate")},
        "loss": losses,
        "note": args.note,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("native_bf16", "matmul_gflops", "seconds",
                                             "speedup_auto_over_bf16_true", "loss")}, indent=2))


if __name__ == "__main__":
    main()
