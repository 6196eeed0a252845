#!/usr/bin/env bash
# Set up .venv if needed, then run the main job on the bundled default: carry the prior-visit
# tumour mask of the 4D-Lung pair onto the follow-up slice with the embedded LiteMedSAM.
# Output: demo-output/test_image.png (the proposed mask) and demo-output/results.json.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh" >/dev/null
data="$root/Testing/Data/4dlung_visit_pair"
exec "${P2SAM_VENV:-$root/.venv}/bin/p2sam" segment-image \
  --reference "$data/ref_image.png" --reference-mask "$data/ref_mask.png" \
  --target "$data/test_image.png" --output-dir "${1:-$root/demo-output}" --overwrite
