"""P2SAMLogic: part-aware personalised prompting of Segment-Anything models (P²SAM).

Pure Python; never imports Slicer, Qt or VTK.

``__version__`` is the release number plus a digest of this package's code (see
:mod:`P2SAMLogic._version`): any change to the engine changes it, and every output records it.
"""
from ._version import source_digest as _source_digest, version_for as _version_for

__version__ = _version_for(_source_digest())
