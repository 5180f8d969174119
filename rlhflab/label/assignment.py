"""Which task a labeler gets next. Pure: the database layer gathers the candidates and calls `pick_task`.

Rules (the paper's protocol): each regular task is answered by `k` different labelers; gold tasks (with a
researcher's answer) are mixed in at `gold_rate` and may be answered by everyone; nobody sees a task twice;
an assignment that is not answered in time frees its slot. Among regular tasks we fill the ones that already
have labels first (so tasks reach k and become comparable for agreement), then the oldest.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    task_id: int
    is_gold: bool
    taken: int  # answered + open (unexpired) assignments by anyone
    seen: bool  # this labeler already has (or had) an assignment for it


def pick_task(candidates: list[Candidate], k: int, gold_rate: float, rng: random.Random) -> int | None:
    """The id of the task to assign, or None when this labeler has nothing left to do."""
    regular = [c for c in candidates if not c.is_gold and not c.seen and c.taken < k]
    gold = [c for c in candidates if c.is_gold and not c.seen]
    use_gold = bool(gold) and (not regular or rng.random() < gold_rate)
    if use_gold:
        return rng.choice(gold).task_id
    if not regular:
        return None
    best = max(regular, key=lambda c: (c.taken, -c.task_id))
    return best.task_id


def assignable(candidates: list[Candidate], k: int) -> int:
    """How many tasks `pick_task` could still give this labeler (regular ones with a free slot, unseen gold)."""
    return sum(1 for c in candidates if not c.seen and (c.is_gold or c.taken < k))


def left_right(rng: random.Random) -> bool:
    """Whether to show summary B on the left (True) — a fair coin, recorded with the assignment."""
    return rng.random() < 0.5


def to_canonical(side: str, confidence: int | None, swapped: bool) -> tuple[int, int | None]:
    """What the labeler picked on screen ("left"/"right", confidence low = left) -> (choice, confidence) in
    task order (0 = summary A, confidence low = A)."""
    shown = 0 if side == "left" else 1
    if not swapped:
        return shown, confidence
    return 1 - shown, None if confidence is None else 10 - confidence


def to_display(choice: int, confidence: int | None, swapped: bool) -> tuple[int, int | None]:
    """Task order -> screen order (index 0 = left). The inverse of `to_canonical` (as indices)."""
    if not swapped:
        return choice, confidence
    return 1 - choice, None if confidence is None else 10 - confidence
