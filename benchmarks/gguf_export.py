"""GGUF export of the real SmolLM2 SFT policy (issue 14, item 4): size, time, logits and llama.cpp's greedy text.

1. A short SFT of the embedded SmolLM2-135M (configs/sft/smoke.yaml, `--sft-steps` steps; skipped when `--out`'s
   sft run is already DONE) — the policy to export.
2. `rlhflab export-gguf` in f32, f16 and q8_0: bytes and seconds.
3. transformers loads each file back (`gguf_file=`): the largest logit difference from the SFT model on real
   TL;DR queries (every position of `--queries` eval posts).
4. llama.cpp (llama-cpp-python, when it is installed): its greedy continuation of each query, `--new-tokens`
   tokens, against rlhflab's greedy continuation from the SFT model. `llama_cpp_greedy_match` is the share of
   queries whose continuations are identical (null when llama-cpp-python is not installed).

    python benchmarks/gguf_export.py                      # writes benchmarks/results/gguf_export.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402

from rlhflab.data.format import encode_query, format_query  # noqa: E402
from rlhflab.data.loaders import load_posts  # noqa: E402
from rlhflab.models.gguf_export import export_gguf  # noqa: E402
from rlhflab.models.loading import load_model  # noqa: E402


def sft(out: Path, steps: int) -> list[str]:
    cmd = [sys.executable, "-m", "rlhflab", "sft", "--config", "configs/sft/smoke.yaml", "--out", str(out),
           f"max_steps={steps}", "eval_every=0", "n_samples=0"]
    if not (out / "DONE.json").exists():
        subprocess.run(cmd, cwd=REPO, check=True)
    return [" ".join(cmd[2:])]


def queries(tokenizer, n: int) -> list[list[int]]:
    posts = list(load_posts(REPO.parent / "shared/data/tldr/eval.jsonl.gz", limit=n))
    return [encode_query(tokenizer, format_query(p, tokenizer, 192)) for p in posts]


@torch.no_grad()
def logit_diff(model, back, prompts: list[list[int]]) -> float:
    worst = 0.0
    for ids in prompts:
        x = torch.tensor([ids])
        worst = max(worst, float((model(input_ids=x).logits - back(input_ids=x).logits).abs().max()))
    return worst


@torch.no_grad()
def greedy(model, ids: list[int], new_tokens: int) -> list[int]:
    x = torch.tensor([ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def llama_cpp_greedy(path: Path, prompts: list[list[int]], new_tokens: int) -> list[list[int]] | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, verbose=False)
    outs = []
    for ids in prompts:
        got = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            got.append(token)
            if len(got) == new_tokens:
                break
        outs.append(got)
    return outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/gguf_export")
    ap.add_argument("--sft-steps", type=int, default=8)
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--result", default="benchmarks/results/gguf_export.json")
    args = ap.parse_args()
    out = REPO / args.out
    start = time.time()
    commands = sft(out / "sft", args.sft_steps)
    from transformers import AutoModelForCausalLM

    model, tok = load_model(str(out / "sft"))
    prompts = queries(tok, args.queries)
    ours = [greedy(model, ids, args.new_tokens) for ids in prompts]
    exports = {}
    for dtype in ("f32", "f16", "q8_0"):
        path = out / f"policy-{dtype}.gguf"
        result = export_gguf(str(out / "sft"), path, dtype)
        commands.append(f"rlhflab export-gguf {args.out}/sft --out {args.out}/policy-{dtype}.gguf --dtype {dtype}")
        back = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        theirs = llama_cpp_greedy(path, prompts, args.new_tokens)
        exports[dtype] = {
            "dtype": dtype, "bytes": result["bytes"], "seconds": result["seconds"],
            "max_abs_logit_diff": logit_diff(model, back, prompts),
            "transformers_greedy_match": sum(greedy(back, ids, args.new_tokens) == o
                                             for ids, o in zip(prompts, ours)) / len(prompts),
            "llama_cpp_greedy_match": None if theirs is None else sum(t == o for t, o in zip(theirs, ours)) / len(ours),
        }
        print(json.dumps(exports[dtype]), flush=True)
    doc = {
        "what": "rlhflab export-gguf of a SmolLM2-135M SFT policy; logits against the SFT model on real TL;DR "
                "queries (every position), greedy continuations against rlhflab's",
        "policy": f"{args.out}/sft: configs/sft/smoke.yaml for {args.sft_steps} steps (a short SFT of the "
                  "embedded SmolLM2-135M-Instruct)",
        "n_queries": len(prompts), "new_tokens": args.new_tokens,
        **exports["f16"],  # the default dtype's numbers at the top level
        "exports": exports,
        "llama_cpp": _llama_cpp_version(),
        "commands": commands,
        "wall_s": round(time.time() - start, 1),
        "machine": {"cpu": cpu_model(), "threads": torch.get_num_threads()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": "not a timing benchmark; seconds are the export's own wall time",
    }
    Path(REPO / args.result).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("max_abs_logit_diff", "llama_cpp_greedy_match", "bytes")}))


def _llama_cpp_version() -> str | None:
    try:
        import llama_cpp

        return f"llama-cpp-python {llama_cpp.__version__} (built from source on this machine)"
    except ImportError:
        return None


if __name__ == "__main__":
    main()
