"""Run a decoder in two parts: the frozen lower layers once, the trainable upper layers many times.

With `freeze_layers=N` the lower N layers never change during PPO, so their output for a rollout is the same in
every PPO epoch, for the old log-probs and for the reference (whose lower layers are the same frozen weights).
`lower_hidden` computes it once (no grad); `upper_layers` makes the model run only layers N… on it, given as
`inputs_embeds`. For the cpu profile (20 of 30 layers frozen) a training step then runs 10 layers forward instead
of 30, about 40% less work per step, with the same math.

It works by temporarily swapping the decoder's `layers` (and, for the lower part, its final `norm`), so it needs a
decoder-only model whose base has `.layers` and `.norm` and does nothing to `inputs_embeds` on the way in (Llama,
Mistral, Qwen2 and SmolLM do; Gemma scales them). `split_matches_full` checks that on the real model before use.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from rlhflab.models.generation import position_ids_from_mask


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack (`model.model` for *ForCausalLM; the model itself for a base model)."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    if not (hasattr(base, "layers") and hasattr(base, "norm")):
        raise TypeError(f"{type(model).__name__}: no decoder with .layers and .norm; cannot split its layers")
    return base


@contextmanager
def only_layers(model: nn.Module, start: int, stop: int | None, final_norm: bool) -> Iterator[None]:
    """Within the block, the decoder runs layers[start:stop] only (and skips its final norm unless final_norm)."""
    base = decoder(model)
    layers, norm = base.layers, base.norm
    base.layers = nn.ModuleList(list(layers)[start:stop])
    if not final_norm:
        base.norm = nn.Identity()
    try:
        yield
    finally:
        base.layers, base.norm = layers, norm


@torch.no_grad()
def lower_hidden(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, n_layers: int) -> Tensor:
    """(B, T) ids and mask -> (B, T, H) hidden states after the lowest `n_layers` decoder layers (no final norm)."""
    with only_layers(model, 0, n_layers, final_norm=False):
        out = decoder(model)(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.last_hidden_state


@contextmanager
def upper_layers(model: nn.Module, n_layers: int) -> Iterator[None]:
    """Within the block, `model(inputs_embeds=lower_hidden(...), ...)` runs layers n_layers… and the final norm."""
    with only_layers(model, n_layers, None, final_norm=True):
        yield


@torch.no_grad()
def split_matches_full(model: nn.Module, n_layers: int, vocab_size: int, atol: float = 1e-4) -> bool:
    """True when upper(lower(x)) gives the full forward's logits on a short left-padded probe batch (fp32)."""
    g = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab_size, (2, 12), generator=g).to(device)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    pos = position_ids_from_mask(mask)
    was_training = model.training
    model.eval()
    try:
        full = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        hidden = lower_hidden(model, ids, mask, n_layers)
        with upper_layers(model, n_layers):
            split = model(inputs_embeds=hidden, attention_mask=mask, position_ids=pos, use_cache=False).logits
    finally:
        model.train(was_training)
    real = mask.bool()
    return bool(torch.allclose(full[real].float(), split[real].float(), atol=atol, rtol=1e-4))
