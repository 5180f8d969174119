"""The style scorers of Ziegler et al.'s mock tasks (rlhflab/models/style.py) and the `style` judge on them: real
VADER and the real Empath lexicon, values checked by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlhflab.eval.judges import JudgeSpec, StyleJudge, Text, build_judge
from rlhflab.models import style
from rlhflab.models.style import STYLE_SCORERS, descriptiveness, sentiment, style_scorer


def test_sentiment_is_vaders_compound_score():
    pos, neg = sentiment(["I love this wonderful day", "This is terrible and I hate it"])
    assert pos > 0.5 and neg < -0.5
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    text = "The food was good, but the service was painfully slow!"
    assert sentiment([text]) == [SentimentIntensityAnalyzer().polarity_scores(text)["compound"]]
    assert sentiment(["I love this wonderful day"]) == [0.8616]  # VADER 3.3.2's own value


def empath_terms(categories) -> set[str]:
    """The terms of some categories, read straight from the file that the empath package ships."""
    import empath

    rows = (line.rstrip("\n").split("\t") for line in
            (Path(empath.__file__).parent / "data" / "categories.tsv").read_text().splitlines())
    return {t for row in rows if row[0] in categories for t in row[1:]}


def test_descriptiveness_is_ten_times_the_share_of_physical_words():
    text = "The tall woman in a silk gown sat by the cold lake."
    # 12 words; tall, woman (appearance), silk, gown (clothing / fabric), cold (cold), lake (water) are in the
    # chosen categories, and the, in, a, sat, by are not: 10 · 6/12 = 5.0
    terms = empath_terms(style.DESCRIPTIVE_CATEGORIES)
    assert {"tall", "woman", "silk", "gown", "cold", "lake"} <= terms
    assert not {"the", "in", "a", "sat", "by"} & terms
    assert descriptiveness([text]) == [5.0]
    assert descriptiveness(["THE COLD LAKE"]) == [pytest.approx(10 * 2 / 3)]  # case does not matter
    assert descriptiveness(["She said that it was true."]) == [0.0]


def test_tokens_are_words_and_an_empty_text_scores_zero():
    assert style.words("She’s 3 feet—tall!") == ["she's", "feet", "tall"]
    assert descriptiveness(["", "  ", "42 ..."]) == [0.0, 0.0, 0.0]
    assert sentiment([""]) == [0.0]


def test_scorers_by_name():
    assert style_scorer("sentiment") is sentiment and style_scorer("descriptiveness") is descriptiveness
    assert set(STYLE_SCORERS) == {"sentiment", "descriptiveness"}
    with pytest.raises(ValueError, match="unknown style scorer 'humour': known are descriptiveness, sentiment"):
        style_scorer("humour")


def test_the_style_judge_prefers_by_the_sigmoid_of_the_score_difference(tmp_path):
    judge = build_judge(JudgeSpec(name="sent", kind="style", spec="sentiment"), tmp_path, load_rm=None)
    assert isinstance(judge, StyleJudge) and judge.kind == "style" and judge.spec == "sentiment"
    a, b = Text("I love this wonderful day"), Text("This is terrible and I hate it")
    # VADER: 0.8616 and −0.7783; τ = 1: σ(1.6399) = 1 / (1 + e^−1.6399) = 1 / 1.19400 = 0.83752
    assert judge.scores([None, None], [a, b]) == [0.8616, -0.7783]
    p_ab, p_ba, tie = judge.prefer([None] * 3, [a, b, a], [b, a, a])
    assert p_ab == pytest.approx(1 / (1 + math.exp(-1.6399))) and p_ab == pytest.approx(0.83752, abs=1e-5)
    assert p_ba == pytest.approx(1 - p_ab) and tie == 0.5
    desc = StyleJudge(JudgeSpec(name="desc", kind="style", spec="style:descriptiveness"))  # PPO's spelling too
    assert desc.prefer([None], [Text("The cold lake.")], [Text("It was true.")]) == [
        pytest.approx(1 / (1 + math.exp(-10 * 2 / 3)))]


def test_a_style_judge_needs_a_known_name():
    with pytest.raises(ValueError, match="judge s: spec=humour: unknown style scorer 'humour': known are"):
        JudgeSpec(name="s", kind="style", spec="humour")
    with pytest.raises(ValueError, match=r"kind=style needs spec= \(sentiment or descriptiveness\)"):
        JudgeSpec(name="s", kind="style")
