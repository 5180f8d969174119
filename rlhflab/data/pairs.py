"""Which summaries of a post become comparison tasks: the pairing rules of the pipeline and the labelling app.

Both start from the same grouping (a post's samples, by policy, in the order they came) and differ in what a
comparison is for:

- `pairs_in_order`: the pipeline's rounds, where every summary comes from the current policy (the paper's
  batches of pairs from one policy); its samples side by side in index order, (0,1), (2,3), ..., leaving out
  pairs nobody can judge.
- `policy_pairs`: the labelling app's `--samples` tasks, which compare policies: two different policies drawn at
  random (seeded), one sample of each, never the same two samples twice. One policy alone gives no pairs.

Standard library and `data.records` only: the pipeline and the labelling app both import it (neither may import
the other).
"""

from __future__ import annotations

import random
from collections import defaultdict

from rlhflab.data.records import Sample

SamplePair = tuple[Sample, Sample]


def samples_by_post(samples: list[Sample], policies: list[str] | None = None) -> dict[str, dict[str, list[Sample]]]:
    """post id -> policy -> its samples, posts and samples in the order they came (only `policies`' if given)."""
    by_post: dict[str, dict[str, list[Sample]]] = defaultdict(lambda: defaultdict(list))
    for smp in samples:
        if policies and smp.policy not in policies:
            continue
        by_post[smp.post_id][smp.policy].append(smp)
    return by_post


def judgeable(a: Sample, b: Sample) -> bool:
    """A pair someone can choose from: two different texts (once stripped), neither empty, neither holding a NUL
    character (the labelling app's databases cannot store it)."""
    return a.text.strip() != b.text.strip() and _usable(a.text) and _usable(b.text)


def _usable(text: str) -> bool:
    return bool(text.strip()) and "\x00" not in text


def pairs_in_order(by_policy: dict[str, list[Sample]], pairs_per_post: int) -> list[SamplePair]:
    """One post's samples sorted by (policy, index) and paired (0,1), (2,3), ...: the first `pairs_per_post`
    pairs that are `judgeable`."""
    group = sorted((s for smps in by_policy.values() for s in smps), key=lambda s: (s.policy, s.index))
    out: list[SamplePair] = []
    for a, b in zip(group[0::2], group[1::2]):
        if len(out) == pairs_per_post:
            break
        if judgeable(a, b):
            out.append((a, b))
    return out


def policy_pairs(by_policy: dict[str, list[Sample]], pairs_per_post: int, rng: random.Random) -> list[SamplePair]:
    """Up to `pairs_per_post` pairs of one post's samples from two different policies: for each pair of
    policies, its sample pairs in random order; the pairs of policies in random order, taken round-robin (so
    every pair of policies gets its turn before any gets a second one)."""
    names = sorted(by_policy)
    pools = []
    for i, pa in enumerate(names):
        for pb in names[i + 1:]:
            pool = [(sa, sb) for sa in by_policy[pa] for sb in by_policy[pb]]
            rng.shuffle(pool)
            pools.append(pool)
    rng.shuffle(pools)
    out: list[SamplePair] = []
    while len(out) < pairs_per_post and any(pools):
        for pool in pools:
            if pool and len(out) < pairs_per_post:
                out.append(pool.pop())
    return out


def best_of_n_tasks(samples: list[Sample], n: int) -> list[dict]:
    """Best-of-N task rows ({"id", "query", "samples"}: the labelling app's and simulate-labels' format) from each
    post's samples in (policy, index) order, in groups of n; a group with an unusable text (empty, NUL) is left
    out. Each sample must carry its formatted query in `extra["query"]` (`rlhflab sample write_query=true`)."""
    if n < 2:
        raise ValueError(f"best-of-N tasks need n >= 2 samples, got {n}")
    rows = []
    for post_id, by_policy in samples_by_post(samples).items():
        group = sorted((s for smps in by_policy.values() for s in smps), key=lambda s: (s.policy, s.index))
        for start in range(0, len(group) - n + 1, n):
            chunk = group[start : start + n]
            if "query" not in chunk[0].extra:
                raise ValueError(f"sample of post {post_id} has no extra.query: sample with write_query=true")
            if all(_usable(s.text) for s in chunk):
                rows.append({"id": post_id, "query": chunk[0].extra["query"],
                             "samples": [{"text": s.text, "policy": s.policy, "eos": s.eos} for s in chunk]})
    return rows
