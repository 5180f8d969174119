"""A launched stage leaves its process group before the interpreter exits (gloo aborted at shutdown otherwise)."""

from pathlib import Path

import pytest
import torch.distributed as dist

from rlhflab import cli
from rlhflab.data.jsonl import DataError
from rlhflab.train.distributed import leave_process_group

REPO = Path(__file__).resolve().parents[2]


def join_group_of_one(tmp_path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)


def test_leave_destroys_the_group_and_is_a_no_op_without_one(tmp_path):
    leave_process_group()  # no group: nothing to do, no error
    join_group_of_one(tmp_path)
    assert dist.is_initialized()
    leave_process_group()
    assert not dist.is_initialized()


@pytest.mark.parametrize("error", [None, DataError("bad.jsonl line 3: field 'post' is missing")])
def test_cli_leaves_the_group_after_a_stage_whether_it_succeeds_or_fails(tmp_path, monkeypatch, error):
    import rlhflab.train.sft as sft

    def fake_train(cfg, out):  # a stage that ran under a launcher: it joined a group
        join_group_of_one(tmp_path)
        if error:
            raise error

    monkeypatch.setattr(sft, "train", fake_train)
    code = cli.main(["sft", "--config", str(REPO / "configs/sft/tiny.yaml"), "--out", str(tmp_path / "run")])
    assert code == (2 if error else 0)
    assert not dist.is_initialized()
