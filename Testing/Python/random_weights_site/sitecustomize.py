"""Test-only: in a subprocess started by the tests with P2SAM_TEST_RANDOM_WEIGHTS set, load
LiteMedSAM with random weights (see Testing/Python/random_weights.py)."""
import os
import sys

if os.environ.get("P2SAM_TEST_RANDOM_WEIGHTS", "") not in ("", "0"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import random_weights

    random_weights.install()
