"""Best-of-N tasks (Ziegler et al. 2019: one query, N continuations, the labeler picks the best) end to end over
HTTP and the command line, on SQLite and PostgreSQL: import a tasks file, label, export, and read the export back
with the data layer's own loader (`rlhflab.data.loaders.load_best_of_n`, what the reward model trains from)."""

from __future__ import annotations

import json
import re

import pytest

from rlhflab.label.cli import main as label_main
from labelkit import PASSWORD, Api, make_app, start_labelling

loaders = pytest.importorskip("rlhflab.data.loaders", reason="rlhflab.data.loaders is not available")

USERS = {"root": "admin", "ann": "labeler", "bob": "labeler"}
QUERY = "It was a bright cold day in April, and the clocks were striking thirteen."


def task_rows(n_tasks: int = 1, n: int = 4) -> list[dict]:
    """A best-of-N tasks file's rows: the schema's rows without `best` (samples as objects or plain strings)."""
    return [{"id": f"q{i}", "query": f"{QUERY} ({i})",
             "samples": [{"text": f" continuation {j} of {i}.", "policy": f"pi{j}", "eos": j % 2 == 0} for j in
                         range(n - 1)] + [f" plain continuation {n - 1} of {i}."]}
            for i in range(n_tasks)]


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _upload(client, pid: int, token: str, name: str, data: bytes, kind: str = "pairs", mode: str = "tasks"):
    return client.post(f"/admin/projects/{pid}/upload", data={"kind": kind, "mode": mode, "csrf_token": token},
                       files={"file": (name, data)}, headers={"Accept": "text/html"}, follow_redirects=False)


def _project(admin: Api, name: str = "books", **params) -> int:
    r = admin.post("/api/projects", {"name": name, "gold_rate": 0.0, **params})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_best_of_4_upload_label_export_load(db_url, tmp_path):
    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = _project(admin)
    # the tasks file goes in through the admin page's upload form (the kind is told from its first row)
    assert _upload(admin.client, pid, admin.token, "best_of_4.jsonl", _jsonl(task_rows())).status_code == 303
    stats = admin.get(f"/api/projects/{pid}/dashboard").json()
    assert stats["tasks"]["best_of_n"] == 1 and stats["tasks"]["comparison"] == 0

    ann = Api(app).login("ann")
    a = ann.post(f"/api/projects/{pid}/next").json()["assignment"]
    assert a["kind"] == "best_of_n" and a["post"]["text"] == f"{QUERY} (0)"
    assert a["choices"] == [s if isinstance(s, str) else s["text"] for s in task_rows()[0]["samples"]]
    assert a["left"] is None and a["summary"] is None
    url = f"/api/assignments/{a['assignment_id']}/answer"
    r = ann.post(url, {"best": 4})
    assert r.status_code == 422
    assert "best must be between 0 and 3 (this task has 4 continuations), got 4" in r.json()["detail"]
    for body in ({"best": -1}, {"best": 16}, {"best": "2"}, {"best": 2.0}, {}, {"side": "left", "confidence": 2},
                 {"best": 2, "side": "left"}, {"ratings": {"overall": 1, "accuracy": 1, "coverage": 1, "coherence": 1}}):
        assert ann.post(url, body).status_code == 422, body
    r = ann.post(url, {"best": 2, "note": "the only one that stays on topic", "time_ms": 4321})
    assert r.status_code == 201, r.text
    assert ann.post(url, {"best": 2}).status_code == 200  # a retry: stored once
    assert ann.post(f"/api/projects/{pid}/next").json()["assignment"] is None  # nothing twice

    text = admin.get(f"/api/projects/{pid}/export/best-of-n").text
    out = tmp_path / "best_of_n.jsonl"
    out.write_text(text)
    [label] = loaders.load_best_of_n(out)
    assert label.best == 2 and label.worker == "ann" and label.batch == "books"
    assert label.post.id == "q0" and label.post.text == f"{QUERY} (0)"
    assert [c.text for c in label.samples] == [f" continuation {j} of 0." for j in range(3)] + [
        " plain continuation 3 of 0."]
    assert [c.policy for c in label.samples] == ["pi0", "pi1", "pi2", ""]
    assert [c.eos for c in label.samples] == [True, False, True, True]
    assert label.chosen.text == " continuation 2 of 0."
    # the page's 4321 ms are kept only up to the server's assigned->answered time (a test answers in far less)
    assert label.extra["note"] == "the only one that stays on topic" and 0 <= label.extra["time_ms"] <= 4321
    assert loaders.labels_kind(out) == "best_of_n"
    # the admin page's export link serves the same file; the comparisons export has none of it
    assert admin.get(f"/admin/projects/{pid}/export/best_of_n.jsonl").text == text
    assert admin.get(f"/api/projects/{pid}/export/comparisons").text == ""
    dash = admin.get(f"/api/projects/{pid}/dashboard").json()
    assert dash["answers"] == 1 and dash["labelers"][0]["user"] == "ann" and dash["labelers"][0]["answers"] == 1


def test_best_of_n_json_endpoint_and_html_form(db_url):
    from fastapi.testclient import TestClient

    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = _project(admin, labels_per_task=2)
    r = admin.post(f"/api/projects/{pid}/best-of-n", {"rows": task_rows(2, n=3)})
    assert r.status_code == 201 and r.json()["created"] == 2
    r = admin.post(f"/api/projects/{pid}/best-of-n", {"rows": [{"query": "q", "samples": [" only one"]}]})
    assert r.status_code == 422 and "rows:1" in r.json()["detail"] and "samples" in r.json()["detail"]
    r = admin.post(f"/api/projects/{pid}/best-of-n", {"rows": [dict(task_rows()[0], best=1)]})
    assert r.status_code == 422 and "field 'best'" in r.json()["detail"]

    bob = TestClient(app)
    token = re.search(r'name="csrf_token" value="([^"]+)"', bob.get("/login").text).group(1)
    bob.post("/login", data={"username": "bob", "password": PASSWORD, "csrf_token": token})
    token = re.search(r'name="csrf_token" value="([^"]+)"', bob.get("/label").text).group(1)
    page = start_labelling(bob, pid, token)
    assert 'data-kind="best_of_n"' in page and 'id="choice-3"' in page and 'id="choice-4"' not in page
    assert "plain continuation 2 of" in page
    aid = re.search(r'name="assignment_id" value="(\d+)"', page).group(1)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # the session's, after login
    r = bob.post(f"/label/{pid}/answer", data={"assignment_id": aid, "best": "3", "csrf_token": token},
                 headers={"Accept": "text/html"})
    assert r.status_code == 422 and "between 0 and 2" in r.text  # a best-of-3 task has no fourth continuation
    r = bob.post(f"/label/{pid}/answer", data={"assignment_id": aid, "best": "1", "time_ms": "800",
                                               "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    assert "answered: 1" in bob.get(f"/label/{pid}").text
    rows = [json.loads(x) for x in admin.get(f"/api/projects/{pid}/export/best-of-n").text.splitlines()]
    assert [(r["worker"], r["best"], len(r["samples"])) for r in rows] == [("bob", 1, 3)]


def test_best_of_n_labels_import_round_trip_and_errors(db_url):
    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = _project(admin)
    labels = [dict(t, best=i % 4, worker=f"w{i % 2}", split="train", extra={"note": "ok"} if i == 0 else {})
              for i, t in enumerate(task_rows(3))]
    r = admin.post(f"/api/projects/{pid}/import", {"mode": "answers", "rows": labels})
    assert r.status_code == 201 and r.json() == {"rows": 3, "tasks": 3, "answers": 3, "skipped_duplicates": 0}
    out = [json.loads(x) for x in admin.get(f"/api/projects/{pid}/export/best-of-n").text.splitlines()]
    assert [(o["id"], o["query"], o["best"], o["worker"], o["split"]) for o in out] == [
        (x["id"], x["query"], x["best"], x["worker"], "train") for x in labels]
    assert out[0]["samples"][3] == {"text": " plain continuation 3 of 0.", "policy": "", "eos": True}
    assert out[0]["extra"]["note"] == "ok"
    # a label whose best is out of range is refused with its line and field; nothing of that file is stored
    bad = [labels[0], dict(labels[1], best=4)]
    r = admin.post(f"/api/projects/{pid}/import", {"mode": "answers", "rows": bad})
    assert r.status_code == 422 and r.json()["detail"] == "rows:2: field 'best': must be 0–3, got 4"
    # as gold: the best is the researchers' answer, and a labeler who agrees shows it on the dashboard
    pid2 = _project(admin, "gold", gold_rate=1.0, labels_per_task=1)
    r = admin.post(f"/api/projects/{pid2}/import", {"mode": "gold", "rows": labels[:1]})
    assert r.json()["tasks"] == 1
    ann = Api(app).login("ann")
    a = ann.post(f"/api/projects/{pid2}/next").json()["assignment"]
    assert ann.post(f"/api/assignments/{a['assignment_id']}/answer", {"best": 0}).status_code == 201
    [lab] = admin.get(f"/api/projects/{pid2}/dashboard").json()["labelers"]
    assert (lab["user"], lab["gold_answers"], lab["gold_agreement"]) == ("ann", 1, 1.0)
    assert admin.post(f"/api/tasks/{a['task_id']}/gold", {"choice": 4}).status_code == 422
    assert admin.post(f"/api/tasks/{a['task_id']}/gold", {"choice": 3}).json()["gold_choice"] == 3


def test_upload_errors_name_the_line(sqlite_url):
    app = make_app(sqlite_url, USERS)
    admin = Api(app).login("root")
    pid = _project(admin)
    rows = task_rows(2)
    rows[1]["samples"] = rows[1]["samples"][:1]
    r = _upload(admin.client, pid, admin.token, "bon.jsonl", _jsonl(rows))
    assert r.status_code == 422 and "bon.jsonl:2" in r.text and "expected 2–16 samples, got 1" in r.text
    labels = [dict(t, best=5) for t in task_rows(1)]
    r = _upload(admin.client, pid, admin.token, "labels.jsonl", _jsonl(labels), kind="comparisons", mode="answers")
    assert r.status_code == 422 and "labels.jsonl:1" in r.text and "field &#39;best&#39;" in r.text
    assert admin.get(f"/api/projects/{pid}/dashboard").json()["tasks"]["best_of_n"] == 0


def _cli(*args: str) -> int:
    return label_main(["label", *args])


def test_cli_add_tasks_export_and_errors(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'c.db'}"
    tasks = tmp_path / "best_of_4.jsonl"
    tasks.write_bytes(_jsonl(task_rows(2)))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"post": {"id": "p", "text": "post"}, "summary_a": {"text": " a"},
                                 "summary_b": {"text": " b"}}) + "\n")
    assert _cli("create-project", "--db", db, "--name", "books", "--gold-rate", "0", "--tasks", str(tasks)) == 0
    assert "added 2 best-of-N tasks (N = 4)" in capsys.readouterr().out
    from rlhflab.label import db as dbm
    from rlhflab.label import service
    from rlhflab.label.models import User
    from sqlalchemy import select

    factory = dbm.session_factory(dbm.make_engine(db))
    with dbm.session_scope(factory) as s:
        ann = service.create_user(s, None, "ann", None, role="external")
        project = service.get_project(s, 1)
        for best in (2, 0):
            a = service.next_assignment(s, project, ann)
            service.submit_answer(s, ann, a.id, best=best)
        assert s.scalar(select(User.username)) == "ann"
    out = tmp_path / "labels.jsonl.gz"
    assert _cli("export", "--db", db, "--project", "books", "--out", str(out)) == 0  # the only kind: best-of-n
    assert "wrote 2 best-of-N labels" in capsys.readouterr().out
    labels = loaders.load_best_of_n(out)
    assert sorted(b.best for b in labels) == [0, 2] and all(len(b.samples) == 4 for b in labels)
    # a labels import of that export gives the same labels back
    assert _cli("import", "--db", db, "--project", "again", "--create", "--file", str(out)) == 0
    assert json.loads(capsys.readouterr().out)["answers"] == 2
    back = tmp_path / "back.jsonl"
    assert _cli("export", "--db", db, "--project", "again", "--out", str(back), "--kind", "best-of-n") == 0
    assert [(b.post.id, b.best, b.samples) for b in loaders.load_best_of_n(back)] == [
        (b.post.id, b.best, b.samples) for b in labels]
    # a project with both kinds must say which to export
    assert _cli("add-tasks", "--db", db, "--project", "books", "--pairs", str(pairs)) == 0
    capsys.readouterr()
    assert _cli("export", "--db", db, "--project", "books", "--out", str(tmp_path / "x.jsonl")) == 2
    assert "--kind" in capsys.readouterr().err
    assert _cli("export", "--db", db, "--project", "books", "--out", str(tmp_path / "x.jsonl"), "--kind",
                "comparisons") == 0
    assert "wrote 0 comparisons" in capsys.readouterr().out
    # bad rows: the file and line, never a traceback
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(_jsonl([task_rows()[0], {"query": "q", "samples": [" one"]}]))
    assert _cli("add-tasks", "--db", db, "--project", "books", "--tasks", str(bad)) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2: field 'samples': expected 2–16 samples, got 1" in err and "Traceback" not in err
    bad.write_bytes(_jsonl([dict(task_rows()[0], best=1), dict(task_rows()[0], best=9)]))
    assert _cli("import", "--db", db, "--project", "books", "--file", str(bad)) == 2
    assert "bad.jsonl:2: field 'best': must be 0–3, got 9" in capsys.readouterr().err
    assert _cli("add-tasks", "--db", db, "--project", "books", "--tasks", str(bad)) == 2  # labels are no tasks
    assert "bad.jsonl:1: field 'best'" in capsys.readouterr().err
