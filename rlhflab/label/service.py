"""The labelling operations on a SQLAlchemy session. Routes and the CLI call these; they hold no HTTP.

Errors a user can cause raise `Problem(status, message)`; the app turns them into that HTTP status.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rlhflab.data.pairs import policy_pairs, samples_by_post
from rlhflab.data.records import CONFIDENCE_NO_PREFERENCE, BestOfN, Post, Sample
from rlhflab.label import assignment as assign
from rlhflab.label import formats, quality
from rlhflab.label.models import (RATING_AXES, ROLES, Answer, Assignment, LoginSession, Project, Task, User, utcnow)
from rlhflab.label.models import Post as PostRow
from rlhflab.label.security import Passwords, new_session_token, token_digest
from rlhflab.label.settings import ProjectDefaults


class Problem(Exception):
    """An error the caller made: `status` is the HTTP status the app answers with."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# ---------------------------------------------------------------------------------------------- users

def create_user(s: Session, passwords: Passwords | None, username: str, password: str | None,
                role: str = "labeler") -> User:
    if role not in ROLES:
        raise Problem(422, f"role must be one of {', '.join(ROLES)}")
    if s.scalar(select(User.id).where(User.username == username)) is not None:
        raise Problem(409, f"user {username!r} exists")
    if role != "external" and (not password or passwords is None):
        raise Problem(422, "a password is required")
    user = User(username=username, role=role,
                password_hash=passwords.hash(password) if password and passwords else None)
    s.add(user)
    s.flush()
    return user


def set_password(s: Session, passwords: Passwords, username: str, password: str) -> User:
    """A new password ends every session of the user (whoever knew the old one is logged out)."""
    user = s.scalar(select(User).where(User.username == username))
    if user is None:
        raise Problem(404, f"no user {username!r}")
    user.password_hash = passwords.hash(password)
    end_sessions(s, user.id)
    return user


# ---------------------------------------------------------------------------------------------- sessions

def open_session(s: Session, user: User, max_age_s: int, now: datetime | None = None) -> str:
    """A new login session for `user`; returns the token for the cookie (the table keeps its digest only).
    Expired sessions of everyone are deleted on the way, so the table stays the size of the live ones."""
    now = now or utcnow()
    s.execute(delete(LoginSession).where(LoginSession.expires_at <= now))
    token = new_session_token()
    s.add(LoginSession(token_sha256=token_digest(token), user_id=user.id, created_at=now,
                       expires_at=now + timedelta(seconds=max_age_s)))
    return token


def session_user(s: Session, token: str, now: datetime | None = None) -> User | None:
    """The active, non-external user of a live session, or None (unknown, ended or expired token)."""
    now = now or utcnow()
    row = s.get(LoginSession, token_digest(token))
    if row is None or row.expires_at <= now:
        return None
    user = s.get(User, row.user_id)
    if user is None or not user.active or user.role == "external":
        return None
    return user


def close_session(s: Session, token: str) -> None:
    s.execute(delete(LoginSession).where(LoginSession.token_sha256 == token_digest(token)))


def end_sessions(s: Session, user_id: int) -> int:
    """Log a user out everywhere (password change, deactivation). Returns how many sessions ended."""
    return s.execute(delete(LoginSession).where(LoginSession.user_id == user_id)).rowcount or 0


def authenticate(s: Session, passwords: Passwords, username: str, password: str) -> User | None:
    user = s.scalar(select(User).where(User.username == username))
    ok = passwords.verify(user.password_hash if user else None, password)
    if not ok or user is None or not user.active or user.role == "external":
        return None
    return user


def list_users(s: Session) -> list[User]:
    return list(s.scalars(select(User).order_by(User.id)))


# ---------------------------------------------------------------------------------------------- projects

def create_project(s: Session, name: str, *, instructions: str = "", defaults: ProjectDefaults | None = None,
                   **params: Any) -> Project:
    d = defaults or ProjectDefaults()
    if s.scalar(select(Project.id).where(Project.name == name)) is not None:
        raise Problem(409, f"project {name!r} exists")
    values = {"labels_per_task": d.labels_per_task, "gold_rate": d.gold_rate, "expiry_s": d.expiry_s,
              "flag_threshold": d.flag_threshold, "min_flag_answers": d.min_flag_answers}
    values.update({k: v for k, v in params.items() if v is not None})
    project = Project(name=name, instructions=instructions, **values)
    s.add(project)
    s.flush()
    return project


def get_project(s: Session, project_id: int) -> Project:
    project = s.get(Project, project_id)
    if project is None:
        raise Problem(404, f"no project {project_id}")
    return project


def list_projects(s: Session, active_only: bool = False) -> list[Project]:
    q = select(Project).order_by(Project.id)
    if active_only:
        q = q.where(Project.active.is_(True))
    return list(s.scalars(q))


def _post_rows(s: Session, project: Project, posts: Iterable[tuple[Post, str]]) -> dict[str, PostRow]:
    """Store the posts a project needs (once each) and return them by their source id. `posts` pairs each post
    with where it came from ("file:line"). An id names one post: an id given with another post — earlier in the
    same input, or already in the project — is refused naming the place (keeping the old text silently would
    pair the new summaries with a post they were not written for)."""
    existing = {r.post_key: r for r in s.scalars(select(PostRow).where(PostRow.project_id == project.id))}
    first: dict[str, tuple[Post, str]] = {}
    for post, where in posts:
        if post.id in first:
            if not formats.same_post(first[post.id][0], post):
                raise Problem(422, f"{where}: post id {post.id!r} is also the id of another post at "
                                   f"{first[post.id][1]}")
            continue
        first[post.id] = (post, where)
        row = existing.get(post.id)
        if row is None:
            row = PostRow(project_id=project.id, post_key=post.id, title=post.title, subreddit=post.subreddit,
                          text=post.text, source=post.source)
            s.add(row)
            existing[post.id] = row
        elif not formats.same_post(Post(id=row.post_key, text=row.text, title=row.title, subreddit=row.subreddit),
                                   post):
            raise Problem(409, f"{where}: post id {post.id!r} is already in project {project.name!r} with another "
                               "text: give this post its own id")
    s.flush()
    return existing


def add_tasks(s: Session, project: Project, pairs: list[formats.PairRow], posts: dict[str, Post] | None = None,
              post_where: dict[str, str] | None = None) -> list[Task]:
    """Comparison tasks (pairs with summary_b) and rating tasks (without) for a project. `posts` are the posts
    the pairs refer to by id (a posts file; `post_where` says where each was), besides the ones they carry."""
    posts, post_where = dict(posts or {}), dict(post_where or {})
    needed = {p.post_id for p in pairs}
    located = [(pair.post, pair.where or "tasks") for pair in pairs if pair.post is not None]
    located += [(post, post_where.get(key, f"post {key!r}")) for key, post in posts.items() if key in needed]
    known = {post.id for post, _ in located}
    missing = sorted(needed - known)
    if missing:
        raise Problem(422, f"{len(missing)} post id(s) not in the posts file, e.g. {missing[0]!r}")
    rows = _post_rows(s, project, located)
    tasks = []
    for pair in pairs:
        if pair.summary_b is not None and pair.gold_choice is None and pair.gold_confidence is not None:
            raise Problem(422, "a gold confidence needs a gold choice")
        task = Task(project_id=project.id, post_id=rows[pair.post_id].id,
                    kind="comparison" if pair.summary_b is not None else "rating",
                    summary_a=pair.summary_a, policy_a=pair.policy_a, summary_b=pair.summary_b,
                    policy_b=pair.policy_b, split=pair.split, is_gold=pair.gold_choice is not None,
                    gold_choice=pair.gold_choice, gold_confidence=pair.gold_confidence)
        s.add(task)
        tasks.append(task)
    s.flush()
    return tasks


def add_best_of_n_tasks(s: Session, project: Project, rows: list[formats.BestOfNTask]) -> list[Task]:
    """Best-of-N tasks: each query is stored as a post (source "query") and its continuations in task order."""
    posts = _post_rows(s, project, ((r.post, r.where or "rows") for r in rows))
    tasks = [Task(project_id=project.id, post_id=posts[r.post.id].id, kind="best_of_n", summary_a="", policy_a="",
                  choices=formats.choices_json(r.samples), split=r.split) for r in rows]
    s.add_all(tasks)
    s.flush()
    return tasks


def pairs_from_samples(samples: list[Sample], *, policies: list[str] | None = None, pairs_per_post: int = 1,
                       ratings: bool = False, comparisons: bool = True, seed: int = 0) -> list[formats.PairRow]:
    """Tasks from samples, post by post (in id order): the comparisons `data.pairs.policy_pairs` draws (two
    different policies at random, never the same two samples twice, so a post gets fewer pairs when it has fewer
    distinct ones), then with `ratings` one rating task per sample. Deterministic for a seed."""
    rng = random.Random(seed)
    by_post = samples_by_post(samples, policies)
    out: list[formats.PairRow] = []
    for post_id in sorted(by_post):
        by_policy = by_post[post_id]
        if comparisons and len(by_policy) >= 2:
            out += [formats.PairRow(post=None, post_id=post_id, summary_a=sa.text, policy_a=sa.policy,
                                    summary_b=sb.text, policy_b=sb.policy)
                    for sa, sb in policy_pairs(by_policy, pairs_per_post, rng)]
        if ratings:
            for name in sorted(by_policy):
                for smp in by_policy[name]:
                    out.append(formats.PairRow(post=None, post_id=post_id, summary_a=smp.text, policy_a=name))
    return out


def set_gold(s: Session, task: Task, choice: int | None, confidence: int | None) -> Task:
    if task.kind not in ("comparison", "best_of_n"):
        raise Problem(422, "only comparison and best-of-N tasks take a gold answer")
    if choice is None:
        task.is_gold, task.gold_choice, task.gold_confidence = False, None, None
        return task
    if task.kind == "best_of_n":
        n = len(task.choices or [])
        if not 0 <= choice < n or confidence is not None:
            raise Problem(422, f"a best-of-{n} task's gold answer is `choice` 0–{n - 1} (no confidence)")
        task.is_gold, task.gold_choice, task.gold_confidence = True, choice, None
        return task
    if choice not in (0, 1):
        raise Problem(422, f"a comparison's gold `choice` is 0 or 1, got {choice}")
    formats.check_confidence(choice, confidence, lambda p: Problem(422, f"confidence: {p}"))
    task.is_gold, task.gold_choice, task.gold_confidence = True, choice, confidence
    return task


@dataclass
class ImportReport:
    rows: int = 0
    tasks: int = 0
    answers: int = 0
    skipped_duplicates: int = 0


def import_comparisons(s: Session, project: Project, rows: list[formats.ComparisonRow], mode: str = "answers",
                       where: list[str] | None = None) -> ImportReport:
    """OpenAI-format comparisons into a project. mode "tasks": as tasks to label; "gold": as gold tasks with the
    row's choice as the researchers' answer; "answers": as tasks *and* answers by (external) workers, so that
    an import followed by an export gives the same comparisons back."""
    def task_of(r: formats.ComparisonRow, post_id: int, gold: bool) -> Task:
        (ta, pa, _), (tb, pb, _) = r.summaries
        return Task(project_id=project.id, post_id=post_id, kind="comparison", summary_a=ta, policy_a=pa,
                    summary_b=tb, policy_b=pb, split=r.split, is_gold=gold, gold_choice=r.choice if gold else None,
                    gold_confidence=r.confidence if gold else None)

    return _import_rows(s, project, rows, mode, task_of, where or [r.where for r in rows],
                        key_of=lambda r: (r.post.id, *r.summaries[0][:2], *r.summaries[1][:2]),
                        answer_of=lambda r: (r.choice, r.confidence))


def import_labels(s: Session, project: Project, labels: formats.Labels, mode: str = "answers") -> ImportReport:
    """The rows of `formats.parse_labels`: comparisons or best-of-N labels (a file holds one kind)."""
    if labels.rows and isinstance(labels.rows[0], BestOfN):
        return import_best_of_n(s, project, labels.rows, mode, labels.where)  # type: ignore[arg-type]
    return import_comparisons(s, project, labels.rows, mode, labels.where)  # type: ignore[arg-type]


def import_best_of_n(s: Session, project: Project, rows: list[BestOfN], mode: str = "answers",
                     where: list[str] | None = None) -> ImportReport:
    """Best-of-N labels into a project, like `import_comparisons`: as tasks, as gold tasks (`best` is the
    researchers' answer), or as tasks and the (external) workers' answers, one task per distinct query and
    continuations so that an import followed by an export gives the same labels back."""
    def task_of(r: BestOfN, post_id: int, gold: bool) -> Task:
        return Task(project_id=project.id, post_id=post_id, kind="best_of_n", summary_a="", policy_a="",
                    choices=formats.choices_json(r.samples), split=r.split, is_gold=gold,
                    gold_choice=r.best if gold else None)

    return _import_rows(s, project, rows, mode, task_of, where or [f"rows:{i}" for i in range(1, len(rows) + 1)],
                        key_of=lambda r: (r.post.id, *((c.text, c.policy, c.eos) for c in r.samples)),
                        answer_of=lambda r: (r.best, None))


def _import_rows(s: Session, project: Project, rows: list, mode: str, task_of: Callable[[Any, int, bool], Task],
                 where: list[str], *, key_of: Callable[[Any], tuple],
                 answer_of: Callable[[Any], tuple[int, int | None]]) -> ImportReport:
    """The import both label kinds share: one task per distinct key (`task_of` builds it; every row is its own
    task unless mode is "answers"), and in mode "answers" each row's answer (`answer_of`: choice, confidence) by
    its worker's external account, a worker's second answer to the same task skipped as a duplicate. `where`
    names each row's place for errors."""
    if mode not in ("tasks", "gold", "answers"):
        raise Problem(422, "mode must be tasks, gold or answers")
    report = ImportReport(rows=len(rows))
    posts = _post_rows(s, project, ((r.post, w) for r, w in zip(rows, where, strict=True)))
    task_by_key: dict[tuple, Task] = {}
    users: dict[str, User] = {}
    seen_answers: set[tuple[int, int]] = set()
    for r in rows:
        key = key_of(r)
        task = task_by_key.get(key)
        if task is None or mode != "answers":
            task = task_of(r, posts[r.post.id].id, mode == "gold")
            s.add(task)
            s.flush()
            task_by_key[key] = task
            report.tasks += 1
        if mode != "answers":
            continue
        user = _external_user(s, users, r.worker)
        if (task.id, user.id) in seen_answers:
            report.skipped_duplicates += 1
            continue
        seen_answers.add((task.id, user.id))
        _imported_answer(s, task, user, *answer_of(r), r.extra)
        report.answers += 1
    s.flush()
    return report


def _external_user(s: Session, users: dict[str, User], worker: str) -> User:
    """The (external) account an imported label is filed under, made on first sight and cached in `users`."""
    worker = worker or "unknown"
    user = users.get(worker)
    if user is None:
        user = s.scalar(select(User).where(User.username == worker[:64]))
        if user is None:
            user = create_user(s, None, worker[:64], None, role="external")
        elif user.role != "external":  # never file imported labels under a real account
            raise Problem(409, f"worker {worker[:64]!r} in the file is also the name of an account here")
        users[worker] = user
    return user


def _imported_answer(s: Session, task: Task, user: User, choice: int, confidence: int | None,
                     extra: dict[str, Any]) -> None:
    """An answer from a file: a done assignment (never swapped: files keep their own order) and its answer."""
    now = utcnow()
    a = Assignment(task_id=task.id, user_id=user.id, project_id=task.project_id, swapped=False, status="done",
                   created_at=now, expires_at=now)
    s.add(a)
    s.flush()
    s.add(Answer(assignment_id=a.id, task_id=task.id, user_id=user.id, project_id=task.project_id, choice=choice,
                 confidence=confidence, note=str(extra.get("note", "")).replace("\x00", "")[:10000],
                 server_time_ms=0, client_time_ms=None, created_at=now))


# ---------------------------------------------------------------------------------------------- labelling

def next_assignment(s: Session, project: Project, user: User, rng: random.Random | None = None,
                    now: datetime | None = None) -> Assignment | None:
    """This labeler's open assignment in the project, or a new one, or None when nothing is left for them."""
    rng = rng or random.Random()
    now = now or utcnow()
    if not project.active:
        raise Problem(409, "the project is closed")
    # Serialise assignment within a project (PostgreSQL row lock; SQLite transactions are BEGIN IMMEDIATE).
    s.execute(select(Project.id).where(Project.id == project.id).with_for_update())
    mine = s.scalars(select(Assignment).where(Assignment.user_id == user.id, Assignment.project_id == project.id,
                                              Assignment.status == "open").order_by(Assignment.id)).all()
    for a in mine:
        if a.expires_at > now:
            return a
        a.status = "expired"
    candidates = _candidates(s, project, user, now)
    task_id = assign.pick_task(candidates, project.labels_per_task, project.gold_rate, rng)
    if task_id is None:
        return None
    task = s.get(Task, task_id)
    a = Assignment(task_id=task_id, user_id=user.id, project_id=project.id,
                   swapped=assign.left_right(rng) if task and task.kind == "comparison" else False,
                   status="open", created_at=now, expires_at=now + timedelta(seconds=project.expiry_s))
    s.add(a)
    s.flush()
    return a


def _candidates(s: Session, project: Project, user: User, now: datetime) -> list[assign.Candidate]:
    """Every task of the project with how many live assignments it has and whether this labeler has seen it."""
    live = or_(Assignment.status == "done", and_(Assignment.status == "open", Assignment.expires_at > now))
    taken = (select(Assignment.task_id, func.count().label("n")).where(Assignment.project_id == project.id, live)
             .group_by(Assignment.task_id).subquery())
    seen = select(Assignment.task_id).where(Assignment.user_id == user.id,
                                            Assignment.project_id == project.id).scalar_subquery()
    q = (select(Task.id, Task.is_gold, func.coalesce(taken.c.n, 0), case((Task.id.in_(seen), True), else_=False))
         .outerjoin(taken, taken.c.task_id == Task.id).where(Task.project_id == project.id))
    return [assign.Candidate(task_id=tid, is_gold=bool(g), taken=int(n), seen=bool(sn))
            for tid, g, n, sn in s.execute(q)]


def open_assignment(s: Session, project: Project, user: User, now: datetime | None = None) -> Assignment | None:
    """This labeler's unexpired open assignment in the project, if any. Reads only: a GET shows it, and only a
    POST (with its CSRF token) makes a new one (`next_assignment`)."""
    now = now or utcnow()
    return s.scalar(select(Assignment).where(Assignment.user_id == user.id, Assignment.project_id == project.id,
                                             Assignment.status == "open", Assignment.expires_at > now)
                    .order_by(Assignment.id).limit(1))


def get_own_assignment(s: Session, user: User, assignment_id: int) -> Assignment:
    a = s.get(Assignment, assignment_id)
    if a is None or a.user_id != user.id:  # another labeler's assignment looks exactly like a missing one
        raise Problem(404, f"no assignment {assignment_id} of yours")
    return a


def submit_answer(s: Session, user: User, assignment_id: int, *, side: str | None = None,
                  confidence: int | None = None, ratings: dict[str, int] | None = None, best: int | None = None,
                  note: str = "",
                  client_time_ms: int | None = None, idempotency_key: str | None = None,
                  project_id: int | None = None, now: datetime | None = None) -> tuple[Answer, bool]:
    """Store the answer to one of this labeler's assignments (in `project_id`, when given). Idempotent: a second
    submission for the same assignment (a retry) returns the stored answer and `False`, and stores nothing.
    The page's own time is kept only up to the server's assigned→answered time (a client cannot claim more)."""
    now = now or utcnow()
    a = get_own_assignment(s, user, assignment_id)
    if project_id is not None and a.project_id != project_id:  # /label/2/answer must not answer project 1's task
        raise Problem(404, f"no assignment {assignment_id} of yours in project {project_id}")
    existing = s.scalar(select(Answer).where(Answer.assignment_id == a.id))
    if existing is not None:
        return existing, False
    if not get_project(s, a.project_id).active:
        raise Problem(409, "the project is closed: it takes no more answers")
    task = a.task
    choice = conf = None
    if best is not None and task.kind != "best_of_n":
        raise Problem(422, "`best` is for best-of-N tasks")
    if task.kind == "best_of_n":
        choice = _check_best(task, best, side, confidence, ratings)
    elif task.kind == "comparison":
        if side not in ("left", "right") or confidence is None:
            raise Problem(422, "a comparison needs `side` (left or right) and `confidence` (1-9)")
        if ratings:
            raise Problem(422, "ratings are for rating tasks")
        if confidence != CONFIDENCE_NO_PREFERENCE and (confidence < CONFIDENCE_NO_PREFERENCE) != (side == "left"):
            raise Problem(422, "confidence below 5 means the left summary is better and above 5 the right one: "
                               "it must agree with `side`")
        choice, conf = assign.to_canonical(side, confidence, a.swapped)
    else:
        if side is not None or confidence is not None:
            raise Problem(422, "a rating task takes `ratings`, not side/confidence")
        if not ratings or set(ratings) != set(RATING_AXES):
            raise Problem(422, f"ratings needs all of {', '.join(RATING_AXES)} (1-7)")
    elapsed = min(int(max(0.0, (now - a.created_at).total_seconds()) * 1000), 2**31 - 1)
    answer = Answer(assignment_id=a.id, task_id=task.id, user_id=user.id, project_id=a.project_id, choice=choice,
                    confidence=conf, ratings=dict(ratings) if ratings else None, note=note,
                    client_time_ms=None if client_time_ms is None else min(client_time_ms, elapsed),
                    server_time_ms=elapsed,
                    idempotency_key=idempotency_key, created_at=now)
    try:
        with s.begin_nested():
            s.add(answer)
            s.flush()
    except IntegrityError:  # a concurrent retry stored it first
        existing = s.scalar(select(Answer).where(Answer.assignment_id == a.id))
        if existing is None:
            raise
        return existing, False
    s.execute(update(Assignment).where(Assignment.id == a.id).values(status="done"))
    return answer, True


def _check_best(task: Task, best: int | None, side: str | None, confidence: int | None,
                ratings: dict[str, int] | None) -> int:
    """A best-of-N answer is the index of the best continuation, 0-based, in the order shown."""
    n = len(task.choices or [])
    if side is not None or confidence is not None or ratings:
        raise Problem(422, "a best-of-N task takes `best`, not side/confidence/ratings")
    if best is None:
        raise Problem(422, f"a best-of-N task needs `best`: the index (0–{n - 1}) of the best continuation")
    if not 0 <= best < n:
        raise Problem(422, f"best must be between 0 and {n - 1} (this task has {n} continuations), got {best}")
    return best


def task_view(a: Assignment) -> dict[str, Any]:
    """What a labeler sees: the post and the summaries in screen order. Policies are not shown."""
    t = a.task
    post = t.post
    view: dict[str, Any] = {"assignment_id": a.id, "task_id": t.id, "project_id": a.project_id, "kind": t.kind,
                            "post": {"title": post.title, "subreddit": post.subreddit, "text": post.text},
                            "expires_at": a.expires_at.isoformat() + "Z"}
    if t.kind == "comparison":
        left, right = (t.summary_b, t.summary_a) if a.swapped else (t.summary_a, t.summary_b)
        view["left"], view["right"] = left, right
    elif t.kind == "best_of_n":
        view["choices"] = [c["text"] for c in t.choices or []]
    else:
        view["summary"] = t.summary_a
    return view


def progress(s: Session, project: Project, user: User, now: datetime | None = None) -> dict[str, int]:
    """`answered`: this labeler's answers in the project; `remaining`: the tasks they can still be given, their
    open assignment included (others' open assignments hold slots, so it can shrink as others label)."""
    now = now or utcnow()
    done = s.scalar(select(func.count()).select_from(Answer).where(Answer.project_id == project.id,
                                                                    Answer.user_id == user.id)) or 0
    open_now = s.scalar(select(func.count()).select_from(Assignment).where(
        Assignment.project_id == project.id, Assignment.user_id == user.id, Assignment.status == "open",
        Assignment.expires_at > now)) or 0
    free = assign.assignable(_candidates(s, project, user, now), project.labels_per_task)
    return {"answered": int(done), "remaining": int(open_now) + free}


# ---------------------------------------------------------------------------------------------- export

def _answer_rows(s: Session, project: Project, kind: str) -> Iterator[tuple[Answer, Task, PostRow, User]]:
    q = (select(Answer, Task, PostRow, User).join(Task, Answer.task_id == Task.id)
         .join(PostRow, Task.post_id == PostRow.id).join(User, Answer.user_id == User.id)
         .where(Answer.project_id == project.id, Task.kind == kind).order_by(Answer.id))
    for row in s.execute(q).unique():
        yield tuple(row)  # type: ignore[misc]


def export_comparisons(s: Session, project: Project, include_gold: bool = True) -> Iterator[dict[str, Any]]:
    """One OpenAI-schema row per comparison answer, the summaries in the order the labeler saw them."""
    for ans, task, post, user in _answer_rows(s, project, "comparison"):
        if task.is_gold and not include_gold:
            continue
        swapped = ans.assignment.swapped
        a = {"text": task.summary_a, "policy": task.policy_a, "note": ""}
        b = {"text": task.summary_b or "", "policy": task.policy_b or "", "note": ""}
        summaries = [b, a] if swapped else [a, b]
        choice, confidence = assign.to_display(ans.choice or 0, ans.confidence, swapped)
        extra: dict[str, Any] = {"task_id": task.id, "answer_id": ans.id, "order": "BA" if swapped else "AB",
                                 "time_ms": ans.client_time_ms if ans.client_time_ms is not None
                                 else ans.server_time_ms}
        if ans.note:
            extra["note"] = ans.note
        if task.is_gold:
            extra["gold"] = True
        yield formats.openai_comparison_row(
            info=formats.openai_info(post.post_key, post.title, post.subreddit, post.text, post.source),
            summaries=summaries, choice=choice, confidence=confidence, worker=user.username, batch=project.name,
            split=task.split, extra=extra)


def export_best_of_n(s: Session, project: Project, include_gold: bool = True) -> Iterator[dict[str, Any]]:
    """One `schema.best_of_n_to_row` row per best-of-N answer (what `load_best_of_n` reads): the query, the
    continuations in the order shown, and `best`, 0-based."""
    for ans, task, post, user in _answer_rows(s, project, "best_of_n"):
        if task.is_gold and not include_gold:
            continue
        extra: dict[str, Any] = {"task_id": task.id, "answer_id": ans.id,
                                 "time_ms": ans.client_time_ms if ans.client_time_ms is not None
                                 else ans.server_time_ms}
        if ans.note:
            extra["note"] = ans.note
        if task.is_gold:
            extra["gold"] = True
        yield formats.best_of_n_row(query_id=post.post_key, query=post.text, choices=list(task.choices or []),
                                    best=int(ans.choice or 0), worker=user.username, batch=project.name,
                                    split=task.split, extra=extra)


def export_ratings(s: Session, project: Project) -> Iterator[dict[str, Any]]:
    """One row per rating answer, shaped like OpenAI's axis evaluations: {info, split, summary: {text, policy,
    note, axes}, worker, batch}."""
    for ans, task, post, user in _answer_rows(s, project, "rating"):
        yield {"info": formats.openai_info(post.post_key, post.title, post.subreddit, post.text, post.source),
               "split": task.split,
               "summary": {"text": task.summary_a, "policy": task.policy_a, "note": ans.note,
                           "axes": dict(ans.ratings or {})},
               "worker": user.username, "batch": project.name,
               "extra": {"task_id": task.id, "answer_id": ans.id,
                         "time_ms": ans.client_time_ms if ans.client_time_ms is not None else ans.server_time_ms}}


# ---------------------------------------------------------------------------------------------- dashboard

def dashboard(s: Session, project: Project, threshold: float | None = None) -> dict[str, Any]:
    threshold = project.flag_threshold if threshold is None else threshold
    counts = {kind: n for kind, n in s.execute(select(Task.kind, func.count()).where(Task.project_id == project.id)
                                               .group_by(Task.kind))}
    gold_tasks = s.scalar(select(func.count()).select_from(Task).where(Task.project_id == project.id,
                                                                        Task.is_gold.is_(True))) or 0
    per_task = (select(Answer.task_id, func.count().label("n")).where(Answer.project_id == project.id)
                .group_by(Answer.task_id).subquery())
    complete = s.scalar(select(func.count()).select_from(per_task).join(Task, Task.id == per_task.c.task_id)
                        .where(Task.is_gold.is_(False), per_task.c.n >= project.labels_per_task)) or 0
    labels = []
    ratings_by_user: dict[str, int] = defaultdict(int)
    q = (select(Answer.task_id, Answer.choice, Answer.client_time_ms, Answer.server_time_ms, Answer.created_at,
                User.username, Task.is_gold, Task.gold_choice, Task.kind)
         .join(User, User.id == Answer.user_id).join(Task, Task.id == Answer.task_id)
         .where(Answer.project_id == project.id))
    for task_id, choice, cms, sms, created, username, is_gold, gold_choice, kind in s.execute(q):
        if kind == "rating":  # comparisons and best-of-N are choices: agreement and kappa apply to both
            ratings_by_user[username] += 1
            continue
        labels.append(quality.Label(user=username, task_id=task_id, choice=int(choice),
                                    time_ms=int(cms if cms is not None else sms),
                                    created_s=created.timestamp(), gold=gold_choice if is_gold else None))
    stats = quality.labeler_stats(labels, threshold, project.min_flag_answers)
    fleiss, shared = quality.project_fleiss([lab for lab in labels if lab.gold is None])
    return {
        "project": {"id": project.id, "name": project.name, "labels_per_task": project.labels_per_task,
                    "gold_rate": project.gold_rate, "flag_threshold": threshold},
        "tasks": {"comparison": int(counts.get("comparison", 0)), "rating": int(counts.get("rating", 0)),
                  "best_of_n": int(counts.get("best_of_n", 0)),
                  "gold": int(gold_tasks), "complete": int(complete)},
        "answers": len(labels) + sum(ratings_by_user.values()),
        "fleiss_kappa": fleiss, "shared_tasks": shared,
        "labelers": [{**{k: v for k, v in vars(st).items()}, "flagged": st.flagged,
                      "ratings": ratings_by_user.get(st.user, 0)} for st in stats]
                    + [{"user": u, "answers": 0, "ratings": n, "flags": [], "flagged": False}
                       for u, n in ratings_by_user.items() if u not in {st.user for st in stats}],
    }
