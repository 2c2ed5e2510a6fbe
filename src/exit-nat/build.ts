/**
 * Exit NAT and the firewall rules onionctl needs. Like Tor's ExitPolicy, the exit carries a
 * circuit's traffic only to destinations (and ports) its `allow` list names; everything else from
 * the circuit's address is dropped. All rules live in onionctl's own chains (iptables) or its own
 * table (nftables); see render/iptables.ts and render/nft.ts.
 */
import { ANY, cidrContains, cidrOverlaps, hostCidr, type Cidr } from '../net/addr.js';
import type { FilterRule, SnatRule } from '../model/config.js';
import type { RouterNode } from '../topology/net.js';

/**
 * A mix forwards the inner ESP packets of its circuits: what arrived through the overlay SA from
 * one neighbour and leaves through the overlay SA to another. One rule per pair of overlay links,
 * however many circuits use them, so a packet's cost in this chain does not grow with the
 * circuits: the per-circuit selectors are the kernel's `fwd` policies, which are checked (hashed)
 * before the forward hook. Exit traffic of a circuit leaves in clear, so it never matches here.
 */
export function mixLinkRule(from: string, to: string, inReqid: number, outReqid: number): FilterRule {
  return { src: ANY, dst: ANY, proto: 'esp', ipsecIn: inReqid, ipsecOut: outReqid, action: 'accept', comment: `circuits ${from} -> ${to} (overlay to overlay)` };
}

/**
 * The exit's rules per overlay link to a previous hop, around the per-circuit exit policies:
 *   head: replies into the circuits (conntrack knows the connection and the packet leaves through
 *         the overlay to `prev`), then the later packets of connections a circuit's exit policy
 *         already let out (arrived through the overlay from `prev`): the per-circuit list is
 *         walked only by the first packet of a connection;
 *   tail: nothing else enters the circuits toward `prev`: a connection opened from outside is
 *         dropped (before, the chain's accept policy let it through to the client).
 */
export function exitLinkRules(prev: string, inReqid: number, outReqid: number): { head: FilterRule[]; tail: FilterRule[] } {
  return {
    head: [
      { src: ANY, dst: ANY, proto: 'any', established: true, ipsecOut: outReqid, action: 'accept', comment: `exit: replies into the circuits toward ${prev}` },
      { src: ANY, dst: ANY, proto: 'any', established: true, ipsecIn: inReqid, action: 'accept', comment: `exit: connections the circuits from ${prev} opened` },
    ],
    tail: [{ src: ANY, dst: ANY, proto: 'any', ipsecOut: outReqid, action: 'drop', comment: `exit: nothing else into the circuits toward ${prev}` }],
  };
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
  // replies: exitLinkRules' head, one rule per link instead of one per circuit and destination
  forward.push({ src, dst: ANY, proto: 'any', action: 'drop', comment: `circuit ${circuit} exit policy: everything else` });
  return {
    snat: [{ src, outIf: exit.iface.name, to: exit.addr, comment: `circuit ${circuit} exit SNAT` }],
    forward,
  };
}
