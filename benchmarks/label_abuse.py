"""Abuse benchmark of the labelling server (issue 13), on loopback against a real `rlhflab label serve` process:

1. **Oversized bodies.** 8 clients at once each send a 50 MB body to `POST /api/login` (no session, no CSRF
   token): once with a Content-Length, once chunked. Every one must get 413, and the server's resident memory
   must grow by under 20 MB (sampled every 5 ms from /proc). The same attack against the same server started with
   the body limit raised past 50 MB (`--max-body-bytes`) is the peer: what the limit saves.
2. **Brute force.** Wrong passwords for `admin` until the first 429 (real argon2id cost), then a spray of wrong
   passwords over many usernames from one address until its 429: how many attempts were answered, in what time.
3. **The load test still holds.** `benchmarks/label_load.py` (50 labelers x 20 answers, SIGKILL restart) on each
   database, its lost/duplicated counts copied here (its own result files are rewritten too).

    python benchmarks/label_abuse.py                                   # SQLite
    python benchmarks/label_abuse.py --postgres postgresql://u:p@127.0.0.1/db
    python benchmarks/label_abuse.py --no-load-test --out /tmp/abuse.json

Clients send like curl does: headers, then the body in 64 KB pieces, stopping as soon as the server answers (an
early 413 arrives before most of the body is sent). Results: benchmarks/results/label_abuse.json.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_load import REPO, Server, free_port, machine, redact, versions  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "label_abuse.json"
BODY = 50 * 1024 * 1024
CLIENTS = 8
PIECE = 64 * 1024
ADMIN_PASSWORD = "abuse-benchmark-password"
GOAL_RSS_GROWTH_MB = 20.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class RssSampler:
    """The server's peak resident memory while a block runs (sampled every 5 ms)."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def __enter__(self) -> RssSampler:
        self.base = rss_kib(self.pid)
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)  # late growth (a body still being parsed) counts too
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return round((self.peak - self.base) / 1024, 1)


def big_post(port: int, chunked: bool, timeout: float = 120.0) -> dict:
    """One client: POST /api/login with a 50 MB body, sent in pieces until the server answers."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {BODY}"
    sock.sendall(f"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{framing}\r\n"
                 "\r\n".encode())
    piece = b"x" * PIECE
    if chunked:
        piece = f"{PIECE:x}\r\n".encode() + piece + b"\r\n"
    sent, t0 = 0, time.monotonic()
    try:
        while sent < BODY:
            if select.select([sock], [], [], 0)[0]:
                break  # answered early
            try:
                sock.sendall(piece)
            except OSError:
                break
            sent += PIECE
        if sent >= BODY and chunked:
            sock.sendall(b"0\r\n\r\n")
        try:
            reply = sock.recv(4096)
            status = int(reply.split()[1]) if reply.startswith(b"HTTP/1.1 ") else None
        except OSError as err:  # a reset before the answer could be read
            status, reply = None, str(err).encode()
    finally:
        sock.close()
    return {"status": status, "body_sent_mb": round(sent / 2**20, 2), "seconds": round(time.monotonic() - t0, 3)}


def attack(server: Server, chunked: bool) -> dict:
    with RssSampler(server.proc.pid) as rss, ThreadPoolExecutor(CLIENTS) as pool:
        t0 = time.monotonic()
        results = list(pool.map(lambda _: big_post(server.port, chunked), range(CLIENTS)))
        wall = time.monotonic() - t0
    statuses = [r["status"] for r in results]
    return {"clients": CLIENTS, "body_mb": BODY // 2**20, "framing": "chunked" if chunked else "content-length",
            "statuses": statuses, "all_413": statuses == [413] * CLIENTS,
            "server_rss_before_mb": round(rss.base / 1024, 1), "server_rss_peak_growth_mb": rss.growth_mb,
            "body_sent_mb_per_client": [r["body_sent_mb"] for r in results], "wall_s": round(wall, 3)}


def until_429(port: int, usernames, limit: int = 500) -> dict:
    """Wrong passwords, one login after another, until the first 429 (or `limit` attempts)."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        token = c.get("/api/csrf").json()["csrf_token"]
        codes: list[int] = []
        t0 = time.monotonic()
        retry_after = None
        for name in usernames:
            r = c.post("/api/login", json={"username": name, "password": "wrong password"},
                       headers={"X-CSRF-Token": token})
            codes.append(r.status_code)
            if r.status_code == 429 or len(codes) >= limit:
                retry_after = r.headers.get("retry-after")
                break
        wall = time.monotonic() - t0
    answered = codes.index(429) if 429 in codes else len(codes)
    return {"attempts_answered_before_first_429": answered, "first_429": 429 in codes,
            "retry_after_s": int(retry_after) if retry_after else None, "other_codes": sorted(set(codes) - {401, 429}),
            "wall_s": round(wall, 2), "s_per_answered_attempt": round(wall / max(1, len(codes)), 3)}


def prepare(db_url: str) -> None:
    from rlhflab.label import db, service
    from rlhflab.label.security import Passwords
    from rlhflab.label.settings import LabelSettings

    engine = db.make_engine(db_url)
    db.migrate(engine)
    with db.session_scope(db.session_factory(engine)) as s:
        if not s.scalar(service.select(service.User.id).where(service.User.username == "admin")):
            service.create_user(s, Passwords(LabelSettings()), "admin", ADMIN_PASSWORD, "admin")
    engine.dispose()


def run_database(db_url: str, name: str, work: Path) -> dict:
    import asyncio

    prepare(db_url)
    out: dict = {}
    arms = {"limits_on": (), "limits_off_peer": ("--max-body-bytes", str(2 * BODY)),
            "brute_force": (), "username_spray": ()}  # a fresh server each: the throttle's state is per process
    for arm, extra in arms.items():
        server = Server(db_url, free_port(), work / f"server-{name}-{arm}.log", extra)
        server.start()
        try:
            asyncio.run(server.wait_ready())
            with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as c:  # warm: first requests allocate
                for _ in range(20):
                    c.get("/api/health")
            if arm == "brute_force":
                out[arm] = {"one_username": until_429(server.port, ["admin"] * 100)}
            elif arm == "username_spray":
                out["brute_force"]["username_spray_one_address"] = until_429(
                    server.port, (f"user{i}" for i in range(1000)), 1000)
            else:
                out[arm] = {"content_length": attack(server, chunked=False), "chunked": attack(server, chunked=True)}
        finally:
            server.kill(15)
    return out


def load_test(db_url: str | None) -> dict:
    out_file = REPO / "benchmarks" / "results" / ("label_load_postgres.json" if db_url else "label_load.json")
    cmd = [sys.executable, "benchmarks/label_load.py", "--out", str(out_file.relative_to(REPO))]
    if db_url:
        cmd += ["--db", db_url]
    code = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True).returncode
    result = json.loads(out_file.read_text())
    return {"exit_status": code, "file": str(out_file.relative_to(REPO)),
            **{k: result[k] for k in ("labelers", "answers_per_labeler", "submitted", "stored", "lost", "duplicated",
                                      "complete", "server_errors_5xx", "wall_s")},
            "restart_signal": result["restart"]["signal"]}


def verdict(results: dict) -> dict:
    on = [arm for db in results["databases"].values() for arm in db["limits_on"].values()]
    growth = max(a["server_rss_peak_growth_mb"] for a in on)
    return {"all_413": all(a["all_413"] for a in on), "max_server_rss_growth_mb": growth,
            "goal_rss_growth_under_mb": GOAL_RSS_GROWTH_MB, "rss_goal_met": growth < GOAL_RSS_GROWTH_MB,
            "load_tests_lost": {k: v["lost"] for k, v in results.get("load_test", {}).items()},
            "load_tests_duplicated": {k: v["duplicated"] for k, v in results.get("load_test", {}).items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postgres", help="also run against this PostgreSQL URL")
    ap.add_argument("--no-load-test", action="store_true", help="skip benchmarks/label_load.py")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="label-abuse-"))
    dbs = {"sqlite": f"sqlite:///{work / 'abuse.db'}"}
    if args.postgres:
        dbs["postgresql"] = args.postgres
    results: dict = {"databases": {name: run_database(url, name, work) for name, url in dbs.items()}}
    if not args.no_load_test:
        results["load_test"] = {"sqlite": load_test(None)}
        if args.postgres:
            results["load_test"]["postgresql"] = load_test(args.postgres)
    results["verdict"] = verdict(results)
    results.update(command=redact(" ".join(["python", "benchmarks/label_abuse.py", *sys.argv[1:]])),
                   date=datetime.now(timezone.utc).isoformat(timespec="seconds"), machine=machine(),
                   versions=versions(), note=args.note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["verdict"], indent=2))
    v = results["verdict"]
    ok = v["all_413"] and v["rss_goal_met"] and not any(v["load_tests_lost"].values()) \
        and not any(v["load_tests_duplicated"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    os.chdir(REPO)
    sys.exit(main())
