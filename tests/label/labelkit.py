"""Helpers shared by the label tests (imported as `labelkit`; pytest puts this folder on sys.path)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from rlhflab.label import service
from rlhflab.label.app import create_app
from rlhflab.label.settings import LabelSettings

PG_ENV = "RLHFLAB_TEST_POSTGRES_URL"
PASSWORD = "correct horse battery"


def fast_settings(db_url: str, **changes: Any) -> LabelSettings:
    """Real argon2id, with a tiny cost so tests that log in many users stay fast."""
    return LabelSettings(db=db_url, argon2_time_cost=1, argon2_memory_kib=64, argon2_parallelism=1, **changes)


def postgres_base_url() -> str | None:
    url = os.environ.get(PG_ENV)
    if not url:
        if os.environ.get("RLHFLAB_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"RLHFLAB_REQUIRE_POSTGRES=1 but {PG_ENV} is not set (source .ci/setup_system.sh)")
        pytest.skip(f"no PostgreSQL server: set {PG_ENV}=postgresql://user:pass@host/db "
                    "(.ci/setup_system.sh starts one)")
    return url


class Api:
    """A TestClient that logs in through the JSON API and sends the CSRF token on every POST/PATCH."""

    def __init__(self, app):
        self.app = app
        self.client = TestClient(app)
        self.token: str | None = None

    def login(self, username: str, password: str = PASSWORD) -> Api:
        token = self.client.get("/api/csrf").json()["csrf_token"]
        r = self.client.post("/api/login", json={"username": username, "password": password},
                             headers={"X-CSRF-Token": token})
        assert r.status_code == 200, r.text
        self.token = r.json()["csrf_token"]
        return self

    def _headers(self, kw: dict[str, Any]) -> dict[str, Any]:
        headers = dict(kw.pop("headers", None) or {})
        if self.token:
            headers.setdefault("X-CSRF-Token", self.token)
        return headers

    def get(self, path: str, **kw: Any):
        return self.client.get(path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any):
        return self.client.post(path, json=json, headers=self._headers(kw), **kw)

    def patch(self, path: str, json: Any = None, **kw: Any):
        return self.client.patch(path, json=json, headers=self._headers(kw), **kw)


def make_app(db_url: str, users: dict[str, str] | None = None, **changes: Any):
    """An app on `db_url` with the given users ({name: role}), all with PASSWORD."""
    app = create_app(fast_settings(db_url, **changes))
    ctx = app.state.ctx
    with ctx.tx() as s:
        for name, role in (users or {}).items():
            service.create_user(s, ctx.passwords, name, PASSWORD, role)
    return app


def post_row(i: int, text: str | None = None) -> dict[str, Any]:
    return {"id": f"t3_{i}", "text": text or f"Post number {i}. Something happened and I need advice.",
            "title": f"Title {i}", "subreddit": "relationships"}


def comparison_tasks(n: int, start: int = 0, gold: bool = False) -> list[dict[str, Any]]:
    out = []
    for i in range(start, start + n):
        t: dict[str, Any] = {"post": post_row(i), "summary_a": {"text": f" summary A of {i}", "policy": "sft"},
                             "summary_b": {"text": f" summary B of {i}", "policy": "ppo"}}
        if gold:
            t["gold"] = {"choice": 0, "confidence": 2}
        out.append(t)
    return out


def setup_project(admin: Api, name: str = "proj", n_tasks: int = 3, **params: Any) -> int:
    r = admin.post("/api/projects", {"name": name, **params})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = admin.post(f"/api/projects/{pid}/tasks", {"tasks": comparison_tasks(n_tasks)})
    assert r.status_code == 201, r.text
    return pid


def answer_next(api: Api, pid: int, side: str = "left", confidence: int = 2) -> dict[str, Any] | None:
    r = api.post(f"/api/projects/{pid}/next")
    assert r.status_code == 200, r.text
    a = r.json()["assignment"]
    if a is None:
        return None
    body = ({"side": side, "confidence": confidence, "time_ms": 1234} if a["kind"] == "comparison" else
            {"ratings": {"overall": 5, "accuracy": 5, "coverage": 5, "coherence": 5}})
    r = api.post(f"/api/assignments/{a['assignment_id']}/answer", body)
    assert r.status_code == 201, r.text
    return a



@contextlib.contextmanager
def serve(app, **config: Any) -> Iterator[str]:
    """Serve `app` with a real uvicorn in a thread on 127.0.0.1; yields the base URL."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                                        **config))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(400):
        if srv.started:
            break
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def start_labelling(client: TestClient, pid: int, token: str) -> str:
    """What the labeler's "Start labelling" button does (a GET never assigns): POST /label/{pid}/next with the
    session's CSRF token, then the labelling page it redirects to. Returns the page's HTML."""
    r = client.post(f"/label/{pid}/next", data={"csrf_token": token})
    assert r.status_code == 200 and r.url.path == f"/label/{pid}", (r.status_code, r.url)
    return r.text
