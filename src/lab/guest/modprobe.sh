#!/bin/sh
# onionctl lab: /proc/sys/kernel/modprobe inside the UML guest.
#
# The kernel runs this for its on-demand module requests, as
# `modprobe -q -- NAME` (e.g. "crypto-gcm(aes)", "xfrm-type-2-50",
# "net-pf-10"). The UML modules live outside /lib/modules, so modprobe is
# pointed at the module root built by the host under <lab dir>/guest/mr.
#
# Process starts are expensive in UML (~0.1-0.5 s each) and the crypto API asks
# for every algorithm name it cannot find, most of which are template
# compositions no module provides ("crypto-rfc4106(gcm(aes))-all", ...).
# Requests for crypto-* names that are not aliases in modules.alias are
# answered "no" right here, with shell builtins only; the list of crypto
# aliases is written by the host into modprobe.env, with the names of the
# built-in modules (for which the answer is "yes" without any work).
#
# Every request is logged to /run/lab/modprobe.log.
G=${0%/*}
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
CRYPTO_ALIASES=
BUILTIN_MODULES=
# shellcheck source=/dev/null
. "$G/modprobe.env"
for NAME; do :; done
case ${NAME:-} in
crypto-jitterentropy_rng | jitterentropy_rng)
	# The Jitter RNG's start-up health test always fails in UML (its clock
	# ticks in 10 ms steps: "host not compliant with requirements: 2") and
	# spends 1-2 s doing so; the DRBG then continues without it anyway.
	echo "$* -> jitterentropy is useless in UML, skipped" >> /run/lab/modprobe.log
	exit 1
	;;
crypto-*)
	case $CRYPTO_ALIASES in
	*" $NAME "*) ;;
	*)
		echo "$* -> not a module alias, skipped" >> /run/lab/modprobe.log
		exit 1
		;;
	esac
	;;
esac
case $BUILTIN_MODULES in
*" $NAME "*)
	# Built into the kernel (e.g. cryptomgr): nothing to load.
	echo "$* -> built in" >> /run/lab/modprobe.log
	exit 0
	;;
esac
echo "$*" >> /run/lab/modprobe.log
exec modprobe -d "$G/mr" "$@"
