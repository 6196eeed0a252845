"""Run by Slicer for smoke.sh (``--python-script``): both P2SAM self-tests with unittest, then exit.

Each ``test_*`` method of ``P2SAMSlicerTest`` and ``SegmentEditorP2SAMTest`` runs as its own
unittest case (setUp before each; a skip is a skip, with its reason). A one-line summary goes to
the file named by the environment variable ``P2SAM_SMOKE_RESULT`` (smoke.sh reads it to know
that the tests ran at all); Slicer exits with status 0 when every test passed or was skipped.
"""
import importlib
import os
import sys
import traceback
import unittest

import slicer

MODULES = ("P2SAMSlicer", "SegmentEditorP2SAM")


def run() -> int:
    suite = unittest.TestSuite()
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            print(f"run_self_tests: module {name} is not loaded in this Slicer ({exc}); check the module paths")
            return 1
        suite.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(getattr(module, name + "Test")))
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    for test, reason in result.skipped:
        print(f"run_self_tests: SKIPPED {test.id()}: {reason}")
    summary = (f"{result.testsRun} self-test(s) run: {len(result.failures)} failed, {len(result.errors)} errors, "
               f"{len(result.skipped)} skipped")
    print("run_self_tests: " + summary)
    path = os.environ.get("P2SAM_SMOKE_RESULT")
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(summary + "\n")
    return 0 if result.wasSuccessful() else 1


try:
    status = run()
except Exception:  # noqa: BLE001 - whatever happened, Slicer must exit with a failure
    traceback.print_exc()
    status = 1
slicer.util.exit(status)
