"""`rlhflab best-of-n`: the paper's cheap baseline — sample N summaries per post, keep the one the RM likes best.

For each batch of posts the policy samples N summaries per post (each query is prefilled once and its KV cache
shared by its N rows), the reward model scores all of them (again each query once), and one `Sample` per post is
appended to `<out>/samples.jsonl`: the text of the best summary, `score` = its score, and in `extra` all N scores,
their mean and the index of the best. `write_all=true` also appends every candidate to `candidates.jsonl`, from
which best-of-k for any k < N can be recomputed (win rate vs N curves) without sampling again.

Resumable like `rlhflab sample`: a torn last line is dropped, posts already written are skipped, and nothing is
written twice. Batches are fixed slices of the post list and each batch's sampling generator is seeded from
(seed, index of its first post); a batch that was only partly written is sampled again whole and only its missing
posts are written, so a resumed run writes exactly the file an uninterrupted run writes. With n=1 and the same
batch size the summaries are those of `rlhflab sample` at the same seed and temperature.

`no_eos_penalty`: a summary that never ended (cut at max_new_tokens) is ranked with this score instead of its RM
score, so a truncated text cannot win (the paper's PPO gives such responses a fixed −1). None: rank by RM score.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhflab.core.config import setting
from rlhflab.core.log import get_logger
from rlhflab.core.progress import progress
from rlhflab.core.rundir import RunDir, RunError, atomic_write_text, is_run_dir
from rlhflab.core.seed import seed_everything
from rlhflab.data.format import encode_query, format_queries, format_query
from rlhflab.data.loaders import is_hub_id, load_posts
from rlhflab.data.preflight import check_files, posts_check
from rlhflab.data.records import Post, Sample
from rlhflab.data.resumable import ResumableRows, append_rows, dumps_rows, pending_batches, read_rows
from rlhflab.models.device import Bf16, autocast, resolve_device
from rlhflab.models.generation import decode_responses, generate, pad_queries
from rlhflab.models.loading import load_model
from rlhflab.models.ensemble import RewardEnsemble, reward_members
from rlhflab.models.reward import RewardModel, load_reward_model
from rlhflab.models.text_reward import (
    TextReward,
    call_text_reward,
    check_references,
    is_text_reward,
    load_text_reward,
    needs_reference,
)

log = get_logger(__name__)

@dataclass
class BestOfNConfig:
    model: str = setting("smollm2-135m", "the policy: run directory, embedded name, model directory, hub id or tiny")
    reward: str = setting("runs/rm/cpu", "an `rlhflab rm` run directory (or a saved reward-model directory); or a "
                                         "text reward: rouge, style:NAME, python:module:function")
    policy_name: str | None = setting(None, "the name written into each sample; default: \"bo{n}-\" + the model's name")
    posts: str = setting("../shared/data/tldr/eval.jsonl.gz", "TL;DR, CNN/DM or posts JSONL; local path or hub name")
    format: str = setting("auto", "format of the posts file: auto | tldr | cnndm | posts")
    limit: int | None = setting(None, "use only the first N posts (None: all)")
    n: int = setting(16, "summaries sampled per post; the best one is kept")
    temperature: float = setting(0.7, "sampling temperature of the N candidates")
    top_p: float = setting(1.0, "nucleus sampling: keep the smallest set of tokens with this probability (1: off)")
    max_query_tokens: int = setting(512, "token budget of a query (the post is cut at a newline to fit)")
    max_new_tokens: int = setting(48, "length limit of a candidate, in tokens")
    batch_size: int = setting(2, "posts per generation batch (batch_size * n rows)")
    score_batch_size: int = setting(32, "summaries per reward-model forward (at least one post's n)")
    no_eos_penalty: float | None = setting(
        None,
        "rank a summary that never ended with this score instead of its RM score")
    write_all: bool = setting(False, "also write every candidate to candidates.jsonl (best-of-k curves for k < n)")
    seed: int = setting(1, "random seed of sampling")
    bf16: Bf16 = setting(False, "bf16 autocast (weights stay fp32); auto: bf16 only where native")
    device: str = setting("auto", "auto (the first CUDA GPU if any, else the CPU) or a torch device: cpu, cuda:1")
    allow_partial: bool = setting(False, "use an unfinished policy or RM run's last checkpoint")

    def __post_init__(self) -> None:
        for key in ("n", "batch_size", "score_batch_size", "max_new_tokens", "max_query_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.temperature == 0 and self.n > 1:
            raise ValueError(f"temperature=0 is greedy: all n={self.n} summaries of a post would be the same "
                             "(sample with temperature > 0, e.g. 0.7)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def base_policy_name(model: str) -> str:
    path = Path(model)
    if is_run_dir(path):
        return f"{path.parent.name}/{path.name}"  # e.g. sft/cpu
    return path.name if path.exists() else model


def policy_name(cfg: BestOfNConfig) -> str:
    return cfg.policy_name or f"bo{cfg.n}-{base_policy_name(cfg.model)}"


def ranking_scores(rm_scores: list[float], eos: list[bool], no_eos_penalty: float | None) -> list[float]:
    """The scores best-of-N maximises: the RM's, except that a summary that never ended gets the penalty."""
    if no_eos_penalty is None:
        return list(rm_scores)
    return [s if e else float(no_eos_penalty) for s, e in zip(rm_scores, eos)]


def best_index(scores: list[float]) -> int:
    """argmax; the first of equal scores (the earliest sample) wins."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def expected_best_of_k(scores: list[float], k: int) -> float:
    """E[max of k scores drawn without replacement from these n] — the unbiased best-of-k estimate from n >= k
    i.i.d. samples (it uses all n, so it varies less than the max of the first k)."""
    n = len(scores)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in 1..{n}")
    ordered = sorted(scores)
    total = math.comb(n, k)
    # the i-th smallest (0-based) is the max of a k-subset in comb(i, k-1) of the comb(n, k) subsets
    return sum(s * math.comb(i, k - 1) for i, s in enumerate(ordered) if i >= k - 1) / total


def resume_state(samples_path: Path, candidates_path: Path | None) -> ResumableRows[str]:
    """The samples already written, by post id. A post's candidates are written before its sample, so
    candidates of posts that have no sample yet (an interrupted batch) are dropped here and written again with
    the batch."""
    written = ResumableRows(samples_path, key=lambda r: r["post_id"], ascii_only=True)
    if written.repeated is not None:
        raise RunError(f"{samples_path}: post {written.repeated} is written twice")
    if candidates_path is not None and candidates_path.exists():
        kept = [r for r in read_rows(candidates_path) if r["post_id"] in written]
        atomic_write_text(candidates_path, dumps_rows(kept, ascii_only=True))
    return written


def best_of_n(cfg: BestOfNConfig, out: str, stop_after: int | None = None) -> dict:
    """Run (or resume) best-of-N into the run directory `out`. `stop_after` (batches) simulates an interruption."""
    run = RunDir(out)
    if run.is_done():
        return run.read_done()
    # Check the posts and load both models before the run directory exists: a wrong path is reported without
    # leaving a run behind that a corrected command would then refuse as "a different config".
    check_files([posts_check("posts", cfg.posts, cfg.format)])
    rm = load_ranker(cfg)
    model, tokenizer = load_model(cfg.model, allow_partial=cfg.allow_partial)
    device = resolve_device(cfg.device)
    model.to(device).eval()
    if isinstance(rm, (RewardModel, RewardEnsemble)):
        rm.to(device)

    run.start("best-of-n", cfg)
    seed_everything(cfg.seed)
    t_start = time.time()
    samples_path = run.path / "samples.jsonl"
    candidates_path = run.path / "candidates.jsonl" if cfg.write_all else None
    written = resume_state(samples_path, candidates_path)

    posts, _, dropped = format_queries(unique_posts(list(load_posts(cfg.posts, format=cfg.format, limit=cfg.limit))),
                                       tokenizer, cfg.max_query_tokens)
    if dropped:
        log.warning("best-of-n: %d posts do not fit max_query_tokens=%d even cut, left out", dropped,
                    cfg.max_query_tokens)
    name, base = policy_name(cfg), base_policy_name(cfg.model)
    log.info("best-of-n: %d posts × n=%d by %s, scored by %s (%d posts already written)",
             len(posts), cfg.n, base, cfg.reward, len(written))

    n_generated, t_gen, batches = 0, 0.0, 0
    bar = progress(len(posts), "best-of-n", "post", sum(p.id in written for p in posts))
    for batch in pending_batches(posts, cfg.batch_size, lambda p: p.id in written):
        if stop_after is not None and batches >= stop_after:
            bar.close()
            return {"stopped_at": batches}
        # The whole fixed batch is sampled again even when only part of it is missing: the same rows with the
        # same generator give the same samples as an uninterrupted run.
        generator = torch.Generator().manual_seed(batch.seed(cfg.seed))
        t0 = time.time()
        candidates = sample_and_score(model, tokenizer, rm, batch.items, cfg, generator, base)
        t_gen += time.time() - t0
        n_generated += len(batch.items) * cfg.n
        batches += 1
        missing = [b for b, p in enumerate(batch.items) if p.id not in written]
        if candidates_path is not None:
            append_rows(candidates_path, (c.to_dict() for b in missing for c in candidates[b]), ascii_only=True)
        chosen = written.add(pick_best(batch.items[b], candidates[b], name, cfg).to_dict() for b in missing)
        bar.update(len(chosen))
        bar.set_postfix(best=f"{sum(s['score'] for s in chosen) / len(chosen):.3f}")
    bar.close()

    summary = summarise(cfg, samples_path, candidates_path, name, base)
    summary.update(wall_s=time.time() - t_start, generated_this_run=n_generated,
                   candidates_per_s=n_generated / t_gen if t_gen > 0 else None)
    run.write_done(summary)
    log.info("best-of-n: mean best score %.4f vs mean score %.4f over %d posts",
             summary["mean_best_score"], summary["mean_score"], summary["n_posts"])
    return summary


def load_ranker(cfg: BestOfNConfig) -> RewardModel | TextReward:
    """The reward that ranks the candidates: an RM, or a text reward (rouge, style:, python:; see
    models/text_reward.py) — a reward that compares against the reference refuses posts without one here."""
    if is_text_reward(cfg.reward):
        fn = load_text_reward(cfg.reward)
        if needs_reference(fn):
            check_references(fn, list(load_posts(cfg.posts, format=cfg.format, limit=cfg.limit)), cfg.posts)
        return fn
    try:
        missing = [m for m in reward_members(cfg.reward) if not Path(m).expanduser().exists() and not is_hub_id(m)]
    except ValueError as err:
        raise RunError(str(err)) from None
    if missing:
        raise RunError(f"reward={cfg.reward}: {missing[0]} not found — expected an `rlhflab rm` run directory, "
                       "ensemble:<rule>:<rm>,<rm>,..., rouge, style:NAME or python:module:function")
    return load_reward_model(cfg.reward, allow_partial=cfg.allow_partial)


def unique_posts(posts: list[Post]) -> list[Post]:
    """The posts in order, each id once (one written row per post id is what makes resuming exact)."""
    out = list({p.id: p for p in reversed(posts)}.values())[::-1]
    if len(out) < len(posts):
        log.warning("best-of-n: %d posts with a repeated id were skipped", len(posts) - len(out))
    return out


@torch.no_grad()
def sample_and_score(model, tokenizer, rm: RewardModel | TextReward, chunk: list[Post], cfg: BestOfNConfig,
                     generator: torch.Generator, base: str = "") -> list[list[Sample]]:
    """cfg.n candidates per post: sampled by the policy, scored by the RM. Returns [post][i] candidate Samples
    (policy = the base policy's name, score = the ranking score, extra.rm_score = the RM's own)."""
    k = cfg.n
    query_texts = [format_query(p, tokenizer, cfg.max_query_tokens) for p in chunk]
    queries = [encode_query(tokenizer, q) for q in query_texts]
    query_ids, query_mask = pad_queries(tokenizer, queries)  # (P, Tq)
    with autocast(model.device, cfg.bf16):
        gen = generate(model, tokenizer, query_ids, query_mask, max_new_tokens=cfg.max_new_tokens,
                       temperature=cfg.temperature, top_p=cfg.top_p, generator=generator, n_per_query=k)
    texts = decode_responses(tokenizer, gen)  # P*k, post b's candidates at b*k … b*k+k-1
    eos = gen.eos.tolist()
    n_tokens = (gen.response_mask.sum(-1) - gen.eos.long()).tolist()
    rm_scores = score_candidates(rm, chunk, query_texts, texts, eos, cfg)
    out = []
    for b, post in enumerate(chunk):
        rows = range(b * k, (b + 1) * k)
        raw = [float(rm_scores[b, i]) for i in range(k)]
        ranked = ranking_scores(raw, [eos[r] for r in rows], cfg.no_eos_penalty)
        out.append([Sample(post_id=post.id, policy=base, text=texts[r], n_tokens=int(n_tokens[r]), index=i,
                           eos=bool(eos[r]), score=ranked[i],
                           extra={"temperature": cfg.temperature, "rm_score": raw[i]})
                    for i, r in enumerate(rows)])
    return out


def score_candidates(rm: RewardModel | TextReward, chunk: list[Post], query_texts: list[str], texts: list[str],
                     eos: list[bool], cfg: BestOfNConfig) -> torch.Tensor:
    """(P, k) scores of the P posts' k candidates (texts[b*k + i] is post b's candidate i); `query_texts`: the
    P formatted queries the policy read."""
    k = cfg.n
    if not isinstance(rm, (RewardModel, RewardEnsemble)):
        scores = call_text_reward(rm, [q for q in query_texts for _ in range(k)], texts,
                                  [p for p in chunk for _ in range(k)])
        return torch.tensor(scores, dtype=torch.float32).view(len(chunk), k)
    # The RM reads the post and the summaries with its own tokenizer and budgets (as `rlhflab score` does).
    rm_queries = [rm.encode_query(p) for p in chunk]
    rm_responses = [rm.encode_response(t, eos=e) for t, e in zip(texts, eos)]
    return rm.score_groups(rm_queries, rm_responses, k, batch_size=cfg.score_batch_size, bf16=cfg.bf16)


def pick_best(post: Post, candidates: list[Sample], name: str, cfg: BestOfNConfig) -> Sample:
    """The written row of one post: the best candidate's text and score, all n scores in `extra`."""
    scores = [float(c.score) for c in candidates]  # type: ignore[arg-type]
    i = best_index(scores)
    best = candidates[i]
    extra = {"n": len(scores), "scores": scores, "mean_score": sum(scores) / len(scores), "best_index": i,
             "eos": [c.eos for c in candidates], "temperature": cfg.temperature, "base_policy": best.policy}
    if cfg.no_eos_penalty is not None:
        extra["rm_scores"] = [c.extra["rm_score"] for c in candidates]
    return Sample(post_id=post.id, policy=name, text=best.text, n_tokens=best.n_tokens, index=0, eos=best.eos,
                  score=scores[i], extra=extra)


def summarise(cfg: BestOfNConfig, samples_path: Path, candidates_path: Path | None, name: str, base: str) -> dict:
    rows = read_rows(samples_path)
    n = max(len(rows), 1)
    all_scores = [s for r in rows for s in r["extra"]["scores"]]
    ks = sorted({2**j for j in range(cfg.n.bit_length()) if 2**j <= cfg.n} | {cfg.n})
    return {
        "stage": "best-of-n", "policy": name, "base_policy": base, "reward": cfg.reward, "n": cfg.n,
        "n_posts": len(rows), "n_candidates": len(all_scores),
        "mean_best_score": sum(r["score"] for r in rows) / n,
        "mean_score": sum(all_scores) / max(len(all_scores), 1),
        # E[best of k] per post from its n scores, averaged: the reward-vs-N curve without sampling again
        "mean_best_score_by_k": {str(k): sum(expected_best_of_k(r["extra"]["scores"], k) for r in rows) / n
                                 for k in ks},
        "eos_rate": sum(r["eos"] for r in rows) / n,
        "candidate_eos_rate": sum(e for r in rows for e in r["extra"]["eos"]) / max(len(all_scores), 1),
        "mean_tokens": sum(r["n_tokens"] for r in rows) / n,
        "samples": str(samples_path), "candidates": str(candidates_path) if candidates_path else None,
    }
