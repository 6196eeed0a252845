"""The manifest of ``p2sam propagate-many``: a CSV file of cases, read and checked before anything runs.

One row per case (relative paths are relative to the manifest's folder); the columns are those of
:mod:`.cohort`'s manual. Every error names the manifest, the line and the column.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import InputError

REQUIRED_COLUMNS = ("prior_image", "prior_segmentation", "followup", "output")
OPTIONAL_COLUMNS = ("case", "segments", "series_uid", "truth")
_OUTPUT_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".dcm")


@dataclass
class Case:
    """One manifest row, paths made absolute.

    Attributes:
        line: line number in the manifest (the header is line 1).
        case_id: the ``case`` column, or ``line N``.
        report: where the case's QA report goes (derived from ``output``).
        series_uids: zero, one or two DICOM series UIDs.
    """

    line: int
    case_id: str
    prior_image: str
    prior_segmentation: str
    followup: str
    output: str
    report: str
    segments: Optional[str] = None
    series_uids: List[str] = field(default_factory=list)
    truth: Optional[str] = None

    def propagate_argv(self, options: Sequence[str], overwrite: bool) -> List[str]:
        """The ``p2sam propagate`` command line of this case (without the program name)."""
        argv = ["propagate", "--prior-image", self.prior_image, "--prior-segmentation", self.prior_segmentation,
                "--followup", self.followup, "--output", self.output, "--report", self.report, "--quiet"]
        if self.segments:
            argv += ["--segments", self.segments]
        for uid in self.series_uids:
            argv += ["--series-uid", uid]
        if overwrite:
            argv.append("--overwrite")
        return argv + list(options)


def report_path(output: str) -> str:
    """``<output without its extension>.report.json`` (``a/b.seg.nrrd`` -> ``a/b.report.json``)."""
    low = output.lower()
    for suffix in _OUTPUT_SUFFIXES:
        if low.endswith(suffix):
            return output[: -len(suffix)] + ".report.json"
    return output + ".report.json"


def read_manifest(path: str) -> List[Case]:
    """Read and check a cohort manifest (see the module docstring).

    Raises:
        InputError: naming the manifest, the line and the column: missing file, no header, a missing,
            unknown or repeated column, a row with too many fields, an empty required cell, an
            unsupported output type, two cases writing the same file, an output that is also an input.
    """
    from ..io import output_kind

    p = Path(path)
    if not p.is_file():
        raise InputError(path, "manifest does not exist (or is not a file)")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"manifest is not a readable UTF-8 text file ({exc})") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    expected = ",".join(REQUIRED_COLUMNS) + " (+ optional " + ",".join(OPTIONAL_COLUMNS) + ")"
    if not header or not any(h.strip() for h in header):
        raise InputError(path, f"manifest is empty; its first line must be the header {expected}")
    columns = [h.strip() for h in header]
    for n, name in enumerate(columns):
        if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
            raise InputError(f"{path} line 1, column {n + 1}", f"unknown column '{name}'; expected {expected}")
        if columns.index(name) != n:
            raise InputError(f"{path} line 1, column {n + 1}", f"column '{name}' appears twice")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InputError(f"{path} line 1", f"the header lacks column(s) {', '.join(missing)}; expected {expected}")
    base = p.resolve().parent
    cases: List[Case] = []
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) > len(columns):
            raise InputError(f"{path} line {line}", f"has {len(row)} fields but the header has {len(columns)}")
        cells = {c: (row[i].strip() if i < len(row) else "") for i, c in enumerate(columns)}
        for c in REQUIRED_COLUMNS:
            if not cells[c]:
                raise InputError(f"{path} line {line}, column '{c}'", "is empty")

        def resolve(value: str) -> str:
            return str(base / os.path.expanduser(value)) if value else ""

        output = resolve(cells["output"])
        try:
            output_kind(output)
        except InputError as exc:
            raise InputError(f"{path} line {line}, column 'output'", exc.problem) from None
        uids = [u for u in cells.get("series_uid", "").replace(";", " ").split() if u]
        if len(uids) > 2:
            raise InputError(f"{path} line {line}, column 'series_uid'", "holds more than two UIDs (one for the "
                                                                        "prior, one for the follow-up)")
        segments = ",".join(s.strip() for s in cells.get("segments", "").replace(";", ",").split(",") if s.strip())
        cases.append(Case(line=line, case_id=cells.get("case") or f"line {line}",
                          prior_image=resolve(cells["prior_image"]),
                          prior_segmentation=resolve(cells["prior_segmentation"]),
                          followup=resolve(cells["followup"]), output=output, report=report_path(output),
                          segments=segments or None, series_uids=uids, truth=resolve(cells.get("truth", "")) or None))
    if not cases:
        raise InputError(path, "manifest has a header but no case rows")
    _check_paths(path, cases)
    return cases


def path_key(path: str) -> str:
    """A path as compared with others: symbolic links resolved (one folder reached two ways is one folder)."""
    return os.path.normcase(os.path.realpath(path))


def _check_paths(path: str, cases: List[Case]) -> None:
    """Two cases writing one file, or an output that is some case's input: errors naming both places
    (paths compared after resolving symbolic links)."""
    written: Dict[str, Tuple[int, str]] = {}
    ids: Dict[str, int] = {}
    for c in cases:
        if c.case_id in ids:
            raise InputError(f"{path} line {c.line}, column 'case'", f"'{c.case_id}' is also the case of line "
                                                                     f"{ids[c.case_id]}")
        ids[c.case_id] = c.line
        for column, target in (("output", c.output), ("output", c.report)):
            key = path_key(target)
            if key in written:
                other_line, other_col = written[key]
                what = "its report" if target == c.report else "the same file"
                raise InputError(f"{path} line {c.line}, column '{column}'",
                                 f"{what} ({target}) is also written by line {other_line}")
            written[key] = (c.line, column)
    for c in cases:
        for column in ("prior_image", "prior_segmentation", "followup", "truth"):
            value = getattr(c, column)
            if not value:
                continue
            key = path_key(value)
            if key in written:
                other_line, _ = written[key]
                raise InputError(f"{path} line {other_line}, column 'output'",
                                 f"is the input of line {c.line}, column '{column}'; outputs never overwrite inputs")
