"""benchmarks/rm_more_labels.py on its tiny profile: every arm over the same k folds by post, pooled, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_tiny_more_labels_benchmark_pools_the_same_folds_for_every_arm(tmp_path, shared_data):
    out = tmp_path / "rmml"
    subprocess.run([sys.executable, "benchmarks/rm_more_labels.py", "--profile", "tiny", "--folds", "2", "--out",
                    str(out)], cwd=REPO, check=True, capture_output=True)
    res = json.loads((out / "rm_more_labels.json").read_text())
    arms = ("batch13_only", "postless_first", "postless_mixed")
    for arm in arms:
        assert {"accuracy", "similar_length_accuracy", "length_correlation", "length_baseline"} <= set(res[arm])
    # the folds' dev pairs together are the same pairs for every arm (so their numbers compare)
    assert len({res[a]["n_pairs"] for a in arms}) == 1 and len({res[a]["length_baseline"] for a in arms}) == 1
    dev = [json.loads((out / "batch13_only" / f"rm_fold{k}" / "DONE.json").read_text())["dev_pairs"] for k in (0, 1)]
    assert sum(dev) == res["batch13_only"]["n_pairs"]
    done = json.loads((out / "postless_first" / "rm_fold0" / "DONE.json").read_text())
    assert done["postless_pairs"] > 0 and done["dev_pairs"] == dev[0]  # post-less pairs trained on, never in dev
    assert res["best_variant"] in arms[1:] and isinstance(res["goal_met"], bool)
    rm_commands = [c for c in res["commands"] if c.startswith("rlhflab rm ")]
    assert sum("data.postless_schedule=first" in c for c in rm_commands) == 2
    assert res["folds_completed"] == 2 and res["complete"] is True

    # batch13_only from finished runs of the same recipe and folds (rm_length.py's single arm): linked, not trained
    out2 = tmp_path / "rmml2"
    subprocess.run([sys.executable, "benchmarks/rm_more_labels.py", "--profile", "tiny", "--folds", "2", "--out",
                    str(out2), "--arms", "batch13_only", "--batch13-from", str(out / "batch13_only")], cwd=REPO,
                   check=True, capture_output=True)
    again = json.loads((out2 / "rm_more_labels.json").read_text())
    assert (out2 / "batch13_only" / "rm_fold1").is_symlink()
    assert again["batch13_only"] == res["batch13_only"] and again["batch13_from"] == str(out / "batch13_only")
