"""benchmarks/gpu_check.py's plumbing on a CPU (tiny profile): the three stages run and every field the GPU run
fills is written — throughput, MFU against the measured peak, PPO's phases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]


def test_the_tiny_gpu_check_writes_every_field(tmp_path, shared_data):
    result = tmp_path / "gpu_check.json"
    subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--profile", "tiny", "--device", "cpu", "--out",
                    str(tmp_path / "runs"), "--result", str(result)], cwd=REPO, check=True, capture_output=True)
    doc = json.loads(result.read_text())
    assert doc["device"] == "cpu" and doc["matmul_peak_tflops_measured"] > 0
    assert doc["matmul_peak_dtype"] == "float32"  # the tiny profiles run fp32: the peak is measured in their dtype
    for stage in ("sft", "rm"):
        assert doc[stage]["tokens_per_s"] > 0 and 0 < doc[stage]["mfu_measured_peak"] < 1
    phases = doc["ppo"]["phases"]
    assert set(phases) == {"generation", "scoring", "training"}
    assert all(p["seconds"] > 0 and 0 < p["mfu_measured_peak"] < 1 for p in phases.values())
    assert doc["ppo"]["episodes_per_s"] > 0 and doc["fsdp"] is None


def test_without_a_gpu_it_says_so(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path / "r")], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "no CUDA device here" in done.stderr
