"""benchmarks/profile_step.py on the tiny model: the real PPO training phase and SFT step profiled, every op's
self time in exactly one bucket, AdamW's ops in the optimizer bucket, and the matmuls' FLOPs counted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))


def test_op_names_fall_in_the_buckets_the_docstring_names():
    from profile_step import bucket

    assert bucket("aten::mm", False) == "matmul"
    assert bucket("aten::addmm", False) == "matmul"
    assert bucket("aten::_scaled_dot_product_flash_attention_for_cpu", False) == "attention"
    assert bucket("aten::_to_copy", False) == "casts"
    assert bucket("aten::mul", False) == "norm_elementwise"
    assert bucket("aten::_log_softmax", False) == "norm_elementwise"
    assert bucket("aten::mm", True) == "optimizer"  # under AdamW's step, whatever it is
    assert bucket("aten::view", False) == "other"


def test_the_tiny_profile_splits_both_steps(tmp_path, shared_data):
    out = tmp_path / "profile.json"
    subprocess.run([sys.executable, "benchmarks/profile_step.py", "--model", "tiny", "--rollout", "4", "--mini", "4",
                    "--micro", "2", "--ppo-epochs", "2", "--response-length", "8", "--max-query-tokens", "96",
                    "--out", str(out)], cwd=REPO, check=True, capture_output=True)
    doc = json.loads(out.read_text())
    for step in ("ppo_training_phase", "sft_step"):
        s = doc[step]
        assert sum(s["seconds"].values()) == pytest.approx(s["total_s"])
        assert sum(s["fraction"].values()) == pytest.approx(1.0)
        assert s["seconds"]["matmul"] > 0 and s["seconds"]["optimizer"] > 0, step
        assert s["matmul_gflop"] > 0 and 0 < s["matmul_fraction_of_peak"]
        assert s["total_s"] <= s["wall_s"] * 1.5 * doc["machine"]["cores"]  # self times of one window, not the run
    assert doc["ppo_training_phase"]["micro_batches"] == 2 * 4 // 2  # epochs × rollout // micro
    # --bf16 auto: the peak is measured in the precision the steps ran in on this CPU
    assert doc["matmul_peak_dtype"] == ("bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32")
