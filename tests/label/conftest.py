"""Fixtures for the labelling app: databases (SQLite always, PostgreSQL when RLHFLAB_TEST_POSTGRES_URL is set),
apps with cheap password hashing, and a small client that logs in and sends the CSRF token."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

pytest.importorskip("fastapi", reason="the label extra is not installed (pip install -e '.[label,dev]')")

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from rlhflab.label import service  # noqa: E402
from rlhflab.label.app import create_app  # noqa: E402
from rlhflab.label.db import normalize_url  # noqa: E402
from rlhflab.label.settings import LabelSettings  # noqa: E402

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


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema on the test server for this test, dropped afterwards (tests never share tables)."""
    base = postgres_base_url()
    schema = "t_" + secrets.token_hex(6)
    admin = create_engine(normalize_url(base))
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as err:  # noqa: BLE001
        if os.environ.get("RLHFLAB_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"PostgreSQL at {PG_ENV} is not reachable: {type(err).__name__}")
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'label.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request) -> str:
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


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


@pytest.fixture
def app_factory():
    return make_app


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
