/**
 * The observation model: which address pairs appear in CLEAR outer headers, where, for every
 * circuit of a plan. Pure.
 *
 * The model is not written down from the paper; it is derived by walking one packet per circuit
 * and destination, both ways, through the planned NodeConfigs (policies, SAs, routes, SNAT), the
 * way the kernel would (see ../shared/XFRM-FACTS.md):
 *  - a sender looks up ONE `out` policy and wraps the packet in its templates, innermost first;
 *  - a receiver decrypts while the outer header is ESP addressed to one of its own addresses and
 *    it holds the SA; then checks the `fwd` (or `in`) policy against the SAs the packet came
 *    through, outermost last; then looks up `out` again toward the next hop;
 *  - a packet that leaves in clear through an SNAT rule is rewritten, and the reply is un-NATed
 *    (conntrack) before routing.
 * So a plan whose policies would drop or leak a packet shows up here, instead of being assumed
 * away. What the walk records:
 *  - per observation point (each wire between two nodes, each exit's outside link, each
 *    destination server), the outer header of every packet on it: the address pair, classified;
 *  - per router, what the router itself learns: the outer headers of what it sends and receives,
 *    every header it exposes by decrypting, every layer it adds, and NAT rewrites.
 *
 * The row format is meant to be compared with a capture (tcpdump on the bridge side of a wire):
 * see rowKey() and compareObservations().
 */
import { cidrContainsAddr, formatDest, formatIPv4, parseCidr, parseIPv4, type Cidr } from '../net/addr.js';
import type { NodeConfig, XfrmPolicy, XfrmTmpl } from '../model/config.js';
import type { State } from '../state/model.js';
import { linkKey, type Net } from '../topology/net.js';
import { OnionctlError } from '../util/errors.js';

/** What an address is, from the point of view of anonymity. */
export type AddrClass =
  /** a client's real (underlay) address */
  | 'client-real'
  /** a client's per-hop address A_ci */
  | 'client-hop'
  /** a router's underlay address */
  | 'router'
  /** an exit's outside (SNAT) address, when it differs from its underlay address */
  | 'exit-outside'
  /** a circuit's destination */
  | 'destination'
  | 'unknown';

export type PointKind = 'wire' | 'outside' | 'server';

export interface ObservationPoint {
  /** "wire:alice~or1", "outside:or3", "server:203.0.113.80" */
  id: string;
  kind: PointKind;
  /** wire: its two nodes (sorted); outside: [exit]; server: [destination] */
  ends: string[];
  /** wire only: is it a declared overlay link (or client-entry link)? */
  overlay?: boolean;
}

/** One address pair seen in a clear outer header. */
export interface ObservedRow {
  circuit: string;
  srcClass: AddrClass;
  dstClass: AddrClass;
  /** dotted quad; a destination prefix wider than /32 is written as the prefix */
  src: string;
  dst: string;
  /** who holds the address: "alice", "alice/A_c2", "or1", "or3/outside", "203.0.113.80" */
  srcName: string;
  dstName: string;
  /** esp: only the outer header is readable; clear: the whole packet is */
  proto: 'esp' | 'clear';
  /** ESP SPI as 0x........ (what tcpdump prints as ESP(spi=0x...)) */
  spi?: string;
  /** how many ESP layers wrap the payload in this packet (not visible on the wire; the model's) */
  layers?: number;
}

export type LearnHow = 'wire' | 'decrypted' | 'encapsulated' | 'nat';

/** A header a router learns, and how. */
export interface LearnedRow extends ObservedRow {
  how: LearnHow;
}

export interface WalkError {
  circuit: string;
  destination: string;
  direction: 'forward' | 'reverse';
  node: string;
  message: string;
}

/** One wire transmission of the walk, for structural checks (see invariants.ts). */
export interface Transmission {
  circuit: string;
  direction: 'forward' | 'reverse';
  point: string;
  from: string;
  to: string;
  /** outermost first */
  headers: { src: number; dst: number; esp: boolean }[];
}

export interface ObservationTable {
  format: 'onionctl-observations/v1';
  points: ObservationPoint[];
  /** keyed by point id, rows in first-seen order, without duplicates */
  observations: Record<string, ObservedRow[]>;
  /** keyed by router name: what each router learns */
  routers: Record<string, LearnedRow[]>;
  /** packets the plan's configuration would not carry, with where and why */
  errors: WalkError[];
  transmissions: Transmission[];
}

interface Layer {
  src: number;
  dst: number;
  esp?: { spi: number; reqid: number };
}

type Packet = Layer[];

interface Owner {
  node: string;
  cls: AddrClass;
  name: string;
}

/** Address book: who holds which address, for classification. */
export class AddressBook {
  private readonly byAddr = new Map<number, Owner>();
  /** destination prefixes: representative address -> prefix */
  private readonly dests = new Map<number, { cidr: Cidr; label: string }>();

  constructor(net: Net, state: State) {
    const set = (a: number, o: Owner) => {
      if (!this.byAddr.has(a)) this.byAddr.set(a, o);
    };
    for (const c of net.clients.values()) set(c.underlay.addr, { node: c.name, cls: 'client-real', name: c.name });
    for (const c of Object.values(state.circuits)) {
      c.addrs.forEach((a, i) => {
        let n: number;
        try {
          n = parseIPv4(a);
        } catch {
          return;
        }
        set(n, { node: c.client, cls: 'client-hop', name: `${c.client}/A_c${i + 1}` });
      });
      for (const t of c.to) {
        let d: Cidr;
        try {
          d = parseCidr(t);
        } catch {
          continue;
        }
        const rep = representative(d);
        if (!this.dests.has(rep)) this.dests.set(rep, { cidr: d, label: formatDest(d) });
      }
    }
    for (const r of net.routers.values()) {
      set(r.underlay.addr, { node: r.name, cls: 'router', name: r.name });
      if (r.exit && r.exit.addr !== r.underlay.addr) set(r.exit.addr, { node: r.name, cls: 'exit-outside', name: `${r.name}/outside` });
    }
  }

  owner(a: number): Owner | undefined {
    const o = this.byAddr.get(a);
    if (o) return o;
    const d = this.dests.get(a);
    if (d) return { node: `server:${d.label}`, cls: 'destination', name: d.label };
    return undefined;
  }

  classify(a: number): AddrClass {
    return this.owner(a)?.cls ?? 'unknown';
  }

  /** as written in rows: dotted quad, or the prefix for a destination wider than /32 */
  label(a: number): string {
    const d = this.dests.get(a);
    if (d && !this.byAddr.has(a)) return d.label;
    return formatIPv4(a);
  }

  /** Classifies a dotted quad as a capture prints it (for the lab). */
  classifyText(addr: string): { cls: AddrClass; name: string } {
    let n: number;
    try {
      n = parseIPv4(addr);
    } catch {
      return { cls: 'unknown', name: addr };
    }
    const o = this.owner(n);
    if (o) return { cls: o.cls, name: o.name };
    for (const d of this.dests.values()) if (cidrContainsAddr(d.cidr, n)) return { cls: 'destination', name: d.label };
    return { cls: 'unknown', name: addr };
  }
}

/** The address a walk uses for a destination prefix: the prefix's first host (itself for a /32). */
export function representative(d: Cidr): number {
  if (d.len >= 31) return d.base;
  return (d.base + 1) >>> 0;
}


export function wirePointId(a: string, b: string): string {
  return `wire:${linkKey(a, b)}`;
}

const MAX_TRANSMISSIONS = 64;

class WalkFailed extends OnionctlError {
  readonly kind = 'uncaught' as const;
}

/**
 * Walks every circuit of `state` (those named in net.circuits) through `configs`.
 * `configs` is what buildConfigs / computePlan produced for the same net and state.
 */
export function observe(net: Net, state: State, configs: Map<string, NodeConfig>): ObservationTable {
  const book = new AddressBook(net, state);
  const points = new Map<string, ObservationPoint>();
  const observations: Record<string, ObservedRow[]> = {};
  const seenRows = new Map<string, Set<string>>();
  const routers: Record<string, LearnedRow[]> = {};
  const seenLearned = new Map<string, Set<string>>();
  const errors: WalkError[] = [];
  const transmissions: Transmission[] = [];

  // local addresses per node
  const local = new Map<string, Set<number>>();
  for (const n of net.nodes.values()) local.set(n.name, new Set([n.underlay.addr]));
  for (const r of net.routers.values()) if (r.exit) local.get(r.name)!.add(r.exit.addr);
  for (const cfg of configs.values()) for (const a of cfg.addresses) local.get(cfg.node)?.add(a.addr);
  const underlayOwner = new Map<number, string>();
  for (const n of net.nodes.values()) if (!underlayOwner.has(n.underlay.addr)) underlayOwner.set(n.underlay.addr, n.name);
  const isLocal = (node: string, a: number) => local.get(node)?.has(a) ?? false;

  const addPoint = (p: ObservationPoint) => {
    if (!points.has(p.id)) {
      points.set(p.id, p);
      observations[p.id] = [];
      seenRows.set(p.id, new Set());
    }
  };
  // every overlay link, exit outside link and destination is an observation point, even if no
  // circuit uses it (then its row list is empty)
  for (const [a, b] of net.links) addPoint({ id: wirePointId(a, b), kind: 'wire', ends: [a, b].sort(), overlay: true });
  for (const r of net.routers.values()) if (r.exit) addPoint({ id: `outside:${r.name}`, kind: 'outside', ends: [r.name] });

  const row = (circuit: string, l: Layer, layers: number): ObservedRow => {
    const so = book.owner(l.src);
    const dO = book.owner(l.dst);
    return {
      circuit,
      srcClass: so?.cls ?? 'unknown',
      dstClass: dO?.cls ?? 'unknown',
      src: book.label(l.src),
      dst: book.label(l.dst),
      srcName: so?.name ?? '?',
      dstName: dO?.name ?? '?',
      proto: l.esp ? 'esp' : 'clear',
      ...(l.esp ? { spi: `0x${l.esp.spi.toString(16).padStart(8, '0')}` } : {}),
      layers,
    };
  };
  const espDepth = (p: Packet) => p.filter((l) => l.esp).length;

  const observeAt = (pointId: string, circuit: string, p: Packet) => {
    const r = row(circuit, p[0]!, espDepth(p));
    const key = `${circuit}|${rowKey(r)}`;
    const s = seenRows.get(pointId)!;
    if (s.has(key)) return;
    s.add(key);
    observations[pointId]!.push(r);
  };
  const learn = (node: string, circuit: string, l: Layer, p: Packet, how: LearnHow) => {
    if (!net.routers.has(node)) return;
    const r: LearnedRow = { ...row(circuit, l, espDepth(p)), how };
    const key = `${circuit}|${rowKey(r)}|${how}`;
    let s = seenLearned.get(node);
    if (!s) {
      seenLearned.set(node, (s = new Set()));
      routers[node] = [];
    }
    if (s.has(key)) return;
    s.add(key);
    routers[node]!.push(r);
  };

  for (const def of net.circuits) {
    const c = state.circuits[def.name];
    if (!c) continue;
    for (const to of c.to) {
      let dest: Cidr;
      try {
        dest = parseCidr(to);
      } catch {
        continue;
      }
      const D = representative(dest);
      const dLabel = formatDest(dest);
      const serverPoint = `server:${dLabel}`;
      addPoint({ id: serverPoint, kind: 'server', ends: [dLabel] });
      const conntrack = new Map<string, number>();
      let direction: 'forward' | 'reverse' = 'forward';
      let sent = 0;

      const fail = (node: string, message: string): never => {
        errors.push({ circuit: def.name, destination: dLabel, direction, node, message });
        throw new WalkFailed(message);
      };
      const cfg = (node: string) => configs.get(node) ?? fail(node, `no configuration for ${node}`);
      const fmt = (l: Layer) => `${book.label(l.src)} -> ${book.label(l.dst)}${l.esp ? ` (ESP spi 0x${l.esp.spi.toString(16)})` : ''}`;

      const lookup = (node: string, dir: XfrmPolicy['dir'], l: Layer): XfrmPolicy | undefined => {
        const ps = cfg(node).policies.filter(
          (p) => p.dir === dir && cidrContainsAddr(p.src, l.src) && cidrContainsAddr(p.dst, l.dst) && (p.proto !== 'esp' || l.esp !== undefined),
        );
        ps.sort((a, b) => a.priority - b.priority);
        return ps[0];
      };

      const checkInbound = (node: string, dir: 'fwd' | 'in', l: Layer, secpath: XfrmTmpl[]) => {
        const pol = lookup(node, dir, l);
        if (!pol) {
          if (secpath.length > 0) fail(node, `no "${dir}" policy matches ${fmt(l)}, which came through ${secpath.length} ESP layer(s); the kernel drops it (XfrmInNoPols)`);
          return;
        }
        if (pol.action === 'block') fail(node, `"${dir}" policy blocks ${fmt(l)} (${pol.comment})`);
        const have = [...secpath].reverse();
        const same =
          have.length === pol.tmpls.length && pol.tmpls.every((t, i) => t.src === have[i]!.src && t.dst === have[i]!.dst && t.reqid === have[i]!.reqid);
        if (!same) {
          fail(
            node,
            `"${dir}" policy (${pol.comment}) wants ${pol.tmpls.length} layer(s) but ${fmt(l)} came through ${secpath.length}; the kernel drops it (XfrmInTmplMismatch)`,
          );
        }
      };

      const checkNested = (node: string, l: Layer, secpath: XfrmTmpl[], verified: number): number => {
        const pol = lookup(node, 'in', l);
        const why = 'kernels with xfrm_interface loaded (Linux 6.4+, 6.1.36+, 5.10.186+) drop it';
        if (!pol) fail(node, `no "in" policy matches ${fmt(l)}, an ESP packet that came through ${secpath.length} ESP layer(s); ${why} (XfrmInNoPols)`);
        if (pol!.action === 'block') fail(node, `"in" policy blocks ${fmt(l)} (${pol!.comment})`);
        const k = kernelTemplatesMatch(pol!.tmpls, secpath, verified);
        if (k === undefined) {
          fail(node, `"in" policy (${pol!.comment}) does not match the ${secpath.length} layer(s) ${fmt(l)} came through; ${why} (XfrmInTmplMismatch)`);
        }
        return k!;
      };

      const nextHop = (node: string, dst: number): string => {
        const direct = underlayOwner.get(dst);
        if (direct !== undefined && direct !== node) return direct;
        const routes = cfg(node).routes.filter((r) => cidrContainsAddr(r.dst, dst)).sort((a, b) => b.dst.len - a.dst.len);
        const r = routes[0];
        if (r) {
          const via = underlayOwner.get(r.via);
          if (via === undefined) fail(node, `route to ${book.label(dst)} goes via ${formatIPv4(r.via)}, which is no node's underlay address`);
          return via!;
        }
        const me = net.routers.get(node);
        if (me?.exit && dst === D) return serverPoint;
        return fail(node, `no route to ${book.label(dst)}`);
      };

      /** a node sends `p` (already past any fwd check) */
      const send = (node: string, p: Packet): void => {
        const pol = lookup(node, 'out', p[0]!);
        if (pol) {
          if (pol.action === 'block') fail(node, `"out" policy blocks ${fmt(p[0]!)} (${pol.comment})`);
          for (const t of pol.tmpls) {
            const st = cfg(node).states.find((s) => s.src === t.src && s.dst === t.dst && s.reqid === t.reqid);
            if (!st) fail(node, `"out" policy (${pol.comment}) needs an SA ${formatIPv4(t.src)} -> ${formatIPv4(t.dst)} reqid ${t.reqid} that ${node} does not have (XfrmOutNoStates)`);
            p = [{ src: t.src, dst: t.dst, esp: { spi: st!.spi, reqid: st!.reqid } }, ...p];
            learn(node, def.name, p[0]!, p, 'encapsulated');
          }
        } else if (p[0]!.esp === undefined) {
          const rule = cfg(node).firewall.snat.find((r) => cidrContainsAddr(r.src, p[0]!.src));
          if (rule) {
            conntrack.set(`${p[0]!.dst}|${rule.to}`, p[0]!.src);
            p = [{ ...p[0]!, src: rule.to }, ...p.slice(1)];
            learn(node, def.name, p[0]!, p, 'nat');
          }
        }
        transmit(node, nextHop(node, p[0]!.dst), p);
      };

      const transmit = (from: string, to: string, p: Packet): void => {
        if (++sent > MAX_TRANSMISSIONS) fail(from, 'the packet loops');
        let pointId: string;
        if (to === serverPoint) {
          pointId = `outside:${from}`;
          addPoint({ id: pointId, kind: 'outside', ends: [from] });
        } else if (from === serverPoint) {
          pointId = `outside:${to}`;
          addPoint({ id: pointId, kind: 'outside', ends: [to] });
        } else {
          pointId = wirePointId(from, to);
          addPoint({ id: pointId, kind: 'wire', ends: [from, to].sort(), overlay: net.adj.get(from)?.has(to) ?? false });
        }
        observeAt(pointId, def.name, p);
        transmissions.push({
          circuit: def.name,
          direction,
          point: pointId,
          from,
          to,
          headers: p.map((l) => ({ src: l.src, dst: l.dst, esp: l.esp !== undefined })),
        });
        learn(from, def.name, p[0]!, p, 'wire');
        if (to === serverPoint) {
          observeAt(serverPoint, def.name, p);
          server(p);
          return;
        }
        learn(to, def.name, p[0]!, p, 'wire');
        receive(to, p);
      };

      const server = (p: Packet): void => {
        const l = p[0]!;
        if (l.esp || l.dst !== D) fail(serverPoint, `the destination received ${fmt(l)}, not a clear packet addressed to it`);
        // the reply
        direction = 'reverse';
        const reply: Packet = [{ src: D, dst: l.src }];
        observeAt(serverPoint, def.name, reply);
        const exit = underlayOwner.get(l.src) ?? [...net.routers.values()].find((r) => r.exit?.addr === l.src)?.name;
        if (!exit) fail(serverPoint, `the destination cannot send its reply to ${book.label(l.src)}: no node holds that address`);
        transmit(serverPoint, exit!, reply);
      };

      const receive = (node: string, p: Packet): void => {
        const secpath: XfrmTmpl[] = [];
        let verified = 0;
        while (p[0]!.esp && isLocal(node, p[0]!.dst)) {
          const l = p[0]!;
          // xfrm_interface's ESP handler (Linux 6.4+, 6.1.36+, 5.10.186+): an ESP packet that
          // already carries a secpath is checked against "in" policies before it is decrypted
          if (secpath.length > 0) verified = checkNested(node, l, secpath, verified);
          const st = cfg(node).states.find((s) => s.dst === l.dst && s.spi === l.esp!.spi);
          if (!st) fail(node, `has no SA to decrypt ${fmt(l)} (XfrmInNoStates)`);
          if (st!.src !== l.src) fail(node, `SA spi 0x${l.esp!.spi.toString(16)} is from ${formatIPv4(st!.src)}, the packet from ${book.label(l.src)}`);
          secpath.push({ src: st!.src, dst: st!.dst, reqid: st!.reqid });
          p = p.slice(1);
          if (p.length === 0) fail(node, 'decrypted an empty packet');
          learn(node, def.name, p[0]!, p, 'decrypted');
        }
        // conntrack: un-NAT a reply before routing
        if (!p[0]!.esp) {
          const orig = conntrack.get(`${p[0]!.src}|${p[0]!.dst}`);
          if (orig !== undefined && isLocal(node, p[0]!.dst)) {
            p = [{ ...p[0]!, dst: orig }, ...p.slice(1)];
            learn(node, def.name, p[0]!, p, 'nat');
          }
        }
        if (isLocal(node, p[0]!.dst)) {
          checkInbound(node, 'in', p[0]!, secpath);
          if (p[0]!.esp) fail(node, `${fmt(p[0]!)} is ESP for ${node} but it has no SA for it`);
          // delivered: the client got the reply, or the forward packet ended at a node
          if (direction === 'forward') fail(node, `the forward packet was delivered locally at ${node} instead of reaching the destination`);
          if (node !== c.client) fail(node, `the reply was delivered to ${node}, not to ${c.client}`);
          return;
        }
        checkInbound(node, 'fwd', p[0]!, secpath);
        send(node, p);
      };

      // ---- the walk: the client originates a packet to the destination
      try {
        const client = c.client;
        const ccfg = cfg(client);
        const routes = ccfg.routes.filter((r) => cidrContainsAddr(r.dst, D)).sort((a, b) => b.dst.len - a.dst.len);
        const route = routes[0];
        const ak = parseIPv4(c.addrs[c.addrs.length - 1]!);
        if (route && route.src !== undefined && route.src !== ak) {
          // two routes to one destination: the kernel keeps one; say so instead of walking another circuit
          fail(client, `the client's route to ${dLabel} sends from ${book.label(route.src)}, not from this circuit's A_c${c.addrs.length} ${book.label(ak)}`);
        }
        const src = route?.src ?? net.clients.get(client)?.underlay.addr ?? fail(client, `unknown client ${client}`);
        send(client, [{ src, dst: D }]);
      } catch (e) {
        if (!(e instanceof WalkFailed)) throw e;
      }
    }
  }

  const sortedPoints = [...points.values()].sort((a, b) => pointOrder(a) - pointOrder(b) || a.id.localeCompare(b.id));
  const obs: Record<string, ObservedRow[]> = {};
  for (const p of sortedPoints) obs[p.id] = observations[p.id]!;
  const rs: Record<string, LearnedRow[]> = {};
  for (const r of net.routers.values()) if (routers[r.name]) rs[r.name] = routers[r.name]!;
  return { format: 'onionctl-observations/v1', points: sortedPoints, observations: obs, routers: rs, errors, transmissions };
}

function pointOrder(p: ObservationPoint): number {
  return p.kind === 'wire' ? 0 : p.kind === 'outside' ? 1 : 2;
}

/** What identifies a row on the wire: addresses, protocol and SPI (what a capture shows). */
export function rowKey(r: Pick<ObservedRow, 'src' | 'dst' | 'proto' | 'spi'>): string {
  return `${r.src}>${r.dst} ${r.proto}${r.spi ? ` ${r.spi}` : ''}`;
}

/**
 * Compares observed rows (e.g. parsed from tcpdump on a wire) with the model's, per point.
 * Circuits, classes and names are ignored: a capture knows only addresses, protocol and SPI.
 */
export function compareObservations(
  expected: Record<string, readonly Pick<ObservedRow, 'src' | 'dst' | 'proto' | 'spi'>[]>,
  observed: Record<string, readonly Pick<ObservedRow, 'src' | 'dst' | 'proto' | 'spi'>[]>,
): { point: string; missing: string[]; unexpected: string[] }[] {
  const out: { point: string; missing: string[]; unexpected: string[] }[] = [];
  for (const point of new Set([...Object.keys(expected), ...Object.keys(observed)])) {
    if (!(point in observed)) continue; // not captured there
    const e = new Set((expected[point] ?? []).map(rowKey));
    const o = new Set((observed[point] ?? []).map(rowKey));
    const missing = [...e].filter((k) => !o.has(k));
    const unexpected = [...o].filter((k) => !e.has(k));
    if (missing.length || unexpected.length) out.push({ point, missing, unexpected });
  }
  return out;
}

function table(rows: string[][], indent: string): string[] {
  const w: number[] = [];
  for (const r of rows) r.forEach((c, i) => (w[i] = Math.max(w[i] ?? 0, c.length)));
  return rows.map((r) => indent + r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(w[i]!))).join('  ').trimEnd());
}

/** "client-real alice"; just "destination" when the name is the address itself */
function who(cls: AddrClass, name: string, addr: string): string {
  return name === addr ? cls : `${cls} ${name}`;
}

function rowCells(r: ObservedRow): string[] {
  return [
    `${r.src}`,
    who(r.srcClass, r.srcName, r.src),
    '->',
    `${r.dst}`,
    who(r.dstClass, r.dstName, r.dst),
    r.proto === 'esp' ? `esp ${r.spi}${r.layers !== undefined ? ` (${r.layers} layer${r.layers === 1 ? '' : 's'})` : ''}` : 'clear',
  ];
}

/**
 * The observation table as text: one block per observation point, one line per row. Used by
 * `onionctl audit`, and by the lab to print what it captured in the same layout.
 */
export function formatObservations(
  observations: Record<string, readonly ObservedRow[]>,
  opts: { circuit?: string; indent?: string; showEmpty?: boolean } = {},
): string {
  const indent = opts.indent ?? '  ';
  const out: string[] = [];
  for (const [point, rows0] of Object.entries(observations)) {
    const rows = opts.circuit ? rows0.filter((r) => r.circuit === opts.circuit) : rows0;
    if (rows.length === 0 && !opts.showEmpty) continue;
    out.push(`${indent}${point}`);
    if (rows.length === 0) out.push(`${indent}    (nothing)`);
    out.push(...table(rows.map(rowCells), indent + '    '));
  }
  return out.join('\n') + (out.length ? '\n' : '');
}

/** What routers learn, as text, one block per router. */
export function formatLearned(routers: Record<string, readonly LearnedRow[]>, opts: { circuit?: string; indent?: string; operatorOf?: (r: string) => string } = {}): string {
  const indent = opts.indent ?? '  ';
  const out: string[] = [];
  for (const [router, rows0] of Object.entries(routers)) {
    const rows = opts.circuit ? rows0.filter((r) => r.circuit === opts.circuit) : rows0;
    if (rows.length === 0) continue;
    out.push(`${indent}${router}${opts.operatorOf ? ` (operator ${opts.operatorOf(router)})` : ''}`);
    // one line per address pair, listing how it was learned
    const byPair = new Map<string, { r: LearnedRow; how: Set<LearnHow> }>();
    for (const r of rows) {
      const k = `${r.src}>${r.dst}`;
      const e = byPair.get(k);
      if (e) e.how.add(r.how);
      else byPair.set(k, { r, how: new Set([r.how]) });
    }
    out.push(
      ...table(
        [...byPair.values()].map(({ r, how }) => [r.src, who(r.srcClass, r.srcName, r.src), '->', r.dst, who(r.dstClass, r.dstName, r.dst), [...how].join(', ')]),
        indent + '    ',
      ),
    );
  }
  return out.join('\n') + (out.length ? '\n' : '');
}

/**
 * The kernel's inbound template check (net/xfrm/xfrm_policy.c: the loop over xfrm_policy_ok() in
 * __xfrm_policy_check(), then secpath_has_nontransport()), for tunnel-mode SAs only, which is all
 * onionctl installs. Templates are listed innermost first, the secpath outermost first; entries
 * below `verified` were matched by an earlier check and may be skipped (commit 1f8b6df6a997,
 * `verified_cnt`). Returns the new verified count, or undefined where the kernel rejects.
 */
export function kernelTemplatesMatch(tmpls: readonly XfrmTmpl[], secpath: readonly XfrmTmpl[], verified: number): number | undefined {
  const same = (t: XfrmTmpl, s: XfrmTmpl) => t.src === s.src && t.dst === s.dst && t.reqid === s.reqid;
  let k = 0;
  for (let i = tmpls.length - 1; i >= 0; i--) {
    let next = -1;
    for (let idx = k; idx < secpath.length; idx++) {
      if (same(tmpls[i]!, secpath[idx]!)) {
        next = idx + 1;
        break;
      }
      // a tunnel-mode entry that does not match stops the search, unless it was verified before
      if (idx >= verified) break;
    }
    if (next < 0) return undefined;
    k = next;
  }
  // every tunnel-mode entry from k on must have been matched
  return k < secpath.length ? undefined : k;
}
