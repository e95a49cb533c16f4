"""Global RNG states (python, numpy legacy, torch CPU/CUDA) as plain JSON, for exact resume."""

from __future__ import annotations

import base64
import logging
from typing import Any

log = logging.getLogger(__name__)


def _bytes_tensor_to_b64(tensor: Any) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _b64_to_bytes_tensor(text: str) -> Any:
    import torch

    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states of python `random`, numpy, torch CPU and (if available) torch CUDA, as
    a JSON-serialisable dict (about 20 kB) for `trainer_state.json`.

    Generators the caller owns (np.random.Generator, torch.Generator, a sampler's own RNG) are not
    global state: checkpoint those with their owner.
    """
    import random

    import numpy as np
    import torch

    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind,
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch_cpu": _bytes_tensor_to_b64(torch.get_rng_state()),
        "torch_cuda": None,
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = [_bytes_tensor_to_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`. CUDA states are restored only when CUDA is available (with a
    warning otherwise, e.g. a GPU checkpoint resumed on CPU)."""
    import random

    import numpy as np
    import torch

    expected = {"python", "numpy", "torch_cpu", "torch_cuda"}
    if not isinstance(state, dict) or not expected <= state.keys():
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"rng state must be a dict with keys {sorted(expected)}, got {got}")
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            np.asarray(npy["keys"], dtype=np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(_b64_to_bytes_tensor(state["torch_cpu"]))
    cuda = state["torch_cuda"]
    if cuda is not None:
        if torch.cuda.is_available():
            if len(cuda) != torch.cuda.device_count():
                log.warning(
                    "checkpoint holds %d CUDA RNG states but %d devices are visible; restoring the "
                    "first %d",
                    len(cuda),
                    torch.cuda.device_count(),
                    min(len(cuda), torch.cuda.device_count()),
                )
            for index, text in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(_b64_to_bytes_tensor(text), device=index)
        else:
            log.warning("checkpoint holds CUDA RNG states but CUDA is not available; not restored")
