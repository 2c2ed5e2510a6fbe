#!/bin/sh
# Obtains a User-Mode Linux 6.12 kernel with xfrm_interface (module) and nftables for IPv4, built
# from Debian packages only, and prints the path of its binary on stdout (everything else goes to
# stderr). The lab boots it with `onionctl lab up --kernel PATH` or ONIONCTL_UML=PATH; its modules
# sit beside it, in modules/<release>/, where the lab looks first.
#
# Source:  Debian 12's linux-source-6.12 (bookworm-security).
# Config:  Debian 12's own user-mode-linux config (`linux.uml --showconfig`, the lab's 6.1 kernel,
#          which has everything the lab uses), moved to 6.12 with `olddefconfig`, plus
#          XFRM_INTERFACE=m and NF_TABLES_IPV4/INET/IPV6=y, with debug info, module signing and
#          subsystems a router lab never loads (storage, RAID, MTD, wireless, LSMs...) turned off.
# Cache:   ${ONIONCTL_KERNEL_CACHE:-/var/cache/onionctl/uml}/<source version>-<hash>/, the hash
#          covering the config section below (between the >>> and <<< lines) and the base config:
#          the kernel is built once per machine and rebuilt only when one of them changes. A lock
#          (flock) keeps two builds from racing.
# Time:    about 22 minutes on 2 cores from nothing (docs/kernels.md); 0.4 s when cached.
#
# Needs root to install the Debian packages it uses when they are missing (CI runs as root).
set -eu

CACHE=${ONIONCTL_KERNEL_CACHE:-/var/cache/onionctl/uml}
SRC_PKG=linux-source-6.12
JOBS=${ONIONCTL_KERNEL_JOBS:-$(nproc)}
say() { echo "uml-kernel: $*" >&2; }

need=""
for p in $SRC_PKG build-essential bc bison flex xz-utils kmod user-mode-linux libssl-dev libelf-dev util-linux; do
  dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || need="$need $p"
done
if [ -n "$need" ]; then
  if [ "$(id -u)" != 0 ]; then
    say "missing Debian packages:$need; run as root: apt-get install$need"
    exit 1
  fi
  say "installing$need"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

version=$(dpkg-query -W -f '${Version}' $SRC_PKG)
tarball=
for t in /usr/src/linux-source-6.12*.tar.xz; do [ -e "$t" ] && { tarball=$t; break; }; done
base_config=$(mktemp)
trap 'rm -f "$base_config"' EXIT
linux.uml --showconfig > "$base_config" 2>/dev/null || /usr/bin/linux.uml --showconfig > "$base_config"
grep -q '^CONFIG_UML=y' "$base_config" || { say "linux.uml --showconfig did not print a UML config"; exit 1; }
hash=$(sed -n '/^# >>> config/,/^# <<< config/p' "$0" | cat - "$base_config" | sha256sum | cut -c1-12)
key="$CACHE/$version-$hash"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

if [ -x "$key/linux.uml" ] && [ -f "$key/release" ] && [ -f "$key/modules/$(cat "$key/release")/modules.dep" ]; then
  say "cached: $key/linux.uml ($(cat "$key/release"))"
  echo "$key/linux.uml"
  exit 0
fi

start=$(date +%s)
# The source tree is kept per source version: a rebuild after a config change is incremental.
work="$CACHE/build-$version"
rm -rf "$key" "$work/out" "$work/modroot"
if [ ! -f "$work/.unpacked" ]; then
  rm -rf "$work"
  mkdir -p "$work"
  say "unpacking $tarball ($version) in $work"
  tar -C "$work" -xf "$tarball"
  touch "$work/.unpacked"
fi
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'linux-source-*' | head -n 1)
cp "$base_config" "$src/.config"
cd "$src"

# >>> config: what shapes the kernel; a change here changes the cache key and rebuilds it
cfg() { ./scripts/config --file .config "$@"; }
# Identity of the build: a release of its own, so it never collides with a Debian package's modules.
cfg --set-str LOCALVERSION "-onionctl" --disable LOCALVERSION_AUTO
# What onionctl needs on modern routers.
cfg --module XFRM_INTERFACE \
    --module NF_TABLES --enable NF_TABLES_INET --enable NF_TABLES_IPV4 --enable NF_TABLES_IPV6 \
    --module NFT_NAT --module NFT_MASQ --module NFT_CT --module NFT_REJECT --module NFT_XFRM \
    --module NFT_LOG --module NFT_LIMIT --module NFT_COMPAT --module NFT_FIB_IPV4 --module NFT_FIB_INET \
    --module NF_NAT --module NF_CONNTRACK --module INET_ESP --module INET6_ESP --module XFRM_USER \
    --module NETFILTER_XT_MATCH_POLICY
# No debug info, no BTF, no module signing (Debian's config names its own certificates).
cfg --disable DEBUG_INFO --enable DEBUG_INFO_NONE --disable DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT \
    --disable DEBUG_INFO_BTF --disable DEBUG_INFO_REDUCED --disable DEBUG_INFO_COMPRESSED \
    --disable MODULE_SIG --disable MODULE_SIG_ALL --set-str MODULE_SIG_KEY "" \
    --set-str SYSTEM_TRUSTED_KEYS "" --set-str SYSTEM_REVOCATION_KEYS "" \
    --disable SECURITY_LOCKDOWN_LSM --disable IMA --disable EVM
# UML network transports that need libraries Debian's build has and this one does not.
cfg --disable UML_NET_VDE --disable UML_NET_PCAP
# Subsystems a router lab never loads: each only costs build time.
for sym in MD MTD SCSI IIO ATM CAN NFC MPLS OPENVSWITCH IP_DCCP CAIF VSOCKETS TARGET_CORE \
    6LOWPAN IEEE802154 BT WLAN WIRELESS CFG80211 MAC80211 ISDN HAMRADIO WAN NET_DSA INFINIBAND \
    XFS_FS BTRFS_FS OCFS2_FS NFS_FS NFSD CEPH_FS CIFS SMB_SERVER GFS2_FS F2FS_FS JFS_FS REISERFS_FS \
    NILFS2_FS UBIFS_FS SQUASHFS EROFS_FS NTFS3_FS HFSPLUS_FS HFS_FS UDF_FS ISO9660_FS FAT_FS \
    SECURITY_SELINUX SECURITY_SMACK SECURITY_TOMOYO SECURITY_APPARMOR SECURITY_LANDLOCK \
    SOUND SND STAGING KUNIT LATENCYTOP RAID6_PQ_BENCHMARK \
    IP_VS IP_SCTP RDS TIPC L2TP BATMAN_ADV 9P_FS NET_9P AFS_FS AF_RXRPC BLK_DEV_NBD BLK_DEV_DRBD \
    BLK_DEV_RBD ZRAM BCACHE BLK_DEV_NVME NVME_TARGET NVME_FABRICS; do
  cfg --disable "$sym"
done

make ARCH=um olddefconfig >&2
# <<< config

# Everything the lab needs must have survived olddefconfig.
missing=""
for sym in XFRM_INTERFACE XFRM_USER INET_ESP NF_TABLES NF_TABLES_IPV4 NF_TABLES_INET NFT_NAT NFT_MASQ \
    NFT_CT NFT_XFRM NF_NAT NETFILTER_XT_MATCH_POLICY IP_NF_IPTABLES IP_NF_NAT IP_NF_MANGLE IP_NF_RAW \
    NETFILTER_XT_TARGET_TCPMSS NETFILTER_XT_MATCH_COMMENT NETFILTER_XT_MATCH_CONNTRACK HOSTFS VETH \
    BRIDGE DUMMY NET_NS CRYPTO_GCM CRYPTO_SEQIV CRYPTO_ECHAINIV CRYPTO_CBC CRYPTO_HMAC CRYPTO_SHA1 \
    CRYPTO_AUTHENC CRYPTO_DRBG_MENU PACKET UNIX INET XFRM_STATISTICS; do
  grep -Eq "^CONFIG_$sym=(y|m)$" .config || missing="$missing $sym"
done
if [ -n "$missing" ]; then
  say "the 6.12 config lacks:$missing"
  exit 1
fi

say "building with $JOBS jobs"
make ARCH=um -j"$JOBS" linux modules >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; exit 1; }
release=$(make -s ARCH=um kernelrelease)
mkdir -p "$work/out/modules"
make ARCH=um INSTALL_MOD_PATH="$work/modroot" modules_install >>"$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log" >&2; exit 1; }
mv "$work/modroot/lib/modules/$release" "$work/out/modules/$release"
rm -f "$work/out/modules/$release/build" "$work/out/modules/$release/source"
cp linux "$work/out/linux.uml"
cp .config "$work/out/config"
echo "$release" > "$work/out/release"
echo "$version" > "$work/out/source-version"
"$work/out/linux.uml" --version >/dev/null 2>&1 || { say "the built kernel does not run"; exit 1; }
cd /
mv "$work/out" "$key"
rm -rf "$work/modroot"
ln -sfn "$(basename "$key")" "$CACHE/6.12"
say "built $release in $(( $(date +%s) - start )) s: $key/linux.uml"
echo "$key/linux.uml"
