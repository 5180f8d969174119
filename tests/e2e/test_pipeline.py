"""The whole loop on tiny models and real data: `rlhflab run configs/pipeline/tiny.yaml`, two rounds, a simulated
labeler. A run killed in the middle of PPO and started again skips what was done, resumes PPO, and ends with the
same numbers and report as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
# six PPO updates a round, a checkpoint after each, so there is time to kill round 2's PPO half way
ARGS = ["run", "configs/pipeline/tiny.yaml", "ppo.overrides=[total_episodes=48, save_every=1, sample_every=1]"]


def rlhflab(*args: str, log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "rlhflab", *args], cwd=REPO, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, log: Path) -> str:
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    return log.read_text()


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "wall"))} for r in rows]


@pytest.mark.slow
def test_a_pipeline_killed_during_ppo_resumes_to_the_same_report(tmp_path, shared_data):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    out = finish(rlhflab(*ARGS, "--out", str(straight), log=tmp_path / "straight.log"), tmp_path / "straight.log")
    assert "[15/15] eval" in out and "pipeline done" in out and "report: " in out
    assert "\r" not in out  # off a terminal, progress is plain lines (core/progress.py), not redrawn bars
    assert "ppo: " in out and "updates (100%)" in out

    proc = rlhflab(*ARGS, "--out", str(killed), log=tmp_path / "killed.log")
    ppo = killed / "round_2" / "ppo"
    deadline = time.time() + 600
    while not ((ppo / "metrics.jsonl").exists() and len((ppo / "metrics.jsonl").read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.time() < deadline, (killed / "../killed.log").read_text()[-3000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the pipeline and its PPO child die at once, as in a crash
    proc.wait()
    assert not (ppo / "DONE.json").exists(), "PPO finished before it could be killed"

    log = tmp_path / "resumed.log"
    resumed = finish(rlhflab(*ARGS, "--out", str(killed), log=log), log)
    assert resumed.count("already done — skipped") == 13  # sft, gold, 6 steps of round 1, 5 of round 2 before PPO
    assert "resumed after update" in resumed

    assert metrics(straight / "round_2" / "ppo") == metrics(ppo)
    done_a = json.loads((straight / "eval" / "DONE.json").read_text())
    done_b = json.loads((killed / "eval" / "DONE.json").read_text())
    for key in ("win_rate", "length_controlled_win_rate", "mean_tokens"):
        assert done_a[key] == done_b[key], key
    assert (killed / "eval" / "report.html").stat().st_size > 10_000

    # the rounds are wired as the paper's batches: round 2 samples from round 1's policy, its RM learns from
    # both rounds' comparisons, and its PPO continues round 1's policy against the SFT reference with round 1's β
    r1 = len((killed / "round_1" / "labels" / "comparisons.jsonl").read_text().splitlines())
    r2 = len((killed / "round_2" / "labels" / "comparisons.jsonl").read_text().splitlines())
    assert len((killed / "round_2" / "comparisons.jsonl").read_text().splitlines()) == r1 + r2
    import yaml

    ppo2 = yaml.safe_load((ppo / "config.yaml").read_text())["config"]
    assert ppo2["policy_init"] == str(killed / "round_1" / "ppo") and ppo2["model"] == str(killed / "sft")
    assert ppo2["reward"] == str(killed / "round_2" / "rm")
    beta1 = json.loads((killed / "round_1" / "ppo" / "DONE.json").read_text())["kl_coef_last"]
    assert ppo2["kl"]["init_coef"] == pytest.approx(beta1)
    sample2 = yaml.safe_load((killed / "round_2" / "sample" / "config.yaml").read_text())["config"]
    assert sample2["model"] == str(killed / "round_1" / "ppo") and sample2["offset"] == 12
    # the report's first judge is the gold RM the simulated labeler used, which PPO never saw
    assert done_b["judge"] == "gold"
    summary = json.loads((killed / "pipeline.jsonl").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2] and summary["report"].endswith("report.html")


@pytest.mark.slow
def test_a_pipeline_on_imported_labels_samples_nothing_and_trains_on_every_round_so_far(tmp_path, shared_data):
    """labels.source=import: one comparisons file a round (here real human comparisons from batch13, gzip and
    plain), no sampling and no gold RM; round 2's RM learns from both files."""
    import gzip

    rows = gzip.open(shared_data / "comparisons" / "batch13.jsonl.gz", "rt").read().splitlines()[:40]
    first, second = tmp_path / "round1.jsonl.gz", tmp_path / "round2.jsonl"
    with gzip.open(first, "wt") as f:
        f.write("\n".join(rows[:24]) + "\n")
    second.write_text("\n".join(rows[24:]) + "\n")
    out = tmp_path / "p"
    log = tmp_path / "import.log"
    text = finish(rlhflab("run", "configs/pipeline/tiny.yaml", "labels.source=import", f"labels.files=[{first}, {second}]",
                          "--out", str(out), log=log), log)
    assert "[10/10] eval" in text  # sft, 2 × (labels, comparisons so far, rm, ppo), eval
    assert not (out / "gold").exists() and not (out / "round_1" / "sample").exists()
    assert len((out / "round_2" / "comparisons.jsonl").read_text().splitlines()) == 40
    rm = json.loads((out / "round_2" / "rm" / "DONE.json").read_text())
    assert rm["train_pairs"] + rm["dev_pairs"] <= 40 and rm["train_pairs"] > 24
    assert json.loads((out / "eval" / "DONE.json").read_text())["judge"] == "rm"  # no gold judge without gold


@pytest.mark.slow
def test_ziegler_sentiment_online_pipeline_on_tiny_models(tmp_path, shared_data):
    """configs/pipeline/sentiment-tiny.yaml: no SFT, best-of-4 tasks of book continuations answered by VADER,
    online collection (round 2's RM continues from round 1's on round 2's labels alone), style-eval at the end."""
    out, log = tmp_path / "z", tmp_path / "z.log"
    text = finish(rlhflab("run", "configs/pipeline/sentiment-tiny.yaml", "--out", str(out), log=log), log)
    assert "[13/13] style-eval" in text and not (out / "sft").exists()
    labels = [json.loads(line) for line in (out / "round_2" / "labels" / "best_of_n.jsonl").read_text().splitlines()]
    assert labels and all(len(r["samples"]) == 4 and 0 <= r["best"] < 4 for r in labels)
    assert all(r["samples"][r["best"]]["text"] for r in labels)
    # online: the second RM starts from the first one's weights, on the new labels only
    rm2 = (out / "configs" / "round_2_rm.yaml").read_text()
    assert f"init_from: {out / 'round_1' / 'rm'}" in rm2
    assert len((out / "round_2" / "comparisons.jsonl").read_text().splitlines()) == len(labels)
    assert json.loads((out / "round_2" / "rm" / "DONE.json").read_text())["loss"] == "best_of_n"
    ppo_cfg = (out / "round_2" / "ppo" / "config.yaml").read_text()
    assert "stop_token: ." in ppo_cfg and "policy_init:" in ppo_cfg
    report = json.loads((out / "eval" / "report.json").read_text())
    assert set(report["arms"]) == {"base", "ppo"} and report["judge"] == "sentiment"
    assert report["arms"]["base"]["kl"] == pytest.approx(0.0, abs=1e-6)  # the base model is the KL reference
    assert report["arms"]["ppo"]["kl"] > 0 and -1 <= report["arms"]["ppo"]["judge_score"] <= 1
    assert set(report["heldout_books"]) <= {"Mansfield Park", "Little Men"} and (out / "eval" / "style.png").exists()
