"""The ``p2sam`` command line (front-end over :mod:`P2SAMLogic.propagation` and :mod:`P2SAMLogic.method`).

* :mod:`.app` -- :func:`main` and :func:`build_parser`: the command, its sub-commands, exit statuses;
* :mod:`.propagate_cmd` -- ``p2sam propagate`` (:func:`~.propagate_cmd.run_propagate`);
  :mod:`.series` -- the same with several follow-ups (``--output-dir``);
* :mod:`.segment_image` -- ``p2sam segment-image`` (2D);
* :mod:`.cohort` and :mod:`.manifest` -- ``p2sam propagate-many``: a manifest of cases run by Dask workers;
* :mod:`.options` -- what the sub-commands share.
"""
from .app import build_parser, main

__all__ = ["build_parser", "main"]
