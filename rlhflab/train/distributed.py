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

Sharded (`accelerate launch --config_file configs/accelerate/fsdp.yaml`): `shard_layers` applies FSDP2
(`fully_shard`) to every decoder layer of the trainable models, so each process stores 1/world_size of those
layers' weights, gradients and Adam state and gathers a layer's weights only while it runs. That works with the
loops' direct calls into a model because every layer is its own FSDP unit with its own hooks. Embeddings, final
norm, output and value heads (tied in Llama-style models; ~21 % of SmolLM2-135M's parameters, ~4 % of a 7B
Llama's) stay whole on every process and are summed like the unsharded case. FSDP averages the layers'
gradients; `sum_gradients` turns that back into a sum. Checkpoints and saved models hold full tensors (gathered here), so they are the same files as unsharded
runs write, and a sharded run resumes from them at any number of processes.

With one process (no launcher) nothing here touches torch.distributed and every helper returns its input: a
plain `rlhflab sft ...` run is exactly what it was.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from rlhflab.models.device import resolve_device
from rlhflab.models.family import decoder_layers
from rlhflab.models.generation import Generation


@dataclass(frozen=True)
class Processes:
    rank: int  # this process, 0 … world_size − 1
    world_size: int
    device: torch.device
    shard: bool = False  # launched with FSDP: shard the trainable models' decoder layers (shard_layers)

    @property
    def is_main(self) -> bool:
        """The one process that writes the run directory, logs metrics and shows progress bars."""
        return self.rank == 0


def processes(device: str = "auto") -> Processes:
    """This process's place in the launch: (0, 1, resolve_device(device)) unless a launcher started several."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes(0, 1, resolve_device(device))
    from accelerate import PartialState

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise RuntimeError("launched with DeepSpeed: rlhflab's loops own backward and the optimiser step, which "
                           "the DeepSpeed engine must own; for sharding use configs/accelerate/fsdp.yaml (FSDP2), "
                           "for plain data parallel multi_gpu.yaml")
    shard = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    cpu = device == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)  # without cpu=True on a CPU-only machine it would not join the others
    if state.num_processes <= 1:
        raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate did not join a process group")
    return Processes(state.process_index, state.num_processes,
                     torch.device("cpu") if state.device.type == "cpu" else state.device, shard)


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


def lockstep_chunks(n_chunks: int, procs: Processes) -> list[tuple[int, bool]]:
    """chunk_range as (index, keep) pairs. Sharded, every process must run as many forward passes as the others
    (each gathers layers from all), so one with fewer chunks repeats a chunk and drops its result (keep=False)."""
    mine = [(k, True) for k in chunk_range(n_chunks, procs)]
    if not procs.shard:
        return mine
    most = -(-n_chunks // procs.world_size)
    filler = mine[-1][0] if mine else 0
    return mine + [(filler, False)] * (most - len(mine))


def sum_across(values: list[float], procs: Processes) -> list[float]:
    """Element-wise sums over all processes of a few float counters (losses, token counts)."""
    if procs.world_size == 1:
        return values
    from accelerate.utils import reduce

    t = reduce(torch.tensor(values, dtype=torch.float64, device=procs.device), reduction="sum")
    return t.tolist()


def all_processes(flag: bool, procs: Processes) -> bool:
    """True when `flag` is True on every process (e.g. every process's rows have finished generating)."""
    return flag if procs.world_size == 1 else sum_across([float(not flag)], procs)[0] == 0


def sum_gradients(model: torch.nn.Module, procs: Processes) -> None:
    """Sum the gradients of `model`'s trainable parameters over all processes: one flat all-reduce.

    Sharded layers' gradients were already reduce-scattered by FSDP as a mean; multiplying by world_size turns
    each shard into the sum (exact for a power-of-two world size)."""
    if procs.world_size == 1:
        return
    from accelerate.utils import reduce

    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    for g in grads:
        if is_sharded(g):
            g.to_local().mul_(procs.world_size)
    grads = [g for g in grads if not is_sharded(g)]
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


def rows_of(gen: Generation, rows: slice) -> Generation:
    """Some rows of a rollout, in its layout (same widths)."""
    return Generation(gen.query_response[rows], gen.attention_mask[rows], gen.response[rows], gen.logprobs[rows],
                      gen.response_mask[rows], gen.eos[rows], None if gen.stopped is None else gen.stopped[rows])


def gather_generation(gen: Generation, pad_id: int, procs: Processes) -> Generation:
    """Every process's rows, in rank order, padded to the widest query (on the left) and the longest response (on
    the right) of any process — the layout one process sampling all rows would have produced."""
    if procs.world_size == 1:
        return gen
    query_len = gen.query_response.shape[1] - gen.response.shape[1]
    query = pad_and_gather_rows(gen.query_response[:, :query_len], procs, pad_id, left=True)
    query_mask = pad_and_gather_rows(gen.attention_mask[:, :query_len], procs, 0, left=True)
    response = pad_and_gather_rows(gen.response, procs, pad_id)
    response_mask = pad_and_gather_rows(gen.response_mask.long(), procs, 0).bool()
    return Generation(query_response=torch.cat([query, response], dim=1),
                      attention_mask=torch.cat([query_mask, response_mask.long()], dim=1),
                      response=response, logprobs=pad_and_gather_rows(gen.logprobs, procs, 0.0),
                      response_mask=response_mask, eos=gather_rows(gen.eos, procs),
                      stopped=None if gen.stopped is None else gather_rows(gen.stopped, procs))


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


def shard_layers(model: torch.nn.Module, procs: Processes) -> int:
    """FSDP2 for every decoder layer of `model` when launched with FSDP (see the module docstring); returns how
    many layers were sharded. Call it after the model is built and its layers frozen, before the optimiser.

    Each layer must run once per backward, with the loss reached through its hidden states: FSDP gathers a
    layer's weights again for backward on that path only (the RM's shared-query forward, whose KV cache carries
    the query into a second forward, does not qualify)."""
    if not procs.shard:
        return 0
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    layers = list(decoder_layers(model, "FSDP (configs/accelerate/fsdp.yaml)"))
    mesh = init_device_mesh(procs.device.type, (procs.world_size,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    return len(layers)


@contextlib.contextmanager
def gathered(model: torch.nn.Module, procs: Processes) -> Iterator[None]:
    """Keep a sharded model's layers whole inside the block, sharded again after it (no-op unsharded).

    For generation, which runs the model once per token: one all-gather per layer per rollout instead of one
    per layer per token, at the cost of holding the whole model (no gradients, no Adam state) meanwhile."""
    if not procs.shard:
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


def training_state_mib(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """MiB this process holds to train `model`: its weights, a gradient per trainable weight (present from
    backward to the step) and the optimiser's state — local shards only when sharded. Activations not included."""
    def nbytes(t: torch.Tensor) -> int:
        t = t.to_local() if is_sharded(t) else t
        return t.numel() * t.element_size()

    weights = sum(nbytes(p) for p in model.parameters())
    grads = sum(nbytes(p) for p in model.parameters() if p.requires_grad)
    moments = sum(nbytes(v) for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v))
    return (weights + grads + moments) / 2**20


def is_sharded(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor, procs: Processes) -> torch.Tensor | None:
    """The whole tensor behind a shard, in the main process's CPU memory (None in the others); an unsharded
    tensor as it is. A collective: every process calls it, in the same order. Gathering one tensor at a time
    means a sharded model never needs its full size on a device, nor outside the main process."""
    if not is_sharded(t):
        return t
    whole = t.full_tensor()
    return whole.cpu() if procs.is_main else None


def full_state_dict(module: torch.nn.Module, procs: Processes, trainable_only: bool = False
                    ) -> dict[str, torch.Tensor | None]:
    """module's weights as full tensors (see full_tensor), e.g. for save_pretrained(state_dict=...)."""
    if trainable_only:
        return {n: full_tensor(p.detach(), procs) for n, p in module.named_parameters() if p.requires_grad}
    return {n: full_tensor(t, procs) for n, t in module.state_dict().items()}


def local_shard(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This process's piece of `full`, shaped like the sharded `like` (no communication), or `full` itself."""
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.to_local().device), like.device_mesh, like.placements,
                             src_data_rank=None)


@torch.no_grad()
def load_full_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy full tensors (a checkpoint) into module's parameters, sharded or not (load_state_dict, strict=False)."""
    params = dict(module.named_parameters())
    plain = {n: w for n, w in weights.items() if not is_sharded(params.get(n))}
    module.load_state_dict(plain, strict=False)
    for n, w in weights.items():
        if n in params and is_sharded(params[n]):
            params[n].to_local().copy_(local_shard(w, params[n]).to_local())


def full_optimizer_state(optimizer: torch.optim.Optimizer, procs: Processes) -> dict[str, Any]:
    """optimizer.state_dict() with every sharded state tensor (Adam's moments) gathered (see full_tensor)."""
    sd = optimizer.state_dict()
    sd["state"] = {i: {k: full_tensor(v, procs) if torch.is_tensor(v) else v for k, v in st.items()}
                   for i, st in sd["state"].items()}
    return sd


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
    """optimizer.load_state_dict for a state written by full_optimizer_state, re-sharded like the parameters. The
    optimizer keeps its own implementation (fused or not): a one-process run's fused AdamW state resumes sharded."""
    implementation = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(sd)
    for group, impl in zip(optimizer.param_groups, implementation):
        group.update(impl)
    for p, st in optimizer.state.items():
        if is_sharded(p):
            for k, v in st.items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    st[k] = local_shard(v, p)


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float, procs: Processes) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ over the global gradient (after sum_gradients), sharded layers included."""
    if not procs.shard:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    grads = [p.grad for p in params if p.grad is not None]
    shard_sq = sum(float(g.to_local().double().pow(2).sum()) for g in grads if is_sharded(g))
    whole_sq = sum(float(g.double().pow(2).sum()) for g in grads if not is_sharded(g))  # equal on every process
    total = math.sqrt(sum_across([shard_sq], procs)[0] + whole_sq)
    coef = min(1.0, max_norm / (total + 1e-6))  # torch's rule
    for g in grads:
        (g.to_local() if is_sharded(g) else g).mul_(coef)
    return torch.tensor(total)
