"""Alembic: the migrations build exactly the schema the models describe, on SQLite and PostgreSQL, and upgrade an
existing database without losing a row."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from rlhflab.label import db as dbm
from rlhflab.label.models import Base

HEAD = "0003"


def test_migrations_match_models(db_url):
    engine = dbm.make_engine(db_url)
    dbm.migrate(engine)
    dbm.migrate(engine)  # idempotent: a second run (every server start) changes nothing
    assert dbm.current_revision(engine) == HEAD
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff
    engine.dispose()


# a labelled 0001 database, written with plain SQL (the models describe the newest schema, not 0001's)
ROWS_0001 = [
    "INSERT INTO users (id, username, password_hash, role, active, created_at) VALUES "
    "(1, 'ann', NULL, 'labeler', TRUE, '2026-01-01 00:00:00')",
    "INSERT INTO projects (id, name, instructions, labels_per_task, gold_rate, expiry_s, flag_threshold, "
    "min_flag_answers, active, created_at) VALUES (1, 'old', '', 3, 0.1, 1800, 0.7, 3, TRUE, '2026-01-01 00:00:00')",
    "INSERT INTO posts (id, project_id, post_key, title, subreddit, text, source) VALUES "
    "(1, 1, 't3_1', 'T', 's', 'a post', 'tldr')",
    "INSERT INTO tasks (id, project_id, post_id, kind, summary_a, policy_a, summary_b, policy_b, split, is_gold, "
    "gold_choice, gold_confidence, created_at) VALUES (1, 1, 1, 'comparison', ' A', 'sft', ' B', 'ppo', '', FALSE, "
    "NULL, NULL, '2026-01-01 00:00:00'), (2, 1, 1, 'rating', ' R', 'sft', NULL, NULL, '', FALSE, NULL, NULL, "
    "'2026-01-01 00:00:00')",
    "INSERT INTO assignments (id, task_id, user_id, project_id, swapped, status, created_at, expires_at) VALUES "
    "(1, 1, 1, 1, TRUE, 'done', '2026-01-01 00:00:00', '2026-01-01 00:30:00')",
    "INSERT INTO answers (id, assignment_id, task_id, user_id, project_id, choice, confidence, ratings, note, "
    "client_time_ms, server_time_ms, idempotency_key, created_at) VALUES (1, 1, 1, 1, 1, 1, 8, NULL, 'n', 900, 1000, "
    "NULL, '2026-01-01 00:00:00')",
]


def test_upgrade_from_0001_keeps_every_row(db_url):
    """0002 adds best-of-N tasks' `choices` to `tasks`: the tasks, their assignments and answers all survive (a
    SQLite table recreate would DROP `tasks` and cascade-delete the answers), and the app labels and exports on."""
    engine = dbm.make_engine(db_url)
    dbm.migrate(engine, "0001")
    with engine.begin() as conn:
        for sql in ROWS_0001:
            conn.execute(text(sql))
    dbm.migrate(engine)
    assert dbm.current_revision(engine) == HEAD
    counts = {}
    with engine.connect() as conn:
        for table in ("users", "projects", "posts", "tasks", "assignments", "answers"):
            counts[table] = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
        tasks = conn.execute(text("SELECT id, kind, summary_a, choices FROM tasks ORDER BY id")).all()
        answer = conn.execute(text("SELECT choice, confidence, note FROM answers")).one()
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert counts == {"users": 1, "projects": 1, "posts": 1, "tasks": 2, "assignments": 1, "answers": 1}
    assert [tuple(t) for t in tasks] == [(1, "comparison", " A", None), (2, "rating", " R", None)]
    assert tuple(answer) == (1, 8, "n")
    assert diff == [], diff

    from rlhflab.label import service

    factory = dbm.session_factory(engine)
    with dbm.session_scope(factory) as s:  # the old answer still exports, in the order the labeler saw
        [row] = list(service.export_comparisons(s, service.get_project(s, 1)))
    assert [x["text"] for x in row["summaries"]] == [" B", " A"] and row["choice"] == 0
    assert row["extra"]["confidence"] == 2
    engine.dispose()
