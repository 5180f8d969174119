"""PPO math on hand-computed tensors."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from rlhflab.ops.ppo import (  # noqa: E402
    adaptive_kl_coef,
    entropy_from_logits,
    gae,
    kl_penalised_rewards,
    kl_per_token,
    last_true_index,
    mask_after_eos,
    masked_mean,
    masked_var,
    masked_whiten,
    next_kl_coef,
    normalise_scores,
    penalise_unfinished,
    ppo_policy_loss,
    ppo_value_loss,
    reward_normalisation,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_mask_after_eos_keeps_the_first_eos_and_drops_the_rest():
    eos = 9
    response = torch.tensor([[1, 9, 2, 9], [1, 2, 3, 4], [9, 1, 1, 1]])
    assert mask_after_eos(response, eos).tolist() == [
        [True, True, False, False], [True, True, True, True], [True, False, False, False]]


def test_masked_mean_var_whiten_ignore_padding():
    x = t([1.0, 3.0, 100.0], [5.0, -7.0, -7.0])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert float(masked_mean(x, mask)) == pytest.approx(3.0)  # (1 + 3 + 5) / 3
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([2.0, 5.0])
    assert float(masked_var(x, mask)) == pytest.approx(4.0)  # ((-2)² + 0² + 2²) / (3 - 1)
    assert float(masked_var(x, mask, unbiased=False)) == pytest.approx(8 / 3)
    white = masked_whiten(x, mask)
    assert white[mask].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    assert white[~mask].tolist() == [0.0, 0.0, 0.0]
    kept = masked_whiten(x, mask, shift_mean=False)
    assert kept[mask].tolist() == pytest.approx([2.0, 3.0, 4.0], abs=1e-6)  # scaled, mean 3 kept


def test_kl_estimators():
    logp, ref = t([math.log(0.5), math.log(0.2)]), t([math.log(0.25), math.log(0.4)])
    assert kl_per_token(logp, ref, "k1").tolist()[0] == pytest.approx([math.log(2), math.log(0.5)])
    # k3 = (r - 1) - log r, r = π_ref/π: r = 0.5 -> -0.5 + ln 2; r = 2 -> 1 - ln 2
    assert kl_per_token(logp, ref, "k3").tolist()[0] == pytest.approx([-0.5 + math.log(2), 1 - math.log(2)])
    assert bool((kl_per_token(logp, ref, "k3") >= 0).all())
    with pytest.raises(ValueError, match="k2"):
        kl_per_token(logp, ref, "k2")


def test_penalise_unfinished():
    out = penalise_unfinished(t(1.0, 2.0, 3.0), torch.tensor([True, False, True]), -5.0)
    assert out.tolist() == [1.0, -5.0, 3.0]
    assert penalise_unfinished(t(1.0, 2.0), torch.tensor([False, False]), None).tolist() == [1.0, 2.0]


def test_reward_normalisation_uses_the_finished_responses_and_never_divides_by_zero():
    # finished scores 1 and 3: mean 2, population std 1; the unfinished 100 does not count
    scores, ended = t(1.0, 100.0, 3.0), torch.tensor([True, False, True])
    assert reward_normalisation(scores, ended) == pytest.approx((2.0, 1.0))
    assert normalise_scores(scores, 2.0, 1.0).tolist() == pytest.approx([-1.0, 98.0, 1.0])
    # fewer than two finished: all of them. 1, 100, 3 -> mean 104/3, std sqrt(mean of squared deviations)
    mean, std = reward_normalisation(scores, torch.tensor([False, False, True]))
    assert mean == pytest.approx(104 / 3)
    assert std == pytest.approx(math.sqrt(((1 - 104 / 3) ** 2 + (100 - 104 / 3) ** 2 + (3 - 104 / 3) ** 2) / 3))
    # a constant reward: the mean is removed, the scale kept
    assert reward_normalisation(t(0.5, 0.5), torch.tensor([True, True])) == (0.5, 1.0)
    assert normalise_scores(t(4.0, 0.0), 2.0, 4.0).tolist() == [0.5, -0.5]


def test_kl_penalised_rewards_put_the_score_on_the_last_real_token():
    kl = t([0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    rewards = kl_penalised_rewards(t(1.0, -2.0), kl, mask, kl_coef=0.5)
    assert rewards.flatten().tolist() == pytest.approx([-0.05, -0.1, -0.15 + 1.0, -0.25 - 2.0, 0.0, 0.0])
    assert last_true_index(mask).tolist() == [2, 0]


def test_gae_hand_computed():
    # one episode of 3 tokens (then padding), γ = 1, λ = 0.5
    rewards, values = t([0.0, 0.0, 1.0, 0.0]), t([0.5, 0.25, 0.5, 9.0])
    mask = torch.tensor([[True, True, True, False]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # δ2 = 1 + 0 - 0.5 = 0.5; δ1 = 0 + 0.5 - 0.25 = 0.25; δ0 = 0 + 0.25 - 0.5 = -0.25
    # A2 = 0.5; A1 = 0.25 + 0.5·0.5 = 0.5; A0 = -0.25 + 0.5·0.5 = 0
    assert adv[0].tolist() == pytest.approx([0.0, 0.5, 0.5, 0.0])
    assert ret[0].tolist() == pytest.approx([0.5, 0.75, 1.0, 0.0])
    # λ = 1, γ = 1: the return is the sum of future rewards
    adv1, ret1 = gae(t([0.1, 0.2, 0.3]), t([0.0, 0.0, 0.0]), torch.ones(1, 3, dtype=torch.bool), 1.0, 1.0)
    assert ret1[0].tolist() == pytest.approx([0.6, 0.5, 0.3])
    # γ discounts: γ = 0.5, λ = 1, zero values -> returns 0.1 + 0.5·0.2 + 0.25·0.3
    _, ret2 = gae(t([0.1, 0.2, 0.3]), t([0.0, 0.0, 0.0]), torch.ones(1, 3, dtype=torch.bool), 0.5, 1.0)
    assert ret2[0, 0].item() == pytest.approx(0.275)


def test_policy_loss_clips_and_reports():
    old = t([0.0, 0.0])
    logp = t([math.log(1.5), math.log(0.5)])  # ratios 1.5 and 0.5
    adv = t([1.0, -1.0])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, stats = ppo_policy_loss(logp, old, adv, mask, clip_range=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(0.5, 0.8) = 0.8 (clipped)
    assert float(loss) == pytest.approx((-1.2 + 0.8) / 2)
    assert float(stats["clipfrac"]) == pytest.approx(1.0)
    assert float(stats["approxkl"]) == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2)
    # inside the clip range: plain -A·ρ, and the gradient flows
    logp = t([math.log(1.1), 0.0]).requires_grad_()
    loss, stats = ppo_policy_loss(logp, old, t([2.0, 0.0]), mask, clip_range=0.2)
    assert float(loss.detach()) == pytest.approx(-2.0 * 1.1 / 2)
    assert float(stats["clipfrac"]) == 0.0
    loss.backward()
    assert logp.grad.tolist()[0][0] == pytest.approx(-2.0 * 1.1 / 2)  # d(-A e^x)/dx / n


def test_value_loss_clips():
    old, ret = t([0.0, 0.0]), t([1.0, 1.0])
    values = t([0.5, 0.1])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, stats = ppo_value_loss(values, old, ret, mask, clip_range_value=0.2)
    # token 0: unclipped (0.5-1)² = 0.25, clipped (0.2-1)² = 0.64 -> 0.64; token 1: 0.81 both
    assert float(loss) == pytest.approx(0.5 * (0.64 + 0.81) / 2)
    assert float(stats["clipfrac"]) == pytest.approx(0.5)


def test_entropy_from_logits():
    uniform = torch.zeros(2, 4)
    assert entropy_from_logits(uniform).tolist() == pytest.approx([math.log(4)] * 2)
    p = torch.tensor([0.7, 0.2, 0.1])
    assert float(entropy_from_logits(p.log())) == pytest.approx(float(-(p * p.log()).sum()), abs=1e-6)


def test_adaptive_kl_controller_is_zieglers_formula():
    # KL twice the target: error clipped to +0.2; β ← β (1 + 0.2 · 64 / 10000)
    assert adaptive_kl_coef(0.1, kl=12.0, target=6.0, horizon=10000, n_steps=64) == pytest.approx(
        0.1 * (1 + 0.2 * 64 / 10000))
    # KL slightly under: error = 5.7/6 - 1 = -0.05
    assert adaptive_kl_coef(0.1, kl=5.7, target=6.0, horizon=100, n_steps=10) == pytest.approx(
        0.1 * (1 - 0.05 * 10 / 100))
    assert next_kl_coef("fixed", 0.3, 100.0, 6.0, 100, 10) == 0.3
    with pytest.raises(ValueError, match="target"):
        next_kl_coef("adaptive", 0.3, 1.0, None, 100, 10)
    with pytest.raises(ValueError, match="controller"):
        next_kl_coef("pid", 0.3, 1.0, 6.0, 100, 10)


def test_response_end_mask_truncates_after_the_first_stop_token_at_or_after_position_n():
    from rlhflab.ops.ppo import response_end_mask

    eos, dot = 0, 7  # ids: 0 = EOS, 7 = "."
    response = torch.tensor([
        [5, 7, 5, 5, 7, 5, 7],  # "." at 1 is too early (after=3); the one at 4 ends it
        [5, 5, 5, 5, 5, 5, 5],  # no stop token, no EOS: cut at the length limit
        [5, 5, 0, 7, 5, 5, 5],  # EOS comes first
        [5, 5, 5, 7, 0, 5, 5],  # "." at 3 (>= after) comes before EOS: stopped, not eos
    ])
    mask, ended_eos, stopped = response_end_mask(response, eos, stop_ids=(dot,), stop_after=3)
    assert mask.long().tolist() == [
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
    ]
    assert ended_eos.tolist() == [False, False, True, False]
    assert stopped.tolist() == [True, False, False, True]


def test_response_end_mask_without_stop_tokens_is_the_eos_mask():
    from rlhflab.ops.ppo import response_end_mask

    response = torch.tensor([[3, 2, 0, 2], [3, 3, 3, 3]])
    mask, ended_eos, stopped = response_end_mask(response, 0)
    assert torch.equal(mask, mask_after_eos(response, 0))
    assert ended_eos.tolist() == [True, False] and stopped.tolist() == [False, False]


def test_response_end_mask_at_zieglers_settings_dot_at_or_after_token_16():
    from rlhflab.ops.ppo import response_end_mask

    eos, dot, w = 0, 13, 5  # w: any word token
    early_dot = [w] * 10 + [dot] + [w] * 5 + [w, dot] + [w] * 6  # "." at 10 (too early) and at 17
    exactly_16 = [w] * 16 + [dot] + [w] * 7  # "." at position 16 ends it
    never = [w] * 15 + [dot] + [w] * 8  # "." only at 15: the continuation never ends (no-EOS penalty)
    mask, ended_eos, stopped = response_end_mask(torch.tensor([early_dot, exactly_16, never]), eos, (dot,), 16)
    assert mask.sum(1).tolist() == [18, 17, 24]
    assert stopped.tolist() == [True, True, False] and not ended_eos.any()
