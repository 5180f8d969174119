"""Which device a stage runs on, and the matching bf16 autocast context.

`bf16` settings take true, false or "auto". bf16 is only fast where the hardware computes it: a CUDA GPU that
supports it, or a CPU with AVX512-BF16 or AMX (oneDNN's bf16 kernels). Elsewhere torch emulates it: measured on an
AVX2-only AMD EPYC, a bf16 matmul ran at 1.2 GFLOP/s against 85 in fp32, and a SmolLM2-135M forward under bf16
autocast took 5.7x as long as in fp32 (benchmarks/results/precision_cpu.json). "auto" takes bf16 where it is
native and fp32 elsewhere, so one config is right on both; an explicit true on such a CPU is kept, with a warning.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Literal, Union

import torch

log = logging.getLogger(__name__)

# A config's bf16 setting: True, False or "auto" (bf16 where the device computes it natively, else fp32).
Bf16 = Union[bool, Literal["auto"]]  # noqa: UP007 (typing.get_type_hints of the stage configs resolves this name)


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> the first CUDA GPU when there is one, else the CPU; otherwise any torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but torch sees no CUDA GPU (torch {torch.__version__})")
    return device


def native_bf16(device: torch.device) -> bool:
    """Does `device` compute bf16 natively (rather than emulate it, several times slower than fp32)?"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return _cpu_has_bf16()
    return True  # mps, xpu, ...: their bf16 support is torch's to report; trust the user's setting


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # AVX512-BF16, AVX512 with VNNI/AMX paths


def use_bf16(setting: bool | str, device: torch.device) -> bool:
    """A bf16 setting on `device` -> whether to run in bf16. "auto" is native_bf16(device); True and False are
    kept (True where bf16 is emulated gets a warning, once). The choice is logged once per process and device."""
    if setting not in (True, False, "auto"):
        raise ValueError(f"bf16 must be true, false or 'auto', got {setting!r}")
    native = native_bf16(device)
    use = native if setting == "auto" else bool(setting)
    _report(str(setting), device.type, native, use)
    return use


@functools.lru_cache(maxsize=None)
def _report(setting: str, device_type: str, native: bool, use: bool) -> None:
    if setting == "True" and not native:
        log.warning("bf16=true on a %s without native bf16: torch emulates it, several times slower than fp32 "
                    "(bf16=auto runs fp32 here)", device_type)
    elif setting == "auto":
        log.info("bf16=auto: %s on this %s (%s)", "bf16" if use else "fp32", device_type,
                 "native bf16" if native else "no native bf16: it would be emulated, several times slower")


def autocast(device: torch.device, bf16: bool | str):
    """bf16 autocast on `device` (weights and optimiser state stay fp32) when `use_bf16(bf16, device)`, else
    nothing."""
    if use_bf16(bf16, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bf16_dtype(setting: bool | str, device: torch.device) -> str:
    """The dtype name for weights kept in bf16 when `use_bf16(setting, device)` (frozen models), else float32."""
    return "bfloat16" if use_bf16(setting, device) else "float32"
