#!/bin/sh
# Finds Tor for bench/vs-tor.ts, or fetches Debian's tor package without installing it.
# Prints one line: the directory whose usr/sbin/tor and usr/bin/tor-gencert to run, and the
# library directory to run them with (empty when the system's own tor is used):
#   /   -                                  (tor installed on this machine)
#   /var/cache/onionctl/tor /var/cache/onionctl/tor/usr/lib/x86_64-linux-gnu
# The package is only unpacked (apt-get download, dpkg-deb -x): installing it would also enable
# and start a system Tor client on a machine with systemd, which connects to the public Tor
# network; the benchmark's Tor must talk to its own lab relays only. Needs root for apt-get.
set -eu
# ONIONCTL_BENCH_TOR_FETCH=1 uses the unpacked copy even where tor is installed
if [ "${ONIONCTL_BENCH_TOR_FETCH:-0}" != 1 ] && [ -x /usr/sbin/tor ] && [ -x /usr/bin/tor-gencert ]; then
  echo "/ -"
  exit 0
fi
dir=/var/cache/onionctl/tor
lib="$dir/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)"
if [ ! -x "$dir/usr/sbin/tor" ] || [ ! -x "$dir/usr/bin/tor-gencert" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "bench-tor: Debian's tor is needed; run as root (it is unpacked into $dir, not installed)" >&2
    exit 1
  fi
  tmp=$(mktemp -d)
  chmod 755 "$tmp" # apt-get download fetches as the _apt user
  trap 'rm -rf "$tmp"' EXIT
  echo "bench-tor: fetching Debian's tor into $dir (unpacked, not installed)" >&2
  apt-get update -qq >&2
  # tor's own libraries that a minimal Debian may lack; the rest (libc, OpenSSL, zlib) it has
  (cd "$tmp" && apt-get download -qq tor libevent-2.1-7 >&2)
  mkdir -p "$dir.new"
  for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$dir.new"; done
  rm -rf "$dir"
  mv "$dir.new" "$dir"
fi
echo "$dir $lib"
