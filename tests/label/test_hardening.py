"""The security pass of issue 13, kept fixed: one test per defect, on SQLite and on the real PostgreSQL server CI
starts (`db_url`). HTTP level through the ASGI app; the page behaviours are in test_browser.py."""

from __future__ import annotations

from labelkit import PASSWORD, Api, make_app, setup_project

USERS = {"root": "admin", "ann": "labeler", "bob": "labeler"}


# ---------------------------------------------------------------------------------------------- 2: sessions end

def _copy_of_cookie(api: Api) -> Api:
    """A second client holding a copy of `api`'s session cookie (what a stolen or kept cookie is)."""
    other = Api(api.app)
    other.client.cookies.update(api.client.cookies)
    other.token = api.token
    return other


def test_logout_ends_the_session_for_every_copy_of_the_cookie(db_url):
    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = setup_project(admin)
    ann = Api(app).login("ann")
    kept = _copy_of_cookie(ann)
    assert kept.get("/api/me").status_code == 200
    assert ann.post("/api/logout").status_code == 200
    assert kept.get("/api/me").status_code == 401
    assert kept.post(f"/api/projects/{pid}/next").status_code in (401, 403)
    assert Api(app).login("ann").get("/api/me").status_code == 200  # logging in again works


def test_a_new_password_or_deactivation_ends_the_users_sessions(db_url):
    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    ann, bob = Api(app).login("ann"), Api(app).login("bob")
    ann_id = ann.get("/api/me").json()["id"]
    bob_id = bob.get("/api/me").json()["id"]
    r = admin.patch(f"/api/users/{ann_id}", {"password": "a brand new password"})
    assert r.status_code == 200, r.text
    assert ann.get("/api/me").status_code == 401
    assert bob.get("/api/me").status_code == 200  # only ann's sessions ended
    assert Api(app).login("ann", "a brand new password").get("/api/me").status_code == 200
    assert admin.patch(f"/api/users/{bob_id}", {"active": False}).status_code == 200
    assert bob.get("/api/me").status_code == 401
    assert admin.patch(f"/api/users/{bob_id}", {"active": True}).status_code == 200
    assert bob.get("/api/me").status_code == 401  # re-activating does not bring the old session back
    assert Api(app).login("bob").get("/api/me").status_code == 200


def test_the_html_logout_ends_the_session_too(db_url):
    app = make_app(db_url, USERS)
    ann = Api(app).login("ann")
    kept = _copy_of_cookie(ann)
    r = ann.client.post("/logout", data={"csrf_token": ann.token}, follow_redirects=False)
    assert r.status_code == 303
    assert kept.get("/api/me").status_code == 401
    assert kept.get("/label", follow_redirects=False).status_code == 303  # to the login page


def test_the_database_keeps_no_usable_session_token(db_url):
    from sqlalchemy import select

    from rlhflab.label.models import LoginSession

    app = make_app(db_url, USERS)
    ann = Api(app).login("ann")
    with app.state.ctx.tx() as s:
        digests = list(s.scalars(select(LoginSession.token_sha256)))
    assert len(digests) == 1 and len(digests[0]) == 64
    assert digests[0] not in ann.client.cookies.get("rlhflab_session", "")


# ---------------------------------------------------------------------------------------------- 1: body limits

def _raw_post(base: str, path: str, headers: dict[str, str], chunks, cookie: str | None = None,
              timeout: float = 10.0) -> tuple[int, int]:
    """POST over a raw socket, sending `chunks` (bytes) one by one until the server answers or closes; returns
    (status, bytes sent). A server that waited for the whole declared body would time out here."""
    import socket
    import select
    from urllib.parse import urlparse

    u = urlparse(base)
    sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
    head = f"POST {path} HTTP/1.1\r\nHost: {u.hostname}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if cookie:
        head += f"Cookie: {cookie}\r\n"
    sock.sendall((head + "\r\n").encode())
    sent = 0
    reply = b""
    try:
        for chunk in chunks:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(chunk)
            except OSError:  # the server answered and closed: stop sending
                break
            sent += len(chunk)
        reply = sock.recv(65536)
    finally:
        sock.close()
    assert reply.startswith(b"HTTP/1.1 "), reply[:100]
    return int(reply.split()[1]), sent


def _chunks(n: int, size: int = 64 * 1024):
    """`n` chunks of a chunked body that never ends (no terminating chunk): only a server that stops reading at
    its limit can answer it."""
    piece = b"x" * size
    for _ in range(n):
        yield f"{size:x}\r\n".encode() + piece + b"\r\n"


def test_an_oversized_body_is_refused_before_it_is_read(db_url):
    from labelkit import serve

    app = make_app(db_url, USERS)
    with serve(app) as base:
        # a 50 MB Content-Length, 4 KB actually sent: the 413 comes at once, not after 50 MB (or a timeout)
        status, sent = _raw_post(base, "/api/login", {"Content-Type": "application/json",
                                                      "Content-Length": str(50 * 1024 * 1024)},
                                 [b"{" + b" " * 4095], timeout=5)
        assert status == 413 and sent <= 4096  # 0 when the 413 came before the first byte of body
        # chunked, no length: 320 KB of a body that never ends get a 413 (sending no more than the server reads
        # keeps the close clean: unread bytes at close would make the kernel reset the connection)
        status, sent = _raw_post(base, "/api/login", {"Content-Type": "application/json",
                                                      "Transfer-Encoding": "chunked"}, _chunks(5))
        assert status == 413 and sent == 5 * (64 * 1024 + 9), sent
        # an HTML form too (its CSRF check reads the form first)
        status, _ = _raw_post(base, "/login", {"Content-Type": "application/x-www-form-urlencoded",
                                               "Content-Length": str(10 * 1024 * 1024)}, [b"username=a"])
        assert status == 413


def test_bulk_routes_take_large_bodies_only_with_a_session(db_url):
    from labelkit import comparison_tasks

    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = setup_project(admin, n_tasks=1)
    body = {"tasks": comparison_tasks(300, start=100)}
    for t in body["tasks"][:3]:  # ~500 KB in all: over the small limit, under the bulk one
        t["post"]["text"] = "long post. " * 15_000
    r = admin.post(f"/api/projects/{pid}/tasks", body)
    assert r.status_code == 201, r.text[:200]
    anonymous = Api(app)
    anonymous.token = admin.token
    r = anonymous.post(f"/api/projects/{pid}/tasks", body)
    assert r.status_code == 413  # not a 403 after reading and parsing 500 KB
    ann = Api(app).login("ann")
    r = ann.post("/api/login", {"username": "ann", "password": "x" * 300_000})
    assert r.status_code == 413  # a session does not lift the small limit of the other routes


def test_an_uploaded_gzip_bomb_is_refused(db_url):
    import gzip

    app = make_app(db_url, USERS, max_inflated_bytes=1024 * 1024)
    admin = Api(app).login("root")
    pid = setup_project(admin, n_tasks=1)
    bomb = gzip.compress(b" " * (64 * 1024 * 1024))  # 64 KB that inflate to 64 MB
    r = admin.client.post(f"/admin/projects/{pid}/upload", data={"csrf_token": admin.token, "kind": "pairs"},
                          files={"file": ("pairs.jsonl.gz", bomb)}, headers={"Accept": "application/json"})
    assert r.status_code == 413 and "inflates to more than 1048576 bytes" in r.json()["detail"]
    truncated = gzip.compress(b'{"a": 1}\n' * 1000)[:-12]
    r = admin.client.post(f"/admin/projects/{pid}/upload", data={"csrf_token": admin.token, "kind": "pairs"},
                          files={"file": ("pairs.jsonl.gz", truncated)}, headers={"Accept": "application/json"})
    assert r.status_code == 422 and "pairs.jsonl.gz" in r.json()["detail"]


# ---------------------------------------------------------------------------------------------- 3: TLS proxy

def _serve_args(*argv: str, env: dict[str, str] | None = None, monkeypatch=None):
    import argparse

    from rlhflab.label.cli import add_label_parser

    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    parser = argparse.ArgumentParser()
    add_label_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["label", "serve", "--db", "sqlite:///x.db", *argv])


def test_https_only_sets_secure_cookies_and_proxy_headers_are_believed_only_when_told(db_url, monkeypatch):
    from rlhflab.label.cli import serve_config

    monkeypatch.delenv("RLHFLAB_LABEL_HTTPS_ONLY", raising=False)
    monkeypatch.delenv("RLHFLAB_LABEL_TRUST_PROXY", raising=False)
    settings, server = serve_config(_serve_args())
    assert not settings.https_only_cookies and server["proxy_headers"] is False
    settings, server = serve_config(_serve_args("--https-only", "--trust-proxy", "10.0.0.2, 10.0.0.3"))
    assert settings.https_only_cookies and server["proxy_headers"] is True
    assert server["forwarded_allow_ips"] == ["10.0.0.2", "10.0.0.3"]
    settings, server = serve_config(_serve_args(env={"RLHFLAB_LABEL_HTTPS_ONLY": "1",
                                                     "RLHFLAB_LABEL_TRUST_PROXY": "127.0.0.1"},
                                                monkeypatch=monkeypatch))
    assert settings.https_only_cookies and server["forwarded_allow_ips"] == ["127.0.0.1"]

    plain = Api(make_app(db_url, USERS))
    plain.login("ann")
    from fastapi.testclient import TestClient

    tls = Api(make_app(db_url, https_only_cookies=True))
    tls.client = TestClient(tls.app, base_url="https://testserver")  # a Secure cookie travels over https only
    token = tls.client.get("/api/csrf")
    assert "secure" in token.headers["set-cookie"].lower()
    assert token.headers["strict-transport-security"].startswith("max-age=")
    r = tls.client.post("/api/login", json={"username": "ann", "password": PASSWORD},
                        headers={"X-CSRF-Token": token.json()["csrf_token"]})
    assert "secure" in r.headers["set-cookie"].lower()
    r = plain.client.get("/api/csrf")
    assert "strict-transport-security" not in r.headers


def test_x_forwarded_for_is_ignored_unless_the_proxy_is_trusted(db_url, monkeypatch):
    """A client that forges X-Forwarded-For does not get a fresh throttle address (and cannot frame another)."""
    import httpx
    from labelkit import serve

    from rlhflab.label.cli import serve_config

    monkeypatch.delenv("RLHFLAB_LABEL_TRUST_PROXY", raising=False)
    for trust, expect in (([], "127.0.0.1"), (["127.0.0.1"], "203.0.113.9")):
        app = make_app(db_url, USERS if not trust else None, login_failures_per_address=1)
        args = _serve_args(*(["--trust-proxy", ",".join(trust)] if trust else []))
        _, server = serve_config(args)
        with serve(app, proxy_headers=server["proxy_headers"], forwarded_allow_ips=server["forwarded_allow_ips"]) as base:
            with httpx.Client(base_url=base) as c:
                token = c.get("/api/csrf").json()["csrf_token"]
                r = c.post("/api/login", json={"username": "nobody", "password": "wrong password"},
                           headers={"X-CSRF-Token": token, "X-Forwarded-For": "203.0.113.9"})
                assert r.status_code == 401
        assert app.state.ctx.throttle.retry_after("someone-else", expect) is not None


# ---------------------------------------------------------------------------------------------- 4: brute force

def test_failed_logins_are_throttled_logged_and_cost_no_hashing(db_url, caplog):
    import logging

    app = make_app(db_url, USERS, login_failures_per_user=5, login_failures_per_address=8)
    ctx = app.state.ctx
    hashed = []
    verify = ctx.passwords.verify
    ctx.passwords.verify = lambda stored, pw: hashed.append(1) or verify(stored, pw)
    api = Api(app)
    token = api.client.get("/api/csrf").json()["csrf_token"]

    def attempt(username: str, password: str = "wrong password!"):
        return api.client.post("/api/login", json={"username": username, "password": password},
                               headers={"X-CSRF-Token": token})

    with caplog.at_level(logging.WARNING, logger="rlhflab.label.auth"):
        codes = [attempt("root").status_code for _ in range(7)]
    assert codes == [401] * 5 + [429] * 2
    assert len(hashed) == 5  # the refused attempts were not hashed
    r = attempt("root", PASSWORD)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0  # even the right password, while locked
    failures = [rec.getMessage() for rec in caplog.records if rec.name == "rlhflab.label.auth"]
    assert sum("failed login for username 'root' from testclient" in m for m in failures) == 5
    assert all("wrong password" not in m for m in failures)
    # unknown users are refused alike (no enumeration); the address limit (8) stops a spray over usernames
    assert [attempt("ghost").status_code for _ in range(4)] == [401, 401, 401, 429]
    assert attempt("ann").status_code == 429  # the address is now locked for everyone
    # the HTML login form shares the throttle
    r = api.client.post("/login", data={"username": "ann", "password": PASSWORD, "csrf_token": token},
                        follow_redirects=False)
    assert r.status_code == 429 and "try again in" in r.text and "retry-after" in r.headers


def test_the_throttle_window_slides_and_a_success_clears_the_username():
    from rlhflab.label.throttle import LoginThrottle

    now = [1000.0]
    t = LoginThrottle(per_user=3, per_address=100, window_s=60, clock=lambda: now[0])
    for dt in (0, 10, 20):
        now[0] = 1000 + dt
        assert t.retry_after("u", "a") is None
        t.failed("u", "a")
    assert t.retry_after("u", "a") == 40  # the first failure (t=1000) leaves the window at t=1060
    now[0] = 1060.0
    assert t.retry_after("u", "a") is None
    t.failed("u", "a")
    t.succeeded("u")
    assert t.retry_after("u", "a") is None
    now[0] = 1061.0
    t.failed("v", "b")
    assert t.retry_after("u", "b") is None  # other usernames and addresses are unaffected


# ---------------------------------------------------------------------------------------------- 5, 6: limits

def test_html_forms_refuse_nul_and_over_long_strings_like_the_json_api(db_url):
    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    form = {"Accept": "application/json"}

    def post(path: str, data: dict) -> int:
        return admin.client.post(path, data={"csrf_token": admin.token, **data}, headers=form,
                                 follow_redirects=False).status_code

    assert post("/login", {"username": "lab\x00A", "password": "whatever"}) == 422
    assert post("/login", {"username": "a" * 65, "password": "whatever"}) == 422
    assert post("/admin/projects", {"name": "p\x00"}) == 422
    assert post("/admin/projects", {"name": "p" * 201}) == 422
    assert post("/admin/projects", {"name": "ok", "instructions": "read\x00this"}) == 422
    assert post("/admin/users", {"username": "new\x00", "password": PASSWORD}) == 422
    assert post("/admin/projects", {"name": "fine", "instructions": "i" * 20_000}) == 303
    pid = admin.get("/api/projects").json()[-1]["id"]
    r = admin.post(f"/api/projects/{pid}/tasks", {"tasks": [{"post": {"id": "p1", "text": "a post"},
                                                             "summary_a": {"text": " a"}, "summary_b": {"text": " b"},
                                                             "split": "y" * 100}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "split"
    ann = Api(app).login("ann")
    r = ann.client.post(f"/label/{pid}/answer", data={"csrf_token": ann.token, "assignment_id": "1", "side": "left",
                                                      "confidence": "2", "note": "a\x00b"}, headers=form)
    assert r.status_code == 422


def test_the_schema_limits_are_the_column_sizes():
    """The JSON models, the form types and the file parsers take their string limits from `sizes`, which the
    columns use: walk the columns and the models' fields that store into them."""
    from rlhflab.label import models, schemas, sizes

    columns = {"users.username": sizes.USERNAME, "projects.name": sizes.PROJECT_NAME,
               "posts.post_key": sizes.POST_KEY, "posts.subreddit": sizes.SUBREDDIT, "tasks.policy_a": sizes.POLICY,
               "tasks.policy_b": sizes.POLICY, "tasks.split": sizes.SPLIT,
               "answers.idempotency_key": sizes.IDEMPOTENCY_KEY}
    for name, size in columns.items():
        table, column = name.split(".")
        assert models.Base.metadata.tables[table].c[column].type.length == size, name

    def max_length(model, field: str) -> int:  # from the published OpenAPI schema, optional fields too
        prop = model.model_json_schema()["properties"][field]
        lengths = [p["maxLength"] for p in [prop, *prop.get("anyOf", [])] if "maxLength" in p]
        assert lengths, f"{model.__name__}.{field} has no maxLength"
        return lengths[0]

    stores = [(schemas.PairIn, "split", "tasks.split"), (schemas.SummaryIn, "policy", "tasks.policy_a"),
              (schemas.PostIn, "id", "posts.post_key"), (schemas.PostIn, "subreddit", "posts.subreddit"),
              (schemas.SampleIn, "policy", "tasks.policy_a"), (schemas.ProjectIn, "name", "projects.name"),
              (schemas.AnswerIn, "idempotency_key", "answers.idempotency_key")]
    for model, field, column in stores:
        assert max_length(model, field) <= columns[column], (model.__name__, field)


def test_a_longest_split_exports_and_imports_back(db_url):
    import json

    from labelkit import answer_next, comparison_tasks

    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = setup_project(admin, n_tasks=1, labels_per_task=1, gold_rate=0.0)
    tasks = comparison_tasks(1, start=50)
    tasks[0]["split"] = "s" * 64
    assert admin.post(f"/api/projects/{pid}/tasks", {"tasks": tasks}).status_code == 201
    ann = Api(app).login("ann")
    while answer_next(ann, pid):
        pass
    rows = [json.loads(x) for x in admin.get(f"/api/projects/{pid}/export/comparisons").text.splitlines()]
    assert {r["split"] for r in rows} == {"", "s" * 64}
    other = admin.post("/api/projects", {"name": "again"}).json()["id"]
    for row in rows:  # filed under an external account: "ann" is a real one on this server
        row["worker"] = "ann-elsewhere"
    r = admin.post(f"/api/projects/{other}/import", {"mode": "answers", "rows": rows})
    assert r.status_code == 201 and r.json()["answers"] == len(rows)


def test_database_errors_are_logged_without_the_statements_values(db_url, caplog, monkeypatch):
    import logging

    from sqlalchemy.exc import IntegrityError

    from rlhflab.label import service

    app = make_app(db_url, USERS)
    ctx = app.state.ctx
    secret = "the secret instructions of a private project"
    with ctx.tx() as s:
        service.create_project(s, "dup", instructions=secret)
    try:
        with ctx.tx() as s:  # the same unique name again, past the service's own check
            s.add(service.Project(name="dup", instructions=secret, labels_per_task=3, gold_rate=0.1, expiry_s=60,
                                  flag_threshold=0.7, min_flag_answers=3))
            s.flush()
        raise AssertionError("no IntegrityError")
    except IntegrityError as err:
        assert secret not in str(err) and "hidden" in str(err)

    def broken(*_a, **_k):
        with ctx.tx() as s:
            s.add(service.Project(name="dup", instructions=secret, labels_per_task=3, gold_rate=0.1, expiry_s=60,
                                  flag_threshold=0.7, min_flag_answers=3))
            s.flush()
            s.execute(service.select(service.func.no_such_function(secret)))

    monkeypatch.setattr(service, "list_projects", broken)
    admin = Api(app).login("root")
    with caplog.at_level(logging.DEBUG):
        r = admin.get("/api/projects")
    assert r.status_code in (409, 500) and secret not in r.text
    assert all(secret not in rec.getMessage() for rec in caplog.records)


# ---------------------------------------------------------------------------------------------- 7, 8: imports

def _comparison(i: int, text: str = "a post", choice: int = 0, confidence: int | None = 2) -> dict:
    row = {"info": {"id": f"t3_{i}", "post": text, "title": "T", "subreddit": "s"}, "split": "train",
           "summaries": [{"text": " one", "policy": "a"}, {"text": " two", "policy": "b"}], "choice": choice,
           "worker": "w1", "batch": "b1", "extra": {} if confidence is None else {"confidence": confidence}}
    return row


def test_a_confidence_that_contradicts_the_choice_is_refused_in_every_import_mode(db_url):
    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = admin.post("/api/projects", {"name": "p"}).json()["id"]
    for mode in ("gold", "answers", "tasks"):
        r = admin.post(f"/api/projects/{pid}/import", {"mode": mode, "rows": [_comparison(1), _comparison(2, choice=0,
                                                                                                       confidence=9)]})
        assert r.status_code == 422, (mode, r.text)
        assert r.json()["detail"] == "rows:2: field 'extra.confidence': 9 leans to the other summary than choice 0"
    ok = [_comparison(1), _comparison(2, choice=1, confidence=9), _comparison(3, choice=0, confidence=5)]
    assert admin.post(f"/api/projects/{pid}/import", {"mode": "gold", "rows": ok}).status_code == 201


def test_a_post_id_reused_with_another_text_is_refused_naming_the_line(db_url, tmp_path):
    from labelkit import comparison_tasks

    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = admin.post("/api/projects", {"name": "p"}).json()["id"]
    assert admin.post(f"/api/projects/{pid}/import", {"rows": [_comparison(1, "the first post")]}).status_code == 201
    r = admin.post(f"/api/projects/{pid}/import", {"rows": [_comparison(2), _comparison(1, "another post")]})
    assert r.status_code == 409 and r.json()["detail"].startswith("rows:2: post id 't3_1' is already in project 'p'")
    # the same text again is the same post: stored once, no error
    assert admin.post(f"/api/projects/{pid}/import", {"rows": [_comparison(1, "the first post")]}).status_code == 201
    # within one input: two different posts under one id
    r = admin.post(f"/api/projects/{pid}/import", {"rows": [_comparison(7, "x"), _comparison(7, "y")]})
    assert r.status_code == 422 and r.json()["detail"] == "rows:2: post id 't3_7' is also the id of another post at rows:1"
    tasks = comparison_tasks(2, start=20)
    tasks[1]["post"]["id"] = tasks[0]["post"]["id"]
    r = admin.post(f"/api/projects/{pid}/tasks", {"tasks": tasks})
    assert r.status_code == 422 and "tasks:2: post id 't3_20'" in r.json()["detail"]
    # a posts file with one id twice names both lines
    posts = tmp_path / "posts.jsonl"
    posts.write_text('{"id": "q1", "text": "one"}\n{"id": "q2", "text": "two"}\n{"id": "q1", "text": "uno"}\n')
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"post_id": "q1", "summary_a": {"text": " a"}}\n')
    from rlhflab.label.cli import main

    code = main(["label", "add-tasks", "--db", db_url, "--project", "p", "--pairs", str(pairs), "--posts", str(posts)])
    assert code == 2
    with app.state.ctx.tx() as s:  # nothing of the refused inputs was stored
        from sqlalchemy import func, select

        from rlhflab.label.models import Post
        assert s.scalar(select(func.count()).select_from(Post)) == 1  # t3_1, once: nothing of the refused inputs


def test_cli_errors_name_the_file_and_line_from_1(db_url, tmp_path, capsys):
    import gzip

    from rlhflab.label.cli import main

    make_app(db_url, USERS)
    good = '{"info": {"id": "t3_1", "post": "p"}, "summaries": [{"text": " a"}, {"text": " b"}], "choice": 0}\n'
    cases = {"missing.jsonl": (None, "missing.jsonl: no such file"),
             "latin1.jsonl": ((good + '{"info": {"id": "x", "post": "caf\xe9"}}\n').encode("latin-1"),
                              "latin1.jsonl:2: not UTF-8"),
             "cut.jsonl.gz": (gzip.compress((good * 2000).encode())[:-40], "cut.jsonl.gz:"),
             "bad.jsonl": ((good + "{oops\n").encode(), "bad.jsonl:2: not valid JSON")}
    for name, (data, message) in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        code = main(["label", "import", "--db", db_url, "--project", "p", "--create", "--file", str(path)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, (name, err)
    path = tmp_path / "cut.jsonl.gz"
    main(["label", "import", "--db", db_url, "--project", "p", "--create", "--file", str(path)])
    assert "truncated or corrupt gzip data" in capsys.readouterr().err
    instructions = tmp_path / "i.txt"
    instructions.write_bytes(b"ok\n\xff\n")
    code = main(["label", "create-project", "--db", db_url, "--name", "q", "--pairs", str(tmp_path / "bad.jsonl"),
                 "--instructions-file", str(instructions)])
    assert code == 2


# ---------------------------------------------------------------------------------------------- 9: integrity

def _answer_form(api: Api, aid: int, **extra: str) -> dict:
    return {"csrf_token": api.token, "assignment_id": str(aid), "side": "left", "confidence": "2", **extra}


def test_answers_are_refused_in_closed_projects_and_through_another_projects_url(db_url):
    from labelkit import comparison_tasks

    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    one = setup_project(admin, "one", gold_rate=0.0)
    two = admin.post("/api/projects", {"name": "two"}).json()["id"]
    assert admin.post(f"/api/projects/{two}/tasks", {"tasks": comparison_tasks(1, start=9)}).status_code == 201
    ann = Api(app).login("ann")
    a = ann.post(f"/api/projects/{one}/next").json()["assignment"]
    r = ann.client.post(f"/label/{two}/answer", data=_answer_form(ann, a["assignment_id"]),
                        headers={"Accept": "application/json"})
    assert r.status_code == 404  # project two's URL does not answer project one's assignment
    assert admin.patch(f"/api/projects/{one}", {"active": False}).status_code == 200
    r = ann.post(f"/api/assignments/{a['assignment_id']}/answer", {"side": "left", "confidence": 2})
    assert r.status_code == 409 and "closed" in r.json()["detail"]
    r = ann.client.post(f"/label/{one}/answer", data=_answer_form(ann, a["assignment_id"]),
                        headers={"Accept": "application/json"})
    assert r.status_code == 409
    assert admin.get(f"/api/projects/{one}/dashboard").json()["answers"] == 0


def test_a_get_never_assigns_a_task(db_url):
    from sqlalchemy import func, select

    from rlhflab.label.models import Assignment

    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = setup_project(admin, gold_rate=0.0)
    ann = Api(app).login("ann")

    def assignments() -> int:
        with app.state.ctx.tx() as s:
            return s.scalar(select(func.count()).select_from(Assignment))

    for _ in range(3):  # e.g. an <img src="/label/1"> on another site, with the labeler's cookie
        page = ann.get(f"/label/{pid}")
        assert page.status_code == 200 and 'id="start"' in page.text and "3 tasks left" in page.text
    assert ann.get("/label").status_code == 200
    assert assignments() == 0
    assert ann.client.post(f"/label/{pid}/next", data={}).status_code == 403  # the POST needs the CSRF token
    assert assignments() == 0
    r = ann.client.post(f"/label/{pid}/next", data={"csrf_token": ann.token}, follow_redirects=False)
    assert r.status_code == 303 and assignments() == 1
    page = ann.get(f"/label/{pid}").text
    assert 'id="answer-form"' in page and "task 1 of 3" in page
    aid = int(page.split('name="assignment_id" value="')[1].split('"')[0])
    r = ann.client.post(f"/label/{pid}/answer", data=_answer_form(ann, aid), follow_redirects=False)
    assert r.status_code == 303 and assignments() == 2  # answering (a POST) assigns the next one
    assert "task 2 of 3" in ann.get(f"/label/{pid}").text


def test_the_pages_time_is_bounded_by_the_servers(db_url):
    from datetime import timedelta

    from rlhflab.label import service
    from rlhflab.label.models import Assignment

    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = setup_project(admin, gold_rate=0.0)
    ann = Api(app).login("ann")
    first = ann.post(f"/api/projects/{pid}/next").json()["assignment"]["assignment_id"]
    with app.state.ctx.tx() as s:  # assigned 30 s ago
        a = s.get(Assignment, first)
        a.created_at -= timedelta(seconds=30)
    assert ann.post(f"/api/assignments/{first}/answer", {"side": "left", "confidence": 2,
                                                         "time_ms": 86_400_000}).status_code == 201
    second = ann.post(f"/api/projects/{pid}/next").json()["assignment"]["assignment_id"]
    assert ann.post(f"/api/assignments/{second}/answer", {"side": "left", "confidence": 2,
                                                          "time_ms": 5}).status_code == 201
    with app.state.ctx.tx() as s:
        answers = {a.assignment_id: a for a in s.scalars(service.select(service.Answer))}
    assert 30_000 <= answers[first].client_time_ms == answers[first].server_time_ms < 40_000
    assert answers[second].client_time_ms == 5  # a shorter page time is kept as measured
    labelers = admin.get(f"/api/projects/{pid}/dashboard").json()["labelers"]
    assert [lab["median_time_s"] < 60 for lab in labelers] == [True]  # not the claimed 24 h


# ---------------------------------------------------------------------------------------------- 11: API docs

def test_api_docs_are_served_locally_under_the_apps_csp(db_url):
    import re

    api = Api(make_app(db_url, USERS))
    r = api.get("/api/docs")
    assert r.status_code == 200 and "script-src 'self'" in r.headers["content-security-policy"]
    urls = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert urls and all(u.startswith(("/api/docs/assets/", "/static/")) for u in urls), urls
    for u in urls:
        assert api.get(u).status_code == 200, u
    bundle = api.get("/api/docs/assets/swagger-ui-bundle.js")
    assert bundle.headers["content-type"].startswith("text/javascript") and len(bundle.content) > 500_000
    for bad in ("index.html", "..%2F__init__.py", "swagger-initializer.js"):
        assert api.get(f"/api/docs/assets/{bad}").status_code == 404
    assert api.get("/openapi.json").json()["openapi"].startswith("3.1")


def test_real_and_unknown_usernames_cost_one_argon2_verification_each(db_url):
    """Login timing stays equal for real and unknown users: both verify one argon2 hash (a dummy one for
    unknown users), and the throttle refuses both before any hashing."""
    app = make_app(db_url, USERS, login_failures_per_user=2)
    passwords = app.state.ctx.passwords
    calls = []

    class Counting:  # argon2's PasswordHasher, counting verifications
        def __init__(self, hasher):
            self.hasher = hasher

        def verify(self, stored, password):
            calls.append(stored)
            return self.hasher.verify(stored, password)

    passwords.hasher = Counting(passwords.hasher)
    api = Api(app)
    token = api.client.get("/api/csrf").json()["csrf_token"]
    for name in ("root", "ghost", "root", "ghost", "root", "ghost"):
        r = api.client.post("/api/login", json={"username": name, "password": "wrong password"},
                            headers={"X-CSRF-Token": token})
        assert r.status_code in (401, 429)
    assert len(calls) == 4  # two each, then refused unhashed
    assert len(set(calls)) == 2 and len({h.split("$")[3] for h in calls}) == 1  # real and dummy, same cost
