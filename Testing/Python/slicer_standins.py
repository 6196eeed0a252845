"""Stand-ins for the parts of Slicer that need Qt, so that the module files can be loaded in pytest.

slicer-core (PyPI) provides Slicer's real MRML classes but no Qt, no PythonQt and no
``slicer.app``. To exercise the Qt-side code paths of ``P2SAMSlicer.py`` and the effect
(which handler calls what, in which order, with which MRML events), this module provides:

* minimal ``qt``/``ctk``/``slicer.ScriptedLoadableModule``/``slicer.parameterNodeWrapper``
  /``slicer.i18n``/``SegmentEditorEffects`` modules (only what the files touch);
* :class:`ListWidget` and :class:`ListItem`: a checklist that emits ``itemChanged`` like
  ``QListWidget`` (the segment checklist is where the selection bug lived);
* :class:`ParameterNode`: the settings object the widget gets from Slicer's
  ``parameterNodeWrapper``, on a REAL ``vtkMRMLScriptedModuleNode``: every assignment is a
  ``SetParameter`` / node-reference call, so the node fires its ModifiedEvent synchronously,
  as in Slicer;
* :class:`Anything`: an object that accepts any attribute and any call (labels, buttons,
  progress bars whose state the tests do not inspect).

Everything MRML stays real: scenes, volume, segmentation, slice and editor nodes.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import types
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "P2SAMSlicer"


class Anything:
    """Accepts every attribute and call; attributes set on it are kept (for inspection)."""

    def __init__(self, *args, **kwargs):
        self.__dict__.update(kwargs)

    def __getattr__(self, name):
        value = Anything()
        self.__dict__[name] = value
        return value

    def __call__(self, *args, **kwargs):
        return Anything()

    def __bool__(self):
        return True

    def __iter__(self):
        return iter(())


class _Qt:
    Unchecked, PartiallyChecked, Checked = 0, 1, 2
    UserRole, DecorationRole = 256, 1
    ItemIsUserCheckable = 16
    WaitCursor = 3


class ListItem:
    """``QListWidgetItem`` with check state and data roles; tells its list when its check state changes."""

    def __init__(self, text=""):
        self.text = text
        self._flags = 0
        self._check = _Qt.Unchecked
        self._data = {}
        self.list = None

    def flags(self):
        return self._flags

    def setFlags(self, flags):
        self._flags = flags

    def setData(self, role, value):
        self._data[role] = value

    def data(self, role):
        return self._data.get(role)

    def checkState(self):
        return self._check

    def setCheckState(self, state):
        if state == self._check:
            return
        self._check = state
        if self.list is not None:
            self.list.emit("itemChanged(QListWidgetItem*)", self)


class ListWidget:
    """``QListWidget``: items, ``clear``, ``count``, ``connect("itemChanged(QListWidgetItem*)", f)``."""

    def __init__(self):
        self.items = []
        self.handlers = {}

    @property
    def count(self):
        return len(self.items)

    def item(self, row):
        return self.items[row]

    def addItem(self, item):
        item.list = self
        self.items.append(item)

    def clear(self):
        for item in self.items:
            item.list = None
        self.items = []

    def connect(self, signal, handler):
        self.handlers.setdefault(signal, []).append(handler)

    def emit(self, signal, *args):
        for handler in list(self.handlers.get(signal, [])):
            handler(*args)

    def checked_ids(self):
        return [i.data(_Qt.UserRole) for i in self.items if i.checkState() == _Qt.Checked]

    def click(self, segment_id, checked):
        """What a user's click on a checkbox does: the item's state changes, Qt emits itemChanged."""
        item = next(i for i in self.items if i.data(_Qt.UserRole) == segment_id)
        item.setCheckState(_Qt.Checked if checked else _Qt.Unchecked)


class ComboBox:
    """``QComboBox``: items, ``clear``, ``addItem``, ``currentIndex`` (-1 when empty), ``setCurrentIndex``."""

    def __init__(self):
        self.items = []
        self.currentIndex = -1

    @property
    def count(self):
        return len(self.items)

    def clear(self):
        self.items, self.currentIndex = [], -1

    def addItem(self, text):
        self.items.append(text)
        if self.currentIndex < 0:
            self.currentIndex = 0

    def setCurrentIndex(self, index):
        self.currentIndex = int(index) if 0 <= int(index) < len(self.items) else -1


class ParameterNode:
    """The ``parameterNodeWrapper`` object of the module, on a real ``vtkMRMLScriptedModuleNode``.

    Node-typed fields are node references, the others parameters (JSON); each assignment
    writes the node at once, so observers of its ModifiedEvent run inside the assignment.
    """

    NODE_FIELDS = ("priorVolume", "priorSegmentation", "followupVolume", "outputSegmentation", "followupSequence")
    DEFAULTS = {"selectedSegmentIds": [], "model": "LiteMedSAM (embedded)", "samCheckpoint": ".",
                "samModelType": "auto", "maxParts": 5, "negativeParts": 1, "roiMarginMm": 15.0,
                "sliceMarginMm": 5.0, "device": "auto", "runInBackground": True, "chainFollowups": False,
                "runOnServer": False, "serverUrl": "http://127.0.0.1:8000"}

    def __init__(self, scene, node=None):
        object.__setattr__(self, "scene", scene)
        if node is None:
            import slicer

            node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "P2SAMSlicer")
        object.__setattr__(self, "parameterNode", node)

    def __getattr__(self, name):
        if name in self.NODE_FIELDS:
            return self.parameterNode.GetNodeReference(name)
        if name in self.DEFAULTS:
            text = self.parameterNode.GetParameter(name)
            return json.loads(text) if text else self.DEFAULTS[name]
        raise AttributeError(name)

    def __setattr__(self, name, value):
        if name in self.NODE_FIELDS:
            self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
        elif name in self.DEFAULTS:
            self.parameterNode.SetParameter(name, json.dumps(list(value) if isinstance(value, (list, tuple)) else value))
        else:
            raise AttributeError(name)

    # the wrapper forwards observers to its node (parameterNodeWrapper/wrapper.py, Slicer 5.8)
    def AddObserver(self, event, callback, priority=0.0):
        return self.parameterNode.AddObserver(event, callback, priority)

    def RemoveObserver(self, tag):
        self.parameterNode.RemoveObserver(tag)

    def connectGui(self, gui):
        return "gui-tag"

    def disconnectGui(self, tag):
        pass


def make_qt_module():
    qt = types.ModuleType("qt")
    qt.Qt = _Qt
    qt.QListWidgetItem = ListItem
    qt.QColor = Anything(fromRgbF=lambda *a: ("colour", a))
    for name in ("QTimer", "QHeaderView", "QTableWidgetItem", "QPushButton", "QLabel", "QHBoxLayout", "QSpinBox", "QCheckBox",
                 "QIcon", "QMessageBox", "QCursor", "QApplication"):
        setattr(qt, name, Anything)
    return qt


class App:
    """``slicer.app``: ``processEvents`` runs the hooks a test installs (user events during a blocking run)."""

    def __init__(self):
        self.hooks = []
        self.calls = 0

    def processEvents(self):
        self.calls += 1
        hooks, self.hooks = self.hooks, []
        for hook in hooks:
            hook()

    def connect(self, *args):
        pass


def install(monkeypatch, scene):
    """Install the stand-ins in ``sys.modules`` and on the ``slicer`` package; returns ``slicer``."""
    import slicer

    monkeypatch.setitem(sys.modules, "qt", make_qt_module())
    monkeypatch.setitem(sys.modules, "ctk", types.ModuleType("ctk"))
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class Base:
        def __init__(self, *args, **kwargs):
            pass

    class Logic(Base):
        def getParameterNode(self):
            raise NotImplementedError

    class Test(unittest.TestCase):
        """``ScriptedLoadableModuleTest``: a TestCase whose delayDisplay only records the messages."""

        messages: list = []

        def delayDisplay(self, message, *args, **kwargs):
            type(self).messages.append(str(message))

    for cls_name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget"):
        setattr(slm, cls_name, type(cls_name, (Base,), {}))
    slm.ScriptedLoadableModuleLogic = Logic
    slm.ScriptedLoadableModuleTest = Test
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    pnw.Choice = lambda values: ("Choice", tuple(values))
    pnw.WithinRange = lambda lo, hi: ("WithinRange", lo, hi)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    effects = types.ModuleType("SegmentEditorEffects")

    class AbstractScriptedSegmentEditorEffect:
        def __init__(self, scriptedEffect):
            self.scriptedEffect = scriptedEffect

    effects.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
    for name, module in (("slicer.ScriptedLoadableModule", slm), ("slicer.parameterNodeWrapper", pnw),
                         ("slicer.i18n", i18n), ("SegmentEditorEffects", effects)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", App(), raising=False)
    errors = []

    class _ErrorDisplay:
        """``slicer.util.tryWithErrorDisplay``: records the error instead of a modal dialog, re-raises nothing."""

        def __init__(self, message=None, show=True, waitCursor=False):
            self.message = message

        def __enter__(self):
            return self

        def __exit__(self, kind, value, tb):
            if value is not None:
                errors.append(f"{self.message} {value}")
            return True

    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", _ErrorDisplay)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, *a, **k: errors.append(str(text)))
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda *a, **k: None)
    slicer.errors_shown = errors
    return slicer


def load(path: Path, name: str):
    """Execute a module file under ``name`` (stand-ins must be installed first)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def widget_ui():
    """The widget's ``self.ui``: a real-behaving checklist, everything else :class:`Anything`."""
    ui = Anything()
    ui.segmentsListWidget = ListWidget()
    ui.reviewResultComboBox = ComboBox()
    return ui
