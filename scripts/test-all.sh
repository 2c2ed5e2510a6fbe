#!/bin/sh
# The whole suite, after `npm run build`, in two lanes that run side by side:
#   foreground  the kernel and lab tests (test/kernel, test/lab) on this machine's Node, in band:
#               they share the lab's kernels and namespaces, one at a time;
#   background  the unit tests on this machine's Node, then on each maintained LTS line
#               (scripts/test-lts.sh), one jest worker; its output is kept in a file and printed
#               after the foreground lane, so the two do not interleave.
# The lab lane waits on guests far more than it computes, so the unit lane costs it little; one
# after the other, the lanes made the suite take 23 minutes, over its 20-minute budget.
# Exits non-zero when either lane fails.
set -eu
cd "$(dirname "$0")/.."
log=$(mktemp "${TMPDIR:-/tmp}/onionctl-unit-lane.XXXXXX")
trap 'rm -f "$log"' EXIT
(
  node --experimental-vm-modules node_modules/jest/bin/jest.js --maxWorkers=1 --testPathIgnorePatterns /test/lab/ /test/kernel/ &&
    ONIONCTL_LTS_WORKERS=1 ./scripts/test-lts.sh
) >"$log" 2>&1 &
unit=$!
lab=0
node --experimental-vm-modules node_modules/jest/bin/jest.js --runInBand dist/test/kernel dist/test/lab || lab=$?
rc=0
wait "$unit" || rc=$?
echo "---- unit tests (this Node, then the LTS lines) ----"
cat "$log"
if [ "$lab" -ne 0 ] || [ "$rc" -ne 0 ]; then
  echo "test-all: kernel/lab lane exit $lab, unit lane exit $rc" >&2
  exit 1
fi
