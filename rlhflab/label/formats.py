"""Files in and out of the labelling app: stdlib json/gzip only (the app must not import the data loaders).

Inputs (JSONL, optionally gzip-compressed; one JSON object a line):

- **samples**: `Sample.to_dict()` rows `{post_id, policy, text, n_tokens, index, eos, score, extra}`.
- **posts**: `Post.to_dict()` rows `{id, text, title, subreddit, reference, source}`, or OpenAI's TL;DR rows
  `{id, subreddit, title, post, summary}`.
- **pairs** (defined here): `{"post": {...} | "post_id": "...", "summary_a": {"text", "policy"},
  "summary_b": {"text", "policy"}, "gold": {"choice": 0|1, "confidence": 1-9} (optional), "split": "" (optional)}`
  where `post` is a posts-file row (either format); `post_id` refers to a row of a separate posts file.
  A pair without `summary_b` is a rating task for `summary_a`.
- **best-of-N tasks**: `{"id" (optional), "query", "samples": [{"text", "policy", "eos"} | "text", ...]}` with
  2–16 samples: the rows of `rlhflab.data.schema.best_of_n` without `best`. A file whose first row has "samples"
  is a best-of-N file; the same rows *with* `best` (and `worker`, `batch`, `split`, `extra`) are best-of-N labels.
- **comparisons**: OpenAI's schema (`info`, `summaries`, `choice`, `worker`, `batch`, `split`,
  `extra.confidence`), TL;DR or CNN/DM `info`.

Outputs: comparisons in OpenAI's schema (identical to /shared/data/README.md, readable by
`rlhflab.data.loaders.load_comparisons`), ratings as `{info, summary, ratings, worker, ...}` rows, and best-of-N
labels as `schema.best_of_n_to_row` rows (readable by `rlhflab.data.loaders.load_best_of_n`).
Errors name the file, line and field, never the text (posts are unmoderated).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhflab.data import schema
from rlhflab.label import sizes
from rlhflab.data.records import CONFIDENCE_MAX, CONFIDENCE_MIN, CONFIDENCE_NO_PREFERENCE, BestOfN, Choice, Post, Sample

MAX_TEXT = sizes.TEXT  # characters in one post or summary
MAX_ID = sizes.POST_KEY


class FormatError(ValueError):
    def __init__(self, where: str, line: int | None, field_name: str | None, problem: str):
        self.where, self.line, self.field, self.problem = where, line, field_name, problem
        loc = where + (f":{line}" if line is not None else "")
        super().__init__(f"{loc}: " + (f"field '{field_name}': " if field_name else "") + problem)


# ---------------------------------------------------------------------------------------------- JSONL

class TooLarge(FormatError):
    """An upload that inflates past its limit (the app answers 413)."""


def iter_jsonl_lines(lines: Iterable[str | bytes], where: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows with their line numbers, counted from 1 like every editor (and every error message here)."""
    for n, raw in enumerate(lines, 1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise FormatError(where, n, None, f"not UTF-8 (byte {err.start + 1} of the line)") from None
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as err:
            raise FormatError(where, n, None, f"not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise FormatError(where, n, None, f"expected a JSON object, got {_json_type(row)}")
        yield n, row


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """A JSONL file, gzip-compressed or not (told by its first bytes). A missing file, bytes that are not UTF-8
    and a truncated or corrupt .gz are a FormatError naming the file (and the line), never a traceback."""
    where = str(path)
    yield from iter_jsonl_lines(_binary_lines(Path(path), where), where)


def _binary_lines(path: Path, where: str) -> Iterator[bytes]:
    try:
        with open(path, "rb") as f:
            compressed = f.read(2) == b"\x1f\x8b"
        f = gzip.open(path, "rb") if compressed else open(path, "rb")
    except FileNotFoundError:
        raise FormatError(where, None, None, "no such file") from None
    except OSError as err:
        raise FormatError(where, None, None, f"cannot be read ({err.strerror or err})") from None
    n = 0
    with f:
        while True:
            try:
                line = f.readline()
            except (EOFError, OSError, zlib.error):
                raise FormatError(where, n + 1, None, "truncated or corrupt gzip data") from None
            if not line:
                return
            n += 1
            yield line


def read_jsonl_bytes(data: bytes, where: str, max_inflated: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """An uploaded file's rows. A .gz is inflated to at most `max_inflated` bytes (TooLarge past it)."""
    if data[:2] == b"\x1f\x8b":
        data = inflate(data, where, max_inflated)
    return iter_jsonl_lines(data.splitlines(), where)


def inflate(data: bytes, where: str, limit: int | None) -> bytes:
    """gzip data (every member, like `gzip.decompress`), decompressed in bounded steps so that a small upload
    cannot inflate the server's memory past `limit` bytes."""
    out = bytearray()
    rest = data
    while rest:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            while rest:
                room = -1 if limit is None else limit - len(out) + 1
                out += d.decompress(rest, max(room, 1) if limit is not None else 0)
                if limit is not None and len(out) > limit:
                    raise TooLarge(where, None, None, f"inflates to more than {limit} bytes")
                rest = d.unconsumed_tail
                if d.eof:
                    break
            if not d.eof:
                raise FormatError(where, None, None, "not a valid gzip file (truncated)")
        except zlib.error:
            raise FormatError(where, None, None, "not a valid gzip file") from None
        rest = d.unused_data.lstrip(b"\x00")  # the next member (gzip pads with NULs between some)
    return bytes(out)


def dumps_jsonl(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    for row in rows:
        yield json.dumps(row, ensure_ascii=False) + "\n"


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write atomically (temp file + rename); `.gz` paths are gzip-compressed. Returns the row count."""
    from rlhflab.core.rundir import atomic_path

    n = 0
    with atomic_path(path) as tmp:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(tmp, "wt", encoding="utf-8") as f:  # type: ignore[operator]
            for line in dumps_jsonl(rows):
                f.write(line)
                n += 1
    return n


# ---------------------------------------------------------------------------------------------- fields

def _json_type(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


class _Row:
    """Field access with errors that say where: `_Row(row, where, line).text("post")`."""

    def __init__(self, row: Any, where: str, line: int | None, prefix: str = ""):
        self.row, self.where, self.line, self.prefix = row, where, line, prefix

    def fail(self, key: str | None, problem: str) -> FormatError:
        return FormatError(self.where, self.line, (self.prefix + key) if key else (self.prefix.rstrip(".") or None),
                           problem)

    def has(self, key: str) -> bool:
        return self.row.get(key) is not None

    def string(self, key: str, *, required: bool = True, nonempty: bool = False, max_len: int = MAX_TEXT) -> str:
        value = self.row.get(key)
        if value is None:
            if required:
                raise self.fail(key, "missing")
            return ""
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {_json_type(value)}")
        if nonempty and not value.strip():
            raise self.fail(key, "empty string")
        if len(value) > max_len:
            raise self.fail(key, f"longer than {max_len} characters")
        if "\x00" in value:
            raise self.fail(key, "contains a NUL character")
        return value

    def ident(self, key: str) -> str:
        value = self.row.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return self.string(key, nonempty=True, max_len=MAX_ID)

    def integer(self, key: str, lo: int, hi: int, *, required: bool = True) -> int | None:
        value = self.row.get(key)
        if value is None:
            if required:
                raise self.fail(key, "missing")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected an integer, got {_json_type(value)}")
        if not lo <= value <= hi:
            raise self.fail(key, f"must be between {lo} and {hi}, got {value}")
        return value

    def obj(self, key: str, *, required: bool = True) -> _Row | None:
        value = self.row.get(key)
        if value is None:
            if required:
                raise self.fail(key, "missing")
            return None
        if not isinstance(value, dict):
            raise self.fail(key, f"expected an object, got {_json_type(value)}")
        return _Row(value, self.where, self.line, f"{self.prefix}{key}.")


# ---------------------------------------------------------------------------------------------- parsers

def parse_post(row: dict[str, Any], where: str = "<post>", line: int | None = None, prefix: str = "") -> Post:
    """A `Post.to_dict()` row or an OpenAI TL;DR row {id, subreddit, title, post, summary}."""
    r = _Row(row, where, line, prefix)
    if "post" in row and "text" not in row:
        return Post(id=r.ident("id"), text=r.string("post", nonempty=True), title=r.string("title", required=False),
                    subreddit=r.string("subreddit", required=False, max_len=sizes.SUBREDDIT),
                    reference=r.string("summary", required=False) or None, source="tldr")
    source = r.string("source", required=False) or "tldr"
    if source not in ("tldr", "cnndm", "query"):
        raise r.fail("source", "must be tldr, cnndm or query")
    return Post(id=r.ident("id"), text=r.string("text", nonempty=True), title=r.string("title", required=False),
                subreddit=r.string("subreddit", required=False, max_len=sizes.SUBREDDIT),
                reference=r.string("reference", required=False) or None, source=source)


def parse_sample(row: dict[str, Any], where: str = "<sample>", line: int | None = None) -> Sample:
    r = _Row(row, where, line)
    eos = row.get("eos", True)
    if not isinstance(eos, bool):
        raise r.fail("eos", f"expected a boolean, got {_json_type(eos)}")
    extra = row.get("extra") or {}
    if not isinstance(extra, dict):
        raise r.fail("extra", f"expected an object, got {_json_type(extra)}")
    return Sample(post_id=r.ident("post_id"), policy=r.string("policy", max_len=sizes.POLICY),
                  text=r.string("text", nonempty=True), n_tokens=r.integer("n_tokens", 0, 2**31) or 0,
                  index=r.integer("index", 0, 2**31, required=False) or 0, eos=eos, extra=extra)


@dataclass
class PairRow:
    """One row of a pairs file (or one task of the JSON API): a post and one or two summaries."""

    post: Post | None
    post_id: str
    summary_a: str
    policy_a: str
    summary_b: str | None = None
    policy_b: str | None = None
    gold_choice: int | None = None
    gold_confidence: int | None = None
    split: str = ""
    where: str = ""  # "file:line" or "tasks:N", for errors about this row


def parse_gold(r: _Row) -> tuple[int | None, int | None]:
    gold = r.obj("gold", required=False)
    if gold is None:
        return None, None
    choice = gold.integer("choice", 0, 1)
    confidence = gold.integer("confidence", CONFIDENCE_MIN, CONFIDENCE_MAX, required=False)
    check_confidence(choice, confidence, lambda p: gold.fail("confidence", p))  # type: ignore[arg-type]
    return choice, confidence


def check_confidence(choice: int, confidence: int | None, fail) -> None:  # noqa: ANN001
    """Confidence below 5 leans to summary 0 and above 5 to summary 1: it must agree with the choice."""
    if confidence is None or confidence == CONFIDENCE_NO_PREFERENCE:
        return
    if (confidence < CONFIDENCE_NO_PREFERENCE) != (choice == 0):
        raise fail(f"{confidence} leans to the other summary than choice {choice}")


def parse_pair(row: dict[str, Any], where: str = "<pair>", line: int | None = None) -> PairRow:
    r = _Row(row, where, line)
    post = None
    post_obj = r.obj("post", required=False)
    if post_obj is not None:
        post = parse_post(post_obj.row, where, line, "post.")
        post_id = post.id
    elif r.has("post_id"):
        post_id = r.ident("post_id")
    else:
        raise r.fail("post", "missing (give `post` as an object or `post_id` with a posts file)")
    a = r.obj("summary_a")
    b = r.obj("summary_b", required=False)
    choice, confidence = parse_gold(r)
    if b is None and choice is not None:
        raise r.fail("gold", "only comparison tasks (with summary_b) take a gold answer")
    return PairRow(post=post, post_id=post_id, summary_a=a.string("text", nonempty=True),  # type: ignore[union-attr]
                   policy_a=a.string("policy", required=False, max_len=sizes.POLICY),  # type: ignore[union-attr]
                   summary_b=b.string("text", nonempty=True) if b else None,
                   policy_b=b.string("policy", required=False, max_len=sizes.POLICY) if b else None,
                   gold_choice=choice, gold_confidence=confidence,
                   split=r.string("split", required=False, max_len=sizes.SPLIT), where=location(where, line))


@dataclass
class ComparisonRow:
    """One OpenAI-schema comparison, as the app needs it (post, two summaries, choice, who)."""

    post: Post
    summaries: tuple[tuple[str, str, str], tuple[str, str, str]]  # (text, policy, note)
    choice: int
    confidence: int | None
    worker: str
    batch: str
    split: str
    extra: dict[str, Any] = field(default_factory=dict)
    where: str = ""


def parse_openai_comparison(row: dict[str, Any], where: str = "<comparison>",
                            line: int | None = None) -> ComparisonRow:
    r = _Row(row, where, line)
    info = r.obj("info")
    assert info is not None
    if info.row.get("post") is None and info.row.get("article") is not None:
        post = Post(id=info.ident("id"), text=info.string("article", nonempty=True),
                    title=info.string("title", required=False),
                    subreddit=info.string("site", required=False, max_len=sizes.SUBREDDIT), source="cnndm")
    else:
        post = Post(id=info.ident("id"), text=info.string("post", nonempty=True),
                    title=info.string("title", required=False),
                    subreddit=info.string("subreddit", required=False, max_len=sizes.SUBREDDIT), source="tldr")
    summaries = row.get("summaries")
    if not isinstance(summaries, list) or len(summaries) != 2:
        raise r.fail("summaries", "expected an array of exactly 2 summaries")
    parsed = []
    for i, s in enumerate(summaries):
        if not isinstance(s, dict):
            raise r.fail(f"summaries[{i}]", f"expected an object, got {_json_type(s)}")
        sr = _Row(s, where, line, f"summaries[{i}].")
        parsed.append((sr.string("text"), sr.string("policy", required=False, max_len=sizes.POLICY),  # "" is a response
                       sr.string("note", required=False)))
    extra_r = r.obj("extra", required=False)
    extra = dict(extra_r.row) if extra_r else {}
    confidence = extra_r.integer("confidence", CONFIDENCE_MIN, CONFIDENCE_MAX, required=False) if extra_r else None
    extra.pop("confidence", None)
    choice = r.integer("choice", 0, 1)
    check_confidence(choice, confidence, lambda p: r.fail("extra.confidence", p))  # type: ignore[arg-type]
    return ComparisonRow(post=post, summaries=(parsed[0], parsed[1]), choice=choice,  # type: ignore[arg-type]
                         confidence=confidence, worker=r.string("worker", required=False, max_len=sizes.WORKER),
                         batch=r.string("batch", required=False, max_len=sizes.BATCH),
                         split=r.string("split", required=False, max_len=sizes.SPLIT), extra=extra,
                         where=location(where, line))


def is_best_of_n_file_row(row: dict[str, Any]) -> bool:
    """Whether a tasks or labels file is a best-of-N one, judged by its first row: pairs, samples and OpenAI
    comparisons never have a "samples" key."""
    return "samples" in row


@dataclass
class BestOfNTask:
    """One row of a best-of-N tasks file: a query (as a post with source "query") and its continuations."""

    post: Post
    samples: tuple[Choice, ...]
    split: str = ""
    where: str = ""


def parse_best_of_n(row: dict[str, Any], where: str = "<best-of-n>", line: int | None = None) -> BestOfN:
    """A best-of-N label, checked by the data layer's own parser (`schema.best_of_n`, what `load_best_of_n`
    reads) so that a file the app takes is one the training stages take, then against the database's limits."""
    try:
        b = schema.best_of_n(row)
    except schema.FieldError as err:
        raise FormatError(where, line, err.field, err.problem) from None
    _check_best_of_n_limits(_Row(row, where, line), b)
    return b


def parse_best_of_n_task(row: dict[str, Any], where: str = "<best-of-n>", line: int | None = None) -> BestOfNTask:
    """A best-of-N task: a label row without `best`."""
    r = _Row(row, where, line)
    if "best" in row:
        raise r.fail("best", "a tasks file holds no answers: import labels with `rlhflab label import`")
    try:  # the schema requires `best`; 0 is valid for every N >= 2 and is dropped right away
        b = schema.best_of_n({**row, "best": 0})
    except schema.FieldError as err:
        raise FormatError(where, line, err.field, err.problem) from None
    _check_best_of_n_limits(r, b)
    return BestOfNTask(post=b.post, samples=b.samples, split=b.split, where=location(where, line))


def _check_best_of_n_limits(r: _Row, b: BestOfN) -> None:
    """What the schema allows but the database does not: long ids and names, NUL (PostgreSQL refuses it)."""
    if r.row.get("id") is not None:
        r.ident("id")
    r.string("query", nonempty=True)
    for key, limit in (("worker", sizes.WORKER), ("batch", sizes.BATCH), ("split", sizes.SPLIT)):
        r.string(key, required=False, max_len=limit)
    for i, c in enumerate(b.samples):
        cr = _Row({"text": c.text, "policy": c.policy}, r.where, r.line, f"samples[{i}].")
        cr.string("text", nonempty=True)
        cr.string("policy", required=False, max_len=sizes.POLICY)


def parse_best_of_n_tasks(rows: Iterable[tuple[int, dict[str, Any]]], where: str) -> list[BestOfNTask]:
    return [parse_best_of_n_task(row, where, n) for n, row in rows]


@dataclass
class Labels:
    """A labels file's rows (one kind: comparisons or best-of-N labels) and where each came from."""

    rows: list[ComparisonRow] | list[BestOfN]
    where: list[str]


def parse_labels(rows: Iterable[tuple[int, dict[str, Any]]], where: str) -> Labels:
    """A labels file: OpenAI-schema comparisons, or best-of-N labels when the first row has "samples"."""
    numbered = list(rows)
    places = [location(where, n) for n, _ in numbered]
    if numbered and is_best_of_n_file_row(numbered[0][1]):
        return Labels([parse_best_of_n(row, where, n) for n, row in numbered], places)
    return Labels([parse_openai_comparison(row, where, n) for n, row in numbered], places)


def read_posts(rows: Iterable[tuple[int, dict[str, Any]]], where: str) -> tuple[dict[str, Post], dict[str, str]]:
    """A posts file: the posts by id and where each was. An id given twice must name the same post: two different
    posts under one id are refused, naming both lines (one of them would silently win)."""
    posts: dict[str, Post] = {}
    places: dict[str, str] = {}
    for n, row in rows:
        post = parse_post(row, where, n)
        if post.id in posts and not same_post(posts[post.id], post):
            raise FormatError(where, n, "id", f"{post.id!r} is also the id of another post at {places[post.id]}")
        posts.setdefault(post.id, post)
        places.setdefault(post.id, location(where, n))
    return posts, places


def same_post(a: Post, b: Post) -> bool:
    """Whether two posts are the same as far as a labeler sees them (text, title, subreddit)."""
    return (a.text, a.title, a.subreddit) == (b.text, b.title, b.subreddit)


def location(where: str, line: int | None) -> str:
    return where + (f":{line}" if line is not None else "")


def choices_json(samples: Iterable[Choice]) -> list[dict[str, Any]]:
    """Continuations as `Task.choices` stores them."""
    return [{"text": c.text, "policy": c.policy, "eos": c.eos} for c in samples]


# ---------------------------------------------------------------------------------------------- outputs

def openai_info(post_key: str, title: str, subreddit: str, text: str, source: str) -> dict[str, Any]:
    if source == "cnndm":
        return {"id": post_key, "site": subreddit, "title": title, "article": text}
    return {"id": post_key, "post": text, "title": title, "subreddit": subreddit}


def openai_comparison_row(*, info: dict[str, Any], summaries: list[dict[str, str]], choice: int,
                          confidence: int | None, worker: str, batch: str, split: str,
                          extra: dict[str, Any]) -> dict[str, Any]:
    """A row in exactly the key order and types of OpenAI's release (see /shared/data/README.md)."""
    extra = dict(extra)
    if confidence is not None:
        extra["confidence"] = confidence
    return {"info": info, "split": split, "summaries": summaries, "choice": choice, "worker": worker,
            "batch": batch, "extra": extra}


def best_of_n_row(*, query_id: str, query: str, choices: list[dict[str, Any]], best: int, worker: str, batch: str,
                  split: str, extra: dict[str, Any]) -> dict[str, Any]:
    """One best-of-N label as the data layer writes it (`schema.best_of_n_to_row`), so `load_best_of_n` reads it."""
    samples = tuple(Choice(text=c["text"], policy=c.get("policy", ""), eos=bool(c.get("eos", True))) for c in choices)
    return schema.best_of_n_to_row(BestOfN(post=Post(id=query_id, text=query, source="query"), samples=samples,
                                           best=best, worker=worker, batch=batch, split=split, extra=extra))
