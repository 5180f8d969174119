"""`rlhflab label ...`: run the labelling server and manage projects from the command line.

    rlhflab label serve --db sqlite:///label.db [--host 127.0.0.1 --port 8000] [--https-only]
                        [--trust-proxy 127.0.0.1] [--max-body-bytes N] [--max-upload-bytes N] [--login-failures N]
    rlhflab label migrate --db URL
    rlhflab label add-user --db URL --username NAME [--role admin|labeler] [--password-stdin]
    rlhflab label set-password --db URL --username NAME [--password-stdin]
    rlhflab label create-project --db URL --name NAME (--samples FILE --posts FILE | --pairs FILE [--posts FILE])
                                 [--policies A,B] [--pairs-per-post N] [--ratings] [--k 3] [--gold-rate 0.1]
    rlhflab label add-tasks --db URL --project NAME (--samples FILE --posts FILE | --pairs FILE [--posts FILE])
    rlhflab label add-tasks --db URL --project NAME --pairs best_of_4.jsonl     # best-of-N tasks {query, samples}
    rlhflab label import --db URL --project NAME --file labels.jsonl[.gz] [--mode answers|gold|tasks] [--create]
    rlhflab label export --db URL --project NAME --out labels.jsonl [--kind comparisons|ratings|best-of-n]
                         [--no-gold]

A `--pairs` (or `--tasks`) file whose first row has "samples" holds best-of-N tasks (a query and 2–16
continuations each); an import file whose first row has "samples" holds best-of-N labels (with "best").
    rlhflab label stats --db URL --project NAME

--db takes `sqlite:///FILE` (default sqlite:///label.db), `postgresql://user:pass@host/db`, or $RLHFLAB_LABEL_DB.
Only the standard library is imported until a command runs, so `rlhflab --help` stays fast.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # sqlalchemy is imported only when a command runs
    from sqlalchemy.orm import Session, sessionmaker

    Factory = sessionmaker[Session]

HELP = "the labelling web app (serve, migrate, users, projects, import/export)"
EXPORT_KINDS = {"comparisons": "comparison", "ratings": "rating", "best-of-n": "best_of_n"}  # --kind -> Task.kind


def add_label_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("label", help=HELP, description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="label_command", required=True)
    p = _with_db(sub.add_parser("serve", help="run the web server (migrates the database first)"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-migrate", action="store_true", help="do not run migrations on startup")
    p.add_argument("--log-level", dest="server_log_level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--https-only", action="store_true", default=_env_flag("RLHFLAB_LABEL_HTTPS_ONLY"),
                   help="behind a TLS proxy: the session cookie gets Secure and responses HSTS "
                        "(or $RLHFLAB_LABEL_HTTPS_ONLY=1)")
    p.add_argument("--trust-proxy", metavar="ADDRS", default=os.environ.get("RLHFLAB_LABEL_TRUST_PROXY"),
                   help="comma-separated addresses of the reverse proxy whose X-Forwarded-For/-Proto to believe "
                        "(or $RLHFLAB_LABEL_TRUST_PROXY); default: none, the peer is the client")
    p.add_argument("--max-body-bytes", type=int, help="request body limit of every route but the bulk ones "
                                                       "(default 262144)")
    p.add_argument("--max-upload-bytes", type=int, help="limit of each uploaded file and of bulk JSON bodies "
                                                         "(default 67108864)")
    p.add_argument("--login-failures", type=int, metavar="N",
                   help="failed logins per username within --login-window-s before 429 (default 10)")
    p.add_argument("--login-window-s", type=int, help="the failed-login window in seconds (default 900)")
    _with_db(sub.add_parser("migrate", help="bring the database schema up to date (alembic upgrade head)"))
    _add_account_parsers(sub)
    _add_task_parsers(sub)
    _add_file_parsers(sub)
    return parser


def _with_db(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--db", default=os.environ.get("RLHFLAB_LABEL_DB", "sqlite:///label.db"),
                   help="database URL: sqlite:///FILE or postgresql://... (default: $RLHFLAB_LABEL_DB or "
                        "sqlite:///label.db)")
    return p


def _add_account_parsers(sub: Any) -> None:
    p = _with_db(sub.add_parser("add-user", help="create an account (admin = researcher)"))
    p.add_argument("--username", required=True)
    p.add_argument("--role", choices=["admin", "labeler"], default="labeler")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from stdin (else $RLHFLAB_LABEL_PASSWORD, else a prompt)")
    p = _with_db(sub.add_parser("set-password", help="set a user's password (and re-activate the account)"))
    p.add_argument("--username", required=True)
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from stdin (else $RLHFLAB_LABEL_PASSWORD, else a prompt)")


def _add_task_parsers(sub: Any) -> None:
    """create-project and add-tasks: the same task sources, into a new project or an existing one."""
    for name, help_text in (("create-project", "create a project and its tasks"),
                            ("add-tasks", "add tasks to an existing project")):
        p = _with_db(sub.add_parser(name, help=help_text))
        if name == "create-project":
            p.add_argument("--name", required=True)
            p.add_argument("--k", type=int, default=3, help="labels per task (default 3)")
            p.add_argument("--gold-rate", type=float, default=0.1)
            p.add_argument("--expiry-s", type=int, default=1800, help="assignment expiry in seconds")
            p.add_argument("--flag-threshold", type=float, default=0.7)
            p.add_argument("--instructions-file", type=Path)
        else:
            p.add_argument("--project", required=True, help="project name or id")
        p.add_argument("--samples", type=Path, help="samples JSONL (Sample.to_dict() rows)")
        p.add_argument("--pairs", "--tasks", dest="pairs", type=Path,
                       help="a tasks JSONL: pairs, or best-of-N tasks {query, samples} when its first row has "
                            "\"samples\" (see docs/labelling.md)")
        p.add_argument("--posts", type=Path, help="posts JSONL (Post.to_dict() or TL;DR rows)")
        p.add_argument("--policies", help="comma-separated policies to pair (default: all in the samples)")
        p.add_argument("--pairs-per-post", type=int, default=1)
        p.add_argument("--ratings", action="store_true", help="also a rating task for every sample")
        p.add_argument("--seed", type=int, default=0)


def _add_file_parsers(sub: Any) -> None:
    p = _with_db(sub.add_parser("import", help="import labels: an OpenAI-format comparisons file, or best-of-N "
                                               "labels {query, samples, best} (told apart by the first row)"))
    p.add_argument("--project", required=True)
    p.add_argument("--file", type=Path, required=True)
    p.add_argument("--mode", choices=["answers", "gold", "tasks"], default="answers",
                   help="answers: tasks and the workers' answers; gold: gold tasks; tasks: tasks to label")
    p.add_argument("--create", action="store_true", help="create the project if it does not exist")
    p = _with_db(sub.add_parser("export", help="export one kind of answers as JSONL: comparisons (OpenAI schema), "
                                               "ratings or best-of-N labels"))
    p.add_argument("--project", required=True)
    p.add_argument("--out", type=Path, required=True, help="output file (.jsonl or .jsonl.gz)")
    p.add_argument("--kind", choices=list(EXPORT_KINDS),
                   help="which answers: comparisons (OpenAI schema), ratings, or best-of-n ({query, samples, best} "
                        "rows that rlhflab.data.loaders.load_best_of_n reads). Default: best-of-n for a project with "
                        "best-of-N tasks and no comparison tasks, else comparisons; a project with both needs --kind")
    p.add_argument("--ratings", action="store_const", const="ratings", dest="kind",
                   help="the same as --kind ratings")
    p.add_argument("--no-gold", action="store_true", help="leave out answers to gold tasks")
    p = _with_db(sub.add_parser("stats", help="print the dashboard numbers as JSON"))
    p.add_argument("--project", required=True)


class CLIError(Exception):
    pass


def _settings(args: argparse.Namespace, **changes: Any):
    from rlhflab.label.settings import LabelSettings

    return LabelSettings(db=args.db, secret_key=os.environ.get("RLHFLAB_LABEL_SECRET") or None, **changes)


def _session(args: argparse.Namespace, migrate: bool = True):
    from rlhflab.label import db

    engine = db.make_engine(args.db)
    if migrate:
        db.migrate(engine)
    return db.session_factory(engine)


def _find_project(s, ref: str):  # noqa: ANN001, ANN202
    from sqlalchemy import select

    from rlhflab.label.models import Project

    project = s.scalar(select(Project).where(Project.name == ref))
    if project is None and ref.isdigit():
        project = s.get(Project, int(ref))
    if project is None:
        raise CLIError(f"no project {ref!r}")
    return project


def _read_pairs(args: argparse.Namespace):  # noqa: ANN202
    """(pairs, posts, where each post was) for comparison and rating tasks, or (best-of-N tasks, None, None)."""
    from rlhflab.label import formats, service

    if (args.samples is None) == (args.pairs is None):
        raise CLIError("give exactly one of --samples and --pairs")
    posts, where = {}, {}
    if args.posts is not None:
        posts, where = formats.read_posts(formats.read_jsonl(args.posts), str(args.posts))
    if args.samples is not None:
        if args.posts is None:
            raise CLIError("--samples needs --posts (the samples file holds post ids only)")
        samples = [formats.parse_sample(row, str(args.samples), n) for n, row in formats.read_jsonl(args.samples)]
        policies = [p.strip() for p in args.policies.split(",") if p.strip()] if args.policies else None
        pairs = service.pairs_from_samples(samples, policies=policies, pairs_per_post=args.pairs_per_post,
                                           ratings=args.ratings, seed=args.seed)
    else:
        rows = list(formats.read_jsonl(args.pairs))
        if rows and formats.is_best_of_n_file_row(rows[0][1]):
            if args.posts is not None:
                raise CLIError("best-of-N tasks carry their query: --posts is for pairs and samples")
            return formats.parse_best_of_n_tasks(rows, str(args.pairs)), None, None
        pairs = [formats.parse_pair(row, str(args.pairs), n) for n, row in rows]
    if not pairs:
        raise CLIError("no tasks: a samples file needs at least two policies for a post (or --ratings)")
    return pairs, posts, where


def run_label(args: argparse.Namespace) -> int:
    from rlhflab.core.log import setup_logging

    if not logging_configured():
        setup_logging("INFO")
    try:
        return _dispatch(args)
    except CLIError as err:
        print(f"rlhflab label: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - turn the app's own errors into one line
        from rlhflab.label.db import DatabaseURLError
        from rlhflab.label.formats import FormatError
        from rlhflab.label.service import Problem

        if isinstance(err, (FormatError, DatabaseURLError, Problem)):
            print(f"rlhflab label: error: {err}", file=sys.stderr)
            return 2
        raise


def logging_configured() -> bool:
    import logging

    return bool(logging.getLogger().handlers)


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.label_command
    if cmd == "serve":
        return _serve(args)
    if cmd == "migrate":
        return _migrate(args)
    commands = {"add-user": _account, "set-password": _account, "create-project": _add_tasks,
                "add-tasks": _add_tasks, "import": _import, "export": _export, "stats": _stats}
    factory = _session(args)  # every command below works on an up-to-date schema
    if cmd not in commands:
        raise CLIError(f"unknown command {cmd}")
    return commands[cmd](args, factory)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from rlhflab.label.app import create_app

    settings, server = serve_config(args)
    uvicorn.run(create_app(settings), **server)
    return 0


def serve_config(args: argparse.Namespace):  # noqa: ANN201 - (LabelSettings, uvicorn.run keyword arguments)
    """What `serve` runs: the app's settings and uvicorn's. Forwarded headers are believed only from the
    proxies `--trust-proxy` names (uvicorn by default believes any from 127.0.0.1)."""
    changes: dict[str, Any] = {"migrate_on_startup": not args.no_migrate, "https_only_cookies": args.https_only}
    optional = {"max_body_bytes": args.max_body_bytes, "max_upload_bytes": args.max_upload_bytes,
                "max_bulk_bytes": args.max_upload_bytes, "login_failures_per_user": args.login_failures,
                "login_window_s": args.login_window_s}
    changes.update({k: v for k, v in optional.items() if v is not None})
    trusted = [a.strip() for a in (args.trust_proxy or "").split(",") if a.strip()]
    server = {"host": args.host, "port": args.port, "log_level": args.server_log_level, "access_log": False,
              "timeout_graceful_shutdown": 5, "proxy_headers": bool(trusted),
              "forwarded_allow_ips": trusted or None}
    return _settings(args, **changes), server


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _migrate(args: argparse.Namespace) -> int:
    from rlhflab.label import db

    engine = db.make_engine(args.db)
    db.migrate(engine)
    print(f"database at revision {db.current_revision(engine)}")
    return 0


def _account(args: argparse.Namespace, factory: Factory) -> int:  # add-user or set-password
    from rlhflab.label import db, service
    from rlhflab.label.security import Passwords

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = os.environ.get("RLHFLAB_LABEL_PASSWORD") or getpass.getpass("password: ")
    if len(password) < 8:
        raise CLIError("the password needs at least 8 characters")
    with db.session_scope(factory) as s:
        if args.label_command == "set-password":
            user = service.set_password(s, Passwords(_settings(args)), args.username, password)
            user.active = True
            print(f"password set for {user.username}")
            return 0
        user = service.create_user(s, Passwords(_settings(args)), args.username, password, args.role)
        print(f"created {user.role} {user.username} (id {user.id})")
    return 0


def _add_tasks(args: argparse.Namespace, factory: Factory) -> int:  # create-project or add-tasks
    from rlhflab.label import db, service

    pairs, posts, post_where = _read_pairs(args)
    with db.session_scope(factory) as s:
        if args.label_command == "create-project":
            instructions = _read_text(args.instructions_file) if args.instructions_file else ""
            project = service.create_project(s, args.name, instructions=instructions, labels_per_task=args.k,
                                             gold_rate=args.gold_rate, expiry_s=args.expiry_s,
                                             flag_threshold=args.flag_threshold)
        else:
            project = _find_project(s, args.project)
        if posts is None:
            tasks = service.add_best_of_n_tasks(s, project, pairs)
            sizes = sorted({len(t.choices or []) for t in tasks})
            print(f"project {project.name!r} (id {project.id}): added {len(tasks)} best-of-N tasks "
                  f"(N = {', '.join(map(str, sizes))})")
            return 0
        tasks = service.add_tasks(s, project, pairs, posts, post_where)
        kinds = {k: sum(t.kind == k for t in tasks) for k in ("comparison", "rating")}
        print(f"project {project.name!r} (id {project.id}): added {kinds['comparison']} comparison and "
              f"{kinds['rating']} rating tasks")
    return 0


def _read_text(path: Path) -> str:
    """A UTF-8 text file, or a CLIError that names it (never a traceback)."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise CLIError(f"{path}:{line}: not UTF-8") from None
    except OSError as err:
        raise CLIError(f"{path}: cannot be read ({err.strerror or err})") from None


def _import(args: argparse.Namespace, factory: Factory) -> int:
    from rlhflab.label import db, formats, service

    rows = formats.parse_labels(formats.read_jsonl(args.file), str(args.file))
    with db.session_scope(factory) as s:
        try:
            project = _find_project(s, args.project)
        except CLIError:
            if not args.create:
                raise
            project = service.create_project(s, args.project)
        report = service.import_labels(s, project, rows, args.mode)
        print(json.dumps(vars(report)))
    return 0


def _export(args: argparse.Namespace, factory: Factory) -> int:
    from rlhflab.label import db, formats, service

    with db.session_scope(factory) as s:
        project = _find_project(s, args.project)
        kind = args.kind or _default_export_kind(s, project)
        if kind == "ratings":
            rows = list(service.export_ratings(s, project))
        elif kind == "best-of-n":
            rows = list(service.export_best_of_n(s, project, include_gold=not args.no_gold))
        else:
            rows = list(service.export_comparisons(s, project, include_gold=not args.no_gold))
    n = formats.write_jsonl(args.out, rows)
    print(f"wrote {n} {'best-of-N labels' if kind == 'best-of-n' else kind} to {args.out}")
    return 0


def _default_export_kind(s, project) -> str:  # noqa: ANN001
    """comparisons, as before best-of-N tasks existed, unless the project has only best-of-N choices; a project
    with both must say which (one file holds one kind: the loaders read one schema a file)."""
    from sqlalchemy import select

    from rlhflab.label.models import Task

    kinds = set(s.scalars(select(Task.kind).where(Task.project_id == project.id).group_by(Task.kind)))
    if "best_of_n" in kinds and "comparison" in kinds:
        raise CLIError(f"project {project.name!r} has comparison and best-of-N tasks: choose --kind comparisons "
                       "or --kind best-of-n")
    return "best-of-n" if "best_of_n" in kinds else "comparisons"


def _stats(args: argparse.Namespace, factory: Factory) -> int:
    from rlhflab.label import db, service

    with db.session_scope(factory) as s:
        print(json.dumps(service.dashboard(s, _find_project(s, args.project)), indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhflab")
    sub = parser.add_subparsers(dest="command", required=True)
    add_label_parser(sub)
    return run_label(parser.parse_args(argv)) or 0


if __name__ == "__main__":
    sys.exit(main(["label", *sys.argv[1:]] if sys.argv[1:2] != ["label"] else sys.argv[1:]))
