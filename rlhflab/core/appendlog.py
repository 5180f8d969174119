"""Append-only JSONL logs: the rows a killed writer leaves readable.

A process killed while appending leaves at most one torn last line. Everything that reads such a file back
(a run's metrics.jsonl, a stage's resumable outputs in `rlhflab.data.resumable`) reads it with `read_complete`:
the rows up to the first line that is not a JSON object. It lives in `core` because `RunDir` reads its metrics
with it and `core` sits below `data`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CompleteRows:
    rows: list[dict[str, Any]]  # the objects of the complete lines, in order
    text: str  # those lines, each ending in "\n": the file as it should be for the next append
    torn: bool  # the file holds more than `text` (a torn last line, blank lines or a missing final newline)


def read_complete(path: Path) -> CompleteRows:
    """The rows of a JSONL file up to its first line that is not a JSON object; blank lines are skipped. Reads
    only: repairing the file is the writer's business (`rlhflab.data.resumable.read_rows`)."""
    if not path.exists():
        return CompleteRows([], "", False)
    text = path.read_text()
    rows, good = [], []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(row, dict):
            break
        rows.append(row)
        good.append(line)
    clean = "".join(line + "\n" for line in good)
    return CompleteRows(rows, clean, clean != text)
