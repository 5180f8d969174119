"""`rlhflab simulate-labels` on real posts with a python judge: the output is a comparisons file that the RM stage
and the labelling app both read, and the noise settings do what they say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from rlhflab.core.config import load_config  # noqa: E402
from rlhflab.data.jsonl import DataError  # noqa: E402
from rlhflab.data.loaders import load_comparisons, load_posts  # noqa: E402
from rlhflab.eval.simulate import SimulateConfig, simulate  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def prefer_longer(posts, a, b):
    """A judge that is sure the longer summary is better (P = 0.95), and undecided on equal lengths."""
    return [0.95 if len(x) > len(y) else 0.05 if len(x) < len(y) else 0.5 for x, y in zip(a, b)]


@pytest.fixture()
def pairs_file(tmp_path, shared_data) -> Path:
    posts = list(load_posts(shared_data / "tldr" / "train.jsonl.gz", limit=200))
    rows = [{"post": p.to_dict(), "summary_a": {"text": " short", "policy": "x"},
             "summary_b": {"text": " a much longer summary " * (1 + i % 2), "policy": "y"}} for i, p in enumerate(posts)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cfg(pairs: Path, *overrides: str) -> SimulateConfig:
    return load_config(SimulateConfig, None, [f"pairs={pairs}", "judge.kind=python", "judge.name=longer",
                                              "judge.spec=python:tests.component.test_simulate_labels:prefer_longer",
                                              *overrides])


def test_a_noiseless_labeler_gives_the_judges_answers_in_openais_schema(tmp_path, pairs_file):
    done = simulate(cfg(pairs_file, "temperature=0", "batch=round_1"), str(tmp_path / "run"))
    assert done["comparisons"] == 200 and done["agreement_with_judge"] == 1.0
    comparisons = list(load_comparisons(tmp_path / "run" / "comparisons.jsonl"))
    assert all(c.chosen.text.startswith(" a much longer") for c in comparisons)
    assert all(c.confidence == 9 and c.batch == "round_1" and c.worker == "sim:longer" for c in comparisons)
    # the labelling app reads the same file (its stricter parser checks that confidence leans to the choice)
    from rlhflab.label import formats

    rows = [formats.parse_openai_comparison(r, "x", n) for n, r in formats.read_jsonl(tmp_path / "run" / "comparisons.jsonl")]
    assert len(rows) == 200


def test_noise_lowers_agreement_as_configured(tmp_path, pairs_file):
    # temperature 1 keeps P = 0.95 and random_rate 0.5 halves the share that follows it: 0.25 + 0.5·0.95 = 0.725
    done = simulate(cfg(pairs_file, "temperature=1", "random_rate=0.5", "seed=3"), str(tmp_path / "noisy"))
    assert 0.60 < done["agreement_with_judge"] < 0.85
    again = simulate(cfg(pairs_file, "temperature=1", "random_rate=0.5", "seed=3"), str(tmp_path / "again"))
    assert again["agreement_with_judge"] == done["agreement_with_judge"]  # seeded: the same answers
    assert simulate(cfg(pairs_file, "temperature=1", "random_rate=1.0", "seed=3"),
                    str(tmp_path / "coin"))["agreement_with_judge"] < 0.62


def test_a_bad_task_row_is_named_by_its_line(tmp_path, pairs_file):
    lines = pairs_file.read_text().splitlines()
    row = json.loads(lines[4])
    del row["summary_b"]
    lines[4] = json.dumps(row)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl line 5, field 'summary_b'"):
        simulate(cfg(bad), str(tmp_path / "run"))
    assert not (tmp_path / "run" / "comparisons.jsonl").exists()


def test_a_style_judge_labels_like_ziegler_et_als_mock_labeler(tmp_path, shared_data):
    # judge.kind=style: VADER's compound score of each text alone; 0.8616 vs −0.7783, so P(a) = σ(1.6399) = 0.83752
    posts = list(load_posts(shared_data / "tldr" / "train.jsonl.gz", limit=8))
    rows = [{"post": p.to_dict(), "summary_a": {"text": "I love this wonderful day"},
             "summary_b": {"text": "This is terrible and I hate it"}} for p in posts]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    style_cfg = load_config(SimulateConfig, None, [f"pairs={pairs}", "judge.kind=style", "judge.name=sentiment",
                                                   "judge.spec=sentiment", "temperature=0"])
    done = simulate(style_cfg, str(tmp_path / "run"))
    assert done["comparisons"] == 8 and done["agreement_with_judge"] == 1.0 and done["judge"] == "sentiment"
    comparisons = list(load_comparisons(tmp_path / "run" / "comparisons.jsonl"))
    assert all(c.choice == 0 and c.confidence == 1 and c.worker == "sim:sentiment" for c in comparisons)
    assert all(c.extra["judge_p_a"] == 0.837521 for c in comparisons)
