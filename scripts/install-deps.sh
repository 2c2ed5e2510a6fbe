#!/bin/sh
# Installs the Debian packages onionctl's lab and tests use, when they are missing, and the lab's
# 6.12 UML kernel (scripts/uml-kernel.sh, cached after the first build).
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
check shellcheck shellcheck
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

# The lab's second kernel (docs/kernels.md): 6.12 with xfrm_interface and nftables for IPv4, built
# from Debian's linux-source-6.12 once per machine and then cached. ONIONCTL_LAB_KERNELS=6.1 skips
# it (the lab tests then run on Debian 12's 6.1 kernel only).
case ",${ONIONCTL_LAB_KERNELS:-6.1,6.12}," in
  *,6.12,*) "$(dirname "$0")/uml-kernel.sh" >/dev/null ;;
esac
