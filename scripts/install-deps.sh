#!/bin/sh
# Installs the Debian packages onionctl's lab and tests use, when they are missing.
# Needs root (CI runs as root). Safe to run again: it only installs what is absent.
set -eu
need=""
check() { # check COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ] || need="$need $2"
}
check linux.uml user-mode-linux
check sshd openssh-server
check ssh openssh-client
check tcpdump tcpdump
check iptables-legacy iptables
check nft nftables
check dot graphviz
check curl curl
check modprobe kmod
check ping iputils-ping
check python3 python3
check nsenter util-linux
check rsvg-convert librsvg2-bin
check ip iproute2
if [ -n "$need" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing Debian packages:$need; run as root: apt-get install$need" >&2
    exit 1
  fi
  echo "install-deps: installing$need" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
