"""Where a decoder keeps its parts: the one place that knows how model families name them.

Layer freezing, the frozen-layer reuse (models/trunk.py), FSDP sharding and LoRA's default targets all need a
causal LM's token embeddings, its list of decoder layers and its final norm. Llama, Mistral, Qwen2, Gemma and
Phi-3 name them `model.embed_tokens / model.layers / model.norm`; GPT-NeoX (Pythia) `gpt_neox.embed_in / layers /
final_layer_norm`; GPT-2 `transformer.wte / h / ln_f`. `anatomy(model)` finds them by the decoder's attribute
names, so a family not listed here but named like one of these works too; anything else is refused with an error
that names the option that needed it and the architecture — never an AttributeError from deep inside a stage.

BOS is the tokenizer's business, not the model's: see `data.format.encode_query`.
"""

from __future__ import annotations

from dataclasses import dataclass
from torch import nn

# decoder attribute names, in the order they are tried
_LAYERS = ("layers", "h")
_FINAL_NORM = ("norm", "final_layer_norm", "ln_f")
_EMBEDDINGS = ("embed_tokens", "embed_in", "wte")

# LoRA's default targets: the attention projections of each family (PEFT matches a module name's suffix)
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "gemma": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "phi3": ("qkv_proj", "o_proj"),
    "gpt_neox": ("query_key_value", "attention.dense"),
    "gpt2": ("attn.c_attn", "attn.c_proj"),
}


class UnsupportedModelError(ValueError):
    """An option that needs a part of the model this architecture does not have (or names differently)."""


@dataclass(frozen=True)
class Anatomy:
    """Attribute names on the decoder (`model.get_decoder()`) of one causal LM."""
    model_type: str  # config.model_type: "llama", "gpt_neox", "gpt2", ...
    architecture: str  # the class, e.g. "GPTNeoXForCausalLM"
    embeddings: str  # "embed_tokens" | "embed_in" | "wte"
    layers: str  # "layers" | "h"
    final_norm: str  # "norm" | "final_layer_norm" | "ln_f"


def _unwrap(model: nn.Module) -> nn.Module:
    """The HF model inside a RewardModel (`.lm`) or a PEFT wrapper (`.get_base_model()`)."""
    if hasattr(model, "lm") and isinstance(model.lm, nn.Module):
        model = model.lm
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack: `model.model` / `.gpt_neox` / `.transformer` of a *ForCausalLM (or of a
    *ForSequenceClassification); a base model is its own decoder."""
    model = _unwrap(model)
    if hasattr(model, "get_decoder"):
        try:
            found = model.get_decoder()
            if found is not None:
                return found
        except (AttributeError, NotImplementedError):
            pass
    return getattr(model, "base_model", model)


def _first(obj: nn.Module, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if isinstance(getattr(obj, n, None), nn.Module)), None)


def anatomy(model: nn.Module, option: str = "this option") -> Anatomy:
    """The names of `model`'s embeddings, layer list and final norm, or an UnsupportedModelError naming
    `option` and the architecture."""
    hf = _unwrap(model)
    base = decoder(hf)
    config = getattr(hf, "config", None)
    model_type = getattr(config, "model_type", "?")
    arch = type(hf).__name__
    layers, norm, emb = _first(base, _LAYERS), _first(base, _FINAL_NORM), _first(base, _EMBEDDINGS)
    if layers is None or not isinstance(getattr(base, layers), nn.ModuleList) or norm is None or emb is None:
        raise UnsupportedModelError(
            f"{option}: {arch} (model_type {model_type!r}) has no decoder rlhflab can take apart (looked for a "
            f"layer list {'/'.join(_LAYERS)}, a final norm {'/'.join(_FINAL_NORM)} and embeddings "
            f"{'/'.join(_EMBEDDINGS)} on {type(base).__name__}); supported families: {', '.join(LORA_TARGETS)}")
    return Anatomy(model_type, arch, emb, layers, norm)


def decoder_layers(model: nn.Module, option: str = "this option") -> nn.ModuleList:
    """The decoder's layers, bottom first."""
    return getattr(decoder(model), anatomy(model, option).layers)


def lora_targets(model: nn.Module) -> list[str]:
    """The attention projections LoRA adapts by default for this model's family."""
    an = anatomy(model, "lora.target_modules")
    if an.model_type not in LORA_TARGETS:
        raise UnsupportedModelError(
            f"lora.target_modules: no default for {an.architecture} (model_type {an.model_type!r}); name the "
            f"attention projections, e.g. lora.target_modules=[q_proj,v_proj]")
    return list(LORA_TARGETS[an.model_type])
