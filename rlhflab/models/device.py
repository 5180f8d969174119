"""Which device a stage runs on, and the matching bf16 autocast context."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> the first CUDA GPU when there is one, else the CPU; otherwise any torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but torch sees no CUDA GPU (torch {torch.__version__})")
    return device


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on `device` (weights and optimiser state stay fp32), or nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
