import math

import pytest

torch = pytest.importorskip("torch")

from rlhflab.train.common import (  # noqa: E402
    OptimConfig,
    batch_sizes,
    check_batch_fields,
    epoch_batches,
    last_logged,
    length_grouped_order,
    lr_at,
    make_optimizer,
    on_period,
    optimizer_step,
)
from rlhflab.train.distributed import Processes  # noqa: E402


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


def test_check_batch_fields_names_the_field():
    check_batch_fields(16, 4)
    with pytest.raises(ValueError, match=r"^mini_batch_size: mini_batch_size=8 is not a multiple of micro_batch"):
        check_batch_fields(8, 3, key="mini_batch_size")
    with pytest.raises(ValueError, match=r"^micro_batch_size: must be positive"):
        check_batch_fields(8, 0)


def test_epoch_batches_are_the_slices_of_each_epochs_order_and_resume_anywhere():
    lengths = [5, 1, 7, 3, 3, 9, 2, 8, 4, 6]
    per_epoch, batch = len(lengths) // 3, 3
    expected = []
    for step in range(7):
        epoch, position = divmod(step, per_epoch)
        order = length_grouped_order(lengths, batch, 11 + epoch)
        expected.append((epoch, position, order[position * batch : (position + 1) * batch]))
    assert list(epoch_batches(lengths, batch, 11, per_epoch, 0, 7)) == expected
    assert list(epoch_batches(lengths, batch, 11, per_epoch, 4, 7)) == expected[4:]


def test_on_period_and_last_logged():
    assert [s for s in range(1, 8) if on_period(s, 3, s == 7)] == [3, 6, 7]
    assert [s for s in range(1, 8) if on_period(s, 0, s == 7)] == [7]
    rows = [{"step": 1, "train/loss": 2.0}, {"step": 2, "train/loss": 1.0}, {"step": 2, "eval/loss": 3.0}]
    assert last_logged(rows, "train/loss") == 1.0 and last_logged(rows, "x") is None


def test_optimizer_step_is_clip_step_schedule_zero_grad():
    """The same parameters, schedule and norm as the five calls it replaces, on one process."""
    def model_and_grads():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
        model[0].bias.requires_grad_(False)
        (model(torch.randn(5, 3)).pow(2).sum() * 10).backward()
        return model

    procs = Processes(0, 1, torch.device("cpu"))
    a, b = model_and_grads(), model_and_grads()
    opt_a, sched_a = make_optimizer(a, OptimConfig(lr=0.1), 10)
    opt_b, sched_b = make_optimizer(b, OptimConfig(lr=0.1), 10)
    norm_a = optimizer_step(a, opt_a, sched_a, 0.5, procs)
    norm_b = torch.nn.utils.clip_grad_norm_([p for p in b.parameters() if p.requires_grad], 0.5)
    opt_b.step()
    sched_b.step()
    assert float(norm_a) == float(norm_b) > 0.5  # the norm before clipping
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert sched_a.get_last_lr() == sched_b.get_last_lr()
    assert all(p.grad is None for p in a.parameters())


def test_adamw_runs_fused_on_the_cpu_with_the_for_loop_steps_numbers():
    """make_optimizer's AdamW is the fused one where torch has it, and its steps are torch's default AdamW's."""
    torch.manual_seed(0)
    a, b = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    cfg = OptimConfig(lr=1e-2, warmup_ratio=0.0, min_lr_ratio=1.0)
    start = a.weight.detach().clone()
    fused, _ = make_optimizer(a, cfg, total_steps=3)
    plain = torch.optim.AdamW(b.parameters(), lr=1e-2, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                              foreach=False)
    assert fused.param_groups[0]["fused"] is True
    x = torch.randn(4, 5)
    for _ in range(3):
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
    assert (a.weight - start).abs().min() > 1e-3  # three steps of lr 1e-2 moved every weight
