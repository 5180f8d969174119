"""Run TRL's RewardTrainer on pre-tokenised comparison pairs and time each optimiser step. Runs inside .venv-bench.

Input: a JSONL of {"chosen_ids", "rejected_ids"} (query ids + summary ids: exactly the tokens rlhflab's RM trains
on; `chosen_ids`/`rejected_ids` are the columns TRL 1.16 takes as already tokenised, so it adds nothing — no EOS, no
chat template), in the order rlhflab visits them, the model directory, and (last, optional: true when absent)
whether to train under bf16 autocast. Output: JSON with per-step seconds, pairs and real (non-pad) tokens, read by
rm_vs_trl.py.
"""

import json
import resource
import sys
import time

import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from trl import RewardConfig, RewardTrainer


def main(data_path: str, model_dir: str, out_path: str, micro: int, accum: int, lr: float, bf16: bool) -> None:
    rows = [json.loads(line) for line in open(data_path)]
    dataset = Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id  # the classifier finds the last non-pad token with it
    counts = {"pairs": 0, "tokens": 0}

    def count(module, args, kwargs):  # every forward pass: chosen rows then rejected rows
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids")
        counts["pairs"] += ids.shape[0] // 2
        counts["tokens"] += int(mask.sum()) if mask is not None else ids.numel()

    model.register_forward_pre_hook(count, with_kwargs=True)
    steps = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.p0, self.n0 = time.perf_counter(), counts["pairs"], counts["tokens"]

        def on_step_end(self, args, state, control, **kw):
            steps.append({"seconds": time.perf_counter() - self.t0, "pairs": counts["pairs"] - self.p0,
                          "tokens": counts["tokens"] - self.n0})

    config = RewardConfig(
        output_dir="/tmp/trl-rm-bench", use_cpu=True, bf16=bf16, per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum, num_train_epochs=1, learning_rate=lr, lr_scheduler_type="cosine",
        warmup_steps=1, max_grad_norm=1.0, adam_beta2=0.95, logging_steps=1, save_strategy="no",
        eval_strategy="no", report_to=[], max_length=None, dataloader_num_workers=0, seed=1,
        train_sampling_strategy="sequential",  # the rows come in rlhflab's batch order: identical micro batches
        gradient_checkpointing=False,  # TRL's default is on; off is its fastest setting (and matches rlhflab)
    )
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                            callbacks=[StepTimer()])
    trainer.train()
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    json.dump({"steps": steps, "peak_rss_mib": peak_rss_mib,
               "gradient_checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False))},
              open(out_path, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]),
         sys.argv[7] == "true" if len(sys.argv) > 7 else True)
