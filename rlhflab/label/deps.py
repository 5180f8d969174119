"""What the JSON API and the HTML pages share: the app's context, sessions, CSRF, and who is asking.

Sessions live in the database (`sessions`); the signed cookie carries the session's token and the CSRF token.
Every state-changing request (POST/PATCH/DELETE) must carry the session's CSRF token — in the `X-CSRF-Token`
header (JSON) or a `csrf_token` form field (HTML forms) — or it gets 403. The app turns `LoginRequired` and
`Forbidden` into 401 (or a redirect to the login page) and 403.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import jinja2

from fastapi import Depends, Request
from fastapi import Path as PathParam
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from rlhflab.label import db as dbm
from rlhflab.label import schemas, service
from rlhflab.label.models import User
from rlhflab.label.security import Passwords, new_csrf_token, tokens_match
from rlhflab.label.settings import LabelSettings
from rlhflab.label.throttle import LoginThrottle

HERE = Path(__file__).resolve().parent
AUTH_LOG = logging.getLogger("rlhflab.label.auth")
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class LoginRequired(Exception):
    pass


class Forbidden(Exception):
    pass


class Context:
    """What the routes share: settings, the session factory, password hashing, templates."""

    def __init__(self, settings: LabelSettings):
        self.settings = settings
        self.engine = dbm.make_engine(settings.db)
        if settings.migrate_on_startup:
            dbm.migrate(self.engine)
        self.factory = dbm.session_factory(self.engine)
        self.passwords = Passwords(settings)
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True)
        self.templates = Jinja2Templates(env=env)  # autoescape on: every {{ value }} is HTML-escaped
        self.rng = random.SystemRandom()
        self.throttle = LoginThrottle(settings.login_failures_per_user, settings.login_failures_per_address,
                                      settings.login_window_s)

    @contextlib.contextmanager
    def tx(self) -> Iterator[Session]:
        """One transaction, committed before the route returns (so a 2xx means the data is stored)."""
        with dbm.session_scope(self.factory) as s:
            yield s


def ctx_of(request: Request) -> Context:
    return request.app.state.ctx


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


# ---------------------------------------------------------------------------------------------- CSRF

def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = new_csrf_token()
        request.session["csrf"] = token
    return token


async def check_csrf(request: Request) -> None:
    """A dependency on every state-changing route."""
    if request.method not in UNSAFE_METHODS:
        return
    given = request.headers.get("x-csrf-token")
    if given is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        try:
            form = await request.form()
        except Exception:  # noqa: BLE001 - a malformed body is the client's problem
            form = {}
        value = form.get("csrf_token")
        given = value if isinstance(value, str) else None
    if not tokens_match(request.session.get("csrf"), given):
        raise Forbidden("missing or wrong CSRF token")


# ---------------------------------------------------------------------------------------------- who is asking

def optional_user(request: Request) -> User | None:
    """Who is asking: the user of the cookie's session *if the server still holds that session* (logout, a new
    password or deactivation deleted it), else None. A cookie that names no live session is emptied."""
    token = request.session.get("sid")
    if not isinstance(token, str):
        return None
    with ctx_of(request).tx() as s:
        user = service.session_user(s, token)
    if user is None:
        request.session.pop("sid", None)
    return user


def require_user(request: Request) -> User:
    user = optional_user(request)
    if user is None:
        raise LoginRequired()
    return user


def require_admin(request: Request) -> User:
    user = require_user(request)
    if user.role != "admin":
        raise Forbidden("researchers (admin role) only")
    return user


def client_address(request: Request) -> str:
    """The peer's address; behind a proxy it is the client's only when `serve --trust-proxy` names that proxy."""
    return request.client.host if request.client else "unknown"


def log_in(request: Request, username: str, password: str) -> User | None:
    """Check a username and password, throttled per username and per client address (429 with Retry-After,
    before any hashing), and log every failure with who and from where, never the password."""
    ctx = ctx_of(request)
    address = client_address(request)
    wait = ctx.throttle.retry_after(username, address)
    if wait is not None:
        AUTH_LOG.warning("login refused (too many failures) for username %r from %s", username, address)
        raise service.Problem(429, f"too many failed logins: try again in {wait} s",
                              headers={"Retry-After": str(wait)})
    with ctx.tx() as s:
        user = service.authenticate(s, ctx.passwords, username, password)
    if user is None:
        ctx.throttle.failed(username, address)
        AUTH_LOG.warning("failed login for username %r from %s", username, address)
        return None
    ctx.throttle.succeeded(username)
    return user


def start_session(request: Request, user: User) -> dict[str, Any]:
    """Log `user` in; returns the MeOut fields. The session starts empty, with a new CSRF token, so nothing from
    before the login (a token someone else may have planted) carries over; a session this browser had is ended."""
    end_session(request)
    with ctx_of(request).tx() as s:
        request.session["sid"] = service.open_session(s, user, ctx_of(request).settings.session_max_age_s)
    token = csrf_token(request)
    return {"id": user.id, "username": user.username, "role": user.role, "csrf_token": token}


def end_session(request: Request) -> None:
    """Log out: the server forgets the session, so a copy of the cookie is worth nothing."""
    token = request.session.get("sid")
    if isinstance(token, str):
        with ctx_of(request).tx() as s:
            service.close_session(s, token)
    request.session.clear()


CurrentUser = Annotated[User, Depends(require_user)]
Admin = Annotated[User, Depends(require_admin)]
CSRF = Depends(check_csrf)
ProjectId = Annotated[int, PathParam(**schemas.DB_ID)]
ObjectId = Annotated[int, PathParam(**schemas.DB_ID)]
