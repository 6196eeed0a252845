"""Reading model checkpoints safely, with errors that name the file; building each network once per process."""
from __future__ import annotations

import os
import types
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Tuple

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


# -- building networks once per process -----------------------------------------------------------

_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                   "xavier_uniform_", "xavier_normal_", "constant_", "zeros_", "ones_", "orthogonal_")


@contextmanager
def no_weight_init(*modules: types.ModuleType) -> Iterator[None]:
    """Skip the random initialisation of parameters while building a network.

    For a network whose every parameter and persistent buffer is then overwritten by
    :func:`load_strict` (which fails on any missing key), the random initialisation is wasted
    work: for LiteMedSAM it was about half of building the network (~0.5 s on 2 CPU cores).
    Inside the block ``torch.nn.init``'s initialisers (and the same names in ``modules``, for
    code that imported them directly) return their tensor untouched, so parameters hold
    whatever memory they were allocated with until they are loaded. Not thread-safe: build
    networks from one thread at a time.
    """
    targets = [torch.nn.init, *modules]
    saved = [(m, name, getattr(m, name)) for m in targets for name in _INIT_FUNCTIONS if hasattr(m, name)]

    def keep(tensor, *args, **kwargs):
        return tensor

    for m, name, _ in saved:
        setattr(m, name, keep)
    try:
        yield
    finally:
        for m, name, fn in saved:
            setattr(m, name, fn)


@dataclass
class _CachedNetwork:
    identity: Tuple
    sha256: str
    net: torch.nn.Module
    info: dict


#: Networks kept per process (least recently used dropped first): a second load of the same
#: weights file on the same device reuses the network instead of building and reading it again.
MAX_CACHED_NETWORKS = 2
_NETWORKS: "OrderedDict[Tuple[str, str, str], _CachedNetwork]" = OrderedDict()


def file_identity(path: str) -> Tuple:
    """``(real path, size, mtime ns, ctime ns, inode)``: changes whenever the file is rewritten or replaced."""
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def cached_network(kind: str, path: str, device: torch.device,
                   build: Callable[[], Tuple[torch.nn.Module, dict]]) -> Tuple[torch.nn.Module, str, dict]:
    """A frozen network built from a weights file, once per process, file and device.

    ``build()`` reads ``path`` and returns ``(network, info)``; the network is put in eval mode,
    frozen and moved to ``device``. Later calls return the same network while the file is
    unchanged: its identity (:func:`file_identity`) is checked on every call; when it differs,
    the SHA-256 is computed again and the network rebuilt if the checksum changed (a file
    touched but not changed keeps its network). Errors from ``build`` (a missing, corrupt or
    mismatched file) propagate and nothing is cached.

    Returns:
        ``(network, sha256 of the file, info)``. The network is shared: callers must not
        change its weights.
    """
    from .base import file_sha256

    try:
        identity = file_identity(path)
    except OSError:
        identity = None  # let build() raise its error that names the file
    key = (kind, os.path.realpath(path), str(device))
    hit = _NETWORKS.get(key)
    if identity is not None and hit is not None:
        if hit.identity != identity:
            sha = file_sha256(path)
            if sha != hit.sha256:
                del _NETWORKS[key]
                hit = None
            else:
                hit.identity = identity
        if hit is not None:
            _NETWORKS.move_to_end(key)
            return hit.net, hit.sha256, hit.info
    net, info = build()
    net = net.eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    sha = file_sha256(path)
    if identity is not None:
        _NETWORKS[key] = _CachedNetwork(identity, sha, net, info)
        while len(_NETWORKS) > MAX_CACHED_NETWORKS:
            _NETWORKS.popitem(last=False)
    return net, sha, info


def clear_network_cache() -> None:
    """Forget every cached network (the next load builds and reads again)."""
    _NETWORKS.clear()
