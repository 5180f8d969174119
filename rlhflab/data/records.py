"""Record types shared by every stage and by the labelling app. Standard library only (no torch).

- `Post`: a document to summarise — a Reddit post (TL;DR) or a news article (CNN/DM) — with its human reference.
- `Sample`: one summary of one post by one policy (the samples JSONL that labelling and evaluation read).
- `Comparison`: two summaries of one post, which one a person chose, and how confident they were (1–9).
- `BestOfN`: N continuations of one query and the one a person picked (Ziegler et al. 2019's label type).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

CONFIDENCE_MIN, CONFIDENCE_NO_PREFERENCE, CONFIDENCE_MAX = 1, 5, 9
R = TypeVar("R")


def _to_dict(record: Any) -> dict[str, Any]:
    """A record as a JSON-ready dict of its fields."""
    return dataclasses.asdict(record)


def _from_dict(cls: type[R], row: dict[str, Any]) -> R:
    """A record from a dict, taking its own fields and ignoring the rest (rows carry extra columns)."""
    return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls) if f.name in row})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Post:
    """A document and, when known, its human reference summary.

    For TL;DR `text` is the post body and `reference` the author's own TL;DR; for CNN/DM `text` is the article
    and `reference` the highlights. `source` says which query format applies ("tldr" or "cnndm"; "query" when
    `text` is an already formatted query, as in plain preference pairs). For CNN/DM posts from OpenAI's
    comparisons, `subreddit` holds the news site (cnn, dailymail): both say where the text came from.
    """

    id: str
    text: str
    title: str = ""
    subreddit: str = ""
    reference: str | None = None
    source: str = "tldr"

    to_dict = _to_dict
    from_dict = classmethod(_from_dict)


@dataclass(frozen=True)
class Sample:
    """One summary of one post. `text` is what followed the query (the paper's summaries start with a space)."""

    post_id: str
    policy: str
    text: str
    n_tokens: int
    index: int = 0  # which of the n samples of this post by this policy
    eos: bool = True  # did the model end the summary itself (False: cut at the length limit)
    score: float | None = None  # a reward model's score, when one was added
    extra: dict[str, Any] = field(default_factory=dict)

    to_dict = _to_dict
    from_dict = classmethod(_from_dict)


@dataclass(frozen=True)
class Summary:
    text: str
    policy: str = ""
    note: str = ""


@dataclass(frozen=True)
class Comparison:
    """Two summaries of one post and a person's choice, in the terms of OpenAI's comparison release.

    `choice` is the index (0 or 1) of the preferred summary. `confidence` is the 1–9 value (low leans to
    summary 0, high to summary 1, 5 = no preference) or None when the source has none.
    """

    post: Post
    summaries: tuple[Summary, Summary]
    choice: int
    confidence: int | None = None
    worker: str = ""
    batch: str = ""
    split: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def chosen(self) -> Summary:
        return self.summaries[self.choice]

    @property
    def rejected(self) -> Summary:
        return self.summaries[1 - self.choice]

    @property
    def confidence_distance(self) -> int | None:
        """How sure the labeler was: |confidence − 5|, 0 (no preference) … 4 (certain)."""
        return None if self.confidence is None else abs(self.confidence - CONFIDENCE_NO_PREFERENCE)


@dataclass(frozen=True)
class Choice:
    """One of a best-of-N task's continuations. `eos`: the writer ended it with its EOS token (False for one cut
    at a stop token such as "." — it is scored as written, without an EOS appended)."""

    text: str
    policy: str = ""
    eos: bool = True


@dataclass(frozen=True)
class BestOfN:
    """N ≥ 2 continuations of one query and the index of the one the labeler judged best (Ziegler et al. 2019
    label 4 continuations a query). `post` holds the query: an already formatted one has source "query"."""

    post: Post
    samples: tuple[Choice, ...]
    best: int
    worker: str = ""
    batch: str = ""
    split: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def chosen(self) -> Choice:
        return self.samples[self.best]
