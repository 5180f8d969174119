"""Browser tests: Playwright drives Debian's Chromium (headless) against a real server on loopback.

A labeler logs in and labels three tasks — the first with the mouse, two with the keyboard — and rates a summary
with the keyboard; the researcher then sees the answers on the dashboard and in the export. Screenshots of the
labelling page and the dashboard are written to the test's temporary folder, and also to
$RLHFLAB_SCREENSHOTS_DIR when it is set (benchmarks/results/ keeps the committed ones).
The labelling page's own checks follow, each on a small project: Enter only submits from the page or the answer's
controls; a lost session keeps the answer and sends it after a re-login; the "no preference" 5, "task N of M" and
the expiry countdown; Submit in view beside a long post; bidi controls shown as markers.
Skips without Chromium (the shared `chromium` fixture), unless RLHFLAB_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from rlhflab.label import service
from rlhflab.label.models import Post, User
from labelkit import PASSWORD, make_app, post_row, serve

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]
XSS = '<img src=x onerror="window.__xss=1">'


@pytest.fixture
def server(tmp_path, chromium):
    """The app with a seeded project, served by uvicorn in a thread on 127.0.0.1."""
    app = make_app(f"sqlite:///{tmp_path / 'b.db'}", {"root": "admin", "ann": "labeler", "bob": "labeler",
                                                      "cat": "labeler", "dan": "labeler"})
    ctx = app.state.ctx
    with ctx.tx() as s:
        project = service.create_project(s, "TL;DR comparisons", labels_per_task=4, gold_rate=0.0, flag_threshold=0.6,
                                         instructions="Pick the summary that a reader of the post would prefer.")
        posts = {f"t3_{i}": service.Post(id=f"t3_{i}", text=post_row(i)["text"] + "\n\nMore details follow here.",
                                         title=f"Advice needed about situation {i}", subreddit="relationships")
                 for i in range(3)}
        from rlhflab.label.formats import PairRow

        pairs = [PairRow(post=None, post_id=f"t3_{i}", summary_a=f" Summary A{i}: the short version.",
                         policy_a="sft", summary_b=(XSS if i == 0 else f" Summary B{i}: a different take."),
                         policy_b="ppo") for i in range(3)]
        pairs += [PairRow(post=None, post_id="t3_0", summary_a=" gold A", policy_a="ref", summary_b=" gold B",
                          policy_b="sft", gold_choice=0, gold_confidence=2)]
        tasks = service.add_tasks(s, project, pairs, posts)
        rating = service.create_project(s, "TL;DR ratings", gold_rate=0.0)
        service.add_tasks(s, rating, [PairRow(post=None, post_id="t3_1", summary_a=" Rate this summary.",
                                              policy_a="sft")], posts)
        pid, rid = project.id, rating.id
    # three other labelers answered already, so the dashboard has peers to compare with (dan disagrees)
    for name, side_for_a in (("bob", True), ("cat", True), ("dan", False)):
        with ctx.tx() as s:
            user = s.scalar(service.select(User).where(User.username == name))
            project = service.get_project(s, pid)
            for _ in range(4):
                a = service.next_assignment(s, project, user)
                a_on_left = not a.swapped
                side = "left" if a_on_left == side_for_a else "right"
                service.submit_answer(s, user, a.id, side=side, confidence=2 if side == "left" else 8,
                                      client_time_ms=20000 + 3000 * ord(name[0]) % 17000)
    with serve(app) as base:
        yield {"url": base, "pid": pid, "rid": rid, "chromium": chromium, "task_ids": [t.id for t in tasks]}


def _save(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5000
    target = os.environ.get("RLHFLAB_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)


def _goto_label(page, url: str) -> None:
    """Open a project's labelling page. A GET assigns nothing: press its Start/Continue button when it shows one."""
    page.goto(url)
    start = page.locator("#start-button")
    if start.count():
        with page.expect_navigation():
            start.click()
    page.wait_for_load_state("load")  # label.js has run: its keys and its fetch() are in place


def _login(page, base: str, user: str) -> None:
    page.goto(f"{base}/login")
    page.fill("#username", user)
    page.fill("#password", PASSWORD)
    page.press("#password", "Enter")
    page.wait_for_load_state()


def test_label_three_tasks_mouse_and_keyboard_then_dashboard_and_export(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    base, pid = server["url"], server["pid"]
    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=server["chromium"], headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            _login(page, base, "ann")
            expect(page).to_have_url(f"{base}/label")
            page.click(f"form[action='/label/{pid}/next'] button")
            chosen: list[str] = []
            shown_xss = False

            def note_xss() -> None:  # the payload must appear as literal text in one of the summaries
                nonlocal shown_xss
                texts = [page.inner_text(f"#summary-{side} .summary-text") for side in ("left", "right")]
                shown_xss = shown_xss or XSS in texts

            # ann prefers summary A (as bob and cat do), wherever the page shows it
            def a_side() -> str:
                left = page.inner_text("#summary-left .summary-text")
                return "left" if left.strip().startswith("Summary A") else "right"

            def other(side: str) -> str:
                return "right" if side == "left" else "left"

            pressed: list[int] = []

            # task 1 — the mouse: click the summary, click a confidence, click Submit
            expect(page.locator("#answer-form")).to_be_visible()
            expect(page.locator("#send")).to_be_disabled()
            note_xss()
            side = a_side()
            page.click(f"#summary-{side}")
            expect(page.locator(f"#summary-{side}")).to_have_attribute("aria-pressed", "true")
            conf = 2 if side == "left" else 8
            page.click(f"label.conf:has(#conf-{conf})")
            expect(page.locator(f"#conf-{conf}")).to_be_checked()
            expect(page.locator("#send")).to_be_enabled()
            _save(page, tmp_path, "label_labelling.png")
            chosen.append(page.inner_text(f"#summary-{side} .summary-text"))
            pressed.append(conf)
            page.click("#send")
            expect(page.locator("#answered")).to_have_text("answered: 1")

            # task 2 — the keyboard: ← or → picks a side, a digit the confidence, Enter submits
            note_xss()
            side = a_side()
            page.keyboard.press("ArrowLeft" if side == "left" else "ArrowRight")
            expect(page.locator(f"#summary-{side}")).to_have_attribute("aria-pressed", "true")
            conf = 1 if side == "left" else 9
            page.keyboard.press(str(conf))
            expect(page.locator(f"#conf-{conf}")).to_be_checked()
            chosen.append(page.inner_text(f"#summary-{side} .summary-text"))
            pressed.append(conf)
            page.keyboard.press("Enter")
            expect(page.locator("#answered")).to_have_text("answered: 2")

            # task 3 — the keyboard: a digit alone picks its side (7 = right is better, 3 = left); switching
            # sides with the arrows mirrors the confidence; N opens the note, Esc leaves it, Enter submits
            note_xss()
            side = a_side()
            wrong = 7 if side == "left" else 3
            page.keyboard.press(str(wrong))
            expect(page.locator(f"#summary-{other(side)}")).to_have_attribute("aria-pressed", "true")
            page.keyboard.press("ArrowLeft" if side == "left" else "ArrowRight")
            expect(page.locator(f"#conf-{10 - wrong}")).to_be_checked()
            expect(page.locator(f"#summary-{side}")).to_have_attribute("aria-pressed", "true")
            page.keyboard.press("n")
            page.keyboard.type("close call, <b>both</b> fine")
            page.keyboard.press("Escape")
            chosen.append(page.inner_text(f"#summary-{side} .summary-text"))
            pressed.append(10 - wrong)
            page.keyboard.press("Enter")
            expect(page.locator("#answered")).to_have_text("answered: 3")

            # the XSS payload in one summary was shown as text and never ran
            assert page.evaluate("window.__xss") is None and not dialogs
            assert shown_xss, "the task with the payload in a summary was never shown"

            # a rating task, keyboard only: 1-7 per axis (moves down by itself), Enter submits
            _goto_label(page, f"{base}/label/{server['rid']}")
            for key in "5647":
                page.keyboard.press(key)
            expect(page.locator("#overall-5")).to_be_checked()
            expect(page.locator("#coherence-7")).to_be_checked()
            page.keyboard.press("Enter")
            expect(page.locator("#all-done")).to_be_visible()

            # the researcher sees ann on the dashboard ...
            admin = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True).new_page()
            _login(admin, base, "root")
            expect(admin).to_have_url(f"{base}/admin")
            admin.click(f"a[href='/admin/projects/{pid}']")
            row = admin.locator("tr[data-user='ann']")
            expect(row).to_be_visible()
            expect(row.locator("td").nth(1)).to_have_text("3")
            expect(admin.locator("tr[data-user='dan']")).to_have_class("flagged")
            expect(row).not_to_have_class("flagged")
            _save(admin, tmp_path, "label_dashboard.png")

            # ... and in the export, with the summaries she chose
            with admin.expect_download() as info:
                admin.click("#export-comparisons")
            rows = [json.loads(line) for line in Path(info.value.path()).read_text().splitlines()]
        finally:
            browser.close()
    mine = [r for r in rows if r["worker"] == "ann"]
    assert len(mine) == 3
    assert [r["summaries"][r["choice"]]["text"] for r in mine] == chosen
    assert [r["extra"]["confidence"] for r in mine] == pressed
    assert all(r["summaries"][r["choice"]]["policy"] == "sft" for r in mine)
    assert mine[2]["extra"]["note"] == "close call, <b>both</b> fine"
    assert all(r["extra"]["time_ms"] > 0 for r in mine)
    assert any(XSS in (s["text"] for s in r["summaries"]) for r in rows)


def test_best_of_4_keyboard_pick_then_export(tmp_path, chromium):
    """A best-of-4 task (Ziegler et al.'s label): the query and four numbered continuations; key 3 picks the third,
    Enter submits, and the export (schema.best_of_n_to_row rows) says best = 2, counted from 0."""
    from playwright.sync_api import expect, sync_playwright

    from rlhflab.data.records import Choice
    from rlhflab.label.formats import BestOfNTask

    app = make_app(f"sqlite:///{tmp_path / 'bon.db'}", {"root": "admin", "ann": "labeler"})
    ctx = app.state.ctx
    texts = [f" and then continuation {i + 1} went its own way." for i in range(4)]
    with ctx.tx() as s:
        project = service.create_project(s, "Books best-of-4", gold_rate=0.0,
                                          instructions="Pick the continuation a reader would enjoy most.")
        query = service.Post(id="book_1", text="The rain had not stopped for three days, and the river", source="query")
        service.add_best_of_n_tasks(s, project, [BestOfNTask(post=query, samples=tuple(
            Choice(text=t, policy=f"pi{i}") for i, t in enumerate(texts)))])
        pid = project.id
    with serve(app) as base:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
                _login(page, base, "ann")
                _goto_label(page, f"{base}/label/{pid}")
                expect(page.locator("#post-text")).to_have_text("The rain had not stopped for three days, and the river")
                for i, t in enumerate(texts, 1):
                    expect(page.locator(f"#choice-{i} .summary-text")).to_have_text(t)
                    expect(page.locator(f"#choice-{i} .tag")).to_contain_text(str(i))
                expect(page.locator("#send")).to_be_disabled()
                page.click("#choice-1")  # a click picks too; the key below changes the pick
                expect(page.locator("#choice-1")).to_have_attribute("aria-pressed", "true")
                page.keyboard.press("3")
                expect(page.locator("#choice-3")).to_have_attribute("aria-pressed", "true")
                expect(page.locator("#choice-1")).to_have_attribute("aria-pressed", "false")
                expect(page.locator("#send")).to_be_enabled()
                _save(page, tmp_path, "label_best_of_n.png")
                page.keyboard.press("Enter")
                expect(page.locator("#all-done")).to_be_visible()
                expect(page.locator("#answered")).to_have_text("answered: 1")
            finally:
                browser.close()
    from rlhflab.label.cli import main as label_main

    out = tmp_path / "best_of_n.jsonl"
    assert label_main(["label", "export", "--db", f"sqlite:///{tmp_path / 'bon.db'}", "--project", "Books best-of-4",
                       "--out", str(out)]) == 0
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["best"] == 2 and row["samples"][2] == {"text": texts[2], "policy": "pi2", "eos": True}
    assert [c["text"] for c in row["samples"]] == texts
    assert row["worker"] == "ann" and row["query"].startswith("The rain") and row["extra"]["time_ms"] > 0
    loaders = pytest.importorskip("rlhflab.data.loaders")
    [label] = loaders.load_best_of_n(out)
    assert label.best == 2 and label.chosen.text == texts[2]


# ---------------------------------------------------------------------------------------------- the labelling page's
# keyboard, lost sessions, progress and expiry, long posts and bidi controls: small projects, one browser per test

LONG_POST = "\n".join(f"Line {i} of a very long post about what happened." for i in range(1, 201))
BIDI = "\u202Eabc"


@pytest.fixture
def checks(db_url, chromium):
    """Projects for the page checks, each with labels_per_task=1: "plain" (two short comparisons), "long" (one
    200-line post) and "bidi" (bidi controls and the XSS payload in the post, its title and a summary)."""
    from rlhflab.label.formats import PairRow

    app = make_app(db_url, {"root": "admin", "ann": "labeler", "bob": "labeler"})  # SQLite and PostgreSQL
    ctx = app.state.ctx
    posts = {"p0": service.Post(id="p0", text="A short post.", title="Short one", subreddit="advice"),
             "p1": service.Post(id="p1", text="Another short post.", title="Short two", subreddit="advice"),
             "long": service.Post(id="long", text=LONG_POST, title="A long one", subreddit="advice"),
             "bidi": service.Post(id="bidi", text=f"Post says {BIDI} and \u2066x\u2069 here.",
                                  title=f"Title {BIDI} {XSS}", subreddit="advice")}

    def pair(post_id: str, a: str, b: str) -> PairRow:
        return PairRow(post=None, post_id=post_id, summary_a=a, policy_a="sft", summary_b=b, policy_b="ppo")

    pids = {}
    with ctx.tx() as s:
        for name, pairs, expiry_s in (("plain", [pair("p0", " A0 short.", " B0 short."),
                                                 pair("p1", " A1 short.", " B1 short.")], 600),
                                      ("long", [pair("long", " Long A.", " Long B.")], 1800),
                                      ("bidi", [pair("bidi", f" {BIDI} summary.", f" {XSS} \u200Fx")], 1800)):
            project = service.create_project(s, name, labels_per_task=1, gold_rate=0.0, expiry_s=expiry_s,
                                              instructions="Pick the better summary.")
            service.add_tasks(s, project, pairs, posts)
            pids[name] = project.id
    with serve(app) as base:
        yield {"url": base, "pid": pids, "ctx": ctx, "chromium": chromium}


@pytest.fixture
def browser(checks):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=checks["chromium"], headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _labeling_page(browser, checks, project: str, user: str = "ann"):
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    _login(page, checks["url"], user)
    _goto_label(page, f"{checks['url']}/label/{checks['pid'][project]}")
    return page


def _answers(checks, project: str) -> list[dict]:
    """The stored comparison answers of `project`, as the export rows (read from the database)."""
    with checks["ctx"].tx() as s:
        return list(service.export_comparisons(s, service.get_project(s, checks["pid"][project])))


def _assignment_id(page) -> str:
    return page.locator("input[name='assignment_id']").input_value()


def test_enter_on_log_out_a_link_or_a_summary_does_not_submit(browser, checks):
    """Enter submits only from the page itself or the answer's own controls; on a focused "Log out" it logs out,
    on a link it follows the link, on the instructions' <summary> it opens them — and never stores the answer."""
    from playwright.sync_api import expect

    base = checks["url"]
    page = _labeling_page(browser, checks, "plain")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("2")
    expect(page.locator("#send")).to_be_enabled()

    page.focus("details.instructions summary")
    page.keyboard.press("Enter")
    expect(page.locator("details.instructions")).to_have_attribute("open", "")
    page.focus("header a[href='/label']")
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{base}/label")
    assert _answers(checks, "plain") == []

    _goto_label(page, f"{base}/label/{checks['pid']['plain']}")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("8")
    expect(page.locator("#send")).to_be_enabled()
    page.focus("header button:has-text('Log out')")
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{base}/login")
    page.wait_for_load_state()
    assert _answers(checks, "plain") == []
    page.goto(f"{base}/label/{checks['pid']['plain']}")
    expect(page).to_have_url(f"{base}/login")  # really logged out


@pytest.mark.parametrize("how", ["cookies_cleared", "logout_in_another_tab", "other_user_in_another_tab"])
def test_lost_session_keeps_the_answer_and_relogin_sends_it_once(browser, checks, how):
    """Submit after the session is gone: no error page — a re-login box; logging in again there sends the kept
    answer by itself, it is stored once, as chosen, and the page moves on to the next task."""
    from playwright.sync_api import expect

    base = checks["url"]
    page = _labeling_page(browser, checks, "plain")
    first = _assignment_id(page)
    side_text = page.inner_text("#summary-right .summary-text")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("7")
    page.keyboard.press("n")
    page.keyboard.type("kept through a re-login")
    page.keyboard.press("Escape")
    if how == "cookies_cleared":
        page.context.clear_cookies()
    else:
        other = page.context.new_page()
        if how == "logout_in_another_tab":
            other.goto(f"{base}/label")
            other.click("header button:has-text('Log out')")
            expect(other).to_have_url(f"{base}/login")
        else:
            _login(other, base, "bob")
            expect(other).to_have_url(f"{base}/label")
        other.close()

    page.click("#send")
    box = page.get_by_role("dialog", name="Log in again")
    expect(box).to_be_visible()
    expect(page).to_have_url(f"{base}/label/{checks['pid']['plain']}")
    expect(page.locator("#summary-right")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#conf-7")).to_be_checked()
    expect(page.locator("#note")).to_have_value("kept through a re-login")
    assert _answers(checks, "plain") == []

    # typed into the box, "ann" must not trigger the page's shortcuts (N = note)
    page.fill("#relogin-username", "")
    page.locator("#relogin-username").press_sequentially("ann")
    page.locator("#relogin-password").press_sequentially(PASSWORD)
    expect(page.locator("#note")).to_have_value("kept through a re-login")
    page.press("#relogin-password", "Enter")
    expect(page.locator("#answered")).to_have_text("answered: 1")
    assert _assignment_id(page) != first
    [row] = _answers(checks, "plain")
    assert row["worker"] == "ann" and row["choice"] == 1 and row["extra"]["confidence"] == 7
    assert row["summaries"][1]["text"] == side_text and row["extra"]["note"] == "kept through a re-login"
    assert row["extra"]["time_ms"] > 0


def test_unsent_answer_survives_a_reload(browser, checks):
    """The kept answer is also in sessionStorage: after a reload and a login, the same assignment shows it again."""
    from playwright.sync_api import expect

    base = checks["url"]
    page = _labeling_page(browser, checks, "plain")
    first = _assignment_id(page)
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("3")
    page.context.clear_cookies()
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog", name="Log in again")).to_be_visible()
    page.reload()
    expect(page).to_have_url(f"{base}/login")
    _login(page, base, "ann")
    _goto_label(page, f"{base}/label/{checks['pid']['plain']}")
    assert _assignment_id(page) == first
    expect(page.locator("#summary-left")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#conf-3")).to_be_checked()
    page.keyboard.press("Enter")
    expect(page.locator("#answered")).to_have_text("answered: 1")
    [row] = _answers(checks, "plain")
    assert row["choice"] == 0 and row["extra"]["confidence"] == 3


def test_server_errors_are_shown_and_the_answer_is_kept(browser, checks):
    """Other failures show the server's message (JSON detail or plain text) and keep the answer for a retry."""
    from playwright.sync_api import expect

    answer_url = "**/label/*/answer"
    page = _labeling_page(browser, checks, "plain")
    page.route(answer_url, lambda route: route.fulfill(status=429, json={"detail": "slow down, 3 s"}))
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("1")
    expect(page.locator("#send")).to_be_enabled()
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text("slow down, 3 s")
    page.unroute(answer_url)
    page.route(answer_url, lambda route: route.fulfill(status=413, body="request too large",
                                                      content_type="text/plain"))
    page.click("#send")
    expect(page.locator("#status")).to_contain_text("request too large")
    page.unroute(answer_url)
    page.evaluate("document.querySelector('input[name=assignment_id]').value = '999999'")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text("no assignment 999999 of yours")
    expect(page.locator("#summary-left")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#conf-1")).to_be_checked()
    assert _answers(checks, "plain") == []
    page.reload()  # the real assignment again (the kept answer comes back from sessionStorage)
    expect(page.locator("#conf-1")).to_be_checked()
    page.keyboard.press("Enter")
    expect(page.locator("#answered")).to_have_text("answered: 1")
    [row] = _answers(checks, "plain")
    assert row["choice"] == 0 and row["extra"]["confidence"] == 1


def test_no_preference_label_progress_and_expiry_countdown(browser, checks):
    """5 reads "no preference"; "task N of M"; a live "expires in mm:ss" that says so when the time is up."""
    from datetime import datetime, timezone

    from playwright.sync_api import expect

    base = checks["url"]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.clock.install(time=datetime.now(timezone.utc))
    _login(page, base, "ann")
    _goto_label(page, f"{base}/label/{checks['pid']['plain']}")
    scale = page.locator("#confidence")
    expect(scale.locator("label.conf:has(#conf-5)")).to_contain_text("no preference")
    expect(scale.locator(".conf-note")).to_be_visible()
    expect(scale.locator(".end").first).to_have_text("Left is much better")
    expect(scale.locator(".end").last).to_have_text("Right is much better")
    expect(page.locator("#progress")).to_have_text("task 1 of 2")
    expect(page.locator("#answered")).to_have_text("answered: 0")

    expiry = page.locator("#expiry")
    expect(expiry).to_have_text(re.compile(r"^expires in (09:5\d|10:00)$"))
    page.clock.run_for(65_000)
    expect(expiry).to_have_text(re.compile(r"^expires in 0(8:5\d|9:00)$"))
    page.clock.run_for(9 * 60_000)
    expect(expiry).to_contain_text("expired")
    expect(expiry).to_contain_text("submitting may fail")

    page.keyboard.press("5")  # no preference: the side stays as picked
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("Enter")
    expect(page.locator("#progress")).to_have_text("task 2 of 2")
    expect(page.locator("#answered")).to_have_text("answered: 1")
    [row] = _answers(checks, "plain")
    assert row["choice"] == 0 and row["extra"]["confidence"] == 5


def test_long_post_keeps_submit_in_view_and_both_summaries_reachable(browser, checks):
    from playwright.sync_api import expect

    page = _labeling_page(browser, checks, "long")
    expect(page.locator("#post-text")).to_contain_text("Line 200 of a very long post")

    def in_view(selector: str) -> bool:
        box = page.locator(selector).bounding_box()
        return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 900

    assert in_view("#send") and in_view("#hint")
    page.click("#summary-right")  # Playwright scrolls to it and fails if anything (the action bar) covers it
    expect(page.locator("#summary-right")).to_have_attribute("aria-pressed", "true")
    page.click("#summary-left")
    expect(page.locator("#summary-left")).to_have_attribute("aria-pressed", "true")
    page.click("label.conf:has(#conf-4)")
    assert in_view("#send")
    page.mouse.wheel(0, 5000)
    assert in_view("#send")
    page.click("#send")
    expect(page.locator("#all-done")).to_be_visible()
    [row] = _answers(checks, "long")
    assert row["choice"] == 0 and row["extra"]["confidence"] == 4


def test_bidi_controls_are_shown_as_markers_not_obeyed(browser, checks):
    """U+202E and friends in the post, title or a summary show as a visible "⟨U+202E⟩" marker (text) and reorder
    nothing; the stored text and the export keep the characters."""
    from playwright.sync_api import expect

    dialogs: list[str] = []
    page = _labeling_page(browser, checks, "bidi")
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    expect(page.locator("#post-text")).to_have_text("Post says ⟨U+202E⟩abc and ⟨U+2066⟩x⟨U+2069⟩ here.")
    expect(page.locator(".post-title")).to_have_text(f"Title ⟨U+202E⟩abc {XSS}")
    texts = [page.inner_text(f"#summary-{side} .summary-text") for side in ("left", "right")]
    assert sorted(t.strip() for t in texts) == sorted(["⟨U+202E⟩abc summary.", f"{XSS} ⟨U+200F⟩x"])
    shown = page.evaluate("document.querySelector('main').innerText")
    assert not re.search("[\u200e\u200f\u202a-\u202e\u2066-\u2069]", shown)
    assert page.locator(".bidi-marker").count() == 6
    assert page.evaluate("window.__xss") is None and not dialogs
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    expect(page.locator("#all-done")).to_be_visible()
    [row] = _answers(checks, "bidi")
    assert sorted(s["text"] for s in row["summaries"]) == sorted([f" {BIDI} summary.", f" {XSS} \u200Fx"])
    with checks["ctx"].tx() as s:
        post = s.scalar(select(Post).where(Post.post_key == "bidi"))
        assert post.text == f"Post says {BIDI} and \u2066x\u2069 here." and post.title == f"Title {BIDI} {XSS}"


def test_api_docs_load_only_local_assets_under_the_csp(tmp_path, chromium):
    """/api/docs renders Swagger UI with nothing from another origin (it works offline) and no CSP violation."""
    from playwright.sync_api import expect, sync_playwright

    app = make_app(f"sqlite:///{tmp_path / 'docs.db'}", {"root": "admin"})
    with serve(app) as base, sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = b.new_page()
            requested, console = [], []
            page.on("request", lambda r: requested.append(r.url))
            page.on("console", lambda m: console.append(m.text))
            response = page.goto(f"{base}/api/docs")
            assert "script-src 'self'" in response.headers["content-security-policy"]
            expect(page.locator(".opblock-summary-path", has_text="/api/login").first).to_be_visible()
            page.wait_for_load_state("networkidle")
            foreign = [u for u in requested if not u.startswith((base, "data:"))]
            assert foreign == [], foreign
            assert [m for m in console if "Content Security Policy" in m] == []
        finally:
            b.close()
