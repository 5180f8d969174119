"""The HTML pages: login, the labelling pages and the researchers' admin pages (server-rendered Jinja2, forms
posted with the session's CSRF token). Form fields take the annotated types of the JSON API's models (`schemas`):
the same limits, NUL refused the same way."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request, Response, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from rlhflab.data.records import BestOfN
from rlhflab.label import api, formats, schemas, service
from rlhflab.label.deps import (CSRF, Admin, CurrentUser, ProjectId, csrf_token, ctx_of, end_session, log_in,
                               optional_user, start_session)
from rlhflab.label.models import RATING_AXES
from rlhflab.label.service import Problem

router = APIRouter(include_in_schema=False)

Rating = Annotated[int | None, Form(**schemas.RATING)]


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    ctx = ctx_of(request)
    context.setdefault("user", optional_user(request))
    context["csrf_token"] = csrf_token(request)
    return ctx.templates.TemplateResponse(request, name, context, status_code=status_code)


def home_of(role: str) -> str:
    return "/admin" if role == "admin" else "/label"


# ---------------------------------------------------------------------------------------------- login

@router.get("/")
def home(request: Request) -> Response:
    user = optional_user(request)
    if user is None:
        return RedirectResponse("/login", 303)
    return RedirectResponse(home_of(user.role), 303)


@router.get("/login")
def login_page(request: Request) -> Response:
    return render(request, "login.html", user=None, error=None)


@router.post("/login", dependencies=[CSRF])
def login_form(request: Request, username: Annotated[schemas.LoginName, Form()],
               password: Annotated[schemas.LoginPassword, Form()]) -> Response:
    try:
        user = log_in(request, username, password)
    except Problem as err:  # throttled: the login page again, with the message and Retry-After
        response = render(request, "login.html", status_code=err.status, user=None, error=err.message)
        response.headers.update(err.headers)
        return response
    if user is None:
        return render(request, "login.html", status_code=401, user=None, error="Wrong username or password.")
    start_session(request, user)
    return RedirectResponse(home_of(user.role), 303)


@router.post("/logout", dependencies=[CSRF])
def logout_form(request: Request) -> Response:
    end_session(request)
    return RedirectResponse("/login", 303)


# ---------------------------------------------------------------------------------------------- labelling

@router.get("/label")
def label_index(user: CurrentUser, request: Request) -> Response:
    ctx = ctx_of(request)
    with ctx.tx() as s:
        projects = service.list_projects(s, active_only=True)
        done = {p.id: service.progress(s, p, user)["answered"] for p in projects}
    return render(request, "label_index.html", user=user, projects=projects, done=done)


@router.get("/label/{project_id}")
def label_page(project_id: ProjectId, user: CurrentUser, request: Request) -> Response:
    """The labeler's open assignment, or a button that asks for the next one: a GET never assigns (a link on
    another site must not be able to take tasks in a labeler's name)."""
    with ctx_of(request).tx() as s:
        project = _open_project(s, project_id)
        a = service.open_assignment(s, project, user)
        view = service.task_view(a) if a else None
        progress = service.progress(s, project, user)
    return render(request, "label_task.html", user=user, project=project, task=view,
                  answered=progress["answered"], progress=progress, axes=RATING_AXES)


@router.post("/label/{project_id}/next", dependencies=[CSRF])
def label_next(project_id: ProjectId, user: CurrentUser, request: Request) -> Response:
    ctx = ctx_of(request)
    with ctx.tx() as s:
        service.next_assignment(s, _open_project(s, project_id), user, ctx.rng)
    return RedirectResponse(f"/label/{project_id}", 303)


def _open_project(s, project_id: int):  # noqa: ANN001, ANN202
    project = service.get_project(s, project_id)
    if not project.active:
        raise Problem(404, f"no project {project_id}")
    return project


@router.post("/label/{project_id}/answer", dependencies=[CSRF])
def label_answer(project_id: ProjectId, user: CurrentUser, request: Request,
                 assignment_id: Annotated[int, Form(**schemas.DB_ID)],
                 side: Annotated[str | None, Form(pattern=schemas.SIDE_PATTERN)] = None,
                 confidence: Annotated[int | None, Form(**schemas.CONFIDENCE)] = None,
                 note: Annotated[schemas.Note, Form()] = "",
                 time_ms: Annotated[int | None, Form(**schemas.TIME_MS)] = None,
                 best: Annotated[int | None, Form(**schemas.BEST)] = None,
                 overall: Rating = None, accuracy: Rating = None, coverage: Rating = None,
                 coherence: Rating = None) -> Response:
    """Store the answer, then (this is a POST) assign the next task, so the page it redirects to shows it."""
    ctx = ctx_of(request)
    values = {"overall": overall, "accuracy": accuracy, "coverage": coverage, "coherence": coherence}
    ratings = {k: v for k, v in values.items() if v is not None} or None
    with ctx.tx() as s:
        service.submit_answer(s, user, assignment_id, side=side, confidence=confidence, ratings=ratings, best=best,
                              note=note, client_time_ms=time_ms, project_id=project_id)
        service.next_assignment(s, service.get_project(s, project_id), user, ctx.rng)
    return RedirectResponse(f"/label/{project_id}", 303)


# ---------------------------------------------------------------------------------------------- admin

@router.get("/admin")
def admin_page(user: Admin, request: Request) -> Response:
    with ctx_of(request).tx() as s:
        projects = service.list_projects(s)
        users = [u for u in service.list_users(s) if u.role != "external"]
    return render(request, "admin.html", user=user, projects=projects, users=users, message=None)


@router.post("/admin/users", dependencies=[CSRF])
def admin_create_user(
        user: Admin, request: Request, username: Annotated[schemas.Username, Form()],
        password: Annotated[schemas.Password, Form()],
        role: Annotated[str, Form(pattern=schemas.ROLE_PATTERN)] = "labeler") -> Response:
    ctx = ctx_of(request)
    with ctx.tx() as s:
        service.create_user(s, ctx.passwords, username, password, role)
    return RedirectResponse("/admin", 303)


@router.post("/admin/projects", dependencies=[CSRF])
async def admin_create_project(
        user: Admin, request: Request, name: Annotated[schemas.ProjectName, Form()],
        labels_per_task: Annotated[int, Form(**schemas.LABELS_PER_TASK)] = 3,
        gold_rate: Annotated[float, Form(**schemas.FRACTION)] = 0.1,
        expiry_s: Annotated[int, Form(**schemas.EXPIRY_S)] = 1800,
        flag_threshold: Annotated[float, Form(**schemas.FRACTION)] = 0.7,
        instructions: Annotated[schemas.Instructions, Form()] = "") -> Response:
    ctx = ctx_of(request)

    def create() -> int:
        with ctx.tx() as s:
            return service.create_project(s, name, instructions=instructions, labels_per_task=labels_per_task,
                                          gold_rate=gold_rate, expiry_s=expiry_s, flag_threshold=flag_threshold).id

    project_id = await run_in_threadpool(create)
    return RedirectResponse(f"/admin/projects/{project_id}", 303)


@router.get("/admin/projects/{project_id}")
def admin_project(project_id: ProjectId, user: Admin, request: Request,
                  threshold: Annotated[float | None, Query(**schemas.FRACTION)] = None) -> Response:
    with ctx_of(request).tx() as s:
        project = service.get_project(s, project_id)
        stats = service.dashboard(s, project, threshold)
    return render(request, "project.html", user=user, project=project, stats=stats)


@router.post("/admin/projects/{project_id}/upload", dependencies=[CSRF])
async def admin_upload(project_id: ProjectId, user: Admin, request: Request,
                       kind: Annotated[str, Form(pattern="^(samples|pairs|comparisons)$")],
                       file: UploadFile, posts: UploadFile | None = None,
                       mode: Annotated[str, Form(pattern="^(tasks|gold|answers)$")] = "tasks",
                       policies: Annotated[schemas.PolicyList, Form()] = "",
                       pairs_per_post: Annotated[int, Form(**schemas.PAIRS_PER_POST)] = 1,
                       ratings: Annotated[bool, Form()] = False) -> Response:
    ctx = ctx_of(request)
    limit, max_inflated = ctx.settings.max_upload_bytes, ctx.settings.max_inflated_bytes
    data = await read_upload(file, limit, max_inflated)
    posts_data = await read_upload(posts, limit, max_inflated)
    if data is None:
        raise Problem(422, "choose a file to upload")

    def store() -> None:
        with ctx.tx() as s:
            project = service.get_project(s, project_id)
            if kind == "comparisons":  # or best-of-N labels: parse_labels tells them apart
                service.import_labels(s, project, labels_from_bytes(data, file.filename or "upload"), mode)
                return
            bon = best_of_n_tasks_from_bytes(data, file.filename or "upload") if kind == "pairs" else None
            if bon is not None:
                service.add_best_of_n_tasks(s, project, bon)
                return
            pairs, post_map, post_where = tasks_from_files(
                kind, data, posts_data, name=file.filename or "upload",
                posts_name=(posts.filename if posts else None) or "posts",
                policies=[p.strip() for p in policies.split(",") if p.strip()] or None,
                pairs_per_post=pairs_per_post, ratings=ratings)
            service.add_tasks(s, project, pairs, post_map, post_where)

    await run_in_threadpool(store)
    return RedirectResponse(f"/admin/projects/{project_id}", 303)


@router.get("/admin/projects/{project_id}/export/{what}")
def admin_export(project_id: ProjectId, what: str, user: Admin, request: Request) -> Response:
    if what == "comparisons.jsonl":
        return api.export_comparisons(project_id, user, request)
    if what == "ratings.jsonl":
        return api.export_ratings(project_id, user, request)
    if what == "best_of_n.jsonl":
        return api.export_best_of_n(project_id, user, request)
    raise Problem(404, "no such export")


# ---------------------------------------------------------------------------------------------- uploaded files

async def read_upload(upload: UploadFile | None, limit: int, max_inflated: int) -> bytes | None:
    """An uploaded file's bytes, a .gz inflated (to at most `max_inflated` bytes: a small upload must not be able
    to fill the server's memory)."""
    if upload is None or not upload.filename:
        return None
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise Problem(413, f"{upload.filename}: larger than {limit} bytes")
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return await run_in_threadpool(formats.inflate, data, upload.filename, max_inflated)
    except formats.TooLarge as err:
        raise Problem(413, str(err)) from None
    except formats.FormatError as err:
        raise Problem(422, str(err)) from None


def tasks_from_files(kind: str, data: bytes, posts_data: bytes | None, *, name: str, posts_name: str,
                     policies: list[str] | None = None, pairs_per_post: int = 1, ratings: bool = False,
                     seed: int = 0) -> tuple[list[formats.PairRow], dict[str, Any], dict[str, str]]:
    """Parse an uploaded samples or pairs file (+ posts file) into tasks, the posts and where each post was.
    FormatError -> 422."""
    posts: dict[str, Any] = {}
    where: dict[str, str] = {}
    try:
        if posts_data is not None:
            posts, where = formats.read_posts(formats.read_jsonl_bytes(posts_data, posts_name), posts_name)
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
    return pairs, posts, where


def labels_from_bytes(data: bytes, name: str) -> formats.Labels:
    try:
        return formats.parse_labels(formats.read_jsonl_bytes(data, name), name)
    except formats.FormatError as err:
        raise Problem(422, str(err)) from None


def best_of_n_tasks_from_bytes(data: bytes, name: str) -> list[formats.BestOfNTask] | None:
    """The tasks of a best-of-N tasks file, or None when the file is a pairs file (its first row has no
    "samples")."""
    try:
        rows = list(formats.read_jsonl_bytes(data, name))
        if not rows or not formats.is_best_of_n_file_row(rows[0][1]):
            return None
        return formats.parse_best_of_n_tasks(rows, name)
    except formats.FormatError as err:
        raise Problem(422, str(err)) from None
