"""The Python API, for notebooks: every stage as a function with the CLI's config keys.

    import rlhflab
    summary = rlhflab.rm("runs/rm/nb", "configs/rm/tiny.yaml", data={"limit": 96}, epochs=1)
    print(summary["dev_accuracy"])

Each function takes the run directory, then a config — a YAML path, a dict, or the stage's config dataclass
(e.g. `rlhflab.train.reward.RewardConfig`) — and keyword overrides with the same names as the CLI's `key=value`
(nested keys as dicts, or as dotted strings: `**{"data.limit": 96}`). Overrides are merged into the YAML or dict
key by key, checked like the CLI's (an unknown key is a `ConfigError` naming it), and the stage runs — or resumes,
or returns at once when the run directory is already done — exactly as `rlhflab STAGE --out RUN` would. Each
returns the stage's summary (its DONE.json), so results stay on disk as with the CLI.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

from rlhflab.core.config import from_dict, read_yaml_mapping, set_dotted

Config = str | Path | dict[str, Any] | Any | None

# function -> (module, config class, entry function): the CLI's stages (rlhflab/cli.py STAGES), in Python names
STAGES = {
    "sft": ("rlhflab.train.sft", "SFTConfig", "train"),
    "sample": ("rlhflab.eval.sample", "SampleConfig", "sample"),
    "rm": ("rlhflab.train.reward", "RewardConfig", "train"),
    "rm_eval": ("rlhflab.eval.rm_eval", "RMEvalConfig", "evaluate"),
    "score": ("rlhflab.eval.score", "ScoreConfig", "score"),
    "dpo": ("rlhflab.train.dpo", "DPOConfig", "train"),
    "ppo": ("rlhflab.train.ppo", "PPOConfig", "train"),
    "best_of_n": ("rlhflab.eval.best_of_n", "BestOfNConfig", "best_of_n"),
    "simulate_labels": ("rlhflab.eval.simulate", "SimulateConfig", "simulate"),
    "evaluate": ("rlhflab.eval.evaluate", "EvalConfig", "evaluate"),
    "style_eval": ("rlhflab.eval.style_eval", "StyleEvalConfig", "style_eval"),
    "run": ("rlhflab.pipeline", "PipelineConfig", "run"),
}


def build_config(cls: type, config: Config = None, **overrides: Any) -> Any:
    """The stage's config from a YAML path, a dict or an instance of `cls`, with `overrides` merged in."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        if not isinstance(config, cls):
            raise TypeError(f"expected a {cls.__name__} (or a YAML path or dict), got a {type(config).__name__}")
        if not overrides:
            return config
        config = dataclasses.asdict(config)
    data: dict[str, Any] = read_yaml_mapping(Path(config)) if isinstance(config, (str, Path)) else dict(config or {})
    for key, value in overrides.items():
        _merge(data, key, value)
    return from_dict(cls, data)


def _merge(data: dict[str, Any], key: str, value: Any) -> None:
    """`data.limit=96` and `data={"limit": 96}` set the same key; a dict merges into what is there."""
    if isinstance(value, dict):
        for k, v in value.items():
            _merge(data, f"{key}.{k}", v)
        return
    set_dotted(data, key, value)


def run_stage(name: str, out: str | Path, config: Config = None, **overrides: Any) -> dict[str, Any]:
    module_name, cls_name, fn_name = STAGES[name]
    module = importlib.import_module(module_name)
    cfg = build_config(getattr(module, cls_name), config, **overrides)
    return getattr(module, fn_name)(cfg, str(out))


def _stage(name: str):  # noqa: ANN202
    def stage(out: str | Path, config: Config = None, **overrides: Any) -> dict[str, Any]:
        return run_stage(name, out, config, **overrides)

    module_name, cls_name, _ = STAGES[name]
    stage.__name__ = stage.__qualname__ = name
    stage.__doc__ = (f"Run `rlhflab {name.replace('_', '-') if name != 'evaluate' else 'eval'}` into `out`: config "
                     f"= a YAML path, a dict or a {module_name}.{cls_name}; keyword overrides as the CLI's "
                     "key=value. Returns the run's summary.")
    return stage


sft, sample, rm, rm_eval, score, ppo = (_stage(n) for n in ("sft", "sample", "rm", "rm_eval", "score", "ppo"))
best_of_n, simulate_labels, evaluate, style_eval, run = (
    _stage(n) for n in ("best_of_n", "simulate_labels", "evaluate", "style_eval", "run"))
