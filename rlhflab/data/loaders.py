"""Loaders for posts (TL;DR, CNN/DM, our own), human comparisons and samples — from local files or the hub.

Every loader takes `source`: a local file (.jsonl, .jsonl.gz, or a .json array) or, when no such file exists
and the name does not look like a path, a Hugging Face hub dataset name. Machines without a network are the
common case here, so a hub failure says so and asks for a local path instead of a stack of HTTP errors.

Bad rows raise `DataError` (file, line, field) at once; with `skip_bad=True` they are skipped, counted in the
result's `.skipped` and `.errors`, and one WARNING gives the count. Post text never appears in a message.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from rlhflab.data import schema
from rlhflab.data.jsonl import DataError, json_type, scan_jsonl, write_jsonl
from rlhflab.data.records import BestOfN, Comparison, Post, Sample

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_KEPT_ERRORS = 100  # `.errors` keeps the first ones; `.skipped` counts them all
COMPARISONS_HUB = "openai/summarize_from_feedback"
TLDR_HUB = "vwxyzjn/summarize_from_feedback_tldr_3_filtered"
CNNDM_HUB = "abisee/cnn_dailymail"
_LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".gz")

RowSource = Iterator[tuple[int, "dict[str, Any] | DataError"]]


class LoadResult(list, Generic[T]):  # type: ignore[type-arg]
    """The loaded records (a plain list in every other respect) plus what `skip_bad` left out.

    `skipped`: how many rows were bad; `errors`: the first `MAX_KEPT_ERRORS` of their DataErrors.
    """

    def __init__(self, records: Iterable[T] = (), skipped: int = 0, errors: list[DataError] | None = None):
        super().__init__(records)
        self.skipped = skipped
        self.errors: list[DataError] = errors if errors is not None else []


# ---------------------------------------------------------------------------------------------- public loaders

def load_tldr(source: str | Path, split: str = "train", *, config: str | None = None, limit: int | None = None,
              skip_bad: bool = False) -> LoadResult[Post]:
    """OpenAI's filtered TL;DR rows {"id","subreddit","title","post","summary"} -> Post(source="tldr")."""
    return _load(source, schema.tldr_post, split=split, config=config, limit=limit, skip_bad=skip_bad)


def load_cnndm(source: str | Path, split: str = "validation", *, config: str | None = None,
               limit: int | None = None, skip_bad: bool = False) -> LoadResult[Post]:
    """CNN/DailyMail rows {"id","article","highlights"} -> Post(source="cnndm"). Hub config defaults to 3.0.0."""
    if config is None and str(source).endswith("cnn_dailymail"):
        config = "3.0.0"
    return _load(source, schema.cnndm_post, split=split, config=config, limit=limit, skip_bad=skip_bad)


def load_posts(source: str | Path, format: str = "auto", split: str | None = None, *, config: str | None = None,
               limit: int | None = None, skip_bad: bool = False) -> LoadResult[Post]:
    """Posts in any known format: "tldr", "cnndm", "posts" (our `Post.to_dict()` JSONL), "books" (passages to
    continue; "books-train" / "books-heldout": without / only the books in `schema.HELDOUT_BOOKS`) or "auto".

    "auto" decides from the keys of the first JSON object (article -> cnndm, post -> tldr, book + text -> books,
    text -> posts) and
    then holds every row to that format, so a file that mixes formats is reported, not silently half-read.
    On the hub, `split` defaults to "validation" for cnndm and "train" otherwise.
    """
    if format == "auto":
        parse = _auto_post_parser()
    elif format in schema.POST_PARSERS:
        parse = schema.POST_PARSERS[format]
    else:
        raise ValueError(f"unknown post format {format!r}; use auto, {', '.join(schema.POST_PARSERS)}")
    if split is None:
        split = "validation" if format == "cnndm" else "train"
    return _load(source, parse, split=split, config=config, limit=limit, skip_bad=skip_bad)


def load_comparisons(source: str | Path, split: str | None = None, *, config: str | None = None,
                     limit: int | None = None, skip_bad: bool = False) -> LoadResult[Comparison]:
    """Human comparisons in OpenAI's schema (TL;DR or CNN/DM `info`), or plain {post|query, chosen, rejected}.

    `split` is the hub split (default "train"; the hub config defaults to "comparisons" for OpenAI's
    dataset). A local file is one split already, so `split` does not filter it: the rows' own `split`
    field (valid1, valid2, ...) is kept in `Comparison.split` for callers that want it.
    """
    if config is None and str(source) == COMPARISONS_HUB:
        config = "comparisons"
    return _load(source, schema.comparison, split=split or "train", config=config, limit=limit,
                 skip_bad=skip_bad)


def load_postless_pairs(source: str | Path, *, limit: int | None = None, skip_bad: bool = False
                        ) -> LoadResult[Comparison]:
    """Comparisons without their posts ({"id", "chosen", "rejected", ...}): their query is `POSTLESS_QUERY`
    (the TL;DR template left empty) and their post id "postless" (see `schema.postless_pair`)."""
    from rlhflab.data.format import POSTLESS_QUERY

    return _load(source, lambda row: schema.postless_pair(row, POSTLESS_QUERY), split="train", config=None,
                 limit=limit, skip_bad=skip_bad)


def load_best_of_n(source: str | Path, *, limit: int | None = None, skip_bad: bool = False) -> LoadResult[BestOfN]:
    """Best-of-N labels {"query", "samples": [...], "best"} (see `schema.best_of_n`)."""
    return _load(source, schema.best_of_n, split="train", config=None, limit=limit, skip_bad=skip_bad)


def labels_kind(source: str | Path) -> str:
    """"best_of_n" when the first row of a local labels file is a best-of-N task, else "comparisons"."""
    path = Path(source).expanduser()
    if not path.is_file() or path.name.endswith((".json", ".json.gz")):
        return "comparisons"
    for _, row in scan_jsonl(path):
        return "best_of_n" if not isinstance(row, DataError) and schema.is_best_of_n_row(row) else "comparisons"
    return "comparisons"


def load_samples(source: str | Path, *, limit: int | None = None, skip_bad: bool = False) -> LoadResult[Sample]:
    """A samples JSONL written by `write_samples` (one `Sample.to_dict()` a line)."""
    return _load(source, schema.sample, split="train", config=None, limit=limit, skip_bad=skip_bad)


# ---------------------------------------------------------------------------------------------- writers

def write_comparisons(path: str | Path, comparisons: Iterable[Comparison]) -> int:
    """Write OpenAI's comparison schema (what `load_comparisons` reads back unchanged). Returns the row count."""
    return write_jsonl(path, (schema.comparison_to_row(c) for c in comparisons))


def write_best_of_n(path: str | Path, labels: Iterable[BestOfN]) -> int:
    return write_jsonl(path, (schema.best_of_n_to_row(b) for b in labels))


def write_samples(path: str | Path, samples: Iterable[Sample]) -> int:
    return write_jsonl(path, (s.to_dict() for s in samples))


def write_posts(path: str | Path, posts: Iterable[Post]) -> int:
    """Write the "posts" format (`Post.to_dict()` a line), which `load_posts` detects by itself."""
    return write_jsonl(path, (p.to_dict() for p in posts))


# ---------------------------------------------------------------------------------------------- machinery

def _load(source: str | Path, parse: Callable[[schema.Row], T | None], *, split: str, config: str | None,
          limit: int | None, skip_bad: bool) -> LoadResult[T]:
    """Parse each row of `source`; stop after `limit` good records; raise at or skip (and count) bad rows."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    name, unit, rows = _open_source(source, split=split, config=config)
    out: LoadResult[T] = LoadResult()
    if limit == 0:
        return out
    for line, row in rows:
        try:
            if isinstance(row, DataError):
                raise row
            record = parse(row)
            if record is not None:  # a parser may leave a row out on purpose (e.g. a held-out book)
                out.append(record)
        except schema.FieldError as e:
            err = DataError(name, line, e.field, e.problem, unit)
            if not skip_bad:
                raise err from None
            _note_skip(out, err)
        except DataError as err:
            if not skip_bad:
                raise
            _note_skip(out, err)
        if limit is not None and len(out) >= limit:
            break
    if out.skipped:
        log.warning("%s: skipped %d malformed %s(s), kept %d; first: %s", name, out.skipped, unit, len(out),
                    out.errors[0])
    return out


def _note_skip(out: LoadResult[Any], err: DataError) -> None:
    out.skipped += 1
    if len(out.errors) < MAX_KEPT_ERRORS:
        out.errors.append(err)
    log.debug("skipping %s", err)


def _auto_post_parser() -> Callable[[schema.Row], Post | None]:
    chosen: list[Callable[[schema.Row], Post | None]] = []

    def parse(row: schema.Row) -> Post | None:
        if not chosen:
            fmt = schema.detect_post_format(row)
            if fmt is None:
                raise schema.FieldError(None, f"cannot tell the post format from the keys {sorted(row)[:12]}; "
                                              "pass format='tldr', 'cnndm' or 'posts'")
            chosen.append(schema.POST_PARSERS[fmt])
        return chosen[0](row)

    return parse


def _open_source(source: str | Path, *, split: str, config: str | None) -> tuple[str, str, RowSource]:
    """(display name, "line"/"item"/"row", rows) for a local file, or else a hub dataset."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.name.endswith((".json", ".json.gz")):
            return str(source), "item", _json_array_rows(path)
        return str(source), "line", scan_jsonl(path)
    if path.exists():
        raise DataError(source, problem="is a directory; pass a .jsonl, .jsonl.gz or .json file")
    if isinstance(source, Path) or looks_local(str(source)):
        raise DataError(source, problem="no such file")
    return str(source), "row", _hub_rows(str(source), config, split)


def looks_local(source: str) -> bool:
    """A name that cannot be a hub id (owner/name): it has a file suffix, or starts like a path."""
    return source.endswith(_LOCAL_SUFFIXES) or source.startswith(("/", ".", "~")) or source.count("/") > 1 \
        or os.sep != "/" and os.sep in source


def is_hub_id(spec: str) -> bool:
    """`owner/name`, and nothing that looks like a local path: a model or dataset to ask the hub for."""
    return bool(_HUB_ID.fullmatch(spec)) and not looks_local(spec)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _json_array_rows(path: Path) -> RowSource:
    """A .json file holding one array of objects; rows are numbered by item (1-based), not by line."""
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, EOFError, OSError) as e:
        raise DataError(path, problem=f"bad JSON ({type(e).__name__})") from None
    if not isinstance(data, list):
        raise DataError(path, problem=f"expected a JSON array of objects, got {json_type(data)}")
    for i, item in enumerate(data, 1):
        if isinstance(item, dict):
            yield i, item
        else:
            yield i, DataError(path, i, None, f"expected a JSON object, got {json_type(item)}", "item")


def _hub_rows(name: str, config: str | None, split: str) -> RowSource:
    """Rows of a hub dataset. `datasets` is imported here only: loading local files must stay cheap."""
    try:
        import datasets
    except ImportError:
        raise DataError(name, problem="is not a local file, and the `datasets` package (pip install "
                                      "'rlhflab[train]') is not installed to fetch it from the hub; pass a local "
                                      "path (.jsonl or .jsonl.gz)") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001 - network, auth, missing dataset: all mean "use a local file"
        detail = f"{type(e).__name__}: {e}"
        detail = detail if len(detail) <= 300 else detail[:300] + "..."
        raise DataError(name, problem=f"is not a local file, and the Hugging Face hub could not provide it "
                                      f"(config={config!r}, split={split!r}): the hub may be unreachable from "
                                      f"this machine — pass a local path (.jsonl or .jsonl.gz) instead. "
                                      f"[{detail}]") from e
    return enumerate(ds, 1)
