"""A scaled-down run of benchmarks/label_load.py: concurrent labelers, a SIGKILL restart of the server in the
middle, retries — every acknowledged answer stored exactly once. (The full 50 x 20 run is the benchmark.)"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest



REPO = Path(__file__).resolve().parents[2]


def _load_module():
    spec = importlib.util.spec_from_file_location("label_load", REPO / "benchmarks" / "label_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_load_with_restart_loses_and_duplicates_nothing(db, request, tmp_path):
    label_load = _load_module()
    out = tmp_path / "load.json"
    argv = ["--labelers", "8", "--answers", "5", "--k", "2", "--gold", "3", "--cheap-hashes", "--timeout", "90",
            "--resend-rate", "0.3", "--out", str(out)]
    if db == "postgres":
        argv += ["--db", request.getfixturevalue("pg_url")]
    result = label_load.run(argv)
    assert json.loads(out.read_text())["submitted"] == result["submitted"]
    assert result["complete"], result["client_errors"]
    assert result["restart"]["happened"]
    assert result["submitted"] == result["stored"] == 40
    assert result["lost"] == 0 and result["duplicated"] == 0
    assert result["checks"]["mismatched_answer_ids"] == 0 and result["checks"]["tasks_over_k"] == 0
    assert result["transport_errors"] > 0  # the restart really cut connections
    assert result["server_errors_5xx"] == 0
