"""The ``p2sam`` command line (front-end over :mod:`P2SAMLogic.propagation` and :mod:`P2SAMLogic.method`).

* :mod:`.app` -- :func:`main` and :func:`build_parser`: the command, its sub-commands, exit statuses;
* :mod:`.series` -- ``p2sam propagate`` with several follow-ups (``--output-dir``);
* :mod:`.cohort` -- ``p2sam propagate-many``: a manifest of cases run by Dask workers.
"""
from .app import build_parser, main

__all__ = ["build_parser", "main"]
