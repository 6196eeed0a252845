#!/usr/bin/env bash
# The main job on the bundled default: carry a prior CT's segmentation (GTV + a vertebral body)
# onto a follow-up CT with `p2sam propagate` and the embedded LiteMedSAM, on the CPU, and compare the
# result with what the deformable registration alone gives (`--method deformable`).
#
# No real two-visit 3D CT can ship with the repository, so the follow-up is SIMULATED from the
# bundled real CT crop (Testing/Data/lung1_crop, pyradiomics lung1, BSD-3) by
# Testing/Tools/simulate_response.py: the tumour regresses by 50 % in volume, the vacated part
# becoming lung (tissue replacement, which a registration cannot undo), then rigid patient motion,
# a smooth deformation, a 0.7 x 0.7 x 3 mm grid with another field of view, noise.
#
# Installs only the core package (set P2SAM_EXTRAS for more; run_tests.sh installs the test extras).
# Writes into OUT (default demo-output/):
#   simulated_followup/         the simulated follow-up CT and its true labels (for checking only)
#   followup_proposal.seg.nrrd  the proposed segmentation (open it in Slicer over followup_ct.nrrd)
#   report.json, overlay.png    the QA report and a montage of the proposed / registered contours
#   registration_only.seg.nrrd  the same structures carried by the registration alone
# and prints the report table and, per structure, the Dice against the simulation's truth of the
# proposal and of the registration alone.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
P2SAM_EXTRAS="${P2SAM_EXTRAS-}" bash "$root/scripts/setup_env.sh" >/dev/null
venv="${P2SAM_VENV:-$root/.venv}"
data="$root/Testing/Data/lung1_crop"
out="${1:-$root/demo-output}"
sim="$out/simulated_followup"
mkdir -p "$out"
"$venv/bin/python" "$root/Testing/Tools/simulate_response.py" --prior "$data/prior_ct.nrrd" \
  --labels "$data/prior_labels.nrrd" --kind regress --change -0.5 --spacing 0.7 0.7 3 --output "$sim" >/dev/null
common=(--prior-image "$data/prior_ct.nrrd" --prior-segmentation "$data/prior.seg.nrrd"
        --followup "$sim/followup_ct.nrrd" --device "${P2SAM_DEVICE:-auto}" --overwrite)
"$venv/bin/p2sam" propagate "${common[@]}" --output "$out/followup_proposal.seg.nrrd" \
  --report "$out/report.json" --overlay "$out/overlay.png"
"$venv/bin/p2sam" propagate "${common[@]}" --method deformable --output "$out/registration_only.seg.nrrd" --quiet
echo
"$venv/bin/python" "$root/Testing/Tools/demo_summary.py" --followup "$sim/followup_ct.nrrd" \
  --truth "$sim/followup_labels.nrrd" --simulation "$sim/simulation.json" \
  --proposal "$out/followup_proposal.seg.nrrd" --registration "$out/registration_only.seg.nrrd" \
  --report "$out/report.json"
