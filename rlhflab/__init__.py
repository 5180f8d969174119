"""rlhflab: learning to summarize from human feedback, the whole loop (SFT, labels, RM, PPO, evaluation).

The stages are also Python functions (`rlhflab/api.py`): `rlhflab.sft`, `rm`, `rm_eval`, `ppo`, `best_of_n`,
`sample`, `score`, `simulate_labels`, `evaluate`, `style_eval` and `run` (the pipeline). They are imported on
first use, so `import rlhflab` (and the labelling app, which lives in `rlhflab.label`) stays free of torch.
"""

__version__ = "0.1.0"

_API = ("sft", "sample", "rm", "rm_eval", "score", "ppo", "best_of_n", "simulate_labels", "evaluate", "style_eval",
        "run")
__all__ = ["__version__", *_API]


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: the stage functions, imported when first asked for
    if name in _API:
        from rlhflab import api

        return getattr(api, name)
    raise AttributeError(f"module 'rlhflab' has no attribute {name!r}")
