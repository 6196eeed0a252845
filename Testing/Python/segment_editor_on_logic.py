"""The Segment Editor's effect API on slicer-core's real ``vtkSlicerSegmentEditorLogic``.

In Slicer 5.8 a scripted effect writes through ``self.scriptedEffect`` (a C++
``qSlicerSegmentEditorScriptedEffect``): ``defaultModifierLabelmap()``, ``saveStateForUndo()``
and ``modifySelectedSegmentByLabelmap(modifier, mode, extent)``, whose code
(``qSlicerSegmentEditorAbstractEffect::modifySegmentByLabelmap``: masking, Set / Add / Remove,
overwriting other segments) Slicer later moved, unchanged in what it does, into
``vtkSlicerSegmentEditorLogic`` (``ModifySegmentByLabelmap``, ``ResetModifierLabelmapToDefault``,
``SaveStateForUndo``, ``Undo``). slicer-core (PyPI, no Qt) ships that logic class.

:class:`ScriptedEffectOnLogic` gives the P²SAM effect the ``scriptedEffect`` calls it makes,
each forwarded to one call of the real logic: the effect's own Python code and Slicer's own
write, masking and undo code run; nothing of the write path is re-implemented here.
:class:`EditorWidgetOnLogic` is the ``qMRMLSegmentEditorWidget`` the effect looks up for its
"Undo last click" button (``undo()`` = the logic's ``Undo()``, what the widget's undo calls).
"""
from __future__ import annotations

import slicer


class AbstractEffectEnums:
    """``slicer.qSlicerSegmentEditorAbstractEffect``'s modification modes (a Qt class, absent from slicer-core):
    Slicer 5.8.1 declares Set, Add, Remove, RemoveAll in this order, as the logic class does."""

    ModificationModeSet = slicer.vtkSlicerSegmentEditorLogic.ModificationModeSet
    ModificationModeAdd = slicer.vtkSlicerSegmentEditorLogic.ModificationModeAdd
    ModificationModeRemove = slicer.vtkSlicerSegmentEditorLogic.ModificationModeRemove
    ModificationModeRemoveAll = slicer.vtkSlicerSegmentEditorLogic.ModificationModeRemoveAll


class ScriptedEffectOnLogic:
    """``self.scriptedEffect`` of a Segment Editor effect, on a ``vtkSlicerSegmentEditorLogic``.

    Args:
        scene: the MRML scene.
        editor_node: the Segment Editor's ``vtkMRMLSegmentEditorNode`` (segmentation, source volume,
            selected segment, masking settings).
    """

    NotConfirmed, ConfirmedWithoutDialog, ConfirmedWithDialog = 0, 1, 2
    name = "P2SAM"

    def __init__(self, scene, editor_node, max_undo_states: int = 10) -> None:
        self.logic = slicer.vtkSlicerSegmentEditorLogic()
        self.logic.SetMRMLScene(scene)
        self.logic.SetSegmentEditorNode(editor_node)
        self.logic.SetMaximumNumberOfUndoStates(max_undo_states)
        self.parameters = {}
        self.writes = []  # (mode, extent) of every modifySelectedSegmentByLabelmap call

    # what the effect reads
    def parameterSetNode(self):
        return self.logic.GetSegmentEditorNode()

    def sourceVolumeImageData(self):
        self.logic.UpdateAlignedSourceVolume()
        return self.logic.GetAlignedSourceVolume()

    def confirmCurrentSegmentVisible(self):
        return self.ConfirmedWithoutDialog

    # what the effect writes (each one call of the logic)
    def defaultModifierLabelmap(self):
        assert self.logic.ResetModifierLabelmapToDefault()
        return self.logic.GetModifierLabelmap()

    def saveStateForUndo(self):
        self.logic.SaveStateForUndo()

    def modifySelectedSegmentByLabelmap(self, modifier, mode, extent=None, bypassMasking=False):
        node = self.parameterSetNode()
        extent = list(extent) if extent is not None else [0, -1, 0, -1, 0, -1]
        self.writes.append((int(mode), tuple(extent)))
        self.logic.ModifySegmentByLabelmap(node.GetSegmentationNode(), node.GetSelectedSegmentID(), modifier,
                                           mode, extent, True, bypassMasking)

    # effect parameters (kept on the editor node in Slicer; a dict is enough here)
    def setParameterDefault(self, name, value):
        self.parameters.setdefault(name, value)

    def setParameter(self, name, value):
        self.parameters[name] = value

    def integerParameter(self, name):
        return int(self.parameters.get(name, 0))

    def addOptionsWidget(self, *args):
        pass

    def addLabeledOptionsWidget(self, *args):
        pass


class EditorWidgetOnLogic:
    """The ``qMRMLSegmentEditorWidget`` holding the active effect: ``undo()`` is the logic's ``Undo()``."""

    def __init__(self, scripted: ScriptedEffectOnLogic, effect) -> None:
        self.scripted = scripted
        self.effect = effect

    def className(self):
        return "qMRMLSegmentEditorWidget"

    def activeEffect(self):
        effect = self.effect
        scripted = self.scripted

        class Active:
            name = scripted.name

            def self(self_inner):
                return effect

        return Active()

    def undo(self):
        self.scripted.logic.Undo()


class SegmentEditorWidgetOnLogic:
    """The Segment Editor module's ``qMRMLSegmentEditorWidget`` as the P²SAM panel uses it, on the real logic.

    ``setSegmentationNode`` points the editor node at another segmentation, as the widget does;
    the logic then gives its ``vtkSegmentationHistory`` the new segmentation, which (as in
    Slicer) erases the undo states of the previous one.
    """

    def __init__(self, scene, max_undo_states: int = 10) -> None:
        self.editor_node = scene.AddNode(slicer.vtkMRMLSegmentEditorNode())
        self.logic = slicer.vtkSlicerSegmentEditorLogic()
        self.logic.SetMRMLScene(scene)
        self.logic.SetSegmentEditorNode(self.editor_node)
        self.logic.SetMaximumNumberOfUndoStates(max_undo_states)

    def segmentationNode(self):
        return self.editor_node.GetSegmentationNode()

    def setSegmentationNode(self, node):
        self.editor_node.SetAndObserveSegmentationNode(node)

    def saveStateForUndo(self):
        self.logic.SaveStateForUndo()

    def undo(self):
        self.logic.Undo()
