#!/usr/bin/env bash
# The main job on the bundled default: carry a prior CT's segmentation (GTV + a vertebral body)
# onto a follow-up CT with `p2sam propagate` and the embedded LiteMedSAM, on the CPU.
#
# No real two-visit 3D CT can ship with the repository, so the follow-up is SIMULATED from the
# bundled real CT crop (Testing/Data/lung1_crop, pyradiomics lung1, BSD-3) by
# Testing/Tools/simulate_followup.py: rigid patient motion, the GTV shrunk by 25 % in volume,
# smooth deformation, a 0.7 x 0.7 x 3 mm grid with another field of view, noise.
#
# Writes into OUT (default demo-output/):
#   simulated_followup/       the simulated follow-up CT and its true labels (for checking only)
#   followup_proposal.seg.nrrd  the proposed segmentation (open it in Slicer over followup_ct.nrrd)
#   report.json, overlay.png  the QA report and a montage of the proposed / registered contours
# and prints the report table and the Dice of the proposal against the simulation's truth.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh" >/dev/null
venv="${P2SAM_VENV:-$root/.venv}"
data="$root/Testing/Data/lung1_crop"
out="${1:-$root/demo-output}"
mkdir -p "$out"
"$venv/bin/python" "$root/Testing/Tools/simulate_followup.py" --prior "$data/prior_ct.nrrd" \
  --labels "$data/prior_labels.nrrd" --output "$out/simulated_followup" >/dev/null
"$venv/bin/p2sam" propagate --prior-image "$data/prior_ct.nrrd" --prior-segmentation "$data/prior.seg.nrrd" \
  --followup "$out/simulated_followup/followup_ct.nrrd" --output "$out/followup_proposal.seg.nrrd" \
  --report "$out/report.json" --overlay "$out/overlay.png" --device "${P2SAM_DEVICE:-auto}" --overwrite
"$venv/bin/python" - "$out" <<'PY'
import sys, json
import numpy as np, SimpleITK as sitk
from P2SAMLogic.io import read_segmentation, read_volume
out = sys.argv[1]
fu, src = read_volume(f"{out}/simulated_followup/followup_ct.nrrd")
truth = sitk.GetArrayFromImage(sitk.ReadImage(f"{out}/simulated_followup/followup_labels.nrrd"))
labels = {v: k for k, v in json.load(open(f"{out}/simulated_followup/simulation.json"))["labels"].items()}
for seg in read_segmentation(f"{out}/followup_proposal.seg.nrrd", fu, src):
    t = truth == int(labels[seg.name])
    p = seg.array()
    print(f"Dice vs the simulated truth, {seg.name}: {2 * (p & t).sum() / (p.sum() + t.sum()):.3f}")
PY
