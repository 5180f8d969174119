"""Resumable JSONL outputs: the torn last line, the fixed batches and their seeds, rows written once."""

from __future__ import annotations

from rlhflab.core.appendlog import read_complete
from rlhflab.data.resumable import SEED_STRIDE, ResumableRows, append_rows, pending_batches, read_rows


def test_a_torn_last_line_is_dropped_from_the_rows_and_the_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3, "b')
    complete = read_complete(path)
    assert complete.rows == [{"a": 1}, {"a": 2}] and complete.torn
    assert path.read_text().endswith('"b')  # reading alone never changes the file
    assert read_rows(path) == [{"a": 1}, {"a": 2}]
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'  # the next append starts on a clean line
    assert read_rows(tmp_path / "missing.jsonl") == [] and not read_complete(tmp_path / "missing.jsonl").torn


def test_pending_batches_are_the_fixed_slices_seeded_by_position():
    items = list(range(10))
    done = {0, 1, 2, 3, 4, 9}
    batches = pending_batches(items, 4, lambda i: i in done)
    assert [(b.start, b.items) for b in batches] == [(4, [4, 5, 6, 7]), (8, [8, 9])]
    assert batches[0].seed(2) == 2 * SEED_STRIDE + 4 and batches[0].seed(2, stream=7) == 2 * SEED_STRIDE + 11


def test_resumable_rows_write_each_key_once(tmp_path):
    path = tmp_path / "out" / "rows.jsonl"
    append_rows(path, [{"id": "a", "text": "é"}])
    rows = ResumableRows(path, key=lambda r: r["id"], ascii_only=True)
    assert "a" in rows and len(rows) == 1 and rows.repeated is None
    assert rows.add([{"id": "a", "text": "again"}, {"id": "b", "text": "é"}]) == [{"id": "b", "text": "é"}]
    assert path.read_text(encoding="utf-8") == '{"id": "a", "text": "é"}\n{"id": "b", "text": "\\u00e9"}\n'
    append_rows(path, [{"id": "b"}])
    assert ResumableRows(path, key=lambda r: r["id"]).repeated == "b"
