"""A GPU check ready to run (issue 14, item 9): the `gpu` profiles of sft, rm and ppo for a few steps on a
1B-class Llama built from a config (random weights, the embedded SmolLM2 tokenizer; nothing is downloaded), and
their MFU, peak memory and PPO's episodes/s per phase, in `benchmarks/results/gpu_check.json`.

    python benchmarks/gpu_check.py                       # one GPU, about 5 minutes on an H100/H200
    python benchmarks/gpu_check.py --profile tiny --device cpu --out /tmp/gc   # the plumbing, on a CPU (tests)

With more than one GPU the same three stages also run sharded (`accelerate launch --config_file
configs/accelerate/fsdp.yaml`), throughput only. MFU = useful matmul FLOPs (benchmarks/_flops.py) per second over
the device's measured matmul peak in the precision the stages run (bf16 where the device has it natively, as the
profiles' `bf16: auto` resolves; fp32 otherwise) and over the spec-sheet bf16 peak where the GPU is known.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _flops import Shape, ppo_update_flops  # noqa: E402

import rlhflab  # noqa: E402
from rlhflab.core.config import load_config  # noqa: E402
from rlhflab.data.format import encode_query, format_queries  # noqa: E402
from rlhflab.data.loaders import load_posts  # noqa: E402
from rlhflab.models.device import use_bf16  # noqa: E402
from rlhflab.models.loading import load_tokenizer, save_model, tiny_model_and_tokenizer  # noqa: E402
from rlhflab.train.sft import SFTConfig  # noqa: E402

SPEC_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
ONE_B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
         "num_key_value_heads": 8, "max_position_embeddings": 2048, "tie_word_embeddings": True}
PROFILES = {  # per stage: (config file, overrides)
    "gpu": {"sft": ("configs/sft/gpu.yaml", {"max_steps": 6, "eval_every": 0, "save_every": 0, "n_samples": 0,
                                             "data.limit_eval": 16}),
            "rm": ("configs/rm/gpu.yaml", {"max_steps": 6, "eval_every": 0, "save_every": 0, "normalise_limit": 64,
                                           "data.limit": 512}),
            "ppo": ("configs/ppo/gpu.yaml", {"total_episodes": 192, "save_every": 0, "sample_every": 0})},
    "tiny": {"sft": ("configs/sft/tiny.yaml", {"max_steps": 2, "eval_every": 0, "save_every": 0, "n_samples": 0}),
             "rm": ("configs/rm/tiny.yaml", {"max_steps": 2, "eval_every": 0, "save_every": 0}),
             "ppo": ("configs/ppo/tiny.yaml", {"total_episodes": 16, "save_every": 0, "sample_every": 0})},
}


def build_model(out: Path, profile: str, device: str) -> Path:
    """A random 1B-class Llama with SmolLM2's tokenizer (gpu), or the tiny Llama (tiny), saved as a directory."""
    if (out / "config.json").exists():
        return out
    if profile == "tiny":
        save_model(*tiny_model_and_tokenizer(), out)
        return out
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer("smollm2-135m")
    config = LlamaConfig(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, **ONE_B)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    save_model(model, tok, out)
    return out


def matmul_peak_tflops(device: str, dtype: torch.dtype, n: int = 8192, repeats: int = 20) -> float:
    """The best `dtype` matmul rate this device reaches now (the MFU denominator)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e12


def stage_dtype(config: str, device: str) -> torch.dtype:
    """The precision a profile's stages compute in on `device`: its `bf16` setting as the stages resolve it."""
    cfg = load_config(SFTConfig, config)
    return torch.bfloat16 if use_bf16(cfg.bf16, torch.device(device)) else torch.float32


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_stage(name: str, fn, out: Path, config: str, overrides: dict, device: str) -> tuple[dict, float | None]:
    """(summary, peak GiB allocated on the device or None on a CPU) of one stage run in this process."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    summary = fn(str(out), str(REPO / config), **overrides, device=device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    print(f"{name}: {json.dumps({k: v for k, v in summary.items() if isinstance(v, (int, float))})}", flush=True)
    return summary, peak


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def median(values: list[float]) -> float | None:
    values = sorted(values)
    return values[len(values) // 2] if values else None


def stage_numbers(model_dir: Path, runs: dict[str, Path], peaks: dict[str, float | None], peak_tflops: float,
                  ppo_config: str, ppo_overrides: dict) -> dict:
    from transformers import AutoConfig

    shape = Shape.of(AutoConfig.from_pretrained(model_dir))
    params = shape.layers * shape.per_layer + shape.head
    out = {}
    for stage in ("sft", "rm"):
        rows = [r for r in metrics(runs[stage]) if "train/tokens_per_s" in r][1:]  # the first step warms up
        tok_s = median([r["train/tokens_per_s"] for r in rows])
        # ~6 FLOPs per matmul parameter per token (fwd + bwd); attention's L² term left out: a lower bound
        mfu = 6 * params * tok_s / (peak_tflops * 1e12) if tok_s else None
        out[stage] = {"tokens_per_s": tok_s, "mfu_measured_peak": mfu, "peak_memory_gib": peaks.get(stage)}
    ppo_rows = metrics(runs["ppo"])[1:] or metrics(runs["ppo"])
    from rlhflab.api import build_config
    from rlhflab.train.ppo import PPOConfig

    cfg = build_config(PPOConfig, str(REPO / ppo_config), **ppo_overrides)
    tok = load_tokenizer(str(model_dir))
    posts = list(load_posts(cfg.data.posts, limit=cfg.rollout_batch_size))
    _, texts, _ = format_queries(posts, tok, cfg.data.max_query_tokens)
    lengths = [len(encode_query(tok, t)) for t in texts]
    flops = ppo_update_flops(AutoConfig.from_pretrained(model_dir), lengths, cfg.max_new_tokens, cfg.ppo_epochs)
    phases = {}
    for phase in ("generation", "scoring", "training"):
        seconds = median([r[f"time/{phase}_s"] for r in ppo_rows])
        phases[phase] = {"seconds": seconds, "episodes_per_s": cfg.rollout_batch_size / seconds if seconds else None,
                         "mfu_measured_peak": flops[phase] / seconds / (peak_tflops * 1e12) if seconds else None}
    out["ppo"] = {"episodes_per_s": median([r["time/episodes_per_s"] for r in ppo_rows]), "phases": phases,
                  "peak_memory_gib": peaks.get("ppo"), "response_tokens": cfg.max_new_tokens,
                  "mean_query_tokens": sum(lengths) / len(lengths)}
    return out


def sharded(model_dir: Path, out: Path, profile: str, n_gpus: int) -> dict:
    """The three stages under FSDP2 across every GPU (subprocesses), throughput only."""
    result = {}
    for stage, (config, overrides) in PROFILES[profile].items():
        args = [f"{k}={v}" for k, v in overrides.items()]
        if stage in ("sft", "rm"):
            args.append(f"model={model_dir if stage == 'sft' else out / 'fsdp_sft'}")
        else:
            args += [f"model={out / 'fsdp_sft'}", f"reward={out / 'fsdp_rm'}"]
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/fsdp.yaml",
               "--num_processes", str(n_gpus), "-m", "rlhflab", stage, "--config", config, "--out",
               str(out / f"fsdp_{stage}"), *args]
        subprocess.run(cmd, cwd=REPO, check=True)
        rows = metrics(out / f"fsdp_{stage}")[1:]
        key = "time/episodes_per_s" if stage == "ppo" else "train/tokens_per_s"
        result[stage] = {key.split("/")[1]: median([r[key] for r in rows if key in r])}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="gpu")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="runs/gpu_check")
    ap.add_argument("--result", default="benchmarks/results/gpu_check.json")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here (use --device cpu --profile tiny to try the plumbing)")
    os.chdir(REPO)  # the profiles' data paths are relative to the repository
    start = time.time()
    out = (REPO / args.out).resolve()
    model_dir = build_model(out / "model", args.profile, args.device)
    stages = PROFILES[args.profile]
    dtype = stage_dtype(stages["sft"][0], args.device)
    peak = matmul_peak_tflops(args.device, dtype, n=8192 if args.device.startswith("cuda") else 512)
    runs = {s: out / s for s in stages}
    peaks = {}
    sft_cfg, sft_over = stages["sft"]
    _, peaks["sft"] = run_stage("sft", rlhflab.sft, runs["sft"], sft_cfg, {**sft_over, "model": str(model_dir)},
                                args.device)
    rm_cfg, rm_over = stages["rm"]
    _, peaks["rm"] = run_stage("rm", rlhflab.rm, runs["rm"], rm_cfg, {**rm_over, "model": str(runs["sft"])},
                               args.device)
    ppo_cfg, ppo_over = stages["ppo"]
    ppo_over = {**ppo_over, "model": str(runs["sft"]), "reward": str(runs["rm"])}
    _, peaks["ppo"] = run_stage("ppo", rlhflab.ppo, runs["ppo"], ppo_cfg, ppo_over, args.device)
    numbers = stage_numbers(model_dir, runs, peaks, peak, ppo_cfg, ppo_over)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    spec = next((v for k, v in SPEC_PEAK_TFLOPS.items() if k in name), None)
    if spec:
        for stage in ("sft", "rm"):
            m = numbers[stage]["mfu_measured_peak"]
            numbers[stage]["mfu_spec_peak"] = m * peak / spec if m is not None else None
    n_gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    doc = {"what": "sft, rm and ppo for a few steps on a random 1B-class Llama (the gpu profiles); MFU from "
                   "useful matmul FLOPs", "profile": args.profile, "device": name, "n_gpus": n_gpus,
           "model": ONE_B if args.profile == "gpu" else "tiny",
           "matmul_peak_tflops_measured": peak, "matmul_peak_dtype": str(dtype).removeprefix("torch."),
           "spec_peak_tflops_bf16": spec, **numbers,
           "fsdp": sharded(model_dir, out, args.profile, n_gpus) if n_gpus > 1 else None,
           "wall_s": round(time.time() - start, 1),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "torch": torch.__version__, "env": {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES",) if k in os.environ}}
    path = REPO / args.result if not Path(args.result).is_absolute() else Path(args.result)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("device", "wall_s")}))


if __name__ == "__main__":
    main()
