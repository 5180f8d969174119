"""Models layer: tiny tokenizer, generation masks and log-probs, left padding, save/load, run dirs, embedded model."""

from __future__ import annotations

import json

import pytest
import torch

from rlhflab.core.rundir import RunError
from rlhflab.models import loading
from rlhflab.models.generation import (
    decode_responses,
    generate,
    pad_queries,
    response_logprobs,
)
from rlhflab.models.loading import ModelLoadError, load_model, save_model, tiny_model_and_tokenizer
from rlhflab.ops.ppo import mask_after_eos

TEXTS = ["hello world", " Héllo\n\n  wörld 日本 😀\t", "SUBREDDIT: r/AskReddit\n\nTITLE: x\n\nPOST: y\n\nTL;DR:", ""]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny:3")


def eos_biased(model, eos_id: int, bias: float):
    """Add `bias` to the EOS logit (a forward hook on lm_head), so sampled responses end at varied lengths."""
    def hook(module, inputs, output):
        output = output.clone()
        output[..., eos_id] += bias
        return output
    return model.lm_head.register_forward_hook(hook)


def test_tiny_tokenizer_round_trips_text(tiny):
    _, tok = tiny
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    assert tok.eos_token_id == tok.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.padding_side == "left"


def test_tiny_spec_is_seeded_and_dropout_free():
    a, _ = load_model("tiny:1")
    b, _ = load_model("tiny:1")
    c, _ = load_model("tiny:2")
    x = torch.tensor([[5, 6, 7]])
    assert torch.equal(a(x).logits, b(x).logits)
    assert not torch.equal(a(x).logits, c(x).logits)
    assert a.config.attention_dropout == 0.0
    a.train()  # dropout off means train() and eval() compute the same function
    assert torch.equal(a(x).logits, b(x).logits)


def test_pad_queries_left_pads():
    _, tok = tiny_model_and_tokenizer()
    ids, mask = pad_queries(tok, [[1, 2], [3, 4, 5, 6]])
    assert ids.tolist() == [[tok.pad_token_id] * 2 + [1, 2], [3, 4, 5, 6]]
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]


def test_first_eos_mask():  # generation masks responses with ops.ppo's mask_after_eos
    r = torch.tensor([[5, 9, 6, 9], [5, 5, 5, 5], [9, 1, 2, 3]])
    assert mask_after_eos(r, 9).tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_generation_shapes_and_logprobs_match_recomputation(tiny, temperature):
    model, tok = tiny
    ids, mask = pad_queries(tok, [tok.encode(t) for t in ["a short one", "a much longer query than that"]])
    gen = generate(model, tok, ids, mask, max_new_tokens=10, temperature=temperature,
                   generator=torch.Generator().manual_seed(0))
    B, Tq = ids.shape
    Tr = gen.response.shape[1]
    assert gen.query_response.shape == gen.attention_mask.shape == (B, Tq + Tr)
    assert gen.logprobs.shape == gen.response_mask.shape == (B, Tr) and gen.eos.shape == (B,)
    assert torch.equal(gen.query_response[:, :Tq], ids)
    assert (gen.logprobs <= 0).all()
    recomputed = response_logprobs(model, gen.query_response, gen.attention_mask, Tq, temperature)
    torch.testing.assert_close(recomputed, gen.logprobs, atol=1e-4, rtol=0)


def test_masking_after_eos_and_logprobs_with_early_ends(tiny):
    model, tok = tiny
    tok = tok.__class__(tokenizer_object=tok.backend_tokenizer.__class__.from_str(tok.backend_tokenizer.to_str()),
                        eos_token=tok.eos_token, pad_token="<|pad|>", padding_side="left")  # pad != eos here
    pad, eos = tok.pad_token_id, tok.eos_token_id
    assert pad != eos and pad < model.config.vocab_size
    ids, mask = pad_queries(tok, [tok.encode("q" * n) for n in (3, 5, 8, 2, 6, 4)])
    handle = eos_biased(model, eos, 4.0)  # p(EOS) a step is large but not 1: rows end at different steps
    try:
        gen = generate(model, tok, ids, mask, max_new_tokens=12, temperature=1.0, stop_at_eos=False,
                       generator=torch.Generator().manual_seed(1))
        recomputed = response_logprobs(model, gen.query_response, gen.attention_mask, ids.shape[1], 1.0)
    finally:
        handle.remove()
    assert gen.response.shape[1] == 12  # fixed length even though rows ended
    lengths = gen.response_mask.sum(1)
    assert gen.eos.any() and len(set(lengths.tolist())) > 1
    for b in range(gen.response.shape[0]):
        n = int(lengths[b])
        row = gen.response[b].tolist()
        if gen.eos[b]:
            assert row[n - 1] == eos and eos not in row[: n - 1]
            assert row[n:] == [pad] * (12 - n)
        else:
            assert n == 12 and eos not in row
    assert torch.equal(gen.attention_mask[:, ids.shape[1]:].bool(), gen.response_mask)
    assert (gen.logprobs[~gen.response_mask] == 0).all()
    torch.testing.assert_close(recomputed, gen.logprobs, atol=1e-4, rtol=0)
    texts = decode_responses(tok, gen)
    assert all("<|endoftext|>" not in t and "<|pad|>" not in t for t in texts)


def test_stop_at_eos_stops_when_every_row_ended(tiny):
    model, tok = tiny
    ids, mask = pad_queries(tok, [tok.encode("abc"), tok.encode("de")])
    handle = eos_biased(model, tok.eos_token_id, 100.0)
    try:
        gen = generate(model, tok, ids, mask, max_new_tokens=12, temperature=0.0)
        fixed = generate(model, tok, ids, mask, max_new_tokens=12, temperature=0.0, stop_at_eos=False)
    finally:
        handle.remove()
    assert gen.response.shape[1] == 1 and gen.eos.all()
    assert fixed.response.shape[1] == 12 and fixed.response_mask.sum(1).tolist() == [1, 1]
    assert decode_responses(tok, gen) == ["", ""]


def test_left_padding_invariance(tiny):
    model, tok = tiny
    short, long = tok.encode("hi there"), tok.encode("a considerably longer query, padded against")
    alone = generate(model, tok, *pad_queries(tok, [short]), max_new_tokens=10, temperature=0.0)
    batch = generate(model, tok, *pad_queries(tok, [short, long]), max_new_tokens=10, temperature=0.0)
    n = alone.response.shape[1]
    assert torch.equal(batch.response[0, :n], alone.response[0])
    torch.testing.assert_close(batch.logprobs[0, :n], alone.logprobs[0], atol=1e-4, rtol=0)


def test_sampling_is_reproducible_from_a_generator(tiny):
    model, tok = tiny
    ids, mask = pad_queries(tok, [tok.encode("abc"), tok.encode("defgh")])
    runs = [generate(model, tok, ids, mask, max_new_tokens=8, temperature=0.7, top_p=0.9,
                     generator=torch.Generator().manual_seed(s)) for s in (5, 5, 6)]
    assert torch.equal(runs[0].response, runs[1].response)
    assert not torch.equal(runs[0].response, runs[2].response)


def test_per_query_counts_prefill_each_query_once_and_equal_repeated_queries(tiny):
    """n_per_query=[2, 1, 3]: rows 0-1 continue query 0, row 2 query 1, rows 3-5 query 2 — the same tokens, from
    the same generator, as prefilling each of the six rows on its own (what `rlhflab sample` did before)."""
    model, tok = tiny
    ids, mask = pad_queries(tok, [tok.encode("abc"), tok.encode("a longer query"), tok.encode("xy")])
    counts = [2, 1, 3]
    rep = generate(model, tok, ids.repeat_interleave(torch.tensor(counts), 0),
                   mask.repeat_interleave(torch.tensor(counts), 0), max_new_tokens=8, temperature=0.9,
                   generator=torch.Generator().manual_seed(7))
    shared = generate(model, tok, ids, mask, max_new_tokens=8, temperature=0.9,
                      generator=torch.Generator().manual_seed(7), n_per_query=counts)
    assert shared.response.shape == rep.response.shape and shared.response.shape[0] == 6
    assert torch.equal(shared.response, rep.response) and torch.equal(shared.query_response, rep.query_response)
    torch.testing.assert_close(shared.logprobs, rep.logprobs, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="2 counts for 3 queries"):
        generate(model, tok, ids, mask, max_new_tokens=2, n_per_query=[1, 2])
    with pytest.raises(ValueError, match="n_per_query must be >= 1"):
        generate(model, tok, ids, mask, max_new_tokens=2, n_per_query=[1, 0, 2])


def test_save_load_round_trip_gives_identical_logits(tiny, tmp_path):
    model, tok = tiny
    out = save_model(model, tok, tmp_path / "model")
    model2, tok2 = load_model(str(out))
    x = torch.tensor([tok.encode("round trip")])
    assert torch.equal(model(x).logits, model2(x).logits)
    assert tok2.decode(tok2.encode(TEXTS[1], add_special_tokens=False)) == TEXTS[1]
    assert tok2.pad_token_id == tok.pad_token_id and tok2.padding_side == "left"
    assert not list(tmp_path.glob(".model*"))  # the atomic write left no temp directory behind


def test_bfloat16_dtype(tmp_path):
    model, _ = load_model("tiny", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_model("tiny", dtype="float16")


def test_run_dir_without_done_needs_allow_partial(tiny, tmp_path):
    model, tok = tiny
    run = tmp_path / "runs" / "sft" / "a"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("stage: sft\nconfig: {}\n")
    save_model(model, tok, run / "model")
    with pytest.raises(RunError, match="DONE.json"):
        load_model(str(run))
    partial, _ = load_model(str(run), allow_partial=True)
    (run / "DONE.json").write_text(json.dumps({"step": 1}))
    done, _ = load_model(str(run))
    x = torch.tensor([[1, 2, 3]])
    assert torch.equal(partial(x).logits, model(x).logits) and torch.equal(done(x).logits, model(x).logits)


def test_bad_specs_name_the_spec(tmp_path):
    with pytest.raises(ModelLoadError, match="no-such-dir"):
        load_model(str(tmp_path / "no-such-dir"))
    with pytest.raises(ModelLoadError, match="tiny:x"):
        load_model("tiny:x")


def test_unreachable_hub_id_says_to_pass_a_local_path(monkeypatch):
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)  # never touch the network in tests
    with pytest.raises(ModelLoadError, match=r"(?s)no-such-org/no-such-model.*local path"):
        load_model("no-such-org/no-such-model")


# ---------------------------------------------------------------------------------------------------------------
# The embedded SmolLM2-135M: one GGUF conversion into a temporary cache, shared by the tests below.


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    try:
        loading.embedded_gguf_path()
    except ModelLoadError as e:
        pytest.skip(str(e))
    cache = tmp_path_factory.mktemp("rlhflab-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLHFLAB_CACHE", str(cache))
        model, tok = load_model("smollm2-135m")
    return model, tok, cache


@pytest.mark.slow
def test_embedded_model_greedy_continuation(embedded):
    model, tok, _ = embedded
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert tok.pad_token_id is not None and tok.padding_side == "left"
    ids, mask = pad_queries(tok, [tok.encode("The capital of France is")])
    gen = generate(model, tok, ids, mask, max_new_tokens=8, temperature=0.0)
    assert decode_responses(tok, gen)[0].strip()


@pytest.mark.slow
def test_embedded_cache_is_reused(embedded, monkeypatch):
    model, _, cache = embedded
    assert (cache / "smollm2-135m" / "model.safetensors").exists()
    monkeypatch.setenv("RLHFLAB_CACHE", str(cache))
    monkeypatch.setattr(loading, "_load_gguf", lambda *a, **k: pytest.fail("second load re-converted the GGUF"))
    again, _ = load_model("smollm2-135m")
    x = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    assert torch.equal(model(x).logits, again(x).logits)


@pytest.mark.slow
def test_embedded_logprobs_match_recomputation(embedded):
    model, tok, _ = embedded
    queries = [tok.encode("SUBREDDIT: r/cats\n\nTITLE: My cat\n\nPOST: She sleeps all day.\n\nTL;DR:"),
               tok.encode("Write one sentence about the sea:")]
    ids, mask = pad_queries(tok, queries)
    gen = generate(model, tok, ids, mask, max_new_tokens=16, temperature=0.7, stop_at_eos=False,
                   generator=torch.Generator().manual_seed(0))
    recomputed = response_logprobs(model, gen.query_response, gen.attention_mask, ids.shape[1], 0.7)
    torch.testing.assert_close(recomputed, gen.logprobs, atol=1e-4, rtol=0)


def test_stop_rule_ends_responses_at_the_first_stop_token_at_or_after_n(tiny):
    from rlhflab.models.generation import stop_rule

    model, tok = tiny
    rule = stop_rule(tok, ".", after=3)
    dot = tok.encode(".", add_special_tokens=False)[0]
    assert dot in rule.token_ids and tok.eos_token_id not in rule.token_ids
    ids, mask = pad_queries(tok, [tok.encode("q" * n) for n in (3, 5, 8, 2)])
    handle = eos_biased(model, dot, 4.0)  # "." is likely a step, so it comes both before and after position 3
    try:
        gen = generate(model, tok, ids, mask, max_new_tokens=10, temperature=1.0, stop_at_eos=False,
                       generator=torch.Generator().manual_seed(2), stop=rule)
        recomputed = response_logprobs(model, gen.query_response, gen.attention_mask, ids.shape[1], 1.0)
    finally:
        handle.remove()
    assert gen.stopped is not None and gen.stopped.any()
    for b in range(gen.response.shape[0]):
        n, row = int(gen.response_mask[b].sum()), gen.response[b].tolist()
        if gen.stopped[b]:
            assert row[n - 1] in rule.token_ids and n - 1 >= 3  # the stop token is kept, at position >= 3
            assert not any(t in rule.token_ids for t in row[3 : n - 1])  # and it is the first one from there
            assert row[n:] == [tok.pad_token_id] * (10 - n)
    assert torch.equal(gen.ended, gen.eos | gen.stopped)
    torch.testing.assert_close(recomputed, gen.logprobs, atol=1e-4, rtol=0)
    texts = decode_responses(tok, gen)
    assert all(t.endswith(".") for t, s in zip(texts, gen.stopped.tolist()) if s)
