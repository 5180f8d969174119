"""FLOP counts of the matmuls a decoder-only LM runs, and the machine's matmul peak (imported by the benchmark
scripts, which run as `python benchmarks/X.py`). Counts are "useful" FLOPs: real tokens only (no padding), the
output head only where its logits are used, attention as 4·layers·d·L² per forward of an L-token sequence and
twice that for its backward."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


def matmul_peak_gflops(dtype: torch.dtype, sizes=(1024, 2048, 3072), repeats: int = 8,
                       budget_s: float = 10.0) -> float:
    """Best GFLOP/s of square matmuls in `dtype` on this machine, now (the denominator of the peak fraction).
    Larger sizes are skipped once one size took over `budget_s`: an emulated dtype (bf16 on a CPU without native
    bf16, ~1 GFLOP/s) would otherwise take minutes on the 3072 size alone."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        seconds = time.perf_counter() - t0
        best = max(best, 2 * n**3 * repeats / seconds / 1e9)
        if seconds > budget_s:
            break
    return best


@dataclass(frozen=True)
class Shape:
    """The matmul sizes of a Llama-style decoder (from its HF config)."""
    layers: int
    d: int
    per_layer: int  # matmul weights of one decoder layer (attention projections + MLP)
    head: int  # the output head's weights (d × vocabulary)

    @classmethod
    def of(cls, config) -> Shape:
        d, kv = config.hidden_size, config.hidden_size * config.num_key_value_heads // config.num_attention_heads
        return cls(config.num_hidden_layers, d, 2 * d * d + 2 * d * kv + 3 * d * config.intermediate_size,
                   d * config.vocab_size)

    def forward(self, tokens: int, layers: int | None = None, head_tokens: int = 0) -> float:
        """One forward of `layers` decoder layers over a `tokens`-long sequence, the head on `head_tokens`."""
        n = self.layers if layers is None else layers
        return 2 * n * self.per_layer * tokens + 4 * n * self.d * tokens**2 + 2 * self.head * head_tokens


def training_flops(model_config, examples: list[dict]) -> tuple[float, float]:
    """(useful FLOPs, conventional FLOPs) of one pass of fwd+bwd over SFT `examples`.

    Useful: the output head only on tokens with a loss. Conventional (what most MFU figures use): the output head
    on every token.
    """
    s = Shape.of(model_config)
    useful = conventional = 0.0
    for e in examples:
        L, n_loss = len(e["input_ids"]), sum(e["completion_mask"])
        useful += 3 * s.forward(L, head_tokens=n_loss)
        conventional += 3 * s.forward(L, head_tokens=L)
    return useful, conventional


def ppo_update_flops(model_config, query_lengths: list[int], response_length: int, ppo_epochs: int,
                     frozen_layers: int = 0) -> dict[str, float]:
    """Useful FLOPs of one rlhflab PPO update, per phase, for episodes with these query lengths and fixed-length
    responses; policy, reference, value model and RM share one architecture. With `frozen_layers` > 0 the lower
    layers run once per rollout for the policy and the value model and every other forward runs the upper ones
    (rlhflab's reuse_frozen, with the RM being the value model's start); backward runs through the upper layers.

    generation: the prefill of each query (head on its last position), then one token at a time;
    scoring: policy and reference log-probs (head on the response), values and the RM's score;
    training: per PPO epoch, forward and backward of the policy (head on the response) and the value model.
    """
    s, T = Shape.of(model_config), response_length
    upper = s.layers - frozen_layers
    out = {"generation": 0.0, "scoring": 0.0, "training": 0.0}
    for q in query_lengths:
        L = q + T
        out["generation"] += s.forward(q, head_tokens=1) + sum(
            2 * s.layers * s.per_layer + 4 * s.layers * s.d * (q + t) + 2 * s.head for t in range(1, T))
        lower = 2 * s.forward(L, frozen_layers) if frozen_layers else 0.0  # policy's and value model's, once
        out["scoring"] += lower + 2 * s.forward(L, upper, head_tokens=T + 1) + 2 * s.forward(L, upper)
        out["training"] += ppo_epochs * 3 * (s.forward(L, upper, head_tokens=T + 1) + s.forward(L, upper))
    return out
