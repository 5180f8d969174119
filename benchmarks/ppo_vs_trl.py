"""PPO throughput and peak memory: rlhflab's `rlhflab ppo` against TRL's PPOTrainer (TRL 1.12) and RLOOTrainer
(current TRL), in one run.

Same setup for all three: policy and reference = the `--model` causal LM (an SFT run); reward model = the `--reward`
RM run for rlhflab, and its backbone (`<run>/model`) as AutoModelForSequenceClassification(num_labels=1) for TRL
(the score head is fresh there: for throughput only the shapes matter); value model = rlhflab's default (initialised
from the reward model) and for TRL PPO the same backbone as a sequence classifier (RLOO has none). Queries = the
first `--updates × --rollout` TL;DR train posts, formatted by rlhflab's format_query at `--max-query-tokens` and
tokenised once here (posts whose query cannot fit are dropped, as they must be); TRL PPO gets the ids, TRL RLOO the
text (checked to tokenise to the same ids). Per update: `--rollout` episodes, `--ppo-epochs` passes in minibatches of
`--mini` episodes, `--micro` episodes per forward/backward, responses of exactly `--response-length` tokens
(rlhflab stop_at_eos=false; TRL: see _trl_ppo_worker.py), temperature 0.7, full fine-tuning (or `--freeze-layers N`
in all three), bf16 autocast where the CPU has native bf16 (`--bf16 auto`; fp32 elsewhere, or as `--bf16` says;
frozen reference/reward weights in fp32 unless `--frozen-bf16`), CPU only. RLOO
samples rollout/k prompts × k completions (k = `--rloo-k`) per update and trains no value model — the same
episodes and minibatches, less work.

The three alternate, `--rounds` times each (rlhflab, TRL PPO, TRL RLOO). The first update of every run is warm-up
and is not timed. Throughput = episodes / seconds of the timed updates (rlhflab: its metrics.jsonl "time/update_s";
TRL: wall time between the ends of consecutive updates, taken by a TrainerCallback). Peak memory = the peak RSS of
the whole child process (os.wait4), i.e. models, optimiser state, activations, data and framework overhead.
Ratios are rlhflab / TRL of the medians over rounds (> 1 means rlhflab is faster, or uses more memory).
rlhflab's time split comes from its metrics (time/generation_s, time/scoring_s, time/training_s); TRL's from
timing wrappers around its generation call, and from the first forward with gradients (PPO) / the end of its
rollout (RLOO).

    python benchmarks/ppo_vs_trl.py --updates 3 --rollout 8 --mini 8 --micro 4 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _flops import matmul_peak_gflops, ppo_update_flops
from _machine import cpu_bf16, cpu_model

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "tldr" / "train.jsonl.gz"
PPO_PY = REPO / ".venv-bench-ppo" / "bin" / "python"  # TRL 1.12: the last TRL with PPOTrainer (experimental)
RLOO_PY = REPO / ".venv-bench" / "bin" / "python"  # current TRL
WORKER = REPO / "benchmarks" / "_trl_ppo_worker.py"
TRAINERS = ("rlhflab", "trl_ppo", "trl_rloo", "rlhflab_no_reuse", "rlhflab_no_compile")  # the last two: A/Bs
SPLIT = ("seconds", "generation_s", "scoring_s", "training_s", "other_s")  # per update; other = the rest


def overrides(a: argparse.Namespace, n_posts: int) -> list[str]:
    """The `rlhflab ppo` settings of the benchmark (every key that the TRL side has to match, set explicitly)."""
    return [f"model={a.model}", f"reward={a.reward}", "value_model=null", f"data.posts={DATA}",
            f"data.limit={n_posts}", f"data.max_query_tokens={a.max_query_tokens}", f"seed={a.seed}",
            f"total_episodes={a.updates * a.rollout}", f"rollout_batch_size={a.rollout}",
            f"mini_batch_size={a.mini}", f"micro_batch_size={a.micro}", f"ppo_epochs={a.ppo_epochs}",
            f"max_new_tokens={a.response_length}", f"temperature={a.temperature}", "stop_at_eos=false",
            "no_eos_penalty=null", "kl.controller=fixed", f"kl.init_coef={a.kl_coef}", "kl.estimator=k1",
            "gamma=1.0", "lam=0.95", "clip_range=0.2", "clip_range_value=0.2", f"optim.lr={a.lr}",
            f"value_optim.lr={a.lr}", "lora.r=0", f"freeze_layers={a.freeze_layers}", f"bf16={str(a.bf16).lower()}",
            f"frozen_bf16={'true' if a.frozen_bf16 else 'false'}", "device=cpu", "log_every=1",
            f"save_every={a.updates + 1}", f"sample_every={a.updates + 1}",  # no checkpoint or samples mid-run
            f"compile={'true' if a.compile else 'false'}"]


def run_child(cmd: list[str], log: Path, cwd: Path) -> int:
    """Run cmd to completion; return its peak RSS in MiB (os.wait4: this child's own rusage)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        sys.exit(f"{shlex.join(cmd)} failed ({proc.returncode}); last lines of {log}:\n{tail}")
    return usage.ru_maxrss / 1024


def run_rlhflab(args_ppo: list[str], work: Path) -> dict:
    out = work / f"rlhflab-{time.time_ns()}"
    cmd = [sys.executable, "-m", "rlhflab", "--log-level", "WARNING", "ppo", "--out", str(out), *args_ppo]
    rss = run_child(cmd, work / "rlhflab.log", REPO)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/update_s" in r]
    updates, seen = [], 0
    for r in rows:
        updates.append({"step": r["step"], "seconds": r["time/update_s"], "episodes": r["episodes"] - seen,
                        "generation_s": r.get("time/generation_s"), "scoring_s": r.get("time/scoring_s"),
                        "training_s": r.get("time/training_s"), "response_length": r.get("response/length"),
                        "eos_rate": r.get("response/eos_rate")})
        seen = r["episodes"]
    shutil.rmtree(out, ignore_errors=True)  # a saved 135M policy per run; nothing else needs it
    return summarise(updates, rss)


def run_trl(trainer: str, spec: dict, work: Path) -> dict:
    spec = {**spec, "trainer": trainer, "work_dir": str(work / f"trl-{trainer}-out")}
    spec_path, out = work / f"{trainer}-spec.json", work / f"{trainer}-{time.time_ns()}.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    python = PPO_PY if trainer == "ppo" else RLOO_PY
    rss = run_child([str(python), str(WORKER), str(spec_path), str(out)], work / f"trl-{trainer}.log", work)
    result = json.loads(out.read_text())
    shutil.rmtree(spec["work_dir"], ignore_errors=True)
    summary = summarise(result.pop("updates"), rss)
    summary["worker"] = {k: v for k, v in result.items() if k not in ("episodes_per_s",)}
    return summary


def summarise(updates: list[dict], peak_rss_mib: float) -> dict:
    timed = updates[1:]  # the first update is warm-up
    if not timed:
        sys.exit("need at least 2 updates (the first one is warm-up)")
    eps = sum(u["episodes"] for u in timed) / sum(u["seconds"] for u in timed)
    for u in updates:
        if u.get("other_s") is None and None not in (u["generation_s"], u["scoring_s"], u["training_s"]):
            u["other_s"] = u["seconds"] - u["generation_s"] - u["scoring_s"] - u["training_s"]
    split = {k: median([u.get(k) for u in timed]) for k in SPLIT}
    return {"episodes_per_s": eps, "peak_rss_mib": peak_rss_mib, "median_update_split_s": split,
            "updates": updates}


def compile_seconds(runs: list[dict]) -> float | None:
    """torch.compile's one-off cost, estimated as the warm-up update's training phase minus the median of the
    timed updates' (the first update also warms the allocator: an upper bound on the compile time)."""
    est = [r["updates"][0]["training_s"] - r["median_update_split_s"]["training_s"] for r in runs]
    return median(est)


def median(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def resolve_dirs(model: str, reward: str, work: Path) -> tuple[Path, Path]:
    """HF directories for TRL: the policy (a run's model/, a model directory, or a saved copy of anything else
    rlhflab can load) and the reward model's backbone (`<rm run>/model`)."""
    from rlhflab.core.rundir import is_run_dir
    from rlhflab.models.loading import load_model, save_model

    def hf_dir(spec: str) -> Path | None:
        path = Path(spec)
        if path.is_dir() and is_run_dir(path) and (path / "model" / "config.json").exists():
            return path / "model"
        if path.is_dir() and (path / "config.json").exists():
            return path
        return None

    policy_dir = hf_dir(model)
    if policy_dir is None:  # "tiny", the embedded model, a GGUF: save it once as a plain HF directory
        lm, tok = load_model(model)
        policy_dir = save_model(lm, tok, work / "policy")
    reward_dir = hf_dir(reward)
    if reward_dir is None:
        sys.exit(f"--reward {reward}: expected a finished `rlhflab rm` run directory (with model/)")
    return policy_dir.resolve(), reward_dir.resolve()


def prepare_queries(policy_dir: Path, a: argparse.Namespace, work: Path) -> tuple[Path, dict]:
    """The first N posts as rlhflab formats them, tokenised with the policy's tokenizer (no special tokens)."""
    from transformers import AutoTokenizer

    from rlhflab.data.format import format_query
    from rlhflab.data.loaders import load_posts

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    n = a.updates * a.rollout
    rows, dropped = [], 0
    for post in load_posts(DATA, limit=n):
        try:
            text = format_query(post, tokenizer, a.max_query_tokens)
        except ValueError:  # not even the header fits the budget: no query
            dropped += 1
            continue
        rows.append({"id": post.id, "query": text, "input_ids": tokenizer.encode(text, add_special_tokens=False)})
    if len(rows) < n:
        sys.exit(f"only {len(rows)} of the first {n} posts fit in {a.max_query_tokens} tokens; raise "
                 "--max-query-tokens (rlhflab would get fewer queries than TRL)")
    path = work / "queries.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lengths = [len(r["input_ids"]) for r in rows]
    return path, {"queries": len(rows), "dropped_posts": dropped, "query_tokens_mean": statistics.mean(lengths),
                  "query_tokens_max": max(lengths), "query_tokens_min": min(lengths)}


def phase_flops(policy_dir: Path, queries_path: Path, a: argparse.Namespace) -> dict[str, float]:
    """Useful FLOPs of one update of rlhflab's PPO, per phase, averaged over the benchmark's updates."""
    from transformers import AutoConfig

    lengths = [len(json.loads(line)["input_ids"]) for line in queries_path.read_text().splitlines()]
    total = ppo_update_flops(AutoConfig.from_pretrained(policy_dir), lengths, a.response_length, a.ppo_epochs,
                             a.freeze_layers)
    return {phase: f / a.updates for phase, f in total.items()}


def fraction_of_peak(flops: dict[str, float], split_s: dict | None, peak_gflops: float) -> dict[str, float] | None:
    if not split_s:
        return None
    return {phase: flops[phase] / split_s[f"{phase}_s"] / (peak_gflops * 1e9) for phase in flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/sft/cpu", help="policy + reference init (rlhflab model spec)")
    parser.add_argument("--reward", default="runs/rm/cpu-sft-q256", help="an `rlhflab rm` run directory")
    parser.add_argument("--updates", type=int, default=3, help="PPO updates per run (the first is warm-up)")
    parser.add_argument("--rollout", type=int, default=8, help="episodes per update (rollout_batch_size)")
    parser.add_argument("--mini", type=int, default=8, help="episodes per optimiser step (mini_batch_size)")
    parser.add_argument("--micro", type=int, default=4, help="episodes per forward/backward (micro_batch_size)")
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--max-query-tokens", "--query-budget", type=int, default=256, dest="max_query_tokens")
    parser.add_argument("--response-length", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=3e-6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bf16", choices=["auto", "true", "false"], default="auto",
                        help="bf16 autocast in all three trainers (auto: where this CPU computes bf16 natively, "
                             "fp32 elsewhere: emulated bf16 is several times slower than fp32 and compares nothing)")
    parser.add_argument("--frozen-bf16", action="store_true",
                        help="reference and reward weights stored in bf16 (rlhflab frozen_bf16; TRL: loaded in bf16)")
    parser.add_argument("--freeze-layers", type=int, default=0,
                        help="freeze the embeddings and the lowest N layers of policy and value model (all three "
                             "trainers; rlhflab then runs those layers once per rollout)")
    parser.add_argument("--rollout-forward-batch", type=int, default=None,
                        help="TRL PPO local_rollout_forward_batch_size (default: TRL's 64, at most --rollout)")
    parser.add_argument("--compile", action="store_true",
                        help="rlhflab compile=true (each decoder layer torch.compile'd for the PPO epochs)")
    parser.add_argument("--rloo-k", type=int, default=2, help="RLOO completions per prompt (num_generations)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", default=",".join(TRAINERS[:3]), help=f"comma-separated subset of {','.join(TRAINERS)}")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ppo_vs_trl.json"))
    a = parser.parse_args()
    only = [t.strip() for t in a.only.split(",") if t.strip()]
    if unknown := set(only) - set(TRAINERS):
        sys.exit(f"--only: unknown {sorted(unknown)}; choose from {TRAINERS}")
    for trainer, python in (("trl_ppo", PPO_PY), ("trl_rloo", RLOO_PY)):
        if trainer in only and not python.exists():
            venv = python.parents[1].name
            sys.exit(f"{venv} is missing: BENCH_VENV={venv} TRL_VERSION={'1.12.0' if trainer == 'trl_ppo' else '1.16.0'}"
                     " bash benchmarks/setup_bench_venv.sh")
    if a.rollout % a.mini or a.mini % a.micro:
        sys.exit("--rollout must be a multiple of --mini, and --mini of --micro")
    if "trl_rloo" in only and a.rollout % a.rloo_k:
        sys.exit("--rollout must be a multiple of --rloo-k")
    if a.updates < 2:
        sys.exit("--updates must be >= 2 (the first update is warm-up)")
    if "rlhflab" in only:
        probe = subprocess.run([sys.executable, "-m", "rlhflab", "ppo", "--show-config"], cwd=REPO,
                               capture_output=True, text=True)
        if probe.returncode:
            sys.exit(f"`rlhflab ppo` is not available yet:\n{probe.stderr[-2000:]}")

    import torch

    a.bf16 = cpu_bf16(a.bf16)  # one choice
    peak_dtype = torch.bfloat16 if a.bf16 else torch.float32  # for all three, and the peak in that precision
    os.chdir(REPO)  # relative model / reward paths are relative to the repository, as for `rlhflab`
    work = Path(tempfile.mkdtemp(prefix="ppo-bench-"))
    policy_dir, reward_dir = resolve_dirs(a.model, a.reward, work)
    queries_path, query_stats = prepare_queries(policy_dir, a, work)
    args_ppo = overrides(a, a.updates * a.rollout)
    spec = {"policy_dir": str(policy_dir), "reward_dir": str(reward_dir), "queries": str(queries_path),
            "updates": a.updates, "rollout_batch_size": a.rollout, "mini_batch_size": a.mini,
            "micro_batch_size": a.micro, "ppo_epochs": a.ppo_epochs, "response_length": a.response_length,
            "temperature": a.temperature, "lr": a.lr, "kl_coef": a.kl_coef, "seed": a.seed, "bf16": a.bf16,
            "frozen_bf16": a.frozen_bf16, "rloo_k": a.rloo_k, "freeze_layers": a.freeze_layers,
            "rollout_forward_batch_size": a.rollout_forward_batch or min(64, a.rollout)}

    runs: dict[str, list[dict]] = {t: [] for t in only}
    for r in range(a.rounds):
        for trainer in only:
            if trainer == "rlhflab":
                res = run_rlhflab(args_ppo, work)
            elif trainer == "rlhflab_no_reuse":
                res = run_rlhflab([*args_ppo, "reuse_frozen=false"], work)
            elif trainer == "rlhflab_no_compile":
                res = run_rlhflab([*args_ppo, "compile=false"], work)
            else:
                res = run_trl(trainer.removeprefix("trl_"), spec, work)
            runs[trainer].append(res)
            print(f"round {r + 1}/{a.rounds}  {trainer:9s} {res['episodes_per_s']:.4f} episodes/s  "
                  f"peak RSS {res['peak_rss_mib']:.0f} MiB  split {res['median_update_split_s']}", flush=True)

    import transformers

    def trl_version(python: Path) -> str:
        return subprocess.run([str(python), "-c", "import trl; print(trl.__version__)"], capture_output=True,
                              text=True).stdout.strip()

    med = {t: {"episodes_per_s": statistics.median(x["episodes_per_s"] for x in runs[t]),
               "peak_rss_mib": statistics.median(x["peak_rss_mib"] for x in runs[t]),
               "update_split_s": {k: median([x["median_update_split_s"][k] for x in runs[t]]) for k in SPLIT}}
           for t in only}

    def ratio(key: str, theirs: str) -> float | None:
        if "rlhflab" not in med or theirs not in med:
            return None
        return med["rlhflab"][key] / med[theirs][key]

    peak = matmul_peak_gflops(peak_dtype)
    flops = phase_flops(policy_dir, queries_path, a)
    ppo_cmd = f"{PPO_PY.relative_to(REPO)} {WORKER.relative_to(REPO)} SPEC.json OUT.json"
    result = {
        "command": "python benchmarks/ppo_vs_trl.py " + shlex.join(sys.argv[1:]),
        "what": "PPO episodes/s (updates after the first) and whole-process peak RSS: rlhflab ppo vs TRL 1.12 "
                "PPOTrainer vs current TRL RLOOTrainer, same SFT policy/reference, same RM backbone, same "
                "pre-tokenised TL;DR queries, same rollout/minibatch/micro batch/epochs, fixed-length responses, "
                + ("bf16 autocast" if a.bf16 else "fp32") + ", CPU; "
                + (f"embeddings and lowest {a.freeze_layers} layers frozen in all three" if a.freeze_layers
                   else "full fine-tuning"),
        "episodes_per_s_ratio_vs_trl_ppo": ratio("episodes_per_s", "trl_ppo"),
        "peak_memory_ratio_vs_trl_ppo": ratio("peak_rss_mib", "trl_ppo"),
        "episodes_per_s_ratio_vs_trl_rloo": ratio("episodes_per_s", "trl_rloo"),
        "peak_memory_ratio_vs_trl_rloo": ratio("peak_rss_mib", "trl_rloo"),
        "episodes_per_s_ratio_vs_rlhflab_no_reuse": ratio("episodes_per_s", "rlhflab_no_reuse"),
        "episodes_per_s_ratio_vs_rlhflab_no_compile": ratio("episodes_per_s", "rlhflab_no_compile"),
        "compile_s_estimate": compile_seconds(runs.get("rlhflab", [])) if a.compile else None,
        "medians": med,
        "rlhflab_time_split_s": med.get("rlhflab", {}).get("update_split_s"),
        "flops_per_update": flops,
        "matmul_peak_gflops": peak, "matmul_peak_dtype": str(peak_dtype).removeprefix("torch."),
        "phase_fraction_of_peak": fraction_of_peak(flops, med.get("rlhflab", {}).get("update_split_s"), peak),
        "flops_note": "useful FLOPs of rlhflab's update (benchmarks/_flops.py: ppo_update_flops): real tokens only, "
                      "the LM head only where its logits are used, attention 4·layers·d·L² per forward; "
                      "fraction = FLOPs / median phase seconds / the square-matmul peak measured in this run, in the "
                      "precision the trainers ran in (matmul_peak_dtype)",
        "runs": runs,
        "commands": {
            "rlhflab": f"{sys.executable} -m rlhflab --log-level WARNING ppo --out RUN " + shlex.join(args_ppo),
            "trl_ppo": f"{ppo_cmd}  # SPEC = settings below with trainer=ppo",
            "trl_rloo": f"{RLOO_PY.relative_to(REPO)} {WORKER.relative_to(REPO)} SPEC.json OUT.json  "
                        "# SPEC = settings below with trainer=rloo",
        },
        "settings": {
            "model": a.model, "reward": a.reward, "policy_dir_for_trl": str(policy_dir),
            "reward_and_value_backbone_for_trl": str(reward_dir), "updates_per_run": a.updates,
            "timed_updates_per_run": a.updates - 1, "rollout_batch_size": a.rollout, "mini_batch_size": a.mini,
            "micro_batch_size": a.micro, "ppo_epochs": a.ppo_epochs, "response_length": a.response_length,
            "max_query_tokens": a.max_query_tokens, "temperature": a.temperature, "kl_coef": a.kl_coef,
            "lr": a.lr, "bf16": a.bf16, "frozen_bf16": a.frozen_bf16, "rloo_k": a.rloo_k, "freeze_layers": a.freeze_layers,
            "data": str(DATA.relative_to(REPO.parent)), **query_stats, "worker_spec": spec,
        },
        "notes": [
            "TRL PPO 1.12: accelerator gradient accumulation set to mini/micro after construction (TRL's own "
            "Accelerator would accumulate over the whole rollout when num_mini_batches > 1); generation eos cleared "
            "so every response is response_length tokens (TRL still truncates after the first EOS for the reward "
            "and the masks); with bf16, ACCELERATE_MIXED_PRECISION=bf16 because PPOConfig.bf16 does not reach its Accelerator "
            "(autocast covers only the policy+value training forward; rollout generation, reference, value and "
            "reward forwards run in the weights' dtype); '[PAD]' pad token added (SmolLM2 pad == EOS).",
            "TRL PPO computes full-vocabulary logits for every query+response position in the reference forward "
            "and keeps the generation scores of every step (batch × response_length × vocab).",
            "TRL PPO has one AdamW over policy+value and no gradient clipping; rlhflab has two optimisers.",
            "RLOO: rollout/k prompts × k completions per update, no value model, fixed length via "
            "min_new_tokens (EOS suppressed), the reward model re-tokenises decoded text; it does strictly less "
            "work per episode than PPO, so it bounds what a critic-free method costs.",
        ],
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "gpu": None,
                    "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl_ppo": trl_version(PPO_PY) if "trl_ppo" in only else None,
                     "trl_rloo": trl_version(RLOO_PY) if "trl_rloo" in only else None},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: result[k] for k in result if k.endswith(("_vs_trl_ppo", "_vs_trl_rloo"))}
                     | {"medians": med}, indent=2))


if __name__ == "__main__":
    main()
