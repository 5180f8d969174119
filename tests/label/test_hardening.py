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


def _chunked(total: int, size: int = 64 * 1024):
    piece = b"x" * size
    for _ in range(total // size):
        yield f"{size:x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


def test_an_oversized_body_is_refused_before_it_is_read(db_url):
    from labelkit import serve

    app = make_app(db_url, USERS)
    with serve(app) as base:
        # a 50 MB Content-Length, 4 KB actually sent: the 413 comes at once, not after 50 MB (or a timeout)
        status, sent = _raw_post(base, "/api/login", {"Content-Type": "application/json",
                                                      "Content-Length": str(50 * 1024 * 1024)},
                                 [b"{" + b" " * 4095], timeout=5)
        assert status == 413 and sent == 4096
        # chunked, no length: the server stops it soon after the 256 KB limit, long before the 50 MB end
        status, sent = _raw_post(base, "/api/login", {"Content-Type": "application/json",
                                                      "Transfer-Encoding": "chunked"}, _chunked(50 * 1024 * 1024))
        assert status == 413 and sent < 8 * 1024 * 1024, sent
        # an HTML form too (its CSRF check reads the form first)
        status, _ = _raw_post(base, "/login", {"Content-Type": "application/x-www-form-urlencoded",
                                               "Content-Length": str(10 * 1024 * 1024)}, [b"username=a"])
        assert status == 413


def test_bulk_routes_take_large_bodies_only_with_a_session(db_url):
    from labelkit import comparison_tasks

    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = setup_project(admin, n_tasks=1)
    body = {"tasks": comparison_tasks(300)}
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
