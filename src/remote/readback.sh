# shellcheck shell=sh
# onionctl's read-back: everything onionctl compares on a router, in one shell, one section per
# kind, each after a line "@@onionctl@@ NAME" (src/remote/read.ts parses it). Sent on standard
# input of `sh -s`, after a header that onionctl writes:
#   set -- KEY PATH KEY PATH ...   the sysctls to read (key, and its file under /proc/sys)
#   ONIONCTL_XFRM_STAT=0|1         also print /proc/net/xfrm_stat
# `ip -s xfrm state` prints keys: onionctl parses them in memory into fingerprints and never
# stores, logs or prints this output.
# Every process started counts on a small router (and a large fraction of a second in an
# emulated one): shell builtins and `case` where they do, the legacy tables only when needed.
export LC_ALL=C
: "${ONIONCTL_XFRM_STAT:=0}"
M='@@onionctl@@'
NL='
'

echo "$M clock"
# the router's clock, in the zone `ip -s xfrm state` prints SA add/use times in
date '+%Y-%m-%d %H:%M:%S'
echo "$M xfrmState"
ip -s xfrm state || echo "@@onionctl-fail@@"
echo "$M xfrmPolicy"
ip xfrm policy || echo "@@onionctl-fail@@"
echo "$M routes"
ip route show table main || echo "@@onionctl-fail@@"
echo "$M addresses"
ip -4 addr show dev lo || echo "@@onionctl-fail@@"

echo "$M iptables"
# which iptables holds onionctl's chains; else the one in use (iptables-nft warns when legacy
# tables exist); its name tells which restore to use
a=; b=; ra=1; rb=1; v=
if command -v iptables-save >/dev/null 2>&1; then a=$(iptables-save 2>/dev/null); ra=$?; fi
if [ $ra = 0 ]; then case "$a" in ':ONIONCTL-'*|*"${NL}:ONIONCTL-"*) v=iptables ;; esac; fi
if [ -z "$v" ] && command -v iptables-legacy-save >/dev/null 2>&1; then b=$(iptables-legacy-save 2>/dev/null); rb=$?; fi
if [ -z "$v" ] && [ $rb = 0 ]; then case "$b" in ':ONIONCTL-'*|*"${NL}:ONIONCTL-"*) v=iptables-legacy ;; esac; fi
if [ -z "$v" ] && [ $ra = 0 ]; then case "$a" in *"legacy tables present"*) ;; *) v=iptables ;; esac; fi
if [ -z "$v" ] && [ $rb = 0 ]; then v=iptables-legacy; fi
if [ -z "$v" ] && [ $ra = 0 ]; then v=iptables; fi
if [ "$v" = iptables ]; then echo "@@variant iptables"; printf "%s\n" "$a"
elif [ -n "$v" ]; then echo "@@variant iptables-legacy"; printf "%s\n" "$b"; fi

echo "$M nft"
if command -v nft >/dev/null 2>&1 && out=$(nft list ruleset 2>/dev/null); then echo "@@nft ok"; printf "%s\n" "$out"; else echo "@@nft none"; fi

echo "$M sysctls"
while [ $# -ge 2 ]; do
  # `read` is a builtin: no process per key
  val=; read -r val 2>/dev/null < "$2"; printf '%s=%s\n' "$1" "$val"
  shift 2
done

if [ "$ONIONCTL_XFRM_STAT" = 1 ]; then
  echo "$M xfrmStat"
  cat /proc/net/xfrm_stat 2>/dev/null || true
fi
echo "$M end"
