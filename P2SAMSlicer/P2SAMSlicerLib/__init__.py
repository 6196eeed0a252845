"""Helpers of the P2SAMSlicer module that run without Slicer's GUI.

* :mod:`.mrml_bridge` -- MRML volume and segmentation nodes <-> SimpleITK images and
  :class:`P2SAMLogic.volume.Segment` (imports ``slicer`` and ``vtk``, never ``qt``).
* :mod:`.logic` -- :class:`~.logic.PropagationLogic`, the module's blocking ``process()`` and
  ``processSeries()`` (several follow-ups), and the rows of the panel's tables.
* :mod:`.followups` -- which follow-ups a run propagates onto (volumes, a Sequence node).
* :mod:`.editing` -- a proposal written into the user's segmentation as a Segment Editor edit.
* :mod:`.panel_state` -- the panel's segment ticks and busy state; :mod:`.selftest` -- runs a
  self-test's methods reporting skips.
* :mod:`.background` -- runs a propagation in a separate Python process (progress, cancel).
* :mod:`.runner` -- the program that process runs (pure Python: SimpleITK + P2SAMLogic).
* :mod:`.dependencies` -- which Python packages the engine needs and how to install them.
* :mod:`.correction` -- the Segment Editor effect's logic (click correction, re-propagation).
* :mod:`.server_client` -- "Run on server": the same job on a P2SAM MONAI Label server (apps/p2sam),
  with a version/checksum handshake; :class:`~.server_client.ServerPropagation` has the interface of
  :class:`~.background.BackgroundPropagation`.

This ``__init__`` imports nothing, so the background process can import
``P2SAMSlicerLib.runner`` without loading Slicer's libraries.
"""
