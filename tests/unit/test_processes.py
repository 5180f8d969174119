"""What a launch asks for that rlhflab does not do is refused at start-up, with the way out named."""

from pathlib import Path

import pytest
import torch

from rlhflab.core.config import load_config
from rlhflab.train import ppo
from rlhflab.train.distributed import Processes, processes

REPO = Path(__file__).resolve().parents[2]


def test_deepspeed_launch_is_refused_and_points_to_fsdp(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(RuntimeError, match="DeepSpeed.*configs/accelerate/fsdp.yaml"):
        processes("cpu")


def test_one_process_is_never_sharded(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # e.g. left over in a shell: without a launcher, no group
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    procs = processes("cpu")
    assert (procs.world_size, procs.shard) == (1, False)


def test_lora_ppo_is_refused_under_fsdp():
    cfg = load_config(ppo.PPOConfig, REPO / "configs/ppo/tiny.yaml", ["lora.r=8"])
    ppo.check_launch(cfg, Processes(0, 2, torch.device("cpu")))  # whole: fine
    with pytest.raises(ValueError, match="FSDP with lora.r > 0"):
        ppo.check_launch(cfg, Processes(0, 2, torch.device("cpu"), shard=True))
