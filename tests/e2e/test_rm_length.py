"""benchmarks/rm_length.py end to end on the tiny model: every arm scored on every batch13 pair of the folds, with
the contract's fields, and the goal's verdict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]


def test_the_tiny_rm_length_benchmark_writes_every_field(tmp_path, shared_data):
    subprocess.run([sys.executable, "benchmarks/rm_length.py", "--profile", "tiny", "--folds", "2", "--out",
                    str(tmp_path)], cwd=REPO, check=True, capture_output=True)
    doc = json.loads((tmp_path / "rm_length.json").read_text())
    fields = {"accuracy", "similar_length_accuracy", "length_correlation", "n_pairs", "n_similar"}
    for arm in ("single", "odin_quality", "ensemble", "length_baseline"):
        assert set(doc[arm]) == fields, arm
    assert doc["length_baseline"]["length_correlation"] is None
    n = doc["single"]["n_pairs"]
    assert n > 0 and all(doc[a]["n_pairs"] == n for a in ("odin_quality", "ensemble", "length_baseline"))
    assert doc["complete"] and doc["folds_completed"] == 2
    assert isinstance(doc["goal_met"], bool) and set(doc["goal_parts"]) == {
        "odin_abs_length_correlation_le_0.10", "odin_accuracy_within_2_points", "odin_similar_length_accuracy_ge_0.60"}
