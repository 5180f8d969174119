"""bf16 = true | false | auto: "auto" takes bf16 only where the device computes it natively (models/device.py)."""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")

from rlhflab.core.config import ConfigError, load_config  # noqa: E402
from rlhflab.models import device as dev  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) native bf16; the once-per-process log is reset."""
    def set_native(native: bool) -> None:
        monkeypatch.setattr(dev, "_cpu_has_bf16", lambda: native)
        dev._report.cache_clear()
    yield set_native
    dev._report.cache_clear()


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_hardware_and_explicit_settings_are_kept(cpu_bf16, native):
    cpu_bf16(native)
    assert dev.use_bf16("auto", CPU) is native
    assert dev.use_bf16(True, CPU) is True and dev.use_bf16(False, CPU) is False
    assert dev.bf16_dtype("auto", CPU) == ("bfloat16" if native else "float32")
    assert dev.bf16_dtype(False, CPU) == "float32"


@pytest.mark.parametrize("native", [True, False])
def test_autocast_is_on_under_auto_only_where_bf16_is_native(cpu_bf16, native):
    cpu_bf16(native)
    with dev.autocast(CPU, "auto"):
        assert torch.is_autocast_enabled("cpu") is native
        y = torch.ones(2, 3) @ torch.ones(3, 2)
    assert y.dtype == (torch.bfloat16 if native else torch.float32)
    with dev.autocast(CPU, True):
        assert torch.is_autocast_enabled("cpu")
    with dev.autocast(CPU, False):
        assert not torch.is_autocast_enabled("cpu")


def test_emulated_bf16_is_warned_about_once_and_auto_says_what_it_chose(cpu_bf16, caplog):
    cpu_bf16(False)
    with caplog.at_level(logging.INFO, logger="rlhflab.models.device"):
        for _ in range(3):
            dev.use_bf16(True, CPU)
        dev.use_bf16("auto", CPU)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "emulates it" in warnings[0].getMessage()
    assert any("bf16=auto: fp32 on this cpu" in r.getMessage() for r in caplog.records)
    cpu_bf16(True)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rlhflab.models.device"):
        dev.use_bf16(True, CPU)
        dev.use_bf16("auto", CPU)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("bf16=auto: bf16 on this cpu (native bf16)" in r.getMessage() for r in caplog.records)


def test_a_bad_setting_is_refused():
    with pytest.raises(ValueError, match="'yes'"):
        dev.use_bf16("yes", CPU)


def test_stage_configs_take_true_false_or_auto_and_name_the_key_otherwise():
    from rlhflab.train.ppo import PPOConfig
    from rlhflab.train.sft import SFTConfig

    assert load_config(SFTConfig, None, ["bf16=auto"]).bf16 == "auto"
    assert load_config(SFTConfig, None, ["bf16=true"]).bf16 is True
    cfg = load_config(PPOConfig, None, ["bf16=auto", "frozen_bf16=auto"])
    assert cfg.bf16 == cfg.frozen_bf16 == "auto"
    with pytest.raises(ConfigError, match="bf16"):
        load_config(SFTConfig, None, ["bf16=maybe"])


def test_the_real_detection_is_torchs_own_onednn_check():
    assert dev.native_bf16(CPU) is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
