"""Load test of the labelling app on loopback: N concurrent labelers each submit M answers, and the server is
killed (SIGKILL by default) and restarted in the middle. Clients retry every request until it is acknowledged
— the assignment id makes an answer idempotent, so a retry after the restart never stores a second copy.

    python benchmarks/label_load.py                       # 50 labelers x 20 answers, SQLite, SIGKILL restart
    python benchmarks/label_load.py --db postgresql://user:pass@127.0.0.1/db
    python benchmarks/label_load.py --labelers 8 --answers 5 --out /tmp/small.json

Afterwards the database itself is checked against what the clients were told:
  submitted   answers the server acknowledged (2xx) — the clients' view
  stored      answers in the database for the project
  lost        acknowledged answers (by assignment id) that are not in the database
  duplicated  extra rows for one (labeler, task) or one assignment — must be 0
Results go to benchmarks/results/label_load.json with the command, the machine and the versions.
Bounded: every client stops at --timeout seconds (the result then says complete: false and exit status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "label_load.json"
PASSWORD = "load-test-password"
RETRYABLE = (httpx.TransportError,)


def redact(text: str) -> str:
    """Database passwords never go into the results file."""
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("fastapi", "starlette", "uvicorn", "sqlalchemy", "psycopg", "httpx", "argon2-cffi"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def prepare(db_url: str, labelers: int, answers: int, k: int, gold: int, cheap_hashes: bool) -> int:
    """Schema, an admin, the labelers and one project with enough tasks for everyone. Returns the project id."""
    from rlhflab.label import db, service
    from rlhflab.label.formats import PairRow
    from rlhflab.label.security import Passwords
    from rlhflab.label.settings import LabelSettings
    from rlhflab.data.records import Post

    settings = LabelSettings(db=db_url)
    if cheap_hashes:
        settings = settings.replace(argon2_time_cost=1, argon2_memory_kib=64, argon2_parallelism=1)
    engine = db.make_engine(db_url)
    db.migrate(engine)
    factory = db.session_factory(engine)
    passwords = Passwords(settings)
    n_tasks = -(-labelers * answers // k) + answers + 10  # enough that nobody runs out
    with db.session_scope(factory) as s:
        for i in range(labelers):
            service.create_user(s, passwords, f"labeler{i:03d}", PASSWORD, "labeler")
        project = service.create_project(s, f"load-{int(time.time())}-{random.randrange(10**6)}",
                                         labels_per_task=k, gold_rate=0.1 if gold else 0.0, expiry_s=3600)
        posts = {f"post{i}": Post(id=f"post{i}", text=f"Post {i}: a story that needs a summary.", title=f"T{i}",
                                  subreddit="loadtest") for i in range(n_tasks + gold)}
        pairs = [PairRow(post=None, post_id=f"post{i}", summary_a=f" A{i}", policy_a="a", summary_b=f" B{i}",
                         policy_b="b", gold_choice=0 if i < gold else None, gold_confidence=2 if i < gold else None)
                 for i in range(n_tasks + gold)]
        service.add_tasks(s, project, pairs, posts)
        pid = project.id
    engine.dispose()
    return pid


class Server:
    def __init__(self, db_url: str, port: int, log: Path, extra_args: tuple[str, ...] = ()):
        self.db_url, self.port, self.log, self.extra_args = db_url, port, log, extra_args
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rlhflab.label.cli", "serve", "--db", self.db_url, "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "warning", *self.extra_args], stdout=log, stderr=log,
                env=env)

    async def wait_ready(self, timeout: float = 60.0) -> float:
        t0 = time.monotonic()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}") as c:
            while time.monotonic() - t0 < timeout:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log}")
                try:
                    if (await c.get("/api/health", timeout=2.0)).status_code == 200:
                        return time.monotonic() - t0
                except RETRYABLE:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout} s; see {self.log}")

    def kill(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Stats:
    def __init__(self, target: int):
        self.target = target
        self.acked: dict[int, dict] = {}  # assignment id -> {user, task_id, answer_id, created}
        self.requests = 0
        self.retries = 0
        self.transport_errors = 0
        self.server_errors = 0
        self.replayed = 0  # acknowledgements with created=false: a retry of an answer the server already had
        self.resends = 0  # deliberate second submissions of acknowledged answers (all must say created=false)
        self.latencies: list[float] = []
        self.halfway = asyncio.Event()


async def request(client: httpx.AsyncClient, stats: Stats, method: str, url: str, deadline: float, **kw):
    """Send until the server answers with something other than a transport error or a 5xx/503."""
    delay = 0.05
    first = True
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(url)
        stats.requests += 1
        if not first:
            stats.retries += 1
        first = False
        t0 = time.monotonic()
        try:
            r = await client.request(method, url, timeout=30.0, **kw)
        except RETRYABLE:
            stats.transport_errors += 1
        else:
            if r.status_code < 500:
                stats.latencies.append(time.monotonic() - t0)
                return r
            stats.server_errors += 1
        await asyncio.sleep(delay + random.random() * delay)
        delay = min(delay * 2, 1.0)


async def login(client: httpx.AsyncClient, stats: Stats, user: str, deadline: float) -> str:
    token = (await request(client, stats, "GET", "/api/csrf", deadline)).json()["csrf_token"]
    r = await request(client, stats, "POST", "/api/login", deadline, json={"username": user, "password": PASSWORD},
                      headers={"X-CSRF-Token": token})
    r.raise_for_status()
    return r.json()["csrf_token"]


async def labeler(base: str, user: str, project_id: int, answers: int, stats: Stats, deadline: float,
                  resend_rate: float = 0.0) -> int:
    rng = random.Random(user)
    async with httpx.AsyncClient(base_url=base) as client:
        token = await login(client, stats, user, deadline)
        done = 0
        while done < answers:
            r = await request(client, stats, "POST", f"/api/projects/{project_id}/next", deadline,
                              headers={"X-CSRF-Token": token})
            if r.status_code == 401:  # only if the session were lost: log in again
                token = await login(client, stats, user, deadline)
                continue
            r.raise_for_status()
            a = r.json()["assignment"]
            if a is None:
                break
            side = rng.choice(["left", "right"])
            conf = rng.choice([1, 2, 3, 4]) if side == "left" else rng.choice([6, 7, 8, 9])
            body = {"side": side, "confidence": conf, "time_ms": rng.randrange(2000, 60000),
                    "idempotency_key": f"{user}-{a['assignment_id']}"}
            await asyncio.sleep(rng.random() * 0.02)  # a little think time, so requests interleave
            r = await request(client, stats, "POST", f"/api/assignments/{a['assignment_id']}/answer", deadline,
                              json=body, headers={"X-CSRF-Token": token})
            r.raise_for_status()
            js = r.json()
            if not js["created"]:
                stats.replayed += 1
            if rng.random() < resend_rate:  # as if the acknowledgement had been lost: send the same answer again
                again = await request(client, stats, "POST", f"/api/assignments/{a['assignment_id']}/answer",
                                      deadline, json=body, headers={"X-CSRF-Token": token})
                again.raise_for_status()
                stats.resends += 1
                if again.json()["created"] or again.json()["answer_id"] != js["answer_id"]:
                    raise AssertionError(f"a resent answer for assignment {a['assignment_id']} was stored again")
            if a["assignment_id"] in stats.acked:
                raise AssertionError(f"assignment {a['assignment_id']} acknowledged twice to the client")
            stats.acked[a["assignment_id"]] = {"user": user, "task_id": a["task_id"], "answer_id": js["answer_id"]}
            done += 1
            if len(stats.acked) >= stats.target // 2:
                stats.halfway.set()
        return done


async def restarter(server: Server, stats: Stats, sig: int, info: dict) -> None:
    await stats.halfway.wait()
    info["acked_before_restart"] = len(stats.acked)
    t0 = time.monotonic()
    server.kill(sig)
    server.start()
    info["startup_s"] = round(await server.wait_ready(), 3)
    info["downtime_s"] = round(time.monotonic() - t0, 3)


def verify(db_url: str, project_id: int, stats: Stats) -> dict:
    from sqlalchemy import select

    from rlhflab.label import db
    from rlhflab.label.models import Answer, Project, Task, User

    engine = db.make_engine(db_url)
    with db.session_factory(engine)() as s:
        rows = s.execute(select(Answer.id, Answer.assignment_id, Answer.task_id, User.username, Task.is_gold)
                         .join(User, User.id == Answer.user_id).join(Task, Task.id == Answer.task_id)
                         .where(Answer.project_id == project_id)).all()
        k = s.get(Project, project_id).labels_per_task
    engine.dispose()
    per_task: dict[int, int] = {}
    for r in rows:
        if not r.is_gold:
            per_task[r.task_id] = per_task.get(r.task_id, 0) + 1
    stored_assignments = {r.assignment_id for r in rows}
    pairs = [(r.username, r.task_id) for r in rows]
    duplicated = (len(rows) - len(stored_assignments)) + (len(pairs) - len(set(pairs)))
    lost = [aid for aid in stats.acked if aid not in stored_assignments]
    mismatched = sum(1 for r in rows if r.assignment_id in stats.acked
                     and stats.acked[r.assignment_id]["answer_id"] != r.id)
    return {"stored": len(rows), "lost": len(lost), "duplicated": duplicated, "mismatched_answer_ids": mismatched,
            "stored_but_unacknowledged": len(stored_assignments - set(stats.acked)),
            "gold_answers": sum(1 for r in rows if r.is_gold),
            "tasks_over_k": sum(1 for n in per_task.values() if n > k)}


async def run_async(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="label-load-"))
    db_url = args.db or f"sqlite:///{tmp / 'load.db'}"
    project_id = prepare(db_url, args.labelers, args.answers, args.k, args.gold, args.cheap_hashes)
    port = args.port or free_port()
    server = Server(db_url, port, tmp / "server.log")
    server.start()
    stats = Stats(args.labelers * args.answers)
    restart: dict = {"signal": args.restart_signal}
    try:
        restart["first_startup_s"] = round(await server.wait_ready(), 3)
        deadline = time.monotonic() + args.timeout
        t0 = time.monotonic()
        restart_task = asyncio.create_task(restarter(server, stats, getattr(signal, f"SIG{args.restart_signal.upper()}"),
                                                     restart)) if args.restart else None
        results = await asyncio.gather(*(labeler(f"http://127.0.0.1:{port}", f"labeler{i:03d}", project_id,
                                                 args.answers, stats, deadline, args.resend_rate)
                                         for i in range(args.labelers)),
                                       return_exceptions=True)
        wall = time.monotonic() - t0
        if restart_task is not None:
            if not restart_task.done():
                restart_task.cancel()
                restart["happened"] = False
            else:
                restart_task.result()
                restart["happened"] = True
    finally:
        server.kill(signal.SIGTERM)
    log_tail = server.log.read_text(errors="replace")[-2000:] if server.log.exists() else ""
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    check = verify(db_url, project_id, stats)
    lat = sorted(stats.latencies)
    result = {
        "submitted": len(stats.acked), "stored": check["stored"], "lost": check["lost"],
        "duplicated": check["duplicated"],
        "complete": not errors and len(stats.acked) == stats.target,
        "labelers": args.labelers, "answers_per_labeler": args.answers, "target": stats.target,
        "labels_per_task": args.k, "gold_tasks": args.gold,
        "restart": restart, "requests": stats.requests, "retries": stats.retries,
        "transport_errors": stats.transport_errors, "server_errors_5xx": stats.server_errors,
        "replayed_acknowledgements": stats.replayed, "deliberate_resends": stats.resends, "checks": check,
        "wall_s": round(wall, 2), "answers_per_s": round(len(stats.acked) / wall, 1) if wall else None,
        "latency_ms": {"p50": round(1000 * statistics.median(lat), 1) if lat else None,
                       "p95": round(1000 * lat[int(0.95 * (len(lat) - 1))], 1) if lat else None,
                       "max": round(1000 * lat[-1], 1) if lat else None},
        "database": db_url.split("://", 1)[0] if args.db else "sqlite (temporary file)",
        "client_errors": errors[:10],
        "server_log_tail": log_tail if errors else "",
        "command": redact(" ".join(["python", "benchmarks/label_load.py", *sys.argv[1:]])),
        "machine": machine(), "versions": versions(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if not args.db and not errors:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labelers", type=int, default=50)
    p.add_argument("--answers", type=int, default=20, help="answers per labeler")
    p.add_argument("--k", type=int, default=3, help="labels per task")
    p.add_argument("--gold", type=int, default=10, help="gold tasks (mixed in at rate 0.1)")
    p.add_argument("--db", help="database URL (default: a temporary SQLite file)")
    p.add_argument("--port", type=int, help="loopback port (default: a free one)")
    p.add_argument("--no-restart", dest="restart", action="store_false")
    p.add_argument("--restart-signal", choices=["kill", "term", "int"], default="kill")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before the clients give up")
    p.add_argument("--resend-rate", type=float, default=0.1,
                   help="chance that a client sends an acknowledged answer once more (a lost response)")
    p.add_argument("--cheap-hashes", action="store_true", help="low-cost argon2 (tests)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p


def run(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    result = asyncio.run(run_async(args))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> int:
    result = run()
    print(json.dumps({k: result[k] for k in ("submitted", "stored", "lost", "duplicated", "complete", "wall_s",
                                             "answers_per_s", "restart")}, indent=2))
    ok = result["complete"] and result["lost"] == 0 and result["duplicated"] == 0 and \
        result["stored"] == result["submitted"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
