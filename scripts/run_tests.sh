#!/usr/bin/env bash
# Set up .venv from scratch if needed, then run the whole test suite (CPU, real LiteMedSAM weights).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh" >/dev/null
cd "$root"
exec "${P2SAM_VENV:-$root/.venv}/bin/python" -m pytest Testing/Python "$@"
