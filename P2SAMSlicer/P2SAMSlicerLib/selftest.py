"""Run a module self-test's methods the way Slicer's "Reload and Test" needs it (no Qt).

"Reload and Test" calls ``runTest()`` of the module's ``ScriptedLoadableModuleTest``
directly, outside unittest's runner: a ``self.skipTest(...)`` inside it would propagate as
an exception and be shown as a failed test. :func:`run_test_methods` runs each method after
``setUp()``, reports a skip as a skip, and lets failures and errors propagate as before.
(When the tests run under unittest -- ctest's ``slicer_add_python_unittest``, or
``Testing/Slicer/smoke.sh`` -- each ``test_*`` method is run by unittest itself.)
"""
from __future__ import annotations

import logging
import unittest
from typing import Callable, Dict, Optional, Sequence


def run_test_methods(case: unittest.TestCase, names: Sequence[str],
                     report: Optional[Callable[[str], None]] = None) -> Dict[str, str]:
    """Run ``case.<name>()`` for each name, each after ``case.setUp()``.

    Args:
        case: the test case instance (``self`` in ``runTest``).
        names: its test methods, in order.
        report: shows a line to the tester (``case.delayDisplay``); also logged.
    Returns:
        ``{name: "passed" | "skipped: <reason>"}``.
    Raises:
        whatever a test raises other than ``unittest.SkipTest`` (the first failure stops the run).
    """
    outcome: Dict[str, str] = {}
    for name in names:
        case.setUp()
        try:
            getattr(case, name)()
        except unittest.SkipTest as skip:
            outcome[name] = f"skipped: {skip}"
        else:
            outcome[name] = "passed"
        finally:
            case.tearDown()
        if outcome[name] != "passed":
            logging.warning(f"{type(case).__name__}.{name} {outcome[name]}")
            if report is not None:
                report(f"{name} {outcome[name]}")
    skipped = sum(1 for v in outcome.values() if v != "passed")
    summary = f"{len(outcome) - skipped} test(s) passed, {skipped} skipped"
    logging.info(f"{type(case).__name__}: {summary}")
    if report is not None:
        report(summary)
    return outcome
