#!/usr/bin/env python
"""Start the P2SAM MONAI Label server: ``monailabel start_server --app <this folder>`` plus one import fix.

Usage::

    python apps/p2sam/serve.py --studies DATASTORE_FOLDER [--host 127.0.0.1] [--port 8000]
                               [--conf model litemedsam] [--conf device cuda] [other start_server options]

Why not plain ``monailabel start_server``: MONAI Label 0.8.5 imports ``pydicom_seg`` (0.4.1, the
newest) when it loads its infer endpoint, and pydicom_seg imports ``SegmentationStorage`` from
``pydicom._storage_sopclass_uids``, a private module that pydicom 3 removed (the UID is
``pydicom.uid.SegmentationStorage`` there). This repository needs pydicom 3 (highdicom >= 0.23 for
DICOM SEG output; dicomweb-client 0.61, which MONAI Label imports, requires it too), so before
MONAI Label loads, this launcher registers that one private module name with the UID pydicom 3
provides. Nothing else is changed: the server is MONAI Label's own FastAPI app, run by uvicorn.
The app never calls pydicom_seg (it converts DICOM SEG only for DICOMweb datastores).
"""
import os
import sys
import types

APP_DIR = os.path.dirname(os.path.abspath(__file__))


def install_pydicom3_alias() -> None:
    """Make ``pydicom._storage_sopclass_uids`` importable under pydicom 3 (see the module docstring)."""
    try:
        import pydicom._storage_sopclass_uids  # noqa: F401  (pydicom 2: nothing to do)
        return
    except ImportError:
        pass
    import pydicom.uid

    alias = types.ModuleType("pydicom._storage_sopclass_uids")
    alias.__doc__ = "pydicom 2's private SOP class UID module, aliased to pydicom.uid by apps/p2sam/serve.py"
    alias.SegmentationStorage = pydicom.uid.SegmentationStorage
    sys.modules["pydicom._storage_sopclass_uids"] = alias


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    install_pydicom3_alias()
    from monailabel.main import Main

    if "--app" not in argv and "-a" not in argv:
        argv = ["--app", APP_DIR] + argv
    sys.argv = ["monailabel", "start_server"] + argv
    Main().run()


if __name__ == "__main__":
    main()
