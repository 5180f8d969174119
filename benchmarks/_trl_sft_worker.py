"""Run TRL's SFTTrainer on pre-tokenised examples and time each optimiser step. Runs inside .venv-bench.

Input: a JSONL of {"input_ids", "completion_mask"} (exactly the token sequences rlhflab trains on), the model
directory, and (last, optional: true when absent) whether to train under bf16 autocast. Output: JSON with per-step
seconds and real (non-pad) tokens, read by sft_vs_trl.py.
"""

import json
import resource
import sys
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer


def main(data_path: str, model_dir: str, out_path: str, micro: int, accum: int, lr: float, bf16: bool) -> None:
    rows = [json.loads(line) for line in open(data_path)]
    dataset = Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokens = {"n": 0}

    def count_tokens(module, args, kwargs):  # real tokens of every forward pass
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids")
        tokens["n"] += int(mask.sum()) if mask is not None else ids.numel()

    model.register_forward_pre_hook(count_tokens, with_kwargs=True)
    steps = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.n0 = time.perf_counter(), tokens["n"]

        def on_step_end(self, args, state, control, **kw):
            steps.append({"seconds": time.perf_counter() - self.t0, "tokens": tokens["n"] - self.n0})

    config = SFTConfig(
        output_dir="/tmp/trl-sft-bench", use_cpu=True, bf16=bf16, per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum, num_train_epochs=1, learning_rate=lr, lr_scheduler_type="cosine",
        warmup_steps=1, max_grad_norm=1.0, adam_beta2=0.95, logging_steps=1, save_strategy="no",
        report_to=[], max_length=None, dataloader_num_workers=0,
        gradient_checkpointing=False,  # TRL's default is on; off is its fastest setting (and matches rlhflab)
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[StepTimer()])
    trainer.train()
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    json.dump({"steps": steps, "peak_rss_mib": peak_rss_mib}, open(out_path, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]),
         sys.argv[7] == "true" if len(sys.argv) > 7 else True)
