#!/usr/bin/env bash
# Run the P2SAMSlicer and SegmentEditorP2SAM self-tests inside a real 3D Slicer, without its window.
#
#   Testing/Slicer/smoke.sh SLICER_EXECUTABLE      e.g. ~/Slicer-5.8.1-linux-amd64/Slicer
#
# Slicer starts with --no-main-window --no-splash, this checkout's two module folders added to its
# module paths, and runs Testing/Slicer/run_self_tests.py, which runs both self-tests with unittest.
# Exit status: that of the tests (0: every test passed or was skipped, each skip printed with its
# reason); 2 when no usable Slicer executable is given; 1 when Slicer ended without running them.
set -u

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

fail() {
  echo "smoke.sh: error: $1" >&2
  if [ "${2:-2}" -eq 2 ]; then
    echo "usage: Testing/Slicer/smoke.sh SLICER_EXECUTABLE   (the Slicer launcher, e.g. ~/Slicer-5.8.1-linux-amd64/Slicer)" >&2
  fi
  exit "${2:-2}"
}

[ "$#" -eq 1 ] || fail "give exactly one argument, the Slicer executable (got $#); the self-tests did NOT run"
slicer="$1"
[ -n "$slicer" ] || fail "the Slicer executable is an empty string; the self-tests did NOT run"
[ -e "$slicer" ] || fail "'$slicer' does not exist; the self-tests did NOT run"
[ -f "$slicer" ] || fail "'$slicer' is not a file (give the Slicer launcher itself); the self-tests did NOT run"
[ -x "$slicer" ] || fail "'$slicer' is not executable; the self-tests did NOT run"

result="$(mktemp "${TMPDIR:-/tmp}/p2sam-smoke.XXXXXX")" || fail "cannot create a temporary file" 1
rm -f "$result"
trap 'rm -f "$result"' EXIT
export P2SAM_SMOKE_RESULT="$result"

echo "smoke.sh: running the P2SAM self-tests in $slicer"
"$slicer" --no-splash --no-main-window \
  --additional-module-paths "$root/P2SAMSlicer" "$root/P2SAMSlicer/SegmentEditorP2SAM" \
  --python-script "$here/run_self_tests.py"
status=$?

if [ ! -s "$result" ]; then
  fail "Slicer ended (status $status) without running the self-tests (no result from run_self_tests.py)" 1
fi
echo "smoke.sh: $(cat "$result")"
if [ "$status" -ne 0 ]; then
  echo "smoke.sh: FAILED (Slicer exit status $status)" >&2
  exit "$status"
fi
echo "smoke.sh: passed"
exit 0
