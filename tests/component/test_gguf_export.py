"""export-gguf: a Llama-family policy written with the gguf package's writer loads back in transformers
(`gguf_file=`) with the same logits (to the dtype's tolerance) and the same tokenizer; other families are refused
with a clear error; and, where llama-cpp-python is installed, llama.cpp continues a prompt as rlhflab does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("gguf")

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from rlhflab.cli import main  # noqa: E402
from rlhflab.models.gguf_export import ExportError, export_gguf, permute_for_rope, roundtrip_logit_diff  # noqa: E402
from rlhflab.models.loading import load_model, save_model  # noqa: E402

TOLERANCE = {"f32": 1e-5, "f16": 2e-3, "q8_0": 3e-2}  # max |Δ logit| of the tiny models (logits are O(1))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The tiny Llama (heads = kv heads, no BOS) and the tiny Mistral (grouped kv heads, a BOS) as directories."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for spec in ("tiny", "tiny-mistral"):
        save_model(*load_model(spec), root / spec)
        out[spec] = root / spec
    return out


def test_rope_permutation_interleaves_each_heads_two_halves():
    w = torch.arange(8.0).reshape(8, 1)  # 2 heads x head_dim 4: rows [0 1 | 2 3] [4 5 | 6 7]
    assert permute_for_rope(w, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("spec", ["tiny", "tiny-mistral"])
def test_the_file_loads_back_with_the_same_logits(models, tmp_path, spec, dtype):
    result = export_gguf(str(models[spec]), tmp_path / f"{spec}.gguf", dtype)
    assert result["bytes"] == (tmp_path / f"{spec}.gguf").stat().st_size > 0 and result["dtype"] == dtype
    assert roundtrip_logit_diff(str(models[spec]), result["path"]) <= TOLERANCE[dtype]


def test_smaller_dtypes_make_smaller_files(models, tmp_path):
    sizes = [export_gguf(str(models["tiny"]), tmp_path / f"{d}.gguf", d)["bytes"] for d in ("f32", "f16", "q8_0")]
    assert sizes[0] > sizes[1] > sizes[2]


@pytest.mark.parametrize("spec", ["tiny", "tiny-mistral"])
def test_the_tokenizer_comes_back_the_same_bos_included(models, tmp_path, spec):
    path = Path(export_gguf(str(models[spec]), tmp_path / "m.gguf", "f32")["path"])
    ours = AutoTokenizer.from_pretrained(models[spec])
    theirs = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in ("Hello world.", "TL;DR: ünïcode, 42 tabs\tand\nlines"):
        assert theirs.encode(text) == ours.encode(text)
    assert (theirs.encode("x")[0] == ours.bos_token_id) is (spec == "tiny-mistral")
    assert theirs.eos_token_id == ours.eos_token_id


def test_other_families_are_refused_naming_them(tmp_path, capsys):
    with pytest.raises(ExportError, match="gpt2 models are not supported"):
        export_gguf("tiny-gpt2", tmp_path / "x.gguf")
    assert main(["export-gguf", "tiny-gpt_neox", "--out", str(tmp_path / "y.gguf")]) == 2
    assert "gpt_neox models are not supported" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "y.gguf").exists()


def test_the_cli_writes_the_file_and_checks_it(models, tmp_path, capsys):
    out = tmp_path / "policy.gguf"
    assert main(["export-gguf", str(models["tiny"]), "--out", str(out), "--dtype", "q8_0", "--check"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["path"] == str(out) and out.exists()
    assert 0 < result["max_abs_logit_diff"] <= TOLERANCE["q8_0"]


def _tiny_llama_with_smollm2_tokenizer(where: Path) -> Path:
    """A tiny random Llama (grouped kv heads) with the embedded SmolLM2's real BPE tokenizer (merges and all):
    llama.cpp refuses the byte-only test vocabulary, which has no merges."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhflab.models.loading import ModelLoadError, load_tokenizer

    try:
        tok = load_tokenizer("smollm2-135m")
    except ModelLoadError as err:
        pytest.skip(str(err))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    save_model(LlamaForCausalLM(config), tok, where)
    return where


def test_llama_cpp_continues_a_prompt_as_rlhflab_does(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")  # compiled from source; not installed by .ci/run
    source = _tiny_llama_with_smollm2_tokenizer(tmp_path / "model")
    result = export_gguf(str(source), tmp_path / "m.gguf", "f32")
    assert roundtrip_logit_diff(str(source), result["path"]) <= TOLERANCE["f32"]
    model, tok = load_model(str(source))
    prompt = tok.encode("SUBREDDIT: r/cats\n\nTL;DR:", add_special_tokens=False)
    ours = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          max_new_tokens=12, do_sample=False, eos_token_id=None)[0, len(prompt):].tolist()
    llm = llama_cpp.Llama(model_path=result["path"], n_ctx=128, verbose=False)
    assert llm.tokenize("SUBREDDIT: r/cats\n\nTL;DR:".encode(), add_bos=False, special=False) == prompt
    theirs = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        theirs.append(token)
        if len(theirs) == 12:
            break
    assert theirs == ours


def test_loading_a_gguf_file_off_a_terminal_draws_no_bar(models, tmp_path, capsys, monkeypatch):
    """transformers' GGUF reader has its own tqdm bar; in a log file it would be a line of carriage returns."""
    path = export_gguf(str(models["tiny"]), tmp_path / "m.gguf", "f32")["path"]
    monkeypatch.delenv("RLHFLAB_PROGRESS", raising=False)
    capsys.readouterr()
    load_model(path)
    assert "de-quantizing" not in capsys.readouterr().err  # pytest's captured stderr is not a terminal
    monkeypatch.setenv("RLHFLAB_PROGRESS", "bar")  # asked for: the library's bar is back
    load_model(path)
    assert "de-quantizing" in capsys.readouterr().err
