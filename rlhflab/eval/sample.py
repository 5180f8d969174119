"""`rlhflab sample`: summaries of a post set by one model or run directory, written as a samples JSONL.

The samples file is what labelling and evaluation read: one `Sample` a line (post id, policy name, text, token
count, whether the model ended with EOS). Work is appended batch by batch, so an interrupted run resumes where
it stopped and never writes a summary twice.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhflab.core.config import setting
from rlhflab.core.log import get_logger
from rlhflab.core.progress import progress
from rlhflab.core.rundir import RunDir, is_run_dir
from rlhflab.core.seed import seed_everything
from rlhflab.data.format import encode_query, format_queries, format_query
from rlhflab.data.loaders import load_posts
from rlhflab.data.preflight import check_files, posts_check
from rlhflab.data.records import Post, Sample
from rlhflab.data.resumable import ResumableRows, pending_batches
from rlhflab.models.device import Bf16, autocast, resolve_device
from rlhflab.models.generation import StopRule, generate, pad_queries, stop_rule
from rlhflab.models.loading import load_model

log = get_logger(__name__)


@dataclass
class SampleConfig:
    model: str = setting("smollm2-135m", "embedded name, .gguf file, model directory, run directory or hub id")
    policy_name: str | None = setting(None, "the name written into each sample; default: derived from `model`")
    posts: str = setting("../shared/data/tldr/eval.jsonl.gz", "TL;DR, CNN/DM or posts JSONL; local path or hub name")
    format: str = setting("auto", "format of the posts file: auto | tldr | cnndm | posts")
    limit: int | None = setting(None, "sample only N posts after `offset` (None: all)")
    offset: int = setting(0, "skip the first `offset` posts (a pipeline's later rounds sample new posts)")
    shuffle_seed: int | None = setting(
        None, "shuffle the posts with this seed before offset/limit (e.g. so every round meets every book)")
    n: int = setting(1, "summaries per post")
    temperature: float = setting(0.0, "0 = greedy (the paper's evaluation setting)")
    top_p: float = setting(1.0, "nucleus sampling: keep the smallest set of tokens with this probability (1: off)")
    max_query_tokens: int = setting(512, "token budget of a query (the post is cut at a newline to fit)")
    max_new_tokens: int = setting(48, "length limit of a summary, in tokens")
    stop_token: str | None = setting(None, "also end at this token (kept), e.g. \".\" for book continuations")
    stop_after: int = setting(0, "the stop token ends a response only at 0-based token position >= this")
    write_query: bool = setting(False, "keep each sample's formatted query in extra.query (best-of-N tasks need it)")
    batch_size: int = setting(8, "summaries per generation batch (a post's summaries in it share one prefill)")
    seed: int = setting(1, "random seed of sampling (each batch's seed comes from it and the batch's place)")
    bf16: Bf16 = setting(False, "bf16 autocast (weights stay fp32); auto: bf16 only where native")
    device: str = setting("auto", "auto (the first CUDA GPU if any, else the CPU) or a torch device: cpu, cuda:1")
    allow_partial: bool = setting(False, "sample from an unfinished run's last checkpoint")


def chosen_posts(cfg: SampleConfig) -> list[Post]:
    """The posts after `offset`, `limit` of them — of the file's order, or of a seeded shuffle of all of it."""
    if cfg.shuffle_seed is None:
        limit = None if cfg.limit is None else cfg.offset + cfg.limit
        return list(load_posts(cfg.posts, format=cfg.format, limit=limit))[cfg.offset :]
    posts = list(load_posts(cfg.posts, format=cfg.format))
    random.Random(cfg.shuffle_seed).shuffle(posts)
    return posts[cfg.offset :] if cfg.limit is None else posts[cfg.offset : cfg.offset + cfg.limit]


def policy_name(cfg: SampleConfig) -> str:
    if cfg.policy_name:
        return cfg.policy_name
    path = Path(cfg.model)
    if is_run_dir(path):
        return f"{path.parent.name}/{path.name}"  # e.g. sft/cpu
    return path.name if path.exists() else cfg.model


def sample(cfg: SampleConfig, out: str) -> dict:
    run = RunDir(out)
    check_files([posts_check("posts", cfg.posts, cfg.format)])  # step 0: before the model loads
    if (done := run.open("sample", cfg)) is not None:
        return done
    seed_everything(cfg.seed)
    t_start = time.time()
    written = ResumableRows(run.path / "samples.jsonl", key=lambda r: (r["post_id"], r["index"]), ascii_only=True)

    model, tokenizer = load_model(cfg.model, allow_partial=cfg.allow_partial)
    model.to(resolve_device(cfg.device)).eval()
    posts, _, dropped = format_queries(chosen_posts(cfg), tokenizer, cfg.max_query_tokens)
    if dropped:
        log.warning("sample: %d posts do not fit max_query_tokens=%d even cut, left out", dropped,
                    cfg.max_query_tokens)
    stop = stop_rule(tokenizer, cfg.stop_token, cfg.stop_after)
    name = policy_name(cfg)
    work = [(p, i) for p in posts for i in range(cfg.n)]  # the full, fixed order the batches are cut from
    log.info("sample: %d posts × %d = %d summaries by %s (%d already written)",
             len(posts), cfg.n, len(work), name, len(written))

    bar = progress(len(work), "sample", "summary", len(written))
    for batch in pending_batches(work, cfg.batch_size, lambda item: (item[0].id, item[1]) in written):
        # A partly written batch is sampled again whole, with the seed of its place in `work`: the same rows as
        # an uninterrupted run; only the missing ones are written.
        generator = torch.Generator().manual_seed(batch.seed(cfg.seed))
        fresh = written.add(r.to_dict() for r in sample_batch(model, tokenizer, batch.items, name, cfg, generator,
                                                                stop))
        bar.update(len(fresh))
    bar.close()

    rows = list(written.rows.values())
    summary = {"stage": "sample", "policy": name, "n_samples": len(rows), "wall_s": time.time() - t_start,
               "mean_tokens": sum(r["n_tokens"] for r in rows) / max(len(rows), 1),
               "eos_rate": sum(r["eos"] for r in rows) / max(len(rows), 1),
               "samples": str(written.path)}
    run.write_done(summary)
    return summary


@torch.no_grad()
def sample_batch(model, tokenizer, chunk: list[tuple[Post, int]], name: str, cfg: SampleConfig,
                 generator: torch.Generator, stop: StopRule | None = None) -> list[Sample]:
    # a post's summaries sit next to each other in `chunk`: its query is formatted and prefilled once for all of
    # them, and the rows come out in `chunk`'s order, so the samples are those of prefilling every row on its own
    groups = [[post for post, _ in items] for _, items in itertools.groupby(chunk, key=lambda item: item[0].id)]
    texts = {g[0].id: format_query(g[0], tokenizer, cfg.max_query_tokens) for g in groups}
    counts = [len(g) for g in groups]
    query_ids, query_mask = pad_queries(tokenizer, [encode_query(tokenizer, texts[g[0].id]) for g in groups])
    with autocast(model.device, cfg.bf16):
        gen = generate(model, tokenizer, query_ids, query_mask, max_new_tokens=cfg.max_new_tokens,
                       temperature=cfg.temperature, top_p=cfg.top_p, generator=generator, n_per_query=counts,
                       stop=stop)
    rows = []
    for b, (post, index) in enumerate(chunk):
        n_tokens = int(gen.response_mask[b].sum())
        ids = gen.response[b, :n_tokens].tolist()
        eos = bool(gen.eos[b])
        text = tokenizer.decode(ids[:-1] if eos else ids, skip_special_tokens=False)
        extra = {"temperature": cfg.temperature, **({"query": texts[post.id]} if cfg.write_query else {})}
        if stop is not None:
            extra["stopped"] = bool(gen.ended[b]) and not eos
        rows.append(Sample(post_id=post.id, policy=name, text=text, n_tokens=n_tokens - int(eos), index=index,
                           eos=eos, extra=extra))
    return rows
