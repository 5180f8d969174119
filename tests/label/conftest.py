"""Fixtures for the labelling app: databases (SQLite always, PostgreSQL when RLHFLAB_TEST_POSTGRES_URL is set).
Helpers (apps with cheap password hashing, a client that logs in and sends the CSRF token) are in labelkit.py."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import quote

import pytest

pytest.importorskip("fastapi", reason="the label extra is not installed (pip install -e '.[label,dev]')")

from labelkit import PG_ENV, make_app, postgres_base_url  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from rlhflab.label.db import normalize_url  # noqa: E402


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


@pytest.fixture
def app_factory():
    return make_app

