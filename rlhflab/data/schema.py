"""Row schemas: one pure function per format turning a JSON object into a record (and back, where we write it).

Parsers know nothing about files: they raise `FieldError(field, problem)` and the loader adds file and line.
Field names in errors are dotted paths into the row (`info.post`, `summaries[1].text`, `extra.confidence`) so a
user can find the bad value without the message ever quoting it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from rlhflab.data.jsonl import json_type
from rlhflab.data.records import (
    CONFIDENCE_MAX,
    CONFIDENCE_MIN,
    BestOfN,
    Choice,
    Comparison,
    Post,
    Sample,
    Summary,
)

Row = Mapping[str, Any]


class FieldError(ValueError):
    """A problem with one field of one row; the loader turns it into a DataError with file and line."""

    def __init__(self, field: str | None, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"field '{field}': {problem}" if field else problem)


# ---------------------------------------------------------------------------------------------- field checks

def _get(row: Row, key: str, path: str) -> Any:
    if not isinstance(row, Mapping):
        raise FieldError(path.rpartition(".")[0] or None, f"expected an object, got {json_type(row)}")
    if key not in row:
        raise FieldError(path, "missing")
    return row[key]


def text(row: Row, key: str, prefix: str = "") -> str:
    """A required, non-empty string (post, article, summary text): empty text cannot be summarised or scored."""
    value = string(row, key, prefix)
    if not value.strip():
        raise FieldError(prefix + key, "empty string")
    return value


def response(row: Row, key: str, prefix: str = "") -> str:
    """A summary's text: a required string that may be empty. An empty summary is a response too (a policy that
    stopped at once; OpenAI's files hold such rows, judged by labelers): it is the EOS token alone."""
    return string(row, key, prefix)


def string(row: Row, key: str, prefix: str = "") -> str:
    """A required string, possibly empty."""
    value = _get(row, key, prefix + key)
    if not isinstance(value, str):
        raise FieldError(prefix + key, f"expected a string, got {json_type(value)}")
    return value


def optional_string(row: Row, key: str, prefix: str = "") -> str:
    """A string that may be absent or null (hub datasets fill missing columns with None); absent -> ""."""
    if not isinstance(row, Mapping) or row.get(key) is None:
        return ""
    return string(row, key, prefix)


def identifier(row: Row, key: str, prefix: str = "") -> str:
    """A required id: a non-empty string, or an integer (some exports number their rows), returned as str."""
    value = _get(row, key, prefix + key)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise FieldError(prefix + key, f"expected a string id, got {json_type(value)}")
    if not value.strip():
        raise FieldError(prefix + key, "empty string")
    return value


def integer(row: Row, key: str, prefix: str = "", *, lo: int, hi: int, required: bool = True) -> int | None:
    """An int in [lo, hi]. JSON booleans and floats are rejected: `true` or 1.0 as a choice is a bug upstream."""
    if not required and (not isinstance(row, Mapping) or row.get(key) is None):
        return None
    value = _get(row, key, prefix + key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(prefix + key, f"expected an integer, got {json_type(value)}")
    if not lo <= value <= hi:
        raise FieldError(prefix + key, f"must be {lo}" + (f" or {hi}" if hi == lo + 1 else f"–{hi}")
                         + f", got {value}")
    return value


def obj(row: Row, key: str, prefix: str = "", required: bool = True) -> dict[str, Any]:
    if not required and row.get(key) is None:
        return {}
    value = _get(row, key, prefix + key)
    if not isinstance(value, Mapping):
        raise FieldError(prefix + key, f"expected an object, got {json_type(value)}")
    return dict(value)


# ---------------------------------------------------------------------------------------------- posts

def tldr_post(row: Row) -> Post:
    """OpenAI's filtered TL;DR: {"id","subreddit","title","post","summary"}."""
    return Post(id=identifier(row, "id"), text=text(row, "post"), title=string(row, "title"),
                subreddit=string(row, "subreddit"), reference=text(row, "summary"), source="tldr")


def cnndm_post(row: Row) -> Post:
    """CNN/DailyMail 3.0.0: {"id","article","highlights"}."""
    return Post(id=identifier(row, "id"), text=text(row, "article"), reference=text(row, "highlights"),
                source="cnndm")


def books_post(row: Row) -> Post:
    """A book passage {"id","book","author","year","text"} (only "id" and "text" are required) -> Post(source=
    "books"): the prompt of Ziegler et al.'s stylistic continuation, with the book in `title` and the author in
    `subreddit` (both say where the text came from). There is no reference continuation."""
    return Post(id=identifier(row, "id"), text=text(row, "text"), title=optional_string(row, "book"),
                subreddit=optional_string(row, "author"), source="books")


# Whole books held out of training for evaluation (one of each two-book author, so evaluation meets unseen books
# by familiar authors: 800 of the 3,172 passages of ../shared/data/books).
HELDOUT_BOOKS = ("Mansfield Park", "Little Men")


def books_train_post(row: Row) -> Post | None:
    """A passage of a book that is not held out (None: skipped, not an error)."""
    post = books_post(row)
    return None if post.title in HELDOUT_BOOKS else post


def books_heldout_post(row: Row) -> Post | None:
    """A passage of a held-out book (None: skipped, not an error)."""
    post = books_post(row)
    return post if post.title in HELDOUT_BOOKS else None


POST_SOURCES = ("tldr", "cnndm", "query", "books")


def own_post(row: Row) -> Post:
    """Our own `Post.to_dict()` rows. `reference` may be null (posts to summarise with no human summary)."""
    source = string(row, "source") if "source" in row else "tldr"
    if source not in POST_SOURCES:
        raise FieldError("source", f"must be one of {', '.join(POST_SOURCES)}, got an unknown value")
    reference = None if row.get("reference") is None else string(row, "reference")
    return Post(id=identifier(row, "id"), text=text(row, "text"), title=optional_string(row, "title"),
                subreddit=optional_string(row, "subreddit"), reference=reference, source=source)


POST_PARSERS: dict[str, Callable[[Row], Post | None]] = {
    "tldr": tldr_post, "cnndm": cnndm_post, "posts": own_post,
    "books": books_post, "books-train": books_train_post, "books-heldout": books_heldout_post,
}


def detect_post_format(row: Row) -> str | None:
    """Which post format a row is in, from its keys (None when no format fits)."""
    if "article" in row:
        return "cnndm"
    if "post" in row:
        return "tldr"
    if "book" in row and "text" in row:
        return "books"
    if "text" in row:
        return "posts"
    return None


# ---------------------------------------------------------------------------------------------- comparisons

def comparison(row: Row) -> Comparison:
    """One row of OpenAI's comparison schema, or a plain {"post"|"query", "chosen", "rejected"} pair."""
    if "info" not in row and "chosen" in row:
        return pair(row)
    info = obj(row, "info")
    summaries = _two_summaries(row)
    extra = obj(row, "extra", required=False)
    confidence = integer(extra, "confidence", "extra.", lo=CONFIDENCE_MIN, hi=CONFIDENCE_MAX, required=False)
    return Comparison(
        post=_info_post(info), summaries=summaries, choice=integer(row, "choice", lo=0, hi=1),  # type: ignore[arg-type]
        confidence=confidence, worker=optional_string(row, "worker"), batch=optional_string(row, "batch"),
        split=optional_string(row, "split"), extra={k: v for k, v in extra.items() if k != "confidence"},
    )


def _info_post(info: Row) -> Post:
    """`info` is the TL;DR variant {id, post, title, subreddit} or the CNN/DM one {id, site, title, article}.

    Hub rows carry both sets of keys with the unused ones null, so the variant is chosen by which text is
    present. For CNN/DM the `site` (cnn, dailymail) is kept in `Post.subreddit`: both say where the text came
    from, and `write_comparisons` puts it back.
    """
    if info.get("post") is None and info.get("article") is not None:
        return Post(id=identifier(info, "id", "info."), text=text(info, "article", "info."),
                    title=optional_string(info, "title", "info."), subreddit=optional_string(info, "site", "info."),
                    source="cnndm")
    return Post(id=identifier(info, "id", "info."), text=text(info, "post", "info."),
                title=optional_string(info, "title", "info."),
                subreddit=optional_string(info, "subreddit", "info."), source="tldr")


def _two_summaries(row: Row) -> tuple[Summary, Summary]:
    value = _get(row, "summaries", "summaries")
    if not isinstance(value, list):
        raise FieldError("summaries", f"expected an array, got {json_type(value)}")
    if len(value) != 2:
        raise FieldError("summaries", f"expected exactly 2 summaries, got {len(value)}")
    out = []
    for i, s in enumerate(value):
        p = f"summaries[{i}]."
        if not isinstance(s, Mapping):
            raise FieldError(f"summaries[{i}]", f"expected an object, got {json_type(s)}")
        out.append(Summary(text=response(s, "text", p), policy=optional_string(s, "policy", p),
                           note=optional_string(s, "note", p)))
    return out[0], out[1]


def pair(row: Row) -> Comparison:
    """A plain preference pair: {"post" or "query", "chosen", "rejected", optional "id", "confidence"}.

    The chosen summary becomes summary 0 (choice=0). A "query" is text that is already formatted for the
    policy, so the post gets source "query" and `format_query` will not wrap it again. Without an id, the
    id is a hash of the text, so `split_by_post` still keeps every pair of one post on one side.
    """
    key, source = ("post", "tldr") if "post" in row or "query" not in row else ("query", "query")
    body = text(row, key)
    post_id = identifier(row, "id") if row.get("id") is not None else "sha1:" + hashlib.sha1(
        body.encode("utf-8")).hexdigest()[:16]
    confidence = integer(row, "confidence", lo=CONFIDENCE_MIN, hi=CONFIDENCE_MAX, required=False)
    return Comparison(post=Post(id=post_id, text=body, source=source),
                      summaries=(Summary(response(row, "chosen")), Summary(response(row, "rejected"))),
                      choice=0, confidence=confidence)


POSTLESS_ID = "postless"  # the one post id every post-less pair shares: never a real post's id


def postless_pair(row: Row, query: str) -> Comparison:
    """A human comparison whose post was lost: {"id", "chosen", "rejected", "chosen_policy", "rejected_policy",
    "batch"} (e.g. comparisons/train_no_posts.jsonl.gz). The chosen summary is summary 0; the query is `query`,
    the caller's placeholder, as an already formatted query. All such pairs share the post id "postless", so
    the same two summaries labelled twice are found as repeats, and no dev split by post can take one (the
    caller keeps them out of dev). A row that has its post belongs with the comparisons, and is refused here."""
    for key in ("post", "query", "info"):
        if row.get(key) is not None:
            raise FieldError(key, "this pair has its post: give its file as data.comparisons, not data.postless")
    chosen, rejected = response(row, "chosen"), response(row, "rejected")
    extra = {"id": identifier(row, "id")} if row.get("id") is not None else {}
    return Comparison(post=Post(id=POSTLESS_ID, text=query, source="query"),
                      summaries=(Summary(chosen, policy=optional_string(row, "chosen_policy")),
                                 Summary(rejected, policy=optional_string(row, "rejected_policy"))),
                      choice=0, batch=optional_string(row, "batch"), extra=extra)


def comparison_to_row(c: Comparison) -> dict[str, Any]:
    """A Comparison in OpenAI's schema (the inverse of `comparison`)."""
    p = c.post
    if p.source == "cnndm":
        info = {"id": p.id, "site": p.subreddit, "title": p.title, "article": p.text}
    else:
        info = {"id": p.id, "post": p.text, "title": p.title, "subreddit": p.subreddit}
    extra = dict(c.extra)
    if c.confidence is not None:
        extra["confidence"] = c.confidence
    return {
        "info": info, "split": c.split,
        "summaries": [{"text": s.text, "policy": s.policy, "note": s.note} for s in c.summaries],
        "choice": c.choice, "worker": c.worker, "batch": c.batch, "extra": extra,
    }


# ---------------------------------------------------------------------------------------------- best-of-N

MAX_BEST_OF = 16


def best_of_n(row: Row) -> BestOfN:
    """{"query": str, "samples": [str | {"text", "policy", "eos"}, ...], "best": i, optional "id", "worker",
    "batch", "split", "extra"}: the continuations of one (formatted) query and the index of the best one.

    Without an id, the id is a hash of the query, so a split by post keeps one query's tasks on one side.
    """
    query = text(row, "query")
    value = _get(row, "samples", "samples")
    if not isinstance(value, list):
        raise FieldError("samples", f"expected an array, got {json_type(value)}")
    if not 2 <= len(value) <= MAX_BEST_OF:
        raise FieldError("samples", f"expected 2–{MAX_BEST_OF} samples, got {len(value)}")
    samples = tuple(_choice(s, i) for i, s in enumerate(value))
    post_id = identifier(row, "id") if row.get("id") is not None else "sha1:" + hashlib.sha1(
        query.encode("utf-8")).hexdigest()[:16]
    return BestOfN(post=Post(id=post_id, text=query, source="query"), samples=samples,
                   best=integer(row, "best", lo=0, hi=len(samples) - 1),  # type: ignore[arg-type]
                   worker=optional_string(row, "worker"), batch=optional_string(row, "batch"),
                   split=optional_string(row, "split"), extra=obj(row, "extra", required=False))


def _choice(value: Any, i: int) -> Choice:
    if isinstance(value, str):
        if not value.strip():
            raise FieldError(f"samples[{i}]", "empty string")
        return Choice(value)
    if not isinstance(value, Mapping):
        raise FieldError(f"samples[{i}]", f"expected a string or an object, got {json_type(value)}")
    eos = value.get("eos", True)
    if not isinstance(eos, bool):
        raise FieldError(f"samples[{i}].eos", f"expected a boolean, got {json_type(eos)}")
    p = f"samples[{i}]."
    return Choice(text=text(value, "text", p), policy=optional_string(value, "policy", p), eos=eos)


def best_of_n_to_row(b: BestOfN) -> dict[str, Any]:
    """A BestOfN as a JSON row (the inverse of `best_of_n`)."""
    return {"id": b.post.id, "query": b.post.text,
            "samples": [{"text": s.text, "policy": s.policy, "eos": s.eos} for s in b.samples],
            "best": b.best, "worker": b.worker, "batch": b.batch, "split": b.split, "extra": dict(b.extra)}


def is_best_of_n_row(row: Row) -> bool:
    """Whether a labels row is a best-of-N task (it has "samples" and "best") rather than a comparison."""
    return isinstance(row, Mapping) and "samples" in row and "best" in row


# ---------------------------------------------------------------------------------------------- samples

def sample(row: Row) -> Sample:
    """One `Sample.to_dict()` row. The text may be empty (a model can emit EOS at once); its type may not be."""
    n_tokens = integer(row, "n_tokens", lo=0, hi=2**31)
    index = integer(row, "index", lo=0, hi=2**31, required=False)
    eos = row.get("eos", True)
    if not isinstance(eos, bool):
        raise FieldError("eos", f"expected a boolean, got {json_type(eos)}")
    score = row.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise FieldError("score", f"expected a number or null, got {json_type(score)}")
    return Sample(post_id=identifier(row, "post_id"), policy=string(row, "policy"), text=string(row, "text"),
                  n_tokens=n_tokens, index=index or 0, eos=eos,  # type: ignore[arg-type]
                  score=None if score is None else float(score), extra=obj(row, "extra", required=False))
