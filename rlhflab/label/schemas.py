"""Pydantic models of the JSON API: strict (no type coercion, no unknown keys), bounded, NUL-free text.

Anything that does not fit is a 422 with the field named — never a 500.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from rlhflab.data.schema import MAX_BEST_OF
from rlhflab.label import sizes

# The limits, shared with the HTML form routes (label/pages.py takes the same annotated types, so that a form and
# its JSON route accept the same values) and, through `sizes`, with the database columns and the file parsers.
# Bounds are Field/Form/Path keyword arguments.
DB_ID = {"ge": 1, "le": 2**31 - 1}
USERNAME_PATTERN = rf"^[A-Za-z0-9_.@-]{{1,{sizes.USERNAME}}}$"
USERNAME_MAX = sizes.USERNAME
PASSWORD_MIN, PASSWORD_MAX = 8, 256
ROLE_PATTERN = "^(admin|labeler)$"
PROJECT_NAME_MAX = sizes.PROJECT_NAME
INSTRUCTIONS_MAX = sizes.INSTRUCTIONS
LABELS_PER_TASK = {"ge": 1, "le": 50}
FRACTION = {"ge": 0.0, "le": 1.0}  # gold_rate, flag_threshold, the dashboard's threshold
EXPIRY_S = {"ge": 10, "le": 7 * 24 * 3600}
PAIRS_PER_POST = {"ge": 1, "le": 100}
CONFIDENCE = {"ge": 1, "le": 9}
RATING = {"ge": 1, "le": 7}
SIDE_PATTERN = "^(left|right)$"
BEST = {"ge": 0, "le": MAX_BEST_OF - 1}  # an index; the task's own N is checked by the service (a clear 422)
NOTE_MAX = sizes.NOTE
TIME_MS = {"ge": 0, "le": 24 * 3600 * 1000}


def _no_nul(v: str) -> str:
    if "\x00" in v:
        raise ValueError("must not contain NUL characters")
    return v


def bounded(max_length: int, min_length: int = 0, pattern: str | None = None) -> Any:
    """A NUL-free string of at most `max_length` characters (PostgreSQL refuses NUL in text: a 500 otherwise)."""
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length, pattern=pattern),
                     AfterValidator(_no_nul)]


Text = bounded(sizes.TEXT)
NonEmptyText = bounded(sizes.TEXT, 1, r"\S")
Title = bounded(sizes.TEXT)
Subreddit = bounded(sizes.SUBREDDIT)
Policy = bounded(sizes.POLICY)
Split = bounded(sizes.SPLIT)
Ident = bounded(sizes.POST_KEY, 1, r"\S")
Username = Annotated[str, StringConstraints(pattern=USERNAME_PATTERN)]
LoginName = bounded(sizes.USERNAME, 1)  # anything may be typed at login: it just matches no account
LoginPassword = bounded(PASSWORD_MAX, 1)
Password = bounded(PASSWORD_MAX, PASSWORD_MIN)
ProjectName = bounded(sizes.PROJECT_NAME, 1, r"\S")
Instructions = bounded(sizes.INSTRUCTIONS)
Note = bounded(sizes.NOTE)
PolicyList = bounded(2000)  # the upload form's comma-separated policies
IdempotencyKey = bounded(sizes.IDEMPOTENCY_KEY, 1)
Confidence = Annotated[int, Field(**CONFIDENCE)]
Rating = Annotated[int, Field(**RATING)]
DbId = Annotated[int, Field(**DB_ID)]
LabelsPerTask = Annotated[int, Field(**LABELS_PER_TASK)]
Fraction = Annotated[float, Field(**FRACTION, allow_inf_nan=False)]
ExpiryS = Annotated[int, Field(**EXPIRY_S)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CsrfOut(BaseModel):
    csrf_token: str


class LoginIn(Strict):
    username: LoginName
    password: LoginPassword


class MeOut(BaseModel):
    id: int
    username: str
    role: str
    csrf_token: str


class UserIn(Strict):
    username: Username
    password: Password
    role: Literal["admin", "labeler"] = "labeler"


class UserPatch(Strict):
    active: bool | None = None
    password: Password | None = None


class UserOut(BaseModel):
    id: int
    username: str
    role: str
    active: bool


class ProjectIn(Strict):
    name: ProjectName
    instructions: Instructions = ""
    labels_per_task: LabelsPerTask = 3
    gold_rate: Fraction = 0.1
    expiry_s: ExpiryS = 1800
    flag_threshold: Fraction = 0.7
    min_flag_answers: Annotated[int, Field(ge=1, le=10000)] = 3


class ProjectPatch(Strict):
    active: bool | None = None
    labels_per_task: LabelsPerTask | None = None
    gold_rate: Fraction | None = None
    expiry_s: ExpiryS | None = None
    flag_threshold: Fraction | None = None


class ProjectOut(BaseModel):
    id: int
    name: str
    instructions: str
    labels_per_task: int
    gold_rate: float
    expiry_s: int
    flag_threshold: float
    min_flag_answers: int
    active: bool


class PostIn(Strict):
    id: Ident
    text: NonEmptyText
    title: Title = ""
    subreddit: Subreddit = ""
    source: Literal["tldr", "cnndm", "query"] = "tldr"


class SummaryIn(Strict):
    text: NonEmptyText
    policy: Policy = ""


class GoldIn(Strict):
    choice: Annotated[int, Field(ge=0, le=1)]
    confidence: Confidence | None = None


class GoldSet(Strict):
    """Comparisons: choice 0 or 1 (+ confidence); best-of-N: choice = the best continuation's index."""

    choice: Annotated[int, Field(**BEST)] | None
    confidence: Confidence | None = None


class PairIn(Strict):
    post: PostIn | None = None
    post_id: Ident | None = None
    summary_a: SummaryIn
    summary_b: SummaryIn | None = None
    gold: GoldIn | None = None
    split: Split = ""


class TasksIn(Strict):
    posts: Annotated[list[PostIn], Field(max_length=10000)] = []
    tasks: Annotated[list[PairIn], Field(min_length=1, max_length=10000)]


class SampleIn(Strict):
    post_id: Ident
    policy: Policy
    text: NonEmptyText
    n_tokens: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    index: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    eos: bool = True
    score: Annotated[float, Field(allow_inf_nan=False)] | None = None
    extra: dict[str, Any] = {}


class SamplesIn(Strict):
    """Samples (`Sample.to_dict()` rows) and their posts: pairs of policies are drawn per post."""

    posts: Annotated[list[PostIn], Field(min_length=1, max_length=10000)]
    samples: Annotated[list[SampleIn], Field(min_length=1, max_length=100000)]
    policies: Annotated[list[Policy], Field(max_length=100)] | None = None
    pairs_per_post: Annotated[int, Field(**PAIRS_PER_POST)] = 1
    ratings: bool = False
    comparisons: bool = True
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0


class TasksOut(BaseModel):
    created: int
    task_ids: list[int]


class BestOfNTasksIn(Strict):
    """Best-of-N task rows `{"id" (optional), "query", "samples": [...]}` (a tasks file's rows, see formats)."""

    rows: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=10000)]


class ImportIn(Strict):
    mode: Literal["tasks", "gold", "answers"] = "answers"
    rows: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=10000)]


class ImportOut(BaseModel):
    rows: int
    tasks: int
    answers: int
    skipped_duplicates: int


class TaskOut(BaseModel):
    id: int
    kind: str
    is_gold: bool
    gold_choice: int | None
    gold_confidence: int | None


class PostView(BaseModel):
    title: str
    subreddit: str
    text: str


class AssignmentOut(BaseModel):
    assignment_id: int
    task_id: int
    project_id: int
    kind: Literal["comparison", "rating", "best_of_n"]
    post: PostView
    left: str | None = None
    right: str | None = None
    summary: str | None = None
    choices: list[str] | None = None  # best-of-N: the continuations, in the order `best` indexes
    expires_at: str


class NextOut(BaseModel):
    assignment: AssignmentOut | None
    answered: int
    remaining: int  # tasks still for you, this one included


class RatingsIn(Strict):
    overall: Rating
    accuracy: Rating
    coverage: Rating
    coherence: Rating


class AnswerIn(Strict):
    side: Literal["left", "right"] | None = None
    confidence: Confidence | None = None
    ratings: RatingsIn | None = None
    best: Annotated[int, Field(**BEST)] | None = None  # best-of-N: the best continuation's index, 0-based
    note: Note = ""
    time_ms: Annotated[int, Field(**TIME_MS)] | None = None
    idempotency_key: IdempotencyKey | None = None


class AnswerOut(BaseModel):
    answer_id: int
    assignment_id: int
    created: bool


class Dashboard(BaseModel):
    project: dict[str, Any]
    tasks: dict[str, int]
    answers: int
    fleiss_kappa: float | None
    shared_tasks: int
    labelers: list[dict[str, Any]]


class Health(BaseModel):
    ok: bool
    revision: str | None
