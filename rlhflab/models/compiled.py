"""torch.compile for the training forward and backward only, one decoder layer at a time.

Issue 17's profile (benchmarks/results/profile_step_cpu.json) found a PPO micro batch spending 47% of its time in
elementwise ops and 17% in casts, against 17% in matmuls: RMSNorm, SiLU, rotary and the residual adds each read
and write the whole activation, in fp32 under autocast. Inductor fuses them into a few loops. Compiling each
decoder layer (not the whole model) keeps the graph small: every layer of the policy and of the value model is
the same class, so one graph (forward and backward) serves all of them and compiles once, in ~20 s on 2 CPU
cores for SmolLM2-135M instead of ~4 min for the whole model, and runs as fast (measured: 2.1 s against 3.3 s
eager for one policy forward+backward of 4 × 304 tokens; whole-model compile 2.2 s).

Only the training forward runs compiled: generation gains nothing from it on the CPU (5.6 s against 5.3 s for
48 tokens × 8 rows), and the no-grad forwards would each compile graphs of their own. So the compiled layers are
swapped in for the duration of a block (`compiled_layers`), like models/trunk.py swaps in a slice of the layers;
the model's own modules, parameters and state dict never change. `dynamic=True` marks sequence lengths and batch
sizes symbolic, so trimmed micro batches of any width reuse the graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from weakref import WeakKeyDictionary

import torch
from torch import nn

from rlhflab.models.family import anatomy, decoder

_WRAPPERS: WeakKeyDictionary[nn.Module, nn.Module] = WeakKeyDictionary()  # layer -> its compiled wrapper


def compiled(layer: nn.Module) -> nn.Module:
    """The torch.compile wrapper of `layer` (made once; it shares the layer's parameters)."""
    if layer not in _WRAPPERS:
        _WRAPPERS[layer] = torch.compile(layer, dynamic=True)
    return _WRAPPERS[layer]


@contextmanager
def compiled_layers(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, each decoder layer of `model` (a causal LM, a RewardModel or a PEFT wrapper) runs
    through torch.compile. With enabled=False the block runs eagerly, unchanged."""
    if not enabled:
        yield
        return
    base, name = decoder(model), anatomy(model, "compile").layers
    layers = getattr(base, name)
    setattr(base, name, nn.ModuleList([compiled(layer) for layer in layers]))
    try:
        yield
    finally:
        setattr(base, name, layers)
