"""The labelling web app: researchers create projects of comparison and rating tasks, labelers answer them.

FastAPI + SQLAlchemy 2 + Jinja templates (plain HTML/CSS/JS, no build step), alembic migrations, SQLite by
default and PostgreSQL with a `postgresql://` URL. Uses `rlhflab.core` and `rlhflab.data.records` only — never
torch — so it starts on a laptop with no GPU stack. Nothing is imported here: `rlhflab.label.cli` stays cheap.

    settings.py    LabelSettings (database URL, labels per task, gold rate, expiry, flag threshold)
    db.py          engine and session factory, URL mapping, migrations on startup
    models.py      typed SQLAlchemy models (users, projects, posts, tasks, assignments, answers)
    formats.py     JSONL files in and out: samples, posts, pairs, OpenAI comparisons, ratings (stdlib json/gzip)
    security.py    argon2id password hashing, CSRF tokens
    schemas.py     the JSON API's pydantic models (strict: a bad input is a 4xx, never a 500)
    assignment.py  which task a labeler gets next (pure)
    quality.py     agreement rate, Cohen's and Fleiss' kappa, per-labeler statistics (pure)
    service.py     the operations, on a SQLAlchemy session (routes and CLI call these)
    app.py         the FastAPI application: JSON API under /api, HTML pages, auth and CSRF
    cli.py         `rlhflab label serve|migrate|add-user|set-password|create-project|add-tasks|import|export|stats`
"""
