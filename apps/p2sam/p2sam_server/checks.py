"""What a request may ask of the P2SAM server: identifiers, upload names, parameters, the handshake.

Pure functions over request values (no FastAPI, no MONAI Label), so every rule is tested alone.
A refusal is a :class:`Refused` carrying the HTTP status and a message for the person at the client;
refusals depend on the request's text only, never on what exists on the server's disk, so a
refused name tells nothing about the server's files.
"""
import json
import math
import os
import re
from typing import Any, Dict, List, Optional, Tuple

#: a datastore image id, label tag or job id: letters, digits, ``_``, ``-``, ``.`` (not first), no ``..``
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")
#: query parameters that name something on the server; every endpoint checks them with ID_PATTERN
ID_QUERY_PARAMETERS = ("image", "label", "tag", "id", "session_id", "job")
#: file types the server reads (images and segmentations); an upload's own name is never used as a path
UPLOAD_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha")
#: keys of an infer or job request's ``params`` JSON
REQUEST_KEYS = ("prior_image", "prior_label_tag", "segments", "parameters", "expected_engine_version",
                "expected_model_sha256", "client_id")
MAX_PARAMS_BYTES = 64 * 1024
MAX_SEGMENTS = 64
MAX_NAME_CHARS = 128

#: PropagationConfig fields a request may set, with their type and inclusive bounds. A field not
#: listed here cannot be set through the server (a test checks that every field is listed).
PARAMETER_RULES: Dict[str, Tuple[str, Any]] = {
    "method": ("choice", 32),
    "deformable": ("choice", 32),
    "decision": ("choice", 32),
    "registration": ("choice", 32),
    "trust_iou": ("float", (0.0, 1.0)),
    "trust_agreement": ("float", (0.0, 1.0)),
    "trust_score_ratio": ("float or none", (0.0, 100.0)),
    "gate_score_ratio": ("pair or none", (0.0, 100.0)),
    "end_absent_iou": ("float", (0.0, 1.0)),
    "ring_outer": ("choice", 32),
    "proposals": ("choice", 32),
    "registered_prompts": ("choices", 8),
    "scale": ("choice", 32),
    "ring_area_ratio": ("float", (0.0, 1.0)),
    "followup_references": ("bool", None),
    "decompose": ("bool", None),
    "rank_prior_agreement": ("bool", None),
    "max_parts": ("int", (1, 10)),
    "negative_parts": ("int", (0, 5)),
    "roi_margin_mm": ("float", (0.0, 200.0)),
    "min_roi_mm": ("float", (0.0, 500.0)),
    "slice_margin_mm": ("float", (0.0, 100.0)),
    "registration_margin_mm": ("float", (0.0, 200.0)),
    "intensity_window": ("window", (-1e6, 1e6)),
    "presence_threshold": ("float", (0.0, 10.0)),
    "prior_weight": ("float", (0.0, 1.0)),
    "cleanup_tolerance_mm": ("float", (0.0, 50.0)),
    "qa_flag_below": ("float", (0.0, 1.0)),
    "confirm_agreement": ("float", (0.0, 1.0)),
    "min_overlap": ("float", (0.0, 1.0)),
    "allow_poor_registration": ("bool", None),
    "batch_size": ("int", (1, 64)),
    "seed": ("int", (0, 2 ** 31 - 1)),
}


class Refused(Exception):
    """A request the server will not run: ``status`` (HTTP) and a message naming the bad field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _shown(value: Any, limit: int = 80) -> str:
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def datastore_id(value: Any, what: str) -> str:
    """``value`` if it is a valid identifier (:data:`ID_PATTERN`), else :class:`Refused` (400).

    Paths are never identifiers: ``..``, ``/``, ``\\``, a drive letter or a leading ``.`` are refused
    before anything is looked up.
    """
    if not isinstance(value, str) or not ID_PATTERN.match(value) or ".." in value:
        raise Refused(400, f"{what} {_shown(value)} is not a valid identifier: use 1-128 letters, digits, '_', "
                           "'-' or '.' (not first, no '..'); file paths are not accepted")
    return value


def upload_suffix(filename: Optional[str], what: str) -> str:
    """The file type of an upload, from its name (:data:`UPLOAD_SUFFIXES`), else :class:`Refused` (400).

    Only the suffix is kept: the server stores every upload under a name of its own.
    """
    name = (filename or "").strip().lower()
    for suffix in UPLOAD_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    raise Refused(400, f"{what}: upload {_shown(filename)} is not one of the accepted file types "
                       f"({', '.join(UPLOAD_SUFFIXES)})")


def inside(root: str, path: str) -> bool:
    """Whether ``path`` resolves (symbolic links followed) to ``root`` itself or below it."""
    root_real, path_real = os.path.realpath(root), os.path.realpath(path)
    return os.path.commonpath([root_real, path_real]) == root_real


def request_params(text: Optional[str]) -> Dict[str, Any]:
    """The ``params`` form field: a JSON object of at most 64 KiB with only :data:`REQUEST_KEYS`."""
    text = text or "{}"
    if len(text.encode("utf-8")) > MAX_PARAMS_BYTES:
        raise Refused(413, f"params: {len(text.encode('utf-8'))} bytes; at most {MAX_PARAMS_BYTES}")
    try:
        params = json.loads(text)
    except ValueError as exc:
        raise Refused(400, f"params is not valid JSON ({exc})") from None
    if not isinstance(params, dict):
        raise Refused(400, "params must be a JSON object")
    unknown = sorted(set(params) - set(REQUEST_KEYS))
    if unknown:
        raise Refused(422, f"params: unknown field(s) {', '.join(_shown(k) for k in unknown)}; accepted: "
                           f"{', '.join(REQUEST_KEYS)}")
    return params


def segment_names(value: Any) -> Optional[List[str]]:
    """``params.segments``: names as a list or a comma-separated string; None (all) when empty."""
    if value is None or value == "" or value == []:
        return None
    names = [s.strip() for s in value.split(",")] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(s, str) for s in names):
        raise Refused(422, "params.segments must be a list of segment names or a comma-separated string")
    names = [s for s in names if s]
    if len(names) > MAX_SEGMENTS or any(len(s) > MAX_NAME_CHARS for s in names):
        raise Refused(422, f"params.segments: at most {MAX_SEGMENTS} names of at most {MAX_NAME_CHARS} characters")
    return names or None


def _number(name: str, value: Any, kind: str, bounds) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Refused(422, f"parameters.{name}: {_shown(value)} is not a number")
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise Refused(422, f"parameters.{name}: {value} is not a whole number")
        value = int(value)
    value_ok = math.isfinite(float(value)) and bounds[0] <= value <= bounds[1]
    if not value_ok:
        raise Refused(422, f"parameters.{name}: {value} is outside the range this server accepts "
                           f"[{bounds[0]}, {bounds[1]}]")
    return float(value) if kind == "float" else value


def bounded_parameters(values: Any) -> Dict[str, Any]:
    """``params.parameters`` (PropagationConfig fields) checked against :data:`PARAMETER_RULES`.

    Returns:
        The fields with their values converted (``intensity_window`` a tuple); the engine's own
        ``PropagationConfig.validate`` still checks choices and relations afterwards.
    Raises:
        Refused: 422 naming the first bad field (unknown, wrong type, or out of bounds).
    """
    if isinstance(values, str):
        try:
            values = json.loads(values or "{}")
        except ValueError as exc:
            raise Refused(422, f"params.parameters is not valid JSON ({exc})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise Refused(422, "params.parameters must be a JSON object of propagation parameters")
    out: Dict[str, Any] = {}
    for name, value in values.items():
        rule = PARAMETER_RULES.get(name)
        if rule is None:
            raise Refused(422, f"parameters: unknown propagation parameter {_shown(name)}; accepted: "
                               f"{', '.join(sorted(PARAMETER_RULES))}")
        kind, bounds = rule
        if kind == "choice":
            if not isinstance(value, str) or len(value) > bounds:
                raise Refused(422, f"parameters.{name}: {_shown(value)} is not one of the engine's choices")
            out[name] = value
        elif kind == "bool":
            if not isinstance(value, bool):
                raise Refused(422, f"parameters.{name}: {_shown(value)} is not true or false")
            out[name] = value
        elif kind == "choices":
            if (not isinstance(value, (list, tuple)) or len(value) > bounds
                    or not all(isinstance(v, str) and len(v) <= 32 for v in value)):
                raise Refused(422, f"parameters.{name}: expected a list of at most {bounds} of the engine's "
                                   f"choices, got {_shown(value)}")
            out[name] = tuple(value)
        elif kind in ("pair", "pair or none"):
            if value is None and kind == "pair or none":
                out[name] = None
                continue
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise Refused(422, f"parameters.{name}: expected [low, high], got {_shown(value)}")
            out[name] = tuple(_number(name, v, "float", bounds) for v in value)
        elif kind == "window":
            if value is None:
                out[name] = None
                continue
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise Refused(422, f"parameters.{name}: expected [low, high], got {_shown(value)}")
            out[name] = tuple(_number(name, v, "float", bounds) for v in value)
        elif kind == "float or none":
            out[name] = None if value is None else _number(name, value, "float", bounds)
        else:
            out[name] = _number(name, value, kind, bounds)
    return out


def handshake_refusal(server: Dict[str, str], engine_version: Any, model_sha256: Any) -> Optional[Refused]:
    """The refusal for a request's expectations of the server (None when they match).

    Both ``expected_engine_version`` and ``expected_model_sha256`` are required: a request without
    them is refused with 428, one whose values differ with 409; both messages name this server's.
    """
    missing = [k for k, v in (("expected_engine_version", engine_version), ("expected_model_sha256", model_sha256))
               if not isinstance(v, str) or not v]
    if missing:
        return Refused(428, f"P2SAM handshake missing: the request must carry params.{' and params.'.join(missing)} "
                            f"(this server runs P2SAM engine {server['engine_version']} with {server['model']}, "
                            f"model SHA-256 {server['model_sha256']}; GET /info/ reports them)")
    problems = []
    if engine_version != server["engine_version"]:
        problems.append(f"the client expects P2SAM engine {_shown(engine_version, 64)}, this server runs "
                        f"{server['engine_version']}")
    if model_sha256 != server["model_sha256"]:
        problems.append(f"the client expects model SHA-256 {_shown(model_sha256, 64)}, this server's "
                        f"{server['model']} has {server['model_sha256']}")
    if not problems:
        return None
    return Refused(409, "P2SAM version mismatch: " + "; ".join(problems)
                   + ". Results would not match what the client would compute; update the client or the server "
                     "so that both run the same engine and model.")
