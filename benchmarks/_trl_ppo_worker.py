"""Train TRL's PPOTrainer (TRL 1.12, trl.experimental.ppo) or RLOOTrainer (current TRL) on pre-tokenised queries and
time every update. Runs inside a bench venv (.venv-bench-ppo for PPO, .venv-bench for RLOO); read by ppo_vs_trl.py.

    python _trl_ppo_worker.py SPEC.json OUT.json

SPEC (JSON): trainer ("ppo" | "rloo"), policy_dir (causal LM: policy, and reference), reward_dir (loaded as
AutoModelForSequenceClassification(num_labels=1): reward model, and PPO's value model), queries (JSONL of
{"query": text, "input_ids": [...]}, tokenised by rlhflab), updates, rollout_batch_size, mini_batch_size,
micro_batch_size, ppo_epochs, response_length, temperature, lr, kl_coef, seed, bf16, frozen_bf16,
rollout_forward_batch_size (PPO: local_rollout_forward_batch_size), rloo_k (RLOO: num_generations).

One update = sample rollout_batch_size episodes (query, response), score them, then ppo_epochs passes over them in
minibatches of mini_batch_size episodes, micro_batch_size episodes per forward/backward. How that maps onto TRL:

  PPO (TRL 1.12): per_device_train_batch_size = micro, gradient_accumulation_steps = rollout / micro (TRL's
    rollout batch is per_device × grad_accum), num_mini_batches = rollout / mini, num_ppo_epochs = epochs,
    response_length = L with stop_token="eos" (truncate after EOS, score the truncated response). Three fixes,
    all attribute settings after construction, reported in the output (and optimiser steps are counted, checked):
    - TRL builds its own `Accelerator(gradient_accumulation_steps=grad_accum)`, so with num_mini_batches > 1 the
      optimiser would step once per rollout pass instead of once per minibatch; we set the accelerator's
      accumulation to mini / micro.
    - in the update that takes the last rollout batch of a pass over the data, accelerate's end-of-dataloader flag
      makes every micro batch an optimiser step; we turn its sync_with_dataloader off.
    - with stop_token="eos", HF generate stops as soon as every row has an EOS, so the response length varies;
      we clear the policy's generation eos, so generation always makes L tokens (TRL still truncates after the
      first EOS) — the same work as rlhflab's stop_at_eos=false.
    bf16: PPOConfig(bf16=True) never reaches that Accelerator (it takes its precision from the environment), so we
    set ACCELERATE_MIXED_PRECISION=bf16: autocast then wraps the policy+value training forward. TRL's rollout
    (HF generate, reference, value and reward forwards) runs on the unwrapped models, in their storage dtype.
    Pad: TRL PPO finds padding by `id == pad_token_id` and the SmolLM2 tokenizer has pad == EOS, so we add a
    separate "[PAD]" token as TRL's own PPO examples do (it never reaches an embedding: TRL masks pads to id 0).
  RLOO (current TRL): per_device_train_batch_size = micro, gradient_accumulation_steps = mini / micro,
    steps_per_generation = rollout / micro (generation_batch_size = rollout episodes = rollout / k prompts × k
    completions), num_iterations = epochs, max_completion_length = L with generation_kwargs min_new_tokens = L (RLOO
    has no fixed-length mode: EOS is suppressed until L tokens, so every completion is exactly L tokens), beta =
    kl_coef, no value model (RLOO's point). TRL tokenises the query text itself: checked to give rlhflab's ids.

Output: JSON with per-update seconds / episodes / optimiser steps / generation / scoring / training seconds, the
effective TRL settings, and peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

# No progress bars / experimental warnings in the logs; set before TRL is imported.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_queries(path: str) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def load_models(spec: dict, value: bool):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    frozen = torch.bfloat16 if spec["frozen_bf16"] else torch.float32
    policy = AutoModelForCausalLM.from_pretrained(spec["policy_dir"], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(spec["policy_dir"], dtype=frozen)
    reward = AutoModelForSequenceClassification.from_pretrained(spec["reward_dir"], num_labels=1, dtype=frozen)
    value_model = (AutoModelForSequenceClassification.from_pretrained(spec["reward_dir"], num_labels=1,
                                                                     dtype=torch.float32) if value else None)
    for model in (policy, value_model):
        if model is not None:
            freeze_lower_layers(model, spec.get("freeze_layers", 0))
    return policy, ref, reward, value_model


def freeze_lower_layers(model, n: int) -> None:
    """What rlhflab's freeze_layers=n does: token embeddings (tied: the LM head too) and the lowest n layers get
    requires_grad=False; the Trainer's optimiser then skips them and backward stops above them."""
    if n:
        model.get_input_embeddings().requires_grad_(False)
        for layer in model.model.layers[:n]:
            layer.requires_grad_(False)


class Clock:
    """Per-update wall times, split into generation / scoring / training, from timing wrappers and callbacks."""

    def __init__(self):
        self.updates: list[dict] = []
        self.t_last = None
        self.generating = False
        self.autocast: dict[str, set] = {}  # "model/phase" -> {autocast on?}, seen by forward pre-hooks
        self.reset()

    def watch(self, name: str, module) -> None:
        """Record, per phase, whether CPU autocast is on when the backbone of `module` runs (the bf16 claims,
        checked). The backbone, because TRL calls some backbones directly, and accelerate's autocast wraps a
        module's forward, which runs after the module's own pre-hooks."""
        import torch

        module = getattr(module, module.base_model_prefix)

        def hook(_module, _args):
            phase = "generation" if self.generating else "training" if torch.is_grad_enabled() else "scoring"
            self.autocast.setdefault(f"{name}/{phase}", set()).add(torch.is_autocast_enabled("cpu"))

        module.register_forward_pre_hook(hook)

    def reset(self):
        self.gen = 0.0
        self.gen_end = None  # PPO: when generation returned
        self.rollout = 0.0  # RLOO: the whole of _generate_and_score_completions (generation + scoring)
        self.train_start = None  # PPO: the first forward with gradients
        self.steps = 0
        self.context = None

    def close_update(self, episodes: int):
        now = time.perf_counter()
        seconds = now - self.t_last
        if self.train_start is not None:  # PPO
            training, scoring = now - self.train_start, self.train_start - self.gen_end
        else:  # RLOO: everything outside its rollout is its training loop
            training, scoring = seconds - self.rollout, self.rollout - self.gen
        self.updates.append({"seconds": seconds, "episodes": episodes, "optimizer_steps": self.steps,
                             "generation_s": self.gen, "scoring_s": scoring, "training_s": training,
                             "other_s": seconds - self.gen - scoring - training, "query_width": self.context})
        self.t_last = now
        self.reset()


def run_ppo(spec: dict, clock: Clock) -> dict:
    # TRL 1.12's PPOTrainer creates `Accelerator(gradient_accumulation_steps=...)` itself, which reads its
    # precision from this variable, not from PPOConfig.bf16.
    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16" if spec["bf16"] else "no"
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as ppo_module

    R, M, m = spec["rollout_batch_size"], spec["mini_batch_size"], spec["micro_batch_size"]
    tokenizer = AutoTokenizer.from_pretrained(spec["policy_dir"], padding_side="left")
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})  # pad != EOS (TRL PPO masks by pad id); as TRL's examples
    queries = load_queries(spec["queries"])
    n = spec["updates"] * R
    if len(queries) < n:
        raise SystemExit(f"{len(queries)} queries for {spec['updates']} updates × {R} episodes")
    dataset = Dataset.from_list([{"input_ids": q["input_ids"]} for q in queries[:n]])
    policy, ref, reward, value_model = load_models(spec, value=True)

    config = PPOConfig(
        output_dir=spec["work_dir"], use_cpu=True, bf16=spec["bf16"], seed=spec["seed"],
        per_device_train_batch_size=m, gradient_accumulation_steps=R // m, num_mini_batches=R // M,
        num_ppo_epochs=spec["ppo_epochs"], total_episodes=n, response_length=spec["response_length"],
        stop_token="eos", temperature=spec["temperature"], learning_rate=spec["lr"], kl_coef=spec["kl_coef"],
        local_rollout_forward_batch_size=spec["rollout_forward_batch_size"], num_sample_generations=0,
        missing_eos_penalty=None, gradient_checkpointing=False, report_to=[], save_strategy="no",
        logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
    )

    class UpdateEnd(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            clock.t_last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # PPOTrainer calls it once per update
            clock.close_update(R)

    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=dataset, value_model=value_model, callbacks=[UpdateEnd()])
    fixes = {}
    if M < R:  # see the module docstring: accumulate over one minibatch, not over the whole rollout
        trainer.accelerator.gradient_accumulation_steps = M // m
        fixes["accelerator.gradient_accumulation_steps"] = M // m
    # TRL draws each rollout batch from an accelerate DataLoader inside a generator, so during the update that takes
    # the last batch of a pass over the data, accelerate's "end of dataloader" flag stays on and every micro batch
    # becomes an optimiser step. Accumulation must follow the minibatches only.
    trainer.accelerator.gradient_state.plugin_kwargs["sync_with_dataloader"] = False
    fixes["gradient_state.sync_with_dataloader"] = False
    trainer.policy_model.generation_config.eos_token_id = None  # always L tokens; TRL still truncates at EOS
    fixes["policy.generation_config.eos_token_id"] = None
    assert trainer.stop_token_id == tokenizer.eos_token_id

    # timing only: wrap module-level functions that train() looks up at call time
    batch_generation, forward = ppo_module.batch_generation, ppo_module.forward

    def timed_generation(model, queries, *a, **kw):
        t0 = time.perf_counter()
        clock.generating = True
        out = batch_generation(model, queries, *a, **kw)
        clock.generating = False
        assert out[0].shape[1] == queries.shape[1] + spec["response_length"], (out[0].shape, queries.shape)
        clock.gen_end = time.perf_counter()
        clock.gen += clock.gen_end - t0
        clock.context = int(queries.shape[1])
        return out

    def marked_forward(model, *a, **kw):
        if torch.is_grad_enabled() and clock.train_start is None:
            clock.train_start = time.perf_counter()
        return forward(model, *a, **kw)

    ppo_module.batch_generation, ppo_module.forward = timed_generation, marked_forward

    def count_step(*_):
        clock.steps += 1

    trainer.optimizer.optimizer.register_step_post_hook(count_step)
    for name, module in (("policy", trainer.policy_model), ("reference", trainer.ref_model),
                         ("value", trainer.value_model), ("reward", trainer.reward_model)):
        clock.watch(name, module)
    trainer.train()
    expected = spec["ppo_epochs"] * R // M
    if any(u["optimizer_steps"] != expected for u in clock.updates):
        raise SystemExit(f"optimiser steps per update {[u['optimizer_steps'] for u in clock.updates]}, expected "
                         f"{expected} (ppo_epochs × rollout / mini)")
    return {
        "mixed_precision": trainer.accelerator.mixed_precision,
        "fixes": fixes,
        "trl_settings": {k: getattr(trainer.args, k) for k in (
            "per_device_train_batch_size", "gradient_accumulation_steps", "num_mini_batches", "num_ppo_epochs",
            "local_batch_size", "mini_batch_size", "local_mini_batch_size", "micro_batch_size", "batch_size",
            "num_total_batches", "total_episodes", "response_length", "stop_token", "temperature",
            "local_rollout_forward_batch_size", "kl_coef", "learning_rate", "bf16", "gradient_checkpointing")},
        "gradient_checkpointing": bool(trainer.policy_model.is_gradient_checkpointing),
        "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
    }


def run_rloo(spec: dict, clock: Clock) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    R, M, m, E, k = (spec["rollout_batch_size"], spec["mini_batch_size"], spec["micro_batch_size"],
                     spec["ppo_epochs"], spec["rloo_k"])
    if R % k:
        raise SystemExit(f"rollout batch {R} is not a multiple of rloo_k {k}")
    tokenizer = AutoTokenizer.from_pretrained(spec["policy_dir"], padding_side="left")
    queries = load_queries(spec["queries"])
    n_prompts = spec["updates"] * R // k
    if len(queries) < n_prompts:
        raise SystemExit(f"{len(queries)} queries for {n_prompts} prompts")
    queries = queries[:n_prompts]
    retokenised = tokenizer([q["query"] for q in queries])["input_ids"]  # what RLOO will feed the policy
    mismatched = sum(list(a) != q["input_ids"] for a, q in zip(retokenised, queries))
    if mismatched:
        raise SystemExit(f"{mismatched} queries tokenise differently in TRL than in rlhflab")
    dataset = Dataset.from_list([{"prompt": q["query"]} for q in queries])
    policy, ref, reward, _ = load_models(spec, value=False)
    del ref  # RLOO builds its own reference model from the policy's directory
    steps_per_update = E * R // M

    config = RLOOConfig(
        output_dir=spec["work_dir"], use_cpu=True, bf16=spec["bf16"], seed=spec["seed"],
        per_device_train_batch_size=m, gradient_accumulation_steps=M // m, steps_per_generation=R // m,
        num_generations=k, num_iterations=E, max_completion_length=spec["response_length"],
        temperature=spec["temperature"], top_p=1.0, top_k=0,
        generation_kwargs={"min_new_tokens": spec["response_length"]},  # fixed length: see the module docstring
        beta=spec["kl_coef"], learning_rate=spec["lr"], max_steps=spec["updates"] * steps_per_update,
        gradient_checkpointing=False, disable_dropout=True, report_to=[], save_strategy="no",
        logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
    )

    class StepEnd(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            clock.t_last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # once per optimiser step
            clock.steps += 1
            if clock.steps == steps_per_update:
                clock.close_update(R)

    trainer = RLOOTrainer(model=policy, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, reward_processing_classes=tokenizer, callbacks=[StepEnd()])
    if spec["frozen_bf16"] and trainer.ref_model is not None:
        import torch

        trainer.ref_model.to(torch.bfloat16)  # as rlhflab's frozen_bf16 (RLOO builds it in the policy's dtype)

    # timing only: wrap two bound methods on this instance
    generate_single, generate_and_score = trainer._generate_single_turn, trainer._generate_and_score_completions

    def timed_generate(*a, **kw):
        t0 = time.perf_counter()
        clock.generating = True
        out = generate_single(*a, **kw)
        clock.generating = False
        clock.gen += time.perf_counter() - t0
        return out

    def timed_rollout(inputs):
        t0 = time.perf_counter()
        out = generate_and_score(inputs)
        clock.rollout += time.perf_counter() - t0
        clock.context = int(out["prompt_ids"].shape[1])
        assert out["completion_ids"].shape[1] == spec["response_length"], out["completion_ids"].shape
        return out

    trainer._generate_single_turn, trainer._generate_and_score_completions = timed_generate, timed_rollout
    for name, module in (("policy", trainer.model), ("reference", trainer.ref_model),
                         ("reward", trainer.reward_funcs[0])):
        if module is not None:
            clock.watch(name, module)
    trainer.train()
    return {
        "mixed_precision": trainer.accelerator.mixed_precision,
        "fixes": {},
        "trl_settings": {k: getattr(trainer.args, k) for k in (
            "per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
            "generation_batch_size", "num_generations", "num_iterations", "max_completion_length",
            "generation_kwargs", "temperature", "beta", "learning_rate", "max_steps", "bf16",
            "gradient_checkpointing")},
        "gradient_checkpointing": bool(trainer.model.is_gradient_checkpointing),
        "prompts_per_update": R // k, "optimizer_steps_per_update": steps_per_update,
    }


def main(spec_path: str, out_path: str) -> None:
    spec = json.load(open(spec_path))
    import torch
    import transformers
    import trl

    clock = Clock()
    t0 = time.perf_counter()
    info = (run_ppo if spec["trainer"] == "ppo" else run_rloo)(spec, clock)
    wall = time.perf_counter() - t0
    timed = clock.updates[1:]  # the first update is warm-up
    result = {
        "trainer": spec["trainer"], "trl_version": trl.__version__, "transformers": transformers.__version__,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "episodes": sum(u["episodes"] for u in clock.updates), "updates": clock.updates,
        "episodes_per_s": (sum(u["episodes"] for u in timed) / sum(u["seconds"] for u in timed)) if timed else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": wall, **info,
        "autocast_bf16_by_model_and_phase": {k: sorted(v) for k, v in sorted(clock.autocast.items())},
        "weight_dtypes": info.pop("weight_dtypes", None),
    }
    if len(clock.updates) != spec["updates"]:
        raise SystemExit(f"expected {spec['updates']} updates, timed {len(clock.updates)}")
    json.dump(result, open(out_path, "w"), indent=2, default=str)
    print(json.dumps({k: result[k] for k in ("trainer", "episodes", "episodes_per_s", "peak_rss_mib")}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
