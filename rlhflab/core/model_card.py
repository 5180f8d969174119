"""A Hub model card (README.md with YAML front matter) for every saved `model/` of a training stage.

Written when the run finishes (`RunDir.write_done`), from what the run directory already holds: the stage, its
resolved config (config.yaml), the summary (DONE.json) and the git revision. So the card says what the model is,
what it was trained from and on, its key numbers, how to load it, and the command that reproduces it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

# the embedded model's name on the Hub, for the card's base_model (local paths are not valid there)
HUB_NAMES = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
PIPELINE_TAG = {"sft": "text-generation", "ppo": "text-generation", "dpo": "text-generation",
                "rm": "text-classification"}
WHAT = {"sft": "a policy fine-tuned on reference summaries (supervised fine-tuning)",
        "rm": "a reward model trained on human comparisons (a scalar score of a query and a response)",
        "ppo": "a policy optimised with PPO against a reward model, with a KL penalty to its starting model",
        "dpo": "a policy trained with direct preference optimisation on human comparisons (Rafailov et al. 2023)"}


def hub_base_model(spec: str | None) -> str | None:
    if not spec:
        return None
    spec = str(spec)
    if spec in HUB_NAMES:
        return HUB_NAMES[spec]
    return spec if _HUB_ID.fullmatch(spec) and not spec.startswith((".", "/", "~")) else None


def model_card(stage: str, config: dict[str, Any], summary: dict[str, Any], git_revision: str | None) -> str:
    base = config.get("policy_init") or config.get("model")
    front = {"library_name": "transformers", "pipeline_tag": PIPELINE_TAG.get(stage, "text-generation"),
             "tags": ["rlhflab", "rlhf", stage, "summarization"]}
    if hub_base_model(base):
        front["base_model"] = hub_base_model(base)
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {stage} model trained with rlhflab", "",
             f"This is {WHAT.get(stage, 'a model trained by ' + stage)}, written by `rlhflab {stage}`.", "",
             "## Trained from and on", "", f"- base model: `{base}`"]
    if stage == "ppo":
        lines.append(f"- reward: `{config.get('reward')}`")
    if stage == "dpo":
        lines.append(f"- reference: `{config.get('reference') or base}`, β = {config.get('beta')}")
    for key, value in (config.get("data") or {}).items():
        if isinstance(value, str) and value:
            lines.append(f"- data.{key}: `{value}`")
    lines += ["", "## Key numbers (DONE.json)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in summary.items() if isinstance(v, (int, float)) and k != "stage"]
    lines += ["", "## Load it", "", "```python", *_load_snippet(stage), "```", "",
              "## Reproduce", "",
              "The run directory's `config.yaml` holds every setting this model was trained with:", "",
              "```bash", f"rlhflab {stage} --config config.yaml --out <a new run directory>", "```", "",
              f"rlhflab git revision: `{git_revision or 'unknown'}`.", ""]
    return "\n".join(lines)


def _load_snippet(stage: str) -> list[str]:
    if stage == "rm":
        return ["from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                'rm = AutoModelForSequenceClassification.from_pretrained("<this directory>")  # num_labels=1',
                'tok = AutoTokenizer.from_pretrained("<this directory>")',
                "# score = logits + config.rlhflab_reward['offset'] is rlhflab's score (differences agree as they",
                "# are); queries use rlhflab's TL;DR format and responses end with the EOS token"]
    return ["from transformers import AutoModelForCausalLM, AutoTokenizer",
            'model = AutoModelForCausalLM.from_pretrained("<this directory>")',
            'tok = AutoTokenizer.from_pretrained("<this directory>")',
            "# or with rlhflab: rlhflab.models.loading.load_model('<the run directory>')"]


def _fmt(value: float | int) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
