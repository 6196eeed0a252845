"""Helpers of the P2SAMSlicer module that run without Slicer's GUI.

* :mod:`.mrml_bridge` -- MRML volume and segmentation nodes <-> SimpleITK images and
  :class:`P2SAMLogic.io.volume.Segment` (imports ``slicer`` and ``vtk``, never ``qt``).
* :mod:`.logic` -- :class:`~.logic.PropagationLogic`, the module's blocking ``process()`` and
  ``processSeries()`` (several follow-ups), and the rows of the panel's tables.
* :mod:`.followups` -- which follow-ups a run propagates onto (volumes, a Sequence node).
* :mod:`.editing` -- a proposal written into the user's segmentation as a Segment Editor edit, and
  its undo step (:class:`~.editing.ProposalUndo`, which never switches the Segment Editor).
* :mod:`.panel_state` -- the panel's segment ticks and busy state; :mod:`.selftest` -- runs a
  self-test's methods reporting skips.
* :mod:`.background` -- runs a propagation in a separate Python process (progress, cancel).
* :mod:`.runner` -- the program that process runs (pure Python: SimpleITK + P2SAMLogic).
* :mod:`.dependencies` -- which Python packages the engine needs and how to install them.
* :mod:`.correction` -- the click-correction session (follows the segment and Slicer's undo),
  re-propagation, where a click lands.
* :mod:`.effect_actions` -- the Segment Editor effect's actions (click, undo last click,
  re-propagate, flagged slices) on the editor's effect object; :mod:`.slice_edit` -- reads and
  rewrites slices of one segment through the Segment Editor (only those slices change).
* :mod:`.review` -- click markers, flagged-slice navigation and "reviewed" marks, the registered
  prior shown for comparison, which clicks are negative.
* :mod:`.server_client` -- "Run on server": the same job on a P2SAM MONAI Label server (apps/p2sam),
  with a version/checksum handshake; :class:`~.server_client.ServerPropagation` has the interface of
  :class:`~.background.BackgroundPropagation`.

This ``__init__`` imports nothing, so the background process can import
``P2SAMSlicerLib.runner`` without loading Slicer's libraries.
"""
