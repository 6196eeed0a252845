"""P2SAMLogic: part-aware personalised prompting of Segment-Anything models (P²SAM).

Pure Python; never imports Slicer, Qt or VTK. The package is layered, each layer importing only
the ones below it (docs/architecture.md):

* :mod:`.cli` -- the ``p2sam`` command line (front-end);
* :mod:`.propagation` -- the 3D pipeline: :func:`propagate` and its stages;
* :mod:`.method` -- the 2D method: :class:`P2SAMSegmenter` and its steps;
* :mod:`.models` -- promptable segmentation models behind one interface;
* :mod:`.io` -- volumes, segmentations, images, outputs (beside the others);
* :mod:`.errors`, :mod:`.runtime` -- what every layer shares.

The most used names are importable from here (``from P2SAMLogic import propagate,
PropagationConfig``); they are loaded on first use, so ``import P2SAMLogic`` stays light.

``__version__`` is the release number plus a digest of this package's code (see
:mod:`P2SAMLogic._version`): any change to the engine changes it, and every output records it.
"""
import importlib
from typing import List

from ._version import source_digest as _source_digest, version_for as _version_for

__version__ = _version_for(_source_digest())

#: public name -> the module that defines it (imported on first access)
_EXPORTS = {
    "propagate": "propagation.pipeline", "PropagationConfig": "propagation.config",
    "PropagationResult": "propagation.results", "needs_model": "propagation.config",
    "propagate_series": "propagation.series", "SeriesResult": "propagation.series",
    "P2SAMSegmenter": "method.segmenter", "P2SAMConfig": "method.segmenter",
    "SliceCorrector": "method.interactive",
    "load_model": "models", "PromptableModel": "models",
    "read_volume": "io", "read_segmentation": "io", "write_segmentation": "io",
    "Segment": "io.volume", "VolumeSource": "io.volume",
    "P2SAMError": "errors", "InputError": "errors", "OutputError": "errors", "CancelledError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    """The object ``name`` of :data:`_EXPORTS`, imported from its module on first access."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'P2SAMLogic' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS))
