"""More than one process (devices or machines) for every stage: plain data parallelism, spelled out.

`accelerate launch` (or torchrun) starts one process per device; `processes()` joins them through accelerate's
`PartialState` (gloo on CPUs, NCCL on GPUs) and picks this process's device. Every process holds the whole model;
each takes its contiguous share of each global batch, and after backward the gradients are summed across
processes (`sum_gradients`). The stages normalise their losses by global counts, so the summed gradient is the
one a single process would compute on the whole batch: configs keep meaning the global batch.

Why not `accelerator.prepare(model)` (DDP)? The loops call parts of a model directly (`model.base_model`, the RM's
shared-query forward, the upper layers on frozen-layer states); DDP syncs only what goes through its own
`forward`, and it averages where we want sums of globally normalised losses. One explicit all-reduce per
optimiser step is simpler and easy to check.

With one process (no launcher) nothing here touches torch.distributed and every helper returns its input: a
plain `rlhflab sft ...` run is exactly what it was.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from rlhflab.models.device import resolve_device


@dataclass(frozen=True)
class Processes:
    rank: int  # this process, 0 … world_size − 1
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """The one process that writes the run directory, logs metrics and shows progress bars."""
        return self.rank == 0


def processes(device: str = "auto") -> Processes:
    """This process's place in the launch: (0, 1, resolve_device(device)) unless a launcher started several."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes(0, 1, resolve_device(device))
    from accelerate import PartialState

    for name in ("DEEPSPEED", "FSDP"):
        if os.environ.get(f"ACCELERATE_USE_{name}", "false").lower() == "true":
            raise RuntimeError(f"launched with {name}: rlhflab runs plain data parallel (a whole model on every "
                               "process, gradients summed by its own loops) and does not shard models yet; launch "
                               "with configs/accelerate/multi_gpu.yaml (or cpu_2proc.yaml) instead")
    cpu = device == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)  # without cpu=True on a CPU-only machine it would not join the others
    if state.num_processes <= 1:
        raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate did not join a process group")
    return Processes(state.process_index, state.num_processes,
                     torch.device("cpu") if state.device.type == "cpu" else state.device)


def check_divides(name: str, value: int, world_size: int) -> None:
    """Each process takes an equal share of a global size; say which setting does not divide."""
    if value % world_size:
        raise ValueError(f"{name}={value} is not a multiple of the number of processes ({world_size}): each "
                         "process takes an equal share of it")


def share(n: int, procs: Processes) -> slice:
    """This process's contiguous share of n items (n divisible by world_size; see check_divides)."""
    size = n // procs.world_size
    return slice(procs.rank * size, (procs.rank + 1) * size)


def chunk_range(n_chunks: int, procs: Processes) -> range:
    """This process's contiguous run of n_chunks work items (uneven splits allowed, e.g. eval batches)."""
    return range(n_chunks * procs.rank // procs.world_size, n_chunks * (procs.rank + 1) // procs.world_size)


def sum_across(values: list[float], procs: Processes) -> list[float]:
    """Element-wise sums over all processes of a few float counters (losses, token counts)."""
    if procs.world_size == 1:
        return values
    from accelerate.utils import reduce

    t = reduce(torch.tensor(values, dtype=torch.float64, device=procs.device), reduction="sum")
    return t.tolist()


def sum_gradients(model: torch.nn.Module, procs: Processes) -> None:
    """Sum the gradients of `model`'s trainable parameters over all processes: one flat all-reduce."""
    if procs.world_size == 1:
        return
    from accelerate.utils import reduce

    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not grads:
        return
    flat = reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="sum")
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def gather_rows(t: torch.Tensor | None, procs: Processes) -> torch.Tensor | None:
    """Concatenate every process's rows (dim 0) in rank order; all other dims must already agree."""
    if procs.world_size == 1 or t is None:
        return t
    from accelerate.utils import gather

    return gather(t.contiguous().to(procs.device)).to(t.device)  # NCCL gathers only GPU tensors


def pad_and_gather_rows(t: torch.Tensor, procs: Processes, pad: float | int, left: bool = False) -> torch.Tensor:
    """gather_rows for (B, T) tensors whose T differs between processes: pad dim 1 to the widest first."""
    if procs.world_size == 1:
        return t
    from accelerate.utils import pad_across_processes

    padded = pad_across_processes(t.to(procs.device), dim=1, pad_index=pad, pad_first=left)
    return gather_rows(padded, procs).to(t.device)


def gather_objects(items: list[Any], procs: Processes) -> list[Any]:
    """Every process's list, concatenated in rank order (small Python objects: per-batch eval results)."""
    if procs.world_size == 1:
        return items
    from accelerate.utils import gather_object

    return gather_object(items)


def barrier(procs: Processes) -> None:
    if procs.world_size > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def leave_process_group() -> None:
    """Destroy the process group, if this process joined one, before the interpreter exits.

    Left to interpreter shutdown, gloo's worker threads can outlive the Python objects they hold, and a process
    then dies with SIGABRT ("terminate called without an active exception") after its work is done (seen in CI;
    pytorch/pytorch#190489). Every launched stage calls this on its way out, on success and on error.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
