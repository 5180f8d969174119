"""Preference losses for reward models (pairwise, and best-of-N) (pure tensor math, torch only).

`r_chosen` and `r_rejected` are the reward model's scores of the two summaries of each comparison, shape (B,).

The confidence-aware loss uses a *soft target*: the labeler's 1–9 confidence says how sure they were, so the
probability that the chosen summary is really better is taken to be

    p(d) = 0.5 + 0.5 · d / 4        d = |confidence − 5| ∈ {1, 2, 3, 4}  →  p ∈ {0.625, 0.75, 0.875, 1.0}

and the loss is the binary cross-entropy of σ(r_chosen − r_rejected) against p. A certain labeler (d = 4) gives
exactly the pairwise loss; an unsure one (d = 1) asks only for a small margin (the loss is minimal at
Δ = logit(0.625) ≈ 0.51 instead of pushing Δ → ∞). Rows without a confidence get p = 1 (the pairwise loss).
Why a soft target rather than per-pair weights: weights still push every margin to infinity, only more slowly;
a soft target lets the scores keep "slightly better" apart from "much better", which is what calibration needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CONFIDENCE_NO_PREFERENCE = 5
MAX_CONFIDENCE_DISTANCE = 4


def preference_loss(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """Bradley–Terry negative log-likelihood: −log σ(r_chosen − r_rejected), averaged. (B,), (B,) -> ()."""
    return preference_losses(r_chosen, r_rejected).mean()


def preference_losses(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """The Bradley–Terry loss of each pair: (B,), (B,) -> (B,)."""
    return -F.logsigmoid(r_chosen - r_rejected)


def confidence_target(distance: Tensor) -> Tensor:
    """(B,) confidence distances |c − 5| (NaN or negative = unknown) -> (B,) soft targets p in [0.5, 1]."""
    d = distance.float()
    known = torch.isfinite(d) & (d >= 0)
    p = 0.5 + 0.5 * d.clamp(0, MAX_CONFIDENCE_DISTANCE) / MAX_CONFIDENCE_DISTANCE
    return torch.where(known, p, torch.ones_like(d))


def confidence_preference_loss(r_chosen: Tensor, r_rejected: Tensor, distance: Tensor) -> Tensor:
    """Soft-target loss −[p·log σ(Δ) + (1−p)·log σ(−Δ)], Δ = r_chosen − r_rejected, p = confidence_target(d).

    (B,), (B,), (B,) -> (). Equals `preference_loss` when every distance is 4 (or unknown).
    """
    return confidence_preference_losses(r_chosen, r_rejected, distance).mean()


def confidence_preference_losses(r_chosen: Tensor, r_rejected: Tensor, distance: Tensor) -> Tensor:
    """The soft-target loss of each pair: (B,), (B,), (B,) -> (B,)."""
    margin = r_chosen - r_rejected  # (B,)
    p = confidence_target(distance).to(margin.dtype)  # (B,)
    return -(p * F.logsigmoid(margin) + (1 - p) * F.logsigmoid(-margin))


def weighted_mean(losses: Tensor, weights: Tensor) -> Tensor:
    """(B,) losses, (B,) weights -> () the mean of weight × loss: a weight of 1 everywhere is the plain mean,
    and a pair of weight w pulls w times as hard as one of weight 1 (the batch's size still divides)."""
    return (losses * weights.to(losses.dtype)).mean()


def best_of_n_loss(scores: Tensor, best: Tensor) -> Tensor:
    """Ziegler et al.'s best-of-N loss: softmax cross-entropy of the labeler's pick over the N scores,
    −log( exp(r_best) / Σ_j exp(r_j) ), averaged. (B, N) scores, (B,) long indices -> (). With N = 2 it is the
    pairwise loss −log σ(r_best − r_other)."""
    return F.cross_entropy(scores.float(), best.long())


def top1_accuracy(scores: Tensor, best: Tensor) -> Tensor:
    """Fraction of groups whose highest score is the labeler's pick; a tie at the top counts 1/(number tied).
    (B, N), (B,) -> (). Chance is 1/N."""
    top = scores == scores.max(dim=1, keepdim=True).values  # (B, N)
    hit = top.gather(1, best.long()[:, None]).squeeze(1).float()  # (B,)
    return (hit / top.sum(dim=1).float()).mean()


def preference_accuracy(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """Fraction of pairs where the chosen summary scores higher; an exact tie counts as half. (B,), (B,) -> ()."""
    wins = (r_chosen > r_rejected).float() + 0.5 * (r_chosen == r_rejected).float()  # (B,)
    return wins.mean()


def p_chosen(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """The model's probability that the chosen summary is preferred: σ(r_chosen − r_rejected). (B,) -> (B,)."""
    return torch.sigmoid(r_chosen - r_rejected)


__all__ = ["best_of_n_loss", "confidence_preference_loss", "top1_accuracy", "confidence_target", "p_chosen", "preference_accuracy",
           "preference_loss"]


# ------------------------------------------------------------------------------------- ODIN (Chen et al. 2024)

def pearson(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of two (n,) vectors -> a scalar in [-1, 1] (0 when either is constant), differentiable.

    ρ = Σ (x - x̄)(y - ȳ) / sqrt(Σ (x - x̄)² · Σ (y - ȳ)² + eps)"""
    xc, yc = x.float() - x.float().mean(), y.float() - y.float().mean()
    return (xc * yc).sum() / torch.sqrt((xc * xc).sum() * (yc * yc).sum() + eps)


def odin_length_terms(quality: Tensor, length_scores: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """ODIN's two length terms over one batch of responses: (|ρ(quality, length)|, -ρ(length head, length)).

    quality, length_scores: (n,) the two heads' scores; lengths: (n,) response lengths in tokens. Adding the first
    to the loss drives the quality head's correlation with length to 0; the second keeps the length head carrying
    it (minimising -ρ maximises ρ)."""
    lengths = lengths.to(quality.device).float()
    return pearson(quality, lengths).abs(), -pearson(length_scores, lengths)


# ------------------------------------------------------------------------ RM ensembles (Coste et al. 2023)

def combine_ensemble(scores: Tensor, rule: str, lam: float = 0.0) -> Tensor:
    """(K, B) the K members' scores -> (B,) the ensemble's: `mean`; `min` (worst case); `uwo`, uncertainty-
    weighted, mean − λ·std with the population std over the K members (σ = sqrt(Σ (s − s̄)² / K))."""
    if rule == "mean":
        return scores.mean(0)
    if rule == "min":
        return scores.min(0).values
    if rule == "uwo":
        return scores.mean(0) - lam * scores.std(0, unbiased=False)
    raise ValueError(f"ensemble rule {rule!r}: choose mean, min or uwo=<lambda>")


# ------------------------------------------------------------------------------------- DPO (Rafailov et al.)

def dpo_losses(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
               beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """(m,) per-pair DPO losses and the (m,) implied rewards of the chosen and the rejected summaries.

    Inputs are (m,) summed log-probs of each summary given its query. The implied reward is
    r = β·(log π(y|x) − log π_ref(y|x)); the loss is −log σ(r_chosen − r_rejected)."""
    r_chosen = beta * (policy_chosen - ref_chosen)
    r_rejected = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(r_chosen - r_rejected), r_chosen, r_rejected
