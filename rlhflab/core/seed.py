"""Seeding and RNG state capture. torch is imported lazily so that `core` stays usable without it."""

from __future__ import annotations

import random
from typing import Any


def seed_everything(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


def rng_state() -> dict[str, Any]:
    """Everything needed to continue the same random stream after a resume."""
    import numpy as np
    import torch

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    # Plain lists and tensors only, so the state loads with torch.load(weights_only=True).
    numpy_state = [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
