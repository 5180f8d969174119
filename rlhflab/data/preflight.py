"""Checks a stage runs at step 0, before any model is loaded: every data file its config names opens and its first
rows parse. A bad file then costs seconds, not the 20 minutes of training that used to come before the step that
read it; the error names the config key, the file and the line (`data.comparisons=x.jsonl line 3: bad JSON`).

Only local files are checked (a hub dataset is fetched by the loader itself). Standard library and `data` only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rlhflab.data import schema
from rlhflab.data.jsonl import DataError, scan_jsonl
from rlhflab.data.loaders import labels_kind, load_best_of_n, load_comparisons, load_posts, load_samples, looks_local

FIRST_ROWS = 50  # rows parsed of every file: enough to catch a wrong format or a broken export early

Check = tuple[str, Any, Callable[[str], Any]]  # (config key, its value, a loader taking the path)


def posts_check(key: str, source: str | None, fmt: str = "auto") -> Check:
    return key, source, lambda s: load_posts(s, format=fmt, limit=FIRST_ROWS)


def labels_check(key: str, source: str | None) -> Check:
    """Comparisons or best-of-N labels, whichever the file's first row is."""
    def load(s: str) -> Any:
        if labels_kind(s) == "best_of_n":
            return load_best_of_n(s, limit=FIRST_ROWS)
        return load_comparisons(s, limit=FIRST_ROWS)
    return key, source, load


def samples_check(key: str, source: str | None) -> Check:
    """A samples file, or a run directory holding one (`samples.jsonl`)."""
    def load(s: str) -> Any:
        path = Path(s).expanduser()
        return load_samples(path / "samples.jsonl" if path.is_dir() else path, limit=FIRST_ROWS)
    return key, source, load


def rows_check(key: str, source: str | None, parse: Callable[[schema.Row], Any]) -> Check:
    """Any JSONL whose rows `parse` takes (a FieldError names the field)."""
    def load(s: str) -> None:
        for i, (line, row) in enumerate(scan_jsonl(s)):
            if isinstance(row, DataError):
                raise row
            try:
                parse(row)
            except schema.FieldError as err:
                raise DataError(s, line, err.field, err.problem) from None
            if i + 1 >= FIRST_ROWS:
                return
    return key, source, load


def check_files(checks: Iterable[Check]) -> None:
    """Run every check whose value is a local path (None: the setting is off); the first failure raises a
    DataError whose file names the key: `key=path line N, field 'f': problem`."""
    for key, source, load in checks:
        if source is None or not looks_local(str(source)) and not Path(str(source)).exists():
            continue
        if not Path(str(source)).expanduser().exists():
            raise DataError(f"{key}={source}", problem="no such file")
        try:
            load(str(source))
        except DataError as err:
            raise DataError(f"{key}={err.file}", err.line, err.field, err.problem, err.unit) from None


def check_paths(specs: Iterable[tuple[str, Any]]) -> None:
    """Model and run specs that look like paths (not an embedded name or a hub id) must exist: a typo is reported
    before the run directory is written (a corrected command would otherwise be refused as another config)."""
    for key, spec in specs:
        if spec and looks_local(str(spec)) and not Path(str(spec)).expanduser().exists():
            raise DataError(f"{key}={spec}", problem="no such file or directory")


__all__ = ["FIRST_ROWS", "check_files", "check_paths", "labels_check", "posts_check", "rows_check", "samples_check"]
