"""What machine a benchmark ran on (imported by the benchmark scripts, which run as `python benchmarks/X.py`)."""

import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_bf16(choice: str) -> bool:
    """A benchmark's `--bf16 auto|true|false` -> whether this CPU's run uses bf16 autocast: `auto` takes it only where
    the CPU computes bf16 natively (rlhflab.models.device.use_bf16, the rule every stage follows)."""
    import torch

    from rlhflab.models.device import use_bf16

    return use_bf16({"auto": "auto", "true": True, "false": False}[choice], torch.device("cpu"))
