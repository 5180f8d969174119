import math

import pytest

torch = pytest.importorskip("torch")

from rlhflab.train.common import OptimConfig, batch_sizes, lr_at  # noqa: E402


def test_batch_sizes_divide_exactly():
    sizes = batch_sizes(16, 4, world_size=2)
    assert sizes.grad_accum_steps == 2
    with pytest.raises(ValueError, match="not a multiple"):
        batch_sizes(16, 3)
    with pytest.raises(ValueError, match="positive"):
        batch_sizes(0, 1)


def test_lr_schedule_by_hand():
    cfg = OptimConfig(warmup_ratio=0.2, min_lr_ratio=0.0)
    # 10 steps: 2 warmup steps (0.5, 1.0), then cosine over the remaining 8
    assert lr_at(0, 10, cfg) == pytest.approx(0.5)
    assert lr_at(1, 10, cfg) == pytest.approx(1.0)
    assert lr_at(2, 10, cfg) == pytest.approx(1.0)
    assert lr_at(6, 10, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lr_at(10, 10, cfg) == pytest.approx(0.0)
    assert lr_at(10, 10, OptimConfig(warmup_ratio=0.2, min_lr_ratio=0.1)) == pytest.approx(0.1)
