"""Settings of a labelling server and the defaults of a new project."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

DEFAULT_DB = "sqlite:///label.db"


@dataclass
class LabelSettings:
    db: str = DEFAULT_DB
    # Session cookie signing key. None: a random key made once and kept in the database (survives restarts).
    secret_key: str | None = None
    session_max_age_s: int = 14 * 24 * 3600
    https_only_cookies: bool = False  # behind a TLS proxy: the cookie gets Secure, responses HSTS
    migrate_on_startup: bool = True
    # argon2id cost; the defaults are argon2-cffi's RFC 9106 "low memory" profile. Tests lower them.
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    # Request bodies (limits.py): 413 before the body is read. Bulk JSON and uploads need a session cookie.
    max_body_bytes: int = 256 * 1024  # every route but the bulk ones: logins, answers, forms
    max_bulk_bytes: int = 64 * 1024 * 1024  # POST /api/projects/{id}/tasks|samples|best-of-n|import
    max_upload_bytes: int = 64 * 1024 * 1024  # each file of the admin upload form
    max_inflated_bytes: int = 256 * 1024 * 1024  # an uploaded .gz file, decompressed
    # Failed logins (throttle.py): this many within the window lock a username / a client address out
    login_failures_per_user: int = 10
    login_failures_per_address: int = 50
    login_window_s: int = 15 * 60

    def replace(self, **changes) -> LabelSettings:
        return dataclasses.replace(self, **changes)

    def body_limits(self):  # noqa: ANN201 - limits.BodyLimits (imported late: settings is imported everywhere)
        from rlhflab.label.limits import BodyLimits

        return BodyLimits(body_bytes=self.max_body_bytes, bulk_bytes=self.max_bulk_bytes,
                          upload_bytes=2 * self.max_upload_bytes + 64 * 1024)


@dataclass
class ProjectDefaults:
    labels_per_task: int = 3  # k: how many labelers answer each (non-gold) task
    gold_rate: float = 0.1  # chance that the next task is a gold task, while unseen gold tasks remain
    expiry_s: int = 30 * 60  # an unanswered assignment frees its slot after this long
    flag_threshold: float = 0.7  # labelers under this agreement (gold or peers) are flagged
    min_flag_answers: int = 3  # ... once they have at least this many comparable answers
