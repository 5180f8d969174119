"""Direct preference optimisation (Rafailov et al. 2023) on the same comparison files as the reward model.

The loop in `train` reads top to bottom:
  (1) load the policy (the SFT model) and tokenise the comparisons into (query, chosen, rejected)
  (2) the reference's log-probs of every summary, computed once with the frozen reference (the SFT model, or
      `reference`) and cached in the run directory (reference_logprobs.pt), then the reference is freed
  (3) resume from state/ when a checkpoint exists
  (4) for each optimiser step: the DPO loss −log σ(β·Δ) over the batch's pairs, accumulated over micro batches
  (5) log, evaluate on the dev pairs (held out by post, as the RM does), checkpoint on their periods
  (6) save model/, then DONE.json

Δ = (log π(chosen) − log π_ref(chosen)) − (log π(rejected) − log π_ref(rejected)), log-probs summed over the
summary's tokens (leading space and EOS, as SFT's targets). With several processes each takes its share of every
batch and the gradients are summed, as in SFT.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from rlhflab.core.config import require, setting
from rlhflab.core.log import get_logger
from rlhflab.core.rundir import RunDir, atomic_path
from rlhflab.core.seed import seed_everything
from rlhflab.data.format import encode_query, format_query, format_reference
from rlhflab.data.loaders import load_comparisons
from rlhflab.data.preflight import check_paths
from rlhflab.data.repeats import resolve_repeats
from rlhflab.data.splits import split_by_post
from rlhflab.models.device import Bf16, autocast
from rlhflab.models.loading import load_model, save_model
from rlhflab.ops.losses import dpo_losses
from rlhflab.train.common import (
    OptimConfig,
    check_batch_fields,
    check_launch,
    epoch_batches,
    freeze_lower_layers,
    last_logged,
    make_optimizer,
    on_period,
    optimizer_step,
    plan_steps,
    progress_bar,
    push_to_hub,
    resume,
    save_checkpoint,
    stopped_early,
)
from rlhflab.train.distributed import (
    barrier,
    full_state_dict,
    processes,
    shard_layers,
    share,
    sum_across,
)

log = get_logger(__name__)
REFERENCE_CACHE = "reference_logprobs.pt"


@dataclass
class DPOData:
    comparisons: str = setting("../shared/data/comparisons/batch13.jsonl.gz",
                               "comparisons: OpenAI's schema or {post|query, chosen, rejected} JSONL(.gz)")
    dev_fraction: float = setting(0.15, "share of posts held out as the dev pairs (split by post id, as the RM's)")
    split_seed: int = setting(0, "the post-id hash seed of the dev split")
    limit: int | None = setting(None, "use only the first N comparisons (None: all)")
    max_query_tokens: int = setting(512, "token budget of a query (the post is cut at a newline to fit)")
    max_response_tokens: int = setting(64, "summaries are cut to this many tokens (EOS included)")
    skip_bad: bool = setting(False, "skip malformed rows with a count instead of stopping at the first")
    duplicates: Literal["drop", "keep"] = setting("drop", "a pair labelled twice the same way: keep one or both")
    contradictions: Literal["majority", "drop", "keep"] = setting("majority", "a pair labelled both ways")

    def __post_init__(self) -> None:
        require(0 <= self.dev_fraction < 1, "dev_fraction", f"must be in [0, 1), got {self.dev_fraction}")


@dataclass
class DPOConfig:
    RESUMABLE = ("log_every", "eval_every", "save_every", "report_to", "push_to_hub")

    model: str = setting("smollm2-135m", "the policy's start: an SFT run directory (or any causal LM)")
    reference: str | None = setting(None, "the reference model (None: `model`, the SFT model itself)")
    beta: float = setting(0.1, "β: the strength of the implicit KL constraint to the reference")
    seed: int = setting(1, "random seed (the order of the training batches)")
    data: DPOData = setting(default_factory=DPOData, help="the comparisons and how they are tokenised and split")
    optim: OptimConfig = setting(default_factory=OptimConfig, help="AdamW and its learning-rate schedule")
    epochs: int = setting(1, "passes over the training pairs")
    max_steps: int | None = setting(None, "stop after N optimiser steps (None: the epochs' steps)")
    batch_size: int = setting(16, "comparison pairs per optimiser step")
    micro_batch_size: int = setting(4, "pairs per forward/backward (2× sequences)")
    bf16: Bf16 = setting(False, "bf16 autocast (weights stay fp32); auto: bf16 only where native")
    device: str = setting("auto", "auto (the first CUDA GPU if any, else the CPU) or a torch device: cpu, cuda:1")
    freeze_layers: int = setting(0, "freeze the embeddings and the lowest N decoder layers")
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = setting(
        "none", "also send metrics.jsonl's rows to TensorBoard (<run>/tensorboard/), W&B or trackio")
    push_to_hub: str | None = setting(
        None, "after the run: upload model/ (with its model card) to this Hub repo, e.g. me/tldr-dpo; needs a token")
    log_every: int = setting(1, "write metrics.jsonl every N optimiser steps")
    eval_every: int = setting(20, "dev metrics every N optimiser steps; 0 = only at the start and the end")
    save_every: int = setting(20, "checkpoint state/ every N optimiser steps (and after the last)")
    eval_batch_size: int = setting(8, "pairs per forward when evaluating and caching the reference")

    def __post_init__(self) -> None:
        check_batch_fields(self.batch_size, self.micro_batch_size)
        require(self.beta > 0, "beta", f"must be > 0, got {self.beta}")


@dataclass(frozen=True)
class Pair:
    query_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


# ------------------------------------------------------------------------------------------------ data

def build_pairs(comparisons, tokenizer, data: DPOData) -> list[Pair]:
    """Tokenise each comparison (query with the tokenizer's BOS; summaries as SFT targets: a leading space and EOS,
    cut to the budget). A post that cannot fit the query budget is dropped with a count."""
    out, dropped = [], 0
    for c in comparisons:
        try:
            query = encode_query(tokenizer, format_query(c.post, tokenizer, data.max_query_tokens))
        except ValueError:
            dropped += 1
            continue
        chosen, rejected = (tokenizer.encode(format_reference(s.text, tokenizer.eos_token), add_special_tokens=False)
                            [: data.max_response_tokens] for s in (c.chosen, c.rejected))
        out.append(Pair(query, chosen, rejected))
    if dropped:
        log.warning("dpo: %d comparisons' posts do not fit data.max_query_tokens=%d even cut, left out", dropped,
                    data.max_query_tokens)
    return out


def load_pairs(cfg: DPOConfig, tokenizer) -> tuple[list[Pair], list[Pair]]:
    d = cfg.data
    rows = list(load_comparisons(d.comparisons, limit=d.limit, skip_bad=d.skip_bad))
    train_rows, dev_rows = split_by_post(rows, d.dev_fraction, seed=d.split_seed)
    train_rows, _ = resolve_repeats(train_rows, d.duplicates, d.contradictions)
    dev_rows, _ = resolve_repeats(dev_rows, d.duplicates, d.contradictions)
    return build_pairs(train_rows, tokenizer, d), build_pairs(dev_rows, tokenizer, d)


# ------------------------------------------------------------------------------------------------ log-probs

def collate(pairs: list[Pair], pad_id: int) -> dict[str, torch.Tensor]:
    """The 2m sequences query+chosen (rows 0..m-1) and query+rejected (rows m..2m-1), right-padded; labels are
    -100 except on the summary's tokens. Shapes (2m, T)."""
    seqs = [(p.query_ids, p.chosen_ids) for p in pairs] + [(p.query_ids, p.rejected_ids) for p in pairs]
    T = max(len(q) + len(r) for q, r in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    labels = torch.full((len(seqs), T), -100, dtype=torch.long)
    for i, (q, r) in enumerate(seqs):
        ids[i, : len(q) + len(r)] = torch.tensor(q + r)
        mask[i, : len(q) + len(r)] = 1
        labels[i, len(q) : len(q) + len(r)] = torch.tensor(r)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def summary_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(2m,) float32 sum of log π(token) over each row's labelled tokens (the summary). The output head runs only
    at the positions that predict a summary token."""
    device = model.get_output_embeddings().weight.device
    batch = {k: v.to(device) for k, v in batch.items()}
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]  # (2m, T-1): position t predicts token t+1
    keep = targets != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()  # (N, V)
    token_lp = torch.gather(F.log_softmax(logits, -1), 1, targets[keep][:, None]).squeeze(1)  # (N,)
    rows = torch.arange(targets.shape[0], device=device)[:, None].expand_as(targets)[keep]  # (N,)
    return torch.zeros(targets.shape[0], device=device).index_add(0, rows, token_lp)


@torch.no_grad()
def reference_logprobs(cfg: DPOConfig, pairs: list[Pair], pad_id: int, device) -> torch.Tensor:
    """(n, 2) the reference's summed log-probs of each pair's (chosen, rejected) summaries, computed once."""
    reference, _ = load_model(cfg.reference or cfg.model)
    reference.to(device).eval()
    out = []
    for i in range(0, len(pairs), cfg.eval_batch_size):
        chunk = pairs[i : i + cfg.eval_batch_size]
        with autocast(device, cfg.bf16):
            lp = summary_logprobs(reference, collate(chunk, pad_id)).cpu()
        out.append(torch.stack([lp[: len(chunk)], lp[len(chunk) :]], 1))
    del reference
    return torch.cat(out) if out else torch.zeros(0, 2)


def cached_reference(run: RunDir, cfg: DPOConfig, train_pairs, dev_pairs, pad_id: int, device) -> dict:
    """{"train": (n, 2), "dev": (n', 2)} from reference_logprobs.pt, written on the first start (atomically)."""
    path = run.path / REFERENCE_CACHE
    if path.exists():
        cache = torch.load(path, weights_only=True)
        if cache["train"].shape[0] == len(train_pairs) and cache["dev"].shape[0] == len(dev_pairs):
            return cache
        log.warning("%s does not match the pairs (another data selection?): recomputed", path)
    cache = {"train": reference_logprobs(cfg, train_pairs, pad_id, device),
             "dev": reference_logprobs(cfg, dev_pairs, pad_id, device)}
    with atomic_path(path) as tmp:
        torch.save(cache, tmp)
    return cache


def pair_losses(model, pairs: list[Pair], ref: torch.Tensor, pad_id: int, cfg: DPOConfig):
    """(m,) losses and (m,) implied rewards of chosen and rejected for a micro batch; ref (m, 2)."""
    with autocast(model.get_output_embeddings().weight.device, cfg.bf16):
        lp = summary_logprobs(model, collate(pairs, pad_id))
    m = len(pairs)
    ref = ref.to(lp.device)
    return dpo_losses(lp[:m], lp[m:], ref[:, 0], ref[:, 1], cfg.beta)


@torch.no_grad()
def evaluate(model, pairs: list[Pair], ref: torch.Tensor, pad_id: int, cfg: DPOConfig) -> dict[str, float]:
    """Dev loss, preference accuracy (chosen's implied reward above rejected's) and mean margin."""
    losses, margins = [], []
    for i in range(0, len(pairs), cfg.eval_batch_size):
        loss, rc, rr = pair_losses(model, pairs[i : i + cfg.eval_batch_size], ref[i : i + cfg.eval_batch_size],
                                   pad_id, cfg)
        losses.append(loss.cpu())
        margins.append((rc - rr).cpu())
    loss, margin = torch.cat(losses), torch.cat(margins)
    return {"eval/loss": float(loss.mean()), "eval/accuracy": float((margin > 0).float().mean()),
            "eval/margin": float(margin.mean()), "eval/n_pairs": len(pairs)}


# ------------------------------------------------------------------------------------------------ the loop

def train(cfg: DPOConfig, out: str, stop_after: int | None = None) -> dict:
    """Run (or resume) DPO into the run directory `out`. `stop_after` simulates an interruption (tests)."""
    run, procs = RunDir(out), processes(cfg.device)
    check_paths([("model", cfg.model), ("reference", cfg.reference)])
    if (done := run.open("dpo", cfg, write=procs.is_main)) is not None:
        return done
    seed_everything(cfg.seed)
    sizes = check_launch(cfg, procs)
    t_start = time.time()

    # (1) the policy and the pairs
    model, tokenizer = load_model(cfg.model)
    model.to(procs.device)
    trainable = freeze_lower_layers(model, cfg.freeze_layers)
    shard_layers(model, procs)
    model.train()
    pad_id = tokenizer.pad_token_id
    train_pairs, dev_pairs = load_pairs(cfg, tokenizer)
    per_epoch, total_steps = plan_steps(len(train_pairs), sizes.batch_size, cfg.epochs, cfg.max_steps)
    optimizer, scheduler = make_optimizer(model, cfg.optim, total_steps, procs.shard)
    log.info("dpo: %d train / %d dev pairs, %d steps, β=%g, batch %d = %d micro × %d accum × %d processes, %.1fM "
             "trainable params", len(train_pairs), len(dev_pairs), total_steps, cfg.beta, sizes.batch_size,
             sizes.micro_batch_size, sizes.grad_accum_steps, sizes.world_size, trainable / 1e6)

    # (2) the reference's log-probs, once
    ref = cached_reference(run, cfg, train_pairs, dev_pairs, pad_id, procs.device)

    # (3) resume
    step = 0
    if run.has_state():
        step = resume(run, model, optimizer, scheduler, procs)["step"]
        log.info("resumed from step %d", step)
    elif dev_pairs and procs.is_main:  # the start: the policy is the reference, so Δ = 0 and the loss is log 2
        run.log_metrics(0, evaluate(model, dev_pairs, ref["dev"], pad_id, cfg))

    lengths = [len(p.query_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in train_pairs]
    bar = progress_bar("dpo", total_steps, step, procs)
    for epoch, position, batch_idx in epoch_batches(lengths, sizes.batch_size, cfg.seed, per_epoch, step,
                                                    total_steps):
        t0 = time.time()
        # (4) one optimiser step: the mean loss over the global batch's pairs
        mine = batch_idx[share(len(batch_idx), procs)]
        stats = torch.zeros(3)  # summed loss, correct pairs, summed margin
        for i in range(0, len(mine), sizes.micro_batch_size):
            idx = mine[i : i + sizes.micro_batch_size]
            loss, rc, rr = pair_losses(model, [train_pairs[j] for j in idx], ref["train"][idx], pad_id, cfg)
            (loss.sum() / sizes.batch_size).backward()
            stats += torch.tensor([float(loss.detach().sum()), float((rc > rr).sum()), float((rc - rr).detach().sum())])
        grad_norm = optimizer_step(model, optimizer, scheduler, cfg.optim.max_grad_norm, procs)
        step += 1
        loss_sum, correct, margin = sum_across(stats.tolist(), procs)

        # (5) log, evaluate, checkpoint
        n = sizes.batch_size
        metrics = {"train/loss": loss_sum / n, "train/accuracy": correct / n, "train/margin": margin / n,
                   "train/grad_norm": float(grad_norm), "train/lr": scheduler.get_last_lr()[0],
                   "train/pairs_per_s": n / (time.time() - t0), "train/epoch": epoch + (position + 1) / per_epoch}
        last = step == total_steps
        if dev_pairs and on_period(step, cfg.eval_every, last):
            metrics |= evaluate(model, dev_pairs, ref["dev"], pad_id, cfg)
        if procs.is_main and (step % cfg.log_every == 0 or "eval/loss" in metrics or last):
            run.log_metrics(step, metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", acc=f"{metrics['train/accuracy']:.2f}")
        if on_period(step, cfg.save_every, last):
            save_checkpoint(run, model, optimizer, scheduler, {"step": step}, procs)
        if stop_after is not None and step >= stop_after and not last:
            return stopped_early(bar, step, procs)
    bar.close()

    # (6) the policy, then DONE.json
    weights = full_state_dict(model, procs)
    if not procs.is_main:
        barrier(procs)
        return run.read_done()
    save_model(model, tokenizer, run.model_dir, state_dict=weights)
    rows = run.read_metrics()
    evals = [r for r in rows if "eval/accuracy" in r]
    summary = {"stage": "dpo", "step": step, "beta": cfg.beta, "wall_s": time.time() - t_start,
               "train_pairs": len(train_pairs), "dev_pairs": len(dev_pairs),
               "dev_accuracy_before": evals[0]["eval/accuracy"] if evals and evals[0]["step"] == 0 else None,
               "dev_accuracy": evals[-1]["eval/accuracy"] if evals else None,
               "dev_margin": evals[-1]["eval/margin"] if evals else None,
               "train_loss_final": last_logged(rows, "train/loss")}
    run.write_done(summary)
    push_to_hub(run, cfg.push_to_hub)
    barrier(procs)
    log.info("dpo done: dev accuracy %s, margin %s after %d steps", summary["dev_accuracy"], summary["dev_margin"],
             step)
    return summary
