"""Schema-driven fuzzing: schemathesis generates requests from the app's OpenAPI spec, as a logged-in
researcher (so it gets past auth and into every handler) with a valid CSRF token, and checks that nothing
answers 5xx. Bounded: a fixed number of examples per operation (well under a minute on 2 cores).

schemathesis' pytest plugin (`from_fixture` / `parametrize`) does not run under pytest 9, so the test drives
its hypothesis strategies directly: one `@given` run per API operation.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from labelkit import Api, comparison_tasks, make_app  # noqa: E402

EXAMPLES = 30  # per operation and generation mode (valid-by-schema and deliberately invalid requests)
# logging out would end the fuzzing session itself (sessions are revocable server-side): nothing else to learn there
SKIP = {("POST", "/api/logout"), ("POST", "/logout")}


def _seeded(db_url):
    app = make_app(db_url, {"root": "admin", "ann": "labeler"})
    admin = Api(app).login("root")
    pid = admin.post("/api/projects", {"name": "fuzz"}).json()["id"]
    admin.post(f"/api/projects/{pid}/tasks", {"tasks": comparison_tasks(5)})
    return app, admin


def _fuzz(app, admin, operations) -> tuple[int, list[str]]:
    """Every operation in both generation modes, as the logged-in researcher with the CSRF token (the forms'
    `csrf_token` field may be left out: the header counts). Returns (calls, failures)."""
    cookies = {"rlhflab_session": admin.client.cookies.get("rlhflab_session")}
    failures: list[str] = []
    calls = 0
    for op, mode in [(op, mode) for op in operations for mode in schemathesis.GenerationMode]:
        if (op.method.upper(), op.path) in SKIP:
            continue

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def run(case):
            nonlocal calls
            headers = {**(case.headers or {}), "X-CSRF-Token": admin.token}
            response = case.call(headers=headers, cookies=cookies)
            calls += 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                f"{response.text[:200]}")
            case.validate_response(response, checks=[not_a_server_error])

        try:
            run()
        except Unsatisfiable:  # negative mode on an operation that has no inputs to get wrong
            continue
        except Exception as err:  # noqa: BLE001 - collect, report all operations at once
            failures.append(f"{op.method.upper()} {op.path} ({mode.value}): {type(err).__name__}: "
                            f"{str(err)[:300]}")
    return calls, failures


def test_fuzz_api_finds_no_server_errors(db_url):
    """Against SQLite and PostgreSQL (which, unlike SQLite, enforces column lengths and rejects NUL bytes)."""
    app, admin = _seeded(db_url)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    calls, failures = _fuzz(app, admin, operations)
    assert calls > 400
    assert not failures, "\n".join(failures)


def _form_schema(app):
    """An OpenAPI document of the HTML form routes (the published one leaves them out), so that schemathesis
    generates their form bodies from the same annotated types the routes validate with."""
    import copy

    from fastapi.openapi.utils import get_openapi
    from fastapi.routing import APIRoute

    from rlhflab.label import pages

    routes = []
    for route in pages.router.routes:  # copies: the module's router is shared by every app in the process
        if isinstance(route, APIRoute) and "POST" in route.methods:
            route = copy.copy(route)
            route.include_in_schema = True
            routes.append(route)
    schema = schemathesis.openapi.from_dict(get_openapi(title="forms", version="1", routes=routes))
    schema.app = app
    return schema


def test_fuzz_html_forms_finds_no_server_errors(db_url):
    app, admin = _seeded(db_url)
    forms = [r.ok() for r in _form_schema(app).get_all_operations()]
    assert {op.path for op in forms} >= {"/login", "/admin/users", "/admin/projects", "/label/{project_id}/answer",
                                         "/label/{project_id}/next", "/admin/projects/{project_id}/upload"}
    calls, failures = _fuzz(app, admin, forms)
    assert calls > 150
    assert not failures, "\n".join(failures)


FORM_FIELDS = {  # every text field of every form, with the rest of a valid form around it
    "/login": ({"username": "root", "password": "not the password"}, ["username", "password"]),
    "/admin/users": ({"username": "newuser", "password": "a long password", "role": "labeler"},
                     ["username", "password", "role"]),
    "/admin/projects": ({"name": "new project", "instructions": "be kind"}, ["name", "instructions"]),
    "/label/1/answer": ({"assignment_id": "1", "side": "left", "confidence": "2", "note": "n"}, ["note", "side"]),
}


def test_every_form_field_refuses_nul_and_over_long_strings(db_url):
    """The hand-picked cases schemathesis may not draw: a NUL and 30 000 characters (over every limit, under the body limit) in each text field are a 4xx
    (never stored, never a 500), on both databases."""
    app, admin = _seeded(db_url)
    for path, (form, fields) in FORM_FIELDS.items():
        for field in fields:
            for bad in (form[field] + "\x00x", "y" * 30_000):
                r = admin.client.post(path, data={**form, field: bad, "csrf_token": admin.token},
                                      headers={"Accept": "application/json"}, follow_redirects=False)
                assert 400 <= r.status_code < 500, (path, field, len(bad), r.status_code, r.text[:200])
    assert [p["name"] for p in admin.get("/api/projects").json()] == ["fuzz"]
