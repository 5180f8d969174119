"""Fail before the work: a bad data file named in a stage's config stops the stage at step 0 — before a model
loads — with one message that names the key, the file and the line, and leaves no run directory behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from rlhflab.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
POST = {"id": "p1", "subreddit": "test", "title": "A title", "post": "A post about rent.", "summary": "rent"}
COMPARISON = {"info": {"id": "p1", "post": "A post.", "title": "t", "subreddit": "s"},
              "summaries": [{"text": " a"}, {"text": " b"}], "choice": 0}
BOOK = {"id": "b1", "book": "Mansfield Park", "author": "Jane Austen", "text": "She smiled. It was late."}
TASK = {"post": {"id": "p1", "text": "A post."}, "summary_a": {"text": " a"}, "summary_b": {"text": " b"}}


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def bad_file(path: Path, good_row: dict) -> Path:
    """Two good rows, then a line that is not JSON (line 3)."""
    path.write_text(json.dumps(good_row) + "\n" + json.dumps(good_row | {"id": "p2"}) + "\n{\"id\": \"p3\", \n")
    return path


STAGES = [  # (command, its tiny config, the key that names the bad file, a good row of that file's kind)
    ("sft", "configs/sft/tiny.yaml", "data.train", POST),
    ("rm", "configs/rm/tiny.yaml", "data.comparisons", COMPARISON),
    ("rm", "configs/rm/tiny.yaml", "normalise_on", POST),
    ("ppo", "configs/ppo/tiny.yaml", "data.posts", POST),
    ("best-of-n", "configs/best-of-n/tiny.yaml", "posts", POST),
    ("sample", "configs/sample/tiny.yaml", "posts", POST),
    ("eval", "configs/eval/tiny.yaml", "posts", POST),
    ("simulate-labels", None, "pairs", TASK),
    ("style-eval", "configs/style-eval/tiny.yaml", "posts", BOOK),
]


@pytest.mark.parametrize("command, config, key, row", STAGES, ids=[f"{s[0]}:{s[2]}" for s in STAGES])
def test_a_bad_data_file_stops_the_stage_before_step_0_naming_key_file_and_line(tmp_path, capsys, command, config,
                                                                                key, row):
    bad = bad_file(tmp_path / "bad.jsonl", row)
    out = tmp_path / "run"
    args = [command, *(["--config", config] if config else []), "--out", str(out), f"{key}={bad}"]
    if command == "ppo":
        args.append("reward=style:sentiment")
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{key}={bad}" in err and "line 3" in err and "Traceback" not in err, err
    assert not out.exists() or [p.name for p in out.iterdir()] == []  # nothing written: a fixed command starts clean


def test_the_pipeline_checks_every_stages_files_before_its_first_stage(tmp_path, capsys):
    bad = bad_file(tmp_path / "bad.jsonl", POST)
    out = tmp_path / "p"
    code = main(["run", "configs/pipeline/tiny.yaml", "--out", str(out), f"ppo.overrides=[data.posts={bad}]"])
    err = capsys.readouterr().err
    assert code == 2 and f"ppo.data.posts={bad}" in err and "line 3" in err, err
    assert not (out / "sft").exists()  # the SFT stage never started


def test_an_unknown_style_reward_is_refused_before_a_model_loads(tmp_path, capsys):
    code = main(["ppo", "--config", "configs/ppo/tiny.yaml", "--out", str(tmp_path / "r"), "reward=style:colour"])
    err = capsys.readouterr().err
    assert code == 2 and "colour" in err and "sentiment" in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("error, code, says", [
    (ValueError("max_query_tokens=3: no post fits"), 2, "error: max_query_tokens=3"),
    (FileNotFoundError("no such file: x.jsonl"), 2, "error: no such file: x.jsonl"),
    (KeyError("internal"), 1, "this is a bug in rlhflab"),
])
def test_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch, error, code, says):
    import rlhflab.eval.sample as sample_stage

    def fail(cfg, out):
        raise error

    monkeypatch.setattr(sample_stage, "sample", fail)
    assert main(["sample", "--config", "configs/sample/tiny.yaml", "--out", str(tmp_path / "s")]) == code
    err = capsys.readouterr().err
    assert says in err and (("Traceback" in err) == (code == 1)), err


def test_an_out_path_that_cannot_be_a_run_directory_is_refused_before_the_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["sample", "--config", "configs/sample/tiny.yaml", "--out", str(blocker)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["sft", "--config", "configs/sft/tiny.yaml", "--out", str(tmp_path / "r"), "model=./no/such/model"]) == 2
    err = capsys.readouterr().err
    assert "model=./no/such/model" in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()  # the corrected command will start clean
