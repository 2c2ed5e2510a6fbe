#!/bin/sh
# onionctl lab: manual end-to-end check, run INSIDE the UML guest as root.
# Not used by the runtime or the tests; see docs/lab-uml.md ("Hand check").
#
# Builds, with shell + iproute2 only: a bridge with one veth per node, nodes
# A (client), OR1, OR2, OR3 (exit) and B (server) in their own namespaces, the
# 3-mix nested ESP circuit of /work/shared/XFRM-FACTS.md ("One working
# circuit"), SNAT at the exit, an iptables `-m policy --pol ipsec` rule; then
# pings B from A through the circuit while tcpdump watches the wire between
# OR1 and OR2, logs in to an sshd in B through the circuit, runs node -e, and
# removes everything again. Lab addresses only: 198.51.100.0/24, 100.64.0.0/10.
#
# Run it from the host with a booted guest, e.g.
#   node --input-type=module -e "import fs from 'node:fs'; import {attachGuest} from './dist/src/lab/uml.js';
#     const g = await attachGuest(process.argv[1]);
#     const r = await g.exec(['sh', '-s'], {stdin: fs.readFileSync('src/lab/guest/handcheck-circuit.sh', 'utf8'), timeoutMs: 600000});
#     console.log(r.stdout, r.stderr, r.exitCode)" /var/tmp/onionctl-lab/<id>
# Keys come from /dev/urandom into 0600 batch files and reach `ip -batch -` on
# stdin; they never appear on a command line.
set -eu
umask 077
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
echo "scratch $T"
now() { read -r UP _ < /proc/uptime; echo "[$UP] $*"; }
now start

# ---- underlay: bridge br0 in the guest root ns, one veth per node
A=198.51.100.10; OR1=198.51.100.11; OR2=198.51.100.12; OR3=198.51.100.13; B=198.51.100.20
AC1=100.64.0.1; AC2=100.64.0.2; AC3=100.64.0.3
{
echo "link add br0 type bridge"
echo "link set br0 up"
for n in A OR1 OR2 OR3 B; do
  echo "netns add $n"
  echo "link add v-$n type veth peer name eth0 netns $n"
  echo "link set v-$n master br0 up"
  echo "link set v-$n type bridge_slave flood off"
done
} | ip -batch -
for n in A:$A OR1:$OR1 OR2:$OR2 OR3:$OR3 B:$B; do
  name=${n%%:*}; addr=${n#*:}
  printf 'link set lo up\nlink set eth0 up\naddr add %s/24 dev eth0\n' "$addr" | ip -n "$name" -batch -
done
ip -n A addr add $AC1/32 dev lo
ip -n A addr add $AC2/32 dev lo
ip -n A addr add $AC3/32 dev lo
for n in OR1 OR2 OR3; do ip netns exec $n sysctl -qw net.ipv4.ip_forward=1; done
now underlay

# ---- SAs: name src dst spi; same SPI and key at both ends
key() { od -An -tx1 -N20 /dev/urandom | tr -d ' \n'; }
SAS="
ovA1 $A $OR1 0x1001 A OR1
ov1A $OR1 $A 0x1002 OR1 A
ov12 $OR1 $OR2 0x1003 OR1 OR2
ov21 $OR2 $OR1 0x1004 OR2 OR1
ov23 $OR2 $OR3 0x1005 OR2 OR3
ov32 $OR3 $OR2 0x1006 OR3 OR2
t1 $AC1 $OR1 0x2001 A OR1
t1r $OR1 $AC1 0x2002 OR1 A
t2 $AC2 $OR2 0x2003 A OR2
t2r $OR2 $AC2 0x2004 OR2 A
t3 $AC3 $OR3 0x2005 A OR3
t3r $OR3 $AC3 0x2006 OR3 A
"
for n in A OR1 OR2 OR3; do : > "$T/$n.batch"; done
echo "$SAS" | while read -r name src dst spi e1 e2; do
  [ -n "$name" ] || continue
  k=$(key)
  line="xfrm state add src $src dst $dst proto esp spi $spi reqid ${spi#0x} mode tunnel replay-window 32 aead rfc4106(gcm(aes)) 0x$k 128"
  echo "$line" >> "$T/$e1.batch"; echo "$line" >> "$T/$e2.batch"
  echo "$name $src $dst $spi" >> "$T/sas"
done
# tmpl NAME -> "tmpl src .. dst .. proto esp reqid .. mode tunnel"
tmpl() { while read -r n s d spi; do if [ "$n" = "$1" ]; then echo "tmpl src $s dst $d proto esp reqid ${spi#0x} mode tunnel level required"; fi; done < "$T/sas"; }
pol() { # pol NS "selector dir X" name...
  ns=$1; sel=$2; shift 2; t=""
  for x; do t="$t $(tmpl "$x")"; done
  echo "xfrm policy add $sel$t" >> "$T/$ns.batch"
}
pol A "src $AC3/32 dst $B/32 dir out priority 100" t3 t2 t1 ovA1
pol A "src $B/32 dst $AC3/32 dir in priority 100" t3r t2r t1r ov1A
echo "xfrm policy add src 0.0.0.0/0 dst $B/32 dir out priority 1000 action block" >> "$T/A.batch"
pol OR1 "src $AC2/32 dst $OR2/32 proto esp dir fwd" t1 ovA1
pol OR1 "src $AC2/32 dst $OR2/32 proto esp dir out" ov12
pol OR1 "src $OR2/32 dst $AC2/32 proto esp dir fwd" ov21
pol OR1 "src $OR2/32 dst $AC2/32 proto esp dir out" t1r ov1A
pol OR2 "src $AC3/32 dst $OR3/32 proto esp dir fwd" t2 ov12
pol OR2 "src $AC3/32 dst $OR3/32 proto esp dir out" ov23
pol OR2 "src $OR3/32 dst $AC3/32 proto esp dir fwd" ov32
pol OR2 "src $OR3/32 dst $AC3/32 proto esp dir out" t2r ov21
pol OR3 "src $AC3/32 dst 0.0.0.0/0 dir fwd" t3 ov23
pol OR3 "src 0.0.0.0/0 dst $AC3/32 dir out" t3r ov32
echo "route add $B/32 via $OR1 src $AC3 mtu 1278 advmss 1238" >> "$T/A.batch"
echo "route add $AC1/32 via $A" >> "$T/OR1.batch"
echo "route add $AC2/32 via $A" >> "$T/OR1.batch"
echo "route add $AC2/32 via $OR1" >> "$T/OR2.batch"
echo "route add $AC3/32 via $OR1" >> "$T/OR2.batch"
echo "route add $AC3/32 via $OR2" >> "$T/OR3.batch"
for n in A OR1 OR2 OR3; do ip -n $n -batch - < "$T/$n.batch"; done
rm -f "$T"/*.batch
now xfrm-configured

# ---- exit NAT + ipsec policy match (iptables is iptables-legacy via PATH)
ip netns exec OR3 iptables-restore <<EOR
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s $AC3/32 -m policy --dir out --pol none -m comment --comment "onion exit" -j SNAT --to-source $OR3
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -s $AC3/32 -m policy --dir in --pol ipsec --proto esp -j ACCEPT
-A FORWARD -d $AC3/32 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
COMMIT
EOR
ip netns exec OR3 iptables -V
now iptables

# ---- capture the wire between OR1 and OR2 (bridge-side veth of OR2)
tcpdump -n -i v-OR2 -l -c 4 esp > "$T/wire.txt" 2> "$T/wire.err" &
TD=$!
ip netns exec B tcpdump -n -i eth0 -l -c 2 icmp > "$T/b.txt" 2> "$T/b.err" &
TB=$!
while ! grep -q listening "$T/wire.err" "$T/b.err" 2>/dev/null || [ "$(grep -l listening "$T/wire.err" "$T/b.err" | wc -l)" != 2 ]; do sleep 0.1; done
now tcpdump-ready
ip netns exec A ping -c 1 -W 5 $B
now ping-done
wait $TD $TB || true
echo "--- wire (OR1<->OR2, both ways):"; cat "$T/wire.txt"
echo "--- at B:"; cat "$T/b.txt"
echo "--- OR3 counters:"; ip netns exec OR3 iptables -t nat -vnL POSTROUTING | sed -n 3p; ip netns exec OR3 iptables -vnL FORWARD | sed -n 3,4p
echo "--- xfrm stats A:"; ip netns exec A sh -c 'grep -v " 0$" /proc/net/xfrm_stat || true'

# ---- sshd in B, ssh from A through the circuit
ssh-keygen -q -t ed25519 -N '' -f "$T/hostkey"
ssh-keygen -q -t ed25519 -N '' -f "$T/id"
cp "$T/id.pub" "$T/authorized_keys"
cat > "$T/sshd_config" <<EOS
ListenAddress $B
HostKey $T/hostkey
PidFile $T/sshd.pid
AuthorizedKeysFile $T/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
EOS
ip netns exec B /usr/sbin/sshd -f "$T/sshd_config" -o LogLevel=VERBOSE -E "$T/sshd.log"
now sshd-started
# shellcheck disable=SC2016 # expanded on B, not here
ip netns exec A ssh -n -i "$T/id" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
  -o LogLevel=ERROR -o ConnectTimeout=20 root@$B 'echo ssh-ok from $(hostname) $SSH_CONNECTION'
now ssh-done
kill "$(cat "$T/sshd.pid")"

# ---- node in the guest
ip netns exec A node -e 'console.log("node", process.version, require("os").release())'
now node-done
for n in A OR1 OR2 OR3 B; do ip netns delete $n; done
ip link delete br0
now end
