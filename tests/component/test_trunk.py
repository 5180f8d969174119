"""Frozen lower layers run once, upper layers on their output: same logits, same gradients as the full model."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from rlhflab.models.generation import position_ids_from_mask  # noqa: E402
from rlhflab.models.loading import tiny_model_and_tokenizer  # noqa: E402
from rlhflab.models.trunk import lower_hidden, only_layers, split_matches_full, upper_layers  # noqa: E402


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 320, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[2, :1] = 0
    return ids, mask


@pytest.mark.parametrize("n_frozen", [1, 2])
def test_upper_layers_on_lower_hidden_give_the_full_logits(n_frozen):
    model, _ = tiny_model_and_tokenizer(num_layers=3)
    ids, mask = batch()
    pos = position_ids_from_mask(mask)
    full = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    hidden = lower_hidden(model, ids, mask, n_frozen)
    assert hidden.shape == (3, 10, 64) and not hidden.requires_grad
    with upper_layers(model, n_frozen):
        split = model(inputs_embeds=hidden, attention_mask=mask, position_ids=pos).logits
    real = mask.bool()
    torch.testing.assert_close(split[real], full[real], atol=1e-5, rtol=1e-5)
    assert len(model.model.layers) == 3 and not isinstance(model.model.norm, torch.nn.Identity)  # restored
    assert split_matches_full(model, n_frozen, 320)


def test_the_upper_layers_get_the_same_gradients():
    model, _ = tiny_model_and_tokenizer(num_layers=3)
    ids, mask = batch()
    pos = position_ids_from_mask(mask)
    model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[mask.bool()].logsumexp(-1).sum().backward()
    full = {k: p.grad.clone() for k, p in model.named_parameters() if "layers.2." in k}
    model.zero_grad()
    hidden = lower_hidden(model, ids, mask, 2)
    with upper_layers(model, 2):
        logits = model(inputs_embeds=hidden, attention_mask=mask, position_ids=pos).logits
    logits[mask.bool()].logsumexp(-1).sum().backward()
    for k, p in model.named_parameters():
        if "layers.2." in k:
            torch.testing.assert_close(p.grad, full[k], atol=1e-5, rtol=1e-4)
        elif "layers." in k:  # the lower layers never saw the graph
            assert p.grad is None


def test_the_layers_come_back_after_an_error():
    model, _ = tiny_model_and_tokenizer(num_layers=3)
    layers = model.model.layers
    with pytest.raises(RuntimeError), only_layers(model, 1, None, final_norm=False):
        assert len(model.model.layers) == 2
        raise RuntimeError("boom")
    assert model.model.layers is layers and not isinstance(model.model.norm, torch.nn.Identity)


def test_a_model_that_changes_its_input_embeddings_is_detected(monkeypatch):
    """Some decoders transform inputs_embeds on the way in (older Gemma code scaled them by sqrt(hidden)); feeding
    such a model hidden states would transform them again, and the probe must say so."""
    model, _ = tiny_model_and_tokenizer(num_layers=2)
    assert split_matches_full(model, 1, 320)
    forward = model.model.forward

    def scaling_forward(*args, inputs_embeds=None, **kwargs):
        return forward(*args, inputs_embeds=None if inputs_embeds is None else inputs_embeds * 8.0, **kwargs)

    monkeypatch.setattr(model.model, "forward", scaling_forward)
    assert not split_matches_full(model, 1, 320)
