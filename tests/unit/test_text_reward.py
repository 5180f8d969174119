"""Text rewards (models/text_reward.py): ROUGE-L by hand, callables with and without posts, the reference check."""

from __future__ import annotations

import pytest

from rlhflab.data.records import Post
from rlhflab.models.text_reward import (
    call_text_reward,
    check_references,
    is_text_reward,
    load_text_reward,
    rouge_l_reward,
    wants_posts,
)

POSTS = [Post(id="a", text="post a", reference="the cat sat on the mat"),
         Post(id="b", text="post b", reference="dogs bark loudly")]


def test_rouge_l_f1_matches_the_hand_computed_lcs():
    # "the cat on mat" vs "the cat sat on the mat": LCS = the cat on mat (4); P = 4/4, R = 4/6, F1 = 0.8.
    # "cats barking" vs "dogs bark loudly": the Porter stemmer makes bark/barking one token; LCS = 1,
    # P = 1/2, R = 1/3, F1 = 2·(1/6)/(5/6) = 0.4.
    scores = rouge_l_reward(["q", "q"], ["the cat on mat", "cats barking"], POSTS)
    assert scores == pytest.approx([0.8, 0.4])
    assert load_text_reward("rouge") is rouge_l_reward and is_text_reward("rouge")
    assert not is_text_reward("runs/rm/cpu")


def two_args(queries: list[str], responses: list[str]) -> list[float]:
    return [float(len(r)) for r in responses]


def with_posts(queries: list[str], responses: list[str], posts: list[Post]) -> list[float]:
    return [float(len(p.reference or "")) for p in posts]


def test_a_callable_gets_the_posts_only_when_it_declares_them():
    assert not wants_posts(two_args) and wants_posts(with_posts)
    assert call_text_reward(two_args, ["q1", "q2"], ["abc", "de"], POSTS) == [3.0, 2.0]
    assert call_text_reward(with_posts, ["q1", "q2"], ["abc", "de"], POSTS) == [22.0, 16.0]
    fn = load_text_reward("python:tests.unit.test_text_reward:with_posts")
    assert fn.__name__ == "with_posts" and wants_posts(fn)  # (pytest imports this module under another name)


def test_a_callable_that_returns_the_wrong_number_of_scores_is_refused():
    with pytest.raises(ValueError, match="returned 1 scores for 2 responses"):
        call_text_reward(lambda q, r: [0.0], ["q1", "q2"], ["a", "b"], POSTS)


def test_posts_without_a_reference_are_refused_naming_the_file_and_post():
    posts = [*POSTS, Post(id="c", text="no tl;dr here", reference=None)]
    with pytest.raises(ValueError, match=r"posts\.jsonl: 1 of 3 posts have no reference.*post 3, id 'c'"):
        check_references(rouge_l_reward, posts, "posts.jsonl")
    check_references(rouge_l_reward, POSTS, "posts.jsonl")  # all have one: no error
    check_references(two_args, posts, "posts.jsonl")  # a reward that does not compare against it: no check


@pytest.mark.parametrize("spec, message", [("python:nomodule", "expected python:module:function"),
                                           ("python:tests.unit.test_text_reward:nothing", "no function 'nothing'"),
                                           ("style:happiness", "happiness")])
def test_bad_specs_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        load_text_reward(spec)
