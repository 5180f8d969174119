"""Reward model: a causal LM's backbone + a scalar head read at the last real token of query+response.

    score = head(h_last) + bias        h_last = the backbone's hidden state at the last non-pad token

- The last real token is found from the attention mask, never from pad ids (the embedded tokenizer has
  pad == eos, and a response ends with EOS, which is exactly the token that must be scored). Positions come from
  the mask too, so left and right padding give the same score.
- `bias` is the normalisation: after training it is set so the human reference summaries of a post set score 0
  on average (`normalise`). It is stored apart from the head, in reward.json, so it is visible and auditable.

A saved reward model is a directory (a run's `model/`):

    config.json, model.safetensors, tokenizer files   the whole causal LM (save_pretrained), so PPO can start a
                                                      value model from it and any tool can load the backbone
    reward_head.safetensors                           head.weight (1, H), head.bias (1,)
    reward.json                                       {"bias", "hidden_size", "base_model", token budgets, ...}

It is also a standard sequence-classification RM: `AutoModelForSequenceClassification.from_pretrained(model_dir)`
(num_labels=1) loads the trained head, because model.safetensors holds `score.weight` (= head.weight) and
config.json says num_labels=1. transformers reads a classifier's score at the rightmost token that is not the pad
token, and rlhflab's score is read at the response's EOS — which is the embedded tokenizer's pad token. So the
directory's tokenizer and config get a pad token that is *not* EOS (`classifier_pad_id`), and both read the same
position. transformers' score has no bias: it is rlhflab's score minus a constant, `rlhflab_reward.offset` in
config.json (head.bias + the normalisation), so score differences — what a preference is about — agree exactly.
config.json also carries OpenRLHF's fields (`normalize_reward: true, mean: -offset, std: 1`), with which OpenRLHF
gives rlhflab's score itself.

Any other sequence-classification RM directory (TRL's, OpenRLHF's) or hub id loads too (`load_reward_model`):
its `score` becomes the head, with OpenRLHF's mean/std applied when its config has them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rlhflab.core.rundir import RunDir, RunError, atomic_path, is_run_dir
from rlhflab.data.format import encode_query, format_query, format_reference
from rlhflab.data.loaders import is_hub_id
from rlhflab.data.records import Post
from rlhflab.models.device import autocast
from rlhflab.models.generation import position_ids_from_mask
from rlhflab.models.loading import (
    ModelLoadError,
    is_sequence_classifier_dir,
    load_model,
    load_sequence_classifier,
    save_model,
)

log = logging.getLogger(__name__)

REWARD_JSON = "reward.json"
HEAD_FILE = "reward_head.safetensors"
FORMAT = "rlhflab-reward-model"
SCORE_KEY = "score.weight"  # the head as transformers' *ForSequenceClassification names it


class NotARewardModelError(RunError, ModelLoadError):
    """A path that holds no reward model (e.g. an SFT run given to rm-eval); the CLI reports it without a trace."""


class RewardModel(nn.Module):
    """`lm` (a HF causal LM; only its `base_model` runs) + `head` (Linear(H, 1)) + a `bias` buffer."""

    def __init__(self, lm: nn.Module, tokenizer, *, base_model: str = "", max_query_tokens: int = 512,
                 max_response_tokens: int = 64, init_std: float | None = None, seed: int = 0):
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        hidden = lm.config.hidden_size
        self.head = init_scalar_head(nn.Linear(hidden, 1), seed, init_std)
        self.length_head: nn.Linear | None = None  # ODIN's second head (`add_length_head`)
        self.register_buffer("bias", torch.zeros(()), persistent=False)
        self.base_model_spec = base_model
        self.max_query_tokens = max_query_tokens
        self.max_response_tokens = max_response_tokens
        self.normalisation: dict[str, Any] = {}

    def add_length_head(self, seed: int = 0) -> None:
        """ODIN: a second head trained to carry length, so the quality head (`head`, the reward) need not."""
        head = init_scalar_head(nn.Linear(self.head.in_features, 1), seed + 1)
        self.length_head = head.to(self.head.weight.device, self.head.weight.dtype)

    @property
    def heads(self) -> str:
        return "single" if self.length_head is None else "odin"

    @property
    def hidden_size(self) -> int:
        return self.head.in_features

    def forward(self, input_ids: Tensor, attention_mask: Tensor, inputs_embeds: Tensor | None = None) -> Tensor:
        """(B, T) ids and mask (any padding side) -> (B,) float32 scores. `inputs_embeds` (B, T, H), when given,
        is fed instead of the ids (frozen lower layers' output, see models/trunk.py)."""
        return self.read(self.last_states(input_ids, attention_mask, inputs_embeds))

    def read(self, h_last: Tensor) -> Tensor:
        """(B, H) hidden states at the scored tokens -> (B,) float32 scores: the (quality) head plus the bias."""
        return self.head(h_last.to(self.head.weight.dtype)).squeeze(-1).float() + self.bias

    def read_length(self, h_last: Tensor) -> Tensor:
        """(B, H) -> (B,) float32 scores of the ODIN length head (only in training and rm-eval; never a reward)."""
        if self.length_head is None:
            raise ValueError("this reward model has one head (heads=single): no length head to read")
        return self.length_head(h_last.to(self.length_head.weight.dtype)).squeeze(-1).float()

    def last_states(self, input_ids: Tensor, attention_mask: Tensor, inputs_embeds: Tensor | None = None) -> Tensor:
        """(B, T) ids and mask -> (B, H) the backbone's hidden state at each row's last real token."""
        hidden = backbone_states(self.lm, input_ids, attention_mask, inputs_embeds)  # (B, T, H)
        last = last_token_index(attention_mask)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)

    def per_token(self, input_ids: Tensor, attention_mask: Tensor, first: int = 0,
                  inputs_embeds: Tensor | None = None) -> Tensor:
        """(B, T) ids and mask -> (B, T - first) float32 scores at every position from `first` on: PPO's value
        model is a reward model read at every token (V_t = the score of the prefix ending at t). `inputs_embeds`
        (B, T, H), when given, is fed instead of the ids (frozen lower layers' output, see models/trunk.py)."""
        hidden = backbone_states(self.lm, input_ids, attention_mask, inputs_embeds)  # (B, T, H)
        return self.head(hidden[:, first:]).squeeze(-1).float() + self.bias  # (B, T - first)

    def forward_pairs(self, query_ids: Sequence[Sequence[int]], chosen_ids: Sequence[Sequence[int]],
                      rejected_ids: Sequence[Sequence[int]], share_query: bool = True) -> tuple[Tensor, Tensor]:
        """(r_chosen (m,), r_rejected (m,)) for m comparisons, both summaries of a pair in the same batch."""
        h_chosen, h_rejected = self.pair_states(query_ids, chosen_ids, rejected_ids, share_query)
        return self.read(h_chosen), self.read(h_rejected)

    def pair_states(self, query_ids: Sequence[Sequence[int]], chosen_ids: Sequence[Sequence[int]],
                    rejected_ids: Sequence[Sequence[int]], share_query: bool = True) -> tuple[Tensor, Tensor]:
        """((m, H), (m, H)) hidden states at the scored token of the chosen and the rejected summaries.

        share_query=True: the query runs ONCE per pair and its KV cache is shared by the chosen and the rejected
        summary (the 2m summaries then run in one forward on top of it). Queries are ~90% of the tokens, so this
        nearly halves the work of a step; the scores (and gradients) are those of the plain path.
        share_query=False: one forward over the 2m full query+response sequences, chosen rows then rejected rows.
        """
        m = len(query_ids)
        device = self.head.weight.device
        pad = self.tokenizer.pad_token_id
        if not share_query:
            seqs = [list(q) + list(c) for q, c in zip(query_ids, chosen_ids)]
            seqs += [list(q) + list(r) for q, r in zip(query_ids, rejected_ids)]
            ids, mask = pad_sequences(seqs, pad)
            h = self.last_states(ids.to(device), mask.to(device))  # (2m, H)
            return h[:m], h[m:]
        responses = [list(x) for pair in zip(chosen_ids, rejected_ids) for x in pair]  # c0, r0, c1, r1, ...
        h = self.group_states(query_ids, responses, 2)  # (2m, H)
        return h[0::2], h[1::2]

    def forward_groups(self, query_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                       k: int) -> Tensor:
        """(m, k) scores of k responses to each of m queries; response_ids[i*k : i*k+k] answer query i."""
        return self.read(self.group_states(query_ids, response_ids, k)).view(len(query_ids), k)

    def group_states(self, query_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                     k: int) -> Tensor:
        """(m*k, H) hidden states at the scored token of k responses to each of m queries (`shared_query_states`)."""
        return shared_query_states(self.lm, self.tokenizer.pad_token_id, query_ids, response_ids, k,
                                   self.head.weight.device)

    # ------------------------------------------------------------------------------------------- scoring helpers

    def encode_query(self, query: Post | str) -> list[int]:
        """A Post is formatted (and cut to max_query_tokens); a string is taken as an already formatted query."""
        text = format_query(query, self.tokenizer, self.max_query_tokens) if isinstance(query, Post) else query
        return encode_query(self.tokenizer, text)

    def encode_response(self, text: str, eos: bool = True) -> list[int]:
        return encode_response(self.tokenizer, text, eos=eos, max_tokens=self.max_response_tokens)

    @torch.no_grad()
    def score_ids(self, query_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                  batch_size: int = 16, bf16: bool | str = False) -> Tensor:
        """Scores of query+response token lists -> (B,) float32 (on CPU)."""
        if len(query_ids) != len(response_ids):
            raise ValueError(f"{len(query_ids)} queries but {len(response_ids)} responses")
        seqs = [list(q) + list(r) for q, r in zip(query_ids, response_ids)]
        device = next(self.parameters()).device
        out = []
        for i in range(0, len(seqs), batch_size):
            ids, mask = pad_sequences(seqs[i : i + batch_size], self.tokenizer.pad_token_id)
            with autocast(device, bf16):
                out.append(self(ids.to(device), mask.to(device)).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    @torch.no_grad()
    def score_groups(self, query_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], k: int,
                     batch_size: int = 16, bf16: bool | str = False) -> Tensor:
        """(m, k) float32 scores (on CPU) of k responses per query (response_ids[i*k : i*k+k] answer query i),
        each query run once (`forward_groups`). `batch_size` counts responses: max(1, batch_size // k) queries a
        forward."""
        m = len(query_ids)
        check_group_sizes(m, len(response_ids), k)
        device = next(self.parameters()).device
        per = max(1, batch_size // k)
        out = []
        for i in range(0, m, per):
            with autocast(device, bf16):
                out.append(self.forward_groups(query_ids[i : i + per], response_ids[i * k : (i + per) * k], k).cpu())
        return torch.cat(out) if out else torch.zeros(0, k)

    def score(self, queries: Sequence[Post | str], responses: Sequence[str], eos: bool | Sequence[bool] = True,
              batch_size: int = 16, bf16: bool | str = False) -> Tensor:
        """Scores of (query, response text) pairs -> (B,). Queries: Posts (formatted here) or formatted strings.

        Each response gets the SFT format (a leading space) and, where `eos` is true, the EOS token — as the
        policy writes a summary that ended by itself.
        """
        eos_flags = [eos] * len(responses) if isinstance(eos, bool) else list(eos)
        q_ids = [self.encode_query(q) for q in queries]
        r_ids = [self.encode_response(t, e) for t, e in zip(responses, eos_flags)]
        return self.score_ids(q_ids, r_ids, batch_size=batch_size, bf16=bf16)


# ------------------------------------------------------------------------------------------------ functions

def backbone_states(lm: nn.Module, input_ids: Tensor, attention_mask: Tensor, inputs_embeds: Tensor | None = None
                    ) -> Tensor:
    """(B, T) ids and mask -> (B, T, H) last hidden states of `lm`'s backbone, positions from the mask (any padding
    side). `inputs_embeds` (B, T, H), when given, is fed instead of the ids. No KV cache: nothing reads it (and
    a cache handed to compiled layers made each layer recompile, see models/compiled.py)."""
    return lm.base_model(input_ids=None if inputs_embeds is not None else input_ids, inputs_embeds=inputs_embeds,
                         attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
                         use_cache=False).last_hidden_state


def shared_query_states(lm: nn.Module, pad: int, query_ids: Sequence[Sequence[int]],
                        response_ids: Sequence[Sequence[int]], k: int, device: torch.device) -> Tensor:
    """(m*k, H) `lm`'s backbone states at the last real token of k responses to each of m queries
    (response_ids[i*k : i*k+k] answer query i).

    Each query runs ONCE and its KV cache is repeated for its k responses, which then run in one forward on top
    of it: the states (and gradients) of the m*k full query+response sequences at a fraction of the work when
    queries are long (RM pairs: k = 2; best-of-N: k = N).
    """
    m = len(query_ids)
    check_group_sizes(m, len(response_ids), k)
    q_ids, q_mask = pad_sequences(query_ids, pad, side="left")  # (m, Tq)
    q_ids, q_mask = q_ids.to(device), q_mask.to(device)
    r_ids, r_mask = pad_sequences(response_ids, pad, side="right")  # (m*k, Tr)
    r_ids, r_mask = r_ids.to(device), r_mask.to(device)
    out = lm.base_model(input_ids=q_ids, attention_mask=q_mask, position_ids=position_ids_from_mask(q_mask),
                        use_cache=True)
    cache = out.past_key_values
    cache.batch_repeat_interleave(k)  # each query's keys/values serve its k responses (grads add up)
    q_mask_k = q_mask.repeat_interleave(k, dim=0)  # (m*k, Tq)
    full_mask = torch.cat([q_mask_k, r_mask], dim=1)  # (m*k, Tq+Tr)
    positions = q_mask_k.sum(-1, keepdim=True) + torch.arange(r_ids.shape[1], device=device)[None]  # (m*k, Tr)
    hidden = lm.base_model(input_ids=r_ids, attention_mask=full_mask, position_ids=positions,
                           past_key_values=cache, use_cache=True).last_hidden_state  # (m*k, Tr, H)
    last = last_token_index(full_mask) - q_ids.shape[1]  # (m*k,) the last real token is in the response
    return hidden[torch.arange(m * k, device=device), last]  # (m*k, H)


@torch.no_grad()
def length_head_scores(rm: RewardModel, query_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                       batch_size: int = 16, bf16: bool | str = False) -> Tensor:
    """(B,) float32 ODIN length-head scores of query+response token lists (on CPU), as `score_ids` for the
    quality head; rm-eval reports both heads."""
    seqs = [list(q) + list(r) for q, r in zip(query_ids, response_ids)]
    device = next(rm.parameters()).device
    out = []
    for i in range(0, len(seqs), batch_size):
        ids, mask = pad_sequences(seqs[i : i + batch_size], rm.tokenizer.pad_token_id)
        with autocast(device, bf16):
            out.append(rm.read_length(rm.last_states(ids.to(device), mask.to(device))).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def init_scalar_head(head: nn.Linear, seed: int, std: float | None = None) -> nn.Linear:
    """Small random init (std 1/sqrt(H+1), as in OpenAI's lm-human-preferences), zero bias: scores start near 0
    and the backbone gets gradients from the first step (a zero head would block them for one step)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nn.init.normal_(head.weight, std=std if std is not None else 1.0 / (head.in_features + 1) ** 0.5)
    nn.init.zeros_(head.bias)
    return head


def check_group_sizes(n_queries: int, n_responses: int, k: int) -> None:
    """k responses to each query: response i*k … i*k+k-1 answer query i."""
    if n_responses != n_queries * k:
        raise ValueError(f"{n_queries} queries x k={k} needs {n_queries * k} responses, got {n_responses}")


def last_token_index(attention_mask: Tensor) -> Tensor:
    """(B, T) mask -> (B,) index of the last 1 in each row (works for left and right padding)."""
    T = attention_mask.shape[-1]
    flipped = attention_mask.flip(-1).long()  # (B, T)
    if bool((flipped.sum(-1) == 0).any()):
        raise ValueError("a row has no real token (all-zero attention mask)")
    return T - 1 - flipped.argmax(-1)


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[Tensor, Tensor]:
    """Token lists -> (B, T) ids and (B, T) long mask, padded on `side`."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            raise ValueError("pad_sequences: an empty sequence")
        sl = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
        ids[i, sl] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def encode_response(tokenizer, text: str, *, eos: bool = True, max_tokens: int | None = None) -> list[int]:
    """A summary as the policy writes it after "TL;DR:": a leading space, then EOS if it ended by itself.
    Cut to `max_tokens` (a cut summary loses its EOS, like the SFT targets)."""
    ids = tokenizer.encode(format_reference(text, tokenizer.eos_token if eos else ""), add_special_tokens=False)
    return ids[:max_tokens] if max_tokens else ids


def new_reward_model(spec: str, *, max_query_tokens: int = 512, max_response_tokens: int = 64, seed: int = 0,
                     allow_partial: bool = False) -> RewardModel:
    """A fresh head on the backbone of any model spec (SFT run directory, embedded name, model dir, hub id)."""
    lm, tokenizer = load_model(spec, allow_partial=allow_partial)
    return RewardModel(lm, tokenizer, base_model=str(spec), max_query_tokens=max_query_tokens,
                       max_response_tokens=max_response_tokens, seed=seed)


@torch.no_grad()
def normalise(rm: RewardModel, posts: Sequence[Post], batch_size: int = 16, bf16: bool | str = False,
              source: str = "") -> dict[str, Any]:
    """Set `rm.bias` so the human reference summaries of `posts` score 0 on average. Returns what was done."""
    with_ref, dropped = [], 0
    for p in posts:
        if p.reference:
            try:
                rm.encode_query(p)
            except ValueError:  # cannot fit the query budget even cut (a title longer than it): left out
                dropped += 1
                continue
            with_ref.append(p)
    if dropped:
        log.warning("normalise: %d of the posts do not fit max_query_tokens=%d even cut, left out", dropped,
                    rm.max_query_tokens)
    if not with_ref:
        raise ValueError(f"normalise: none of the {len(posts)} posts has a reference summary that fits the query "
                         f"budget ({source or 'the posts'})")
    rm.bias.zero_()
    raw = rm.score(with_ref, [p.reference or "" for p in with_ref], eos=True, batch_size=batch_size, bf16=bf16)
    offset = -float(raw.mean())
    rm.bias.fill_(offset)
    rm.normalisation = {"on": source, "n_references": len(with_ref), "n_dropped_unfit": dropped, "raw_mean": -offset,
                        "raw_std": float(raw.std()) if len(raw) > 1 else 0.0, "bias": offset}
    return rm.normalisation


@torch.no_grad()
def normalise_groups(rm: RewardModel, query_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                     k: int, batch_size: int = 16, bf16: bool | str = False, source: str = "labels"
                     ) -> dict[str, Any]:
    """Set `rm.bias` so the given responses (k per query) score 0 on average — Ziegler et al. normalise on policy
    samples, which is what best-of-N labels hold. Returns what was done."""
    if not query_ids:
        raise ValueError("normalise_groups: no responses to normalise on")
    rm.bias.zero_()
    raw = rm.score_groups(query_ids, response_ids, k, batch_size=batch_size, bf16=bf16).reshape(-1)
    offset = -float(raw.mean())
    rm.bias.fill_(offset)
    rm.normalisation = {"on": source, "n_responses": len(raw), "raw_mean": -offset,
                        "raw_std": float(raw.std()) if len(raw) > 1 else 0.0, "bias": offset}
    return rm.normalisation


def save_reward_model(rm: RewardModel, out_dir: str | Path, lm_state_dict: dict[str, torch.Tensor] | None = None
                      ) -> Path:
    """Write the LM (save_pretrained, with the head also as `score.weight`) + tokenizer + head + reward.json into
    `out_dir`, atomically; see the module docstring for the sequence-classification view of the same directory.

    `lm_state_dict`: the LM weights to write instead of rm.lm's own (full tensors of a sharded model)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    weights = dict(lm_state_dict if lm_state_dict is not None else rm.lm.state_dict())
    weights[SCORE_KEY] = rm.head.weight.detach().float().contiguous().cpu()  # (1, H)
    with atomic_path(out_dir) as tmp:
        save_model(rm.lm, rm.tokenizer, tmp, state_dict=weights)
        heads = {"weight": rm.head.weight, "bias": rm.head.bias}
        if rm.length_head is not None:  # ODIN: the length head rides along (never part of the score)
            heads.update({"length_weight": rm.length_head.weight, "length_bias": rm.length_head.bias})
        save_file({k: v.detach().float().contiguous().cpu() for k, v in heads.items()}, str(tmp / HEAD_FILE))
        meta = {"format": FORMAT, "version": 1, "heads": rm.heads, "bias": float(rm.bias),
                "hidden_size": rm.hidden_size,
                "base_model": rm.base_model_spec, "max_query_tokens": rm.max_query_tokens,
                "max_response_tokens": rm.max_response_tokens, "normalisation": rm.normalisation}
        (tmp / REWARD_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        _as_sequence_classifier(tmp, rm)
    return out_dir


def classifier_pad_id(tokenizer) -> int:
    """A pad id that is not EOS, for transformers' "score at the rightmost non-pad token": the tokenizer's own pad
    when it differs from EOS, else its unk, BOS or another special token, else token 0 (or 1). Any id but EOS
    works: a scored sequence ends with EOS, so only real padding is ever skipped."""
    eos = tokenizer.eos_token_id
    candidates = [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id, *tokenizer.all_special_ids]
    return next((c for c in candidates if c is not None and c != eos), 1 if eos == 0 else 0)


def _as_sequence_classifier(model_dir: Path, rm: RewardModel) -> None:
    """config.json: num_labels=1, a pad token that is not EOS, the score offset and OpenRLHF's mean/std; the
    tokenizer files: the same pad token."""
    import copy

    pad = classifier_pad_id(rm.tokenizer)
    offset = float(rm.head.bias.detach().float()) + float(rm.bias)
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config.update({"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}, "pad_token_id": pad,
                   "normalize_reward": True, "mean": -offset, "std": 1.0,
                   "rlhflab_reward": {"offset": offset, "score": "rlhflab score = score.weight @ h_last + offset, "
                                      "h_last at the last token that is not pad_token_id (the response's EOS)",
                                      "normalisation": rm.normalisation}})
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer = copy.deepcopy(rm.tokenizer)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    tokenizer.save_pretrained(model_dir)


def is_reward_model_dir(path: str | Path) -> bool:
    return (Path(path) / REWARD_JSON).exists()


def load_reward_model(spec: str | Path, allow_partial: bool = False, dtype: str = "float32") -> RewardModel:
    """Load a reward model from a run directory (uses <run>/model) or a saved reward-model directory.

    An unfinished run (no DONE.json) is an error unless `allow_partial`: then its last checkpoint (state/) is put
    on the base model named in its config, with no normalisation (bias 0).
    """
    if str(spec).startswith("ensemble:"):  # K reward models as one (models/ensemble.py)
        from rlhflab.models.ensemble import load_ensemble

        return load_ensemble(str(spec), load_reward_model, allow_partial=allow_partial, dtype=dtype)
    path = Path(spec).expanduser()
    if is_run_dir(path):
        run = RunDir(path)
        run.require_done(allow_partial=allow_partial)
        if run.is_done() or is_reward_model_dir(run.model_dir):
            return _load_dir(run.model_dir, dtype)
        return _load_partial(run)
    if path.is_dir() and is_reward_model_dir(path):
        return _load_dir(path, dtype)
    if path.is_dir() and is_sequence_classifier_dir(path) or not path.exists() and is_hub_id(str(spec)):
        return load_sequence_classifier_rm(str(spec), dtype)
    raise NotARewardModelError(f"{spec}: not a reward model — expected an `rlhflab rm` run directory, a directory "
                               f"with {REWARD_JSON}, or a sequence-classification RM (a directory or hub id; a "
                               "language model alone has no reward head)")


def _load_dir(model_dir: Path, dtype: str) -> RewardModel:
    from safetensors.torch import load_file

    if not is_reward_model_dir(model_dir):
        raise NotARewardModelError(f"{model_dir}: no {REWARD_JSON} — not a reward model (is this an `rlhflab rm` "
                                   "run?)")
    meta = json.loads((model_dir / REWARD_JSON).read_text())
    if meta.get("format") != FORMAT:
        raise NotARewardModelError(f"{model_dir / REWARD_JSON}: unknown format {meta.get('format')!r}")
    lm, tokenizer = load_model(str(model_dir), dtype=dtype)
    if lm.config.hidden_size != meta["hidden_size"]:
        raise ModelLoadError(f"{model_dir}: backbone hidden size {lm.config.hidden_size} != reward.json "
                             f"hidden_size {meta['hidden_size']}")
    rm = RewardModel(lm, tokenizer, base_model=meta.get("base_model", ""),
                     max_query_tokens=meta["max_query_tokens"], max_response_tokens=meta["max_response_tokens"])
    head = load_file(str(model_dir / HEAD_FILE))
    if "length_weight" in head:  # an ODIN RM: both heads
        rm.add_length_head()
        rm.length_head.load_state_dict({"weight": head.pop("length_weight"), "bias": head.pop("length_bias")})
    rm.head.load_state_dict(head)
    rm.bias.fill_(float(meta["bias"]))
    rm.normalisation = meta.get("normalisation", {})
    rm.to(lm.dtype)
    rm.bias.data = rm.bias.float()
    return rm.eval()


def load_sequence_classifier_rm(spec: str, dtype: str = "float32") -> RewardModel:
    """A transformers *ForSequenceClassification RM (num_labels=1; TRL, OpenRLHF, a hub id) as a RewardModel: its
    `score` layer becomes the head, OpenRLHF's mean/std (when its config has normalize_reward) are applied, and it
    is read at the last real token like any rlhflab RM."""
    model, tokenizer = load_sequence_classifier(spec, dtype=dtype)
    score = _score_layer(model, spec)
    rm = RewardModel(model, tokenizer, base_model=spec)
    config = model.config
    std = float(getattr(config, "std", 1.0) or 1.0) if getattr(config, "normalize_reward", False) else 1.0
    mean = float(getattr(config, "mean", 0.0) or 0.0) if getattr(config, "normalize_reward", False) else 0.0
    with torch.no_grad():
        rm.head.weight.copy_(score.weight.float() / std)
        rm.head.bias.fill_((float(score.bias) if score.bias is not None else 0.0) / std - mean / std)
    rm.to(model.dtype)
    rm.bias.data = rm.bias.float()
    rm.normalisation = {"on": "the model's own config", "mean": mean, "std": std} if std != 1.0 or mean else {}
    return rm.eval()


def _score_layer(model: nn.Module, spec: str) -> nn.Linear:
    for name in ("score", "classifier", "v_head"):
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Linear):
            if layer.out_features != 1:
                raise NotARewardModelError(f"{spec}: a sequence classifier with {layer.out_features} labels; a "
                                           "reward model has one (num_labels=1)")
            return layer
    raise NotARewardModelError(f"{spec}: {type(model).__name__} has no single-output score layer")


def _load_partial(run: RunDir) -> RewardModel:
    weights_path = run.state_dir / "weights.pt"
    if not weights_path.exists():
        raise RunError(f"{run.path}: unfinished and has no checkpoint in {run.state_dir} yet")
    cfg = run.read_config()["config"]
    data = cfg.get("data", {})
    rm = new_reward_model(cfg["model"], max_query_tokens=data.get("max_query_tokens", 512),
                          max_response_tokens=data.get("max_response_tokens", 64), seed=cfg.get("seed", 0),
                          allow_partial=True)
    weights = torch.load(weights_path, weights_only=True)
    if any(k.startswith("length_head.") for k in weights):
        rm.add_length_head()
    rm.load_state_dict(weights, strict=False)
    log.warning("%s: using the last checkpoint of an unfinished run (not normalised)", run.path)
    return rm.eval()


__all__ = ["RewardModel", "classifier_pad_id", "encode_response", "is_reward_model_dir", "last_token_index",
           "load_reward_model", "load_sequence_classifier_rm", "new_reward_model", "normalise", "pad_sequences",
           "save_reward_model"]
