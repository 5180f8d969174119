"""Alembic: the migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from rlhflab.label import db as dbm
from rlhflab.label.models import Base


def test_migrations_match_models(db_url):
    engine = dbm.make_engine(db_url)
    dbm.migrate(engine)
    dbm.migrate(engine)  # idempotent: a second run (every server start) changes nothing
    assert dbm.current_revision(engine) == "0001"
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff
    engine.dispose()
