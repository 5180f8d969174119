"""A trained policy out to llama.cpp and ollama: a GGUF file written with the `gguf` package's writer.

Llama-family decoders (Llama, Mistral, SmolLM2: `general.architecture = llama`) with a byte-level BPE tokenizer
(GPT-2 style, as SmolLM2 and Llama 3 have). What goes in:

- the hyper-parameters llama.cpp reads (`llama.*`: context length, widths, heads, RoPE base, RMS-norm epsilon);
- the tokenizer: every token in id order (padded with `[PAD<i>]` entries up to the model's vocab size, as
  llama.cpp's converter does), its type (control for special tokens, user-defined for other added tokens), the
  merges, the special ids, whether BOS is added, the chat template, and the pre-tokenizer name — "smollm" when
  the vocabulary is the embedded SmolLM2's, otherwise "default";
- the weights under llama.cpp's tensor names (`gguf.get_tensor_name_map`), with the query and key projections
  permuted the way llama.cpp's RoPE expects them (transformers' GGUF loader permutes them back); a tied output
  head is left out (llama.cpp and transformers then reuse the token embeddings).

dtype: f32, f16 or q8_0 for the matrices; norms (1-D) stay f32, as llama.cpp's own converter keeps them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhflab.core.rundir import atomic_path
from rlhflab.data.format import query_prefix
from rlhflab.models.loading import ModelLoadError, embedded_gguf_path, load_model

DTYPES = ("f32", "f16", "q8_0")
ARCHITECTURES = ("llama", "mistral")  # what llama.cpp runs as `llama`


class ExportError(ModelLoadError):
    """A model or tokenizer this exporter cannot write (the message says which and why)."""


def export_gguf(spec: str, out: str | Path, dtype: str = "f16") -> dict[str, Any]:
    """Write `spec` (a run directory, model directory or any `load_model` spec) as a GGUF file at `out`,
    atomically. Returns {"path", "dtype", "bytes", "seconds", "tensors"}."""
    import gguf

    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    start = time.perf_counter()
    model, tokenizer = load_model(spec)
    config = model.config
    check_exportable(config)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        write_hyperparameters(writer, config, dtype, name=Path(str(spec)).name)
        write_tokenizer(writer, tokenizer, config.vocab_size)
        n = write_tensors(writer, model, dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return {"path": str(out), "dtype": dtype, "bytes": out.stat().st_size,
            "seconds": round(time.perf_counter() - start, 2), "tensors": n}


def check_exportable(config) -> None:
    if config.model_type not in ARCHITECTURES:
        raise ExportError(f"{config.model_type} models are not supported (only the Llama family: "
                          f"{', '.join(ARCHITECTURES)}); llama.cpp's convert_hf_to_gguf.py converts the others")
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind not in (None, "default"):
        raise ExportError(f"rope_scaling {kind!r} is not supported (plain RoPE only)")


def write_hyperparameters(writer, config, dtype: str, name: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name or "rlhflab policy")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_freq_base(float(rope_theta(config)))
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def rope_theta(config) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:  # transformers 5 keeps it in rope_parameters
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


# ------------------------------------------------------------------------------------------------ tokenizer

def write_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend.get("model", {})
    if model.get("type") != "BPE" or not _byte_level(backend):
        raise ExportError("only byte-level BPE tokenizers (GPT-2 style, as SmolLM2's and Llama 3's) "
                          f"are supported; this one is {model.get('type')} "
                          f"{'' if _byte_level(backend) else 'without byte-level pre-tokenization'}")
    tokens, types = vocabulary(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokens))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_token_merges(merges)  # llama.cpp needs the key even when the list is empty (a byte vocabulary)
    if not merges:  # ...and transformers then rebuilds merges from scores: there are none to find
        writer.add_token_scores([0.0] * len(tokens))
    for token_id, add in ((tokenizer.bos_token_id, writer.add_bos_token_id),
                          (tokenizer.eos_token_id, writer.add_eos_token_id),
                          (tokenizer.unk_token_id, writer.add_unk_token_id),
                          (tokenizer.pad_token_id, writer.add_pad_token_id)):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(bool(query_prefix(tokenizer)))
    writer.add_add_eos_token(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """(token strings in id order, their GGUF token types), padded to the model's vocab size."""
    import gguf

    n = len(tokenizer)
    if n > vocab_size:
        raise ExportError(f"the tokenizer has {n} tokens, more than the model's vocab_size {vocab_size}")
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = set(tokenizer.all_special_ids)
    added = {i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special} | special
    user = set(tokenizer.added_tokens_decoder) - added
    types = [int(gguf.TokenType.CONTROL) if i in added else int(gguf.TokenType.USER_DEFINED) if i in user
             else int(gguf.TokenType.NORMAL) for i in range(n)]
    tokens += [f"[PAD{i}]" for i in range(n, vocab_size)]
    types += [int(gguf.TokenType.UNUSED)] * (vocab_size - n)
    return tokens, types


def pre_tokenizer_name(tokens: list[str]) -> str:
    """llama.cpp picks its pre-tokenizer regex by name: the embedded SmolLM2's when this is its vocabulary."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(embedded_gguf_path()))
        field = reader.fields["tokenizer.ggml.tokens"]
        if len(field.data) == len(tokens) and all(
                bytes(field.parts[i]).decode("utf-8") == t for i, t in zip(field.data, tokens)):
            return str(reader.fields["tokenizer.ggml.pre"].contents())
    except (ModelLoadError, KeyError, OSError):
        pass
    return "default"


def _byte_level(backend: dict) -> bool:
    text = json.dumps(backend.get("pre_tokenizer")) + json.dumps(backend.get("decoder"))
    return "ByteLevel" in text


# -------------------------------------------------------------------------------------------------- tensors

def permute_for_rope(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(n_heads * head_dim, H) q or k projection -> the same rows, each head's two rotary halves interleaved,
    which is the layout llama.cpp's RoPE reads (HF Llama rotates halves; GGML rotates adjacent pairs)."""
    out_dim = weight.shape[0]
    return (weight.reshape(n_heads, 2, out_dim // n_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def write_tensors(writer, model, dtype: str) -> int:
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    state = model.state_dict()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    count = 0
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue  # the output head is the token embeddings
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"no GGUF name for tensor {hf_name}")
        data = tensor.detach().float().cpu()
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = permute_for_rope(data, config.num_attention_heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = permute_for_rope(data, config.num_key_value_heads or config.num_attention_heads)
        add_tensor(writer, name, data.numpy(), dtype)
        count += 1
    return count


def add_tensor(writer, name: str, array: np.ndarray, dtype: str) -> None:
    import gguf

    if array.ndim == 1 or dtype == "f32":
        writer.add_tensor(name, array.astype(np.float32))
    elif dtype == "f16":
        writer.add_tensor(name, array.astype(np.float16))
    else:  # q8_0: blocks of 32 values along a row
        if array.shape[-1] % 32:
            writer.add_tensor(name, array.astype(np.float16))  # a row that does not split into blocks stays f16
            return
        quantised = gguf.quants.quantize(array.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, quantised, raw_dtype=gguf.GGMLQuantizationType.Q8_0)


# ------------------------------------------------------------------------------------------------- checking

@torch.no_grad()
def roundtrip_logit_diff(spec: str, gguf_path: str | Path, n_tokens: int = 32, seed: int = 0) -> float:
    """max |logits(original) - logits(the GGUF file loaded back by transformers)| on a random probe sequence."""
    from transformers import AutoModelForCausalLM

    original, _ = load_model(spec)
    gguf_path = Path(gguf_path)
    back = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, original.config.vocab_size, (1, n_tokens), generator=g)
    a = original.eval()(input_ids=ids).logits
    b = back.eval()(input_ids=ids).logits
    return float((a - b).abs().max())

