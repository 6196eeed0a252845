"""Segment Editor effect "P²SAM": correct a propagated segment slice by slice with clicks.

On a slice view showing slices of the source volume (the follow-up), a click adds a
positive point and Ctrl+click (Cmd+click on macOS, or any click after N) a negative one;
the model re-decodes that slice from P²SAM's own prompts (the ROI window and box it used,
kept with the propagation report on the segmentation node) plus the user's clicks, and that
slice of the selected segment is rewritten: only the voxels that change, with
``modifySelectedSegmentByLabelmap`` Add/Remove in that slice's extent (so the editable area,
intensity masking and overlap settings apply) after one ``saveStateForUndo()`` (one Ctrl+Z).

"Use this slice as reference and re-propagate" re-segments the neighbouring slices with
the corrected slice as P²SAM's reference. J / K go to the next / previous flagged slice, M
marks a slice reviewed; markers show the clicks.

The logic (no Qt) is ``P2SAMSlicerLib.effect_actions`` (with ``correction``, ``slice_edit``
and ``review``), tested on slicer-core's Segment Editor logic; this file only turns events
into calls and results into the status line.
"""
import logging
import os
from typing import TYPE_CHECKING, List

import qt
import vtk

import slicer
from slicer.i18n import tr as _

from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

if TYPE_CHECKING:  # annotations only: the Lib is imported when the effect is first used
    import types

    from P2SAMSlicerLib.effect_actions import EffectActions
    from P2SAMSlicerLib.panel_state import BusyState


def _importLib() -> "types.ModuleType":
    """Import ``P2SAMSlicerLib`` (beside the P2SAMSlicer module) only when the effect is used.

    Installed extension: this file is ``<qt-scripted-modules>/SegmentEditorP2SAMLib/``, the Lib and
    the engine are in ``<qt-scripted-modules>``. Source checkout: this file is
    ``<repo>/P2SAMSlicer/SegmentEditorP2SAM/SegmentEditorP2SAMLib/``, the Lib is in
    ``<repo>/P2SAMSlicer`` and the engine in ``<repo>``.
    """
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (os.path.dirname(here), os.path.dirname(os.path.dirname(here))):
        if not os.path.isdir(os.path.join(folder, "P2SAMSlicerLib")):
            continue
        for path in (folder, os.path.dirname(folder)):
            if os.path.isfile(os.path.join(path, "P2SAMSlicerLib", "__init__.py")) or \
                    os.path.isfile(os.path.join(path, "P2SAMLogic", "__init__.py")):
                if path not in sys.path:
                    sys.path.append(path)
        break
    from P2SAMSlicerLib import correction

    return correction


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Click correction of one slice of the selected segment with the P²SAM model."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "P2SAM"  # no tr: modules find effects by name
        scriptedEffect.title = _("P²SAM")
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self._actions = None  # P2SAMSlicerLib.effect_actions.EffectActions, created on first use
        self._busy = None  # P2SAMSlicerLib.panel_state.BusyState, created on first use

    def busyState(self) -> "BusyState":
        """The effect's :class:`BusyState`: a model call in progress (re-propagation processes GUI events)."""
        if self._busy is None:
            _importLib()
            from P2SAMSlicerLib.panel_state import BusyState

            self._busy = BusyState()
        return self._busy

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        if os.path.exists(iconPath):
            return qt.QIcon(iconPath)
        return qt.QIcon()

    def helpText(self):
        _importLib()
        from P2SAMSlicerLib.review import negative_modifier_label

        return _("""<html>Correct a P²SAM proposal slice by slice.<p>
<b>Click</b> on a slice view: this belongs to the structure (positive, green marker). <b>{key}+click</b>, or
<b>N</b> to switch to negative clicks: this does not (negative, red marker). The selected segment is
re-computed on that slice only, from P²SAM's own prompts plus your clicks; the slice view must show the
source volume's own slices (e.g. axial for an axial CT).<p>
<b>J</b> / <b>K</b>: next / previous flagged slice not yet reviewed; <b>M</b>: mark the slice reviewed.<p>
<b>Re-propagate</b> uses the slice you corrected last as the reference for its neighbours.<p>
Edits respect the editable area and overlap settings; each click is one undo step (Ctrl+Z); edits made with
other effects are kept.</html>""").format(key=negative_modifier_label())

    # -- options --------------------------------------------------------------------------------
    def setupOptionsFrame(self):
        self.statusLabel = qt.QLabel(_("Click on a slice of the source volume."))
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

        self.negativeButton = qt.QPushButton(_("Negative clicks (N)"))
        self.negativeButton.objectName = self.__class__.__name__ + "Negative"
        self.negativeButton.checkable = True
        self.negativeButton.toolTip = _("Checked: a click marks what does NOT belong to the structure. The modifier "
                                        "key (Ctrl, Cmd on macOS) flips one click.")
        self.negativeButton.connect("toggled(bool)", self.onNegativeToggled)
        self.scriptedEffect.addOptionsWidget(self.negativeButton)

        self.previousFlaggedButton = qt.QPushButton(_("Previous flagged (K)"))
        self.previousFlaggedButton.toolTip = _("Show the previous flagged slice not yet marked reviewed.")
        self.previousFlaggedButton.connect("clicked()", lambda: self.onFlagged(-1))
        self.nextFlaggedButton = qt.QPushButton(_("Next flagged (J)"))
        self.nextFlaggedButton.toolTip = _("Show the next flagged slice not yet marked reviewed.")
        self.nextFlaggedButton.connect("clicked()", lambda: self.onFlagged(1))
        self.reviewedButton = qt.QPushButton(_("Mark reviewed (M)"))
        self.reviewedButton.toolTip = _("Mark the slice shown as reviewed (again: not reviewed); kept with the scene.")
        self.reviewedButton.connect("clicked()", self.onMarkReviewed)
        review = qt.QHBoxLayout()
        review.addWidget(self.previousFlaggedButton)
        review.addWidget(self.nextFlaggedButton)
        review.addWidget(self.reviewedButton)
        self.scriptedEffect.addOptionsWidget(review)

        self.priorCheckBox = qt.QCheckBox(_("Show the registered prior (outline)"))
        self.priorCheckBox.toolTip = _("The prior contour carried by registration alone, to compare with the proposal.")
        self.priorCheckBox.connect("toggled(bool)", self.onShowPrior)
        self.scriptedEffect.addOptionsWidget(self.priorCheckBox)

        self.undoClickButton = qt.QPushButton(_("Undo last click"))
        self.undoClickButton.objectName = self.__class__.__name__ + "UndoClick"
        self.undoClickButton.toolTip = _("Remove the last click on the last corrected slice and re-compute it.")
        self.undoClickButton.connect("clicked()", self.onUndoClick)

        self.resetButton = qt.QPushButton(_("Forget clicks"))
        self.resetButton.objectName = self.__class__.__name__ + "Reset"
        self.resetButton.toolTip = _("Forget every click (the segment itself is not changed).")
        self.resetButton.connect("clicked()", self.onReset)
        buttons = qt.QHBoxLayout()
        buttons.addWidget(self.undoClickButton)
        buttons.addWidget(self.resetButton)
        self.scriptedEffect.addOptionsWidget(buttons)

        self.neighboursSpinBox = qt.QSpinBox()
        self.neighboursSpinBox.minimum = 1
        self.neighboursSpinBox.maximum = 20
        self.neighboursSpinBox.toolTip = _("How many slices on each side are re-computed.")
        self.scriptedEffect.addLabeledOptionsWidget(_("Neighbours:"), self.neighboursSpinBox)
        self.neighboursSpinBox.connect("valueChanged(int)", self.updateMRMLFromGUI)

        self.repropagateButton = qt.QPushButton(_("Use this slice as reference and re-propagate"))
        self.repropagateButton.objectName = self.__class__.__name__ + "Repropagate"
        self.repropagateButton.toolTip = _("Re-compute the neighbouring slices of the selected segment with the "
                                           "last corrected slice as P²SAM's reference.")
        self.repropagateButton.connect("clicked()", self.onRepropagate)
        self.scriptedEffect.addOptionsWidget(self.repropagateButton)

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("Neighbours", 2)
        self.scriptedEffect.setParameterDefault("NegativeClicks", 0)

    def updateGUIFromMRML(self):
        wasBlocked = self.neighboursSpinBox.blockSignals(True)
        self.neighboursSpinBox.value = self.scriptedEffect.integerParameter("Neighbours")
        self.neighboursSpinBox.blockSignals(wasBlocked)
        wasBlocked = self.negativeButton.blockSignals(True)
        self.negativeButton.checked = bool(self.scriptedEffect.integerParameter("NegativeClicks"))
        self.negativeButton.blockSignals(wasBlocked)

    def updateMRMLFromGUI(self):
        self.scriptedEffect.setParameter("Neighbours", self.neighboursSpinBox.value)

    def createCursor(self, widget):
        return slicer.util.mainWindow().cursor

    # -- session --------------------------------------------------------------------------------
    def actions(self) -> "EffectActions":
        """The effect's actions without Qt (:class:`P2SAMSlicerLib.effect_actions.EffectActions`)."""
        if self._actions is None:
            _importLib()
            from P2SAMSlicerLib.effect_actions import EffectActions

            self._actions = EffectActions(self.scriptedEffect)
        return self._actions

    def _forgetSession(self):
        """The segmentation, source volume or geometry changed (or the effect was left): a running
        re-propagation stops at its next step, and the next click starts a new session."""
        if self._busy is not None:
            self._busy.request_cancel()
        if self._actions is not None:
            self._actions.forget()

    def deactivate(self):
        self._forgetSession()

    def sourceVolumeNodeChanged(self):
        self._forgetSession()

    def referenceGeometryChanged(self):
        self._forgetSession()

    # -- interaction ----------------------------------------------------------------------------
    def processInteractionEvents(self, callerInteractor: "vtk.vtkRenderWindowInteractor", eventId: int,
                                 viewWidget: "slicer.qMRMLSliceWidget") -> bool:
        """A left click on a slice view showing the source volume's slices corrects that slice.

        Other clicks (another view orientation, outside the volume, Shift/Alt held, other
        buttons, 3D views) are left to Slicer: not consumed, no dialog; the status line says why.
        """
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        self._sliceNode = viewWidget.sliceLogic().GetSliceNode()
        if eventId == vtk.vtkCommand.KeyPressEvent and not callerInteractor.GetControlKey():
            return self.onKey(callerInteractor.GetKeySym())
        if eventId != vtk.vtkCommand.LeftButtonPressEvent or callerInteractor.GetShiftKey() or callerInteractor.GetAltKey():
            return False
        if self.busyState().busy:
            self.statusLabel.text = _("Still working; the click was ignored.")
            return True
        correction = _importLib()
        try:
            session = self.actions().current_session()
            segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
        except ValueError as exc:
            self.statusLabel.text = str(exc)
            return False
        click = correction.click_target(viewWidget.sliceLogic().GetSliceNode(), session.ijk_to_ras,
                                        session.volume.shape, callerInteractor.GetEventPosition(),
                                        segmentationNode.GetParentTransformNode())
        if not click.ok:
            self.statusLabel.text = click.problem
            return False
        confirmed = self.scriptedEffect.confirmCurrentSegmentVisible()
        if confirmed == self.scriptedEffect.NotConfirmed or confirmed == self.scriptedEffect.ConfirmedWithDialog:
            return True
        from P2SAMSlicerLib.review import click_is_positive

        positive = click_is_positive(bool(self.scriptedEffect.integerParameter("NegativeClicks")),
                                     bool(callerInteractor.GetControlKey()))
        with slicer.util.tryWithErrorDisplay(_("P²SAM could not update the slice."), waitCursor=True):
            self.clickAt(click.k, click.j, click.i, positive)
        return True

    def clickAt(self, k, j, i, positive=True):
        """A click on voxel ``(i, j)`` of slice ``k`` (array indices of the source volume); updates the
        selected segment's slice (that slice only, one undo step). Also the entry point of the self-test."""
        with self.busyState().running(_("a click correction")):
            result = self.actions().click(k, j, i, positive)
        self.statusLabel.text = result.message
        return result

    # -- buttons --------------------------------------------------------------------------------
    def _segmentEditorUndo(self):
        """One step of the Segment Editor's undo (Ctrl+Z) in the editor this effect is active in, or None."""
        widgets: "List[qt.QWidget]" = qt.QApplication.allWidgets()
        for widget in widgets:
            if widget.className() != "qMRMLSegmentEditorWidget":
                continue
            active = widget.activeEffect()
            if active is not None and active.name == self.scriptedEffect.name and active.self() is self:
                return widget.undo
        return None

    def onUndoClick(self):
        if self.busyState().busy:
            return
        with slicer.util.tryWithErrorDisplay(_("P²SAM could not undo the click."), waitCursor=True):
            self.statusLabel.text = self.actions().undo_last_click(self._segmentEditorUndo())

    def onReset(self):
        if self.busyState().busy:
            return
        if self._actions is not None:
            self._actions.forget()
        self.statusLabel.text = _("Clicks forgotten. Click on a slice of the source volume.")

    def onRepropagate(self):
        if self.busyState().busy:
            return
        from P2SAMLogic.errors import CancelledError

        with slicer.util.tryWithErrorDisplay(_("P²SAM could not re-propagate."), waitCursor=True), \
                self.busyState().running(_("a re-propagation")):

            def status(fraction, message):
                self.statusLabel.text = _("Re-propagating: {message}").format(message=message)

            # clicks and buttons delivered by processEvents are refused while busy (processInteractionEvents)
            try:
                written = self.actions().repropagate(
                    self.scriptedEffect.integerParameter("Neighbours"),
                    progress=self.busyState().progress_callback(status, slicer.app.processEvents),
                    cancel=self.busyState().should_cancel)
            except CancelledError:
                self.statusLabel.text = _("Re-propagation stopped; the segment was not changed.")
                return
            self.statusLabel.text = _("Re-computed slices {slices}.").format(
                slices=", ".join(str(s) for s in sorted(written)) or _("none"))
            logging.info(f"P2SAM: re-propagated slices {sorted(written)}")

    # -- review ---------------------------------------------------------------------------------
    def onKey(self, key):
        """N: positive/negative clicks; J / K: next / previous flagged slice; M: mark the slice reviewed."""
        if key == "n":
            self.negativeButton.checked = not self.negativeButton.checked  # onNegativeToggled follows
        elif key in ("j", "k"):
            self.onFlagged(1 if key == "j" else -1)
        elif key == "m":
            self.onMarkReviewed()
        else:
            return False
        return True

    def onNegativeToggled(self, checked):
        self.scriptedEffect.setParameter("NegativeClicks", 1 if checked else 0)
        self.statusLabel.text = _("Clicks are negative (this does not belong).") if checked else \
            _("Clicks are positive (this belongs).")

    def _viewSliceIndex(self):
        """The slice of the source volume shown in the last view used (else the Red view), or None."""
        correction = _importLib()
        sliceNode = getattr(self, "_sliceNode", None)
        if sliceNode is None:
            sliceWidget = slicer.app.layoutManager().sliceWidget("Red")
            sliceNode = sliceWidget.mrmlSliceNode() if sliceWidget is not None else None
        session = self.actions().current_session()
        if sliceNode is None:
            return None
        return correction.view_slice_index(sliceNode, session.ijk_to_ras, session.volume.shape[0])

    def onFlagged(self, step):
        with slicer.util.tryWithErrorDisplay(_("P²SAM could not go to a flagged slice."), waitCursor=False):
            try:
                k, ras, message = self.actions().next_flagged(self._viewSliceIndex(), step)
            except ValueError as exc:
                self.statusLabel.text = str(exc)
                return
            slicer.modules.markups.logic().JumpSlicesToLocation(ras[0], ras[1], ras[2], True)
            self.statusLabel.text = message

    def onMarkReviewed(self):
        with slicer.util.tryWithErrorDisplay(_("P²SAM could not mark the slice."), waitCursor=False):
            k = self._viewSliceIndex()
            if k is None:
                self.statusLabel.text = _("Show a slice of the source volume first.")
                return
            try:
                self.statusLabel.text = self.actions().toggle_reviewed(k)
            except ValueError as exc:
                self.statusLabel.text = str(exc)

    def onShowPrior(self, checked):
        _importLib()
        from P2SAMSlicerLib.review import show_registered_prior

        segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
        if not show_registered_prior(segmentationNode, checked) and checked:
            self.statusLabel.text = _("This segmentation has no registered prior to compare with (P²SAM adds one "
                                      "to the segmentations it creates).")

