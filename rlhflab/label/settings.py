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
    https_only_cookies: bool = False  # set behind TLS
    migrate_on_startup: bool = True
    # argon2id cost; the defaults are argon2-cffi's RFC 9106 "low memory" profile. Tests lower them.
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    max_upload_bytes: int = 64 * 1024 * 1024

    def replace(self, **changes) -> LabelSettings:
        return dataclasses.replace(self, **changes)


@dataclass
class ProjectDefaults:
    labels_per_task: int = 3  # k: how many labelers answer each (non-gold) task
    gold_rate: float = 0.1  # chance that the next task is a gold task, while unseen gold tasks remain
    expiry_s: int = 30 * 60  # an unanswered assignment frees its slot after this long
    flag_threshold: float = 0.7  # labelers under this agreement (gold or peers) are flagged
    min_flag_answers: int = 3  # ... once they have at least this many comparable answers
