"""Small pieces every training stage shares: batch-size arithmetic, optimiser + schedule, the order of the steps'
batches, one optimiser step, checkpoints.

These are plain functions, not a base class: each stage's loop stays readable on its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from rlhflab.core.config import require, setting
from rlhflab.core.log import get_logger
from rlhflab.core.progress import LineProgress, progress
from rlhflab.core.rundir import RunDir, RunError, atomic_path
from rlhflab.core.seed import rng_state, set_rng_state
from rlhflab.models.family import decoder_layers
from rlhflab.train.distributed import (
    Processes,
    barrier,
    clip_grad_norm,
    full_optimizer_state,
    full_state_dict,
    load_full_optimizer_state,
    load_full_weights,
    sum_gradients,
)

log = get_logger(__name__)


@dataclass
class OptimConfig:
    lr: float = setting(5e-5, "peak learning rate")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    betas: tuple[float, float] = setting((0.9, 0.95), "AdamW (beta1, beta2)")
    eps: float = setting(1e-8, "AdamW epsilon")
    warmup_ratio: float = setting(0.05, "linear warmup over this fraction of the steps, then cosine decay")
    min_lr_ratio: float = setting(0.1, "cosine decays to lr * min_lr_ratio")
    max_grad_norm: float = setting(1.0, "clip the global gradient norm to this")


@dataclass(frozen=True)
class BatchSizes:
    batch_size: int  # sequences per optimiser step, all processes together
    micro_batch_size: int  # sequences per forward/backward on one process
    world_size: int
    grad_accum_steps: int  # micro batches per optimiser step on one process


def check_batch_fields(batch_size: int, micro_batch_size: int, key: str = "batch_size") -> None:
    """A stage config's own batch check (its `__post_init__`): both positive, and whole micro batches per step.
    `key` is the field `batch_size` comes from (PPO: mini_batch_size). The launch's share is `batch_sizes`."""
    require(batch_size > 0, key, f"must be positive, got {batch_size}")
    require(micro_batch_size > 0, "micro_batch_size", f"must be positive, got {micro_batch_size}")
    require(batch_size % micro_batch_size == 0, key,
            f"{key}={batch_size} is not a multiple of micro_batch_size={micro_batch_size}")


def batch_sizes(batch_size: int, micro_batch_size: int, world_size: int = 1, name: str = "batch_size"
                ) -> BatchSizes:
    """The one place derived sizes are computed. They must divide exactly: a silently rounded batch changes the
    learning dynamics without telling anyone. `name` is the setting `batch_size` came from (for the error)."""
    if batch_size <= 0 or micro_batch_size <= 0 or world_size <= 0:
        raise ValueError(f"{name}, micro_batch_size and the number of processes must be positive")
    per_process = micro_batch_size * world_size
    if batch_size % per_process:
        raise ValueError(
            f"{name}={batch_size} is not a multiple of micro_batch_size × world_size (processes) = "
            f"{micro_batch_size} × {world_size} = {per_process}"
        )
    return BatchSizes(batch_size, micro_batch_size, world_size, batch_size // per_process)


class BatchFields(Protocol):
    batch_size: int  # sequences (or pairs) per optimiser step, all processes together
    micro_batch_size: int  # per forward/backward on one process


def check_launch(cfg: BatchFields, procs: Processes) -> BatchSizes:
    """SFT's and RM's checks of the launch (PPO has its own): an equal share of whole micro batches for each
    process -> the batch sizes."""
    return batch_sizes(cfg.batch_size, cfg.micro_batch_size, procs.world_size)


def check_compile(compile: bool, procs: Processes) -> None:
    """compile=true is refused under FSDP: fully_shard's per-layer hooks inside compiled layers are untested."""
    if compile and procs.shard:
        raise ValueError("compile=true with FSDP (fsdp.yaml): compiled layers under fully_shard's hooks are not "
                         "tested yet; launch with multi_gpu.yaml or a single process, or set compile=false")


def plan_steps(n_examples: int, batch_size: int, epochs: int, max_steps: int | None) -> tuple[int, int]:
    """(steps per epoch, total steps). Incomplete last batches are dropped so every step has the same size."""
    per_epoch = n_examples // batch_size
    if per_epoch == 0:
        raise ValueError(f"{n_examples} training examples is fewer than one batch of {batch_size}")
    total = per_epoch * epochs
    return per_epoch, min(total, max_steps) if max_steps else total


def length_grouped_order(lengths: list[int], batch_size: int, seed: int) -> list[int]:
    """A shuffled order in which each batch holds examples of similar length (less padding, same epoch).

    Shuffle, sort within mega-batches of 16 batches by length, then shuffle the batches themselves. The order
    depends only on (lengths, batch_size, seed), so a resumed run recomputes it instead of storing it.
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    mega = 16 * batch_size
    chunks = [sorted(perm[i : i + mega], key=lambda j: -lengths[j]) for i in range(0, len(perm), mega)]
    flat = [j for chunk in chunks for j in chunk]
    batches = [flat[i : i + batch_size] for i in range(0, len(flat) - batch_size + 1, batch_size)]
    order = torch.randperm(len(batches), generator=g).tolist()
    return [j for b in order for j in batches[b]]


def epoch_batches(lengths: list[int], batch_size: int, seed: int, per_epoch: int, start: int, total: int
                  ) -> Iterator[tuple[int, int, list[int]]]:
    """(epoch, position in the epoch, example indices) of each step from `start` to `total`.

    Epoch e's order is `length_grouped_order(lengths, batch_size, seed + e)`: it depends only on (seed, epoch), so
    a resumed run recomputes it and needs nothing more than its step.
    """
    order: list[int] = []
    order_epoch = -1
    for step in range(start, total):
        epoch, position = divmod(step, per_epoch)
        if epoch != order_epoch:
            order, order_epoch = length_grouped_order(lengths, batch_size, seed + epoch), epoch
        yield epoch, position, order[position * batch_size : (position + 1) * batch_size]


Phase = tuple[Sequence[int], int]  # (the examples' indices, epochs over them)


def plan_phases(phases: Sequence[Phase], batch_size: int, max_steps: int | None) -> tuple[list[int], int]:
    """(steps per epoch of each phase, total steps) of phases trained one after another."""
    per_epoch = [plan_steps(len(members), batch_size, epochs, None)[0] for members, epochs in phases]
    total = sum(n * epochs for n, (_, epochs) in zip(per_epoch, phases))
    return per_epoch, min(total, max_steps) if max_steps else total


def phased_batches(lengths: list[int], phases: Sequence[Phase], batch_size: int, seed: int, start: int,
                   total: int) -> Iterator[tuple[float, list[int]]]:
    """(epochs done, example indices) of each step from `start` to `total`, the phases one after another (e.g.
    a pass over extra data, then the main data's epochs). Within a phase, epoch e's order is
    `length_grouped_order` of its members with seed `seed + e` for the last phase — so a single phase gives
    `epoch_batches`' batches exactly — and a seed of its own for each earlier phase. Depends only on the step:
    a resumed run recomputes it."""
    per_epoch, _ = plan_phases(phases, batch_size, None)
    offset, epochs_before = 0, 0
    for k, ((members, epochs), n) in enumerate(zip(phases, per_epoch)):
        steps = n * epochs
        phase_seed = seed if k == len(phases) - 1 else seed + 100_003 * (len(phases) - 1 - k)
        first, last = max(start, offset) - offset, min(total, offset + steps) - offset
        if first < last:
            sub = [lengths[i] for i in members]
            for epoch, position, idx in epoch_batches(sub, batch_size, phase_seed, n, first, last):
                yield epochs_before + epoch + (position + 1) / n, [members[i] for i in idx]
        offset, epochs_before = offset + steps, epochs_before + epochs


def progress_bar(stage: str, total_steps: int, step: int, procs: Processes) -> tqdm | LineProgress:
    """The optimiser steps' progress bar, starting at `step` (a resumed run), shown by the main process only."""
    return progress(total_steps, stage, "step", step, enabled=procs.is_main)


def stopped_early(bar: tqdm | LineProgress, step: int, procs: Processes) -> dict[str, int]:
    """A simulated interruption after `step` (a stage's `stop_after`, for tests): what remains is the last
    checkpoint, as after a crash; every process gets here, so they wait for each other before returning."""
    bar.close()
    barrier(procs)
    return {"stopped_at": step}


def on_period(step: int, every: int, last: bool) -> bool:
    """Is `step` one to evaluate or checkpoint at: every `every` steps (0 = never) and always at the last."""
    return bool(every and step % every == 0) or last


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning-rate multiplier at `step` (0-based): linear warmup, then cosine decay to min_lr_ratio."""
    warmup = max(1, math.ceil(cfg.warmup_ratio * total_steps)) if cfg.warmup_ratio > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, total_steps: int, sharded: bool = False):
    """AdamW over the trainable parameters (frozen ones are left out, which also saves their Adam state)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                  fused=can_fuse(params, sharded) or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, total_steps, cfg))
    return optimizer, scheduler


def can_fuse(params: list[torch.nn.Parameter], sharded: bool) -> bool:
    """Can AdamW run fused (one kernel for a whole step)? On the CPU it is ~6× faster than torch's default there,
    the per-tensor for-loop: 0.13 s against 0.79 s per step for SmolLM2-135M's 135M fp32 parameters (issue 17).
    Torch fuses floating-point tensors on the CPU or CUDA; under FSDP2 (sharded) the default is kept, as torch's
    fused kernel refuses the mix of sharded DTensor layers and whole embeddings."""
    return not sharded and bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                                for p in params)


def optimizer_step(model: torch.nn.Module, optimizer, scheduler, max_norm: float, procs: Processes) -> torch.Tensor:
    """The step after the backward passes: gradients summed over processes, their global norm clipped to
    `max_norm`, the optimiser and the schedule stepped, gradients freed. -> the norm before clipping (a scalar)."""
    sum_gradients(model, procs)
    grad_norm = clip_grad_norm([p for p in model.parameters() if p.requires_grad], max_norm, procs)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def push_to_hub(run: RunDir, repo: str | None) -> None:
    """Upload a finished run's model/ (weights, tokenizer, model card) to the Hub repo `repo` (created private
    if missing). Runs after DONE.json: a failed upload loses nothing, and the error says how to retry it."""
    if not repo:
        return
    from huggingface_hub import HfApi, get_token

    retry = f"the model is saved in {run.model_dir}; retry with `hf upload {repo} {run.model_dir}`"
    if not get_token():
        raise RunError(f"push_to_hub={repo}: no Hugging Face token (run `hf auth login` or set HF_TOKEN); {retry}")
    api = HfApi()
    try:
        api.create_repo(repo, private=True, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(run.model_dir),
                          commit_message=f"rlhflab: {run.read_config().get('stage', 'model')} {run.path.name}")
    except Exception as err:  # noqa: BLE001 - network, auth, permissions: one message with the way to retry
        raise RunError(f"push_to_hub={repo}: the upload failed ({type(err).__name__}: {err}); {retry}") from err
    log.info("pushed %s to https://huggingface.co/%s", run.model_dir, repo)


def freeze_lower_layers(model: torch.nn.Module, n_layers: int) -> int:
    """Freeze the token embeddings and the lowest `n_layers` decoder layers; returns the trainable count.

    With tied embeddings the output head is frozen too — the price of not storing Adam state for 28M
    embedding parameters. Backward stops at the first trainable layer, which is where the time is saved.
    """
    if n_layers <= 0:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers = decoder_layers(model, "freeze_layers")
    if n_layers > len(layers):
        raise ValueError(f"freeze_layers={n_layers} but the model has only {len(layers)} layers")
    model.get_input_embeddings().requires_grad_(False)
    for layer in layers[:n_layers]:
        layer.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_checkpoint(run: RunDir, model, optimizer, scheduler, trainer: dict[str, Any], procs: Processes) -> None:
    """One model's training state; see `save_state`."""
    save_state(run, {"": (model, optimizer, scheduler)}, trainer, procs)


def load_checkpoint(run: RunDir, model, optimizer, scheduler) -> dict[str, Any]:
    return load_state(run, {"": (model, optimizer, scheduler)})[0]


def resume(run: RunDir, model, optimizer, scheduler, procs: Processes) -> dict[str, Any]:
    """Restore one model's state/ and drop the metrics logged after it (they will be logged again) -> the trainer
    position `save_checkpoint` stored ({"step": ..., ...})."""
    trainer = load_checkpoint(run, model, optimizer, scheduler)
    if procs.is_main:
        run.truncate_metrics(trainer["step"])
    return trainer


def save_state(run: RunDir, parts: dict[str, tuple], trainer: dict[str, Any], procs: Processes,
               tensors: dict[str, Any] | None = None) -> None:
    """Write state/ atomically as one directory: for each named (model, optimizer, scheduler) its trainable
    weights, optimiser and schedule; the global RNG; `tensors` (e.g. a sampling generator's state); the position.

    Weights live in state/ too (not only in model/) so that a crash between two writes can never pair new
    weights with an old optimiser. Every process calls this: sharded (FSDP) weights and Adam moments are gathered,
    one tensor at a time, into the main process, which writes them; so the files are the same at any number of
    processes.
    """
    full = {name: (full_state_dict(model, procs, trainable_only=True), full_optimizer_state(optimizer, procs),
                   scheduler.state_dict()) for name, (model, optimizer, scheduler) in parts.items()}
    if not procs.is_main:
        return
    with atomic_path(run.state_dir) as tmp:
        tmp.mkdir()
        for name, (weights, optimizer_state, scheduler_state) in full.items():
            prefix = f"{name}_" if name else ""
            torch.save(weights, tmp / f"{prefix}weights.pt")
            torch.save(optimizer_state, tmp / f"{prefix}optimizer.pt")
            torch.save(scheduler_state, tmp / f"{prefix}scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        torch.save(tensors or {}, tmp / "tensors.pt")
        (tmp / "trainer.json").write_text(json.dumps(trainer, indent=2))


def load_state(run: RunDir, parts: dict[str, tuple]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore what `save_state` wrote into the given parts -> (trainer position, tensors)."""
    state = run.state_dir
    for name, (model, optimizer, scheduler) in parts.items():
        prefix = f"{name}_" if name else ""
        weights = torch.load(state / f"{prefix}weights.pt", weights_only=True)
        missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in weights]
        if missing:
            raise RuntimeError(f"{state}: checkpoint lacks trainable weights {missing[:3]} — config changed?")
        load_full_weights(model, weights)
        load_full_optimizer_state(optimizer, torch.load(state / f"{prefix}optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(state / f"{prefix}scheduler.pt", weights_only=True))
    set_rng_state(torch.load(state / "rng.pt", weights_only=True))
    tensors_path = state / "tensors.pt"
    tensors = torch.load(tensors_path, weights_only=True) if tensors_path.exists() else {}
    return json.loads((state / "trainer.json").read_text()), tensors


def last_logged(rows: list[dict[str, Any]], key: str) -> Any:
    """The last value of `key` in metrics rows (run.read_metrics()), or None when it was never logged."""
    return next((r[key] for r in reversed(rows) if key in r), None)


def count_tokens(mask: torch.Tensor) -> int:
    return int(mask.sum().item())


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    """A samples table (JSONL), written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
