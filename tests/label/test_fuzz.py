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
SKIP = {("POST", "/api/logout")}  # cookie sessions are not revocable server-side: nothing to fuzz there


def test_fuzz_api_finds_no_server_errors(db_url):
    """Against SQLite and PostgreSQL (which, unlike SQLite, enforces column lengths and rejects NUL bytes)."""
    app = make_app(db_url, {"root": "admin", "ann": "labeler"})
    admin = Api(app).login("root")
    pid = admin.post("/api/projects", {"name": "fuzz"}).json()["id"]
    admin.post(f"/api/projects/{pid}/tasks", {"tasks": comparison_tasks(5)})
    cookies = {"rlhflab_session": admin.client.cookies.get("rlhflab_session")}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
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
    assert calls > 400
    assert not failures, "\n".join(failures)
