"""Reading model checkpoints safely, with errors that name the file."""
from __future__ import annotations

import os
from typing import Dict

import torch

from ..errors import CheckpointError


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Load a checkpoint's tensors with ``weights_only=True`` (no code runs from the file).

    Accepts a plain state dict, or one wrapped under ``model`` / ``state_dict``,
    and strips a leading ``module.`` (DataParallel) from keys.
    """
    if not os.path.exists(path):
        raise CheckpointError(path, "checkpoint file does not exist")
    if os.path.isdir(path):
        raise CheckpointError(path, "is a folder, not a checkpoint file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(path, "checkpoint file is empty")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise CheckpointError(
            path, f"could not be read as a PyTorch checkpoint (truncated, corrupt or not a .pth file): {exc}"
        ) from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(path, "does not hold a state dict (a mapping of parameter names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_strict(net: torch.nn.Module, state: Dict[str, torch.Tensor], path: str, expected: str) -> None:
    """``load_state_dict(strict=True)`` with a readable account of any mismatch."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} parameters missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(f"{len(wrong_shape)} of the wrong shape (e.g. {k}: file {tuple(state[k].shape)}, "
                         f"model {tuple(own[k].shape)})")
        raise CheckpointError(path, f"does not match {expected}: " + "; ".join(parts))
    net.load_state_dict(state, strict=True)
