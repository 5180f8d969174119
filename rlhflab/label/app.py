"""The FastAPI application: JSON API under /api (OpenAPI at /openapi.json), HTML pages, sessions and CSRF.

Routes are thin: they check who is asking, validate input (pydantic, strict) and call `service`. Every
state-changing request (POST/PATCH/DELETE) must carry the session's CSRF token — in the `X-CSRF-Token` header
(JSON) or a `csrf_token` form field (HTML forms) — or it gets 403.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import jinja2

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request, Response, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.middleware.sessions import SessionMiddleware

from rlhflab.label import db as dbm
from rlhflab.label import formats, schemas, service
from rlhflab.label.models import RATING_AXES, Task, User
from rlhflab.label.security import Passwords, new_csrf_token, tokens_match
from rlhflab.label.service import Problem
from rlhflab.label.settings import LabelSettings

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
SESSION_COOKIE = "rlhflab_session"


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

    @contextlib.contextmanager
    def tx(self) -> Iterator[Session]:
        """One transaction, committed before the route returns (so a 2xx means the data is stored)."""
        with dbm.session_scope(self.factory) as s:
            yield s


def ctx_of(request: Request) -> Context:
    return request.app.state.ctx


# ---------------------------------------------------------------------------------------------- auth & CSRF

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


def optional_user(request: Request) -> User | None:
    uid = request.session.get("uid")
    if not isinstance(uid, int):
        return None
    with ctx_of(request).tx() as s:
        user = s.get(User, uid)
    if user is None or not user.active or user.role == "external":
        request.session.pop("uid", None)
        return None
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


CurrentUser = Annotated[User, Depends(require_user)]
Admin = Annotated[User, Depends(require_admin)]
CSRF = Depends(check_csrf)
ProjectId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]
ObjectId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


# ---------------------------------------------------------------------------------------------- file uploads

async def read_upload(upload: UploadFile | None, limit: int) -> bytes | None:
    if upload is None or not upload.filename:
        return None
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise Problem(413, f"{upload.filename}: larger than {limit} bytes")
    return data


def tasks_from_files(kind: str, data: bytes, posts_data: bytes | None, *, name: str, posts_name: str,
                     policies: list[str] | None = None, pairs_per_post: int = 1, ratings: bool = False,
                     seed: int = 0) -> tuple[list[formats.PairRow], dict[str, Any]]:
    """Parse an uploaded samples or pairs file (+ posts file) into tasks. FormatError -> 422."""
    posts: dict[str, Any] = {}
    try:
        if posts_data is not None:
            for n, row in formats.read_jsonl_bytes(posts_data, posts_name):
                p = formats.parse_post(row, posts_name, n)
                posts[p.id] = p
        if kind == "samples":
            samples = [formats.parse_sample(row, name, n) for n, row in formats.read_jsonl_bytes(data, name)]
            pairs = service.pairs_from_samples(samples, policies=policies, pairs_per_post=pairs_per_post,
                                               ratings=ratings, seed=seed)
        elif kind == "pairs":
            pairs = [formats.parse_pair(row, name, n) for n, row in formats.read_jsonl_bytes(data, name)]
        else:
            raise Problem(422, "kind must be samples or pairs")
    except formats.FormatError as err:
        raise Problem(422, str(err)) from None
    if not pairs:
        raise Problem(422, f"{name}: no tasks (a samples file needs two policies per post, or --ratings)")
    return pairs, posts


def comparisons_from_bytes(data: bytes, name: str) -> list[formats.ComparisonRow]:
    try:
        return [formats.parse_openai_comparison(row, name, n) for n, row in formats.read_jsonl_bytes(data, name)]
    except formats.FormatError as err:
        raise Problem(422, str(err)) from None


# ---------------------------------------------------------------------------------------------- JSON API

api = APIRouter(prefix="/api")


@api.get("/health", response_model=schemas.Health, tags=["meta"])
def health(request: Request) -> Any:
    return {"ok": True, "revision": dbm.current_revision(ctx_of(request).engine)}


@api.get("/csrf", response_model=schemas.CsrfOut, tags=["auth"])
def get_csrf(request: Request) -> Any:
    """The session's CSRF token (made on first call); send it as `X-CSRF-Token` on every POST."""
    return {"csrf_token": csrf_token(request)}


@api.post("/login", response_model=schemas.MeOut, tags=["auth"], dependencies=[CSRF],
          responses={401: {"description": "wrong username or password"}})
def api_login(body: schemas.LoginIn, request: Request) -> Any:
    ctx = ctx_of(request)
    with ctx.tx() as s:
        user = service.authenticate(s, ctx.passwords, body.username, body.password)
    if user is None:
        raise Problem(401, "wrong username or password")
    return _start_session(request, user)


def _start_session(request: Request, user: User) -> dict[str, Any]:
    request.session.clear()
    request.session["uid"] = user.id
    token = csrf_token(request)
    return {"id": user.id, "username": user.username, "role": user.role, "csrf_token": token}


@api.post("/logout", tags=["auth"], dependencies=[CSRF])
def api_logout(request: Request) -> dict[str, bool]:
    request.session.clear()
    return {"ok": True}


@api.get("/me", response_model=schemas.MeOut, tags=["auth"])
def me(user: CurrentUser, request: Request) -> Any:
    return {"id": user.id, "username": user.username, "role": user.role, "csrf_token": csrf_token(request)}


@api.get("/users", response_model=list[schemas.UserOut], tags=["admin"])
def list_users(_: Admin, request: Request) -> Any:
    with ctx_of(request).tx() as s:
        return [u for u in service.list_users(s) if u.role != "external"]


@api.post("/users", response_model=schemas.UserOut, status_code=201, tags=["admin"], dependencies=[CSRF])
def create_user(body: schemas.UserIn, _: Admin, request: Request) -> Any:
    ctx = ctx_of(request)
    with ctx.tx() as s:
        return service.create_user(s, ctx.passwords, body.username, body.password, body.role)


@api.patch("/users/{user_id}", response_model=schemas.UserOut, tags=["admin"], dependencies=[CSRF])
def patch_user(user_id: ObjectId, body: schemas.UserPatch, admin: Admin, request: Request) -> Any:
    ctx = ctx_of(request)
    with ctx.tx() as s:
        user = s.get(User, user_id)
        if user is None or user.role == "external":
            raise Problem(404, f"no user {user_id}")
        if body.active is not None:
            if user.id == admin.id and not body.active:
                raise Problem(409, "you cannot deactivate yourself")
            user.active = body.active
        if body.password is not None:
            user.password_hash = ctx.passwords.hash(body.password)
        return user


@api.get("/projects", response_model=list[schemas.ProjectOut], tags=["labelling"])
def list_projects(user: CurrentUser, request: Request) -> Any:
    with ctx_of(request).tx() as s:
        return service.list_projects(s, active_only=user.role != "admin")


@api.post("/projects", response_model=schemas.ProjectOut, status_code=201, tags=["admin"], dependencies=[CSRF])
def create_project(body: schemas.ProjectIn, _: Admin, request: Request) -> Any:
    with ctx_of(request).tx() as s:
        params = body.model_dump()
        return service.create_project(s, params.pop("name"), instructions=params.pop("instructions"), **params)


@api.get("/projects/{project_id}", response_model=schemas.ProjectOut, tags=["admin"])
def get_project(project_id: ProjectId, _: Admin, request: Request) -> Any:
    with ctx_of(request).tx() as s:
        return service.get_project(s, project_id)


@api.patch("/projects/{project_id}", response_model=schemas.ProjectOut, tags=["admin"], dependencies=[CSRF])
def patch_project(project_id: ProjectId, body: schemas.ProjectPatch, _: Admin, request: Request) -> Any:
    with ctx_of(request).tx() as s:
        project = service.get_project(s, project_id)
        for key, value in body.model_dump(exclude_none=True).items():
            setattr(project, key, value)
        return project


@api.post("/projects/{project_id}/tasks", response_model=schemas.TasksOut, status_code=201, tags=["admin"],
          dependencies=[CSRF])
def add_tasks(project_id: ProjectId, body: schemas.TasksIn, _: Admin, request: Request) -> Any:
    posts = {p.id: formats.parse_post(p.model_dump()) for p in body.posts}
    pairs = []
    for i, t in enumerate(body.tasks):
        if (t.post is None) == (t.post_id is None):
            raise Problem(422, f"tasks[{i}]: give exactly one of `post` and `post_id`")
        if t.gold is not None and t.summary_b is None:
            raise Problem(422, f"tasks[{i}]: only comparison tasks (with summary_b) take a gold answer")
        if t.gold is not None:
            formats.check_confidence(t.gold.choice, t.gold.confidence,
                                     lambda p, i=i: Problem(422, f"tasks[{i}].gold.confidence: {p}"))
        post = formats.parse_post(t.post.model_dump()) if t.post else None
        pairs.append(formats.PairRow(
            post=post, post_id=post.id if post else t.post_id, summary_a=t.summary_a.text,  # type: ignore[arg-type]
            policy_a=t.summary_a.policy, summary_b=t.summary_b.text if t.summary_b else None,
            policy_b=t.summary_b.policy if t.summary_b else None,
            gold_choice=t.gold.choice if t.gold else None, gold_confidence=t.gold.confidence if t.gold else None,
            split=t.split))
    with ctx_of(request).tx() as s:
        tasks = service.add_tasks(s, service.get_project(s, project_id), pairs, posts)
        return {"created": len(tasks), "task_ids": [t.id for t in tasks]}


@api.post("/projects/{project_id}/samples", response_model=schemas.TasksOut, status_code=201, tags=["admin"],
          dependencies=[CSRF])
def add_samples(project_id: ProjectId, body: schemas.SamplesIn, _: Admin, request: Request) -> Any:
    """Tasks from samples: per post, `pairs_per_post` pairs of two different policies drawn at random (seeded),
    and with `ratings` one rating task per sample."""
    from rlhflab.data.records import Sample

    posts = {p.id: formats.parse_post(p.model_dump()) for p in body.posts}
    samples = [Sample(**smp.model_dump()) for smp in body.samples]
    pairs = service.pairs_from_samples(samples, policies=body.policies, pairs_per_post=body.pairs_per_post,
                                       ratings=body.ratings, comparisons=body.comparisons, seed=body.seed)
    if not pairs:
        raise Problem(422, "no tasks: comparisons need two policies for a post (or set ratings)")
    with ctx_of(request).tx() as s:
        tasks = service.add_tasks(s, service.get_project(s, project_id), pairs, posts)
        return {"created": len(tasks), "task_ids": [t.id for t in tasks]}


@api.post("/projects/{project_id}/import", response_model=schemas.ImportOut, status_code=201, tags=["admin"],
          dependencies=[CSRF])
def import_comparisons(project_id: ProjectId, body: schemas.ImportIn, _: Admin, request: Request) -> Any:
    try:
        rows = [formats.parse_openai_comparison(r, "rows", i) for i, r in enumerate(body.rows)]
    except formats.FormatError as err:
        raise Problem(422, str(err)) from None
    with ctx_of(request).tx() as s:
        return vars(service.import_comparisons(s, service.get_project(s, project_id), rows, body.mode))


@api.post("/tasks/{task_id}/gold", response_model=schemas.TaskOut, tags=["admin"], dependencies=[CSRF])
def set_gold(task_id: ObjectId, body: schemas.GoldSet, _: Admin, request: Request) -> Any:
    with ctx_of(request).tx() as s:
        task = s.get(Task, task_id)
        if task is None:
            raise Problem(404, f"no task {task_id}")
        return service.set_gold(s, task, body.choice, body.confidence)


@api.get("/projects/{project_id}/dashboard", response_model=schemas.Dashboard, tags=["admin"])
def dashboard(project_id: ProjectId, _: Admin, request: Request,
              threshold: Annotated[float | None, Query(ge=0.0, le=1.0, allow_inf_nan=False)] = None) -> Any:
    with ctx_of(request).tx() as s:
        return service.dashboard(s, service.get_project(s, project_id), threshold)


def _jsonl_response(rows: list[dict[str, Any]], filename: str) -> StreamingResponse:
    return StreamingResponse(iter(list(formats.dumps_jsonl(rows))), media_type="application/x-ndjson",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@api.get("/projects/{project_id}/export/comparisons", tags=["admin"], response_class=StreamingResponse,
         responses={200: {"content": {"application/x-ndjson": {}},
                          "description": "OpenAI-schema comparisons, one JSON object a line"}})
def export_comparisons(project_id: ProjectId, _: Admin, request: Request, include_gold: bool = True) -> Any:
    with ctx_of(request).tx() as s:
        rows = list(service.export_comparisons(s, service.get_project(s, project_id), include_gold))
    return _jsonl_response(rows, f"comparisons-{project_id}.jsonl")


@api.get("/projects/{project_id}/export/ratings", tags=["admin"], response_class=StreamingResponse,
         responses={200: {"content": {"application/x-ndjson": {}}, "description": "ratings, one a line"}})
def export_ratings(project_id: ProjectId, _: Admin, request: Request) -> Any:
    with ctx_of(request).tx() as s:
        rows = list(service.export_ratings(s, service.get_project(s, project_id)))
    return _jsonl_response(rows, f"ratings-{project_id}.jsonl")


@api.post("/projects/{project_id}/next", response_model=schemas.NextOut, tags=["labelling"], dependencies=[CSRF])
def next_task(project_id: ProjectId, user: CurrentUser, request: Request) -> Any:
    """Your open assignment in the project, or a new one (`assignment` is null when nothing is left)."""
    ctx = ctx_of(request)
    with ctx.tx() as s:
        project = service.get_project(s, project_id)
        if not project.active and user.role != "admin":
            raise Problem(404, f"no project {project_id}")
        a = service.next_assignment(s, project, user, ctx.rng)
        return {"assignment": service.task_view(a) if a else None,
                "answered": service.progress(s, project, user)["answered"]}


@api.post("/assignments/{assignment_id}/answer", response_model=schemas.AnswerOut, tags=["labelling"],
          dependencies=[CSRF], status_code=201,
          responses={200: {"model": schemas.AnswerOut, "description": "already answered (a retry): nothing stored"}})
def answer(assignment_id: ObjectId, body: schemas.AnswerIn, user: CurrentUser, request: Request,
           response: Response) -> Any:
    """Answer one of your assignments. Idempotent: resubmitting (e.g. a retry after a timeout) returns the stored
    answer with `created: false` and status 200."""
    with ctx_of(request).tx() as s:
        ans, created = service.submit_answer(
            s, user, assignment_id, side=body.side, confidence=body.confidence,
            ratings=body.ratings.model_dump() if body.ratings else None, note=body.note,
            client_time_ms=body.time_ms, idempotency_key=body.idempotency_key)
    if not created:
        response.status_code = 200
    return {"answer_id": ans.id, "assignment_id": assignment_id, "created": created}


# ---------------------------------------------------------------------------------------------- HTML pages

pages = APIRouter(include_in_schema=False)


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    ctx = ctx_of(request)
    context.setdefault("user", optional_user(request))
    context["csrf_token"] = csrf_token(request)
    return ctx.templates.TemplateResponse(request, name, context, status_code=status_code)


@pages.get("/")
def home(request: Request) -> Response:
    user = optional_user(request)
    if user is None:
        return RedirectResponse("/login", 303)
    return RedirectResponse("/admin" if user.role == "admin" else "/label", 303)


@pages.get("/login")
def login_page(request: Request) -> Response:
    return render(request, "login.html", user=None, error=None)


@pages.post("/login", dependencies=[CSRF])
def login_form(request: Request, username: Annotated[str, Form(max_length=64)],
               password: Annotated[str, Form(max_length=256)]) -> Response:
    ctx = ctx_of(request)
    with ctx.tx() as s:
        user = service.authenticate(s, ctx.passwords, username, password)
    if user is None:
        return render(request, "login.html", status_code=401, user=None, error="Wrong username or password.")
    _start_session(request, user)
    return RedirectResponse("/admin" if user.role == "admin" else "/label", 303)


@pages.post("/logout", dependencies=[CSRF])
def logout_form(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/login", 303)


@pages.get("/label")
def label_index(user: CurrentUser, request: Request) -> Response:
    ctx = ctx_of(request)
    with ctx.tx() as s:
        projects = service.list_projects(s, active_only=True)
        done = {p.id: service.progress(s, p, user)["answered"] for p in projects}
    return render(request, "label_index.html", user=user, projects=projects, done=done)


@pages.get("/label/{project_id}")
def label_page(project_id: ProjectId, user: CurrentUser, request: Request) -> Response:
    ctx = ctx_of(request)
    with ctx.tx() as s:
        project = service.get_project(s, project_id)
        if not project.active:
            raise Problem(404, f"no project {project_id}")
        a = service.next_assignment(s, project, user, ctx.rng)
        view = service.task_view(a) if a else None
        answered = service.progress(s, project, user)["answered"]
    return render(request, "label_task.html", user=user, project=project, task=view, answered=answered,
                  axes=RATING_AXES)


@pages.post("/label/{project_id}/answer", dependencies=[CSRF])
def label_answer(project_id: ProjectId, user: CurrentUser, request: Request,
                 assignment_id: Annotated[int, Form(ge=1, le=2**31 - 1)],
                 side: Annotated[str | None, Form(pattern="^(left|right)$")] = None,
                 confidence: Annotated[int | None, Form(ge=1, le=9)] = None,
                 note: Annotated[str, Form(max_length=5000)] = "",
                 time_ms: Annotated[int | None, Form(ge=0, le=24 * 3600 * 1000)] = None,
                 overall: Annotated[int | None, Form(ge=1, le=7)] = None,
                 accuracy: Annotated[int | None, Form(ge=1, le=7)] = None,
                 coverage: Annotated[int | None, Form(ge=1, le=7)] = None,
                 coherence: Annotated[int | None, Form(ge=1, le=7)] = None) -> Response:
    values = {"overall": overall, "accuracy": accuracy, "coverage": coverage, "coherence": coherence}
    ratings = {k: v for k, v in values.items() if v is not None} or None
    with ctx_of(request).tx() as s:
        service.submit_answer(s, user, assignment_id, side=side, confidence=confidence, ratings=ratings,
                              note=note.replace("\x00", ""), client_time_ms=time_ms)
    return RedirectResponse(f"/label/{project_id}", 303)


@pages.get("/admin")
def admin_page(user: Admin, request: Request) -> Response:
    with ctx_of(request).tx() as s:
        projects = service.list_projects(s)
        users = [u for u in service.list_users(s) if u.role != "external"]
    return render(request, "admin.html", user=user, projects=projects, users=users, message=None)


@pages.post("/admin/users", dependencies=[CSRF])
def admin_create_user(user: Admin, request: Request, username: Annotated[str, Form(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")],
                      password: Annotated[str, Form(min_length=8, max_length=256)],
                      role: Annotated[str, Form(pattern="^(admin|labeler)$")] = "labeler") -> Response:
    ctx = ctx_of(request)
    with ctx.tx() as s:
        service.create_user(s, ctx.passwords, username, password, role)
    return RedirectResponse("/admin", 303)


@pages.post("/admin/projects", dependencies=[CSRF])
async def admin_create_project(
        user: Admin, request: Request, name: Annotated[str, Form(min_length=1, max_length=200)],
        labels_per_task: Annotated[int, Form(ge=1, le=50)] = 3,
        gold_rate: Annotated[float, Form(ge=0.0, le=1.0)] = 0.1,
        expiry_s: Annotated[int, Form(ge=10, le=7 * 24 * 3600)] = 1800,
        flag_threshold: Annotated[float, Form(ge=0.0, le=1.0)] = 0.7,
        instructions: Annotated[str, Form(max_length=20000)] = "") -> Response:
    ctx = ctx_of(request)

    def create() -> int:
        with ctx.tx() as s:
            return service.create_project(s, name, instructions=instructions, labels_per_task=labels_per_task,
                                          gold_rate=gold_rate, expiry_s=expiry_s, flag_threshold=flag_threshold).id

    from starlette.concurrency import run_in_threadpool

    project_id = await run_in_threadpool(create)
    return RedirectResponse(f"/admin/projects/{project_id}", 303)


@pages.get("/admin/projects/{project_id}")
def admin_project(project_id: ProjectId, user: Admin, request: Request,
                  threshold: Annotated[float | None, Query(ge=0.0, le=1.0)] = None) -> Response:
    with ctx_of(request).tx() as s:
        project = service.get_project(s, project_id)
        stats = service.dashboard(s, project, threshold)
    return render(request, "project.html", user=user, project=project, stats=stats)


@pages.post("/admin/projects/{project_id}/upload", dependencies=[CSRF])
async def admin_upload(project_id: ProjectId, user: Admin, request: Request,
                       kind: Annotated[str, Form(pattern="^(samples|pairs|comparisons)$")],
                       file: UploadFile, posts: UploadFile | None = None,
                       mode: Annotated[str, Form(pattern="^(tasks|gold|answers)$")] = "tasks",
                       policies: Annotated[str, Form(max_length=2000)] = "",
                       pairs_per_post: Annotated[int, Form(ge=1, le=100)] = 1,
                       ratings: Annotated[bool, Form()] = False) -> Response:
    ctx = ctx_of(request)
    limit = ctx.settings.max_upload_bytes
    data = await read_upload(file, limit)
    posts_data = await read_upload(posts, limit)
    if data is None:
        raise Problem(422, "choose a file to upload")

    def store() -> None:
        with ctx.tx() as s:
            project = service.get_project(s, project_id)
            if kind == "comparisons":
                service.import_comparisons(s, project, comparisons_from_bytes(data, file.filename or "upload"), mode)
                return
            pairs, post_map = tasks_from_files(
                kind, data, posts_data, name=file.filename or "upload",
                posts_name=(posts.filename if posts else None) or "posts",
                policies=[p.strip() for p in policies.split(",") if p.strip()] or None,
                pairs_per_post=pairs_per_post, ratings=ratings)
            service.add_tasks(s, project, pairs, post_map)

    from starlette.concurrency import run_in_threadpool

    await run_in_threadpool(store)
    return RedirectResponse(f"/admin/projects/{project_id}", 303)


@pages.get("/admin/projects/{project_id}/export/{what}")
def admin_export(project_id: ProjectId, what: str, user: Admin, request: Request) -> Response:
    if what == "comparisons.jsonl":
        return export_comparisons(project_id, user, request)
    if what == "ratings.jsonl":
        return export_ratings(project_id, user, request)
    raise Problem(404, "no such export")


# ---------------------------------------------------------------------------------------------- the app

def create_app(settings: LabelSettings | None = None) -> FastAPI:
    settings = settings or LabelSettings()
    ctx = Context(settings)
    secret = settings.secret_key or dbm.get_or_create_secret(ctx.factory)
    app = FastAPI(title="rlhflab labelling", version="1", description=__doc__,
                  docs_url="/api/docs", redoc_url=None, openapi_url="/openapi.json")
    app.state.ctx = ctx

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # noqa: ANN001, ANN202
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if not request.url.path.startswith("/api/docs"):
            response.headers.setdefault("Content-Security-Policy", CSP)
            response.headers.setdefault("X-Frame-Options", "DENY")
        if request.url.path.startswith(("/api/", "/admin", "/label")):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    app.add_middleware(SessionMiddleware, secret_key=secret, session_cookie=SESSION_COOKIE,
                       max_age=settings.session_max_age_s, same_site="lax", https_only=settings.https_only_cookies)
    app.include_router(api)
    app.include_router(pages)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> Response:
        return _error(request, exc.status, exc.message)

    @app.exception_handler(LoginRequired)
    async def on_login_required(request: Request, exc: LoginRequired) -> Response:
        if _is_api(request) or request.method != "GET":
            return _error(request, 401, "log in first")
        return RedirectResponse("/login", 303)

    @app.exception_handler(Forbidden)
    async def on_forbidden(request: Request, exc: Forbidden) -> Response:
        return _error(request, 403, str(exc))

    @app.exception_handler(IntegrityError)
    async def on_integrity(request: Request, exc: IntegrityError) -> Response:
        return _error(request, 409, "conflicts with existing data")

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        if _is_api(request):
            return JSONResponse({"detail": errors}, status_code=422)
        text = "; ".join(f"{'.'.join(str(x) for x in e['loc'][1:])}: {e['msg']}" for e in errors)
        return _error(request, 422, text)

    return app


def _error(request: Request, status: int, message: str) -> Response:
    if _is_api(request) or "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"detail": message}, status_code=status)
    try:
        return render(request, "error.html", status_code=status, status=status, message=message)
    except Exception:  # noqa: BLE001 - never let an error page fail
        return JSONResponse({"detail": message}, status_code=status)
