"""The pipeline's own small steps: config merging, pairing samples into tasks, reading the app's progress."""

from __future__ import annotations

import pytest

from rlhflab.data.records import Post, Sample
from rlhflab.pipeline import PipelineConfig, PipelineError, merge, pair_samples, remaining_tasks, validate


def test_merge_puts_the_wiring_into_nested_sections_and_keeps_the_rest():
    base = {"model": "tiny", "data": {"limit": 64, "posts": "a"}, "kl": {"target": 1.0}}
    wiring = {"model": "runs/sft", "data": {"posts": "b"}, "policies": [{"name": "sft"}]}
    assert merge(base, wiring) == {"model": "runs/sft", "data": {"limit": 64, "posts": "b"}, "kl": {"target": 1.0},
                                   "policies": [{"name": "sft"}]}
    assert base["data"]["posts"] == "a"  # the YAML's mapping is not changed in place


def sample(post: str, index: int, text: str, policy: str = "sft") -> Sample:
    return Sample(post_id=post, policy=policy, text=text, n_tokens=len(text.split()), index=index)


def test_each_posts_samples_pair_up_in_order_and_identical_empty_or_nul_texts_are_left_out():
    posts = {p: Post(id=p, text=f"post {p}") for p in ("a", "b", "c", "d")}
    samples = [sample("a", 1, " two"), sample("a", 0, " one"), sample("a", 2, " three"), sample("a", 3, " four"),
               sample("b", 0, " same"), sample("b", 1, " same "), sample("c", 0, " x"), sample("c", 1, " y"),
               sample("d", 0, " "), sample("d", 1, " z"), sample("b", 2, " nul\x00"), sample("b", 3, " ok")]
    rows = pair_samples(samples, posts, pairs_per_post=2)
    got = [(r["post"]["id"], r["summary_a"]["text"], r["summary_b"]["text"]) for r in rows]
    assert got == [("a", " one", " two"), ("a", " three", " four"), ("c", " x", " y")]
    assert rows[0]["post"]["text"] == "post a" and rows[0]["summary_a"]["policy"] == "sft"
    assert len(pair_samples(samples, posts, pairs_per_post=1)) == 2  # one pair a post


def test_remaining_tasks_counts_only_the_regular_comparison_tasks():
    board = {"tasks": {"comparison": 12, "rating": 0, "gold": 2, "complete": 7}}
    assert remaining_tasks(board) == (3, 10)
    assert remaining_tasks({"tasks": {"comparison": 4, "gold": 0, "complete": 4}}) == (0, 4)


def test_settings_that_cannot_work_are_refused_before_anything_runs():
    with pytest.raises(PipelineError, match="rounds=0"):
        validate(PipelineConfig(rounds=0))
    cfg = PipelineConfig()
    cfg.gold.skip = True
    with pytest.raises(PipelineError, match="name the labeler's judge"):
        validate(cfg)
    cfg = PipelineConfig()
    cfg.rm.config = "configs/rm/nope.yaml"
    with pytest.raises(PipelineError, match="rm.config: configs/rm/nope.yaml not found"):
        validate(cfg)
    cfg = PipelineConfig(rounds=2)
    cfg.labels.source, cfg.labels.files = "import", ["configs/pipeline/tiny.yaml"]
    with pytest.raises(PipelineError, match="2 rounds need 2 labels.files"):
        validate(cfg)
    cfg.labels.files = ["configs/pipeline/tiny.yaml", "nope.jsonl"]
    with pytest.raises(PipelineError, match="not found: nope.jsonl"):
        validate(cfg)
