"""PPO and best-of-N with rewards that see the post: reward=rouge against the reference, a callable with posts,
and posts without a reference refused before anything is written."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from rlhflab.core.config import load_config  # noqa: E402
from rlhflab.data.loaders import load_posts  # noqa: E402
from rlhflab.eval.best_of_n import BestOfNConfig, best_of_n  # noqa: E402
from rlhflab.models.text_reward import rouge_l_reward  # noqa: E402
from rlhflab.data.records import Post  # noqa: E402
from rlhflab.train import ppo  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SEEN: list[tuple[str, Post]] = []


def title_in_query(queries: list[str], responses: list[str], posts: list[Post]) -> list[float]:
    """Records what it was given; the score says whether each query was formatted from its post."""
    SEEN.extend(zip(queries, posts))
    return [float(p.title in q) for q, p in zip(queries, posts)]


def tiny_cfg(tmp_path: Path, shared_data: Path, *overrides: str) -> ppo.PPOConfig:
    return load_config(ppo.PPOConfig, REPO / "configs/ppo/tiny.yaml",
                       [f"data.posts={shared_data / 'tldr/train.jsonl.gz'}", "total_episodes=16", "save_every=0",
                        "sample_every=1", *overrides])


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ppo_on_rouge_scores_each_response_against_its_reference(tmp_path, shared_data):
    ppo.train(tiny_cfg(tmp_path, shared_data, "reward=rouge"), str(tmp_path / "run"))
    samples = [r for f in sorted((tmp_path / "run" / "samples").glob("*.jsonl")) for r in rows(f)]
    assert samples and all(r["reference"] for r in samples)
    expected = rouge_l_reward([""] * len(samples), [r["response"] for r in samples],
                              [Post(id=r["post_id"], text="", reference=r["reference"]) for r in samples])
    assert [r["score"] for r in samples] == pytest.approx(expected)
    assert all(0.0 <= m["objective/score"] <= 1.0 for m in rows(tmp_path / "run" / "metrics.jsonl"))


def test_a_callable_that_declares_posts_gets_the_rows_own_posts(tmp_path, shared_data):
    SEEN.clear()
    ppo.train(tiny_cfg(tmp_path, shared_data, "reward=python:tests.component.test_ppo_text_reward:title_in_query"),
              str(tmp_path / "run"), reward_fn=title_in_query)
    assert len(SEEN) == 16
    assert all(post.title and post.title in query for query, post in SEEN)


def no_reference_posts(tmp_path: Path) -> Path:
    path = tmp_path / "posts.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i in range(12):
            f.write(json.dumps({"id": f"p{i}", "text": f"A post about the number {i}."}) + "\n")
    return path


def test_ppo_refuses_posts_without_a_reference_before_the_run_exists(tmp_path, shared_data):
    posts = no_reference_posts(tmp_path)
    cfg = tiny_cfg(tmp_path, shared_data, "reward=rouge", f"data.posts={posts}", "data.format=posts")
    with pytest.raises(ValueError, match=r"posts\.jsonl\.gz: 12 of 12 posts have no reference.*id 'p0'"):
        ppo.train(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_best_of_n_ranks_by_rouge_and_refuses_posts_without_a_reference(tmp_path, shared_data):
    cfg = load_config(BestOfNConfig, REPO / "configs/best-of-n/tiny.yaml",
                      ["reward=rouge", f"posts={shared_data / 'tldr/eval.jsonl.gz'}"])
    best_of_n(cfg, str(tmp_path / "bo"))
    written = rows(tmp_path / "bo" / "samples.jsonl")
    cands = rows(tmp_path / "bo" / "candidates.jsonl")
    refs = {p.id: p.reference for p in load_posts(str(shared_data / "tldr/eval.jsonl.gz"), limit=6)}
    for row in written:
        mine = [c for c in cands if c["post_id"] == row["post_id"]]
        expected = rouge_l_reward([""] * len(mine), [c["text"] for c in mine],
                                  [Post(id="x", text="", reference=refs[row["post_id"]])] * len(mine))
        assert row["extra"]["scores"] == pytest.approx(expected)
        assert row["score"] == pytest.approx(max(expected))
    bad = load_config(BestOfNConfig, REPO / "configs/best-of-n/tiny.yaml",
                      ["reward=rouge", f"posts={no_reference_posts(tmp_path)}", "format=posts"])
    with pytest.raises(ValueError, match="have no reference"):
        best_of_n(bad, str(tmp_path / "bo2"))
    assert not (tmp_path / "bo2").exists()
