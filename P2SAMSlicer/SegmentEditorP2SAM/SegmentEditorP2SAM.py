"""Hidden module that registers the Segment Editor effect "P²SAM" (click correction of proposals).

Layout of Slicer's ScriptedSegmentEditorEffect template: this module only registers
``SegmentEditorP2SAMLib/SegmentEditorEffect.py`` once Slicer has started.
"""
import os
from typing import TYPE_CHECKING

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

if TYPE_CHECKING:  # annotations only
    import numpy as np

    from SegmentEditorP2SAMLib.SegmentEditorEffect import SegmentEditorEffect


class SegmentEditorP2SAM(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Segment Editor P²SAM")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["P2SAM for 3D Slicer developers (independent open-source project)"]
        self.parent.hidden = True
        self.parent.helpText = _("This hidden module registers the P²SAM Segment Editor effect (click correction "
                                 "of propagated segments).")
        self.parent.acknowledgementText = _("Part of the P2SAM extension (Apache License 2.0).")
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as qSlicerSegmentationsEditorEffects

        instance = qSlicerSegmentationsEditorEffects.qSlicerSegmentEditorScriptedEffect(None)
        effectFilename = os.path.join(os.path.dirname(__file__), self.__class__.__name__ + "Lib/SegmentEditorEffect.py")
        instance.setPythonSource(effectFilename.replace("\\", "/"))
        instance.self().register()


def _addLibPaths() -> str:
    """Put ``P2SAMSlicerLib`` and the engine on ``sys.path``; returns the folder holding the Lib.

    Installed: everything is in qt-scripted-modules (this file's folder). Source checkout:
    this file is ``<repo>/P2SAMSlicer/SegmentEditorP2SAM/``, the Lib is in ``<repo>/P2SAMSlicer``
    and the engine in ``<repo>``.
    """
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    libParent = here if os.path.isdir(os.path.join(here, "P2SAMSlicerLib")) else os.path.dirname(here)
    for path in (libParent, os.path.dirname(libParent)):
        if path not in sys.path:
            sys.path.append(path)
    return libParent


class SegmentEditorP2SAMTest(ScriptedLoadableModuleTest):
    """Self-test: the effect is registered, and clicks on a slice of the bundled lung CT change the
    selected segment there through the Segment Editor (undo restores it)."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        """Both tests, each after setUp(); a skipped test is reported as skipped, not failed
        ("Reload and Test" calls this method directly, outside unittest's runner)."""
        _addLibPaths()
        from P2SAMSlicerLib.selftest import run_test_methods

        run_test_methods(self, ["test_EffectIsRegistered", "test_ClickCorrectsASlice"], report=self.delayDisplay)

    def _editor(self) -> "slicer.qMRMLSegmentEditorWidget":
        editor = slicer.qMRMLSegmentEditorWidget()
        editor.setMRMLScene(slicer.mrmlScene)
        editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        editor.setMRMLSegmentEditorNode(editorNode)
        return editor

    def test_EffectIsRegistered(self):
        self.delayDisplay("P²SAM effect registration")
        editor = self._editor()
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation.GetSegmentation().AddEmptySegment("s")
        editor.setSegmentationNode(segmentation)
        editor.setActiveEffectByName("P2SAM")
        effect = editor.activeEffect()
        self.assertIsNotNone(effect, "the P2SAM effect is not registered")
        self.assertEqual(effect.name, "P2SAM")

    def test_ClickCorrectsASlice(self):
        """A GTV on slices 11-13 whose slice 12 is shifted off the tumour; a click on the tumour re-computes
        slice 12 and nothing else; one undo restores it."""
        import numpy as np
        import SimpleITK as sitk

        libParent = _addLibPaths()
        from P2SAMSlicerLib import dependencies, mrml_bridge

        if not dependencies.everything_installed():
            self.skipTest("P²SAM's Python packages are not installed (P²SAM module > Python packages)")
        dataDir = None
        for candidate in (os.path.join(libParent, "Resources", "P2SAMSlicerTestData"),
                          os.path.join(os.path.dirname(libParent), "Testing", "Data", "lung1_crop")):
            if os.path.isfile(os.path.join(candidate, "prior_ct.nrrd")):
                dataDir = candidate
        self.assertIsNotNone(dataDir, "P2SAMSlicer test data not found")
        self.delayDisplay("Click correction on slice 12 of the bundled CT")

        from P2SAMLogic.io.volume import Segment

        ct = sitk.ReadImage(os.path.join(dataDir, "prior_ct.nrrd"), sitk.sitkFloat32)
        truth = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(dataDir, "prior_labels.nrrd"))) == 1
        wrong = truth.copy()
        wrong[12] = np.roll(truth[12], 12, axis=1)  # the contour 12 pixels off on slice 12; 11 and 13 are right
        image = sitk.GetImageFromArray(wrong.astype(np.uint8))
        image.CopyInformation(ct)
        volume = mrml_bridge.image_to_volume_node(ct, slicer.mrmlScene, "CT")
        segmentation = mrml_bridge.segments_to_segmentation_node(
            slicer.mrmlScene, [Segment("GTV", (0.9, 0.2, 0.2), image, "GTV")], ct, "GTV to correct",
            reference_volume_node=volume)

        editor = self._editor()
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(volume)
        editor.setCurrentSegmentID("GTV")
        editor.setActiveEffectByName("P2SAM")
        effect: "SegmentEditorEffect" = editor.activeEffect().self()  # the effect's Python object

        def dice(a: "np.ndarray", b: "np.ndarray") -> float:
            return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))

        before = mrml_bridge.masks_from_segmentation_node(segmentation, ct)["GTV"]
        jj, ii = np.nonzero(truth[12] & ~wrong[12])
        effect.clickAt(12, int(jj[len(jj) // 2]), int(ii[len(ii) // 2]), positive=True)
        after = mrml_bridge.masks_from_segmentation_node(segmentation, ct)["GTV"]
        self.assertGreater(dice(after[12], truth[12]), dice(before[12], truth[12]) + 0.1)
        others = np.arange(after.shape[0]) != 12
        self.assertTrue(np.array_equal(after[others], before[others]), "only the clicked slice may change")
        self.assertTrue(after[11].any() and after[13].any())
        editor.undo()
        restored = mrml_bridge.masks_from_segmentation_node(segmentation, ct)["GTV"]
        self.assertTrue(np.array_equal(restored, before), "one undo must restore the segment")
        self.delayDisplay("Test passed")
