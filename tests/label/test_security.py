"""Security: escaping, roles, CSRF, SQL injection, sessions, password storage."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import inspect, select

from rlhflab.label.models import User
from labelkit import PASSWORD, Api, make_app, post_row, start_labelling

USERS = {"root": "admin", "ann": "labeler", "bob": "labeler"}
XSS = '<script>alert("xss")</script><img src=x onerror="alert(1)">'


@pytest.fixture
def app(sqlite_url):
    return make_app(sqlite_url, USERS)


def _project(admin: Api, name: str, summary_a: str, summary_b: str, post_text: str | None = None) -> int:
    pid = admin.post("/api/projects", {"name": name, "gold_rate": 0.0}).json()["id"]
    r = admin.post(f"/api/projects/{pid}/tasks", {"tasks": [
        {"post": {**post_row(1, post_text), "title": XSS, "subreddit": XSS}, "summary_a": {"text": summary_a},
         "summary_b": {"text": summary_b}}]})
    assert r.status_code == 201, r.text
    return pid


def test_xss_in_summaries_and_posts_is_shown_as_text(app):
    admin = Api(app).login("root")
    pid = _project(admin, XSS, XSS, " fine", post_text=XSS)
    ann = Api(app).login("ann")
    html = start_labelling(ann.client, pid, ann.token)
    page = ann.get(f"/label/{pid}")
    assert page.status_code == 200 and page.text == html
    assert "<script>alert" not in html and "onerror=\"alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#34;xss&#34;)&lt;/script&gt;&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html
    # the only scripts on the page are our own file
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/label.js">']
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # the researcher's pages escape the project name too
    for url in ("/admin", f"/admin/projects/{pid}"):
        html = admin.get(url).text
        assert "<script>alert" not in html and "&lt;script&gt;" in html


def test_labeler_gets_403_on_every_admin_endpoint(app):
    admin = Api(app).login("root")
    pid = _project(admin, "p", " a", " b")
    ann = Api(app).login("ann")
    spec = app.openapi()
    admin_ops = [(path, method) for path, ops in spec["paths"].items() for method, op in ops.items()
                 if "admin" in op.get("tags", [])]
    assert len(admin_ops) >= 10
    for path, method in admin_ops:
        url = path.replace("{project_id}", str(pid)).replace("{task_id}", "1").replace("{user_id}", "1")
        r = ann.client.request(method.upper(), url, json={}, headers={"X-CSRF-Token": ann.token})
        assert r.status_code == 403, (method, url, r.status_code)
    for url in ("/admin", f"/admin/projects/{pid}", f"/admin/projects/{pid}/export/comparisons.jsonl"):
        assert ann.get(url).status_code == 403, url
    r = ann.client.post("/admin/users", data={"username": "mallory", "password": "password123",
                                              "role": "admin", "csrf_token": ann.token})
    assert r.status_code == 403
    # and anonymous callers get 401 (API) or the login page (HTML)
    anon = Api(app)
    assert anon.get(f"/api/projects/{pid}/dashboard").status_code == 401
    r = anon.client.get("/admin", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"


def test_post_without_csrf_token_is_rejected(app):
    admin = Api(app).login("root")
    pid = _project(admin, "p", " a", " b")
    ann = Api(app).login("ann")
    a = ann.post(f"/api/projects/{pid}/next").json()["assignment"]
    url = f"/api/assignments/{a['assignment_id']}/answer"
    body = {"side": "left", "confidence": 2}
    assert ann.client.post(url, json=body).status_code == 403  # no token
    assert ann.client.post(url, json=body, headers={"X-CSRF-Token": "forged"}).status_code == 403
    other = Api(app).login("bob")  # a valid token of another session is no good either
    assert ann.client.post(url, json=body, headers={"X-CSRF-Token": other.token}).status_code == 403
    # HTML forms: the hidden field is required
    form = {"assignment_id": str(a["assignment_id"]), "side": "left", "confidence": "2"}
    assert ann.client.post(f"/label/{pid}/answer", data=form).status_code == 403
    assert ann.client.post(f"/label/{pid}/answer", data={**form, "csrf_token": "nope"}).status_code == 403
    # login (JSON and form) needs the pre-session token too
    fresh = Api(app)
    assert fresh.client.post("/api/login", json={"username": "ann", "password": PASSWORD}).status_code == 403
    assert fresh.client.post("/login", data={"username": "ann", "password": PASSWORD}).status_code == 403
    assert admin.client.post("/api/users", json={"username": "m", "password": "password123"}).status_code == 403
    # ... and with the token everything works
    r = ann.client.post(f"/label/{pid}/answer", data={**form, "csrf_token": ann.token}, follow_redirects=False)
    assert r.status_code == 303


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sql_injection_strings_are_stored_literally(db, request):
    url = request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url")
    app = make_app(url, USERS)
    admin = Api(app).login("root")
    evil = ["'; DROP TABLE users; --", "\" OR \"1\"=\"1", "1; DELETE FROM answers WHERE 1=1", "%' OR '%'='",
            "Robert'); DROP TABLE tasks;--"]
    pid = admin.post("/api/projects", {"name": evil[0], "gold_rate": 0.0, "instructions": evil[1]}).json()["id"]
    tasks = [{"post": {"id": e, "text": e, "title": e, "subreddit": e[:50]}, "summary_a": {"text": e, "policy": e},
              "summary_b": {"text": e + " b", "policy": e}} for e in evil]
    assert admin.post(f"/api/projects/{pid}/tasks", {"tasks": tasks}).status_code == 201
    ann = Api(app).login("ann")
    for _ in evil:
        a = ann.post(f"/api/projects/{pid}/next").json()["assignment"]
        r = ann.post(f"/api/assignments/{a['assignment_id']}/answer",
                     {"side": "left", "confidence": 1, "note": evil[2]})
        assert r.status_code == 201
    assert admin.get("/api/projects").json()[0]["name"] == evil[0]
    rows = [json.loads(x) for x in admin.get(f"/api/projects/{pid}/export/comparisons").text.splitlines()]
    assert sorted(r["info"]["id"] for r in rows) == sorted(evil)
    assert all(r["info"]["post"] == r["info"]["id"] and r["extra"]["note"] == evil[2] for r in rows)
    # logins with injection strings simply fail
    c = Api(app)
    token = c.client.get("/api/csrf").json()["csrf_token"]
    for name in ("' OR '1'='1", "root' --", "root\" --"):
        r = c.client.post("/api/login", json={"username": name, "password": "' OR '1'='1"},
                          headers={"X-CSRF-Token": token})
        assert r.status_code == 401
    tables = set(inspect(app.state.ctx.engine).get_table_names())
    assert {"users", "tasks", "answers", "projects"} <= tables


def test_sessions_and_passwords(app):
    with app.state.ctx.tx() as s:
        hashes = [u.password_hash for u in s.scalars(select(User))]
    assert all(h.startswith("$argon2id$") and PASSWORD not in h for h in hashes)
    ann = Api(app).login("ann")
    cookie = ann.client.cookies.get("rlhflab_session")
    assert cookie
    # a tampered cookie is no session at all
    forged = Api(app)
    forged.client.cookies.set("rlhflab_session", cookie[:-4] + ("AAAA" if not cookie.endswith("AAAA") else "BBBB"))
    assert forged.get("/api/me").status_code == 401
    # wrong password, unknown user: same answer
    c = Api(app)
    token = c.client.get("/api/csrf").json()["csrf_token"]
    for body in ({"username": "ann", "password": "wrong"}, {"username": "nobody", "password": "wrong"}):
        r = c.client.post("/api/login", json=body, headers={"X-CSRF-Token": token})
        assert r.status_code == 401 and r.json() == {"detail": "wrong username or password"}
    # logout ends the session
    assert ann.post("/api/logout").status_code == 200
    assert ann.get("/api/me").status_code == 401
    set_cookie = Api(app).client.get("/api/csrf").headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie
