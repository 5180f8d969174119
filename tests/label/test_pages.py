"""The HTML side without a browser: login form, admin forms (projects, users, uploads), labelling form, errors."""

from __future__ import annotations

import gzip
import json
import re

from labelkit import PASSWORD, make_app, start_labelling


def _token(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _login(client, user: str) -> str:
    token = _token(client.get("/login").text)
    r = client.post("/login", data={"username": user, "password": PASSWORD, "csrf_token": token},
                    follow_redirects=False)
    assert r.status_code == 303
    return r.headers["location"]


def test_admin_forms_upload_and_labelling_form(sqlite_url, shared_data):
    from fastapi.testclient import TestClient

    app = make_app(sqlite_url, {"root": "admin"})
    admin = TestClient(app)
    assert _login(admin, "root") == "/admin"
    token = _token(admin.get("/admin").text)
    r = admin.post("/admin/users", data={"username": "ann", "password": PASSWORD, "role": "labeler",
                                         "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    r = admin.post("/admin/projects", data={"name": "Uploads", "labels_per_task": "2", "gold_rate": "0",
                                            "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    project_url = r.headers["location"]
    pid = int(project_url.rsplit("/", 1)[1])
    # samples + TL;DR posts (gzip, straight from the shared data)
    posts_gz = (shared_data / "tldr" / "eval.jsonl.gz").read_bytes()
    ids = [json.loads(line)["id"] for line in gzip.decompress(posts_gz).decode().splitlines()[:5]]
    samples = "".join(json.dumps({"post_id": i, "policy": pol, "text": f" {pol} says {i}", "n_tokens": 4})
                      + "\n" for i in ids for pol in ("sft", "ppo"))
    r = admin.post(f"/admin/projects/{pid}/upload",
                   data={"kind": "samples", "csrf_token": token, "ratings": "true"},
                   files={"file": ("samples.jsonl", samples.encode()), "posts": ("eval.jsonl.gz", posts_gz)},
                   follow_redirects=False)
    assert r.status_code == 303, r.text
    comps = (shared_data / "comparisons" / "batch13.jsonl.gz").read_bytes()
    r = admin.post(f"/admin/projects/{pid}/upload", data={"kind": "comparisons", "mode": "gold", "csrf_token": token},
                   files={"file": ("batch13.jsonl.gz", comps)}, follow_redirects=False)
    assert r.status_code == 303
    page = admin.get(project_url).text
    assert re.search(r"<b>1102</b> comparison tasks", page) and re.search(r"<b>10</b> rating tasks", page)
    assert re.search(r"<b>1097</b> gold", page)
    # a broken upload is a 4xx page that names the line and field
    r = admin.post(f"/admin/projects/{pid}/upload", data={"kind": "pairs", "csrf_token": token},
                   files={"file": ("pairs.jsonl", b'{"post_id": "x"}\n')}, headers={"Accept": "text/html"})
    assert r.status_code == 422 and "pairs.jsonl:1" in r.text and "summary_a" in r.text
    r = admin.post(f"/admin/projects/{pid}/upload", data={"kind": "pairs", "csrf_token": token},
                   files={"file": ("pairs.jsonl", b"not json\n")}, headers={"Accept": "text/html"})
    assert r.status_code == 422 and "not valid JSON" in r.text

    ann = TestClient(app)
    assert _login(ann, "ann") == "/label"
    index = ann.get("/label").text
    assert "Uploads" in index
    assert 'id="answer-form"' not in ann.get(f"/label/{pid}").text  # a GET shows, it does not assign
    page = start_labelling(ann, pid, _token(index))
    aid = re.search(r'name="assignment_id" value="(\d+)"', page).group(1)
    token = _token(page)
    kind = re.search(r'data-kind="(\w+)"', page).group(1)
    data = ({"side": "right", "confidence": "9"} if kind == "comparison" else
            {"overall": "7", "accuracy": "6", "coverage": "5", "coherence": "4"})
    r = ann.post(f"/label/{pid}/answer", data={**data, "assignment_id": aid, "time_ms": "4200", "csrf_token": token},
                 follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/label/{pid}"
    assert "answered: 1" in ann.get(f"/label/{pid}").text
    # bad form values get a readable 422 page, not a 500
    r = ann.post(f"/label/{pid}/answer", data={"assignment_id": "abc", "csrf_token": token},
                 headers={"Accept": "text/html"})
    assert r.status_code == 422 and "assignment_id" in r.text
    # logout
    r = ann.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    assert ann.get("/label", follow_redirects=False).status_code == 303


def test_wrong_password_page_and_security_headers(sqlite_url):
    from fastapi.testclient import TestClient

    app = make_app(sqlite_url, {"ann": "labeler"})
    c = TestClient(app)
    page = c.get("/login")
    assert page.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in page.headers[
        "content-security-policy"]
    r = c.post("/login", data={"username": "ann", "password": "nope", "csrf_token": _token(page.text)})
    assert r.status_code == 401 and "Wrong username or password." in r.text
    assert c.get("/static/label.js").status_code == 200
