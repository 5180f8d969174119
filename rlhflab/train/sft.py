"""Supervised fine-tuning on posts and their human reference summaries (the paper's "supervised baseline").

The loop in `train` reads top to bottom:
  (1) load the model and tokenise the posts into (query, reference) pairs
  (2) resume from state/ when a checkpoint exists
  (3) for each optimiser step: accumulate the cross-entropy of micro batches, clip, step, schedule
  (4) log, evaluate, write a samples table and checkpoint on their periods
  (5) save model/, then DONE.json

With several processes (`accelerate launch`, see train/distributed.py) each takes its contiguous share of every
batch; the loss is divided by the token count of the whole global batch and the gradients are summed across
processes, so the step is the one a single process makes. Only the main process writes the run directory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from rlhflab.core.log import get_logger
from rlhflab.core.rundir import RunDir
from rlhflab.core.seed import seed_everything
from rlhflab.data.format import encode_query, format_queries, format_reference
from rlhflab.data.preflight import check_files, check_paths, posts_check
from rlhflab.data.loaders import load_posts
from rlhflab.data.records import Post
from rlhflab.models.compiled import compiled_layers
from rlhflab.models.device import Bf16, autocast
from rlhflab.models.generation import decode_responses, generate, pad_queries
from rlhflab.models.loading import load_model, save_model
from rlhflab.core.config import require, setting
from rlhflab.train.common import (
    OptimConfig,
    check_batch_fields,
    check_compile,
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
    write_table,
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
    training_state_mib,
)

log = get_logger(__name__)


@dataclass
class SFTData:
    train: str = setting("../shared/data/tldr/train.jsonl.gz", "local JSONL(.gz) or a hub dataset name")
    eval: str | None = setting(
        "../shared/data/tldr/eval.jsonl.gz",
        "posts held out for the eval loss and the sample table (None: no eval)")
    limit_train: int | None = setting(None, "use only the first N training posts (None: all)")
    limit_eval: int | None = setting(64, "eval loss on this many posts (the first ones, so it is the same every time)")
    max_query_tokens: int = setting(512, "token budget of a query, the paper's (the post is cut at a newline to fit)")
    max_response_tokens: int = setting(64, "token budget of a reference (a longer one is cut and loses its EOS)")
    skip_bad: bool = setting(False, "skip (and count) malformed rows instead of stopping at the first")

    def __post_init__(self) -> None:
        for key in ("limit_train", "limit_eval"):
            value = getattr(self, key)
            require(value is None or value >= 0, key, f"must be >= 0 or None, got {value}")


@dataclass
class SFTConfig:
    # keys that only affect the steps still to come: a resumed run may change them (recorded in config.yaml)
    RESUMABLE = ("log_every", "eval_every", "save_every", "n_samples", "sample_max_tokens", "report_to",
                 "push_to_hub")

    model: str = setting("smollm2-135m", "embedded name, .gguf file, model directory, run directory or hub id")
    seed: int = setting(1, "random seed (the order of the training batches, torch's RNG)")
    data: SFTData = setting(default_factory=SFTData, help="the posts to train and evaluate on")
    optim: OptimConfig = setting(default_factory=OptimConfig, help="AdamW and its learning-rate schedule")
    epochs: int = setting(1, "passes over the training posts")
    max_steps: int | None = setting(None, "stop early after this many optimiser steps")
    batch_size: int = setting(16, "sequences per optimiser step")
    micro_batch_size: int = setting(4, "sequences per forward/backward (gradient accumulation makes up the rest)")
    loss_on: Literal["response", "sequence"] = setting(
        "response",
        "cross-entropy on the reference summary only (response) or on the query too (sequence)")
    bf16: Bf16 = setting(
        False, "bf16 autocast for forward/backward; weights and optimiser stay fp32; auto: bf16 only where native")
    compile: bool = setting(False, "torch.compile each decoder layer for the training forward+backward")
    device: str = setting("auto", "auto (the first CUDA GPU if any, else the CPU) or a torch device: cpu, cuda:1")
    freeze_layers: int = setting(0, "freeze the embeddings and this many lowest layers")
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = setting(
        "none", "also send metrics.jsonl's rows to TensorBoard (<run>/tensorboard/), W&B or trackio")
    push_to_hub: str | None = setting(
        None, "after the run: upload model/ (with its model card) to this Hub repo, e.g. me/tldr-sft; needs a token")
    log_every: int = setting(1, "write metrics.jsonl every N optimiser steps")
    eval_every: int = setting(50, "eval loss and samples every N optimiser steps; 0 = only at the start and the end")
    save_every: int = setting(50, "checkpoint state/ every N optimiser steps (and after the last)")
    n_samples: int = setting(5, "greedy summaries of the first eval posts at each eval")
    sample_max_tokens: int = setting(48, "length limit of the greedy summaries in the samples table")

    def __post_init__(self) -> None:
        check_batch_fields(self.batch_size, self.micro_batch_size)


@dataclass(frozen=True)
class Example:
    query_ids: list[int]
    response_ids: list[int]  # the reference, with a leading space and EOS (unless cut)


def build_examples(posts: list[Post], tokenizer, data: SFTData) -> tuple[list[Post], list[Example]]:
    """(the posts whose query fits `max_query_tokens`, their tokenised query and reference). A post that cannot fit
    even cut (a title longer than the budget) is dropped with a count, not an error halfway through training."""
    for post in posts:
        if not post.reference:
            raise ValueError(f"post {post.id} has no reference summary to train on")
    posts, queries, dropped = format_queries(posts, tokenizer, data.max_query_tokens)
    if dropped:
        log.warning("sft: %d posts do not fit max_query_tokens=%d even cut, left out", dropped, data.max_query_tokens)
    examples = []
    for post, query in zip(posts, queries):
        reference = format_reference(post.reference, tokenizer.eos_token)
        query_ids = encode_query(tokenizer, query)
        response_ids = tokenizer.encode(reference, add_special_tokens=False)[: data.max_response_tokens]
        examples.append(Example(query_ids, response_ids))
    return posts, examples


def collate(examples: list[Example], pad_id: int, loss_on: str) -> dict[str, torch.Tensor]:
    """Right-pad query+response. labels = -100 where no loss is taken (padding, and the query unless
    loss_on == "sequence"). Shapes: input_ids, attention_mask, labels (B, T)."""
    T = max(len(e.query_ids) + len(e.response_ids) for e in examples)
    input_ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), T), dtype=torch.long)
    labels = torch.full((len(examples), T), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        ids = e.query_ids + e.response_ids
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        start = 0 if loss_on == "sequence" else len(e.query_ids)
        labels[i, start : len(ids)] = input_ids[i, start : len(ids)]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def token_losses(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled tokens, and their count.

    The output head runs only at positions that predict a labelled token. With the loss on the summary, that is
    ~30 of ~400 positions: the (T, V=49152) logits of the query — a fifth of the model's FLOPs and most of its
    activation memory — are never computed.
    """
    device = model.get_output_embeddings().weight.device
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              use_cache=False).last_hidden_state  # a KV cache: unread, and recompiles compiled layers
    targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    keep = targets != -100  # (B, T-1)
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])  # (N, V), N = labelled tokens
    loss_sum = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
    return loss_sum, int(keep.sum().item())


@torch.no_grad()
def eval_loss(model, examples: list[Example], pad_id: int, cfg: SFTConfig, procs: Processes) -> float:
    """Mean cross-entropy per reference token on the eval set. With several processes each runs a share of the
    batches and the per-batch sums are summed in batch order: the same number as one process."""
    starts = list(range(0, len(examples), cfg.micro_batch_size))
    sums = []
    for k, keep in lockstep_chunks(len(starts), procs):
        batch = collate(examples[starts[k] : starts[k] + cfg.micro_batch_size], pad_id, "response")
        with autocast(model.device, cfg.bf16):
            loss_sum, n = token_losses(model, batch)
        if keep:
            sums.append((loss_sum.item(), n))
    total, count = 0.0, 0
    for loss_sum, n in gather_objects(sums, procs):
        total, count = total + loss_sum, count + n
    return total / max(count, 1)


@torch.no_grad()
def sample_table(model, tokenizer, posts: list[Post], examples: list[Example], cfg: SFTConfig) -> list[dict]:
    """Greedy summaries of a few eval posts, next to their references."""
    query_ids, query_mask = pad_queries(tokenizer, [e.query_ids for e in examples])
    with autocast(model.device, cfg.bf16):
        gen = generate(model, tokenizer, query_ids, query_mask, max_new_tokens=cfg.sample_max_tokens, temperature=0.0)
    texts = decode_responses(tokenizer, gen)
    return [{"post_id": p.id, "reference": p.reference, "response": t} for p, t in zip(posts, texts)]


def write_samples(run: RunDir, step: int, model, tokenizer, posts: list[Post], examples: list[Example],
                  cfg: SFTConfig, procs: Processes) -> None:
    """samples/step_N.jsonl. Every process generates (a sharded model runs only when all do); the main one writes."""
    rows = sample_table(model, tokenizer, posts[: cfg.n_samples], examples[: cfg.n_samples], cfg)
    if procs.is_main:
        write_table(run.samples_dir / f"step_{step:06d}.jsonl", rows)


def load_data(cfg: SFTConfig, tokenizer):
    train_posts = load_posts(cfg.data.train, limit=cfg.data.limit_train, skip_bad=cfg.data.skip_bad)
    eval_posts = (
        load_posts(cfg.data.eval, limit=cfg.data.limit_eval, skip_bad=cfg.data.skip_bad) if cfg.data.eval else []
    )
    return (*build_examples(list(train_posts), tokenizer, cfg.data), *build_examples(list(eval_posts), tokenizer,
                                                                                     cfg.data))


def train(cfg: SFTConfig, out: str, stop_after: int | None = None) -> dict:
    """Run (or resume) SFT into the run directory `out`. `stop_after` simulates an interruption (tests)."""
    run, procs = RunDir(out), processes(cfg.device)
    check_files([posts_check("data.train", cfg.data.train), posts_check("data.eval", cfg.data.eval)])  # step 0
    check_paths([("model", cfg.model)])
    if (done := run.open("sft", cfg, write=procs.is_main)) is not None:
        return done
    seed_everything(cfg.seed)  # the same seed on every process: they hold the same model
    sizes = check_launch(cfg, procs)
    check_compile(cfg.compile, procs)
    t_start = time.time()

    # (1) model and data
    model, tokenizer = load_model(cfg.model)
    model.to(procs.device)
    trainable = freeze_lower_layers(model, cfg.freeze_layers)
    if shard_layers(model, procs):
        log.info("FSDP: each decoder layer sharded across %d processes", procs.world_size)
    model.train()  # dropout is already 0 in the config; train() only matters for layers that check it
    train_posts, train_ex, eval_posts, eval_ex = load_data(cfg, tokenizer)
    per_epoch, total_steps = plan_steps(len(train_ex), sizes.batch_size, cfg.epochs, cfg.max_steps)
    optimizer, scheduler = make_optimizer(model, cfg.optim, total_steps, procs.shard)
    pad_id = tokenizer.pad_token_id
    lengths = [len(e.query_ids) + len(e.response_ids) for e in train_ex]
    log.info("sft: %d train / %d eval examples, %d steps (%d per epoch), batch %d = %d micro × %d accum × %d "
             "processes, %.1fM trainable params", len(train_ex), len(eval_ex), total_steps, per_epoch,
             sizes.batch_size, sizes.micro_batch_size, sizes.grad_accum_steps, sizes.world_size, trainable / 1e6)

    # (2) resume
    step, tokens_seen = 0, 0
    if run.has_state():
        trainer = resume(run, model, optimizer, scheduler, procs)
        step, tokens_seen = trainer["step"], trainer["tokens_seen"]
        log.info("resumed from step %d", step)
    elif eval_ex:  # the "before" picture: eval loss and summaries of the untrained model
        before = eval_loss(model, eval_ex, pad_id, cfg, procs)
        if procs.is_main:
            run.log_metrics(0, {"eval/loss": before})
        if cfg.n_samples:
            write_samples(run, 0, model, tokenizer, eval_posts, eval_ex, cfg, procs)

    bar = progress_bar("sft", total_steps, step, procs)
    for epoch, position, batch_idx in epoch_batches(lengths, sizes.batch_size, cfg.seed, per_epoch, step,
                                                    total_steps):
        t0 = time.time()

        # (3) one optimiser step: the loss is the mean over all reference tokens of the whole (global) batch;
        #     this process runs its share of it, and the gradients are summed over processes before clipping
        mine = batch_idx[share(len(batch_idx), procs)]
        micro = [mine[i : i + sizes.micro_batch_size] for i in range(0, len(mine), sizes.micro_batch_size)]
        batches = [collate([train_ex[j] for j in m], pad_id, cfg.loss_on) for m in micro]
        n_target_here = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
        n_target = int(sum_across([n_target_here], procs)[0])
        loss_total = 0.0
        for b in batches:
            with autocast(model.device, cfg.bf16), compiled_layers(model, cfg.compile):
                loss_sum, _ = token_losses(model, b)
            (loss_sum / n_target).backward()
            loss_total += loss_sum.item()
        grad_norm = optimizer_step(model, optimizer, scheduler, cfg.optim.max_grad_norm, procs)
        step += 1
        loss_total, n_tokens = sum_across([loss_total, sum(int(b["attention_mask"].sum()) for b in batches)], procs)
        n_tokens = int(n_tokens)
        tokens_seen += n_tokens
        dt = time.time() - t0

        # (4) log, evaluate, sample, checkpoint
        metrics = {"train/loss": loss_total / n_target, "train/grad_norm": float(grad_norm),
                   "train/lr": scheduler.get_last_lr()[0], "train/tokens_per_s": n_tokens / dt,
                   "train/tokens_seen": tokens_seen, "train/epoch": epoch + (position + 1) / per_epoch}
        if step == 1:  # once Adam's moments exist: what sharding (FSDP) divides between processes
            metrics["train/state_mib_per_process"] = training_state_mib(model, optimizer)
        last = step == total_steps
        if eval_ex and on_period(step, cfg.eval_every, last):
            metrics["eval/loss"] = eval_loss(model, eval_ex, pad_id, cfg, procs)
            if cfg.n_samples:
                write_samples(run, step, model, tokenizer, eval_posts, eval_ex, cfg, procs)
        if procs.is_main and (step % cfg.log_every == 0 or step == 1 or "eval/loss" in metrics or last):
            run.log_metrics(step, metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", tok_s=f"{metrics['train/tokens_per_s']:.0f}")
        if on_period(step, cfg.save_every, last):
            save_checkpoint(run, model, optimizer, scheduler, {"step": step, "tokens_seen": tokens_seen}, procs)
        if stop_after is not None and step >= stop_after and not last:
            return stopped_early(bar, step, procs)
    bar.close()

    # (5) the model for the next stage, then DONE.json (the main process writes; the others wait and read it)
    weights = full_state_dict(model, procs)  # sharded: gathered into the main process
    if not procs.is_main:
        barrier(procs)
        return run.read_done()
    save_model(model, tokenizer, run.model_dir, state_dict=weights)
    metrics_rows = run.read_metrics()
    evals = [r["eval/loss"] for r in metrics_rows if "eval/loss" in r]
    summary = {"stage": "sft", "step": step, "wall_s": time.time() - t_start, "tokens_seen": tokens_seen,
               "eval_loss_first": evals[0] if evals else None, "eval_loss_final": evals[-1] if evals else None,
               "train_loss_final": last_logged(metrics_rows, "train/loss")}
    run.write_done(summary)
    push_to_hub(run, cfg.push_to_hub)
    barrier(procs)
    log.info("sft done: %s", summary)
    return summary
