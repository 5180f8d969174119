"""What sharing a post's prefill among its n summaries saves `rlhflab sample`.

`rlhflab sample` cuts its post-major work ((post, 0), (post, 1), … (post, n-1), (next post, 0), …) into batches of
`batch_size` summaries. It used to prefill every row's query on its own, so a post with n summaries in a batch was
prefilled n times; now a batch prefills each of its posts once and repeats the KV cache for that post's rows
(`generate(n_per_query=counts)`). The decode steps are the same, row for row and draw for draw. This times one
batch both ways, alternated over --rounds rounds (median reported), with the embedded SmolLM2-135M, on the two
workloads rlhflab samples most:

    books     Ziegler et al.'s label collection: 64-token book passages, n=12, 24 new tokens at T=0.7 cut after the
              first "." at or after token 16, batches of 64 continuations (books.yaml's batch before this change)
    books192  the same in batches of 192 (16 passages: configs/sample/books.yaml now)
    tldr      a pipeline round's pairs: TL;DR queries of up to 512 tokens, n=2, 48 new tokens at T=0.7, batches of 8

and checks that both ways sample the same tokens.

    python benchmarks/sample_prefill.py [--rounds 3] [--note "what else ran"]   # -> results/sample_prefill.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from _machine import cpu_model  # noqa: E402

from rlhflab.data.format import encode_query, format_queries  # noqa: E402
from rlhflab.data.loaders import load_posts  # noqa: E402
from rlhflab.models.device import autocast  # noqa: E402
from rlhflab.models.generation import generate, pad_queries, stop_rule  # noqa: E402
from rlhflab.models.loading import load_model  # noqa: E402

DATA = REPO.parent / "shared" / "data"
BOOKS = {"posts": DATA / "books" / "passages.jsonl.gz", "format": "books-train", "n": 12, "batch": 64,
         "max_query_tokens": 64, "max_new_tokens": 24, "stop": (".", 16)}
WORKLOADS = {  # posts file and format, n, batch (summaries), query budget, new tokens, stop rule
    "books": BOOKS,
    "books192": {**BOOKS, "batch": 192},
    "tldr": {"posts": DATA / "tldr" / "train.jsonl.gz", "format": "tldr", "n": 2, "batch": 8,
             "max_query_tokens": 512, "max_new_tokens": 48, "stop": None},
}


def first_batch(w: dict, tokenizer) -> tuple[list[list[int]], list[int]]:
    """The first batch of `sample`'s post-major work: the distinct queries in it and each one's row count."""
    posts = list(load_posts(w["posts"], format=w["format"], limit=w["batch"]))
    posts, texts, _ = format_queries(posts, tokenizer, w["max_query_tokens"])
    work = [b for b in range(len(posts)) for _ in range(w["n"])][: w["batch"]]  # post indices, post-major
    kept = list(dict.fromkeys(work))
    return [encode_query(tokenizer, texts[b]) for b in kept], [work.count(b) for b in kept]


def time_batch(model, tokenizer, queries: list[list[int]], counts: list[int], w: dict, shared: bool):
    """(seconds, response tokens) of one batch: each query prefilled once (shared) or once per row."""
    stop = stop_rule(tokenizer, *w["stop"]) if w["stop"] else None
    if shared:
        ids, mask = pad_queries(tokenizer, queries)
        per_query = counts
    else:
        ids, mask = pad_queries(tokenizer, [q for q, c in zip(queries, counts, strict=True) for _ in range(c)])
        per_query = 1
    t0 = time.perf_counter()
    with autocast(torch.device("cpu"), "auto"):
        gen = generate(model, tokenizer, ids, mask, max_new_tokens=w["max_new_tokens"], temperature=0.7,
                       generator=torch.Generator().manual_seed(0), n_per_query=per_query, stop=stop)
    return time.perf_counter() - t0, gen.response


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "sample_prefill.json"))
    a = ap.parse_args()
    model, tokenizer = load_model("smollm2-135m")
    model.eval()
    result = {"command": "python benchmarks/sample_prefill.py " + " ".join(sys.argv[1:]),
              "what": __doc__.split("\n\n")[0], "workloads": {}}
    for name, w in WORKLOADS.items():
        queries, counts = first_batch(w, tokenizer)
        seconds = {"per_row": [], "shared": []}
        responses = {}
        time_batch(model, tokenizer, queries, counts, w, shared=True)  # warm-up
        for _ in range(a.rounds):
            for way in ("per_row", "shared"):
                s, responses[way] = time_batch(model, tokenizer, queries, counts, w, shared=way == "shared")
                seconds[way].append(s)
        med = {way: statistics.median(v) for way, v in seconds.items()}
        rows = sum(counts)
        result["workloads"][name] = {
            "rows": rows, "distinct_queries": len(queries), "query_tokens_mean": sum(map(len, queries)) / len(queries),
            "max_new_tokens": w["max_new_tokens"], "seconds_per_row": med["per_row"], "seconds_shared": med["shared"],
            "speedup": med["per_row"] / med["shared"], "summaries_per_s_per_row": rows / med["per_row"],
            "summaries_per_s_shared": rows / med["shared"], "seconds_runs": seconds,
            "same_tokens": bool(torch.equal(responses["per_row"], responses["shared"])),
        }
        print(name, json.dumps({k: v for k, v in result["workloads"][name].items() if k != "seconds_runs"}), flush=True)
    result |= {"machine": {"cpu": cpu_model(), "cores": torch.get_num_threads(), "python": platform.python_version(),
                           "torch": torch.__version__}, "bf16": "auto", "note": a.note}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
