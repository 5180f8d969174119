"""`rlhflab ppo`: optimise the policy against a reward model, a KL penalty keeping it near the SFT model.

One PPO update, as in Ziegler et al. (2019) and Stiennon et al. (2020):

    (1) roll out     sample a response for each of `rollout_batch_size` queries at temperature T
    (2) score        the reward model (or a callable) scores query+response; no EOS -> `no_eos_penalty`
    (3) KL reward    r_t = -β·KL_t(π || π_ref) on every token, plus the score on the last one
    (4) advantages   values of the separate value model (initialised from the RM), GAE, whitened advantages
    (5) optimise     `ppo_epochs` passes over minibatches: clipped policy loss and clipped value loss
    (6) bookkeeping  KL controller update, metrics, a samples table, a checkpoint

Four models: the policy (trained), the reference (the SFT model, frozen — or the policy with its LoRA adapters
off), the value model (trained) and the reward model (frozen). The whole training state — both models,
optimizers, schedules, the shuffling generator, the data position and β — is in state/, so a run killed at any
point resumes to the same numbers as one that never stopped. Each episode is sampled from its own seed, made of
(seed, update, row of the rollout), so resuming needs no sampling state.

Several processes (`accelerate launch`, see train/distributed.py): each rolls out its contiguous share of the
update's queries (the same episodes, with the same seeds, as one process would sample), scores them, and the
rollout is gathered so that every process holds all of it, laid out exactly as one process would lay it out.
Rewards, GAE, advantage whitening, the KL controller and the metrics then use the whole rollout; each minibatch
of the (shared) global shuffle is split between the processes, the loss is divided by the number of micro
batches of the whole minibatch and the gradients are summed. Only the main process writes the run directory.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from rlhflab.core.log import get_logger
from rlhflab.core.rundir import RunDir
from rlhflab.core.seed import seed_everything
from rlhflab.data.format import format_query
from rlhflab.data.loaders import load_posts
from rlhflab.models.device import autocast
from rlhflab.models.generation import (
    Generation,
    decode_responses,
    generate,
    pad_queries,
    response_logprobs_and_entropy,
)
from rlhflab.models.loading import load_model, save_model
from rlhflab.models.trunk import lower_hidden, split_matches_full, upper_layers
from rlhflab.models.reward import NotARewardModelError, RewardModel, load_reward_model, new_reward_model
from rlhflab.ops.ppo import (
    gae,
    kl_penalised_rewards,
    kl_per_token,
    masked_mean,
    masked_whiten,
    next_kl_coef,
    penalise_unfinished,
    ppo_policy_loss,
    ppo_value_loss,
)
from rlhflab.train.common import (
    OptimConfig,
    batch_sizes,
    freeze_lower_layers,
    load_state,
    make_optimizer,
    save_state,
    write_table,
)
from rlhflab.train.distributed import (
    Processes,
    all_processes,
    barrier,
    check_divides,
    clip_grad_norm,
    full_state_dict,
    gather_rows,
    gathered,
    pad_and_gather_rows,
    processes,
    shard_layers,
    share,
    sum_across,
    sum_gradients,
)

log = get_logger(__name__)

RewardFn = Callable[[list[str], list[str]], Sequence[float]]


@dataclass
class PPOData:
    posts: str = "../shared/data/tldr/train.jsonl.gz"  # queries: TL;DR, CNN/DM or posts JSONL; local path or hub
    format: str = "auto"
    limit: int | None = None
    max_query_tokens: int = 512


@dataclass
class KLConfig:
    controller: Literal["adaptive", "fixed"] = "adaptive"
    init_coef: float = 0.05  # β; the paper's summarisation runs used 0.05
    target: float = 6.0  # nats per episode the adaptive controller aims for (Ziegler et al.)
    horizon: int = 10000  # episodes over which the adaptive controller closes the gap
    estimator: Literal["k1", "k3"] = "k1"  # per-token KL in the reward (k1: the paper's log π - log π_ref)


@dataclass
class LoraOptions:
    r: int = 0  # 0 = full fine-tuning; > 0: LoRA adapters, and the reference is the same base with them off
    alpha: int = 16
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class PPOConfig:
    model: str = "smollm2-135m"  # the reference (and the policy's start): an SFT run directory (or any model spec)
    policy_init: str | None = None  # start the policy here instead (e.g. the last round's PPO run); None = model
    reward: str = "runs/rm/cpu"  # an `rlhflab rm` run directory, or "python:module:function" (f(queries, responses))
    value_model: str | None = None  # None: the reward RM (a callable reward: the policy's model + a fresh head)
    seed: int = 1
    data: PPOData = field(default_factory=PPOData)
    total_episodes: int = 256
    rollout_batch_size: int = 16  # queries per update (episodes per rollout)
    mini_batch_size: int = 8  # episodes per optimiser step
    micro_batch_size: int = 4  # episodes per forward/backward
    ppo_epochs: int = 4
    max_new_tokens: int = 48
    temperature: float = 0.7
    stop_at_eos: bool = True  # False: every response is exactly max_new_tokens long (fixed shapes)
    no_eos_penalty: float | None = -1.0  # the score of a response that never ended (None: use the RM's score)
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    whiten_rewards: bool = False
    kl: KLConfig = field(default_factory=KLConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, warmup_ratio=0.0, min_lr_ratio=0.0))
    value_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, warmup_ratio=0.0,
                                                                         min_lr_ratio=0.0))
    lora: LoraOptions = field(default_factory=LoraOptions)
    freeze_layers: int = 0  # freeze the embeddings and the lowest N layers of the policy and the value model
    reuse_frozen: bool = True  # run the frozen lower layers once per rollout, not in every PPO epoch (same math)
    bf16: bool = False  # bf16 autocast
    frozen_bf16: bool = False  # keep the reference and the reward model's weights in bf16
    device: str = "auto"
    score_batch_size: int = 16  # sequences per no-grad forward (reference, old log-probs, values, reward)
    log_every: int = 1
    sample_every: int = 10  # write a samples table every this many updates (and after the first and the last)
    n_samples: int = 4
    save_every: int = 5  # checkpoint every this many updates (and after the last)
    snapshot_every: int = 0  # > 0: also keep the policy as a plain model in snapshots/update_XXXXX/ (for KL curves)
    allow_partial: bool = False


@dataclass
class Rollout:
    """One update's episodes, all (R, ...) tensors on the training device; T = response tokens."""
    query_response: torch.Tensor  # (R, Tq+T)
    attention_mask: torch.Tensor  # (R, Tq+T)
    query_len: int
    mask: torch.Tensor  # (R, T) bool: real response tokens
    logprobs: torch.Tensor  # (R, T) old policy log-probs
    ref_logprobs: torch.Tensor  # (R, T)
    values: torch.Tensor  # (R, T) old values
    advantages: torch.Tensor  # (R, T)
    returns: torch.Tensor  # (R, T)
    policy_hidden: torch.Tensor | None = None  # (R, Tq+T, H) output of the policy's frozen lower layers, or None
    value_hidden: torch.Tensor | None = None  # (R, Tq+T, H) the same for the value model


# ------------------------------------------------------------------------------------------------ models

def load_policy_and_reference(cfg: PPOConfig, device: torch.device):
    """(policy, reference or None, tokenizer). With LoRA the reference is the policy with its adapters off."""
    policy, tokenizer = load_model(cfg.policy_init or cfg.model, allow_partial=cfg.allow_partial)
    if cfg.lora.r > 0:
        from peft import LoraConfig, get_peft_model

        policy = get_peft_model(policy, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=0.0,
                                                   target_modules=list(cfg.lora.target_modules)))
        reference = None
    else:
        freeze_lower_layers(policy, cfg.freeze_layers)
        reference, _ = load_model(cfg.model, dtype="bfloat16" if cfg.frozen_bf16 else "float32",
                                  allow_partial=cfg.allow_partial)
        reference.requires_grad_(False).to(device).eval()
    return policy.to(device), reference, tokenizer


def load_reward(cfg: PPOConfig, reward_fn: RewardFn | None, device: torch.device) -> RewardModel | RewardFn:
    if reward_fn is not None:
        return reward_fn
    if cfg.reward.startswith("python:"):
        module_name, _, fn_name = cfg.reward.removeprefix("python:").partition(":")
        if not fn_name:
            raise ValueError(f"reward={cfg.reward!r}: expected python:module:function")
        return getattr(importlib.import_module(module_name), fn_name)
    rm = load_reward_model(cfg.reward, dtype="bfloat16" if cfg.frozen_bf16 else "float32")
    return rm.requires_grad_(False).to(device).eval()


def load_value_model(cfg: PPOConfig, device: torch.device) -> RewardModel:
    """The value model starts as the reward model (the paper), or — for a callable reward, or a `value_model`
    that is a plain language model — as that model with a fresh scalar head."""
    spec = cfg.value_model or (cfg.model if cfg.reward.startswith("python:") else cfg.reward)
    try:
        value = load_reward_model(spec, allow_partial=cfg.allow_partial)
    except NotARewardModelError:
        value = new_reward_model(spec, seed=cfg.seed, allow_partial=cfg.allow_partial)
    value.requires_grad_(True)
    freeze_lower_layers(value.lm, cfg.freeze_layers)
    return value.to(device).train()


# ------------------------------------------------------------------------------------------------ phases

def score_responses(reward, tokenizer, queries: list[list[int]], gen: Generation, cfg: PPOConfig,
                    texts: tuple[list[str], list[str]], shared: tuple[torch.Tensor, int] | None = None
                    ) -> torch.Tensor:
    """(R,) float32 scores of the responses (response tokens up to and including EOS). `shared` = (the value
    model's frozen-layer states, N): the RM has the same lower N layers, so it runs only its upper ones on them."""
    if not isinstance(reward, RewardModel):
        scores = torch.tensor([float(x) for x in reward(*texts)], dtype=torch.float32)
        if scores.shape != (len(queries),):
            raise ValueError(f"the reward callable returned {tuple(scores.shape)} scores for {len(queries)} "
                             "responses")
        return scores
    if shared is not None:
        hidden, n_frozen = shared
        qlen = gen.query_response.shape[1] - gen.response.shape[1]

        def run(s):  # the rollout's own layout: the RM reads the last real token, i.e. the EOS if there is one
            q, a, _ = trim_left(gen.query_response[s], gen.attention_mask[s], qlen)
            with autocast(q.device, cfg.bf16), upper(reward.lm, n_frozen):
                return reward(q, a, inputs_embeds=slice_hidden(hidden, s, q.shape[1], reward.lm))
        return forward_in_chunks(run, len(queries), cfg.score_batch_size).cpu()
    responses = [gen.response[b, : int(gen.response_mask[b].sum())].tolist() for b in range(len(queries))]
    if reward.tokenizer.get_vocab() != tokenizer.get_vocab():  # a different tokenizer: go through the text
        return reward.score(texts[0], texts[1], eos=gen.eos.tolist(), batch_size=cfg.score_batch_size,
                            bf16=cfg.bf16)
    return reward.score_ids(queries, responses, batch_size=cfg.score_batch_size, bf16=cfg.bf16)


@torch.no_grad()
def forward_in_chunks(fn, n: int, size: int) -> torch.Tensor:
    return torch.cat([fn(slice(i, i + size)) for i in range(0, n, size)])


def values_of(value_model: RewardModel, query_response: torch.Tensor, attention_mask: torch.Tensor,
              query_len: int, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) V_t: the value head read at the position that predicts response token t."""
    return value_model.per_token(query_response, attention_mask, first=query_len - 1,
                                 inputs_embeds=inputs_embeds)[:, :-1]


def frozen_layers_to_reuse(cfg: PPOConfig, policy, value_model: RewardModel, vocab_size: int) -> int:
    """How many frozen lower layers to run once per rollout: cfg.freeze_layers when it is safe, else 0."""
    if not (cfg.reuse_frozen and cfg.freeze_layers and cfg.lora.r == 0):
        return 0
    try:
        ok = all(split_matches_full(m, cfg.freeze_layers, vocab_size) for m in (policy, value_model.lm))
    except TypeError:  # no .layers/.norm decoder
        ok = False
    if not ok:
        log.warning("reuse_frozen: this architecture does not split cleanly at layer %d; running every layer "
                    "in every PPO epoch", cfg.freeze_layers)
    if ok:
        log.info("the frozen lower %d layers run once per rollout (policy, reference and value model)",
                 cfg.freeze_layers)
    return cfg.freeze_layers if ok else 0


def frozen_states(model, qr: torch.Tensor, am: torch.Tensor, qlen: int, n_frozen: int, cfg: PPOConfig
                  ) -> torch.Tensor:
    """(R, Tq+T, H) output of the frozen lower layers for the whole rollout, computed in chunks on trimmed rows
    and left-padded back to the rollout's width with zeros (pad positions are masked everywhere)."""
    chunks = []
    for i in range(0, qr.shape[0], cfg.score_batch_size):
        s = slice(i, i + cfg.score_batch_size)
        q, a, _ = trim_left(qr[s], am[s], qlen)
        with autocast(q.device, cfg.bf16):
            h = lower_hidden(model, q, a, n_frozen)  # (b, t, H)
        chunks.append(torch.nn.functional.pad(h, (0, 0, qr.shape[1] - q.shape[1], 0)))
    return torch.cat(chunks)


def frozen_rollout_states(gen: Generation, policy, value_model: RewardModel, n_frozen: int, cfg: PPOConfig
                          ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The policy's and the value model's frozen-layer states for a rollout (None, None without reuse)."""
    if not n_frozen:
        return None, None
    qr, am = gen.query_response, gen.attention_mask
    qlen = qr.shape[1] - gen.response.shape[1]
    return (frozen_states(policy, qr, am, qlen, n_frozen, cfg),
            frozen_states(value_model.lm, qr, am, qlen, n_frozen, cfg))


def lower_layers_equal(ours, theirs, n_frozen: int) -> bool:
    """Do two decoder LMs hold the same embeddings and lowest n layers (compared in `theirs`' dtype)?"""
    names = ("embed_tokens.",) + tuple(f"layers.{i}." for i in range(n_frozen))
    mine = dict(ours.get_decoder().named_parameters())
    other = {k: p for k, p in theirs.get_decoder().named_parameters() if k.startswith(names)}
    return bool(other) and all(k in mine and torch.equal(mine[k].detach().to(p.dtype), p) for k, p in other.items())


def same_lower_layers(reward, value_model: RewardModel, n_frozen: int, tokenizer) -> bool:
    """Can the RM run on the value model's frozen-layer states? Yes when it is a reward model with the same
    tokenizer whose embeddings and lowest n layers hold the same weights (the value model started as this RM)."""
    if not isinstance(reward, RewardModel) or reward.tokenizer.get_vocab() != tokenizer.get_vocab():
        return False
    if not lower_layers_equal(value_model.lm, reward.lm, n_frozen):
        return False
    log.info("the reward model shares the value model's frozen lower %d layers (the value model started as it)",
             n_frozen)
    return True


def slice_hidden(hidden: torch.Tensor | None, rows, width: int, model) -> torch.Tensor | None:
    """The rows of a rollout's frozen-layer states, cut to a trimmed micro batch's last `width` columns, in the
    dtype of `model`'s weights (a bf16 reference reads the fp32 policy states)."""
    if hidden is None:
        return None
    return hidden[rows][:, hidden.shape[1] - width :].to(next(model.parameters()).dtype)


def upper(model, n_frozen: int):
    """Run only the layers above the frozen ones (inputs_embeds = their states); a no-op for n_frozen == 0."""
    return upper_layers(model, n_frozen) if n_frozen else contextlib.nullcontext()


def trim_left(query_response: torch.Tensor, attention_mask: torch.Tensor, query_len: int
              ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Drop the left-padding columns that every row of a micro batch has (less work for short queries)."""
    start = int(attention_mask[:, :query_len].any(dim=0).long().argmax())
    return query_response[:, start:], attention_mask[:, start:], query_len - start


def old_logprobs_and_values(gen: Generation, policy, reference, value_model, cfg: PPOConfig, n_frozen: int,
                            policy_hidden: torch.Tensor | None, value_hidden: torch.Tensor | None,
                            ref_shares_policy_layers: bool = True
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward passes of steps (3) and (4): (R, T) old log-probs, reference log-probs and values. With
    n_frozen > 0 only the upper layers run, on the frozen layers' states; the reference reads the policy's when it
    has the same lower layers (always, unless the policy started from `policy_init`)."""
    qr, am, mask = gen.query_response, gen.attention_mask, gen.response_mask
    qlen = qr.shape[1] - gen.response.shape[1]
    n, size = qr.shape[0], cfg.score_batch_size

    def logp_of(model, hidden):
        def run(s):
            q, a, ql = trim_left(qr[s], am[s], qlen)
            h = slice_hidden(hidden, s, q.shape[1], model)
            with autocast(q.device, cfg.bf16), upper(model, n_frozen if h is not None else 0):
                return response_logprobs_and_entropy(model, q, a, ql, cfg.temperature, entropy=False,
                                                     inputs_embeds=h)[0]
        return run

    def ref_logp(s):
        if reference is not None:
            return logp_of(reference, policy_hidden if ref_shares_policy_layers else None)(s)
        with policy.disable_adapter():  # LoRA: the reference is the base model
            return logp_of(policy, None)(s)

    def value_run(s):
        q, a, ql = trim_left(qr[s], am[s], qlen)
        h = slice_hidden(value_hidden, s, q.shape[1], value_model.lm)
        with autocast(q.device, cfg.bf16), upper(value_model.lm, n_frozen if h is not None else 0):
            return values_of(value_model, q, a, ql, h)

    logprobs = forward_in_chunks(logp_of(policy, policy_hidden), n, size).masked_fill(~mask, 0.0)
    ref_logprobs = forward_in_chunks(ref_logp, n, size).masked_fill(~mask, 0.0)
    values = forward_in_chunks(value_run, n, size).masked_fill(~mask, 0.0)
    return logprobs, ref_logprobs, values


def build_rollout(gen: Generation, scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                  values: torch.Tensor, kl_coef: float, cfg: PPOConfig, policy_hidden: torch.Tensor | None,
                  value_hidden: torch.Tensor | None) -> tuple[Rollout, dict[str, float]]:
    """Steps (3) and (4) on the whole rollout: KL-penalised rewards, GAE, whitened advantages, and their stats."""
    qr, am, mask = gen.query_response, gen.attention_mask, gen.response_mask
    qlen = qr.shape[1] - gen.response.shape[1]
    kl = kl_per_token(logprobs, ref_logprobs, cfg.kl.estimator).masked_fill(~mask, 0.0)  # (R, T)
    rewards = kl_penalised_rewards(scores.to(kl.device), kl, mask, kl_coef)  # (R, T)
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    advantages = masked_whiten(advantages, mask)
    episode_kl = (logprobs - ref_logprobs).masked_fill(~mask, 0.0).sum(1)  # (R,) k1 summed: the paper's KL
    stats = {"objective/kl": float(episode_kl.mean()),
             "objective/kl_penalty": float(-(kl_coef * kl).sum(1).mean()),
             "objective/reward": float(rewards.sum(1).mean()),
             "ppo/value_mean": float(masked_mean(values, mask)),
             "ppo/return_mean": float(masked_mean(returns, mask))}
    return Rollout(qr, am, qlen, mask, logprobs, ref_logprobs, values, advantages, returns, policy_hidden,
                   value_hidden), stats


def ppo_epochs(rollout: Rollout, policy, value_model, optimizers, cfg: PPOConfig,
               generator: torch.Generator, n_frozen: int, procs: Processes) -> dict[str, float]:
    """Step (5): `ppo_epochs` passes over shuffled minibatches, gradient accumulation over micro batches; with
    n_frozen > 0 only the upper layers run, on the rollout's frozen-layer states. Every process draws the same
    shuffle of the whole rollout and runs its share of each minibatch; gradients are summed over processes."""
    (p_opt, p_sched), (v_opt, v_sched) = optimizers
    sizes = batch_sizes(cfg.mini_batch_size, cfg.micro_batch_size, procs.world_size, name="mini_batch_size")
    micro_per_minibatch = sizes.grad_accum_steps * procs.world_size  # all processes together
    R = rollout.query_response.shape[0]
    sums: dict[str, float] = {}
    n_micro = 0
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(R, generator=generator).tolist()
        for start in range(0, R, sizes.batch_size):
            mine = order[start : start + sizes.batch_size][share(sizes.batch_size, procs)]
            for m in range(0, len(mine), sizes.micro_batch_size):
                idx = torch.tensor(mine[m : m + sizes.micro_batch_size], device=rollout.mask.device)
                q, a, ql = trim_left(rollout.query_response[idx], rollout.attention_mask[idx], rollout.query_len)
                mask = rollout.mask[idx]
                p_h = slice_hidden(rollout.policy_hidden, idx, q.shape[1], policy)
                v_h = slice_hidden(rollout.value_hidden, idx, q.shape[1], value_model.lm)
                with autocast(q.device, cfg.bf16):
                    with upper(policy, n_frozen if p_h is not None else 0):
                        logp, entropy = response_logprobs_and_entropy(policy, q, a, ql, cfg.temperature,
                                                                      inputs_embeds=p_h)
                    with upper(value_model.lm, n_frozen if v_h is not None else 0):
                        values = values_of(value_model, q, a, ql, v_h)
                pg_loss, pg = ppo_policy_loss(logp, rollout.logprobs[idx], rollout.advantages[idx], mask,
                                              cfg.clip_range)
                vf_loss, vf = ppo_value_loss(values, rollout.values[idx], rollout.returns[idx], mask,
                                             cfg.clip_range_value)
                ((pg_loss + vf_loss) / micro_per_minibatch).backward()  # separate models: separate grads
                for k, v in {"ppo/policy_loss": pg_loss, "ppo/value_loss": vf_loss, "ppo/clipfrac": pg["clipfrac"],
                             "ppo/approxkl": pg["approxkl"], "ppo/value_clipfrac": vf["clipfrac"],
                             "objective/entropy": masked_mean(entropy.detach(), mask)}.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                n_micro += 1
            for model, opt, sched, oc in ((policy, p_opt, p_sched, cfg.optim),
                                          (value_model, v_opt, v_sched, cfg.value_optim)):
                sum_gradients(model, procs)
                clip_grad_norm([p for p in model.parameters() if p.requires_grad], oc.max_grad_norm, procs)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
    keys = sorted(sums)
    totals = sum_across([sums[k] for k in keys] + [float(n_micro)], procs)  # means over every process's micro batches
    return {k: v / max(totals[-1], 1) for k, v in zip(keys, totals)}


# ------------------------------------------------------------------------------------------------ the loop

def train(cfg: PPOConfig, out: str, reward_fn: RewardFn | None = None, stop_after: int | None = None) -> dict:
    """Run (or resume) PPO into the run directory `out`. `reward_fn` overrides cfg.reward (tests, synthetic tasks);
    `stop_after` simulates an interruption after that many updates."""
    run = RunDir(out)
    if run.is_done():
        log.info("%s is already DONE; nothing to do", out)
        return run.read_done()
    procs = processes(cfg.device)
    validate(cfg, procs.world_size, procs.shard)
    seed_everything(cfg.seed)  # the same seed on every process: they hold the same models
    if procs.is_main:
        run.start("ppo", cfg)
    device = procs.device
    t_start = time.time()

    # models, data, optimisers
    policy, reference, tokenizer = load_policy_and_reference(cfg, device)
    reward = load_reward(cfg, reward_fn, device)
    value_model = load_value_model(cfg, device)
    n_frozen = frozen_layers_to_reuse(cfg, policy, value_model, policy.config.vocab_size)
    rm_shares_value_layers = bool(n_frozen) and same_lower_layers(reward, value_model, n_frozen, tokenizer)
    ref_shares_policy_layers = reference is None or not cfg.policy_init or (
        bool(n_frozen) and lower_layers_equal(policy, reference, n_frozen))
    if shard_layers(policy, procs) + shard_layers(value_model, procs):
        log.info("FSDP: the policy's and value model's decoder layers sharded across %d processes (reference and "
                 "reward model whole)", procs.world_size)
    posts = list(load_posts(cfg.data.posts, format=cfg.data.format, limit=cfg.data.limit))
    if len(posts) < cfg.rollout_batch_size:
        raise ValueError(f"{cfg.data.posts}: {len(posts)} posts, fewer than rollout_batch_size="
                         f"{cfg.rollout_batch_size}")
    query_texts = [format_query(p, tokenizer, cfg.data.max_query_tokens) for p in posts]
    queries = [tokenizer.encode(q, add_special_tokens=False) for q in query_texts]
    n_updates = cfg.total_episodes // cfg.rollout_batch_size
    opt_steps = n_updates * cfg.ppo_epochs * (cfg.rollout_batch_size // cfg.mini_batch_size)
    optimizers = (make_optimizer(policy, cfg.optim, opt_steps), make_optimizer(value_model, cfg.value_optim,
                                                                               opt_steps))
    parts = {"policy": (policy, *optimizers[0]), "value": (value_model, *optimizers[1])}
    generator = torch.Generator().manual_seed(cfg.seed)  # the minibatch shuffle: the same on every process
    update, kl_coef = 0, cfg.kl.init_coef
    if run.has_state():
        trainer, tensors = load_state(run, parts)
        update, kl_coef = trainer["update"], trainer["kl_coef"]
        generator.set_state(tensors["generator"])
        if procs.is_main:
            run.truncate_metrics(update)
        log.info("resumed after update %d (β = %.4g)", update, kl_coef)
    log.info("ppo: %d updates × %d episodes, %d posts, %d PPO epochs, minibatch %d (micro %d), reward %s",
             n_updates, cfg.rollout_batch_size, len(posts), cfg.ppo_epochs, cfg.mini_batch_size,
             cfg.micro_batch_size, "callable" if reward_fn else cfg.reward)

    bar = tqdm(total=n_updates, initial=update, desc="ppo", unit="update", dynamic_ncols=True,
               disable=not procs.is_main)
    while update < n_updates:
        t0 = time.time()
        batch = batch_indices(update, cfg.rollout_batch_size, len(posts), cfg.seed)
        rows = share(len(batch), procs)  # this process's episodes of the update (all of them with one process)
        my_queries = [queries[i] for i in batch[rows]]

        # (1) roll out this process's share; each episode's randomness comes from (seed, update, row) only.
        #     Then every process gets the whole rollout, laid out as one process would have sampled it.
        policy.eval()
        q_ids, q_mask = pad_queries(tokenizer, my_queries)
        with autocast(device, cfg.bf16), gathered(policy, procs):  # sharded: gather the layers once, not per token
            gen = generate(policy, tokenizer, q_ids, q_mask, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, stop_at_eos=cfg.stop_at_eos,
                           row_seeds=episode_seeds(cfg.seed, update, range(len(batch))[rows]),
                           stop_together=(lambda done: all_processes(done, procs)) if procs.shard else None)
        gen = gather_generation(gen, tokenizer.pad_token_id, procs)
        texts = decode_responses(tokenizer, gen)
        t1 = time.time()

        # (2) score; (3) KL-penalised rewards; (4) values and advantages. Frozen lower layers run once, here.
        #     The forward passes run on this process's rows (of the whole rollout's layout) and are gathered.
        mine = rows_of(gen, rows)
        policy_hidden, value_hidden = frozen_rollout_states(mine, policy, value_model, n_frozen, cfg)
        raw = score_responses(reward, tokenizer, my_queries, mine, cfg,
                              ([query_texts[i] for i in batch[rows]], texts[rows]),
                              shared=(value_hidden, n_frozen) if rm_shares_value_layers else None)
        old = old_logprobs_and_values(mine, policy, reference, value_model, cfg, n_frozen, policy_hidden,
                                      value_hidden, ref_shares_policy_layers)
        raw, policy_hidden, value_hidden = (gather_rows(t, procs) for t in (raw, policy_hidden, value_hidden))
        logprobs, ref_logprobs, values = (gather_rows(t, procs) for t in old)
        scores = penalise_unfinished(raw, gen.eos.cpu(), cfg.no_eos_penalty)
        rollout, roll_stats = build_rollout(gen, scores, logprobs, ref_logprobs, values, kl_coef, cfg,
                                            policy_hidden, value_hidden)
        t2 = time.time()

        # (5) PPO epochs over minibatches
        policy.train()
        train_stats = ppo_epochs(rollout, policy, value_model, optimizers, cfg, generator, n_frozen, procs)
        t3 = time.time()

        # (6) KL controller, metrics, samples, checkpoint
        update += 1
        metrics = {"episodes": update * cfg.rollout_batch_size, "objective/score": float(raw.mean()),
                   "objective/score_penalised": float(scores.mean()), "objective/kl_coef": kl_coef,
                   **roll_stats, **train_stats,
                   "response/length": float(gen.response_mask.sum(1).float().mean()),
                   "response/eos_rate": float(gen.eos.float().mean()),
                   "ppo/lr": optimizers[0][1].get_last_lr()[0],
                   "time/generation_s": t1 - t0, "time/scoring_s": t2 - t1, "time/training_s": t3 - t2,
                   "time/update_s": t3 - t0, "time/episodes_per_s": cfg.rollout_batch_size / (t3 - t0)}
        kl_coef = next_kl_coef(cfg.kl.controller, kl_coef, roll_stats["objective/kl"], cfg.kl.target,
                               cfg.kl.horizon, cfg.rollout_batch_size)
        last = update == n_updates
        if procs.is_main:  # the one process that writes the run directory
            if update % cfg.log_every == 0 or last:
                run.log_metrics(update, metrics)
            if update == 1 or last or (cfg.sample_every and update % cfg.sample_every == 0):
                write_table(run.samples_dir / f"update_{update:05d}.jsonl",
                            sample_rows(update, batch, posts, texts, raw, gen, cfg.n_samples))
        if cfg.snapshot_every and update % cfg.snapshot_every == 0:  # every process: sharded weights are gathered
            save_policy(run.path / "snapshots" / f"update_{update:05d}", policy, tokenizer, cfg, procs)
        if (cfg.save_every and update % cfg.save_every == 0) or last:
            save_state(run, parts, {"update": update, "kl_coef": kl_coef, "episodes": update * cfg.rollout_batch_size},
                       procs, {"generator": generator.get_state()})
        bar.update(1)
        bar.set_postfix(score=f"{metrics['objective/score']:.3f}", kl=f"{metrics['objective/kl']:.2f}",
                        beta=f"{kl_coef:.3g}")
        if stop_after is not None and update >= stop_after and not last:
            bar.close()
            barrier(procs)
            return {"stopped_at": update}
    bar.close()
    save_policy(run.model_dir, policy, tokenizer, cfg, procs, training_goes_on=False)
    if not procs.is_main:  # the main process writes DONE.json
        barrier(procs)
        return run.read_done()
    summary = finish(run, t_start)
    barrier(procs)
    return summary


def save_policy(path: Path, policy, tokenizer, cfg: PPOConfig, procs: Processes, training_goes_on: bool = True
                ) -> None:
    """The current policy as a plain model, so any stage can load it. Every process calls it (sharded weights
    are gathered); the main one writes. LoRA: the adapters are merged into a copy while training goes on (the
    training policy keeps its adapters), in place at the end."""
    if cfg.lora.r > 0:  # never sharded (validate)
        if procs.is_main:
            merged = (copy.deepcopy(policy) if training_goes_on else policy).merge_and_unload()
            save_model(merged, tokenizer, path)
        return
    weights = full_state_dict(policy, procs)
    if procs.is_main:
        save_model(policy, tokenizer, path, state_dict=weights)


def finish(run: RunDir, t_start: float) -> dict:
    """DONE.json: the run's summary from its metrics."""
    rows = [r for r in run.read_metrics() if "objective/score" in r]
    first, last = rows[0], rows[-1]
    summary = {"stage": "ppo", "updates": last["step"], "episodes": last["episodes"], "wall_s": time.time() - t_start,
               "score_first": first["objective/score"], "score_last": last["objective/score"],
               "kl_last": last["objective/kl"], "kl_coef_last": last["objective/kl_coef"],
               "median_episodes_per_s": sorted(r["time/episodes_per_s"] for r in rows)[len(rows) // 2]}
    run.write_done(summary)
    log.info("ppo done: score %.3f -> %.3f, KL %.2f after %d episodes", summary["score_first"],
             summary["score_last"], summary["kl_last"], summary["episodes"])
    return summary


# ------------------------------------------------------------------------------------------------ helpers

def validate(cfg: PPOConfig, world_size: int = 1, shard: bool = False) -> None:
    check_divides("rollout_batch_size", cfg.rollout_batch_size, world_size)
    batch_sizes(cfg.mini_batch_size, cfg.micro_batch_size, world_size, name="mini_batch_size")
    if cfg.rollout_batch_size % cfg.mini_batch_size:
        raise ValueError(f"rollout_batch_size={cfg.rollout_batch_size} is not a multiple of mini_batch_size="
                         f"{cfg.mini_batch_size}")
    if cfg.total_episodes < cfg.rollout_batch_size:
        raise ValueError(f"total_episodes={cfg.total_episodes} < rollout_batch_size={cfg.rollout_batch_size}")
    if cfg.temperature <= 0:
        raise ValueError("PPO samples from the policy: temperature must be > 0")
    if cfg.policy_init and cfg.lora.r > 0:
        raise ValueError("policy_init with lora.r > 0: a LoRA policy's reference is its own base with the adapters "
                         "off, so it cannot start from another model; use full fine-tuning or policy_init=None")
    if shard and cfg.lora.r > 0:
        raise ValueError("FSDP with lora.r > 0: a LoRA policy keeps little to shard (Adam state only for the "
                         "adapters); launch it with multi_gpu.yaml, or use full fine-tuning with fsdp.yaml")


def episode_seeds(seed: int, update: int, rows: range) -> list[int]:
    """The sampling seed of each episode (row of update `update`'s rollout): the same whichever process samples
    it, and nothing to store for a resume."""
    return [(seed * 1_000_003 + update) * 100_003 + row for row in rows]


def rows_of(gen: Generation, rows: slice) -> Generation:
    """Some rows of a rollout, in its layout (same widths)."""
    return Generation(gen.query_response[rows], gen.attention_mask[rows], gen.response[rows], gen.logprobs[rows],
                      gen.response_mask[rows], gen.eos[rows])


def gather_generation(gen: Generation, pad_id: int, procs: Processes) -> Generation:
    """Every process's rows, in rank order, padded to the widest query (on the left) and the longest response (on
    the right) of any process — the layout one process sampling all rows would have produced."""
    if procs.world_size == 1:
        return gen
    qlen = gen.query_response.shape[1] - gen.response.shape[1]
    query = pad_and_gather_rows(gen.query_response[:, :qlen], procs, pad_id, left=True)
    query_mask = pad_and_gather_rows(gen.attention_mask[:, :qlen], procs, 0, left=True)
    response = pad_and_gather_rows(gen.response, procs, pad_id)
    response_mask = pad_and_gather_rows(gen.response_mask.long(), procs, 0).bool()
    return Generation(query_response=torch.cat([query, response], dim=1),
                      attention_mask=torch.cat([query_mask, response_mask.long()], dim=1),
                      response=response, logprobs=pad_and_gather_rows(gen.logprobs, procs, 0.0),
                      response_mask=response_mask, eos=gather_rows(gen.eos, procs))


def batch_indices(update: int, rollout_batch_size: int, n_posts: int, seed: int) -> list[int]:
    """The posts of update `update` (0-based): consecutive slices of a per-epoch shuffle of all posts. Depends only
    on its arguments, so a resumed run picks up the same data position."""
    out: list[int] = []
    start = update * rollout_batch_size
    while len(out) < rollout_batch_size:
        epoch, offset = divmod(start + len(out), n_posts)
        perm = torch.randperm(n_posts, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
        out += perm[offset : offset + rollout_batch_size - len(out)]
    return out


def sample_rows(update: int, batch: list[int], posts, texts: list[str], scores: torch.Tensor, gen: Generation,
                n: int) -> list[dict[str, Any]]:
    return [{"update": update, "post_id": posts[i].id, "response": texts[b], "score": float(scores[b]),
             "eos": bool(gen.eos[b]), "reference": posts[i].reference} for b, i in enumerate(batch[:n])]


__all__ = ["PPOConfig", "batch_indices", "train"]
