"""Reward model training on human comparisons (the paper's RM stage).

The loop in `train` reads top to bottom:
  (1) load the backbone (an SFT run or any model) with a fresh scalar head, and the comparisons
  (2) split off a dev set by post id; resolve repeated comparisons (duplicates and contradictions) on purpose
  (3) for each optimiser step: chosen and rejected of a micro batch together (the query once, both summaries on
      its KV cache — or, with share_query=false, one forward of both full sequences), loss, accumulate, clip, step
  (4) log, dev accuracy, checkpoint on their periods; resume from state/ exactly
  (5) normalise (human references average 0), save model/, then DONE.json with the dev accuracy

Best-of-N labels (Ziegler et al. 2019: a labeler picks the best of N continuations; `data.comparisons` holding
{"query","samples","best"} rows) train with the softmax cross-entropy of the pick over the N scores (`loss=auto`
chooses it for such a file); each query runs once for its N continuations, accuracy is top-1 (chance 1/N), and
`normalise_on=labels` makes the training labels' continuations score 0 on average (books have no references).

With several processes (`accelerate launch`, see train/distributed.py) each takes its contiguous share of every
batch; each pair's loss is divided by the global batch size and the gradients are summed across processes, so
the step is the one a single process makes. Dev accuracy: each process scores a share of the dev batches and
the scores are gathered in batch order (the same numbers as one process). Only the main process normalises (the
same references and batches as one process) and writes the run directory.

Repeated comparisons. The same pair of summaries of one post is often labelled by several people (batch13: 40
pairs carry 206 rows, and 26 of those pairs have both answers). Two policies, applied to train and dev alike:
  - `contradictions` (same pair, opposite choices): "majority" (default) keeps the rows of the majority choice and
    drops the pair on a tie; "drop" drops every row of a contradicted pair; "keep" keeps all rows (the
    Bradley–Terry likelihood then pulls that pair's margin towards the labelers' split).
  - `duplicates` (same pair, same choice — different labelers agreeing): "drop" (default) keeps the first row,
    so no pair weighs 10× in training or in dev accuracy; "keep" keeps them all.
Both are counted in metrics.jsonl (step 0) and DONE.json.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rlhflab.core.log import get_logger
from rlhflab.core.rundir import RunDir, RunError
from rlhflab.core.seed import seed_everything
from rlhflab.data.loaders import labels_kind, load_best_of_n, load_comparisons, load_postless_pairs, load_posts
from rlhflab.data.preflight import check_files, check_paths, labels_check, posts_check
from rlhflab.data.records import BestOfN, Comparison
from rlhflab.data.repeats import resolve_repeats
from rlhflab.data.splits import fold_by_post, split_by_post
from rlhflab.models.device import Bf16, autocast
from rlhflab.models.reward import (
    RewardModel,
    load_reward_model,
    new_reward_model,
    normalise,
    normalise_groups,
    pad_sequences,
    save_reward_model,
)
from rlhflab.ops.losses import (
    best_of_n_loss,
    confidence_preference_losses,
    odin_length_terms,
    pearson,
    preference_accuracy,
    preference_losses,
    top1_accuracy,
    weighted_mean,
)
from rlhflab.core.config import require, setting
from rlhflab.train.common import (
    OptimConfig,
    check_batch_fields,
    check_launch,
    freeze_lower_layers,
    last_logged,
    make_optimizer,
    on_period,
    optimizer_step,
    phased_batches,
    plan_phases,
    progress_bar,
    push_to_hub,
    resume,
    save_checkpoint,
    stopped_early,
)
from rlhflab.train.distributed import (
    Processes,
    barrier,
    full_state_dict,
    gather_objects,
    lockstep_chunks,
    processes,
    shard_layers,
    share,
    sum_across,
)

log = get_logger(__name__)


@dataclass
class RewardData:
    comparisons: str = setting(
        "../shared/data/comparisons/batch13.jsonl.gz",
        "training comparisons: OpenAI schema or {post|query, chosen, rejected} JSONL(.gz); local path or hub")
    dev: str | None = setting(None, "a separate dev file; None: hold out `dev_fraction` of the posts of `comparisons`")
    dev_fraction: float = setting(0.15, "share of posts held out as the dev split (split by post id)")
    split_seed: int = setting(0, "the post-id hash seed of the dev split (rm-eval uses the same to find the dev pairs)")
    limit: int | None = setting(None, "use only the first N comparisons (None: all)")
    max_query_tokens: int = setting(512, "token budget of a query (the post is cut at a newline to fit)")
    max_response_tokens: int = setting(64, "summaries are cut to this many tokens (EOS included)")
    skip_bad: bool = setting(False, "skip malformed rows with a count instead of stopping at the first")
    duplicates: Literal["drop", "keep"] = setting(
        "drop",
        "a pair labelled twice the same way: keep one copy (drop) or every copy (keep)")
    contradictions: Literal["majority", "drop", "keep"] = setting(
        "majority",
        "a pair labelled both ways: the majority answer, drop the pair, or keep every label")
    folds: int = setting(0, "k-fold cross-validation by post: dev is fold `fold` of `folds` (0: dev_fraction)")
    fold: int = setting(0, "which of the `folds` folds is dev (0-based)")
    postless: str | None = setting(
        None,
        "human comparisons that lost their posts ({id, chosen, rejected, ...}, e.g. "
        "../shared/data/comparisons/train_no_posts.jsonl.gz), trained on besides `comparisons` with the query "
        "`format.POSTLESS_QUERY` (the TL;DR template left empty); never in dev")
    postless_schedule: Literal["first", "mixed"] = setting(
        "first",
        "first: `postless_epochs` passes over them, then the comparisons' `epochs`; mixed: shuffled into every "
        "epoch of the comparisons, each pair's loss weighted by `postless_weight`")
    postless_epochs: int = setting(1, "passes over the post-less pairs before the comparisons (schedule first)")
    postless_weight: float = setting(1.0, "loss weight of a post-less pair (schedule mixed; comparisons weigh 1)")
    postless_limit: int | None = setting(None, "use only the first N post-less pairs (None: all)")

    def __post_init__(self) -> None:
        require(0 <= self.dev_fraction <= 1, "dev_fraction", f"must be in [0, 1], got {self.dev_fraction}")
        require(self.limit is None or self.limit >= 0, "limit", f"must be >= 0 or None, got {self.limit}")
        require(self.folds == 0 or (self.folds >= 2 and 0 <= self.fold < self.folds), "fold",
                f"k-fold needs folds >= 2 and 0 <= fold < folds, got folds={self.folds}, fold={self.fold}")
        require(not (self.folds and self.dev), "folds", "give either `dev` (a separate file) or `folds`, not both")
        require(self.postless_epochs >= 1, "postless_epochs", f"must be >= 1, got {self.postless_epochs}")
        require(self.postless_weight > 0 and math.isfinite(self.postless_weight), "postless_weight",
                f"must be a positive number, got {self.postless_weight}")


@dataclass
class OdinOptions:
    decorrelate: float = setting(1.0, "weight of |ρ(quality head, response length)| over each micro batch")
    length: float = setting(1.0, "weight of −ρ(length head, response length): the length head keeps the length")

    def __post_init__(self) -> None:
        require(self.decorrelate >= 0 and self.length >= 0, "odin", "the term weights must be >= 0")


@dataclass
class RewardConfig:
    # keys that only affect the steps still to come: a resumed run may change them (recorded in config.yaml)
    RESUMABLE = ("log_every", "eval_every", "eval_batch_size", "save_every", "normalise_on", "normalise_limit",
                 "report_to", "push_to_hub")

    model: str = setting("smollm2-135m", "an SFT run directory, embedded name, model directory or hub id")
    allow_partial: bool = setting(False, "start from an unfinished SFT run's last saved model")
    init_from: str | None = setting(
        None,
        "an `rlhflab rm` run whose weights (backbone and head) this run continues from, e.g. online collection's "
        "previous RM; None: a fresh head on `model`")
    seed: int = setting(1, "random seed (the order of the training batches, the fresh reward head)")
    data: RewardData = setting(default_factory=RewardData, help="the comparisons and how they are tokenised and split")
    optim: OptimConfig = setting(default_factory=OptimConfig,
                                 help="AdamW and its learning-rate schedule (the profiles set lr: 1.5e-5 to 3e-5 "
                                      "for 135M)")
    epochs: int = setting(1, "passes over the training pairs (the paper: 1)")
    max_steps: int | None = setting(None, "stop after N optimiser steps (None: the epochs' steps)")
    batch_size: int = setting(16, "comparison pairs per optimiser step")
    micro_batch_size: int = setting(4, "pairs per forward/backward (2× sequences: chosen and rejected together)")
    loss: Literal["auto", "pairwise", "confidence", "best_of_n"] = setting(
        "auto",
        "-log sigmoid(r_chosen - r_rejected) (pairwise), a target from the labeler's confidence, or the softmax "
        "cross-entropy of a best-of-N pick; auto: best_of_n for best-of-N labels, else pairwise")
    share_query: bool = setting(
        True,
        "run each query once, both summaries on its KV cache (same scores, ~half the work)")
    heads: Literal["single", "odin"] = setting(
        "single",
        "single: one scalar head; odin: a quality and a length head (Chen et al. 2024), trained on their sum with "
        "the quality head decorrelated from length — the quality head alone is the reward")
    odin: OdinOptions = setting(default_factory=OdinOptions, help="ODIN's length terms (heads=odin)")
    bf16: Bf16 = setting(False, "bf16 autocast (weights stay fp32); auto: bf16 only where native")
    device: str = setting("auto", "auto (the first CUDA GPU if any, else the CPU) or a torch device: cpu, cuda:1")
    freeze_layers: int = setting(0, "freeze the embeddings and the lowest N decoder layers")
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = setting(
        "none", "also send metrics.jsonl's rows to TensorBoard (<run>/tensorboard/), W&B or trackio")
    push_to_hub: str | None = setting(
        None, "after the run: upload model/ (with its model card) to this Hub repo, e.g. me/tldr-rm; needs a token")
    log_every: int = setting(1, "write metrics.jsonl every N optimiser steps")
    eval_every: int = setting(20, "dev accuracy every this many steps; 0 = only at the start and the end")
    eval_batch_size: int = setting(16, "sequences per forward when scoring dev and references")
    save_every: int = setting(20, "checkpoint state/ every N optimiser steps (and after the last)")
    normalise_on: str | None = setting(
        "../shared/data/tldr/train.jsonl.gz",
        "the RM's bias is set so these posts' reference summaries score 0 on average; \"labels\": so the "
        "training labels' own responses do (best-of-N books); None: no shift")
    normalise_limit: int = setting(256, "how many of the first `normalise_on` posts the normalisation scores")

    def __post_init__(self) -> None:
        check_batch_fields(self.batch_size, self.micro_batch_size)

    @property
    def best_of_n(self) -> bool:
        """Whether the labels are best-of-N picks (decided by the labels file's first row)."""
        return labels_kind(self.data.comparisons) == "best_of_n"

    def resolved_loss(self) -> str:
        kind = "best_of_n" if self.best_of_n else "pairwise"
        if self.loss == "auto":
            return kind
        require((self.loss == "best_of_n") == (kind == "best_of_n"), "loss",
                f"loss={self.loss} does not fit {self.data.comparisons}, which holds "
                f"{'best-of-N labels' if kind == 'best_of_n' else 'comparisons'} (use loss=auto)")
        return self.loss


def fit_launch(cfg: RewardConfig, procs: Processes) -> RewardConfig:
    """The config as this launch runs it: under FSDP share_query is off, because its KV-cache path bypasses FSDP's
    backward hooks (see shard_layers); each pair then runs as two full sequences (the same scores)."""
    if not (procs.shard and cfg.share_query):
        return cfg
    if procs.is_main:
        log.warning("FSDP: share_query=false (each pair runs as two full sequences); the shared-query "
                    "forward does not work with sharded layers")
    return dataclasses.replace(cfg, share_query=False)


@dataclass(frozen=True)
class PairExample:
    query_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    distance: float  # |confidence − 5|, NaN when unknown
    weight: float = 1.0  # its loss's weight (post-less pairs mixed in: data.postless_weight)


@dataclass(frozen=True)
class GroupExample:
    """A best-of-N label, tokenised: one query, its N responses, the index of the labeler's pick."""
    query_ids: list[int]
    response_ids: list[list[int]]
    best: int


Example = PairExample | GroupExample


# ------------------------------------------------------------------------------------------------ data

def build_pairs(comparisons: list[Comparison], rm: RewardModel, weight: float = 1.0) -> list[PairExample]:
    """Tokenise each comparison: the query once, chosen and rejected with EOS (a finished summary). A comparison
    whose post cannot fit the query budget even cut is dropped with a count."""
    out, dropped = [], 0
    for c in comparisons:
        d = c.confidence_distance
        try:
            query_ids = rm.encode_query(c.post)
        except ValueError:
            dropped += 1
            continue
        out.append(PairExample(query_ids, rm.encode_response(c.chosen.text),
                               rm.encode_response(c.rejected.text), float("nan") if d is None else float(d), weight))
    if dropped:
        log.warning("rm: %d comparisons' posts do not fit data.max_query_tokens=%d even cut, left out", dropped,
                    rm.max_query_tokens)
    return out


def build_groups(labels: list[BestOfN], rm: RewardModel) -> list[GroupExample]:
    """Tokenise each best-of-N label: the query once, each response as written (EOS only where it ended so)."""
    sizes = {len(b.samples) for b in labels}
    if len(sizes) > 1:
        raise ValueError(f"best-of-N labels with different N ({sorted(sizes)}): train on one N at a time")
    return [GroupExample(rm.encode_query(b.post), [rm.encode_response(c.text, c.eos) for c in b.samples], b.best)
            for b in labels]


def responses_of(e: Example) -> list[list[int]]:
    return e.response_ids if isinstance(e, GroupExample) else [e.chosen_ids, e.rejected_ids]


def build_examples(rows: list, rm: RewardModel) -> list[Example]:
    return build_groups(rows, rm) if rows and isinstance(rows[0], BestOfN) else build_pairs(rows, rm)


def load_data(cfg: RewardConfig) -> tuple[list, list, dict[str, int]]:
    d = cfg.data
    if cfg.best_of_n:
        return load_best_of_n_data(cfg)
    rows = list(load_comparisons(d.comparisons, limit=d.limit, skip_bad=d.skip_bad))
    if d.dev:
        train_rows, dev_rows = rows, list(load_comparisons(d.dev, skip_bad=d.skip_bad))
        overlap = {c.post.id for c in train_rows} & {c.post.id for c in dev_rows}
        if overlap:
            raise ValueError(f"{len(overlap)} posts are in both {d.comparisons} and {d.dev} (e.g. "
                             f"{sorted(overlap)[0]}): dev accuracy would be inflated")
    elif d.folds:
        train_rows, dev_rows = fold_by_post(rows, d.folds, d.fold, seed=d.split_seed)
    else:
        train_rows, dev_rows = split_by_post(rows, d.dev_fraction, seed=d.split_seed)
    train_rows, train_counts = resolve_repeats(train_rows, d.duplicates, d.contradictions)
    dev_rows, dev_counts = resolve_repeats(dev_rows, d.duplicates, d.contradictions)
    counts = {f"data/train_{k}": v for k, v in train_counts.items()}
    counts |= {f"data/dev_{k}": v for k, v in dev_counts.items()}
    counts["data/train_posts"] = len({c.post.id for c in train_rows})
    counts["data/dev_posts"] = len({c.post.id for c in dev_rows})
    counts["data/train_empty_summaries"] = empty_summaries(train_rows)
    counts["data/dev_empty_summaries"] = empty_summaries(dev_rows)
    return train_rows, dev_rows, counts


def empty_summaries(rows: list[Comparison]) -> int:
    """Summaries with no text (trained on as the EOS token alone), counted in the data stats."""
    return sum(1 for c in rows for s in c.summaries if not s.text.strip())


def load_postless(cfg: RewardConfig) -> tuple[list[Comparison], dict[str, int]]:
    """The post-less pairs (none without `data.postless`), their repeats resolved like the comparisons'."""
    d = cfg.data
    if not d.postless:
        return [], {}
    rows = list(load_postless_pairs(d.postless, limit=d.postless_limit, skip_bad=d.skip_bad))
    rows, counts = resolve_repeats(rows, d.duplicates, d.contradictions)
    counts["empty_summaries"] = empty_summaries(rows)
    return rows, {f"data/postless_{k}": v for k, v in counts.items()}


def training_phases(cfg: RewardConfig, n_main: int, n_postless: int) -> list[tuple[range, int]]:
    """What the steps run over: the comparisons' `epochs` (indices 0..n_main-1), after `postless_epochs` over the
    post-less pairs (schedule first), or with them shuffled in (mixed)."""
    main, postless = range(n_main), range(n_main, n_main + n_postless)
    if not n_postless:
        return [(main, cfg.epochs)]
    if cfg.data.postless_schedule == "first":
        return [(postless, cfg.data.postless_epochs), (main, cfg.epochs)]
    return [(range(n_main + n_postless), cfg.epochs)]


def preflight(cfg: RewardConfig) -> None:
    """The labels, the dev labels and the normalisation posts open and parse; `init_from` is an RM run."""
    norm = None if cfg.normalise_on == "labels" else cfg.normalise_on
    check_files([labels_check("data.comparisons", cfg.data.comparisons), labels_check("data.dev", cfg.data.dev),
                 posts_check("normalise_on", norm)])
    if cfg.data.postless:
        check_paths([("data.postless", cfg.data.postless)])
        if cfg.best_of_n:
            raise RunError("data.postless holds comparisons: it trains beside comparisons, not best-of-N labels")
    check_paths([("model", cfg.model)])
    if cfg.init_from and not Path(cfg.init_from).expanduser().exists():
        raise RunError(f"init_from={cfg.init_from}: not found — expected an `rlhflab rm` run directory")
    cfg.resolved_loss()  # a loss that does not fit the labels file


def load_best_of_n_data(cfg: RewardConfig) -> tuple[list[BestOfN], list[BestOfN], dict[str, int]]:
    """(train, dev, counts) of best-of-N labels; dev by query id like comparisons (no repeat policies: N-way
    picks of freshly sampled continuations are not repeated)."""
    d = cfg.data
    rows = list(load_best_of_n(d.comparisons, limit=d.limit, skip_bad=d.skip_bad))
    if d.dev:
        train_rows, dev_rows = rows, list(load_best_of_n(d.dev, skip_bad=d.skip_bad))
    else:
        train_rows, dev_rows = split_by_post(rows, d.dev_fraction, seed=d.split_seed)  # type: ignore[arg-type]
    return train_rows, dev_rows, {"data/train_labels": len(train_rows), "data/dev_labels": len(dev_rows),
                                  "data/train_posts": len({b.post.id for b in train_rows}),
                                  "data/dev_posts": len({b.post.id for b in dev_rows})}


# ------------------------------------------------------------------------------------------------ model, loss, eval

def trainable_reward_model(cfg: RewardConfig, procs: Processes) -> tuple[RewardModel, int]:
    """The backbone of `cfg.model` with a fresh head on this process's device, lower layers frozen, decoder layers
    sharded under FSDP, in train mode -> (the model, its trainable parameter count)."""
    if cfg.init_from:  # continue training an RM (its normalisation is redone at the end)
        rm = load_reward_model(cfg.init_from)
        rm.max_query_tokens, rm.max_response_tokens = cfg.data.max_query_tokens, cfg.data.max_response_tokens
        rm.bias.zero_()
    else:
        rm = new_reward_model(cfg.model, max_query_tokens=cfg.data.max_query_tokens,
                              max_response_tokens=cfg.data.max_response_tokens, seed=cfg.seed,
                              allow_partial=cfg.allow_partial)
    if cfg.heads == "odin" and rm.length_head is None:
        rm.add_length_head(seed=cfg.seed)
    elif cfg.heads == "single":
        rm.length_head = None  # continuing an ODIN RM as a single-head one keeps its quality head only
    rm.to(procs.device)
    freeze_lower_layers(rm.lm, cfg.freeze_layers)
    # every loss here sees only r_chosen − r_rejected, so the head's bias has a zero gradient in exact arithmetic;
    # left trainable, Adam would move it by lr per step on rounding noise (normalisation sets rm.bias afterwards)
    rm.head.bias.requires_grad_(False)
    trainable = sum(p.numel() for p in rm.parameters() if p.requires_grad)
    if shard_layers(rm, procs):
        log.info("FSDP: each of the backbone's decoder layers sharded across %d processes", procs.world_size)
    rm.train()
    return rm, trainable


def example_loss(rm: RewardModel, examples: list[Example], cfg: RewardConfig, loss_kind: str
                 ) -> tuple[torch.Tensor, float, float, int]:
    """(mean loss, accuracy, summed margin, tokens) of one micro batch of pairs or best-of-N groups. The margin of a
    group is its pick's score minus the mean of the others'. With ODIN heads the preference loss is on the sum of
    the two heads, plus the length terms; accuracy and margin are the quality head's (the reward)."""
    if isinstance(examples[0], GroupExample):
        states, best, tokens = forward_group_states(rm, examples, cfg.bf16, cfg.share_query)  # (m*N, H), (m,)
        m = len(examples)
        with autocast(states.device, cfg.bf16):
            scores = rm.read(states).view(m, -1)  # (m, N) the quality head
            fitted = scores if rm.length_head is None else scores + rm.read_length(states).view(m, -1)
            extra = odin_terms(rm, scores.reshape(-1), states, [len(r) for g in examples for r in g.response_ids],
                               cfg)
        loss = best_of_n_loss(fitted, best) + extra
        picked = scores.gather(1, best[:, None]).squeeze(1)  # (m,)
        others = (scores.sum(1) - picked) / (scores.shape[1] - 1)
        return loss, float(top1_accuracy(scores.detach(), best)), float((picked - others).detach().sum()), tokens
    h_chosen, h_rejected, tokens = forward_pair_states(rm, examples, cfg.bf16, cfg.share_query)
    lengths = [len(p.chosen_ids) for p in examples] + [len(p.rejected_ids) for p in examples]
    with autocast(h_chosen.device, cfg.bf16):
        r_chosen, r_rejected = rm.read(h_chosen), rm.read(h_rejected)  # (m,) the quality head
        f_chosen, f_rejected = r_chosen, r_rejected
        if rm.length_head is not None:
            f_chosen, f_rejected = r_chosen + rm.read_length(h_chosen), r_rejected + rm.read_length(h_rejected)
        extra = odin_terms(rm, torch.cat([r_chosen, r_rejected]), torch.cat([h_chosen, h_rejected]), lengths, cfg)
    loss = pair_loss(f_chosen, f_rejected, torch.tensor([p.distance for p in examples]), loss_kind,
                     torch.tensor([p.weight for p in examples], device=r_chosen.device)) + extra
    return (loss, float(preference_accuracy(r_chosen.detach(), r_rejected.detach())),
            float((r_chosen - r_rejected).detach().sum()), tokens)


def odin_terms(rm: RewardModel, quality: torch.Tensor, states: torch.Tensor, lengths: list[int],
               cfg: RewardConfig) -> torch.Tensor | float:
    """ODIN's length terms of a micro batch's responses (0 for a single-head RM): quality (n,), states (n, H)."""
    if rm.length_head is None:
        return 0.0
    decorrelation, keep_length = odin_length_terms(quality, rm.read_length(states), torch.tensor(lengths))
    return cfg.odin.decorrelate * decorrelation + cfg.odin.length * keep_length


def forward_group_states(rm: RewardModel, groups: list[GroupExample], bf16: bool | str,
                         share_query: bool = True) -> tuple[torch.Tensor, torch.Tensor, int]:
    """((m*N, H) states at the scored tokens, (m,) picks, tokens processed): each query once with its N responses
    on its KV cache (share_query), or one forward of the m*N full sequences."""
    k = len(groups[0].response_ids)
    responses = [r for g in groups for r in g.response_ids]
    device = rm.head.weight.device
    with autocast(device, bf16):
        if share_query:
            states = rm.group_states([g.query_ids for g in groups], responses, k)
        else:
            seqs = [list(g.query_ids) + list(r) for g in groups for r in g.response_ids]
            ids, mask = pad_sequences(seqs, rm.tokenizer.pad_token_id)
            states = rm.last_states(ids.to(device), mask.to(device))
    tokens = sum((1 if share_query else k) * len(g.query_ids) + sum(map(len, g.response_ids)) for g in groups)
    return states, torch.tensor([g.best for g in groups], device=states.device), tokens


def forward_groups(rm: RewardModel, groups: list[GroupExample], bf16: bool | str, share_query: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """((m, N) quality scores, (m,) picks, tokens processed)."""
    states, best, tokens = forward_group_states(rm, groups, bf16, share_query)
    with autocast(states.device, bf16):
        return rm.read(states).view(len(groups), -1), best, tokens


def pair_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, distance: torch.Tensor, kind: str,
              weight: torch.Tensor) -> torch.Tensor:
    """The micro batch's loss: each pair's (Bradley–Terry, or its confidence soft target), weighted, averaged."""
    if kind == "confidence":
        return weighted_mean(confidence_preference_losses(r_chosen, r_rejected, distance.to(r_chosen.device)), weight)
    return weighted_mean(preference_losses(r_chosen, r_rejected), weight)


def forward_pair_states(rm: RewardModel, pairs: list[PairExample], bf16: bool | str,
                        share_query: bool = True) -> tuple[torch.Tensor, torch.Tensor, int]:
    """((m, H) chosen, (m, H) rejected states at the scored tokens, tokens processed) of one micro batch: chosen
    and rejected together — the query once and both summaries on its cache (share_query), or one forward of the 2m
    full sequences."""
    with autocast(rm.head.weight.device, bf16):
        h_chosen, h_rejected = rm.pair_states([p.query_ids for p in pairs], [p.chosen_ids for p in pairs],
                                              [p.rejected_ids for p in pairs], share_query=share_query)
    per_query = 1 if share_query else 2
    tokens = sum(per_query * len(p.query_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    return h_chosen, h_rejected, tokens


def forward_pairs(rm: RewardModel, pairs: list[PairExample], bf16: bool | str, share_query: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(r_chosen (m,), r_rejected (m,), tokens processed): the quality head's scores."""
    h_chosen, h_rejected, tokens = forward_pair_states(rm, pairs, bf16, share_query)
    with autocast(h_chosen.device, bf16):
        return rm.read(h_chosen), rm.read(h_rejected), tokens


@torch.no_grad()
def evaluate(rm: RewardModel, pairs: list[Example], cfg: RewardConfig, procs: Processes) -> dict[str, float]:
    """Dev accuracy, loss and mean margin (pairs sorted by length, so the batches pad little). With several
    processes each scores a contiguous share of the batches; the scores are gathered in batch order. Best-of-N
    groups: top-1 accuracy, the softmax loss, and the pick's margin over the others' mean. Pairs also get the
    Pearson correlation of the scores with response length (and of the ODIN length head's)."""
    groups = isinstance(pairs[0], GroupExample)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].query_ids))
    per = max(1, cfg.eval_batch_size // (len(pairs[0].response_ids) if groups else 2))  # type: ignore[union-attr]
    starts = list(range(0, len(order), per))
    scored = []
    for k, keep in lockstep_chunks(len(starts), procs):
        chunk = [pairs[j] for j in order[starts[k] : starts[k] + per]]
        scored_chunk = score_groups_chunk(rm, chunk, cfg) if groups else score_pairs_chunk(rm, chunk, cfg)
        if keep:
            scored.append(scored_chunk)
    scored = gather_objects(scored, procs)
    if groups:
        scores, best = torch.cat([a for a, _ in scored]), torch.cat([b for _, b in scored])
        picked = scores.gather(1, best[:, None]).squeeze(1)
        return {"eval/accuracy": float(top1_accuracy(scores, best)), "eval/loss": float(best_of_n_loss(scores, best)),
                "eval/margin": float((picked - (scores.sum(1) - picked) / (scores.shape[1] - 1)).mean()),
                "eval/chance": 1.0 / scores.shape[1], "eval/n_pairs": len(pairs)}
    r_chosen, r_rejected, quality, length_head, lengths = (torch.cat(parts) for parts in zip(*scored))
    out = {"eval/accuracy": float(preference_accuracy(r_chosen, r_rejected)),
           "eval/loss": float(preference_losses(r_chosen, r_rejected).mean()),
           "eval/margin": float((r_chosen - r_rejected).mean()), "eval/n_pairs": len(pairs),
           "eval/length_correlation": float(pearson(quality, lengths))}
    if rm.length_head is not None:
        out["eval/length_head_correlation"] = float(pearson(length_head, lengths))
    return out


def score_groups_chunk(rm: RewardModel, chunk: list[GroupExample], cfg: RewardConfig) -> tuple:
    scores, best, _ = forward_groups(rm, chunk, cfg.bf16, cfg.share_query)
    return scores.float().cpu(), best.cpu()


def score_pairs_chunk(rm: RewardModel, chunk: list[PairExample], cfg: RewardConfig) -> tuple:
    """(r_chosen, r_rejected, every response's quality score, its length-head score (zeros for one head), its
    length in tokens), on the CPU."""
    h_chosen, h_rejected, _ = forward_pair_states(rm, chunk, cfg.bf16, cfg.share_query)
    states = torch.cat([h_chosen, h_rejected])
    with autocast(states.device, cfg.bf16):
        quality = rm.read(states).float().cpu()
        length_head = rm.read_length(states).float().cpu() if rm.length_head is not None else torch.zeros_like(quality)
    lengths = torch.tensor([len(p.chosen_ids) for p in chunk] + [len(p.rejected_ids) for p in chunk])
    m = len(chunk)
    return quality[:m], quality[m:], quality, length_head, lengths


def summarise(rows: list[dict[str, Any]], head: dict[str, Any], norm: dict[str, Any], data_counts: dict[str, int]
              ) -> dict[str, Any]:
    """DONE.json: `head` (the run's own numbers), then from metrics.jsonl the last, the first (step 0) and the best
    dev results, the final train loss, the normalisation, and the data counts logged at step 0."""
    evals = [r for r in rows if "eval/accuracy" in r]
    best = max(evals, key=lambda r: r["eval/accuracy"]) if evals else None
    summary = {**head,
               "dev_accuracy": evals[-1]["eval/accuracy"] if evals else None,
               "dev_accuracy_before": evals[0]["eval/accuracy"] if evals and evals[0]["step"] == 0 else None,
               "dev_loss": evals[-1]["eval/loss"] if evals else None,
               "dev_length_correlation": evals[-1].get("eval/length_correlation") if evals else None,
               "best_dev_accuracy": best["eval/accuracy"] if best else None,
               "best_dev_step": best["step"] if best else None,
               "train_loss_final": last_logged(rows, "train/loss"),
               "normalisation": norm,
               "data": next(({k: v for k, v in r.items() if k.startswith("data/")} for r in rows if r["step"] == 0),
                            data_counts)}
    if summary["dev_accuracy"] is not None and math.isnan(summary["dev_accuracy"]):
        raise RuntimeError("dev accuracy is NaN")
    return summary


# ------------------------------------------------------------------------------------------------ the loop

def train(cfg: RewardConfig, out: str, stop_after: int | None = None) -> dict:
    """Run (or resume) RM training into the run directory `out`. `stop_after` simulates an interruption."""
    run, procs = RunDir(out), processes(cfg.device)
    cfg = fit_launch(cfg, procs)
    preflight(cfg)  # step 0: every file the config names parses, before any model loads
    if (done := run.open("rm", cfg, write=procs.is_main)) is not None:
        return done
    seed_everything(cfg.seed)  # the same seed on every process: the same fresh head everywhere
    sizes = check_launch(cfg, procs)
    t_start = time.time()

    # (1) backbone + fresh head, comparisons (and the post-less pairs, if any)
    train_rows, dev_rows, data_counts = load_data(cfg)
    postless_rows, postless_counts = load_postless(cfg)
    data_counts |= postless_counts
    rm, trainable = trainable_reward_model(cfg, procs)

    # (2) tokenised train / dev pairs (the dev split and repeat policies were applied in load_data); the
    # post-less pairs after the comparisons, and the phases of steps over them
    train_pairs, dev_pairs = build_examples(train_rows, rm), build_examples(dev_rows, rm)
    n_main = len(train_pairs)
    mixed_weight = cfg.data.postless_weight if cfg.data.postless_schedule == "mixed" else 1.0
    train_pairs += build_pairs(postless_rows, rm, mixed_weight)
    data_counts["data/postless_pairs"] = len(train_pairs) - n_main
    phases = training_phases(cfg, n_main, len(train_pairs) - n_main)
    loss_kind = cfg.resolved_loss()
    per_epoch, total_steps = plan_phases(phases, sizes.batch_size, cfg.max_steps)
    optimizer, scheduler = make_optimizer(rm, cfg.optim, total_steps, procs.shard)
    pad_id = rm.tokenizer.pad_token_id
    lengths = [len(p.query_ids) + max(map(len, responses_of(p))) for p in train_pairs]
    log.info("rm: %d train (%d post-less) / %d dev pairs, %d steps (per epoch: %s), batch %d pairs = %d micro × "
             "%d accum × %d processes, %.1fM trainable params, loss %s", len(train_pairs), len(train_pairs) - n_main,
             len(dev_pairs), total_steps, per_epoch, sizes.batch_size, sizes.micro_batch_size,
             sizes.grad_accum_steps, sizes.world_size, trainable / 1e6, loss_kind)

    step, pairs_seen = 0, 0
    if run.has_state():
        trainer = resume(run, rm, optimizer, scheduler, procs)
        step, pairs_seen = trainer["step"], trainer["pairs_seen"]
        log.info("resumed from step %d", step)
    else:  # the "before" picture: dev accuracy of the fresh head, and what the repeat policies did
        before = evaluate(rm, dev_pairs, cfg, procs) if dev_pairs else {}
        if procs.is_main:
            run.log_metrics(0, {**data_counts, **before})

    # (3) the loop
    bar = progress_bar("rm", total_steps, step, procs)
    for epochs_done, batch_idx in phased_batches(lengths, phases, sizes.batch_size, cfg.seed, step, total_steps):
        t0 = time.time()

        # one optimiser step: the loss is the mean over the (global) batch's pairs; this process runs its share,
        # and the gradients are summed over processes before clipping
        mine = batch_idx[share(len(batch_idx), procs)]
        loss_total, correct, margin_total, n_tokens = 0.0, 0.0, 0.0, 0
        for i in range(0, len(mine), sizes.micro_batch_size):
            pairs = [train_pairs[j] for j in mine[i : i + sizes.micro_batch_size]]
            loss, accuracy, margin, tokens = example_loss(rm, pairs, cfg, loss_kind)
            (loss * len(pairs) / sizes.batch_size).backward()
            loss_total += float(loss.detach()) * len(pairs)
            correct += accuracy * len(pairs)
            margin_total += margin
            n_tokens += tokens
        grad_norm = optimizer_step(rm, optimizer, scheduler, cfg.optim.max_grad_norm, procs)
        loss_total, correct, margin_total, n_tokens = sum_across([loss_total, correct, margin_total, n_tokens], procs)
        step += 1
        pairs_seen += len(batch_idx)
        dt = time.time() - t0

        # (4) log, evaluate, checkpoint
        n = len(batch_idx)
        metrics: dict[str, float] = {
            "train/loss": loss_total / n, "train/accuracy": correct / n, "train/margin": margin_total / n,
            "train/grad_norm": float(grad_norm), "train/lr": scheduler.get_last_lr()[0],
            "train/pairs_per_s": n / dt, "train/tokens_per_s": n_tokens / dt, "train/pairs_seen": pairs_seen,
            "train/epoch": epochs_done}
        last = step == total_steps
        if dev_pairs and on_period(step, cfg.eval_every, last):
            metrics |= evaluate(rm, dev_pairs, cfg, procs)
            rm.train()
        if procs.is_main and (step % cfg.log_every == 0 or "eval/accuracy" in metrics or last):
            run.log_metrics(step, metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", acc=f"{metrics['train/accuracy']:.2f}",
                        pairs_s=f"{metrics['train/pairs_per_s']:.2f}")
        if on_period(step, cfg.save_every, last):
            save_checkpoint(run, rm, optimizer, scheduler, {"step": step, "pairs_seen": pairs_seen}, procs)
        if stop_after is not None and step >= stop_after and not last:
            return stopped_early(bar, step, procs)
    bar.close()

    # (5) normalise on human references, save model/, DONE.json (the main process writes; the others wait)
    rm.eval()
    norm: dict[str, Any] = {}
    if cfg.normalise_on == "labels":  # the labels' own responses (policy samples: Ziegler et al.)
        groups = train_pairs[: cfg.normalise_limit]
        k = len(responses_of(groups[0]))
        norm = normalise_groups(rm, [g.query_ids for g in groups], [r for g in groups for r in responses_of(g)], k,
                                batch_size=cfg.eval_batch_size, bf16=cfg.bf16)
    elif cfg.normalise_on:  # every process: a sharded model runs only when all do (the others' result is dropped)
        posts = list(load_posts(cfg.normalise_on, limit=cfg.normalise_limit))
        norm = normalise(rm, posts, batch_size=cfg.eval_batch_size, bf16=cfg.bf16, source=cfg.normalise_on)
    lm_weights = full_state_dict(rm.lm, procs)  # sharded: gathered into the main process
    if not procs.is_main:
        barrier(procs)
        return run.read_done()
    save_reward_model(rm, run.model_dir, lm_weights)
    summary = summarise(run.read_metrics(), {
        "stage": "rm", "step": step, "wall_s": time.time() - t_start, "pairs_seen": pairs_seen, "loss": loss_kind,
        "heads": cfg.heads,
        "train_pairs": len(train_pairs), "postless_pairs": len(train_pairs) - n_main, "dev_pairs": len(dev_pairs)},
        norm, data_counts)
    run.write_done(summary)
    push_to_hub(run, cfg.push_to_hub)
    barrier(procs)
    log.info("rm done: dev accuracy %s after %d steps", summary["dev_accuracy"], step)
    return summary
