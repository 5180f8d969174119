"""Preference losses and accuracy on hand-computed cases."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from rlhflab.ops.losses import (  # noqa: E402
    confidence_preference_loss,
    confidence_target,
    p_chosen,
    preference_accuracy,
    preference_loss,
)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def test_preference_loss_hand_computed():
    # margins 0 and ln 3: -log σ(0) = ln 2; -log σ(ln 3) = -log(3/4) = ln(4/3)
    loss = preference_loss(t(0.0, math.log(3.0)), t(0.0, 0.0))
    assert float(loss) == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, abs=1e-6)
    # a wrong-way margin of ln 3: -log σ(-ln 3) = -log(1/4) = ln 4
    assert float(preference_loss(t(0.0), t(math.log(3.0)))) == pytest.approx(math.log(4), abs=1e-6)


def test_preference_loss_only_depends_on_the_margin_and_has_the_right_gradient():
    rc, rr = t(1.0, 2.0).requires_grad_(), t(0.5, 3.0)
    preference_loss(rc, rr).backward()
    # d/d rc of -log σ(rc - rr) / B = -(1 - σ(Δ)) / B
    expect = [-(1 - 1 / (1 + math.exp(-0.5))) / 2, -(1 - 1 / (1 + math.exp(1.0))) / 2]
    assert rc.grad.tolist() == pytest.approx(expect, abs=1e-6)
    assert float(preference_loss(t(11.0), t(10.0))) == pytest.approx(float(preference_loss(t(1.0), t(0.0))))


def test_confidence_target_table():
    assert confidence_target(t(1, 2, 3, 4)).tolist() == [0.625, 0.75, 0.875, 1.0]
    assert confidence_target(t(float("nan"), 0)).tolist() == [1.0, 0.5]  # unknown -> hard label; 0 -> no pref


def test_confidence_loss_hand_computed_and_reduces_to_pairwise_when_certain():
    rc, rr = t(math.log(3.0)), t(0.0)  # σ(Δ) = 3/4
    # p = 0.75 (d = 2): -(0.75 ln 0.75 + 0.25 ln 0.25)
    expect = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(confidence_preference_loss(rc, rr, t(2))) == pytest.approx(expect, abs=1e-6)
    rc2, rr2 = t(0.3, -1.0, 2.0), t(0.0, 0.5, 2.5)
    assert float(confidence_preference_loss(rc2, rr2, t(4, 4, float("nan")))) == pytest.approx(
        float(preference_loss(rc2, rr2)), abs=1e-6)


def test_confidence_loss_is_minimal_at_the_target_margin():
    margins = torch.linspace(-3, 3, 601)
    losses = torch.stack([confidence_preference_loss(m.view(1), t(0.0), t(1)) for m in margins])
    best = float(margins[losses.argmin()])
    assert best == pytest.approx(math.log(0.625 / 0.375), abs=0.01)


def test_accuracy_counts_ties_as_half():
    assert float(preference_accuracy(t(1, 2, 3, 0), t(0, 3, 3, -1))) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert float(p_chosen(t(math.log(3.0)), t(0.0))) == pytest.approx(0.75)


def test_best_of_n_loss_is_softmax_cross_entropy_by_hand():
    from rlhflab.ops.losses import best_of_n_loss

    scores = torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    best = torch.tensor([1, 3])
    # row 0: -log(e^2 / (e^1 + e^2 + e^0 + e^-1)); row 1: -log(1/4)
    z0 = math.exp(1) + math.exp(2) + 1 + math.exp(-1)
    expected = (-(2 - math.log(z0)) + math.log(4)) / 2
    assert float(best_of_n_loss(scores, best)) == pytest.approx(expected, rel=1e-6)


def test_best_of_n_loss_with_two_samples_is_the_pairwise_loss():
    from rlhflab.ops.losses import best_of_n_loss

    r_chosen, r_rejected = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([1.0, -2.0, 2.5])
    scores = torch.stack([r_rejected, r_chosen], dim=1)  # the pick is the second column
    assert float(best_of_n_loss(scores, torch.ones(3, dtype=torch.long))) == pytest.approx(
        float(preference_loss(r_chosen, r_rejected)), rel=1e-6)


def test_top1_accuracy_counts_ties_at_the_top_as_shares():
    from rlhflab.ops.losses import top1_accuracy

    scores = torch.tensor([[0.1, 0.9, 0.2, 0.0], [1.0, 1.0, 0.0, 0.0], [0.5, 0.1, 0.2, 0.3]])
    best = torch.tensor([1, 0, 3])  # hit, half (two tied at the top), miss
    assert float(top1_accuracy(scores, best)) == pytest.approx((1 + 0.5 + 0) / 3)
