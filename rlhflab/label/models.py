"""The database schema (SQLAlchemy 2 typed models). Changes go through an alembic migration in migrations/.

Answers are stored in *canonical* order: `choice` 0 means the task's summary A, and `confidence` leans to A
below 5. What the labeler saw (A on the left or on the right) is the assignment's `swapped` flag.

Best-of-N tasks (Ziegler et al. 2019) keep their query as the post (source "query") and their 2–16 continuations in
`Task.choices`, in the task file's order, which is also the order shown; the answer's `choice` is the index of the
best one (`BestOfN.best`).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from rlhflab.label import sizes

ROLES = ("admin", "labeler", "external")  # external: authors of imported labels; cannot log in
TASK_KINDS = ("comparison", "rating", "best_of_n")
RATING_AXES = ("overall", "accuracy", "coverage", "coherence")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # naive UTC everywhere (SQLite keeps no zone)


class Base(DeclarativeBase):
    pass


class Setting(Base):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(sizes.USERNAME), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class LoginSession(Base):
    """A logged-in browser or client. The cookie carries a random token; only its SHA-256 is stored, so a copy of
    the database opens no session. Logout deletes the row, a password change or deactivation deletes all of a
    user's rows: the (signed) cookie alone no longer lets anyone in."""

    __tablename__ = "sessions"
    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(sizes.PROJECT_NAME), unique=True)
    instructions: Mapped[str] = mapped_column(Text, default="")
    labels_per_task: Mapped[int] = mapped_column(Integer, default=3)
    gold_rate: Mapped[float] = mapped_column(Float, default=0.1)
    expiry_s: Mapped[int] = mapped_column(Integer, default=1800)
    flag_threshold: Mapped[float] = mapped_column(Float, default=0.7)
    min_flag_answers: Mapped[int] = mapped_column(Integer, default=3)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Post(Base):
    __tablename__ = "posts"
    __table_args__ = (UniqueConstraint("project_id", "post_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    post_key: Mapped[str] = mapped_column(String(sizes.POST_KEY))  # the post's id in its source data
    title: Mapped[str] = mapped_column(Text, default="")
    subreddit: Mapped[str] = mapped_column(String(sizes.SUBREDDIT), default="")
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16), default="tldr")


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16), default="comparison")
    # "" for best-of-N tasks: making the column nullable would mean recreating the table on SQLite, and that DROP
    # cascades into every assignment and answer
    summary_a: Mapped[str] = mapped_column(Text)
    policy_a: Mapped[str] = mapped_column(String(sizes.POLICY), default="")
    summary_b: Mapped[str | None] = mapped_column(Text, nullable=True)  # None for rating tasks
    policy_b: Mapped[str | None] = mapped_column(String(sizes.POLICY), nullable=True)
    split: Mapped[str] = mapped_column(String(sizes.SPLIT), default="")
    # best-of-N tasks: [{"text", "policy", "eos"}, ...] (None for the other kinds)
    choices: Mapped[list | None] = mapped_column(JSON, nullable=True)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_choice: Mapped[int | None] = mapped_column(Integer, nullable=True)  # 0 = summary A; best-of-N: the best
    gold_confidence: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    post: Mapped[Post] = relationship(lazy="joined")
    __table_args__ = (Index("ix_tasks_project_gold", "project_id", "is_gold"),)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("task_id", "user_id"),  # nobody sees a task twice
                      Index("ix_assignments_user_status", "user_id", "status"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    swapped: Mapped[bool] = mapped_column(Boolean, default=False)  # True: summary B was shown on the left
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | done | expired
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    task: Mapped[Task] = relationship(lazy="joined")


class Answer(Base):
    __tablename__ = "answers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"), unique=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    choice: Mapped[int | None] = mapped_column(Integer, nullable=True)  # canonical: 0 = summary A; best-of-N: best
    confidence: Mapped[int | None] = mapped_column(Integer, nullable=True)  # canonical, 1–9
    ratings: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # rating tasks: axis -> 1..7
    note: Mapped[str] = mapped_column(Text, default="")
    client_time_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)  # measured by the page
    server_time_ms: Mapped[int] = mapped_column(Integer, default=0)  # assigned -> answered
    idempotency_key: Mapped[str | None] = mapped_column(String(sizes.IDEMPOTENCY_KEY), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    assignment: Mapped[Assignment] = relationship(lazy="joined")
