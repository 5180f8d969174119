"""JSON Lines files (plain or gzip) and the one error type for bad data.

Every stage hands data over as JSONL, and users bring data we have never seen, so a bad row must say exactly
where it is (file, line, field) without echoing its text: posts are unmoderated and must not reach the logs.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from rlhflab.core.rundir import atomic_path


class DataError(ValueError):
    """A malformed or unreadable data row, named by file, line (1-based) and field.

    `str(err)` reads like ``data/x.jsonl.gz line 17, field 'post': empty string``. `unit` is "line" for files
    and "row" for hub datasets (which have no lines). The message never contains the offending value.
    """

    def __init__(self, file: str | Path, line: int | None = None, field: str | None = None,
                 problem: str = "malformed row", unit: str = "line"):
        self.file, self.line, self.field, self.problem, self.unit = str(file), line, field, problem, unit
        super().__init__(self._message())

    def _message(self) -> str:
        where = self.file if self.line is None else f"{self.file} {self.unit} {self.line}"
        if self.field is not None:
            where += f", field '{self.field}'"
        return f"{where}: {self.problem}"

    def __reduce__(self):  # keep the attributes across pickling (multiprocessing data workers)
        return type(self), (self.file, self.line, self.field, self.problem, self.unit)


def is_gzip(path: str | Path) -> bool:
    return str(path).endswith(".gz")


def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")  # type: ignore[return-value]


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line of a .jsonl or .jsonl.gz file.

    The first bad line (bad UTF-8, bad JSON, not an object, truncated gzip) raises DataError naming file and
    line. A missing file raises FileNotFoundError (an OSError, not a data problem).
    """
    for n, item in scan_jsonl(path):
        if isinstance(item, DataError):
            raise item
        yield n, item


def scan_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """Like `read_jsonl`, but a bad line is yielded as a DataError and reading goes on (for `skip_bad`).

    Lines are decoded one at a time so each problem is reported with its line number instead of failing
    somewhere inside a whole-file decode. A broken gzip stream cannot be read past: it ends the scan.
    """
    path = Path(path)
    with _open_binary(path) as f:
        n = 0
        lines = iter(f)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
                yield n + 1, DataError(path, n + 1, None, f"unreadable compressed data ({type(e).__name__})")
                return
            n += 1
            if raw.strip():
                yield n, _parse_line(path, n, raw)


def _parse_line(path: Path, n: int, raw: bytes) -> dict[str, Any] | DataError:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return DataError(path, n, None, f"not UTF-8 (byte {e.start})")
    except json.JSONDecodeError as e:
        return DataError(path, n, None, f"bad JSON: {e.msg} at column {e.colno}")
    if not isinstance(obj, dict):
        return DataError(path, n, None, f"expected a JSON object, got {json_type(obj)}")
    return obj


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object a line, atomically (readers never see half a file); gzip if the name ends in .gz.

    Returns the number of rows written. gzip output has mtime 0 so the same rows give the same bytes.
    """
    n = 0
    with atomic_path(path) as tmp:
        raw = open(tmp, "wb")
        f = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if is_gzip(path) else raw
        try:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
                n += 1
        finally:
            f.close()
            raw.close()
    return n


def json_type(value: Any) -> str:
    """The JSON name of a Python value's type, for error messages that must not show the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)
