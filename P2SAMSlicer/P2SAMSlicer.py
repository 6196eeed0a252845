"""P²SAM module for 3D Slicer.

This is the Slicer-facing part of the extension. All computation lives in the
pure-Python engine package ``P2SAMLogic`` (shipped next to this file in the
extension's qt-scripted-modules directory), which never imports Slicer, Qt or
VTK. This module only provides the GUI and the glue to Slicer's scene.

The engine is imported lazily (inside methods, never at module import time) so
that Slicer can always load and list this module, even when the engine or its
dependencies (e.g. PyTorch) are missing or broken; the problem is then
reported in the module panel instead of as a module-loading error.
"""

import logging
import os
import sys

import ctk
import qt

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)


#
# P2SAMSlicer
#


class P2SAMSlicer(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("P²SAM")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["P2SAM for 3D Slicer developers"]
        self.parent.helpText = _("""
Carries a patient's prior-visit tumour and organ segmentations onto a follow-up CT with P²SAM:
one-shot, part-aware prompting of frozen Segment-Anything models, using the prior scan and its
segmentation as the single reference example.
This version contains the computation engine only; the interactive propagation interface is under development.
See the <a href="https://github.com/p2sam-slicer/SlicerP2SAM">project page</a> for documentation.
""")
        self.parent.acknowledgementText = _("""
This extension is developed by the P2SAM for 3D Slicer developers and is distributed under the
Apache License 2.0. It implements the P²SAM method (part-aware personalised prompting of
Segment-Anything models); see the project page for the publication to cite.
""")


#
# P2SAMSlicerWidget
#


class P2SAMSlicerWidget(ScriptedLoadableModuleWidget):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        self.logic = P2SAMSlicerLogic()

        statusCollapsibleButton = ctk.ctkCollapsibleButton()
        statusCollapsibleButton.text = _("Status")
        self.layout.addWidget(statusCollapsibleButton)
        statusLayout = qt.QVBoxLayout(statusCollapsibleButton)

        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        self.statusLabel.textInteractionFlags = qt.Qt.TextSelectableByMouse
        statusLayout.addWidget(self.statusLabel)

        self.updateStatus()

        # Add vertical spacer
        self.layout.addStretch(1)

    def updateStatus(self) -> None:
        """Show whether the engine can be imported. No other feature is offered yet."""
        try:
            version = self.logic.engineVersion()
        except Exception as e:
            logging.exception("P2SAM engine could not be imported")
            self.statusLabel.text = _(
                "The P²SAM engine (Python package P2SAMLogic) could not be imported:\n{error}\n\n"
                "Check that the extension is installed completely; see the Python console for details."
            ).format(error=str(e))
            return
        self.statusLabel.text = _(
            "The P²SAM engine (P2SAMLogic {version}) is installed.\n\n"
            "The interface for propagating prior-visit segmentations to a follow-up scan is being built "
            "and is not available in this version yet."
        ).format(version=version)


#
# P2SAMSlicerLogic
#


class P2SAMSlicerLogic(ScriptedLoadableModuleLogic):
    """Glue between Slicer and the pure-Python engine package P2SAMLogic.

    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        """Called when the logic class is instantiated. Can be used for initializing member variables."""
        ScriptedLoadableModuleLogic.__init__(self)

    @staticmethod
    def _ensureEngineImportable() -> None:
        """Make P2SAMLogic importable when the module is run from a source checkout.

        In a built or installed extension the engine package is copied next to this
        file, and that directory is already on sys.path. When a developer instead adds
        the source folder ``<repository>/P2SAMSlicer`` to Slicer's additional module
        paths, the engine sits one level up, at ``<repository>/P2SAMLogic``; only in
        that case is the repository root appended to sys.path.
        """
        moduleDir = os.path.dirname(os.path.abspath(__file__))
        if os.path.isfile(os.path.join(moduleDir, "P2SAMLogic", "__init__.py")):
            return  # built/installed layout
        repositoryRoot = os.path.dirname(moduleDir)
        if os.path.isfile(os.path.join(repositoryRoot, "P2SAMLogic", "__init__.py")) and repositoryRoot not in sys.path:
            sys.path.append(repositoryRoot)

    def engineVersion(self) -> str:
        """Return the version string of the P2SAMLogic engine package.

        The engine is imported here, not at the top of this file, so that loading the
        Slicer module never depends on the engine being importable.
        """
        self._ensureEngineImportable()
        import P2SAMLogic

        return P2SAMLogic.__version__


#
# P2SAMSlicerTest
#


class P2SAMSlicerTest(ScriptedLoadableModuleTest):
    """
    This is the test case for your scripted module.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here."""
        self.setUp()
        self.test_EngineImports()

    def test_EngineImports(self):
        """The engine package bundled with the extension can be imported from Slicer's Python."""
        self.delayDisplay("Starting the test")

        version = P2SAMSlicerLogic().engineVersion()
        self.assertIsInstance(version, str)
        self.assertTrue(version.strip(), "P2SAMLogic.__version__ is empty")

        self.delayDisplay(f"Test passed (P2SAMLogic {version})")
