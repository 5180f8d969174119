"""Rewards computed from text, not by a reward model: what PPO's and best-of-N's `reward=` accept besides an RM.

A spec names one of:

- `rouge`: ROUGE-L F1 of the response against the post's reference summary — the paper's "optimise ROUGE"
  baseline (Stiennon et al. 2020, Sec. 4.3). `rouge-score`'s `rougeL` (the longest common subsequence over the
  whole text, not the per-sentence `rougeLsum`), Porter stemming on, the same scorer `eval` reports as
  `rouge.rougeL`; a number in [0, 1]. It needs every post to have a reference (`check_references`).
- `style:NAME`: a style judge of the response alone (`rlhflab.models.style`: sentiment, descriptiveness).
- `python:module:function`: your function. It is called as `f(queries, responses)` — the formatted query texts
  and the response texts, one float back per response — or, when it declares a parameter named `posts`, as
  `f(queries, responses, posts=posts)` with the `Post` records (title, text, reference) of the same rows. Give it
  an attribute `needs_reference = True` to have posts without a reference refused before training starts.

Anything else is not a text reward (`is_text_reward` is False): a reward-model directory.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from rlhflab.data.records import Post

TextReward = Callable[..., Sequence[float]]

BUILTIN = ("rouge",)


def is_text_reward(spec: str) -> bool:
    """Whether `spec` names a text reward (else it is a reward-model path)."""
    return spec in BUILTIN or spec.startswith(("python:", "style:"))


def load_text_reward(spec: str) -> TextReward:
    """The callable a text-reward spec names. Unknown names raise ValueError listing what exists."""
    if spec == "rouge":
        return rouge_l_reward
    if spec.startswith("style:"):
        from rlhflab.models.style import style_scorer

        judge = style_scorer(spec.removeprefix("style:"))  # an unknown name: a ValueError listing the known ones
        return lambda queries, responses: judge(responses)  # a style judges the continuation alone
    if spec.startswith("python:"):
        module_name, _, fn_name = spec.removeprefix("python:").partition(":")
        if not module_name or not fn_name:
            raise ValueError(f"reward={spec!r}: expected python:module:function")
        fn = getattr(importlib.import_module(module_name), fn_name, None)
        if not callable(fn):
            raise ValueError(f"reward={spec!r}: {module_name} has no function {fn_name!r}")
        return fn
    raise ValueError(f"reward={spec!r}: not a text reward — expected rouge, style:NAME or python:module:function")


def wants_posts(fn: TextReward) -> bool:
    """Whether the callable declares a `posts` parameter (then it gets the Post records)."""
    try:
        return "posts" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature: the two-argument form
        return False


def needs_reference(fn: TextReward) -> bool:
    return bool(getattr(fn, "needs_reference", False))


def call_text_reward(fn: TextReward, queries: list[str], responses: list[str], posts: Sequence[Post]) -> list[float]:
    """One float per response; the callable gets the posts only when it asks for them."""
    raw = fn(queries, responses, posts=list(posts)) if wants_posts(fn) else fn(queries, responses)
    scores = [float(x) for x in raw]
    if len(scores) != len(responses):
        raise ValueError(f"the reward callable returned {len(scores)} scores for {len(responses)} responses")
    return scores


def check_references(fn: TextReward, posts: Sequence[Post], source: str) -> None:
    """Refuse, before any training, posts without a reference when the reward compares against it."""
    if not needs_reference(fn):
        return
    missing = [i for i, p in enumerate(posts) if not (p.reference or "").strip()]
    if missing:
        first = posts[missing[0]]
        raise ValueError(f"{source}: {len(missing)} of {len(posts)} posts have no reference summary (the first: "
                         f"post {missing[0] + 1}, id {first.id!r}); this reward compares against the reference — "
                         "use posts that have one (TL;DR train/eval, CNN/DM) or another reward")


@lru_cache(maxsize=1)
def _rouge_l_scorer() -> Any:
    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs "Using default tokenizer" per scorer
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_reward(queries: list[str], responses: list[str], posts: Sequence[Post]) -> list[float]:
    """ROUGE-L F1 (0..1) of each response against its post's reference."""
    scorer = _rouge_l_scorer()
    return [scorer.score(p.reference or "", r)["rougeL"].fmeasure for r, p in zip(responses, posts, strict=True)]


rouge_l_reward.needs_reference = True  # type: ignore[attr-defined]
