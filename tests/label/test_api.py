"""The JSON API end to end, against SQLite and against PostgreSQL (when RLHFLAB_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import func, select

from rlhflab.label.db import current_revision
from rlhflab.label.models import Answer, Assignment, utcnow
from labelkit import Api, answer_next, comparison_tasks, make_app, post_row, setup_project

USERS = {"root": "admin", "ann": "labeler", "bob": "labeler", "cat": "labeler", "dan": "labeler"}


def test_health_and_migrations(db_url):
    app = make_app(db_url)
    r = Api(app).get("/api/health")
    assert r.status_code == 200 and r.json() == {"ok": True, "revision": "0003"}
    assert current_revision(app.state.ctx.engine) == "0003"


def test_labelling_flow_k_and_no_repeats(db_url):
    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = setup_project(admin, n_tasks=3, labels_per_task=2, gold_rate=0.0)
    labelers = {u: Api(app).login(u) for u in ("ann", "bob", "cat", "dan")}
    seen: dict[str, list[int]] = {u: [] for u in labelers}
    for _ in range(4):
        for u, api in labelers.items():
            a = answer_next(api, pid)
            if a is not None:
                seen[u].append(a["task_id"])
    for u, tasks in seen.items():
        assert len(tasks) == len(set(tasks)), f"{u} saw a task twice"
    all_answers = [t for tasks in seen.values() for t in tasks]
    assert len(all_answers) == 3 * 2  # every task exactly k=2 times, then nothing is left
    assert all(all_answers.count(t) == 2 for t in set(all_answers))
    stats = admin.get(f"/api/projects/{pid}/dashboard").json()
    assert stats["answers"] == 6 and stats["tasks"]["complete"] == 3 and stats["shared_tasks"] == 3
    # everyone said "left", and left/right was a coin flip per assignment: kappa is whatever the coins made it
    assert stats["fleiss_kappa"] is None or -1.0 <= stats["fleiss_kappa"] <= 1.0


def test_open_assignment_is_returned_again_then_expires(db_url):
    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = setup_project(admin, n_tasks=2, labels_per_task=1, gold_rate=0.0, expiry_s=60)
    ann, bob = Api(app).login("ann"), Api(app).login("bob")
    first = ann.post(f"/api/projects/{pid}/next").json()["assignment"]
    again = ann.post(f"/api/projects/{pid}/next").json()["assignment"]
    assert first["assignment_id"] == again["assignment_id"]  # a reload shows the same task
    b1 = bob.post(f"/api/projects/{pid}/next").json()["assignment"]
    assert b1["task_id"] != first["task_id"]  # ann's slot is taken (k=1)
    assert bob.post(f"/api/assignments/{b1['assignment_id']}/answer", {"side": "right", "confidence": 8}
                    ).status_code == 201
    assert bob.post(f"/api/projects/{pid}/next").json()["assignment"] is None
    # ann abandons her assignment: once it expires, her slot is free again for bob
    ctx = app.state.ctx
    with ctx.tx() as s:
        a = s.get(Assignment, first["assignment_id"])
        a.expires_at = utcnow() - timedelta(seconds=1)
    b2 = bob.post(f"/api/projects/{pid}/next").json()["assignment"]
    assert b2 is not None and b2["task_id"] == first["task_id"]
    # ann never sees it again, but her late answer is still kept (answers are never lost)
    assert ann.post(f"/api/projects/{pid}/next").json()["assignment"] is None
    r = ann.post(f"/api/assignments/{first['assignment_id']}/answer", {"side": "left", "confidence": 3})
    assert r.status_code == 201


def test_idempotent_answers_and_isolation(db_url):
    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = setup_project(admin, n_tasks=2, labels_per_task=2, gold_rate=0.0)
    ann, bob = Api(app).login("ann"), Api(app).login("bob")
    a = ann.post(f"/api/projects/{pid}/next").json()["assignment"]
    url = f"/api/assignments/{a['assignment_id']}/answer"
    body = {"side": "left", "confidence": 1, "note": "clear", "idempotency_key": "k1"}
    r1, r2 = ann.post(url, body), ann.post(url, body)
    assert (r1.status_code, r1.json()["created"]) == (201, True)
    assert (r2.status_code, r2.json()["created"]) == (200, False)
    assert r1.json()["answer_id"] == r2.json()["answer_id"]
    # bob can neither answer nor even learn about ann's assignment
    r = bob.post(url, {"side": "right", "confidence": 9})
    assert r.status_code == 404
    with app.state.ctx.tx() as s:
        assert s.scalar(select(func.count()).select_from(Answer)) == 1


def test_answer_validation_is_4xx(db_url):
    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = setup_project(admin, n_tasks=1, gold_rate=0.0)
    ann = Api(app).login("ann")
    a = ann.post(f"/api/projects/{pid}/next").json()["assignment"]
    url = f"/api/assignments/{a['assignment_id']}/answer"
    bad = [{"side": "left"}, {"side": "left", "confidence": 7}, {"side": "right", "confidence": 2},
           {"side": "up", "confidence": 2}, {"side": "left", "confidence": 0}, {"side": "left", "confidence": 10},
           {"side": "left", "confidence": "2"}, {"side": "left", "confidence": 2.0},
           {"side": "left", "confidence": 2, "extra": 1}, {"side": "left", "confidence": 2, "time_ms": -1},
           {"side": "left", "confidence": 2, "note": "x" * 5001}, {"side": "left", "confidence": 2, "note": "a\x00"},
           {"ratings": {"overall": 1, "accuracy": 1, "coverage": 1, "coherence": 1}}, [], "x", None]
    for body in bad:
        r = ann.post(url, body)
        assert r.status_code == 422, (body, r.status_code, r.text)
    r = ann.client.post(url, content=b"{not json", headers={"X-CSRF-Token": ann.token,
                                                           "Content-Type": "application/json"})
    assert r.status_code == 422
    assert ann.post("/api/assignments/999999/answer", {"side": "left", "confidence": 2}).status_code == 404
    assert ann.post("/api/assignments/0/answer", {"side": "left", "confidence": 2}).status_code == 422
    assert ann.post("/api/assignments/99999999999999999999/answer", {"side": "left", "confidence": 2}
                    ).status_code == 422
    assert ann.post(f"/api/projects/{pid + 100}/next").status_code == 404
    assert ann.post(url, {"side": "left", "confidence": 5}).status_code == 201  # 5 = no preference, left chosen


def test_left_right_randomised_and_recorded(db_url):
    app = make_app(db_url, {"root": "admin", **{f"l{i}": "labeler" for i in range(12)}})
    admin = Api(app).login("root")
    pid = setup_project(admin, n_tasks=1, labels_per_task=12, gold_rate=0.0)
    for i in range(12):
        api = Api(app).login(f"l{i}")
        a = api.post(f"/api/projects/{pid}/next").json()["assignment"]
        # everyone prefers summary A, wherever it is shown
        side, conf = ("left", 2) if a["left"].strip().startswith("summary A") else ("right", 8)
        assert api.post(f"/api/assignments/{a['assignment_id']}/answer", {"side": side, "confidence": conf}
                        ).status_code == 201
    rows = [json.loads(line) for line in admin.get(f"/api/projects/{pid}/export/comparisons").text.splitlines()]
    assert len(rows) == 12
    orders = {r["extra"]["order"] for r in rows}
    assert orders == {"AB", "BA"}  # 12 fair coins all alike: p = 1/2048
    for r in rows:  # the export keeps the screen order, and the choice/confidence follow it
        chosen = r["summaries"][r["choice"]]
        assert chosen["text"].startswith(" summary A") and chosen["policy"] == "sft"
        assert (r["extra"]["confidence"] < 5) == (r["choice"] == 0)
    stats = admin.get(f"/api/projects/{pid}/dashboard").json()
    assert all(lab["peer_agreement"] == 1.0 for lab in stats["labelers"])


def test_gold_tasks_and_flags(db_url):
    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    r = admin.post("/api/projects", {"name": "gold", "gold_rate": 1.0, "labels_per_task": 1,
                                     "flag_threshold": 0.5, "min_flag_answers": 2})
    pid = r.json()["id"]
    assert admin.post(f"/api/projects/{pid}/tasks", {"tasks": comparison_tasks(3, gold=True)}).status_code == 201
    ann, bob = Api(app).login("ann"), Api(app).login("bob")
    for _ in range(3):
        for api, agree in ((ann, True), (bob, False)):
            r = api.post(f"/api/projects/{pid}/next").json()["assignment"]
            a_left = r["left"].strip().startswith("summary A")
            side = "left" if a_left == agree else "right"  # gold says A (choice 0)
            conf = 2 if side == "left" else 8
            assert api.post(f"/api/assignments/{r['assignment_id']}/answer", {"side": side, "confidence": conf}
                            ).status_code == 201
    stats = {lab["user"]: lab for lab in admin.get(f"/api/projects/{pid}/dashboard").json()["labelers"]}
    assert stats["ann"]["gold_agreement"] == 1.0 and not stats["ann"]["flagged"]
    assert stats["bob"]["gold_agreement"] == 0.0 and stats["bob"]["flagged"]
    assert "gold agreement" in stats["bob"]["flags"][0]
    # the threshold is a query parameter too
    stats0 = admin.get(f"/api/projects/{pid}/dashboard?threshold=0").json()["labelers"]
    assert not any(lab["flagged"] for lab in stats0)
    # gold can be set on an existing task; a confidence that contradicts the choice is refused
    tid = admin.post(f"/api/projects/{pid}/tasks", {"tasks": comparison_tasks(1, start=10)}).json()["task_ids"][0]
    assert admin.post(f"/api/tasks/{tid}/gold", {"choice": 1, "confidence": 2}).status_code == 422
    r = admin.post(f"/api/tasks/{tid}/gold", {"choice": 1, "confidence": 8})
    assert r.status_code == 200 and r.json()["is_gold"] and r.json()["gold_choice"] == 1


def test_rating_tasks(db_url):
    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = admin.post("/api/projects", {"name": "ratings", "gold_rate": 0.0}).json()["id"]
    r = admin.post(f"/api/projects/{pid}/tasks",
                   {"posts": [post_row(1)], "tasks": [{"post_id": "t3_1", "summary_a": {"text": " s", "policy": "p"}}]})
    assert r.status_code == 201
    ann = Api(app).login("ann")
    a = ann.post(f"/api/projects/{pid}/next").json()["assignment"]
    assert a["kind"] == "rating" and a["summary"] == " s" and a["left"] is None
    url = f"/api/assignments/{a['assignment_id']}/answer"
    assert ann.post(url, {"ratings": {"overall": 8, "accuracy": 1, "coverage": 1, "coherence": 1}}).status_code == 422
    assert ann.post(url, {"side": "left", "confidence": 2}).status_code == 422
    assert ann.post(url, {"ratings": {"overall": 7, "accuracy": 6, "coverage": 2, "coherence": 1},
                          "note": "fine"}).status_code == 201
    rows = [json.loads(x) for x in admin.get(f"/api/projects/{pid}/export/ratings").text.splitlines()]
    assert rows[0]["summary"]["axes"] == {"overall": 7, "accuracy": 6, "coverage": 2, "coherence": 1}
    assert rows[0]["worker"] == "ann" and rows[0]["info"]["id"] == "t3_1"


def test_import_export_round_trip_via_api(db_url, shared_data):
    from rlhflab.label.formats import read_jsonl

    rows = [row for _, row in read_jsonl(shared_data / "comparisons" / "batch13.jsonl.gz")][:60]
    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = admin.post("/api/projects", {"name": "imported"}).json()["id"]
    r = admin.post(f"/api/projects/{pid}/import", {"mode": "answers", "rows": rows})
    assert r.status_code == 201, r.text
    assert r.json()["answers"] == 60
    out = [json.loads(x) for x in admin.get(f"/api/projects/{pid}/export/comparisons").text.splitlines()]
    assert len(out) == 60
    for src, dst in zip(rows, out):
        assert dst["info"] == {k: src["info"][k] for k in ("id", "post", "title", "subreddit")}
        assert [s["text"] for s in dst["summaries"]] == [s["text"] for s in src["summaries"]]
        assert [s["policy"] for s in dst["summaries"]] == [s["policy"] for s in src["summaries"]]
        assert (dst["choice"], dst["worker"], dst["split"]) == (src["choice"], src["worker"], src["split"])
        assert dst["extra"]["confidence"] == src["extra"]["confidence"]
    # as gold: every row becomes a gold task
    pid2 = admin.post("/api/projects", {"name": "gold-import"}).json()["id"]
    r = admin.post(f"/api/projects/{pid2}/import", {"mode": "gold", "rows": rows[:5]})
    assert r.json() == {"rows": 5, "tasks": 5, "answers": 0, "skipped_duplicates": 0}
    assert admin.get(f"/api/projects/{pid2}/dashboard").json()["tasks"]["gold"] == 5
    # a worker name that is a real account here is refused (labels are never filed under someone else)
    clash = dict(rows[0], worker="ann")
    pid3 = admin.post("/api/projects", {"name": "clash"}).json()["id"]
    r = admin.post(f"/api/projects/{pid3}/import", {"mode": "answers", "rows": [clash]})
    assert r.status_code == 409 and "ann" in r.json()["detail"]
    bad = dict(rows[0], choice=2)
    r = admin.post(f"/api/projects/{pid2}/import", {"mode": "gold", "rows": [bad]})
    assert r.status_code == 422 and "choice" in r.json()["detail"]


def test_admin_user_management(db_url):
    app = make_app(db_url, {"root": "admin"})
    admin = Api(app).login("root")
    r = admin.post("/api/users", {"username": "eve", "password": "longenough1", "role": "labeler"})
    assert r.status_code == 201
    assert admin.post("/api/users", {"username": "eve", "password": "longenough1"}).status_code == 409
    assert admin.post("/api/users", {"username": "x y", "password": "longenough1"}).status_code == 422
    assert admin.post("/api/users", {"username": "short", "password": "123"}).status_code == 422
    eve = Api(app).login("eve", "longenough1")
    assert eve.get("/api/me").json()["role"] == "labeler"
    uid = r.json()["id"]
    assert admin.patch(f"/api/users/{uid}", {"active": False}).status_code == 200
    assert eve.get("/api/me").status_code == 401  # deactivated: the session no longer works
    c = Api(app)
    c.token = c.client.get("/api/csrf").json()["csrf_token"]
    assert c.post("/api/login", {"username": "eve", "password": "longenough1"}).status_code == 401


def test_project_validation(db_url):
    app = make_app(db_url, {"root": "admin"})
    admin = Api(app).login("root")
    for body in ({"name": ""}, {"name": "x", "labels_per_task": 0}, {"name": "x", "gold_rate": 1.5},
                 {"name": "x", "expiry_s": 1}, {"name": "x", "bogus": 1}, {"name": 3}):
        assert admin.post("/api/projects", body).status_code == 422, body
    pid = admin.post("/api/projects", {"name": "x"}).json()["id"]
    assert admin.post("/api/projects", {"name": "x"}).status_code == 409
    # tasks: a post_id with no post, both post and post_id, empty summary, gold on a rating task
    bad_tasks = [
        {"post_id": "nope", "summary_a": {"text": " a"}, "summary_b": {"text": " b"}},
        {"post": post_row(1), "post_id": "t3_1", "summary_a": {"text": " a"}},
        {"post": post_row(1), "summary_a": {"text": "   "}},
        {"post": post_row(1), "summary_a": {"text": " a"}, "gold": {"choice": 0}},
    ]
    for t in bad_tasks:
        r = admin.post(f"/api/projects/{pid}/tasks", {"tasks": [t]})
        assert r.status_code == 422, (t, r.text)
    assert admin.patch(f"/api/projects/{pid}", {"active": False}).json()["active"] is False


def test_tasks_from_samples(db_url):
    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = admin.post("/api/projects", {"name": "samples", "gold_rate": 0.0}).json()["id"]
    samples = [{"post_id": f"t3_{i}", "policy": pol, "text": f" {pol} {i}.{j}", "n_tokens": 3, "index": j}
               for i in range(3) for pol in ("sft", "ppo", "ref") for j in range(2)]
    body = {"posts": [post_row(i) for i in range(3)], "samples": samples, "policies": ["sft", "ppo"],
            "pairs_per_post": 2, "seed": 7}
    r = admin.post(f"/api/projects/{pid}/samples", body)
    assert r.status_code == 201 and r.json()["created"] == 6
    ann = Api(app).login("ann")
    seen = set()
    while (a := answer_next(ann, pid)) is not None:
        seen.add((a["left"], a["right"]))
        assert {a["left"].split()[0], a["right"].split()[0]} == {"sft", "ppo"}  # the two chosen policies only
    assert len(seen) == 6  # never the same two samples twice
    r = admin.post(f"/api/projects/{pid}/samples", {**body, "pairs_per_post": 50})
    assert r.json()["created"] == 12  # only 2 x 2 distinct sample pairs per post exist
    r = admin.post(f"/api/projects/{pid}/samples", {**body, "ratings": True, "comparisons": False})
    assert r.json()["created"] == 12  # one rating task per sample of the two policies (3 posts x 2 x 2)
    r = admin.post(f"/api/projects/{pid}/samples", {**body, "policies": ["sft"]})
    assert r.status_code == 422  # one policy: no pairs
    r = admin.post(f"/api/projects/{pid}/samples", {**body, "posts": [post_row(0)]})
    assert r.status_code == 422 and "not in the posts" in r.json()["detail"]
