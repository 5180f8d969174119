"""benchmarks/rouge_vs_rm.py on its tiny profile: both PPO runs (RM and ROUGE rewards) and one eval, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_tiny_rouge_vs_rm_benchmark_writes_every_field(tmp_path, shared_data):
    out = tmp_path / "rvr"
    subprocess.run([sys.executable, "benchmarks/rouge_vs_rm.py", "--profile", "tiny", "--limit", "6", "--out",
                    str(out)], cwd=REPO, check=True, capture_output=True)
    res = json.loads((out / "rouge_vs_rm.json").read_text())
    for arm in ("ppo_rm", "ppo_rouge"):
        assert {"gold_win_rate", "gold_win_rate_ci", "rouge_l", "mean_tokens", "kl"} <= set(res[arm])
        assert res[arm]["n_posts"] == 6 and len(res[arm]["training_kl_curve"]) == 4  # 32 episodes / 8
    assert res["sft"]["kl"] == 0.0 and res["ppo_rm"]["kl"] > 0 and res["ppo_rouge"]["kl"] > 0
    ppo_commands = [c for c in res["commands"] if c.startswith("rlhflab ppo")]
    assert "reward=rouge" in ppo_commands[1] and "reward=rouge" not in ppo_commands[0]
    assert (out / "rouge_vs_rm.png").read_bytes()[:4] == b"\x89PNG"
