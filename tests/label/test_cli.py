"""The `label` command line: migrate, users, projects from samples/pairs, stats, errors."""

from __future__ import annotations

import json

from sqlalchemy import func, select

from rlhflab.label import db as dbm
from rlhflab.label.cli import main
from rlhflab.label.models import Task, User


def _cli(*args: str) -> int:
    return main(["label", *args])


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cli_projects_users_stats(tmp_path, capsys, monkeypatch):
    db = f"sqlite:///{tmp_path / 'c.db'}"
    assert _cli("migrate", "--db", db) == 0
    assert "revision 0003" in capsys.readouterr().out
    monkeypatch.setenv("RLHFLAB_LABEL_PASSWORD", "long password")
    assert _cli("add-user", "--db", db, "--username", "root", "--role", "admin") == 0
    assert _cli("add-user", "--db", db, "--username", "root") == 2  # exists
    monkeypatch.setenv("RLHFLAB_LABEL_PASSWORD", "another long one")
    assert _cli("set-password", "--db", db, "--username", "root") == 0
    assert _cli("set-password", "--db", db, "--username", "nobody") == 2
    from rlhflab.label.security import Passwords
    from rlhflab.label.settings import LabelSettings

    with dbm.session_factory(dbm.make_engine(db))() as s:
        stored = s.scalar(select(User.password_hash).where(User.username == "root"))
    assert Passwords(LabelSettings()).verify(stored, "another long one")
    posts = _write(tmp_path / "posts.jsonl", [{"id": f"p{i}", "text": f"post {i}", "title": "t", "subreddit": "s",
                                              "reference": None, "source": "tldr"} for i in range(4)])
    samples = _write(tmp_path / "samples.jsonl", [
        {"post_id": f"p{i}", "policy": pol, "text": f" {pol} {i}", "n_tokens": 3, "index": j, "eos": True,
         "score": None, "extra": {}} for i in range(4) for pol in ("a", "b", "c") for j in range(2)])
    assert _cli("create-project", "--db", db, "--name", "s", "--samples", samples, "--posts", posts,
                "--pairs-per-post", "2", "--ratings", "--policies", "a,b") == 0
    assert "added 8 comparison and 16 rating tasks" in capsys.readouterr().out
    pairs = _write(tmp_path / "pairs.jsonl", [
        {"post": {"id": "x1", "subreddit": "s", "title": "t", "post": "body", "summary": " ref"},
         "summary_a": {"text": " one", "policy": "p"}, "summary_b": {"text": " two", "policy": "q"},
         "gold": {"choice": 1, "confidence": 7}},
        {"post_id": "p1", "summary_a": {"text": " rate", "policy": "p"}}])
    assert _cli("create-project", "--db", db, "--name", "p", "--pairs", pairs, "--posts", posts) == 0
    assert "added 1 comparison and 1 rating tasks" in capsys.readouterr().out
    assert _cli("add-tasks", "--db", db, "--project", "p", "--pairs", pairs, "--posts", posts) == 0
    capsys.readouterr()
    factory = dbm.session_factory(dbm.make_engine(db))
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Task)) == 24 + 4
        assert s.scalar(select(func.count()).select_from(Task).where(Task.is_gold.is_(True))) == 2
        assert s.scalar(select(User.role).where(User.username == "root")) == "admin"
    assert _cli("stats", "--db", db, "--project", "p") == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == {"comparison": 2, "rating": 2, "best_of_n": 0, "gold": 2,
                                                           "complete": 0}


def test_cli_errors_are_one_line(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'c.db'}"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"post_id": "p1", "summary_a": {"text": " a"}}\n{"post": 3}\n')
    assert _cli("create-project", "--db", db, "--name", "x", "--pairs", str(bad)) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "field 'post'" in err and "Traceback" not in err
    assert _cli("export", "--db", db, "--project", "nope", "--out", str(tmp_path / "o.jsonl")) == 2
    assert "no project 'nope'" in capsys.readouterr().err
    assert _cli("migrate", "--db", "mysql://x/y") == 2
    assert "unsupported database URL" in capsys.readouterr().err
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"post_id": "p1", "policy": "a", "text": " a", "n_tokens": 1}\n')
    posts = tmp_path / "p.jsonl"
    posts.write_text('{"id": "p1", "text": "t"}\n')
    assert _cli("create-project", "--db", db, "--name", "y", "--samples", str(samples), "--posts", str(posts)) == 2
    assert "no tasks" in capsys.readouterr().err


def test_url_mapping():
    assert dbm.normalize_url("postgresql://u:p@h/d") == "postgresql+psycopg://u:p@h/d"
    assert dbm.normalize_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert dbm.normalize_url("sqlite:///x.db") == "sqlite:///x.db"
    assert dbm.normalize_url("x.db") == "sqlite:///x.db"
