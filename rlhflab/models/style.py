"""Programmatic style judges for Ziegler et al. (2019)'s stylistic-continuation tasks: a score per text.

Ziegler et al.'s "mock" experiment replaces the labelers with a classifier, so that how much of the judge the loop
learned from its labels can be measured on held-out text. These are such classifiers: pure functions of the text
alone (never the query — PPO passes the continuations), usable as a judge (`rlhflab.eval.judges.StyleJudge`:
simulate-labels, eval) and as a PPO reward (`reward=style:NAME`, `style_scorer(NAME)(responses)`).

- `sentiment(texts)`: VADER's compound score (Hutto & Gilbert 2014; the `vaderSentiment` package, which ships its
  lexicon), in [−1, 1]: "I love this wonderful day" 0.86, "This is terrible and I hate it" −0.78, "" 0.0.
- `descriptiveness(texts)`: a proxy for Ziegler's "physically descriptive language", on the lexicon of Empath
  (Fast et al. 2016; the `empath` package ships `data/categories.tsv`, 194 categories of words built from fiction
  and checked by crowd workers). Empath is chosen over the alternatives because its categories are about *what
  is described*: it has body, clothing, weather, smell, sound, ... — NRC (`nrclex`) has only emotions and
  polarity, TextBlob only polarity/subjectivity, `wordfreq` only frequencies. The score is

      descriptiveness(text) = 10 · |{tokens t : t ∈ D}| / |tokens|          (0.0 for a text with no tokens)

  "physical words per 10 words", where tokens are the text's words, lower-cased (`WORD`: runs of letters with
  inner apostrophes; ’ counts as '), counted with repetition, and D is the union of Empath's terms in the
  categories `DESCRIPTIVE_CATEGORIES` (what one can see, hear, smell or feel: body, appearance, clothing, fabric,
  shape and size, beauty, ugliness, smell, sound, noise, hearing, cold, warmth, weather, water, liquid, fire,
  plant, animal, ocean — 1,514 single words; Empath's 5 multi-word terms cannot match a single token). A token
  counts once even when it is in several categories; forms match exactly, without stemming (Empath lists the
  inflections it saw: 'raining', 'shivering', but not 'roses'). The range is [0, 10]; on the book passages in
  ../shared/data/books the mean is ≈ 0.2 for Jane Austen's novels and ≈ 0.7 for Thoreau's *Cape Cod*, and on
  their 20-word windows the std is 0.46, VADER's 0.45: one judge temperature suits both scores.

Both lexicons are read from the installed packages (no network) once per process, on first use (`_vader`,
`_descriptive_words` are cached): PPO calls a scorer every update.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

StyleScorer = Callable[[Sequence[str]], list[float]]

DESCRIPTIVE_CATEGORIES: tuple[str, ...] = (
    "body", "appearance", "clothing", "fabric", "shape_and_size", "beauty", "ugliness", "smell", "sound", "noise",
    "hearing", "cold", "warmth", "weather", "water", "liquid", "fire", "plant", "animal", "ocean",
)
DESCRIPTIVENESS_SCALE = 10.0  # lexicon words per 10 words
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


@lru_cache(maxsize=1)
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@lru_cache(maxsize=1)
def _descriptive_words() -> frozenset[str]:
    from empath import Empath

    cats = Empath().cats
    missing = [c for c in DESCRIPTIVE_CATEGORIES if c not in cats]
    if missing:  # a different empath version
        raise RuntimeError(f"empath's lexicon has no categories {missing}; rlhflab pins empath==0.89")
    return frozenset(t.lower() for c in DESCRIPTIVE_CATEGORIES for t in cats[c] if t and WORD.fullmatch(t.lower()))


def words(text: str) -> list[str]:
    """The text's word tokens, lower-cased, as `descriptiveness` counts them."""
    return WORD.findall(text.lower().replace("\u2019", "'"))


def sentiment(texts: Sequence[str]) -> list[float]:
    """VADER's compound score of each text, in [−1, 1] (0.0 for an empty text)."""
    vader = _vader()
    return [float(vader.polarity_scores(t)["compound"]) for t in texts]


def descriptiveness(texts: Sequence[str]) -> list[float]:
    """10 × the share of each text's word tokens that are in Empath's physical/sensory categories (module doc)."""
    lexicon = _descriptive_words()
    out = []
    for t in texts:
        toks = words(t)
        out.append(DESCRIPTIVENESS_SCALE * sum(w in lexicon for w in toks) / len(toks) if toks else 0.0)
    return out


STYLE_SCORERS: dict[str, StyleScorer] = {"sentiment": sentiment, "descriptiveness": descriptiveness}


def style_scorer(name: str) -> StyleScorer:
    """The scorer called `name` (a key of STYLE_SCORERS)."""
    try:
        return STYLE_SCORERS[name]
    except KeyError:
        raise ValueError(f"unknown style scorer {name!r}: known are {', '.join(sorted(STYLE_SCORERS))}") from None


__all__ = ["DESCRIPTIVE_CATEGORIES", "STYLE_SCORERS", "descriptiveness", "sentiment", "style_scorer", "words"]
