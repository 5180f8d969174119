"""Two processes (accelerate launch, CPU, gloo) make the same run as one process with the same global batch,
whole (plain data parallel) or with the decoder layers sharded (FSDP2, `--use_fsdp`).

Each test runs a stage twice on a tiny model — once in this process, once as `accelerate launch --num_processes 2
-m rlhflab ...` in a subprocess — and compares the saved weights with a tight tolerance. The batches are sized so
that every process runs whole micro batches of the single-process run, so the two runs do the same arithmetic
up to the order of one gradient sum; in practice they agree to float32 rounding (see ATOL).
A run with a different global batch must NOT match (the comparison can fail), and the weights must have moved.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from rlhflab.core.config import load_config  # noqa: E402
from rlhflab.models.loading import load_model  # noqa: E402
from rlhflab.models.reward import load_reward_model  # noqa: E402
from rlhflab.train import ppo, reward, sft  # noqa: E402
from rlhflab.train.distributed import Processes  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ATOL = 1e-5  # float32 rounding: the two runs sum the same micro-batch gradients in a different order at most


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(stage: str, config: str, out: Path, overrides: list[str], fsdp: bool = False) -> str:
    """`accelerate launch` 2 CPU processes (torchrun underneath; --multi_gpu is accelerate's name for that
    launcher, `device=cpu` makes rlhflab join them with gloo); `fsdp`: --use_fsdp instead."""
    port = free_port()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp" if fsdp else "--multi_gpu",
           "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), "-m", "rlhflab", stage, "--config", config, "--out", str(out),
           "device=cpu", *overrides]
    env = {**os.environ, "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert (out / "DONE.json").exists()
    assert ("FSDP:" in done.stderr) == fsdp, done.stderr[-3000:]  # the layers really were sharded (or not)
    return done.stderr


def one_process(train, cfg_cls, config: str, out: Path, overrides: list[str], **kw) -> None:
    train(load_config(cfg_cls, REPO / config, ["device=cpu", *overrides]), str(out), **kw)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["whole", "fsdp"])
def test_sft_two_processes_match_one(tmp_path, shared_data, fsdp):
    # 12 eval examples = 3 micro batches: split 2 / 1, which a sharded model must still run in lockstep
    args = ["max_steps=3", "eval_every=2", "save_every=2", "n_samples=1", "data.limit_eval=12"]
    launch_two("sft", "configs/sft/tiny.yaml", tmp_path / "two", args, fsdp)  # 2 × one micro batch of 4
    one_process(sft.train, sft.SFTConfig, "configs/sft/tiny.yaml", tmp_path / "one", args)
    one_process(sft.train, sft.SFTConfig, "configs/sft/tiny.yaml", tmp_path / "half", [*args, "batch_size=4"])
    two, one = load_model(str(tmp_path / "two"))[0].state_dict(), load_model(str(tmp_path / "one"))[0].state_dict()
    half, init = load_model(str(tmp_path / "half"))[0].state_dict(), load_model("tiny")[0].state_dict()
    assert max_diff(two, one) < ATOL
    assert max_diff(half, one) > 100 * ATOL and max_diff(init, one) > 100 * ATOL  # the comparison can fail
    m2, m1 = metrics(tmp_path / "two"), metrics(tmp_path / "one")
    assert [r["step"] for r in m2] == [r["step"] for r in m1]
    # weights + gradients + Adam moments held by each process: sharding divides the decoder layers' share
    state2, state1 = (next(r for r in m if r["step"] == 1)["train/state_mib_per_process"] for m in (m2, m1))
    layers = sum(p.numel() for p in load_model("tiny")[0].model.layers.parameters()) * 4 * 4 / 2**20  # fp32 × 4
    assert state2 == pytest.approx(state1 - layers / 2 if fsdp else state1, rel=1e-3)
    for r2, r1 in zip(m2, m1):  # global statistics: the loss over all tokens of the batch, the same eval loss
        for k in ("train/loss", "train/grad_norm", "train/tokens_seen", "eval/loss"):
            assert (k in r2) == (k in r1) and r2.get(k, 0) == pytest.approx(r1.get(k, 0), rel=1e-5), k
    assert sorted(p.name for p in (tmp_path / "two/samples").iterdir()) == ["step_000000.jsonl", "step_000002.jsonl",
                                                                           "step_000003.jsonl"]


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["whole", "fsdp"])
def test_rm_two_processes_match_one(tmp_path, shared_data, fsdp):
    args = ["max_steps=3", "eval_every=2", "save_every=2", "eval_batch_size=6"]  # 3 dev pairs per forward
    log = launch_two("rm", "configs/rm/tiny.yaml", tmp_path / "two", args, fsdp)
    if fsdp:  # sharded, the RM says it runs share_query=false (the shared-query forward does not work with FSDP)
        assert log.count("FSDP: share_query=false") == 1  # said once, by the main process
        assert "share_query: false" in (tmp_path / "two" / "config.yaml").read_text()  # and recorded as run
        args.append("share_query=false")  # the one-process runs do the same (the two forwards differ in rounding)
    one_process(reward.train, reward.RewardConfig, "configs/rm/tiny.yaml", tmp_path / "one", args)
    one_process(reward.train, reward.RewardConfig, "configs/rm/tiny.yaml", tmp_path / "half",
                [*args, "batch_size=4"])
    two, one, half = (load_reward_model(str(tmp_path / n)) for n in ("two", "one", "half"))
    sd2, sd1, sdh = (m.state_dict() for m in (two, one, half))
    assert max_diff(sd2, sd1) < ATOL
    assert max_diff(sdh, sd1) > 100 * ATOL
    # the bias normalisation and dev accuracy: the same numbers as one process
    assert float(two.bias) == pytest.approx(float(one.bias), abs=ATOL)
    d2, d1 = (json.loads((tmp_path / n / "DONE.json").read_text()) for n in ("two", "one"))
    assert d2["dev_accuracy"] == d1["dev_accuracy"] and d2["dev_pairs"] == d1["dev_pairs"] > 0
    assert d2["dev_accuracy_before"] == d1["dev_accuracy_before"]
    assert d2["normalisation"]["raw_mean"] == pytest.approx(d1["normalisation"]["raw_mean"], abs=ATOL)
    for r2, r1 in zip(metrics(tmp_path / "two"), metrics(tmp_path / "one"), strict=True):
        for k in ("train/loss", "train/accuracy", "eval/loss"):
            assert r2.get(k, 0) == pytest.approx(r1.get(k, 0), rel=1e-5, abs=1e-6), k


PPO_ARGS = ["reward=python:tests.component.test_ppo:lowercase_fraction", "total_episodes=16", "rollout_batch_size=8",
            "mini_batch_size=4", "micro_batch_size=2", "score_batch_size=4", "freeze_layers=1", "save_every=1"]


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["whole", "fsdp"])
def test_ppo_two_processes_match_one(tmp_path, shared_data, fsdp):
    """Each process samples its half of the queries with per-episode seeds, the rollout (and the frozen-layer
    states of reuse_frozen) is gathered, minibatches are split between the processes; resuming under 2 processes
    from a 1-process checkpoint lands on the same weights (sharded: the full checkpoint is split on loading)."""
    from tests.component.test_ppo import lowercase_fraction

    launch_two("ppo", "configs/ppo/tiny.yaml", tmp_path / "two", PPO_ARGS, fsdp)
    one_process(ppo.train, ppo.PPOConfig, "configs/ppo/tiny.yaml", tmp_path / "one", PPO_ARGS,
                reward_fn=lowercase_fraction)
    one_process(ppo.train, ppo.PPOConfig, "configs/ppo/tiny.yaml", tmp_path / "small", [*PPO_ARGS,
                "mini_batch_size=2", "micro_batch_size=1"], reward_fn=lowercase_fraction)
    two, one = load_model(str(tmp_path / "two"))[0].state_dict(), load_model(str(tmp_path / "one"))[0].state_dict()
    small, init = load_model(str(tmp_path / "small"))[0].state_dict(), load_model("tiny")[0].state_dict()
    assert max_diff(two, one) < ATOL
    assert max_diff(small, one) > 100 * ATOL and max_diff(init, one) > 100 * ATOL
    v2, v1 = (torch.load(tmp_path / n / "state/value_weights.pt", weights_only=True) for n in ("two", "one"))
    assert max_diff(v2, v1) < ATOL
    # the same episodes (responses), global advantage whitening, KL and metrics
    for r2, r1 in zip(metrics(tmp_path / "two"), metrics(tmp_path / "one"), strict=True):
        for k in ("objective/score", "objective/kl", "objective/kl_coef", "response/length", "ppo/policy_loss",
                  "ppo/value_loss", "ppo/approxkl", "objective/entropy"):
            assert r2[k] == pytest.approx(r1[k], rel=1e-4, abs=1e-6), k
    t2, t1 = ([json.loads(x) for x in (tmp_path / n / "samples/update_00002.jsonl").read_text().splitlines()]
              for n in ("two", "one"))
    assert [r["response"] for r in t2] == [r["response"] for r in t1]
    # resume: one process stops after update 1 (state/ written), two processes finish the run — the same weights
    one_process(ppo.train, ppo.PPOConfig, "configs/ppo/tiny.yaml", tmp_path / "resumed", PPO_ARGS,
                reward_fn=lowercase_fraction, stop_after=1)
    launch_two("ppo", "configs/ppo/tiny.yaml", tmp_path / "resumed", PPO_ARGS, fsdp)
    assert max_diff(load_model(str(tmp_path / "resumed"))[0].state_dict(), one) < ATOL
    assert len(metrics(tmp_path / "resumed")) == 2


def test_sizes_that_do_not_divide_between_processes_are_named():
    from rlhflab.train.common import batch_sizes

    with pytest.raises(ValueError, match="rollout_batch_size=6 is not a multiple of the number of processes"):
        ppo.check_launch(load_config(ppo.PPOConfig, REPO / "configs/ppo/tiny.yaml",
                                     ["rollout_batch_size=6", "mini_batch_size=2", "micro_batch_size=1"]),
                         Processes(0, 4, torch.device("cpu")))
    with pytest.raises(ValueError, match="mini_batch_size=4 is not a multiple of micro_batch_size × world_size"):
        ppo.check_launch(load_config(ppo.PPOConfig, REPO / "configs/ppo/tiny.yaml", ["micro_batch_size=4",
                                                                                       "rollout_batch_size=8"]),
                         Processes(0, 2, torch.device("cpu")))
    with pytest.raises(ValueError, match="batch_size=8 is not a multiple"):
        batch_sizes(8, 4, world_size=3)
