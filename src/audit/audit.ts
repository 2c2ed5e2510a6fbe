/**
 * `onionctl audit`, the pure part: from a network and a state (paths, A_ci, SAs) to who sees
 * what, and whether the paper's anonymity invariants hold. It audits what the STATE says; it
 * does not assume the path selector was right (a hand-edited or stale state is checked as is).
 *
 * Invariants:
 *  - path:       each circuit's path is structurally sound (known distinct routers, overlay
 *                neighbours, first hop an entry of the client, last hop an exit);
 *  - operators:  no circuit has two hops run by the same operator;
 *  - separation: no router, no operator (all its routers together) and no wire observer sees
 *                both the client's real address and the circuit's destination;
 *  - client-hidden: only the entry router learns the client's real address; the exit's outside
 *                link and the destination see neither it nor any A_ci (SNAT works);
 *  - destination-hidden: only the exit learns the destination; no overlay link shows it;
 *  - esp-only:   every overlay link carries only ESP between the underlay addresses of its two
 *                ends, with a layer for every hop still ahead (forward) or behind (replies);
 *  - delivery:   the planned policies carry a packet to the destination and the reply back.
 */
import { cidrContains, formatDest, formatIPv4, parseCidr, parseIPv4 } from '../net/addr.js';
import { droppedTraffic, trafficText } from '../topology/exit-policy.js';
import type { NodeConfig } from '../model/config.js';
import { PathSpace, constraintsFor } from '../pathselect/select.js';
import { buildConfigs } from '../spd/build.js';
import type { CircuitState, State } from '../state/model.js';
import { linkKey, type Net } from '../topology/net.js';
import { observe, type AddrClass, type ObservationTable, type ObservedRow } from './observe.js';

export type InvariantName = 'path' | 'operators' | 'separation' | 'client-hidden' | 'destination-hidden' | 'esp-only' | 'delivery';

export const INVARIANTS: readonly { name: InvariantName; description: string }[] = [
  { name: 'path', description: 'every circuit path is sound: distinct known routers, overlay neighbours, an entry of the client first, an exit last' },
  { name: 'operators', description: 'no circuit has two hops run by the same operator' },
  { name: 'separation', description: "no router, operator or wire observer sees both a client's real address and that circuit's destination" },
  { name: 'client-hidden', description: "only the entry router learns the client's real address; the exit's outside link and the destination see no client address" },
  { name: 'destination-hidden', description: 'only the exit router learns the destination; no overlay link carries it in a clear header' },
  { name: 'esp-only', description: 'every overlay link carries only ESP between its two underlay endpoints, every remaining layer encrypted' },
  { name: 'delivery', description: "the planned policies, SAs, routes and SNAT carry a packet to the destination and its reply back" },
];

export interface Violation {
  invariant: InvariantName;
  circuit: string;
  /** who: "router or1", "operator north", "wire alice~or1", "outside link of or3", "destination 203.0.113.80" */
  party: string;
  message: string;
}

export interface InvariantResult {
  name: InvariantName;
  description: string;
  ok: boolean;
  violations: Violation[];
}

export interface HopSummary {
  router: string;
  operator: string;
  country?: string;
  /** A_ci */
  addr: string;
  exit: boolean;
}

export interface CircuitSummary {
  name: string;
  client: string;
  clientAddr: string;
  hops: HopSummary[];
  to: string[];
  /** false when the path is too broken to walk (see the path invariant) */
  walked: boolean;
}

/** What one party learns about one circuit. */
export interface PartyView {
  circuit: string;
  kind: 'router' | 'operator' | 'point';
  party: string;
  /** the operator's routers that learned something, for kind operator */
  routers?: string[];
  seesClient: boolean;
  seesDestination: boolean;
  classes: AddrClass[];
  /** every address holder it learns about, by name */
  names: string[];
}

/** Traffic a circuit's exit would drop, by its allow list (the exit's firewall drops the rest). */
export interface ExitDrop {
  circuit: string;
  exit: string;
  destination: string;
  /** what the circuit says it carries ("udp 53"), or "unstated" (then all traffic is assumed) */
  traffic: string;
  /** what the exit drops of it: "udp, other protocols", "tcp 1-79,81-442,444-65535" */
  drops: string;
}

export interface AuditResult {
  format: 'onionctl-audit/v1';
  circuits: CircuitSummary[];
  table: ObservationTable;
  views: PartyView[];
  invariants: InvariantResult[];
  /** per circuit and destination, what its exit would drop; a circuit that states its traffic and loses some of it also fails the path invariant */
  exitDrops: ExitDrop[];
  ok: boolean;
}

function exitDropsOf(net: Net, state: State): ExitDrop[] {
  const out: ExitDrop[] = [];
  for (const def of net.circuits) {
    const c = state.circuits[def.name];
    const exit = c ? net.routers.get(c.hops[c.hops.length - 1]!) : undefined;
    if (!exit?.exit) continue;
    const traffic = def.traffic ?? { proto: 'any' as const };
    for (const d of def.to) {
      if (!exit.exit.allow.some((a) => cidrContains(a.to, d))) continue; // not this exit's destination at all: the path invariant says so
      const drops = droppedTraffic(exit.exit.allow, d, traffic);
      if (drops) out.push({ circuit: def.name, exit: exit.name, destination: formatDest(d), traffic: def.traffic ? trafficText(def.traffic) : 'unstated', drops });
    }
  }
  return out;
}

function structural(net: Net, state: State, c: CircuitState | undefined): string[] {
  if (!c) return ['has no path in the state'];
  const out: string[] = [];
  const client = net.clients.get(c.client);
  if (!client) out.push(`client ${c.client} is not in the topology`);
  c.hops.forEach((h, i) => {
    if (!net.routers.has(h)) out.push(`hop ${i + 1} ${h} is not a router of the topology`);
  });
  const dup = c.hops.filter((h, i) => c.hops.indexOf(h) !== i);
  if (dup.length) out.push(`router ${[...new Set(dup)].join(', ')} appears more than once on the path`);
  if (c.addrs.length !== c.hops.length) out.push(`has ${c.addrs.length} per-hop addresses for ${c.hops.length} hops`);
  for (const a of c.addrs) {
    try {
      parseIPv4(a);
    } catch {
      out.push(`per-hop address "${a}" is not an IPv4 address`);
    }
  }
  if (c.fwd.length !== c.hops.length || c.rev.length !== c.hops.length) out.push(`has ${c.fwd.length}/${c.rev.length} telescope SAs for ${c.hops.length} hops`);
  for (const t of c.to) {
    try {
      parseCidr(t);
    } catch {
      out.push(`destination "${t}" is not a prefix`);
    }
  }
  const seq = [c.client, ...c.hops];
  for (let i = 0; i + 1 < seq.length; i++) {
    const [a, b] = [seq[i]!, seq[i + 1]!];
    if (!net.nodes.has(a) || !net.nodes.has(b)) continue;
    if (!net.adj.get(a)?.has(b)) out.push(`${a} and ${b} are not overlay neighbours`);
    else if (!state.links[linkKey(a, b)]) out.push(`the state has no overlay SAs for ${a} - ${b}`);
  }
  const first = c.hops[0];
  if (client && first && net.routers.has(first) && !client.entry.includes(first)) out.push(`first hop ${first} is not an entry router of ${c.client}`);
  const last = c.hops[c.hops.length - 1];
  if (last && net.routers.has(last) && !net.routers.get(last)!.exit) out.push(`last hop ${last} is not an exit`);
  return out;
}

/** Is the path good enough for buildConfigs to build it (a softer test than `structural`)? */
function buildable(net: Net, state: State, c: CircuitState | undefined): boolean {
  if (!c || !net.clients.has(c.client)) return false;
  if (c.hops.some((h) => !net.routers.has(h))) return false;
  if (c.addrs.length !== c.hops.length || c.fwd.length !== c.hops.length || c.rev.length !== c.hops.length) return false;
  try {
    c.addrs.forEach(parseIPv4);
    c.to.forEach(parseCidr);
  } catch {
    return false;
  }
  const seq = [c.client, ...c.hops];
  for (let i = 0; i + 1 < seq.length; i++) if (!state.links[linkKey(seq[i]!, seq[i + 1]!)]) return false;
  return net.routers.get(c.hops[c.hops.length - 1]!)?.exit !== undefined;
}

/**
 * Audits `state` against `net`. `configs` (from computePlan) are used when given; otherwise they
 * are built here from the state with buildConfigs, for the circuits whose path can be built.
 */
export function auditState(net: Net, state: State, configs?: Map<string, NodeConfig>): AuditResult {
  const violations: Violation[] = [];
  const add = (invariant: InvariantName, circuit: string, party: string, message: string) => violations.push({ invariant, circuit, party, message });

  const circuits: CircuitSummary[] = [];
  const walkable = new Set<string>();
  for (const def of net.circuits) {
    const c = state.circuits[def.name];
    for (const why of structural(net, state, c)) add('path', def.name, 'state', `circuit ${def.name}: ${why}`);
    if (!c) continue;
    const ok = buildable(net, state, c);
    if (ok) walkable.add(def.name);
    circuits.push({
      name: def.name,
      client: c.client,
      clientAddr: net.clients.has(c.client) ? formatIPv4(net.clients.get(c.client)!.underlay.addr) : '?',
      hops: c.hops.map((h, i) => {
        const r = net.routers.get(h);
        return {
          router: h,
          operator: r?.operator ?? '?',
          ...(r?.country ? { country: r.country } : {}),
          addr: c.addrs[i] ?? '?',
          exit: i === c.hops.length - 1,
        };
      }),
      to: [...c.to],
      walked: ok,
    });
    // operators: from the state and the topology, whatever the selector would have done
    const byOp = new Map<string, string[]>();
    for (const h of c.hops) {
      const op = net.routers.get(h)?.operator;
      if (op === undefined) continue;
      byOp.set(op, [...(byOp.get(op) ?? []), h]);
    }
    let opsOk = true;
    for (const [op, rs] of byOp) {
      if (rs.length > 1) {
        opsOk = false;
        const roles = rs.map((r) => `${r} (hop ${c.hops.indexOf(r) + 1}${c.hops.indexOf(r) === 0 ? ', entry' : c.hops.indexOf(r) === c.hops.length - 1 ? ', exit' : ''})`);
        add('operators', def.name, `operator ${op}`, `circuit ${def.name}: operator ${op} runs ${rs.length} of its hops: ${roles.join(' and ')}`);
      }
    }
    // whatever else the selector demands (distinct countries or /16s when the circuit asks)
    if (opsOk && ok && structural(net, state, c).length === 0) {
      const why = new PathSpace(net, constraintsFor(net, def)).isEligible(c.hops);
      if (why) add('path', def.name, 'state', `circuit ${def.name}: the path selector would not choose this path: ${why}`);
    }
  }

  const sub: Net = { ...net, circuits: net.circuits.filter((c) => walkable.has(c.name)) };
  let cfgs = configs;
  if (!cfgs) {
    try {
      cfgs = buildConfigs(sub, state);
    } catch (e) {
      add('path', '*', 'state', `the state cannot be turned into router configuration: ${(e as Error).message}`);
      cfgs = new Map();
    }
  }
  const table = observe(sub, state, cfgs);

  for (const e of table.errors) {
    add('delivery', e.circuit, e.node.startsWith('server:') ? `destination ${e.destination}` : `router ${e.node}`, `circuit ${e.circuit} (${e.direction}, to ${e.destination}): at ${e.node}: ${e.message}`);
  }

  // per-circuit views
  const views: PartyView[] = [];
  const opOf = (r: string) => net.routers.get(r)?.operator ?? '?';
  for (const cs of circuits) {
    if (!cs.walked) continue;
    const c = state.circuits[cs.name]!;
    const dests = new Set(c.to.map((t) => formatDest(parseCidr(t))));
    const entry = c.hops[0]!;
    const exit = c.hops[c.hops.length - 1]!;
    const summarize = (rows: readonly ObservedRow[]) => {
      const mine = rows.filter((r) => r.circuit === cs.name);
      const classes = new Set<AddrClass>();
      const names = new Set<string>();
      let seesClient = false;
      let seesDestination = false;
      for (const r of mine) {
        for (const [a, cls, name] of [
          [r.src, r.srcClass, r.srcName],
          [r.dst, r.dstClass, r.dstName],
        ] as const) {
          classes.add(cls);
          names.add(name);
          if (a === cs.clientAddr) seesClient = true;
          if (dests.has(a)) seesDestination = true;
        }
      }
      return { any: mine.length > 0, seesClient, seesDestination, classes: [...classes].sort(), names: [...names].sort(), mine };
    };

    const opRows = new Map<string, { rows: ObservedRow[]; routers: string[] }>();
    for (const [router, rows] of Object.entries(table.routers)) {
      const s = summarize(rows);
      if (!s.any) continue;
      views.push({ circuit: cs.name, kind: 'router', party: router, seesClient: s.seesClient, seesDestination: s.seesDestination, classes: s.classes, names: s.names });
      const op = opOf(router);
      const e = opRows.get(op) ?? { rows: [], routers: [] };
      e.rows.push(...s.mine);
      e.routers.push(router);
      opRows.set(op, e);
      const who = `router ${router} (operator ${op})`;
      if (s.seesClient && s.seesDestination) add('separation', cs.name, `router ${router}`, `circuit ${cs.name}: ${who} sees both ${cs.client}'s address ${cs.clientAddr} and the destination ${[...dests].join(', ')}`);
      if (s.seesClient && router !== entry) add('client-hidden', cs.name, `router ${router}`, `circuit ${cs.name}: ${who} is not the entry (${entry}) but learns ${cs.client}'s address ${cs.clientAddr}`);
      if (s.seesDestination && router !== exit) add('destination-hidden', cs.name, `router ${router}`, `circuit ${cs.name}: ${who} is not the exit (${exit}) but learns the destination ${[...dests].join(', ')}`);
    }
    for (const [op, { rows, routers }] of opRows) {
      const s = summarize(rows);
      views.push({ circuit: cs.name, kind: 'operator', party: op, routers, seesClient: s.seesClient, seesDestination: s.seesDestination, classes: s.classes, names: s.names });
      if (s.seesClient && s.seesDestination && routers.length > 1) {
        add('separation', cs.name, `operator ${op}`, `circuit ${cs.name}: operator ${op} (routers ${routers.join(', ')}) sees both ${cs.client}'s address ${cs.clientAddr} and the destination ${[...dests].join(', ')}`);
      }
    }
    for (const p of table.points) {
      const s = summarize(table.observations[p.id] ?? []);
      if (!s.any) continue;
      views.push({ circuit: cs.name, kind: 'point', party: p.id, seesClient: s.seesClient, seesDestination: s.seesDestination, classes: s.classes, names: s.names });
      const who = pointParty(p.id);
      if (s.seesClient && s.seesDestination) add('separation', cs.name, who, `circuit ${cs.name}: an observer of the ${who} sees both ${cs.client}'s address ${cs.clientAddr} and the destination ${[...dests].join(', ')}`);
      if (p.kind !== 'wire') {
        const leaked = s.mine.flatMap((r) => [r.srcClass === 'client-real' || r.srcClass === 'client-hop' ? `${r.srcName} ${r.src}` : [], r.dstClass === 'client-real' || r.dstClass === 'client-hop' ? `${r.dstName} ${r.dst}` : []].flat());
        if (leaked.length) add('client-hidden', cs.name, who, `circuit ${cs.name}: the ${who} sees client address${leaked.length > 1 ? 'es' : ''} ${[...new Set(leaked)].join(', ')} (SNAT missing?)`);
      } else if (s.seesDestination) {
        add('destination-hidden', cs.name, who, `circuit ${cs.name}: the ${who} carries the destination ${[...dests].join(', ')} in a clear header`);
      }
    }

    // esp-only, from the walk's transmissions
    const seq = [c.client, ...c.hops];
    const k = c.hops.length;
    const ul = (n: string) => net.nodes.get(n)?.underlay.addr;
    for (const t of table.transmissions) {
      if (t.circuit !== cs.name || !t.point.startsWith('wire:')) continue;
      const who = pointParty(t.point);
      const outer = t.headers[0]!;
      const point = table.points.find((p) => p.id === t.point);
      if (point && !point.overlay) add('esp-only', cs.name, who, `circuit ${cs.name}: traffic crosses ${t.from} - ${t.to}, which is not an overlay link`);
      if (!outer.esp) {
        add('esp-only', cs.name, who, `circuit ${cs.name}: the ${who} carries a clear packet ${formatIPv4(outer.src)} -> ${formatIPv4(outer.dst)} (${t.direction})`);
        continue;
      }
      if (outer.src !== ul(t.from) || outer.dst !== ul(t.to)) {
        add('esp-only', cs.name, who, `circuit ${cs.name}: the ${who} carries ESP ${formatIPv4(outer.src)} -> ${formatIPv4(outer.dst)}, not between the underlay addresses of ${t.from} and ${t.to}`);
      }
      const p = seq.indexOf(t.from);
      if (p >= 0) {
        const want = t.direction === 'forward' ? k - p + 1 : k - p + 2;
        const have = t.headers.filter((h) => h.esp).length;
        if (have < want) add('esp-only', cs.name, who, `circuit ${cs.name}: ${t.direction} packets on the ${who} carry ${have} ESP layer(s), ${want} expected (overlay + one per hop ${t.direction === 'forward' ? 'ahead' : 'behind'})`);
      }
    }
  }

  const seen = new Set<string>();
  const unique = violations.filter((v) => {
    const k = `${v.invariant}|${v.message}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
  const invariants: InvariantResult[] = INVARIANTS.map(({ name, description }) => {
    const vs = unique.filter((v) => v.invariant === name);
    return { name, description, ok: vs.length === 0, violations: vs };
  });
  return { format: 'onionctl-audit/v1', circuits, table, views, invariants, exitDrops: exitDropsOf(net, state), ok: invariants.every((i) => i.ok) };
}

/** "wire:alice~or1" -> "wire alice~or1"; "outside:or3" -> "outside link of or3"; "server:X" -> "destination X" */
export function pointParty(id: string): string {
  const [kind, rest] = [id.slice(0, id.indexOf(':')), id.slice(id.indexOf(':') + 1)];
  if (kind === 'wire') return `wire ${rest}`;
  if (kind === 'outside') return `outside link of ${rest}`;
  if (kind === 'server') return `destination ${rest}`;
  return id;
}
