"""JSONL I/O: line numbers in errors, gzip, atomic writes."""

from __future__ import annotations

import gzip
import pickle

import pytest

from rlhflab.data.jsonl import DataError, read_jsonl, scan_jsonl, write_jsonl


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.jsonl.gz"])
def test_round_trip_plain_and_gzip(tmp_path, name):
    rows = [{"a": 1, "text": "héllo\nworld"}, {"b": [1, 2], "c": None}]
    path = tmp_path / name
    assert write_jsonl(path, rows) == 2
    assert [obj for _, obj in read_jsonl(path)] == rows
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")


def test_gzip_output_is_deterministic(tmp_path):
    write_jsonl(tmp_path / "a.jsonl.gz", [{"x": 1}])
    write_jsonl(tmp_path / "b.jsonl.gz", [{"x": 1}])
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n')
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (4, {"a": 2})]


@pytest.mark.parametrize("line, problem", [
    ('{"a": 1', "bad JSON"),
    ("[1, 2]", "expected a JSON object, got array"),
    ('"just a string"', "expected a JSON object, got string"),
])
def test_bad_line_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "x.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write('{"ok": 1}\n\n' + line + "\n")
    with pytest.raises(DataError) as info:
        list(read_jsonl(path))
    err = info.value
    assert (err.file, err.line, err.field) == (str(path), 3, None)
    assert str(err).startswith(f"{path} line 3: ") and problem in str(err)


def test_bad_utf8_is_a_data_error(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(DataError, match="line 2: not UTF-8"):
        list(read_jsonl(path))


def test_truncated_gzip_is_a_data_error(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    write_jsonl(path, [{"i": i, "pad": "x" * 200} for i in range(200)])
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="unreadable compressed data"):
        list(read_jsonl(path))


def test_scan_goes_on_after_a_bad_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\nnope\n{"a": 3}\n')
    items = list(scan_jsonl(path))
    assert [n for n, _ in items] == [1, 2, 3]
    assert isinstance(items[1][1], DataError) and items[2][1] == {"a": 3}


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(read_jsonl(tmp_path / "absent.jsonl"))


def test_write_is_atomic(tmp_path):
    path = tmp_path / "x.jsonl"
    write_jsonl(path, [{"old": True}])

    def rows():
        yield {"new": 1}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())
    assert [obj for _, obj in read_jsonl(path)] == [{"old": True}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]


def test_data_error_message_and_pickle():
    err = DataError("data/x.jsonl.gz", 17, "post", "empty string")
    assert str(err) == "data/x.jsonl.gz line 17, field 'post': empty string"
    assert isinstance(err, ValueError)
    back = pickle.loads(pickle.dumps(err))
    assert (back.file, back.line, back.field, str(back)) == (err.file, 17, "post", str(err))
    assert str(DataError("f.jsonl", problem="no such file")) == "f.jsonl: no such file"
    assert str(DataError("f.jsonl", 2)) == "f.jsonl line 2: malformed row"
