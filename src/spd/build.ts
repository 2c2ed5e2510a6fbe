/**
 * The paper's scheme in Linux terms: from the network and the state (paths, addresses, SAs) to
 * every node's states, policies, addresses, routes and sysctls. Pure.
 *
 * Facts this encodes (checked in a real kernel, see ../shared/XFRM-FACTS.md):
 *  - the client sends through ONE policy with k+1 templates, innermost first
 *    (T(A,ck) ... T(A,c1), then the overlay T^O(A,c1)); the kernel does not look the policy up
 *    again after a tunnel layer;
 *  - a mix's `fwd` policy lists its own telescope SA and the overlay SA the packet arrived on,
 *    in that order; its `out` policy adds the overlay toward the next hop;
 *  - the reverse path checks only the overlay at a mix (`fwd`) and adds the mix's reverse
 *    telescope layer plus the overlay back (`out`); the client's `in` policy checks all k+1;
 *  - outbound templates are `level required` (the kernel refuses optional ones there), and a
 *    lower-precedence block policy per destination makes a circuit fail closed;
 *  - every SA is installed on both of its ends with the same SPI and key;
 *  - kernels with xfrm_interface loaded (Linux 6.4+, and 6.1.36+ / 5.10.186+ by backport) also
 *    check every ESP packet that arrives already carrying a secpath against `dir in` policies
 *    (xfrmi_input -> __xfrm_policy_check), and drop it when none matches: so every intermediate
 *    packet gets one, listing the layers removed so far (docs/kernels.md). Kernels without the
 *    check never consult them;
 *  - every SA carries soft and hard lifetimes, a replay window and (overlay links) ESN, from
 *    keys/lifetimes.ts; circuits may ask for TFC padding on chosen layers.
 */
import { ANY, hostCidr, type Cidr } from '../net/addr.js';
import { saOptions, type SaKind } from '../keys/lifetimes.js';
import { PROFILES, mssFor, nestedMtu } from '../keys/profiles.js';
import {
  PRIORITY_BLOCK,
  PRIORITY_CIRCUIT,
  PRIORITY_NESTED,
  type FilterRule,
  type NodeConfig,
  type XfrmPolicy,
  type XfrmState,
  type XfrmTmpl,
} from '../model/config.js';
import { formatSaId } from '../keys/sa-id.js';
import type { SaRecord, State } from '../state/model.js';
import { linkKey, type Net } from '../topology/net.js';
import { parseCidr, parseIPv4 } from '../net/addr.js';
import { exitFirewall, exitLinkRules, mixLinkRule } from '../exit-nat/build.js';

interface Sa {
  rec: SaRecord;
  src: number;
  dst: number;
  id: string;
  comment: string;
  kind: SaKind;
  tfcpad?: number;
}

function tmpl(sa: Sa): XfrmTmpl {
  return { src: sa.src, dst: sa.dst, reqid: sa.rec.reqid };
}

export function buildConfigs(net: Net, state: State): Map<string, NodeConfig> {
  const profile = PROFILES[net.crypto];
  const out = new Map<string, NodeConfig>();
  for (const n of net.nodes.values()) {
    out.set(n.name, {
      node: n.name,
      kind: n.kind,
      underlay: n.underlay.name,
      states: [],
      policies: [],
      addresses: [],
      routes: [],
      sysctls: [],
      firewall: { backend: n.kind === 'router' ? n.nat : net.nat, snat: [], forward: [] },
    });
  }
  const cfg = (name: string) => out.get(name)!;
  const addrOf = (name: string) => net.nodes.get(name)!.underlay.addr;

  const install = (sa: Sa, ...nodes: string[]) => {
    // replay window, ESN and soft/hard lifetimes per kind of SA: keys/lifetimes.ts
    const opts = saOptions(sa.kind, net.crypto);
    const st: XfrmState = {
      src: sa.src,
      dst: sa.dst,
      spi: sa.rec.spi,
      reqid: sa.rec.reqid,
      kind: sa.kind,
      replayWindow: opts.replayWindow,
      esn: opts.esn,
      lifetime: opts.lifetime,
      ...(sa.tfcpad !== undefined ? { tfcpad: sa.tfcpad } : {}),
      profile: net.crypto,
      key: { id: sa.id, epoch: sa.rec.epoch, spi: sa.rec.spi, ...(sa.rec.nonce !== undefined ? { nonce: sa.rec.nonce } : {}) },
      comment: sa.comment,
    };
    for (const n of nodes) cfg(n).states.push(st);
    // make-before-break: the previous epoch stays on both ends until its grace period ends
    for (const old of sa.rec.retiring ?? []) {
      const prev: XfrmState = { ...st, spi: old.spi, key: { id: sa.id, epoch: old.epoch, spi: old.spi, ...(old.nonce !== undefined ? { nonce: old.nonce } : {}) }, comment: `${sa.comment} (previous key, retiring)` };
      for (const n of nodes) cfg(n).states.push(prev);
    }
  };

  // TFC padding on overlay links, asked for by circuits that run over them: an overlay SA is
  // shared by every circuit on its link, so the largest size asked for wins (both directions)
  const overlayPad = new Map<string, number>();
  for (const def of net.circuits) {
    const c = state.circuits[def.name];
    if (!def.tfcpad?.overlay || !c) continue;
    const path = [c.client, ...c.hops];
    for (let i = 0; i + 1 < path.length; i++) {
      const lk = linkKey(path[i]!, path[i + 1]!);
      overlayPad.set(lk, Math.max(overlayPad.get(lk) ?? 0, def.tfcpad.size));
    }
  }
  const padOf = (lk: string) => {
    const n = overlayPad.get(lk);
    return n !== undefined ? { tfcpad: n } : {};
  };

  // overlay SAs, both directions, on both ends
  for (const [k, l] of Object.entries(state.links)) {
    if (!net.nodes.has(l.a) || !net.nodes.has(l.b)) throw new Error(`state link ${k} names a node that is not in the topology`);
    const pad = padOf(linkKey(l.a, l.b));
    install({ rec: l.ab, src: addrOf(l.a), dst: addrOf(l.b), id: formatSaId({ kind: 'overlay', from: l.a, to: l.b }), comment: `overlay ${l.a}->${l.b}`, kind: 'overlay', ...pad }, l.a, l.b);
    install({ rec: l.ba, src: addrOf(l.b), dst: addrOf(l.a), id: formatSaId({ kind: 'overlay', from: l.b, to: l.a }), comment: `overlay ${l.b}->${l.a}`, kind: 'overlay', ...pad }, l.a, l.b);
  }
  // the overlay SA's template, once per direction of a link (a circuit names each several times)
  const overlayTmpls = new Map<string, Map<string, XfrmTmpl>>();
  const overlay = (from: string, to: string): XfrmTmpl => {
    let byTo = overlayTmpls.get(from);
    if (!byTo) overlayTmpls.set(from, (byTo = new Map()));
    let t = byTo.get(to);
    if (!t) {
      const l = state.links[linkKey(from, to)];
      if (!l) throw new Error(`no overlay link ${from} - ${to} in the state`);
      const rec = l.a === from ? l.ab : l.ba;
      t = { src: addrOf(from), dst: addrOf(to), reqid: rec.reqid };
      byTo.set(to, t);
    }
    return t;
  };

  const routersSeen = new Set<string>();
  // firewall rules per overlay link, not per circuit (exit-nat/build.ts): keyed for dedup, in a
  // fixed order so that plans stay byte-identical
  const mixLinks = new Map<string, Map<string, FilterRule>>();
  const exitLinks = new Map<string, Map<string, { head: FilterRule[]; tail: FilterRule[] }>>();
  const once = <T>(m: Map<string, Map<string, T>>, node: string, key: string, make: () => T) => {
    let byKey = m.get(node);
    if (!byKey) m.set(node, (byKey = new Map()));
    if (!byKey.has(key)) byKey.set(key, make());
  };
  for (const def of net.circuits) {
    const c = state.circuits[def.name];
    if (!c) throw new Error(`circuit ${def.name} has no path in the state`);
    const k = c.hops.length;
    const client = net.clients.get(c.client)!;
    const A = c.addrs.map(parseIPv4);
    const dests: Cidr[] = c.to.map(parseCidr);
    // TFC padding on the telescope layers the circuit asks for (layer i = hop i's SAs, both ways)
    const pad = (i: number) => (def.tfcpad?.telescope.includes(i + 1) ? { tfcpad: def.tfcpad.size } : {});
    const tf: Sa[] = c.hops.map((h, i) => ({
      rec: c.fwd[i]!,
      src: A[i]!,
      dst: addrOf(h),
      id: formatSaId({ kind: 'telescope', circuit: def.name, generation: c.generation, hop: i + 1, dir: 'fwd' }),
      comment: `circuit ${def.name} hop ${i + 1} forward`,
      kind: 'telescope',
      ...pad(i),
    }));
    const tr: Sa[] = c.hops.map((h, i) => ({
      rec: c.rev[i]!,
      src: addrOf(h),
      dst: A[i]!,
      id: formatSaId({ kind: 'telescope', circuit: def.name, generation: c.generation, hop: i + 1, dir: 'rev' }),
      comment: `circuit ${def.name} hop ${i + 1} reverse`,
      kind: 'telescope',
      ...pad(i),
    }));

    // ---- client
    const cc = cfg(client.name);
    for (let i = 0; i < k; i++) {
      install(tf[i]!, client.name, c.hops[i]!);
      install(tr[i]!, client.name, c.hops[i]!);
    }
    A.forEach((a, i) => cc.addresses.push({ addr: a, dev: 'lo', comment: `circuit ${def.name}: A_c${i + 1}` }));
    const entry = c.hops[0]!;
    const outTmpls = [...tf].reverse().map(tmpl).concat(overlay(client.name, entry));
    const inTmpls = [...tr].reverse().map(tmpl).concat(overlay(entry, client.name));
    const mtu = nestedMtu(profile, client.underlay.mtu, k + 1);
    for (const d of dests) {
      cc.policies.push(policy(ANY, d, 'out', PRIORITY_BLOCK, [], `circuit ${def.name}: fail closed`, 'block'));
      cc.policies.push(policy(hostCidr(A[k - 1]!), d, 'out', PRIORITY_CIRCUIT, outTmpls, `circuit ${def.name}: ${k} telescope layers + overlay`));
      cc.policies.push(policy(d, hostCidr(A[k - 1]!), 'in', PRIORITY_CIRCUIT, inTmpls, `circuit ${def.name}: replies, all layers`));
      cc.routes.push({
        dst: d,
        via: addrOf(entry),
        dev: client.underlay.name,
        src: A[k - 1]!,
        mtu,
        advmss: mssFor(mtu),
        ...(net.quickack ? { quickack: true } : {}),
        comment: `circuit ${def.name} via entry ${entry}`,
      });
    }

    // intermediate packets of the reply (xfrm_interface's check): before the client removes hop
    // j's reverse layer, the packet is ESP from OR_j to A_cj and carries the layers removed so
    // far, listed innermost first like the final policy
    for (let j = 0; j < k; j++) {
      const removed = [...tr.slice(0, j)].reverse().map(tmpl).concat(overlay(entry, client.name));
      cc.policies.push(
        policy(hostCidr(addrOf(c.hops[j]!)), hostCidr(A[j]!), 'in', PRIORITY_NESTED, removed, `circuit ${def.name}: nested reply layer ${j + 1} (xfrm_interface check)`, 'allow', 'esp'),
      );
    }
    // ---- mixes and exit
    for (let i = 0; i < k; i++) {
      const me = c.hops[i]!;
      const prev = i === 0 ? client.name : c.hops[i - 1]!;
      const rc = cfg(me);
      const r = net.routers.get(me)!;
      routersSeen.add(me);
      const viaPrev = (a: number, what: string) =>
        rc.routes.push({ dst: hostCidr(a), via: addrOf(prev), dev: r.underlay.name, ...(net.quickack ? { quickack: true } : {}), comment: `circuit ${def.name}: ${what} back via ${prev}` });
      if (i < k - 1) {
        const next = c.hops[i + 1]!;
        const fwdSel = { src: hostCidr(A[i + 1]!), dst: hostCidr(addrOf(next)) };
        const revSel = { src: hostCidr(addrOf(next)), dst: hostCidr(A[i + 1]!) };
        rc.policies.push(policy(fwdSel.src, fwdSel.dst, 'fwd', PRIORITY_CIRCUIT, [tmpl(tf[i]!), overlay(prev, me)], `circuit ${def.name} hop ${i + 1}: peel own layer + overlay from ${prev}`, 'allow', 'esp'));
        rc.policies.push(policy(fwdSel.src, fwdSel.dst, 'out', PRIORITY_CIRCUIT, [overlay(me, next)], `circuit ${def.name} hop ${i + 1}: overlay to ${next}`, 'allow', 'esp'));
        rc.policies.push(policy(revSel.src, revSel.dst, 'fwd', PRIORITY_CIRCUIT, [overlay(next, me)], `circuit ${def.name} hop ${i + 1}: replies from ${next}`, 'allow', 'esp'));
        rc.policies.push(policy(revSel.src, revSel.dst, 'out', PRIORITY_CIRCUIT, [tmpl(tr[i]!), overlay(me, prev)], `circuit ${def.name} hop ${i + 1}: add own layer + overlay to ${prev}`, 'allow', 'esp'));
        viaPrev(A[i]!, `A_c${i + 1}`);
        viaPrev(A[i + 1]!, `A_c${i + 2}`);
        once(mixLinks, me, `${prev}>${next}`, () => mixLinkRule(prev, next, overlay(prev, me).reqid, overlay(me, next).reqid));
        once(mixLinks, me, `${next}>${prev}`, () => mixLinkRule(next, prev, overlay(next, me).reqid, overlay(me, prev).reqid));
      } else {
        for (const d of dests) {
          rc.policies.push(policy(hostCidr(A[i]!), d, 'fwd', PRIORITY_CIRCUIT, [tmpl(tf[i]!), overlay(prev, me)], `circuit ${def.name} exit: peel own layer + overlay from ${prev}`));
          rc.policies.push(policy(d, hostCidr(A[i]!), 'out', PRIORITY_CIRCUIT, [tmpl(tr[i]!), overlay(me, prev)], `circuit ${def.name} exit: replies, own layer + overlay to ${prev}`));
        }
        viaPrev(A[i]!, `A_c${i + 1}`);
        once(exitLinks, me, prev, () => exitLinkRules(prev, overlay(prev, me).reqid, overlay(me, prev).reqid));
        const fw = exitFirewall(def.name, r, A[i]!, dests);
        rc.firewall.snat.push(...fw.snat);
        rc.firewall.forward.push(...fw.forward);
      }
      // intermediate packet (xfrm_interface's check): the overlay layer is off, and what is left
      // is ESP from A_ci to this mix, carrying the overlay SA it arrived on
      rc.policies.push(
        policy(hostCidr(A[i]!), hostCidr(addrOf(me)), 'in', PRIORITY_NESTED, [overlay(prev, me)], `circuit ${def.name} hop ${i + 1}: nested layer from ${prev} (xfrm_interface check)`, 'allow', 'esp'),
      );
    }
  }

  const sorted = <T>(m: Map<string, T> | undefined): T[] => [...(m ?? new Map<string, T>()).entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, v]) => v);
  for (const r of net.routers.values()) {
    const rc = cfg(r.name);
    const exits = sorted(exitLinks.get(r.name));
    rc.firewall.forward = [...sorted(mixLinks.get(r.name)), ...exits.flatMap((e) => e.head), ...rc.firewall.forward, ...exits.flatMap((e) => e.tail)];
    if (routersSeen.has(r.name)) {
      rc.sysctls.push({ key: 'net.ipv4.ip_forward', value: '1' });
      // loose reverse-path filtering: replies to A_ci come back on the interface that is not
      // the route to A_ci when paths are asymmetric
      rc.sysctls.push({ key: 'net.ipv4.conf.all.rp_filter', value: '2' });
      rc.sysctls.push({ key: `net.ipv4.conf.${r.underlay.name}.rp_filter`, value: '2' });
    }
  }
  return out;
}

function policy(
  src: Cidr,
  dst: Cidr,
  dir: XfrmPolicy['dir'],
  priority: number,
  tmpls: XfrmTmpl[],
  comment: string,
  action: XfrmPolicy['action'] = 'allow',
  proto?: 'esp',
): XfrmPolicy {
  return { src, dst, dir, priority, action, tmpls, comment, ...(proto ? { proto } : {}) };
}
