"""`rlhflab ppo`: optimise the policy against a reward model, a KL penalty keeping it near the SFT model.

One PPO update, as in Ziegler et al. (2019) and Stiennon et al. (2020), after an optional step (0) that scores
`reward_norm_episodes` responses of the initial policy and makes every later score (score - mean) / std:

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

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rlhflab.core.config import require, setting
from rlhflab.core.log import get_logger
from rlhflab.core.progress import progress
from rlhflab.core.rundir import RunDir, RunError
from rlhflab.core.seed import seed_everything
from rlhflab.data.format import encode_query, format_queries
from rlhflab.data.preflight import check_files, check_paths, posts_check
from rlhflab.data.loaders import is_hub_id, load_posts
from rlhflab.data.records import Post
from rlhflab.models.compiled import compiled_layers
from rlhflab.models.device import Bf16, autocast, bf16_dtype
from rlhflab.models.generation import Generation, StopRule, decode_responses, generate, pad_queries, stop_rule
from rlhflab.models.loading import load_model, save_model
from rlhflab.models.reward import NotARewardModelError, RewardModel, load_reward_model, new_reward_model
from rlhflab.models.text_reward import (
    TextReward,
    call_text_reward,
    check_references,
    is_text_reward,
    load_text_reward,
    needs_reference,
)
from rlhflab.models.ensemble import (
    RewardEnsemble,
    first_member,
    is_ensemble_spec,
    parse_ensemble_spec,
)
from rlhflab.models.family import lora_targets
from rlhflab.models.trunk import LayerReuse, RolloutStates, lower_layers_equal, split_matches_full
from rlhflab.ops.ppo import (
    gae,
    kl_penalised_rewards,
    kl_per_token,
    masked_mean,
    masked_whiten,
    next_kl_coef,
    normalise_scores,
    penalise_unfinished,
    ppo_policy_loss,
    ppo_value_loss,
    reward_normalisation,
)
from rlhflab.train.common import (
    BatchSizes,
    OptimConfig,
    batch_sizes,
    check_batch_fields,
    check_compile,
    freeze_lower_layers,
    load_state,
    make_optimizer,
    optimizer_step,
    push_to_hub,
    save_state,
    stopped_early,
    write_table,
)
from rlhflab.train.distributed import (
    Processes,
    all_processes,
    barrier,
    check_divides,
    full_state_dict,
    gather_generation,
    gather_rows,
    gathered,
    processes,
    rows_of,
    shard_layers,
    share,
    sum_across,
)

log = get_logger(__name__)

RewardFn = TextReward  # f(queries, responses) or f(queries, responses, posts=...): see models/text_reward.py




@dataclass
class PPOData:
    posts: str = setting(
        "../shared/data/tldr/train.jsonl.gz",
        "queries: TL;DR, CNN/DM or posts JSONL; local path or hub")
    format: str = setting("auto", "format of the posts file: auto | tldr | cnndm | posts")
    limit: int | None = setting(None, "use only the first N posts (None: all)")
    max_query_tokens: int = setting(512, "token budget of a query (the post is cut at a newline to fit)")


@dataclass
class KLConfig:
    controller: Literal["adaptive", "fixed"] = setting(
        "adaptive",
        "adaptive β (Ziegler et al.: towards `target`) or fixed β")
    init_coef: float = setting(0.05, "β, the KL coefficient at the start (fixed: throughout); the paper used 0.05")
    target: float = setting(6.0, "nats per episode the adaptive controller aims for (Ziegler et al.)")
    horizon: int = setting(10000, "episodes over which the adaptive controller closes the gap")
    estimator: Literal["k1", "k3"] = setting("k1", "per-token KL in the reward (k1: the paper's log π - log π_ref)")


@dataclass
class LoraOptions:
    r: int = setting(0, "0 = full fine-tuning; > 0: LoRA adapters, and the reference is the same base with them off")
    alpha: int = setting(16, "LoRA scaling alpha")
    target_modules: list[str] = setting(
        default_factory=list,
        help="the modules that get LoRA adapters; empty: the family's attention projections (q/k/v/o_proj for "
             "Llama, Mistral, Qwen2, Gemma; qkv_proj, o_proj for Phi-3; query_key_value, attention.dense for "
             "GPT-NeoX; attn.c_attn, attn.c_proj for GPT-2)")


@dataclass
class PPOConfig:
    # keys that only affect the steps still to come: a resumed run may change them (recorded in config.yaml)
    RESUMABLE = ("log_every", "sample_every", "n_samples", "save_every", "snapshot_every", "score_batch_size",
                 "report_to", "push_to_hub")

    model: str = setting(
        "smollm2-135m",
        "the reference (and the policy's start): an SFT run directory (or any model spec)")
    policy_init: str | None = setting(
        None,
        "start the policy here instead (e.g. the last round's PPO run); None = model")
    reward: str = setting(
        "runs/rm/cpu",
        "an `rlhflab rm` run directory; \"rouge\" (ROUGE-L F1 against the post's reference); "
        "\"python:module:function\" (f(queries, responses), or f(queries, responses, posts=...) when it declares "
        "`posts`); or \"style:sentiment\" / \"style:descriptiveness\" (a programmatic judge of the response)")
    value_model: str | None = setting(
        None,
        "the value model's start; None: as value_init says (a callable reward: the policy's model + a fresh head)")
    value_init: Literal["reward", "fresh"] = setting(
        "reward",
        "with value_model None: start the value model as the reward RM (the paper), or as `model` with a zero "
        "head, every value 0 (no bias at the EOS token from the RM's scores of partial responses: docs/stages.md)")
    seed: int = setting(1, "random seed (episode sampling seeds, minibatch shuffle, post order, fresh heads)")
    data: PPOData = setting(default_factory=PPOData, help="the posts whose queries PPO rolls out on")
    total_episodes: int = setting(
        256,
        "episodes (query, response) in the whole run; updates = total / rollout_batch_size")
    rollout_batch_size: int = setting(16, "queries per update (episodes per rollout)")
    mini_batch_size: int = setting(8, "episodes per optimiser step")
    micro_batch_size: int = setting(4, "episodes per forward/backward")
    ppo_epochs: int = setting(4, "passes over each rollout's minibatches")
    max_new_tokens: int = setting(48, "length limit of a response, in tokens")
    temperature: float = setting(
        0.7,
        "sampling temperature of the rollout; log-probs are computed at the same temperature")
    stop_at_eos: bool = setting(True, "end responses at EOS; False: every one is max_new_tokens long (fixed shapes)")
    stop_token: str | None = setting(
        None,
        "also end a response at this token (kept), e.g. \".\" (Ziegler et al.'s truncate_token); None: EOS only")
    stop_after: int = setting(0, "the stop token ends a response only at 0-based token position >= this (Ziegler: 16)")
    no_eos_penalty: float | None = setting(
        -1.0, "the score of a response that never ended, by EOS or stop token (None: use the RM's score)")
    reward_norm_episodes: int = setting(
        0,
        "> 0: before the first update, score this many responses of the initial policy and use every score as "
        "(score - their mean) / their std (Ziegler et al.: any reward gets mean 0, std 1 on the base policy's "
        "samples, so one β means the same for an RM and a judge); a multiple of rollout_batch_size. 0: raw scores")
    gamma: float = setting(1.0, "GAE discount")
    lam: float = setting(0.95, "GAE lambda")
    clip_range: float = setting(0.2, "PPO's policy ratio clip")
    clip_range_value: float = setting(0.2, "PPO's value clip (around the old values)")
    whiten_rewards: bool = setting(False, "whiten the per-token rewards (no mean shift) before GAE")
    kl: KLConfig = setting(default_factory=KLConfig, help="the KL penalty towards the reference and its controller")
    optim: OptimConfig = setting(
        default_factory=lambda: OptimConfig(lr=1e-5, warmup_ratio=0.0, min_lr_ratio=0.0),
        help="the policy's AdamW and schedule")
    value_optim: OptimConfig = setting(
        default_factory=lambda: OptimConfig(lr=1e-5, warmup_ratio=0.0, min_lr_ratio=0.0),
        help="the value model's AdamW and schedule")
    lora: LoraOptions = setting(
        default_factory=LoraOptions,
        help="LoRA adapters on the policy instead of full fine-tuning")
    freeze_layers: int = setting(0, "freeze the embeddings and the lowest N layers of the policy and the value model")
    reuse_frozen: bool = setting(
        True,
        "run the frozen lower layers once per rollout, not in every PPO epoch (same math)")
    bf16: Bf16 = setting(False, "bf16 autocast (trained weights stay fp32); auto: bf16 only where native")
    compile: bool = setting(
        False,
        "torch.compile each decoder layer of the policy and value model for the PPO epochs' forward+backward")
    frozen_bf16: Bf16 = setting(
        False, "keep the reference and the reward model's weights in bf16; auto: bf16 only where native")
    device: str = setting("auto", "auto (the first CUDA GPU if any, else the CPU) or a torch device: cpu, cuda:1")
    score_batch_size: int = setting(16, "sequences per no-grad forward (reference, old log-probs, values, reward)")
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = setting(
        "none", "also send metrics.jsonl's rows to TensorBoard (<run>/tensorboard/), W&B or trackio")
    push_to_hub: str | None = setting(
        None, "after the run: upload model/ (with its model card) to this Hub repo, e.g. me/tldr-ppo; needs a token")
    log_every: int = setting(1, "write metrics.jsonl every N updates (and after the last)")
    sample_every: int = setting(10, "write a samples table every this many updates (and after the first and the last)")
    n_samples: int = setting(4, "episodes per samples table")
    save_every: int = setting(5, "checkpoint every this many updates (and after the last)")
    snapshot_every: int = setting(
        0,
        "> 0: also keep the policy as a plain model in snapshots/update_XXXXX/ (for KL curves)")
    allow_partial: bool = setting(False, "accept unfinished model/reward runs (their latest checkpoints)")

    def __post_init__(self) -> None:
        check_batch_fields(self.mini_batch_size, self.micro_batch_size, key="mini_batch_size")
        require(self.rollout_batch_size % self.mini_batch_size == 0, "rollout_batch_size",
                f"rollout_batch_size={self.rollout_batch_size} is not a multiple of mini_batch_size="
                f"{self.mini_batch_size}")
        require(self.total_episodes >= self.rollout_batch_size, "total_episodes",
                f"total_episodes={self.total_episodes} < rollout_batch_size={self.rollout_batch_size}")
        require(self.reward_norm_episodes >= 0 and self.reward_norm_episodes % self.rollout_batch_size == 0,
                "reward_norm_episodes", f"reward_norm_episodes={self.reward_norm_episodes} is not a multiple "
                f"(0 or more) of rollout_batch_size={self.rollout_batch_size}")
        require(self.temperature > 0, "temperature", "PPO samples from the policy: temperature must be > 0")
        require(not (self.policy_init and self.lora.r > 0), "policy_init",
                "policy_init with lora.r > 0: a LoRA policy's reference is its own base with the adapters off, so "
                "it cannot start from another model; use full fine-tuning or policy_init=None")



@dataclass
class Rollout:
    """One update's episodes, all (R, ...) tensors on the training device; T = response tokens."""
    states: RolloutStates  # the episodes' ids and mask, and the frozen-layer states every PPO epoch reads
    mask: torch.Tensor  # (R, T) bool: real response tokens
    logprobs: torch.Tensor  # (R, T) old policy log-probs
    ref_logprobs: torch.Tensor  # (R, T)
    values: torch.Tensor  # (R, T) old values
    advantages: torch.Tensor  # (R, T)
    returns: torch.Tensor  # (R, T)


@dataclass
class PPOModels:
    policy: torch.nn.Module  # trained
    reference: torch.nn.Module | None  # frozen SFT model; None with LoRA: the policy with its adapters off
    value_model: RewardModel  # trained
    reward: RewardModel | RewardFn  # frozen
    tokenizer: Any
    reuse: LayerReuse  # which forwards read frozen-layer states computed once per rollout
    stop: StopRule | None = None  # where responses end besides EOS (cfg.stop_token)


# ------------------------------------------------------------------------------------------------ models

def load_models(cfg: PPOConfig, reward_fn: RewardFn | None, procs: Processes) -> PPOModels:
    policy, reference, tokenizer = load_policy_and_reference(cfg, procs.device)
    reward = load_reward(cfg, reward_fn, procs.device)
    value_model = load_value_model(cfg, procs.device)
    reuse = plan_reuse(cfg, policy, reference, value_model, reward, tokenizer)
    if shard_layers(policy, procs) + shard_layers(value_model, procs):
        log.info("FSDP: the policy's and value model's decoder layers sharded across %d processes (reference and "
                 "reward model whole)", procs.world_size)
    return PPOModels(policy, reference, value_model, reward, tokenizer, reuse,
                     stop_rule(tokenizer, cfg.stop_token, cfg.stop_after))


def load_policy_and_reference(cfg: PPOConfig, device: torch.device):
    """(policy, reference or None, tokenizer). With LoRA the reference is the policy with its adapters off."""
    policy, tokenizer = load_model(cfg.policy_init or cfg.model, allow_partial=cfg.allow_partial)
    if cfg.lora.r > 0:
        from peft import LoraConfig, get_peft_model

        targets = list(cfg.lora.target_modules) or lora_targets(policy)
        policy = get_peft_model(policy, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=0.0,
                                                   target_modules=targets))
        reference = None
    else:
        freeze_lower_layers(policy, cfg.freeze_layers)
        reference, _ = load_model(cfg.model, dtype=bf16_dtype(cfg.frozen_bf16, device),
                                  allow_partial=cfg.allow_partial)
        reference.requires_grad_(False).to(device).eval()
    return policy.to(device), reference, tokenizer


def preflight(cfg: PPOConfig, reward_fn: RewardFn | None) -> None:
    """Step 0, before any model loads: the posts file parses, the reward names something that exists, and a
    reward that compares against the reference (rouge) gets posts that have one."""
    check_files([posts_check("data.posts", cfg.data.posts, cfg.data.format)])
    check_paths([("model", cfg.model), ("policy_init", cfg.policy_init), ("value_model", cfg.value_model)])
    if reward_fn is None and not is_text_reward(cfg.reward):
        if is_ensemble_spec(cfg.reward):
            check_paths([(f"reward member {i}", m) for i, m in enumerate(parse_ensemble_spec(cfg.reward)[2])])
            return
        if not Path(cfg.reward).expanduser().exists() and not is_hub_id(cfg.reward):
            raise RunError(f"reward={cfg.reward}: not found — expected an `rlhflab rm` run directory, a "
                           "sequence-classification RM (directory or hub id), rouge, python:module:function or "
                           "style:sentiment|descriptiveness")
        return
    fn = reward_fn or load_text_reward(cfg.reward)  # an unknown style or function: a ValueError naming it
    if needs_reference(fn):
        check_references(fn, list(load_posts(cfg.data.posts, format=cfg.data.format, limit=cfg.data.limit)),
                         cfg.data.posts)


def load_reward(cfg: PPOConfig, reward_fn: RewardFn | None, device: torch.device) -> RewardModel | RewardFn:
    if reward_fn is not None:
        return reward_fn
    if is_text_reward(cfg.reward):
        return load_text_reward(cfg.reward)
    rm = load_reward_model(cfg.reward, dtype=bf16_dtype(cfg.frozen_bf16, device))
    return rm.requires_grad_(False).to(device).eval()


def load_value_model(cfg: PPOConfig, device: torch.device) -> RewardModel:
    """The value model starts as the reward model (the paper), or — for value_init=fresh, a callable reward, or a
    `value_model` that is a plain language model — as that model with a fresh scalar head."""
    if cfg.value_model is None and cfg.value_init == "fresh":
        value = new_reward_model(cfg.model, seed=cfg.seed, allow_partial=cfg.allow_partial)
        torch.nn.init.zeros_(value.head.weight)  # every value starts at 0: the normalised RM's average score
        return prepare_value(value, cfg, device)
    spec = cfg.value_model or (cfg.model if is_text_reward(cfg.reward) else
                               first_member(cfg.reward) if is_ensemble_spec(cfg.reward) else cfg.reward)
    try:
        value = load_reward_model(spec, allow_partial=cfg.allow_partial)
    except NotARewardModelError:
        value = new_reward_model(spec, seed=cfg.seed, allow_partial=cfg.allow_partial)
    return prepare_value(value, cfg, device)


def prepare_value(value: RewardModel, cfg: PPOConfig, device: torch.device) -> RewardModel:
    value.requires_grad_(True)
    freeze_lower_layers(value.lm, cfg.freeze_layers)
    return value.to(device).train()


def plan_reuse(cfg: PPOConfig, policy, reference, value_model: RewardModel, reward, tokenizer) -> LayerReuse:
    """Run the frozen lower layers once per rollout when the models split cleanly there (same math). The
    reference reads the policy's states unless the policy started elsewhere (`policy_init`) with other lower
    layers; the RM reads the value model's when it is the RM the value model started as."""
    if not (cfg.reuse_frozen and cfg.freeze_layers and cfg.lora.r == 0):
        return LayerReuse()
    n = cfg.freeze_layers
    ok = all(split_matches_full(m, n, policy.config.vocab_size) for m in (policy, value_model.lm))
    if not ok:
        log.warning("reuse_frozen: %s (model_type %s) does not split cleanly at layer %d (its decoder changes "
                    "inputs_embeds on the way in); running every layer in every PPO epoch",
                    type(policy).__name__, policy.config.model_type, n)
        return LayerReuse()
    log.info("the frozen lower %d layers run once per rollout (policy, reference and value model)", n)
    reward_reads_value = (isinstance(reward, RewardModel) and reward.tokenizer.get_vocab() == tokenizer.get_vocab()
                          and lower_layers_equal(value_model.lm, reward.lm, n))
    if reward_reads_value:
        log.info("the reward model shares the value model's frozen lower %d layers (they are the same weights)", n)
    reference_reads_policy = reference is None or not cfg.policy_init or lower_layers_equal(policy, reference, n)
    return LayerReuse(n, reference_reads_policy, reward_reads_value)


# ------------------------------------------------------------------------------------------------ phases

def roll_out(m: PPOModels, cfg: PPOConfig, procs: Processes, queries: list[list[int]], seeds_update: int
             ) -> tuple[Generation, list[str], slice]:
    """Step (1): this process samples its share of `queries`, each episode's randomness from (seed, seeds_update,
    row) only; then every process holds the whole rollout, laid out as one process would have sampled it.
    -> (generation, response texts, this process's rows)."""
    local_rows = share(len(queries), procs)
    ids, mask = pad_queries(m.tokenizer, queries[local_rows])
    with autocast(procs.device, cfg.bf16), gathered(m.policy, procs):  # sharded: gathered once, not per token
        gen = generate(m.policy, m.tokenizer, ids, mask, max_new_tokens=cfg.max_new_tokens,
                       temperature=cfg.temperature, stop_at_eos=cfg.stop_at_eos,
                       row_seeds=episode_seeds(cfg.seed, seeds_update, range(len(queries))[local_rows]),
                       stop_together=(lambda done: all_processes(done, procs)) if procs.shard else None,
                       stop=m.stop)
    gen = gather_generation(gen, m.tokenizer.pad_token_id, procs)
    return gen, decode_responses(m.tokenizer, gen), local_rows


def initial_reward_scale(m: PPOModels, cfg: PPOConfig, procs: Processes, posts: list[Post], query_texts: list[str],
                         queries: list[list[int]], n_updates: int) -> tuple[float, float]:
    """(mean, std) of the reward over `reward_norm_episodes` responses of the initial policy (Ziegler et al.'s
    normalisation): posts from a shuffle of their own, sampled with seeds no update uses (updates n_updates on),
    in rollouts of rollout_batch_size; see ops.ppo.reward_normalisation for which scores count."""
    batch = batch_indices(0, cfg.reward_norm_episodes, len(posts), cfg.seed + 1)
    scores, ended = [], []
    for k, start in enumerate(range(0, len(batch), cfg.rollout_batch_size)):
        rows = batch[start : start + cfg.rollout_batch_size]
        gen, texts, local_rows = roll_out(m, cfg, procs, [queries[i] for i in rows], n_updates + k)
        local = rows[local_rows]
        local_scores = score_responses(m.reward, m.tokenizer, [queries[i] for i in local], rows_of(gen, local_rows),
                                       cfg, ([query_texts[i] for i in local], texts[local_rows]),
                                       [posts[i] for i in local])
        scores.append(gather_rows(local_scores, procs))
        ended.append(gen.ended.cpu())
    all_ended = torch.cat(ended)
    mean, std = reward_normalisation(torch.cat(scores), all_ended)
    log.info("reward normalisation: mean %.4g, std %.4g over %d responses of the initial policy (%d ended)",
             mean, std, len(batch), int(all_ended.sum()))
    return mean, std


def score_responses(reward, tokenizer, queries: list[list[int]], gen: Generation, cfg: PPOConfig,
                    texts: tuple[list[str], list[str]], posts: list[Post],
                    states: RolloutStates | None = None) -> torch.Tensor:
    """(R,) float32 scores of the responses (response tokens up to and including EOS). `texts`: (query texts,
    response texts) and `posts` of the same rows, for a text reward. `states`: the value model's frozen-layer
    states of these rows, when the RM has the same lower layers (it runs only its upper ones on them, in the
    rollout's layout)."""
    if not isinstance(reward, (RewardModel, RewardEnsemble)):
        return torch.tensor(call_text_reward(reward, *texts, posts), dtype=torch.float32)
    if states is not None:
        return states.in_chunks(lambda mb: mb.scores(reward, "value"), cfg.score_batch_size, cfg.bf16).cpu()
    responses = [gen.response[b, : int(gen.response_mask[b].sum())].tolist() for b in range(len(queries))]
    if reward.tokenizer.get_vocab() != tokenizer.get_vocab():  # a different tokenizer: go through the text
        return reward.score(texts[0], texts[1], eos=gen.eos.tolist(), batch_size=cfg.score_batch_size,
                            bf16=cfg.bf16)
    return reward.score_ids(queries, responses, batch_size=cfg.score_batch_size, bf16=cfg.bf16)


def frozen_states(gen: Generation, m: PPOModels, cfg: PPOConfig) -> RolloutStates:
    """A rollout's rows with the policy's and the value model's frozen-layer states (none without reuse)."""
    states = RolloutStates.of(gen, m.reuse.n_layers)
    states.add("policy", m.policy, cfg.score_batch_size, cfg.bf16)
    states.add("value", m.value_model.lm, cfg.score_batch_size, cfg.bf16)
    return states


def policy_logprobs(states: RolloutStates, m: PPOModels, cfg: PPOConfig) -> torch.Tensor:
    """(R, T) log-probs of the sampled tokens under the policy that sampled them (the PPO ratio's denominator)."""
    logprobs = states.in_chunks(lambda mb: mb.logprobs(m.policy, cfg.temperature, "policy")[0],
                                cfg.score_batch_size, cfg.bf16)
    return logprobs.masked_fill(~states.response_mask, 0.0)


def reference_logprobs(states: RolloutStates, m: PPOModels, cfg: PPOConfig) -> torch.Tensor:
    """(R, T) log-probs of the sampled tokens under the reference (the SFT model)."""
    if m.reference is None:  # LoRA: the reference is the base model, i.e. the policy with its adapters off
        with m.policy.disable_adapter():
            logprobs = states.in_chunks(lambda mb: mb.logprobs(m.policy, cfg.temperature)[0],
                                        cfg.score_batch_size, cfg.bf16)
    else:
        reads = "policy" if m.reuse.reference_reads_policy else None
        logprobs = states.in_chunks(lambda mb: mb.logprobs(m.reference, cfg.temperature, reads)[0],
                                    cfg.score_batch_size, cfg.bf16)
    return logprobs.masked_fill(~states.response_mask, 0.0)


def old_values(states: RolloutStates, m: PPOModels, cfg: PPOConfig) -> torch.Tensor:
    """(R, T) the value model's V_t for the rollout, before this update's training."""
    values = states.in_chunks(lambda mb: mb.values(m.value_model, "value"), cfg.score_batch_size, cfg.bf16)
    return values.masked_fill(~states.response_mask, 0.0)


def build_rollout(states: RolloutStates, scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                  values: torch.Tensor, kl_coef: float, cfg: PPOConfig) -> tuple[Rollout, dict[str, float]]:
    """Steps (3) and (4) on the whole rollout: KL-penalised rewards, GAE, whitened advantages, and their stats.
    `scores` (R,) are the scores the rewards end with (unfinished responses already penalised)."""
    mask = states.response_mask  # (R, T)
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
    return Rollout(states, mask, logprobs, ref_logprobs, values, advantages, returns), stats


def ppo_epochs(rollout: Rollout, m: PPOModels, optimizers, cfg: PPOConfig, sizes: BatchSizes,
               generator: torch.Generator, procs: Processes) -> dict[str, float]:
    """Step (5): `ppo_epochs` passes over shuffled minibatches, gradient accumulation over micro batches. Every
    process draws the same shuffle of the whole rollout and runs its share of each minibatch; gradients are
    summed over processes. Returns each loss and statistic averaged over all micro batches."""
    micro_per_minibatch = sizes.grad_accum_steps * procs.world_size  # all processes together
    R = rollout.mask.shape[0]
    sums: dict[str, float] = {}
    n_micro = 0
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(R, generator=generator).tolist()
        for start in range(0, R, sizes.batch_size):
            local_rows = order[start : start + sizes.batch_size][share(sizes.batch_size, procs)]
            for i in range(0, len(local_rows), sizes.micro_batch_size):
                idx = torch.tensor(local_rows[i : i + sizes.micro_batch_size], device=rollout.mask.device)
                loss, stats = micro_batch_loss(rollout, idx, m, cfg)
                (loss / micro_per_minibatch).backward()  # separate models: separate grads
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                n_micro += 1
            for model, (opt, sched), oc in zip((m.policy, m.value_model), optimizers, (cfg.optim, cfg.value_optim)):
                optimizer_step(model, opt, sched, oc.max_grad_norm, procs)
    keys = sorted(sums)
    totals = sum_across([sums[k] for k in keys] + [float(n_micro)], procs)  # means over every process's micro batches
    return {k: v / max(totals[-1], 1) for k, v in zip(keys, totals)}


def micro_batch_loss(rollout: Rollout, idx: torch.Tensor, m: PPOModels, cfg: PPOConfig
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped policy loss plus the clipped value loss of the rollout's rows `idx`, and their statistics.
    With frozen-layer reuse only the upper layers run, on the rollout's states."""
    mb, mask = rollout.states.rows(idx), rollout.mask[idx]
    with autocast(mb.ids.device, cfg.bf16), compiled_layers(m.policy, cfg.compile), \
            compiled_layers(m.value_model, cfg.compile):
        logprobs, entropy = mb.logprobs(m.policy, cfg.temperature, "policy", entropy=True)
        values = mb.values(m.value_model, "value")
    pg_loss, pg = ppo_policy_loss(logprobs, rollout.logprobs[idx], rollout.advantages[idx], mask, cfg.clip_range)
    vf_loss, vf = ppo_value_loss(values, rollout.values[idx], rollout.returns[idx], mask, cfg.clip_range_value)
    return pg_loss + vf_loss, {"ppo/policy_loss": pg_loss, "ppo/value_loss": vf_loss, "ppo/clipfrac": pg["clipfrac"],
                               "ppo/approxkl": pg["approxkl"], "ppo/value_clipfrac": vf["clipfrac"],
                               "objective/entropy": masked_mean(entropy.detach(), mask)}


# ------------------------------------------------------------------------------------------------ the loop

def train(cfg: PPOConfig, out: str, reward_fn: RewardFn | None = None, stop_after: int | None = None) -> dict:
    """Run (or resume) PPO into the run directory `out`. `reward_fn` overrides cfg.reward (tests, synthetic tasks);
    `stop_after` simulates an interruption after that many updates."""
    run, procs = RunDir(out), processes(cfg.device)
    sizes = check_launch(cfg, procs)  # before the run directory exists: a refused launch leaves nothing behind
    preflight(cfg, reward_fn)
    if (done := run.open("ppo", cfg, write=procs.is_main)) is not None:
        return done
    seed_everything(cfg.seed)  # the same seed on every process: they hold the same models
    t_start = time.time()

    # models, data, optimisers
    m = load_models(cfg, reward_fn, procs)
    policy, tokenizer = m.policy, m.tokenizer
    posts, query_texts, queries = load_queries(cfg, tokenizer)
    n_updates = cfg.total_episodes // cfg.rollout_batch_size
    opt_steps = n_updates * cfg.ppo_epochs * (cfg.rollout_batch_size // cfg.mini_batch_size)
    optimizers = (make_optimizer(policy, cfg.optim, opt_steps, procs.shard),
                  make_optimizer(m.value_model, cfg.value_optim, opt_steps, procs.shard))
    parts = {"policy": (policy, *optimizers[0]), "value": (m.value_model, *optimizers[1])}
    generator = torch.Generator().manual_seed(cfg.seed)  # the minibatch shuffle: the same on every process
    update, kl_coef, norm = resume(run, parts, generator, cfg, procs)
    if norm is None:  # (0) Ziegler et al.'s reward normalisation, or the raw scores
        norm = (initial_reward_scale(m, cfg, procs, posts, query_texts, queries, n_updates)
                if cfg.reward_norm_episodes else (0.0, 1.0))
    log.info("ppo: %d updates × %d episodes, %d posts, %d PPO epochs, minibatch %d (micro %d), reward %s",
             n_updates, cfg.rollout_batch_size, len(posts), cfg.ppo_epochs, cfg.mini_batch_size,
             cfg.micro_batch_size, "callable" if reward_fn else cfg.reward)

    bar = progress(n_updates, "ppo", "update", update, enabled=procs.is_main)
    while update < n_updates:
        t0 = time.time()
        batch = batch_indices(update, cfg.rollout_batch_size, len(posts), cfg.seed)

        # (1) roll out this process's share; each episode's randomness comes from (seed, update, row) only.
        #     Then every process gets the whole rollout, laid out as one process would have sampled it.
        policy.eval()
        gen, texts, local_rows = roll_out(m, cfg, procs, [queries[i] for i in batch], update)
        local_batch = batch[local_rows]  # this process's episodes of the update (all of them with one process)
        t1 = time.time()

        # (2) score, (3) log-probs and (4) values on this process's rows of the rollout, then gathered. The frozen
        #     lower layers run once, here; every later forward of the update runs only the layers above them.
        local = frozen_states(rows_of(gen, local_rows), m, cfg)
        scores = score_responses(m.reward, tokenizer, [queries[i] for i in local_batch], rows_of(gen, local_rows),
                                 cfg, ([query_texts[i] for i in local_batch], texts[local_rows]),
                                 [posts[i] for i in local_batch], local if m.reuse.reward_reads_value else None)
        logprobs, ref_logprobs, values = (policy_logprobs(local, m, cfg), reference_logprobs(local, m, cfg),
                                          old_values(local, m, cfg))
        scores, logprobs, ref_logprobs, values = (gather_rows(t, procs) for t in (scores, logprobs, ref_logprobs,
                                                                                   values))
        states = RolloutStates.of(gen, local.n_layers, {k: gather_rows(h, procs) for k, h in local.hidden.items()})
        normalised_scores = normalise_scores(scores, *norm)  # the raw scores when reward_norm_episodes is 0
        penalised_scores = penalise_unfinished(normalised_scores, gen.ended.cpu(), cfg.no_eos_penalty)
        rollout, rollout_stats = build_rollout(states, penalised_scores, logprobs, ref_logprobs, values, kl_coef, cfg)
        t2 = time.time()

        # (5) PPO epochs over minibatches
        policy.train()
        train_stats = ppo_epochs(rollout, m, optimizers, cfg, sizes, generator, procs)
        t3 = time.time()

        # (6) KL controller, metrics, samples, checkpoint
        update += 1
        metrics = {"episodes": update * cfg.rollout_batch_size, "objective/score": float(scores.mean()),
                   "objective/score_penalised": float(penalised_scores.mean()), "objective/kl_coef": kl_coef,
                   **({"objective/score_normalised": float(normalised_scores.mean())}
                      if cfg.reward_norm_episodes else {}),
                   **rollout_stats, **train_stats,
                   "response/length": float(gen.response_mask.sum(1).float().mean()),
                   "response/eos_rate": float(gen.eos.float().mean()),
                   "response/ended_rate": float(gen.ended.float().mean()),
                   "ppo/lr": optimizers[0][1].get_last_lr()[0],
                   "time/generation_s": t1 - t0, "time/scoring_s": t2 - t1, "time/training_s": t3 - t2,
                   "time/update_s": t3 - t0, "time/episodes_per_s": cfg.rollout_batch_size / (t3 - t0)}
        kl_coef = next_kl_coef(cfg.kl.controller, kl_coef, rollout_stats["objective/kl"], cfg.kl.target,
                               cfg.kl.horizon, cfg.rollout_batch_size)
        last = update == n_updates
        if procs.is_main:  # the one process that writes the run directory
            if update % cfg.log_every == 0 or last:
                run.log_metrics(update, metrics)
            if update == 1 or last or (cfg.sample_every and update % cfg.sample_every == 0):
                write_table(run.samples_dir / f"update_{update:05d}.jsonl",
                            sample_rows(update, batch, posts, texts, scores, gen, cfg.n_samples))
        if cfg.snapshot_every and update % cfg.snapshot_every == 0:  # every process: sharded weights are gathered
            save_policy(run.path / "snapshots" / f"update_{update:05d}", policy, tokenizer, cfg, procs)
        if (cfg.save_every and update % cfg.save_every == 0) or last:
            save_state(run, parts, {"update": update, "kl_coef": kl_coef, "episodes": update * cfg.rollout_batch_size,
                                    "reward_norm": list(norm)}, procs, {"generator": generator.get_state()})
        bar.update(1)
        bar.set_postfix(score=f"{metrics['objective/score']:.3f}", kl=f"{metrics['objective/kl']:.2f}",
                        beta=f"{kl_coef:.3g}")
        if stop_after is not None and update >= stop_after and not last:
            return stopped_early(bar, update, procs)
    bar.close()
    save_policy(run.model_dir, policy, tokenizer, cfg, procs, training_goes_on=False)
    if not procs.is_main:  # the main process writes DONE.json
        barrier(procs)
        return run.read_done()
    summary = finish(run, t_start, norm if cfg.reward_norm_episodes else None)
    push_to_hub(run, cfg.push_to_hub)
    barrier(procs)
    return summary


def load_queries(cfg: PPOConfig, tokenizer) -> tuple[list, list[str], list[list[int]]]:
    """(posts, their formatted queries, the queries' token ids); posts that cannot fit the budget are dropped."""
    posts, query_texts, dropped = format_queries(load_posts(cfg.data.posts, format=cfg.data.format,
                                                            limit=cfg.data.limit), tokenizer, cfg.data.max_query_tokens)
    if dropped:
        log.warning("%s: %d posts do not fit max_query_tokens=%d even cut, left out", cfg.data.posts, dropped,
                    cfg.data.max_query_tokens)
    if len(posts) < cfg.rollout_batch_size:
        raise ValueError(f"{cfg.data.posts}: {len(posts)} posts, fewer than rollout_batch_size="
                         f"{cfg.rollout_batch_size}")
    return posts, query_texts, [encode_query(tokenizer, q) for q in query_texts]


def resume(run: RunDir, parts: dict[str, tuple], generator: torch.Generator, cfg: PPOConfig, procs: Processes
           ) -> tuple[int, float, tuple[float, float] | None]:
    """(updates done, β, the reward normalisation): from state/ when the run was interrupted (models, optimisers
    and the shuffle restored in place), else (0, the initial β, None)."""
    if not run.has_state():
        return 0, cfg.kl.init_coef, None
    trainer, tensors = load_state(run, parts)
    generator.set_state(tensors["generator"])
    if procs.is_main:
        run.truncate_metrics(trainer["update"])
    log.info("resumed after update %d (β = %.4g)", trainer["update"], trainer["kl_coef"])
    norm = trainer.get("reward_norm")
    return trainer["update"], trainer["kl_coef"], tuple(norm) if norm else None


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


def finish(run: RunDir, t_start: float, norm: tuple[float, float] | None) -> dict:
    """DONE.json: the run's summary from its metrics (and the reward normalisation, when there was one)."""
    rows = [r for r in run.read_metrics() if "objective/score" in r]
    first, last = rows[0], rows[-1]
    summary = {"stage": "ppo", "updates": last["step"], "episodes": last["episodes"], "wall_s": time.time() - t_start,
               "score_first": first["objective/score"], "score_last": last["objective/score"],
               "kl_last": last["objective/kl"], "kl_coef_last": last["objective/kl_coef"],
               "median_episodes_per_s": sorted(r["time/episodes_per_s"] for r in rows)[len(rows) // 2],
               **({"reward_normalisation": {"mean": norm[0], "std": norm[1]}} if norm else {})}
    run.write_done(summary)
    log.info("ppo done: score %.3f -> %.3f, KL %.2f after %d episodes", summary["score_first"],
             summary["score_last"], summary["kl_last"], summary["episodes"])
    return summary


# ------------------------------------------------------------------------------------------------ helpers

def check_launch(cfg: PPOConfig, procs: Processes) -> BatchSizes:
    """PPO's checks of the launch: each process rolls out an equal share and runs an equal share of whole micro
    batches of each minibatch -> the minibatch sizes."""
    check_divides("rollout_batch_size", cfg.rollout_batch_size, procs.world_size)
    check_compile(cfg.compile, procs)
    if procs.shard and cfg.lora.r > 0:
        raise ValueError("FSDP with lora.r > 0: a LoRA policy keeps little to shard (Adam state only for the "
                         "adapters); launch it with multi_gpu.yaml, or use full fine-tuning with fsdp.yaml")
    return batch_sizes(cfg.mini_batch_size, cfg.micro_batch_size, procs.world_size, name="mini_batch_size")


def episode_seeds(seed: int, update: int, rows: range) -> list[int]:
    """The sampling seed of each episode (row of update `update`'s rollout): the same whichever process samples
    it, and nothing to store for a resume."""
    return [(seed * 1_000_003 + update) * 100_003 + row for row in rows]


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
