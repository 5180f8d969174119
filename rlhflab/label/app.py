"""The FastAPI application: JSON API under /api (OpenAPI at /openapi.json), HTML pages, sessions and CSRF.

Routes are thin: they check who is asking, validate input (pydantic, strict) and call `service`. Every
state-changing request (POST/PATCH/DELETE) must carry the session's CSRF token — in the `X-CSRF-Token` header
(JSON) or a `csrf_token` form field (HTML forms) — or it gets 403.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from starlette.middleware.sessions import SessionMiddleware

from rlhflab.label import api, api_docs, pages
from rlhflab.label import db as dbm
from rlhflab.label.deps import HERE, Context, Forbidden, LoginRequired, is_api
from rlhflab.label.limits import BodyLimitMiddleware
from rlhflab.label.service import Problem
from rlhflab.label.settings import LabelSettings

LOG = logging.getLogger("rlhflab.label.app")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
SESSION_COOKIE = "rlhflab_session"


def create_app(settings: LabelSettings | None = None) -> FastAPI:
    settings = settings or LabelSettings()
    ctx = Context(settings)
    secret = settings.secret_key or dbm.get_or_create_secret(ctx.factory)
    app = FastAPI(title="rlhflab labelling", version="1", description=__doc__,
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")  # /api/docs: api_docs.py, no CDN
    app.state.ctx = ctx
    # outermost first: the session cookie is decoded, security headers go on every answer (a 413 too), and the
    # body limit applies before any route reads a byte
    app.add_middleware(BodyLimitMiddleware, limits=settings.body_limits())
    app.middleware("http")(security_headers)
    app.add_middleware(SessionMiddleware, secret_key=secret, session_cookie=SESSION_COOKIE,
                       max_age=settings.session_max_age_s, same_site="lax", https_only=settings.https_only_cookies)
    app.include_router(api.router)
    app.include_router(api_docs.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(LoginRequired, on_login_required)
    app.add_exception_handler(Forbidden, on_forbidden)
    app.add_exception_handler(IntegrityError, on_integrity)
    app.add_exception_handler(SQLAlchemyError, on_database_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    return app


async def security_headers(request: Request, call_next):  # noqa: ANN001, ANN201
    response = await call_next(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Content-Security-Policy", CSP)  # the API docs too: their assets are ours
    response.headers.setdefault("X-Frame-Options", "DENY")
    if request.app.state.ctx.settings.https_only_cookies:  # served over TLS only: browsers remember that
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if request.url.path.startswith(("/api/", "/admin", "/label")):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


# ---------------------------------------------------------------------------------------------- errors

async def on_problem(request: Request, exc: Problem) -> Response:
    response = error_response(request, exc.status, exc.message)
    response.headers.update(exc.headers)
    return response


async def on_login_required(request: Request, exc: LoginRequired) -> Response:
    if is_api(request) or request.method != "GET":
        return error_response(request, 401, "log in first")
    return RedirectResponse("/login", 303)


async def on_forbidden(request: Request, exc: Forbidden) -> Response:
    return error_response(request, 403, str(exc))


async def on_integrity(request: Request, exc: IntegrityError) -> Response:
    return error_response(request, 409, "conflicts with existing data")


async def on_database_error(request: Request, exc: SQLAlchemyError) -> Response:
    """The last net under validation: a database error is logged by kind and SQLSTATE only — its message may quote
    the values (posts, summaries, instructions) and the app logs no text."""
    orig = getattr(exc, "orig", None)
    LOG.error("database error %s (%s, SQLSTATE %s) on %s %s", type(exc).__name__, type(orig).__name__ if orig else "-",
              getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "-", request.method,
              request.scope.get("route").path if request.scope.get("route") else "?")
    return error_response(request, 500, "database error (logged without its data)")


async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]
    if is_api(request):
        return JSONResponse({"detail": errors}, status_code=422)
    text = "; ".join(f"{'.'.join(str(x) for x in e['loc'][1:])}: {e['msg']}" for e in errors)
    return error_response(request, 422, text)


def error_response(request: Request, status: int, message: str) -> Response:
    """JSON for the API and for clients that do not ask for HTML; the error page for browsers."""
    if is_api(request) or "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"detail": message}, status_code=status)
    try:
        return pages.render(request, "error.html", status_code=status, status=status, message=message)
    except Exception:  # noqa: BLE001 - never let an error page fail
        return JSONResponse({"detail": message}, status_code=status)
