"""K reward models used as one (Coste et al. 2023): `ensemble:<rule>:<rm>,<rm>,...`.

    reward=ensemble:mean:runs/rm/s1,runs/rm/s2,runs/rm/s3        the members' mean score
    reward=ensemble:min:runs/rm/s1,runs/rm/s2,runs/rm/s3         the worst case
    reward=ensemble:uwo=0.5:runs/rm/s1,runs/rm/s2,runs/rm/s3     mean − 0.5·std (uncertainty-weighted)

Members are any reward models `load_reward_model` takes (rlhflab runs with different `seed`s — the head's init
and the batch order — or sequence-classification RMs) that read queries and responses the same way (the same
vocabulary and token budgets), so one encoding serves all. With `freeze_layers=N` the members share the SFT
model's frozen lower layers exactly (only the upper layers and the heads differ): each costs the training of its
upper layers only, and their disagreement is what those layers learned differently from different data orders.
An ensemble scores like one RM — `score`, `score_ids`, `score_groups` — so it works as PPO's and best-of-N's
`reward=` and as a judge (`kind: rm`). PPO's value model starts from the first member.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from rlhflab.data.records import Post
from rlhflab.ops.losses import combine_ensemble

PREFIX = "ensemble:"


def is_ensemble_spec(spec: str | Path) -> bool:
    return str(spec).startswith(PREFIX)


def parse_ensemble_spec(spec: str) -> tuple[str, float, list[str]]:
    """"ensemble:uwo=0.5:a,b" -> ("uwo", 0.5, ["a", "b"]); ValueError naming what is wrong."""
    body = spec[len(PREFIX):]
    rule, _, members = body.partition(":")
    name, _, lam = rule.partition("=")
    paths = [m for m in members.split(",") if m]
    if name not in ("mean", "min", "uwo") or (name == "uwo") != bool(lam):
        raise ValueError(f"reward {spec!r}: the rule is mean, min or uwo=<lambda> (ensemble:<rule>:<rm>,<rm>,...)")
    if len(paths) < 2:
        raise ValueError(f"reward {spec!r}: an ensemble needs at least two reward models, got {len(paths)}")
    try:
        return name, float(lam) if lam else 0.0, paths
    except ValueError:
        raise ValueError(f"reward {spec!r}: uwo's lambda must be a number, got {lam!r}") from None


def reward_members(spec: str) -> list[str]:
    """The reward models a reward spec names: an ensemble's members, else the spec itself."""
    return parse_ensemble_spec(spec)[2] if is_ensemble_spec(spec) else [spec]


class RewardEnsemble(nn.Module):
    """K RewardModels scored together and combined by `rule` (ops/losses.py:combine_ensemble)."""

    def __init__(self, members: Sequence[nn.Module], rule: str, lam: float = 0.0, spec: str = ""):
        super().__init__()
        first = members[0]
        for i, m in enumerate(members[1:], 1):
            if (m.tokenizer.get_vocab() != first.tokenizer.get_vocab() or m.max_query_tokens != first.max_query_tokens
                    or m.max_response_tokens != first.max_response_tokens):
                raise ValueError(f"ensemble member {i} reads text differently from member 0 (vocabulary or token "
                                 "budgets): an ensemble's members must share one encoding")
        self.members = nn.ModuleList(members)
        self.rule, self.lam, self.spec = rule, lam, spec
        self.tokenizer = first.tokenizer
        self.max_query_tokens, self.max_response_tokens = first.max_query_tokens, first.max_response_tokens
        self.normalisation = {"ensemble": rule if rule != "uwo" else f"uwo={lam}",
                              "members": [m.normalisation for m in members]}
        self.length_head = None  # rm-eval: no per-head report

    @property
    def heads(self) -> str:
        return f"ensemble of {len(self.members)}"

    def encode_query(self, query: Post | str) -> list[int]:
        return self.members[0].encode_query(query)

    def encode_response(self, text: str, eos: bool = True) -> list[int]:
        return self.members[0].encode_response(text, eos)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, inputs_embeds: Tensor | None = None) -> Tensor:
        return combine_ensemble(torch.stack([m(input_ids, attention_mask) for m in self.members]), self.rule,
                                self.lam)

    def member_scores(self, method: str, *args, **kwargs) -> Tensor:
        """(K, ...) every member's `method(*args)` (score_ids / score_groups / score), stacked."""
        return torch.stack([getattr(m, method)(*args, **kwargs) for m in self.members])

    def score_ids(self, query_ids, response_ids, batch_size: int = 16, bf16: bool | str = False
                  ) -> Tensor:
        return combine_ensemble(self.member_scores("score_ids", query_ids, response_ids, batch_size=batch_size,
                                                   bf16=bf16), self.rule, self.lam)

    def score_groups(self, query_ids, response_ids, k: int, batch_size: int = 16, bf16: bool | str = False
                     ) -> Tensor:
        return combine_ensemble(self.member_scores("score_groups", query_ids, response_ids, k,
                                                   batch_size=batch_size, bf16=bf16), self.rule, self.lam)

    def score(self, queries, responses, eos: bool | Sequence[bool] = True, batch_size: int = 16,
              bf16: bool | str = False) -> Tensor:
        return combine_ensemble(self.member_scores("score", queries, responses, eos=eos, batch_size=batch_size,
                                                   bf16=bf16), self.rule, self.lam)


def load_ensemble(spec: str, load_member, **kwargs) -> RewardEnsemble:
    """The ensemble a spec names; `load_member(path, **kwargs)` loads each member (load_reward_model)."""
    rule, lam, paths = parse_ensemble_spec(spec)
    return RewardEnsemble([load_member(p, **kwargs) for p in paths], rule, lam, spec)


def first_member(spec: str) -> str:
    """The reward model PPO's value model starts from when the reward is an ensemble."""
    return parse_ensemble_spec(spec)[2][0]
