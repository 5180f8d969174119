"""A model policy's summaries and its KL from the SFT model, each cached in the eval run directory.

Both go through `cached_batches`: the posts are cut into fixed batches (`rlhflab.data.resumable`), each seeded
from its position, and every batch's rows are appended as soon as they exist, so an interrupted eval samples
nothing again and a resumed one gets the numbers an uninterrupted one gets.

KL ≈ mean over samples y ~ π_T of Σ_t log π_T(y_t|·) − log π_sft,T(y_t|·), both models' logits divided by T.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlhflab.core.log import get_logger
from rlhflab.core.progress import progress
from rlhflab.data.format import encode_query, format_query
from rlhflab.data.records import Post, Sample
from rlhflab.data.resumable import ResumableRows, pending_batches
from rlhflab.eval import metrics
from rlhflab.eval.cache import slug
from rlhflab.eval.judges import Judge
from rlhflab.eval.models import ModelCache, model_key
from rlhflab.models.device import autocast
from rlhflab.models.generation import generate, pad_queries, response_logprobs

if TYPE_CHECKING:
    from rlhflab.eval.evaluate import EvalConfig

log = get_logger(__name__)

KL_STREAM = 7  # the KL batches' seeds are the sampling batches' + 7: other draws than the greedy/eval samples


@dataclass(frozen=True)
class KLEstimate:
    kl: float | None  # nats per response; None: not measured
    se: float | None
    method: str | None  # how it was measured, for the report


@dataclass
class Interruption:
    """The test hook that simulates a killed eval: stop once `stop_after` model policies were sampled."""

    stop_after: int | None = None
    sampled: int = 0

    @property
    def reached(self) -> bool:
        return self.stop_after is not None and self.sampled >= self.stop_after


@dataclass
class EvalRun:
    """What every part of one eval run reads: its settings, its directory, its models and judges."""

    cfg: EvalConfig
    path: Path  # the run directory
    models: ModelCache
    judges: list[Judge]
    interruption: Interruption


MakeRows = Callable[[list[Post], torch.Generator], list[dict[str, Any]]]


@dataclass(frozen=True)
class CachedRows:
    rows: dict[str, dict[str, Any]] | None  # post id -> row; None: they could not be computed
    computed: bool  # some batch was not cached and was computed now


def cached_batches(path: Path, posts: Sequence[Post], cfg: EvalConfig, stream: int, desc: str,
                   load: Callable[[], MakeRows | None]) -> CachedRows:
    """The rows of `posts`, computed by `load()`'s function for the batches not cached yet. `load` runs only when
    a batch is missing (it loads the models); None from it: they cannot be computed."""
    store = ResumableRows(path, key=lambda r: r["post_id"])
    todo = pending_batches(posts, cfg.batch_size, lambda p: p.id in store)
    if not todo:
        return CachedRows(store.rows, computed=False)
    make_rows = load()
    if make_rows is None:
        return CachedRows(None, computed=False)
    bar = progress(sum(len(b.items) for b in todo), desc, "post")
    for batch in todo:
        generator = torch.Generator().manual_seed(batch.seed(cfg.seed, stream))
        store.add(make_rows(batch.items, generator))
        bar.update(len(batch.items))
    bar.close()
    return CachedRows(store.rows, computed=True)


def policy_samples(ev: EvalRun, spec: str, posts: Sequence[Post], set_name: str, budget: int,
                   name: str) -> dict[str, dict[str, Any]]:
    """post id -> sample row of `spec`'s summaries of `posts` (`rlhflab sample`'s format)."""
    def load() -> MakeRows:
        model, tok = ev.models.policy(spec)
        return lambda chunk, generator: [s.to_dict() for s in sample_batch(model, tok, chunk, name, budget, ev.cfg,
                                                                           generator)]

    path = ev.path / set_name / "samples" / f"{slug(model_key(spec))}.jsonl"
    cached = cached_batches(path, posts, ev.cfg, 0, f"sample {name} ({set_name})", load)
    ev.interruption.sampled += cached.computed
    assert cached.rows is not None  # sampling always can
    return cached.rows


def policy_kl(ev: EvalRun, spec: str, posts: Sequence[Post], set_name: str, budget: int, name: str) -> KLEstimate:
    """A model policy's KL from the SFT model (`kl_reference`), from `kl_samples` samples per post."""
    cfg = ev.cfg
    if cfg.kl_reference is None:
        return KLEstimate(None, None, None)
    if model_key(spec) == model_key(cfg.kl_reference):
        return KLEstimate(0.0, 0.0, "the policy is the KL reference")

    def load() -> MakeRows | None:
        model, tok = ev.models.policy(spec)
        ref, ref_tok = ev.models.reference(str(cfg.kl_reference))
        if model.config.vocab_size != ref.config.vocab_size or tok.eos_token_id != ref_tok.eos_token_id:
            log.warning("eval: %s and the KL reference %s do not share a vocabulary: no KL", spec, cfg.kl_reference)
            return None
        return lambda chunk, generator: kl_rows(model, tok, ref, chunk, budget, cfg, generator)

    path = ev.path / set_name / "kl" / f"{slug(model_key(spec))}.jsonl"
    rows = cached_batches(path, posts, cfg, KL_STREAM, f"kl {name} ({set_name})", load).rows
    if rows is None:
        return KLEstimate(None, None, "not measured: the policy and the KL reference have different vocabularies")
    values = [v for p in posts for v in rows[p.id]["kl"]]
    mean, se = metrics.mean_and_se(values)
    return KLEstimate(mean, se, f"mean over {len(values)} samples (T={cfg.kl_temperature}) of Σ_t log π(y_t) − "
                                f"log π_ref(y_t), logits divided by T; reference {cfg.kl_reference}")


def encode_queries(tok, chunk: Sequence[Post], budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Tq) left-padded query ids and mask."""
    return pad_queries(tok, [encode_query(tok, format_query(p, tok, budget)) for p in chunk])


@torch.no_grad()
def sample_batch(model, tok, chunk: Sequence[Post], name: str, budget: int, cfg: EvalConfig,
                 generator: torch.Generator) -> list[Sample]:
    ids, mask = encode_queries(tok, chunk, budget)
    with autocast(model.device, cfg.bf16):
        gen = generate(model, tok, ids, mask, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                       top_p=cfg.top_p, generator=generator)
    out = []
    for b, post in enumerate(chunk):
        n = int(gen.response_mask[b].sum())
        eos = bool(gen.eos[b])
        token_ids = gen.response[b, :n].tolist()
        text = tok.decode(token_ids[:-1] if eos else token_ids, skip_special_tokens=False)
        out.append(Sample(post_id=post.id, policy=name, text=text, n_tokens=n - int(eos), eos=eos,
                          extra={"temperature": cfg.temperature}))
    return out


@torch.no_grad()
def kl_rows(model, tok, ref, chunk: Sequence[Post], budget: int, cfg: EvalConfig,
            generator: torch.Generator) -> list[dict[str, Any]]:
    """One row per post: the KL and length of each of its `kl_samples` samples."""
    ids, mask = encode_queries(tok, chunk, budget)  # (B, Tq)
    with autocast(model.device, cfg.bf16):
        gen = generate(model, tok, ids, mask, max_new_tokens=cfg.max_new_tokens, temperature=cfg.kl_temperature,
                       top_p=1.0, generator=generator, n_per_query=cfg.kl_samples)
    # Both log-probs by the same full forward in float32 (bf16 logits would add ~0.01 nats of noise a token), so
    # a policy identical to the reference gives exactly 0.
    logp = response_logprobs(model, gen.query_response, gen.attention_mask, ids.shape[1],
                             cfg.kl_temperature)  # (B*k, Tr)
    ref_logp = response_logprobs(ref, gen.query_response, gen.attention_mask, ids.shape[1],
                                 cfg.kl_temperature)  # (B*k, Tr)
    kl = (logp.float() - ref_logp.float()).sum(-1).cpu().tolist()  # (B*k,) masked positions are 0 in both
    lens = gen.response_mask.sum(-1).cpu().tolist()  # (B*k,)
    k = cfg.kl_samples
    return [{"post_id": p.id, "kl": kl[b * k : (b + 1) * k], "n_tokens": lens[b * k : (b + 1) * k]}
            for b, p in enumerate(chunk)]
