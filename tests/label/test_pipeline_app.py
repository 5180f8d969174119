"""`rlhflab run` with labels from the labelling app: the pipeline puts round 1's pairs into a project and stops
(exit 3) until people have labelled them; labelled through the app's API, the same command goes on to the end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from labelkit import Api, answer_next, make_app

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_pipeline_waits_for_the_apps_labels_then_trains_on_them(tmp_path, shared_data):
    db = f"sqlite:///{tmp_path / 'label.db'}"
    cmd = [sys.executable, "-m", "rlhflab", "run", "configs/pipeline/tiny.yaml", "--out", str(tmp_path / "p"),
           "rounds=1", "gold.skip=true", "labels.source=app", f"labels.db={db}", "labels.project=tiny"]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 3, first.stderr[-3000:]
    assert "waiting for labels" in first.stderr and "project 'tiny-round1'" in first.stderr
    n_pairs = len((tmp_path / "p" / "round_1" / "pairs.jsonl").read_text().splitlines())
    assert f"has {n_pairs} of {n_pairs} tasks still to label" in first.stderr
    assert not (tmp_path / "p" / "round_1" / "rm").exists()

    app = make_app(db, users={"ann": "labeler"})
    api = Api(app).login("ann")
    pid = next(p["id"] for p in api.get("/api/projects").json() if p["name"] == "tiny-round1")
    sides = []
    while True:
        side = "left" if len(sides) % 3 else "right"
        if answer_next(api, pid, side=side, confidence=3 if side == "left" else 7) is None:
            break
        sides.append(side)
    assert len(sides) == n_pairs

    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    labels = [json.loads(line) for line in (tmp_path / "p" / "round_1" / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == n_pairs and {r["worker"] for r in labels} == {"ann"}
    rm_done = json.loads((tmp_path / "p" / "round_1" / "rm" / "DONE.json").read_text())
    assert rm_done["train_pairs"] + rm_done["dev_pairs"] == n_pairs
    assert (tmp_path / "p" / "eval" / "report.html").exists()
