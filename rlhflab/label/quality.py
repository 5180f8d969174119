"""Agreement statistics: pure functions over plain labels, and per-labeler summaries for the dashboard.

- agreement rate: the fraction of pairs that agree;
- Cohen's kappa (two raters, same items): (p_o − p_e) / (1 − p_e), p_e = Σ_c p₁(c)·p₂(c);
- Fleiss' kappa (many raters, items with ≥ 2 ratings, counts may differ per item):
  P_i = (Σ_j n_ij² − n_i) / (n_i(n_i − 1)), P̄ = mean P_i, p_j = Σ_i n_ij / Σ_i n_i, P_e = Σ_j p_j²,
  κ = (P̄ − P_e) / (1 − P_e).
Kappa is None where it is undefined (no items, or chance agreement of 1).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field


def agreement_rate(pairs: Sequence[tuple[Hashable, Hashable]]) -> float | None:
    if not pairs:
        return None
    return sum(a == b for a, b in pairs) / len(pairs)


def cohen_kappa(pairs: Sequence[tuple[Hashable, Hashable]]) -> float | None:
    n = len(pairs)
    if n == 0:
        return None
    p_o = sum(a == b for a, b in pairs) / n
    first = Counter(a for a, _ in pairs)
    second = Counter(b for _, b in pairs)
    p_e = sum(first[c] * second[c] for c in set(first) | set(second)) / (n * n)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1.0 - p_e)


def fleiss_kappa(items: Sequence[Sequence[Hashable]]) -> float | None:
    """`items`: for each item, the labels it got (one per rater). Items with fewer than 2 labels are ignored."""
    items = [list(labels) for labels in items if len(labels) >= 2]
    if not items:
        return None
    totals: Counter = Counter()
    p_items = []
    n_all = 0
    for labels in items:
        counts = Counter(labels)
        n_i = len(labels)
        p_items.append((sum(c * c for c in counts.values()) - n_i) / (n_i * (n_i - 1)))
        totals.update(counts)
        n_all += n_i
    p_bar = sum(p_items) / len(p_items)
    p_e = sum((c / n_all) ** 2 for c in totals.values())
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1.0 - p_e)


@dataclass(frozen=True)
class Label:
    """One comparison answer as the statistics see it."""

    user: str
    task_id: int
    choice: int
    time_ms: int
    created_s: float  # seconds since the epoch
    gold: int | None = None  # the researcher's choice, for gold tasks


@dataclass
class LabelerStats:
    user: str
    answers: int = 0
    gold_answers: int = 0
    gold_agreement: float | None = None
    gold_kappa: float | None = None
    peer_pairs: int = 0
    peer_agreement: float | None = None
    peer_kappa: float | None = None
    median_time_s: float | None = None
    per_hour: float | None = None
    flags: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return bool(self.flags)


def labeler_stats(labels: Sequence[Label], threshold: float, min_answers: int) -> list[LabelerStats]:
    """Per labeler: agreement and Cohen's kappa with the researchers (on gold tasks) and with the other labelers
    (on the regular tasks they shared: every (mine, theirs) pair of answers), median time per task, throughput; flagged when an agreement with ≥ `min_answers` items is below
    `threshold`."""
    by_task: dict[int, list[Label]] = defaultdict(list)
    by_user: dict[str, list[Label]] = defaultdict(list)
    for lab in labels:
        by_task[lab.task_id].append(lab)
        by_user[lab.user].append(lab)
    out = []
    for user in sorted(by_user):
        mine = by_user[user]
        st = LabelerStats(user=user, answers=len(mine))
        gold_pairs = [(lab.choice, lab.gold) for lab in mine if lab.gold is not None]
        st.gold_answers = len(gold_pairs)
        st.gold_agreement = agreement_rate(gold_pairs)
        st.gold_kappa = cohen_kappa(gold_pairs)
        peer_pairs = [(lab.choice, other.choice) for lab in mine if lab.gold is None
                      for other in by_task[lab.task_id] if other.user != user]
        st.peer_pairs = len(peer_pairs)
        st.peer_agreement = agreement_rate(peer_pairs)
        st.peer_kappa = cohen_kappa(peer_pairs)
        st.median_time_s = statistics.median(lab.time_ms for lab in mine) / 1000.0
        st.per_hour = throughput_per_hour([lab.created_s for lab in mine], [lab.time_ms for lab in mine])
        if st.gold_answers >= min_answers and st.gold_agreement is not None and st.gold_agreement < threshold:
            st.flags.append(f"gold agreement {st.gold_agreement:.0%} < {threshold:.0%}")
        if st.peer_pairs >= min_answers and st.peer_agreement is not None and st.peer_agreement < threshold:
            st.flags.append(f"peer agreement {st.peer_agreement:.0%} < {threshold:.0%}")
        out.append(st)
    return out


def throughput_per_hour(created_s: Sequence[float], time_ms: Sequence[int]) -> float | None:
    """Answers per hour of work: the count over the time from first to last answer, but never over less than
    the time the answers themselves took (so a burst of answers does not look like thousands an hour)."""
    if not created_s:
        return None
    span_s = max(max(created_s) - min(created_s), sum(time_ms) / 1000.0)
    return len(created_s) / span_s * 3600.0 if span_s > 0 else None


def project_fleiss(labels: Sequence[Label]) -> tuple[float | None, int]:
    """Fleiss' kappa across labelers on the tasks that at least two of them answered, and how many such tasks."""
    by_task: dict[int, list[int]] = defaultdict(list)
    for lab in labels:
        by_task[lab.task_id].append(lab.choice)
    shared = [choices for choices in by_task.values() if len(choices) >= 2]
    return fleiss_kappa(shared), len(shared)
