"""The JSON API under /api (OpenAPI at /openapi.json): thin routes that check who is asking, validate the body
(the strict pydantic models of `schemas`) and call `service`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from rlhflab.data.records import Post, Sample
from rlhflab.label import db as dbm
from rlhflab.label import formats, schemas, service
from rlhflab.label.deps import (CSRF, Admin, CurrentUser, ObjectId, ProjectId, csrf_token, ctx_of, end_session,
                               log_in, start_session)
from rlhflab.label.models import Task, User
from rlhflab.label.service import Problem

router = APIRouter(prefix="/api")


# ---------------------------------------------------------------------------------------------- meta and auth

@router.get("/health", response_model=schemas.Health, tags=["meta"])
def health(request: Request) -> Any:
    return {"ok": True, "revision": dbm.current_revision(ctx_of(request).engine)}


@router.get("/csrf", response_model=schemas.CsrfOut, tags=["auth"])
def get_csrf(request: Request) -> Any:
    """The session's CSRF token (made on first call); send it as `X-CSRF-Token` on every POST."""
    return {"csrf_token": csrf_token(request)}


@router.post("/login", response_model=schemas.MeOut, tags=["auth"], dependencies=[CSRF],
             responses={401: {"description": "wrong username or password"},
                        429: {"description": "too many failed logins for this username or address (Retry-After)"}})
def api_login(body: schemas.LoginIn, request: Request) -> Any:
    user = log_in(request, body.username, body.password)
    if user is None:
        raise Problem(401, "wrong username or password")
    return start_session(request, user)


@router.post("/logout", tags=["auth"], dependencies=[CSRF])
def api_logout(request: Request) -> dict[str, bool]:
    end_session(request)
    return {"ok": True}


@router.get("/me", response_model=schemas.MeOut, tags=["auth"])
def me(user: CurrentUser, request: Request) -> Any:
    return {"id": user.id, "username": user.username, "role": user.role, "csrf_token": csrf_token(request)}


# ---------------------------------------------------------------------------------------------- users

@router.get("/users", response_model=list[schemas.UserOut], tags=["admin"])
def list_users(_: Admin, request: Request) -> Any:
    with ctx_of(request).tx() as s:
        return [u for u in service.list_users(s) if u.role != "external"]


@router.post("/users", response_model=schemas.UserOut, status_code=201, tags=["admin"], dependencies=[CSRF])
def create_user(body: schemas.UserIn, _: Admin, request: Request) -> Any:
    ctx = ctx_of(request)
    with ctx.tx() as s:
        return service.create_user(s, ctx.passwords, body.username, body.password, body.role)


@router.patch("/users/{user_id}", response_model=schemas.UserOut, tags=["admin"], dependencies=[CSRF])
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
            if not body.active:
                service.end_sessions(s, user.id)
        if body.password is not None:
            user.password_hash = ctx.passwords.hash(body.password)
            service.end_sessions(s, user.id)  # whoever had the old password is logged out, this admin too if it is them
        return user


# ---------------------------------------------------------------------------------------------- projects and tasks

@router.get("/projects", response_model=list[schemas.ProjectOut], tags=["labelling"])
def list_projects(user: CurrentUser, request: Request) -> Any:
    with ctx_of(request).tx() as s:
        return service.list_projects(s, active_only=user.role != "admin")


@router.post("/projects", response_model=schemas.ProjectOut, status_code=201, tags=["admin"], dependencies=[CSRF])
def create_project(body: schemas.ProjectIn, _: Admin, request: Request) -> Any:
    with ctx_of(request).tx() as s:
        params = body.model_dump()
        return service.create_project(s, params.pop("name"), instructions=params.pop("instructions"), **params)


@router.get("/projects/{project_id}", response_model=schemas.ProjectOut, tags=["admin"])
def get_project(project_id: ProjectId, _: Admin, request: Request) -> Any:
    with ctx_of(request).tx() as s:
        return service.get_project(s, project_id)


@router.patch("/projects/{project_id}", response_model=schemas.ProjectOut, tags=["admin"], dependencies=[CSRF])
def patch_project(project_id: ProjectId, body: schemas.ProjectPatch, _: Admin, request: Request) -> Any:
    with ctx_of(request).tx() as s:
        project = service.get_project(s, project_id)
        for key, value in body.model_dump(exclude_none=True).items():
            setattr(project, key, value)
        return project


@router.post("/projects/{project_id}/tasks", response_model=schemas.TasksOut, status_code=201, tags=["admin"],
             dependencies=[CSRF])
def add_tasks(project_id: ProjectId, body: schemas.TasksIn, _: Admin, request: Request) -> Any:
    posts = post_map(body.posts)
    pairs = [pair_row(i, t) for i, t in enumerate(body.tasks, 1)]
    return store_tasks(request, project_id, pairs, posts)


def pair_row(n: int, t: schemas.PairIn) -> formats.PairRow:
    """The n-th task (counted from 1, like the lines of a file) of a TasksIn body as the row `service.add_tasks`
    stores; what the model cannot check is a 422."""
    if (t.post is None) == (t.post_id is None):
        raise Problem(422, f"tasks:{n}: give exactly one of `post` and `post_id`")
    if t.gold is not None and t.summary_b is None:
        raise Problem(422, f"tasks:{n}: only comparison tasks (with summary_b) take a gold answer")
    if t.gold is not None:
        formats.check_confidence(t.gold.choice, t.gold.confidence,
                                 lambda p: Problem(422, f"tasks:{n}: field 'gold.confidence': {p}"))
    post = formats.parse_post(t.post.model_dump()) if t.post else None
    return formats.PairRow(
        post=post, post_id=post.id if post else t.post_id, summary_a=t.summary_a.text,  # type: ignore[arg-type]
        policy_a=t.summary_a.policy, summary_b=t.summary_b.text if t.summary_b else None,
        policy_b=t.summary_b.policy if t.summary_b else None,
        gold_choice=t.gold.choice if t.gold else None, gold_confidence=t.gold.confidence if t.gold else None,
        split=t.split, where=f"tasks:{n}")


@router.post("/projects/{project_id}/samples", response_model=schemas.TasksOut, status_code=201, tags=["admin"],
             dependencies=[CSRF])
def add_samples(project_id: ProjectId, body: schemas.SamplesIn, _: Admin, request: Request) -> Any:
    """Tasks from samples: per post, `pairs_per_post` pairs of two different policies drawn at random (seeded),
    and with `ratings` one rating task per sample."""
    posts = post_map(body.posts)
    samples = [Sample(**smp.model_dump()) for smp in body.samples]
    pairs = service.pairs_from_samples(samples, policies=body.policies, pairs_per_post=body.pairs_per_post,
                                       ratings=body.ratings, comparisons=body.comparisons, seed=body.seed)
    if not pairs:
        raise Problem(422, "no tasks: comparisons need two policies for a post (or set ratings)")
    return store_tasks(request, project_id, pairs, posts)


def post_map(posts: list[schemas.PostIn]) -> tuple[dict[str, Post], dict[str, str]]:
    """A body's `posts` by id, and where each was ("posts:N", from 1); one id with two different posts is a 422."""
    try:
        return formats.read_posts(((n, p.model_dump()) for n, p in enumerate(posts, 1)), "posts")
    except formats.FormatError as err:
        raise Problem(422, str(err)) from None


def store_tasks(request: Request, project_id: int, pairs: list[formats.PairRow],
                posts: tuple[dict[str, Post], dict[str, str]]) -> dict[str, Any]:
    with ctx_of(request).tx() as s:
        tasks = service.add_tasks(s, service.get_project(s, project_id), pairs, *posts)
        return {"created": len(tasks), "task_ids": [t.id for t in tasks]}


@router.post("/projects/{project_id}/best-of-n", response_model=schemas.TasksOut, status_code=201, tags=["admin"],
             dependencies=[CSRF])
def add_best_of_n_tasks(project_id: ProjectId, body: schemas.BestOfNTasksIn, _: Admin, request: Request) -> Any:
    """Best-of-N tasks: a query and its 2–16 continuations per row (no `best`: answers come from labelers)."""
    try:
        rows = [formats.parse_best_of_n_task(r, "rows", n) for n, r in enumerate(body.rows, 1)]
    except formats.FormatError as err:
        raise Problem(422, str(err)) from None
    with ctx_of(request).tx() as s:
        tasks = service.add_best_of_n_tasks(s, service.get_project(s, project_id), rows)
        return {"created": len(tasks), "task_ids": [t.id for t in tasks]}


@router.post("/projects/{project_id}/import", response_model=schemas.ImportOut, status_code=201, tags=["admin"],
             dependencies=[CSRF])
def import_comparisons(project_id: ProjectId, body: schemas.ImportIn, _: Admin, request: Request) -> Any:
    """Labels: OpenAI-schema comparisons, or best-of-N labels (rows with "samples" and "best"), told apart by the
    first row."""
    try:
        rows = formats.parse_labels(enumerate(body.rows, 1), "rows")
    except formats.FormatError as err:
        raise Problem(422, str(err)) from None
    with ctx_of(request).tx() as s:
        return vars(service.import_labels(s, service.get_project(s, project_id), rows, body.mode))


@router.post("/tasks/{task_id}/gold", response_model=schemas.TaskOut, tags=["admin"], dependencies=[CSRF])
def set_gold(task_id: ObjectId, body: schemas.GoldSet, _: Admin, request: Request) -> Any:
    with ctx_of(request).tx() as s:
        task = s.get(Task, task_id)
        if task is None:
            raise Problem(404, f"no task {task_id}")
        return service.set_gold(s, task, body.choice, body.confidence)


# ---------------------------------------------------------------------------------------------- results

@router.get("/projects/{project_id}/dashboard", response_model=schemas.Dashboard, tags=["admin"])
def dashboard(project_id: ProjectId, _: Admin, request: Request,
              threshold: Annotated[float | None, Query(**schemas.FRACTION, allow_inf_nan=False)] = None) -> Any:
    with ctx_of(request).tx() as s:
        return service.dashboard(s, service.get_project(s, project_id), threshold)


def _jsonl_response(rows: list[dict[str, Any]], filename: str) -> StreamingResponse:
    return StreamingResponse(iter(list(formats.dumps_jsonl(rows))), media_type="application/x-ndjson",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/projects/{project_id}/export/comparisons", tags=["admin"], response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}},
                             "description": "OpenAI-schema comparisons, one JSON object a line"}})
def export_comparisons(project_id: ProjectId, _: Admin, request: Request, include_gold: bool = True) -> Any:
    with ctx_of(request).tx() as s:
        rows = list(service.export_comparisons(s, service.get_project(s, project_id), include_gold))
    return _jsonl_response(rows, f"comparisons-{project_id}.jsonl")


@router.get("/projects/{project_id}/export/best-of-n", tags=["admin"], response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}},
                             "description": "best-of-N labels ({query, samples, best, ...}), one a line"}})
def export_best_of_n(project_id: ProjectId, _: Admin, request: Request, include_gold: bool = True) -> Any:
    with ctx_of(request).tx() as s:
        rows = list(service.export_best_of_n(s, service.get_project(s, project_id), include_gold))
    return _jsonl_response(rows, f"best-of-n-{project_id}.jsonl")


@router.get("/projects/{project_id}/export/ratings", tags=["admin"], response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}}, "description": "ratings, one a line"}})
def export_ratings(project_id: ProjectId, _: Admin, request: Request) -> Any:
    with ctx_of(request).tx() as s:
        rows = list(service.export_ratings(s, service.get_project(s, project_id)))
    return _jsonl_response(rows, f"ratings-{project_id}.jsonl")


# ---------------------------------------------------------------------------------------------- labelling

@router.post("/projects/{project_id}/next", response_model=schemas.NextOut, tags=["labelling"], dependencies=[CSRF])
def next_task(project_id: ProjectId, user: CurrentUser, request: Request) -> Any:
    """Your open assignment in the project, or a new one (`assignment` is null when nothing is left)."""
    ctx = ctx_of(request)
    with ctx.tx() as s:
        project = service.get_project(s, project_id)
        if not project.active and user.role != "admin":
            raise Problem(404, f"no project {project_id}")
        a = service.next_assignment(s, project, user, ctx.rng)
        return {"assignment": service.task_view(a) if a else None, **service.progress(s, project, user)}


@router.post("/assignments/{assignment_id}/answer", response_model=schemas.AnswerOut, tags=["labelling"],
             dependencies=[CSRF], status_code=201,
             responses={200: {"model": schemas.AnswerOut, "description": "already answered (a retry): nothing stored"}})
def answer(assignment_id: ObjectId, body: schemas.AnswerIn, user: CurrentUser, request: Request,
           response: Response) -> Any:
    """Answer one of your assignments. Idempotent: resubmitting (e.g. a retry after a timeout) returns the stored
    answer with `created: false` and status 200."""
    with ctx_of(request).tx() as s:
        ans, created = service.submit_answer(
            s, user, assignment_id, side=body.side, confidence=body.confidence,
            ratings=body.ratings.model_dump() if body.ratings else None, best=body.best, note=body.note,
            client_time_ms=body.time_ms, idempotency_key=body.idempotency_key)
    if not created:
        response.status_code = 200
    return {"answer_id": ans.id, "assignment_id": assignment_id, "created": created}
