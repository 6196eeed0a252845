#!/usr/bin/env bash
# Set up .venv from scratch if needed (with the test, dask and server extras), then run the whole test suite (CPU, real LiteMedSAM weights).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
P2SAM_EXTRAS="${P2SAM_EXTRAS-test,dask,server}" bash "$root/scripts/setup_env.sh" >/dev/null
cd "$root"
# the cohort (Dask) and server (MONAI Label) tests fail instead of skipping when their packages are missing
export P2SAM_REQUIRE_EXTRAS="${P2SAM_REQUIRE_EXTRAS-1}"
exec "${P2SAM_VENV:-$root/.venv}/bin/python" -m pytest Testing/Python "$@"
