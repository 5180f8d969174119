"""Engines, sessions and migrations. SQLite by default; `postgresql://` URLs use psycopg 3."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class DatabaseURLError(ValueError):
    pass


def normalize_url(url: str) -> str:
    """`postgresql://` and `postgres://` -> `postgresql+psycopg://` (psycopg 3); a bare path -> a SQLite file."""
    if "://" not in url:
        return f"sqlite:///{url}"
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return f"postgresql+psycopg://{rest}"
    if scheme.startswith("sqlite"):
        return url
    raise DatabaseURLError(f"unsupported database URL scheme {scheme!r}: use sqlite:///FILE or postgresql://...")


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60}, hide_parameters=True)
        _sqlite_serialised_writes(engine)
        return engine
    # hide_parameters: a failed statement's error (and any traceback of it) never carries the posts, summaries or
    # instructions it was storing: the app logs no text
    return create_engine(url, pool_size=10, max_overflow=40, pool_pre_ping=True, hide_parameters=True)


def _sqlite_serialised_writes(engine: Engine) -> None:
    """WAL, foreign keys, and `BEGIN IMMEDIATE` so concurrent read-then-write transactions queue, not deadlock.

    pysqlite's own transaction handling starts transactions lazily and late; we take it over (the SQLAlchemy
    documented recipe) so that assignment (read the free slots, then insert) is atomic across threads.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (alembic upgrade), in one connection."""
    import logging

    from alembic import command

    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # one line per plugin otherwise
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def get_or_create_secret(factory: sessionmaker[Session]) -> str:
    """The cookie signing key kept in the database, made on first use (so every server process agrees)."""
    from rlhflab.label.models import Setting

    with session_scope(factory) as s:
        row = s.scalar(select(Setting).where(Setting.key == "secret_key"))
        if row is None:
            row = Setting(key="secret_key", value=secrets.token_urlsafe(48))
            s.add(row)
        return row.value
