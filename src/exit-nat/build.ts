/**
 * Exit NAT and the firewall rules onionctl needs. Like Tor's ExitPolicy, the exit carries a
 * circuit's traffic only to destinations (and ports) its `allow` list names; everything else from
 * the circuit's address is dropped. All rules live in onionctl's own chains (iptables) or its own
 * table (nftables); see render/iptables.ts and render/nft.ts.
 */
import { cidrContains, cidrOverlaps, hostCidr, type Cidr } from '../net/addr.js';
import type { FilterRule, SnatRule } from '../model/config.js';
import type { RouterNode } from '../topology/net.js';

/** A mix forwards only the inner ESP packets of its circuits, both ways. */
export function mixFirewall(circuit: string, hop: number, nextA: number, next: number): FilterRule[] {
  return [
    { src: hostCidr(nextA), dst: hostCidr(next), proto: 'esp', action: 'accept', comment: `circuit ${circuit} hop ${hop} forward` },
    { src: hostCidr(next), dst: hostCidr(nextA), proto: 'esp', action: 'accept', comment: `circuit ${circuit} hop ${hop} reverse` },
  ];
}

export function exitFirewall(circuit: string, r: RouterNode, a: number, dests: Cidr[]): { snat: SnatRule[]; forward: FilterRule[] } {
  const exit = r.exit;
  if (!exit) throw new Error(`router ${r.name} is not an exit`);
  const src = hostCidr(a);
  const forward: FilterRule[] = [];
  for (const d of dests) {
    for (const rule of exit.allow) {
      if (!cidrOverlaps(rule.to, d)) continue;
      // the narrower of the two prefixes
      const dst = cidrContains(rule.to, d) ? d : rule.to;
      forward.push({
        src,
        dst,
        proto: rule.proto,
        ...(rule.ports ? { ports: rule.ports } : {}),
        action: 'accept',
        comment: `circuit ${circuit} exit policy`,
      });
    }
  }
  forward.push({ src, dst: { base: 0, len: 0 }, proto: 'any', action: 'drop', comment: `circuit ${circuit} exit policy: everything else` });
  for (const d of dests) {
    forward.push({ src: d, dst: src, proto: 'any', established: true, action: 'accept', comment: `circuit ${circuit} replies` });
  }
  return {
    snat: [{ src, outIf: exit.iface.name, to: exit.addr, comment: `circuit ${circuit} exit SNAT` }],
    forward,
  };
}
