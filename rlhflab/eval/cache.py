"""Append-only JSONL caches inside an eval run directory: what an interrupted `rlhflab eval` keeps.

Rows are appended a batch at a time. A run killed mid-write leaves at most one torn last line; `read_rows` drops
it (and rewrites the file without it, atomically), so the next append starts on a clean line and nothing already
computed is computed again. The run directory's config check (`RunDir.start`) guarantees that a resumed eval has
the same settings, so cached rows are always valid for it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlhflab.core.rundir import atomic_write_text


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file up to the first line that does not parse (a torn last line), which is removed."""
    if not path.exists():
        return []
    text = path.read_text()
    rows, good = [], []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(row, dict):
            break
        rows.append(row)
        good.append(line)
    clean = "".join(line + "\n" for line in good)
    if clean != text:
        atomic_write_text(path, clean)
    return rows


def append_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if data:
        with open(path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()


def slug(text: str, max_len: int = 48) -> str:
    """A file-name-safe, readable, unique name: the text's safe characters plus a short hash of the whole."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[-max_len:] or "x"
    return f"{safe}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def text_key(*parts: Any) -> str:
    """A stable key for a tuple of strings/numbers/bools (posts and summaries can hold any character)."""
    return hashlib.sha1(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


class KeyedCache:
    """key -> value rows {"key": ..., "value": ...} in one append-only JSONL file."""

    def __init__(self, path: Path):
        self.path = path
        self.values: dict[str, Any] = {r["key"]: r["value"] for r in read_rows(path) if "key" in r}

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def add(self, items: dict[str, Any]) -> None:
        new = {k: v for k, v in items.items() if k not in self.values}
        append_rows(self.path, ({"key": k, "value": v} for k, v in new.items()))
        self.values.update(new)
