"""The models one `rlhflab eval` run loads, each once: the judges' reward models, the policy being sampled (one
at a time, so two policies never share the memory), the KL reference and the tokenizer that lengths are counted
in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlhflab.models.device import resolve_device
from rlhflab.models.loading import load_model, load_tokenizer
from rlhflab.models.reward import RewardModel, load_reward_model


def model_key(spec: str) -> str:
    """A model spec as an identity: the resolved path when it is one (so `runs/x` and `./runs/x` are one model)."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def load_scorer(spec: str, device: str, allow_partial: bool) -> RewardModel:
    """A reward model on `device` ("auto": the first CUDA GPU when there is one), for the stages that score."""
    return load_reward_model(spec, allow_partial=allow_partial).to(resolve_device(device))


def length_unit(length_spec: str) -> str:
    return "whitespace-separated words" if length_spec == "words" else f"tokens of the {length_spec} tokenizer"


class ModelCache:
    """Loads each model on first use and keeps it (the policy: until the next policy is asked for)."""

    def __init__(self, device: torch.device, allow_partial: bool, length_spec: str):
        self.device, self.allow_partial, self.length_spec = device, allow_partial, length_spec
        self._rms: dict[str, RewardModel] = {}
        self._policy: tuple[str, Any, Any] | None = None  # (model key, model, tokenizer)
        self._reference: tuple[str, Any, Any] | None = None
        self._length_tokenizer: Any = None

    def reward_model(self, spec: str) -> RewardModel:
        key = model_key(spec)
        if key not in self._rms:
            self._rms[key] = load_reward_model(spec, allow_partial=self.allow_partial).to(self.device)
        return self._rms[key]

    def policy(self, spec: str) -> tuple[Any, Any]:
        """(model, tokenizer) of `spec`; the previous policy is freed first."""
        if self._policy is None or self._policy[0] != model_key(spec):
            self._policy = None
            self._policy = self._load(spec)
        return self._policy[1], self._policy[2]

    def reference(self, spec: str) -> tuple[Any, Any]:
        """(model, tokenizer) of the KL reference, kept for the whole run."""
        if self._reference is None:
            self._reference = self._load(spec)
        return self._reference[1], self._reference[2]

    def count_tokens(self, text: str) -> int:
        if self.length_spec == "words":
            return len(text.split())
        if self._length_tokenizer is None:
            self._length_tokenizer = load_tokenizer(self.length_spec, allow_partial=self.allow_partial)
        return len(self._length_tokenizer.encode(text.strip(), add_special_tokens=False))

    def _load(self, spec: str) -> tuple[str, Any, Any]:
        model, tokenizer = load_model(spec, allow_partial=self.allow_partial)
        return model_key(spec), model.to(self.device).eval(), tokenizer
