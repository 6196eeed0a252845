"""Process-level settings that make CPU inference fast (measured in Testing/Benchmarks/encoder_options.py).

They are opt-in at the process level: the CLI, the Slicer module's worker process and
the benchmarks call :func:`tune_process`; a library user may call it too.

* **glibc allocator**: by default glibc serves every allocation above 32 MiB with a
  fresh ``mmap`` and unmaps it on ``free``. An encoder forward pass allocates and frees
  hundreds of such activation buffers, so every one of them page-faults in zeroed
  memory again: on the 2-core development machine this kernel time was ~40 % of an
  encode (LiteMedSAM 256², 1.87 s → 1.28 s per image once it is avoided). With
  ``M_MMAP_THRESHOLD`` raised to 1 GiB the buffers come from the heap and are reused;
  with ``M_TRIM_THRESHOLD`` raised the heap is not shrunk between passes. Memory is
  then held by the process at its peak rather than returned between encodes (the
  peak itself does not grow; see the README's memory numbers).
* Nothing else is global: the optional TorchScript encoder is per model object (see
  ``PromptableModel.jit_encoder``).

Set ``P2SAM_NO_MALLOPT=1`` to leave the allocator alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_STATE = {"applied": None}


def tune_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1) -> bool:
    """Raise glibc's mmap and trim thresholds (bytes); True when applied (Linux/glibc only, once per process)."""
    if _STATE["applied"] is not None:
        return bool(_STATE["applied"])
    applied = False
    if sys.platform.startswith("linux") and os.environ.get("P2SAM_NO_MALLOPT", "") not in ("1", "true", "yes"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
            mallopt.restype = ctypes.c_int
            applied = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(
                mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
        except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to do
            applied = False
    _STATE["applied"] = applied
    return applied


def tune_process() -> dict:
    """Apply every process-level setting; returns what was applied (for provenance and benchmarks)."""
    return {"glibc_malloc_tuned": tune_allocator()}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (0 where the platform does not report it)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
