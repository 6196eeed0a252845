"""Click correction of propagated segments: the Segment Editor effect's logic, without Qt.

:class:`CorrectionSession` holds one source volume (the follow-up, in the segmentation's
geometry) and, per ``(segment, slice)``, one :class:`P2SAMLogic.method.interactive.SliceCorrector`
seeded with P²SAM's ROI window and box for that slice from the propagation report that
:mod:`.mrml_bridge` keeps on the output node. The effect converts a click to ``(k, x, y)``,
calls :meth:`CorrectionSession.click`, and writes the returned slice mask with the Segment
Editor (which applies its masking and overlap settings).

Frames: ``volume`` is ``[k, j, i]``; a click is ``(x, y)`` = ``(i, j)`` on slice ``k``;
masks returned are bool ``[j, i]`` slices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

import slicer

if TYPE_CHECKING:  # annotations only: the engine is imported on the first click
    from P2SAMLogic.method.interactive import SliceCorrector

from . import mrml_bridge

MODEL_ATTRIBUTE = mrml_bridge.MODEL_ATTRIBUTE


def oriented_image_array(oriented: slicer.vtkOrientedImageData) -> Tuple[np.ndarray, np.ndarray]:
    """``(array [k, j, i], IJKToRAS 4 x 4)`` of a ``vtkOrientedImageData``; the matrix maps array
    index ``(0, 0, 0)`` (the extent's first voxel) to RAS."""
    shape, m = oriented_image_array_geometry(oriented)
    array = numpy_support.vtk_to_numpy(oriented.GetPointData().GetScalars()).reshape(shape)
    return array, m


class SliceSource:
    """Slices of a ``[k, j, i]`` array read on demand, as float32 copies (one slice at a time).

    Wraps a view of a VTK image's voxels without copying the whole volume; ``owner`` keeps
    the VTK object alive as long as the view is used.
    """

    def __init__(self, array: np.ndarray, owner=None) -> None:
        self._array = array
        self._owner = owner
        self.shape = tuple(int(v) for v in array.shape)

    def __getitem__(self, k: int) -> np.ndarray:
        return np.array(self._array[int(k)], dtype=np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def content_key(self) -> str:
        """:func:`.mrml_bridge.content_key` of the whole volume."""
        return mrml_bridge.content_key(self._array)


def segment_mask_on(segmentation_node: slicer.vtkMRMLSegmentationNode, segment_id: str,
                    reference: slicer.vtkOrientedImageData) -> np.ndarray:
    """The segment as bool ``[k, j, i]`` on the grid of ``reference`` (a ``vtkOrientedImageData``)."""
    oriented = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, oriented)
    return mrml_bridge.oriented_image_to_mask(oriented, geometry_image(reference))


def geometry_image(oriented: slicer.vtkOrientedImageData) -> sitk.Image:
    """A SimpleITK image (uint8, zeros) with the grid of a ``vtkOrientedImageData`` (LPS)."""
    ext = oriented.GetExtent()
    _, ijk_to_ras = oriented_image_array_geometry(oriented)
    image = sitk.Image([ext[1] - ext[0] + 1, ext[3] - ext[2] + 1, ext[5] - ext[4] + 1], sitk.sitkUInt8)
    return mrml_bridge.set_image_geometry_from_ijk_to_ras(image, ijk_to_ras)


def oriented_image_array_geometry(oriented: slicer.vtkOrientedImageData) -> Tuple[Tuple[int, int, int], np.ndarray]:
    """``(shape [k, j, i], IJKToRAS of array index (0, 0, 0))`` of a ``vtkOrientedImageData``."""
    ext = oriented.GetExtent()
    matrix = vtk.vtkMatrix4x4()
    oriented.GetImageToWorldMatrix(matrix)
    m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    m[:3, 3] = m[:3, :3] @ np.array([ext[0], ext[2], ext[4]], dtype=np.float64) + m[:3, 3]
    return (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1), m


def _same_geometry(geometry: Optional[dict], shape_kji: Sequence[int], ijk_to_ras: np.ndarray) -> bool:
    if not geometry:
        return False
    size = geometry.get("size")
    if list(size) != [int(shape_kji[2]), int(shape_kji[1]), int(shape_kji[0])]:
        return False
    return bool(np.allclose(np.array(geometry["ijk_to_ras"], dtype=np.float64), ijk_to_ras, atol=1e-3))


@dataclass
class _SliceHistory:
    """The clicks on one slice of one segment: the corrector (its clicks) and the slice after each of them.

    ``states[0]`` is the slice before the first click, ``states[i]`` the slice as written after
    click ``i``; ``len(states) == len(corrector.clicks) + 1`` between clicks.
    """

    corrector: object
    states: List[np.ndarray]


class CorrectionSession:
    """Click corrections on one source volume.

    Per ``(segment, slice)`` the session keeps the clicks and the slice as written after each;
    before a click it compares the segment's slice with them (:meth:`sync`), so that Slicer's
    undo and edits made with other effects are respected: clicks are never replayed over them.

    Args:
        volume: ``[k, j, i]`` scanner values (the Segment Editor's source volume, in the
            segmentation's geometry): an array or a :class:`SliceSource`.
        ijk_to_ras: its 4 x 4 IJKToRAS (array index -> RAS).
        report: the propagation report kept on the segmentation node (None: no P²SAM prompts;
            a box around the clicks is used).
        report_geometry, report_content: the follow-up geometry that report's slice indices refer
            to, and the identity of its voxels (:func:`.mrml_bridge.content_key`); the report is
            used only when both are the volume's (another visit on the same grid is refused).
        model_choice: ``{"model", "model_type", "device"}`` the propagation used
            (default: the embedded LiteMedSAM on ``auto``).
    """

    def __init__(self, volume, ijk_to_ras: np.ndarray, report: Optional[dict] = None,
                 report_geometry: Optional[dict] = None, model_choice: Optional[dict] = None,
                 report_content: Optional[str] = None) -> None:
        self.volume = volume if isinstance(volume, SliceSource) else SliceSource(np.asarray(volume))
        self.ijk_to_ras = np.asarray(ijk_to_ras, dtype=np.float64)
        same_visit = report_content is not None and report_content == self.volume.content_key()
        self.report = report if same_visit and _same_geometry(report_geometry, self.volume.shape,
                                                              self.ijk_to_ras) else None
        self.model_choice = dict(model_choice or {})
        self.intensity = self._intensity(report)
        self._slices: Dict[Tuple[str, int], _SliceHistory] = {}
        self.last: Optional[Tuple[str, int]] = None

    @property
    def uses_report(self) -> bool:
        return self.report is not None

    def _intensity(self, report: Optional[dict]) -> Tuple[float, float]:
        """The follow-up window the propagation used, else the engine's choice for this volume."""
        try:
            w = report["provenance"]["intensity"]["followup"]
            return float(w["low"]), float(w["high"])
        except (TypeError, KeyError, ValueError):
            pass
        from P2SAMLogic.io.intensity import CT_WINDOW, MR_PERCENTILES

        n = self.volume.shape[0]
        sample = np.stack([self.volume[k] for k in range(0, n, max(1, n // 16))])
        if float(np.percentile(sample, 1)) < -500:
            return CT_WINDOW
        lo, hi = np.percentile(sample, MR_PERCENTILES)
        return float(lo), float(max(hi, lo + 1.0))

    def model(self):
        from .runner import load_model_cached

        c = self.model_choice
        return load_model_cached(c.get("model") or "litemedsam", c.get("model_type"), c.get("device") or "auto")

    def corrector(self, segment_name: str, k: int, current: Optional[np.ndarray] = None) -> "SliceCorrector":
        """The :class:`SliceCorrector` of ``(segment, k)``, created on first use from the report's prompts."""
        from P2SAMLogic.method.interactive import SliceCorrector

        key = (segment_name, int(k))
        if key not in self._slices:
            window, box = mrml_bridge.slice_prompts(self.report, segment_name, k)
            if box is None and window is not None:
                window = None  # a rejected slice: its window may not hold the structure
            # the clicks edit the slice's contour (the proposal, the registered contour kept where the
            # model was not trusted, or the user's own work); an empty slice gets P²SAM's box decode
            initial = None if current is None else np.asarray(current).astype(bool)
            corrector = SliceCorrector(self.model(), self.volume[k], self.intensity, window=window, box=box,
                                       initial_mask=initial, edit_current=True)
            start = initial if initial is not None else np.zeros(self.volume.shape[1:], dtype=bool)
            self._slices[key] = _SliceHistory(corrector, [start.copy()])
        return self._slices[key].corrector

    def has_corrector(self, segment_name: str, k: int) -> bool:
        """True while slice ``k`` of the segment has a click history (see :meth:`sync`)."""
        return (segment_name, int(k)) in self._slices

    def sync(self, segment_name: str, k: int, current: np.ndarray) -> str:
        """Bring the slice's click history in line with the segment's slice as it is now.

        The segment may have changed since the last click: Slicer's undo (Ctrl+Z) went back one
        or more clicks, or another effect (Paint, Erase, Scissors...) or a re-propagation
        edited the slice. The clicks must never be replayed over such a change.

        Args:
            current: bool ``[j, i]``, the segment's slice ``k`` now.
        Returns:
            ``"none"``: no click history; ``"same"``: unchanged since the last click;
            ``"undone"``: the slice is as it was after an earlier click (the later clicks are
            dropped: the model session follows Slicer's undo); ``"edited"``: changed otherwise
            (the history is dropped: the next click starts from the slice as it is).
        """
        key = (segment_name, int(k))
        history = self._slices.get(key)
        if history is None:
            return "none"
        current = np.asarray(current).astype(bool)
        clicks = history.corrector.clicks
        if len(clicks) >= len(history.states):  # a click whose result was never written
            del clicks[len(history.states) - 1:]
        if np.array_equal(current, history.states[-1]):
            return "same"
        for m in range(len(history.states) - 2, -1, -1):
            if np.array_equal(current, history.states[m]):
                del clicks[m:]
                del history.states[m + 1:]
                return "undone"
        del self._slices[key]
        return "edited"

    def click(self, segment_name: str, k: int, x: float, y: float, positive: bool, current: np.ndarray) -> np.ndarray:
        """Add a click on slice ``k`` and return the slice's new mask (bool ``[j, i]``).

        Args:
            current: the segment's slice ``k`` as it is now (bool ``[j, i]``): the clicks edit it,
                and a change made since the last click (undo, another effect) is respected
                (:meth:`sync`). Call :meth:`commit` with what was written.
        """
        self.sync(segment_name, k, current)
        c = self.corrector(segment_name, k, current)
        c.add_click(x, y, positive)
        self.last = (segment_name, int(k))
        return c.predict()

    def commit(self, segment_name: str, k: int, written: np.ndarray) -> None:
        """Record the slice as written after the last click (bool ``[j, i]``; the editor's masking may differ
        from what :meth:`click` returned)."""
        history = self._slices.get((segment_name, int(k)))
        if history is not None and len(history.corrector.clicks) == len(history.states):
            history.states.append(np.asarray(written).astype(bool).copy())

    def last_click_changed_slice(self, segment_name: str, k: int) -> Optional[bool]:
        """Did the slice's last committed click change it? None when it has no committed click."""
        history = self._slices.get((segment_name, int(k)))
        if history is None or len(history.states) < 2:
            return None
        return not np.array_equal(history.states[-1], history.states[-2])

    def drop_last_click(self, segment_name: str, k: int) -> None:
        """Forget the slice's last committed click (one that did not change the slice)."""
        history = self._slices.get((segment_name, int(k)))
        if history is not None and len(history.states) >= 2:
            history.states.pop()
            del history.corrector.clicks[len(history.states) - 1:]

    def reset(self, segment_name: Optional[str] = None, k: Optional[int] = None) -> None:
        """Forget the clicks of one slice (or of everything)."""
        if segment_name is None:
            self._slices.clear()
            self.last = None
        else:
            self._slices.pop((segment_name, int(k)), None)

    def click_points(self, segment_name: str, k: int) -> List[Tuple[float, float, bool]]:
        """The clicks on that slice: ``(x, y, positive)`` in slice pixels (column, row)."""
        history = self._slices.get((segment_name, int(k)))
        return [] if history is None else [(c.x, c.y, c.positive) for c in history.corrector.clicks]

    def clicks(self, segment_name: str, k: int) -> Tuple[int, int]:
        """``(positive, negative)`` click counts on that slice."""
        history = self._slices.get((segment_name, int(k)))
        if history is None:
            return 0, 0
        pos = sum(1 for cl in history.corrector.clicks if cl.positive)
        return pos, len(history.corrector.clicks) - pos

    def repropagate(self, k: int, reference_mask: np.ndarray, neighbours: int = 2, spacing_xy=(1.0, 1.0),
                    progress=None, cancel=None) -> Dict[int, np.ndarray]:
        """Re-segment the ``neighbours`` slices on each side of ``k`` with slice ``k`` as the reference."""
        from P2SAMLogic.method.interactive import repropagate_neighbours

        params = {}
        try:
            params = dict(self.report["provenance"]["parameters"])
        except (TypeError, KeyError):
            pass
        lo, hi = max(0, int(k) - neighbours), min(self.volume.shape[0] - 1, int(k) + neighbours)
        stack = np.stack([self.volume[j] for j in range(lo, hi + 1)])
        masks = repropagate_neighbours(self.model(), stack, self.intensity, int(k) - lo, reference_mask,
                                       neighbours=neighbours, spacing_xy=spacing_xy,
                                       roi_margin_mm=float(params.get("roi_margin_mm", 15.0)),
                                       min_roi_mm=float(params.get("min_roi_mm", 30.0)),
                                       max_parts=int(params.get("max_parts", 5)),
                                       negative_parts=int(params.get("negative_parts", 1)),
                                       seed=int(params.get("seed", 0)), progress=progress, cancel=cancel)
        return {j + lo: m for j, m in masks.items()}


def session_for(segmentation_node: slicer.vtkMRMLSegmentationNode, source_image: slicer.vtkOrientedImageData
                ) -> CorrectionSession:
    """A :class:`CorrectionSession` for the Segment Editor's source volume (``vtkOrientedImageData``)
    and the output segmentation node (its report and model choice, when P²SAM made it)."""
    import json

    volume, ijk_to_ras = oriented_image_array(source_image)
    choice_text = segmentation_node.GetAttribute(MODEL_ATTRIBUTE) if segmentation_node is not None else None
    choice = json.loads(choice_text) if choice_text else None
    return CorrectionSession(SliceSource(volume, owner=source_image), ijk_to_ras,
                             mrml_bridge.stored_report(segmentation_node),
                             mrml_bridge.stored_geometry(segmentation_node), choice,
                             mrml_bridge.stored_content_key(segmentation_node))


def pixel_spacing(ijk_to_ras: np.ndarray) -> Tuple[float, float]:
    """``(column, row)`` pixel size in mm of a geometry."""
    norms = np.linalg.norm(np.asarray(ijk_to_ras)[:3, :3], axis=0)
    return float(norms[0]), float(norms[1])


def view_normal_matches_k(slice_to_ras: np.ndarray, ijk_to_ras: np.ndarray, tolerance_deg: float = 1.0) -> bool:
    """True when a slice view (its SliceToRAS) shows planes of constant ``k`` of the volume."""
    normal = np.asarray(slice_to_ras, dtype=np.float64)[:3, 2]
    m = np.asarray(ijk_to_ras, dtype=np.float64)[:3, :3]
    k_normal = np.cross(m[:, 0], m[:, 1])
    cos = abs(float(normal @ k_normal)) / max(1e-12, np.linalg.norm(normal) * np.linalg.norm(k_normal))
    return cos >= np.cos(np.radians(tolerance_deg))


@dataclass
class ClickTarget:
    """Where a click on a slice view lands in the source volume, or why it is not the effect's to handle.

    Attributes:
        k, j, i: array indices ``[k, j, i]`` of the clicked voxel (slice, row, column).
        problem: None when the click is on a voxel of a slice the view shows; otherwise a short
            message for the effect's status line (the click is then left to Slicer, unconsumed).
    """

    k: int = -1
    j: int = -1
    i: int = -1
    problem: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.problem is None


#: message when a view shows planes other than the source volume's slices
NOT_ALIGNED = ("This view does not show slices of the source volume (P²SAM corrects one slice at a time); "
               "click in the view that shows them (e.g. Red/axial for an axial CT), or reset its orientation.")
#: message when the click lies outside the source volume
OUTSIDE = "The click is outside the source volume."


def _vtk_matrix_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def click_target(slice_node: slicer.vtkMRMLSliceNode, ijk_to_ras: np.ndarray, shape_kji: Sequence[int],
                 xy: Sequence[float], parent_transform_node: Optional[slicer.vtkMRMLTransformNode] = None
                 ) -> ClickTarget:
    """The voxel under a click on a slice view, as Slicer's Segment Editor computes it.

    Args:
        slice_node: the view's ``vtkMRMLSliceNode`` (its XYToRAS maps view pixels to RAS).
        ijk_to_ras: the source volume's 4 x 4 matrix from array index ``(i, j, k)`` to RAS.
        shape_kji: the source volume's array shape.
        xy: the click in view pixels (the interactor's event position).
        parent_transform_node: the segmentation's parent transform, if any (linear only).
    Returns:
        A :class:`ClickTarget`; ``problem`` is set when the view does not show planes of constant
        ``k`` of the volume (within 1 degree), the click is outside the volume, or the
        segmentation is under a non-linear transform.
    """
    if not view_normal_matches_k(_vtk_matrix_array(slice_node.GetSliceToRAS()), ijk_to_ras):
        return ClickTarget(problem=NOT_ALIGNED)
    ras = _vtk_matrix_array(slice_node.GetXYToRAS()) @ np.array([float(xy[0]), float(xy[1]), 0.0, 1.0])
    if parent_transform_node is not None:
        if not parent_transform_node.IsTransformToWorldLinear():
            return ClickTarget(problem="The segmentation is under a non-linear transform; harden it first.")
        world_to_parent = vtk.vtkMatrix4x4()
        parent_transform_node.GetMatrixTransformFromWorld(world_to_parent)
        ras = _vtk_matrix_array(world_to_parent) @ ras
    ijk = np.linalg.solve(np.asarray(ijk_to_ras, dtype=np.float64), ras)[:3]
    i, j, k = (int(np.floor(v + 0.5)) for v in ijk)
    if not (0 <= k < shape_kji[0] and 0 <= j < shape_kji[1] and 0 <= i < shape_kji[2]):
        return ClickTarget(k, j, i, problem=OUTSIDE)
    return ClickTarget(k, j, i)


def view_slice_index(slice_node: slicer.vtkMRMLSliceNode, ijk_to_ras: np.ndarray, n_slices: int) -> Optional[int]:
    """The slice ``k`` of the volume a view shows (its centre), or None when the view is not aligned with the
    volume's slices (see :func:`view_normal_matches_k`) or shows no slice of it."""
    slice_to_ras = _vtk_matrix_array(slice_node.GetSliceToRAS())
    if not view_normal_matches_k(slice_to_ras, ijk_to_ras):
        return None
    ijk = np.linalg.solve(np.asarray(ijk_to_ras, dtype=np.float64), slice_to_ras[:, 3])[:3]
    k = int(np.floor(ijk[2] + 0.5))
    return k if 0 <= k < n_slices else None

