"""The math of PPO from human feedback, as small pure functions (Ziegler et al. 2019; Stiennon et al. 2020).

Shapes: B = episodes (query + response), T = response tokens. Every per-token tensor comes with a (B, T) bool
`mask` that is True on real response tokens (up to and including the first EOS); padding never enters a mean.

    rewards_t   = -β · KL_t                          (per token, KL of policy against reference)
    rewards_T  += score                              (the reward model's score, at the last real token)
    δ_t         = r_t + γ V_{t+1} - V_t              A_t = Σ_k (γλ)^k δ_{t+k}       returns_t = A_t + V_t
    policy loss = E[max(-A ρ, -A clip(ρ, 1-ε, 1+ε))]  ρ = exp(logπ - logπ_old)
    value loss  = ½ E[max((V - R)², (clip(V, V_old ± ε_v) - R)²)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k3"]


# ------------------------------------------------------------------------------------------------ masking

def mask_after_eos(response: Tensor, eos_id: int) -> Tensor:
    """(B, T) ids -> (B, T) bool, True up to and including the first EOS (all True when there is none)."""
    is_eos = (response == eos_id).long()  # (B, T)
    eos_before = is_eos.cumsum(dim=1) - is_eos  # EOS tokens strictly before each position
    return eos_before == 0


def response_end_mask(response: Tensor, eos_id: int, stop_ids: Sequence[int] = (), stop_after: int = 0
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Where each response ends: at its first EOS, or at its first stop token at 0-based position >= stop_after
    (Ziegler et al.'s truncate_token / truncate_after: "." at or after token 16 ends a book continuation).

    (B, T) ids -> ((B, T) bool mask, True up to and including the end token (all True when there is none);
    (B,) bool ended by EOS; (B,) bool ended by a stop token). A response that ends neither way was cut.
    """
    T = response.shape[1]
    is_eos = response == eos_id  # (B, T)
    is_stop = torch.zeros_like(is_eos)
    if stop_ids:
        late = torch.arange(T, device=response.device) >= stop_after  # (T,)
        is_stop = torch.isin(response, torch.as_tensor(list(stop_ids), device=response.device)) & late
    is_end = (is_eos | is_stop).long()  # (B, T)
    mask = (is_end.cumsum(dim=1) - is_end) == 0  # no end token strictly before
    first_end = mask & is_end.bool()  # (B, T) at most one True a row
    return mask, (first_end & is_eos).any(dim=1), (first_end & is_stop & ~is_eos).any(dim=1)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over the True entries of mask (over `dim`, or over everything)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of x over the True entries of mask (Bessel-corrected when `unbiased` and n > 1)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over the masked entries; shift_mean=False keeps the mean (used for rewards). 0 outside."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    white = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        white = white + mean
    return white.masked_fill(~mask.bool(), 0.0)


# ------------------------------------------------------------------------------------------------ KL and rewards

def kl_per_token(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k1") -> Tensor:
    """(B, T) per-token estimate of KL(π || π_ref) from tokens sampled from π.

    k1 = log π - log π_ref: unbiased, can be negative per token (the paper's penalty).
    k3 = (r - 1) - log r with r = π_ref / π: unbiased and never negative, lower variance (Schulman's note).
    """
    log_ratio = logprobs - ref_logprobs  # (B, T)
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (expected k1 or k3)")


def penalise_unfinished(scores: Tensor, ended: Tensor, penalty: float | None) -> Tensor:
    """(B,) scores -> (B,): responses that never produced EOS get `penalty` instead (None: unchanged)."""
    if penalty is None:
        return scores
    return torch.where(ended, scores, torch.full_like(scores, penalty))


def reward_normalisation(scores: Tensor, ended: Tensor) -> tuple[float, float]:
    """(B,) scores of the initial policy's responses, (B,) bool ended -> (mean, std) that map them to mean 0, std 1
    (Ziegler et al. give every reward gain and bias so, on the base policy's samples). Over the responses that
    ended, whose scores are the ones PPO will use (an unfinished one gets the penalty); over all when fewer than 2
    ended. A constant reward keeps std 1, so that normalising never divides by 0."""
    finished = scores[ended] if int(ended.sum()) >= 2 else scores
    mean, std = float(finished.mean()), float(finished.std(unbiased=False))
    return mean, std if std > 1e-6 else 1.0


def normalise_scores(scores: Tensor, mean: float, std: float) -> Tensor:
    """(B,) -> (B,): (score - mean) / std."""
    return (scores - mean) / std


def kl_penalised_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """(B,) scores, (B, T) per-token KL, (B, T) mask -> (B, T) rewards: -β·KL on every real token, plus the score
    on the last real token of each response. 0 on padding."""
    rewards = (-kl_coef * kl).masked_fill(~mask, 0.0)  # (B, T)
    last = last_true_index(mask)  # (B,)
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards


def last_true_index(mask: Tensor) -> Tensor:
    """(B, T) bool -> (B,) index of the last True in each row (0 for an all-False row)."""
    T = mask.shape[1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)  # (B, T)
    return torch.where(mask, positions, torch.zeros_like(positions)).max(dim=1).values


# ------------------------------------------------------------------------------------------------ advantages

def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over (B, T) rewards and values -> (advantages, returns), both (B, T).

    The value after the last real token is 0 (the episode ends there); padding gets 0 advantage and return.
    """
    mask_f = mask.to(values.dtype)
    values = values * mask_f
    rewards = rewards * mask_f
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])  # (B,)
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask_f[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    returns = (advantages + values) * mask_f
    return advantages, returns


# ------------------------------------------------------------------------------------------------ losses

def ppo_policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                    clip_range: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate objective over (B, T) tensors -> (scalar loss, stats: clipfrac, approxkl)."""
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approxkl = 0.5 * masked_mean(log_ratio**2, mask)  # Schulman's ½E[(log ρ)²]
    return loss, {"clipfrac": clipfrac, "approxkl": approxkl}


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
                   clip_range_value: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss over (B, T) tensors -> (scalar loss, stats: clipfrac)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped_err = (values - returns) ** 2
    clipped_err = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_err > unclipped_err).float(), mask)
    return loss, {"clipfrac": clipfrac}


def entropy_from_logits(logits: Tensor, logz: Tensor | None = None) -> Tensor:
    """(..., V) logits -> (...) entropy of softmax(logits), without materialising log_softmax twice.

    `logz` (...), the logits' logsumexp, when the caller has it already (one (..., V) pass less)."""
    if logz is None:
        logz = torch.logsumexp(logits, dim=-1)  # (...)
    probs = torch.softmax(logits, dim=-1)
    return logz - (probs * logits).sum(dim=-1)


# ------------------------------------------------------------------------------------------------ KL control

def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: int, n_steps: int) -> float:
    """Ziegler et al. (2019) eq. 2: β ← β · (1 + K_β · e_t · n / horizon), e_t = clip(KL/target - 1, -0.2, 0.2).

    `n_steps` is the number of episodes since the last update (the paper's n_steps = batch size); K_β = 1.
    """
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * n_steps / horizon)


def next_kl_coef(kind: str, coef: float, kl: float, target: float | None, horizon: int, n_steps: int) -> float:
    """The KL controller: "fixed" keeps β; "adaptive" moves it toward the KL target."""
    if kind == "fixed":
        return coef
    if kind == "adaptive":
        if target is None or target <= 0 or not math.isfinite(kl):
            raise ValueError(f"adaptive KL control needs a positive target and a finite KL (target={target}, "
                             f"kl={kl})")
        return adaptive_kl_coef(coef, kl, target, horizon, n_steps)
    raise ValueError(f"unknown KL controller {kind!r} (expected fixed or adaptive)")
