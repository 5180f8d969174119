"""Append-only JSONL caches inside an eval run directory: what an interrupted `rlhflab eval` keeps.

Rows are appended a batch at a time (`rlhflab.data.resumable`). A run killed mid-write leaves at most one torn
last line; `read_rows` drops it (and rewrites the file without it, atomically), so the next append starts on a
clean line and nothing already computed is computed again. The run directory's config check (`RunDir.start`)
guarantees that a resumed eval has the same settings, so cached rows are always valid for it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from rlhflab.data.resumable import append_rows, read_rows


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
