"""Resumable JSONL outputs: what lets an interrupted stage resume where it stopped and write the same bytes.

`rlhflab sample`, `rlhflab best-of-n` and `rlhflab eval`'s caches append their rows batch by batch. On resume

1. `read_rows` reads the rows back and drops a torn last line (rewriting the file atomically, so the next append
   starts on a clean line);
2. the work is cut into the same fixed batches as an uninterrupted run (`pending_batches`): a batch is a slice
   of the full, fixed order of items and is seeded from its position in that order, never from how much was
   already done, so sampling a batch again gives the rows an uninterrupted run gave;
3. a batch that was only partly written is sampled again whole and only its missing rows are appended
   (`ResumableRows.add`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from rlhflab.core.appendlog import read_complete
from rlhflab.core.rundir import atomic_write_text

SEED_STRIDE = 1_000_003  # a batch's seed is seed * SEED_STRIDE + the index of its first item (+ a stream offset)

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The complete rows of an append-only JSONL file; a torn last line is removed from the file (atomically)."""
    complete = read_complete(path)
    if complete.torn:
        atomic_write_text(path, complete.text)
    return complete.rows


def dumps_rows(rows: Iterable[dict[str, Any]], ascii_only: bool) -> str:
    return "".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in rows)


def append_rows(path: Path, rows: Iterable[dict[str, Any]], ascii_only: bool = False) -> None:
    """Append one JSON object a line (`ascii_only`: non-ASCII characters escaped, as the samples files have it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dumps_rows(rows, ascii_only)
    if data:
        with open(path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()


@dataclass(frozen=True)
class Batch(Generic[T]):
    """One fixed slice of a stage's work: `items` = the full order's items[start : start + batch_size]."""

    start: int
    items: list[T]

    def seed(self, seed: int, stream: int = 0) -> int:
        """The batch's sampling seed: from its position only (`stream` keeps two uses of one batch apart)."""
        return seed * SEED_STRIDE + self.start + stream


def pending_batches(items: Sequence[T], batch_size: int, is_done: Callable[[T], bool]) -> list[Batch[T]]:
    """The fixed batches of `items` (in order) that hold at least one item not done yet."""
    batches = [Batch(start, list(items[start : start + batch_size])) for start in range(0, len(items), batch_size)]
    return [b for b in batches if not all(is_done(item) for item in b.items)]


class ResumableRows(Generic[K]):
    """The rows of one append-only JSONL output, by key (e.g. post id), as far as they were written."""

    def __init__(self, path: Path, key: Callable[[dict[str, Any]], K], ascii_only: bool = False):
        self.path, self.key, self.ascii_only = path, key, ascii_only
        self.rows: dict[K, dict[str, Any]] = {}
        self.repeated: K | None = None  # the first key written twice, if any (a corrupt output)
        for row in read_rows(path):
            if self.repeated is None and key(row) in self.rows:
                self.repeated = key(row)
            self.rows[key(row)] = row

    def __contains__(self, key: object) -> bool:
        return key in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append the rows whose key was not written before this call; returns them."""
        fresh = [r for r in rows if self.key(r) not in self.rows]
        append_rows(self.path, fresh, self.ascii_only)
        self.rows.update((self.key(r), r) for r in fresh)
        return fresh
