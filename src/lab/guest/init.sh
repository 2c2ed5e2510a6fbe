#!/bin/sh
# onionctl lab: PID 1 inside the User-Mode Linux guest.
#
# The host copies this directory to <lab dir>/guest/ and boots
#   linux.uml ... rootfstype=hostfs rootflags=/ rw init=<lab dir>/guest/init.sh
# so the guest's root file system IS the host's / (hostfs, read-write).
#
# Until the guest mounts its own proc and sysfs below, /proc and /sys are the
# HOST's directories seen through hostfs: nothing may touch them before that.
# Everything here avoids process starts where a shell builtin will do, because
# every fork+exec costs tens of milliseconds in UML.
#
# Files (all under <lab dir>):
#   guest/boot.env   written by the host: NODE, MODULES_EARLY, MODULES, MODROOT,
#                    TOKEN, MASK_ROOT
#   guest/modprobe.sh  the kernel's modprobe helper (adds -d MODROOT)
#   guest/modprobe.env written by the host: CRYPTO_ALIASES (see modprobe.sh)
#   guest/agent.mjs  the request agent (started below, watches spool/)
#   guest/bin/       iptables* -> *-legacy symlinks, first in PATH
#   guest/mr/        module root for modprobe -d (lib/modules/<ver> symlinks)
#   agent.exit       written here if the agent dies (its exit status)
G=${0%/*}
LAB=${G%/*}
export PATH="$G/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export HOME=/root LANG=C.UTF-8 TERM=dumb
umask 022

say() { echo "onionctl-init: $*"; }
uptime_now() { read -r UP _ < /proc/uptime; }

# Power off through the guest kernel. sysrq is only used once the guest's own
# /proc is mounted (otherwise /proc/sysrq-trigger would be the host's file).
PROC_OK=0
halt_guest() {
	if [ "$PROC_OK" = 1 ]; then
		echo o > /proc/sysrq-trigger
	else
		# systemctl with -ff calls reboot(2) itself without talking to any init.
		poweroff -f -f
	fi
	# sysrq power-off runs from a work queue; wait for it here.
	while :; do sleep 1; done
}

fatal() {
	say "FATAL: $*"
	echo "init: $*" > "$LAB/agent.exit"
	halt_guest
}

# proc, sysfs and /run must be the guest's own: a failure here is fatal, since
# the host's files would otherwise be written through hostfs.
mount -t proc -o nosuid,nodev,noexec proc /proc || fatal "cannot mount proc"
PROC_OK=1
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys || fatal "cannot mount sysfs"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run || fatal "cannot mount tmpfs on /run"
# /dev is the guest's devtmpfs (CONFIG_DEVTMPFS_MOUNT); add pts and shm.
# /run/sshd is sshd's privilege-separation directory.
mkdir -p /dev/pts /dev/shm /run/sshd /run/netns /run/lab/tmp
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
echo onionctl-lab > /proc/sys/kernel/hostname
uptime_now; say "mounted at uptime $UP"

# shellcheck source=/dev/null
. "$G/boot.env"

# Hide the host's /root (dotfiles, ~/.ssh) from guest programs running as root.
if [ "${MASK_ROOT:-0}" = 1 ]; then
	mount -t tmpfs -o mode=0700,nosuid,nodev tmpfs /root || fatal "cannot mount tmpfs on /root"
fi

# The kernel's own on-demand module requests (crypto templates such as
# rfc4106/gcm/seqiv, net-pf-*, xt matches) go through this wrapper, which adds
# -d <module root>.
echo "$G/modprobe.sh" > /proc/sys/kernel/modprobe

# drbg (with sha512) must be there before any ESP state can be created.
# shellcheck disable=SC2086
modprobe -a -d "$MODROOT" $MODULES_EARLY || say "WARNING: modprobe (early) failed: $MODULES_EARLY"
# shellcheck disable=SC2086
modprobe -a -d "$MODROOT" $MODULES || say "WARNING: modprobe failed for some of: $MODULES"
uptime_now; say "modules loaded at uptime $UP"

# Instantiate the ESP AEAD once now: the first ESP state otherwise pays for
# seeding the DRBG and for the crypto API's template look-ups (seconds in UML).
# Throw-away random key (fed on stdin through the here-document, never on a command line),
# guest root namespace, deleted at once.
WARM_KEY=$(od -An -tx1 -N20 /dev/urandom | tr -d ' \n')
ip -batch - <<EOF_WARM || say "WARNING: ESP warm-up failed (no ESP in this kernel?)"
xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x1 mode tunnel aead rfc4106(gcm(aes)) 0x$WARM_KEY 128
xfrm state delete src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x1
EOF_WARM
unset WARM_KEY
uptime_now; say "ESP warmed up at uptime $UP"

ip link set lo up

# The agent reports readiness itself (it writes <lab dir>/ready).
"$NODE" "$G/agent.mjs" "$LAB" &
AGENT=$!
# PID 1 also reaps orphans: dash's wait reaps any child while it waits.
wait "$AGENT"
RC=$?
if [ "$RC" != 0 ]; then
	say "agent exited with status $RC"
	echo "$RC" > "$LAB/agent.exit"
else
	say "halt requested"
fi
sync
halt_guest
