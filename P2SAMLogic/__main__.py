"""``python -m P2SAMLogic`` runs the ``p2sam`` command line."""
import sys

from .cli import main

sys.exit(main())
