"""Password hashing (argon2id), CSRF and session tokens.

The session cookie is Starlette's signed cookie (itsdangerous); it carries a random session token whose SHA-256 is
a row of `sessions` (models.LoginSession), so that logging out or changing a password ends a session for good."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from rlhflab.label.settings import LabelSettings

# Verifying against this keeps unknown usernames as slow as wrong passwords (no user enumeration by timing).
_DUMMY_PASSWORD = "not-a-password"


class Passwords:
    def __init__(self, settings: LabelSettings):
        self.hasher = PasswordHasher(time_cost=settings.argon2_time_cost, memory_cost=settings.argon2_memory_kib,
                                     parallelism=settings.argon2_parallelism)
        self._dummy = self.hasher.hash(_DUMMY_PASSWORD)

    def hash(self, password: str) -> str:
        return self.hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        try:
            return self.hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def tokens_match(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def new_session_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What `sessions.token_sha256` stores: a stolen database holds no usable token."""
    return hashlib.sha256(token.encode()).hexdigest()
