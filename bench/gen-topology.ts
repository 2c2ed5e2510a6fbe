/**
 * A deterministic generator of large topologies, for benchmarks (and any test that needs a big,
 * valid network). The topology is built as an object, not YAML, but goes through the same
 * validation as a file: TopologySchema (zod) and validateSemantics (see `validateGenerated`).
 *
 * Shape, for N routers (defaults):
 *   - operators: ceil(N/10), assigned at random (so about 10 routers each);
 *   - countries: 6, at random;
 *   - underlay: router i at 100.(96 + i mod 32).x.y/11, i.e. 32 distinct /16s inside 100.96.0.0/11;
 *     clients in 198.18.0.0/16; exit outside addresses in 198.19.0.0/16;
 *   - exits: every 5th router (20%), four exit policies (one admits all three destination
 *     ranges, each of the others two), every 3rd exit NATs with nftables;
 *   - overlay: a ring plus random chords until each router has 6-8 neighbours (a few get more:
 *     see the entries);
 *   - clients: round(N/10), each with 3 entry routers; entries are non-exits and no router is the
 *     entry of two clients; for each destination range, one of a client's entries is a neighbour
 *     of an exit of another operator that admits it (a link is added if not), so that its 2-hop
 *     circuits always have an eligible path;
 *   - circuits: 10·N, spread evenly over the clients (100 each). Circuit j of a client goes to a
 *     /32 in 203.0.113.0/24, 198.51.100.0/24 or 192.0.2.0/24 (j mod 3), has hops 2 when
 *     j mod 10 = 0, hops 4 when j mod 10 = 5, else hops 3; a fifth of all circuits (3-hop ones,
 *     j mod 5 = 2) ask for distinct countries and /16s;
 *   - pools, carved in router order from 100.64.0.0/11: a /24 (254 addresses) for entry routers
 *     and exits, a /25 (126) for the rest. Path selection is uniform over eligible paths, not
 *     balanced, so pools are sized for the busiest router of each role, not the mean. Measured
 *     with 5,000 routers and 50,000 circuits (per-hop addresses used, mean / max): entries
 *     44 / 103 (first hop of their client's circuits), exits 58 / 150 (last hop, plus middle
 *     hops), the rest 11 / 67 (middle hops). 5,000 routers use about 1 M of the 2 M addresses;
 *     /26 pools (62) would overflow. `poolUsage` reports how full the pools got after a plan.
 *
 * Everything is a function of (N, seed): the same arguments give the same topology.
 */
import { formatIPv4 } from '../src/net/addr.js';
import type { State } from '../src/state/model.js';
import { TopologySchema, type Topology, type TopologyInput } from '../src/topology/schema.js';
import { validateSemantics } from '../src/topology/validate.js';

export interface GenOptions {
  routers: number;
  /** circuits per router (default 10) */
  circuitsPerRouter?: number;
  /** routers per client (default 10) */
  routersPerClient?: number;
  /** routers per operator (default 10) */
  routersPerOperator?: number;
  seed?: string;
}

/** mulberry32 seeded from a string: small, fast and deterministic (not for keys). */
function prng(seed: string): (n: number) => number {
  let h = 0x811c9dc5;
  for (let i = 0; i < seed.length; i++) h = Math.imul(h ^ seed.charCodeAt(i), 0x01000193);
  let a = h >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return (n) => Math.floor(next() * n);
}

const COUNTRIES = ['DE', 'NL', 'SE', 'FR', 'CH', 'IS'] as const;
const DEST_NETS = ['203.0.113', '198.51.100', '192.0.2'] as const;

type ExitInput = NonNullable<TopologyInput['routers'][number]['exit']>;

/**
 * Exit policy variant v. Variant 0 admits all three destination ranges, the others two each, so
 * every range is admitted by three exits in four and no exit draws far more circuits than another.
 */
function exitAllow(v: number): ExitInput['allow'] {
  switch (v) {
    case 0:
      return [
        { to: '203.0.113.0/24', proto: 'tcp', ports: [80, 443] },
        { to: '203.0.113.0/24', proto: 'icmp' },
        { to: '198.51.100.0/24' },
        { to: '192.0.2.0/24' },
      ];
    case 1:
      return [{ to: '203.0.113.0/24' }, { to: '198.51.100.0/24', proto: 'udp', ports: [53] }];
    case 2:
      return [
        { to: '198.51.100.0/24', proto: 'tcp', ports: [80, 443, '8000-8099'] },
        { to: '192.0.2.0/24', proto: 'icmp' },
      ];
    default:
      return [
        { to: '192.0.2.0/24' },
        { to: '203.0.113.0/25', proto: 'tcp', ports: [443] },
      ];
  }
}

/** Does exit policy variant v admit destination range d (index into DEST_NETS)? */
const variantAdmits = (v: number, d: number) => v === 0 || [[0, 1], [1, 2], [2, 0]][v - 1]!.includes(d);

export const routerName = (i: number) => `r${i}`;
export const isExitIndex = (i: number) => i % 5 === 4;
const exitVariant = (i: number) => Math.floor(i / 5) % 4;

export function generateTopology(o: GenOptions): TopologyInput {
  const N = o.routers;
  if (!Number.isInteger(N) || N < 20) throw new RangeError('generateTopology: at least 20 routers');
  if (N > 32 * 65000) throw new RangeError('generateTopology: too many routers for the address plan');
  const perRouter = o.circuitsPerRouter ?? 10;
  const rand = prng(`onionctl-gen/v1\0${N}\0${o.seed ?? '1'}`);

  const nOps = Math.max(4, Math.ceil(N / (o.routersPerOperator ?? 10)));
  const operators = Array.from({ length: nOps }, (_, j) => ({ name: `op${j}` }));
  const opOf = Array.from({ length: N }, () => rand(nOps));
  const countryOf = Array.from({ length: N }, () => COUNTRIES[rand(COUNTRIES.length)]!);

  // overlay: ring + random chords to a per-router target degree of 6..8
  const MAX_DEG = 8;
  const deg = new Array<number>(N).fill(0);
  const adj: Set<number>[] = Array.from({ length: N }, () => new Set<number>());
  const links: [string, string][] = [];
  const link = (a: number, b: number): boolean => {
    if (a === b || adj[a]!.has(b)) return false;
    adj[a]!.add(b);
    adj[b]!.add(a);
    deg[a]!++;
    deg[b]!++;
    links.push([routerName(a), routerName(b)]);
    return true;
  };
  for (let i = 0; i < N; i++) link(i, (i + 1) % N);
  for (let i = 0; i < N; i++) {
    const target = 6 + rand(3);
    for (let tries = 0; deg[i]! < target && tries < 64; tries++) {
      const j = rand(N);
      if (deg[j]! < MAX_DEG) link(i, j);
    }
  }

  // entries: non-exit routers, each the entry of at most one client
  const nClients = Math.max(1, Math.round(N / (o.routersPerClient ?? 10)));
  const nonExits = [...Array(N).keys()].filter((i) => !isExitIndex(i));
  for (let i = nonExits.length - 1; i > 0; i--) {
    const j = rand(i + 1);
    [nonExits[i], nonExits[j]] = [nonExits[j]!, nonExits[i]!];
  }
  if (nonExits.length < 3 * nClients) throw new RangeError('generateTopology: not enough non-exit routers for the entries');
  const exits = [...Array(N).keys()].filter(isExitIndex);
  const entries: number[][] = [];
  for (let c = 0; c < nClients; c++) {
    const e = nonExits.slice(3 * c, 3 * c + 3);
    entries.push(e);
    // 2-hop circuits go to every destination range: for each range, some entry must be next to
    // an exit of another operator that admits it; if none is, link the entry with the fewest
    // neighbours to one
    const fits = (x: number, ex: number, d: number) => isExitIndex(ex) && variantAdmits(exitVariant(ex), d) && opOf[ex] !== opOf[x];
    for (let d = 0; d < DEST_NETS.length; d++) {
      if (e.some((x) => [...adj[x]!].some((n) => fits(x, n, d)))) continue;
      const x = [...e].sort((a, b) => deg[a]! - deg[b]!)[0]!;
      for (let tries = 0; tries < 256; tries++) {
        const ex = exits[rand(exits.length)]!;
        if (fits(x, ex, d) && (deg[ex]! < MAX_DEG || tries > 128) && link(x, ex)) break;
      }
    }
  }

  // pools: /24 for entries and exits, /25 for the rest, carved in router order from 100.64.0.0/11
  const isEntry = new Set(entries.flat());
  let cursor = (100 << 24) + (64 << 16); // 100.64.0.0, as a non-negative number
  const poolEnd = (100 << 24) + (96 << 16); // 100.96.0.0
  const pools: string[] = [];
  for (let i = 0; i < N; i++) {
    const len = isExitIndex(i) || isEntry.has(i) ? 24 : 25;
    const size = 2 ** (32 - len);
    cursor = Math.ceil(cursor / size) * size;
    if (cursor + size > poolEnd) throw new RangeError('generateTopology: pools do not fit in 100.64.0.0/11');
    pools.push(`${formatIPv4(cursor)}/${len}`);
    cursor += size;
  }

  const routers: TopologyInput['routers'] = [];
  let exitNo = 0;
  for (let i = 0; i < N; i++) {
    const host = Math.floor(i / 32) + 1;
    const r: TopologyInput['routers'][number] = {
      name: routerName(i),
      operator: operators[opOf[i]!]!.name,
      country: countryOf[i]!,
      underlay: { interface: 'eth0', address: `100.${96 + (i % 32)}.${host >> 8}.${host & 255}/11` },
      pool: pools[i]!,
    };
    if (isExitIndex(i)) {
      const e = ++exitNo;
      r.exit = {
        interface: 'eth1',
        address: `198.19.${e >> 8}.${e & 255}/16`,
        ...(exitNo % 3 === 0 ? { nat: 'nftables' as const } : {}),
        allow: exitAllow(exitVariant(i)),
      };
    }
    routers.push(r);
  }

  const clients: TopologyInput['clients'] = entries.map((e, c) => ({
    name: `c${c}`,
    underlay: { interface: 'eth0', address: `198.18.${(c + 1) >> 8}.${(c + 1) & 255}/16` },
    entry: e.map(routerName),
  }));

  // circuits: perRouter·N, spread evenly over the clients
  const total = perRouter * N;
  const circuits: NonNullable<TopologyInput['circuits']> = [];
  for (let c = 0; c < nClients; c++) {
    const count = Math.floor(total / nClients) + (c < total % nClients ? 1 : 0);
    if (count > 3 * 256) throw new RangeError('generateTopology: too many circuits per client for the destination plan');
    for (let j = 0; j < count; j++) {
      const hops = j % 10 === 0 ? 2 : j % 10 === 5 ? 4 : 3;
      circuits.push({
        name: `c${c}-${j}`,
        client: `c${c}`,
        to: [`${DEST_NETS[j % 3]}.${Math.floor(j / 3)}/32`],
        hops,
        ...(hops === 3 && j % 5 === 2 ? { distinct: { countries: true, subnets16: true } } : {}),
      });
    }
  }

  return { version: 1, hops: 3, operators, routers, clients, links, circuits };
}

export class GeneratedTopologyError extends Error {}

/** The validation a topology file goes through, minus YAML: zod schema, then semantic checks. */
export function validateGenerated(input: TopologyInput): Topology {
  const t = parseGenerated(input);
  checkGenerated(t);
  return t;
}

export function parseGenerated(input: TopologyInput): Topology {
  const parsed = TopologySchema.safeParse(input);
  if (!parsed.success) {
    const i = parsed.error.issues[0]!;
    throw new GeneratedTopologyError(`generated topology fails the schema at ${i.path.join('.')}: ${i.message}`);
  }
  return parsed.data;
}

export function checkGenerated(t: Topology): void {
  const issues = validateSemantics(t);
  if (issues.length > 0) {
    const shown = issues.slice(0, 5).map((i) => `${i.path.join('.')}: ${i.message}`);
    throw new GeneratedTopologyError(`generated topology has ${issues.length} semantic issue(s):\n  ${shown.join('\n  ')}`);
  }
}

export interface PoolUsage {
  /** role -> highest fill of a pool of that role, as used/capacity */
  max: Record<'entry' | 'exit' | 'other', { used: number; capacity: number; router: string }>;
  /** mean addresses used per router of each role */
  mean: Record<'entry' | 'exit' | 'other', number>;
}

/** How full each router's pool is after a plan (the per-hop addresses A_ci). */
export function poolUsage(t: Topology, state: State): PoolUsage {
  const used = new Map<string, number>();
  for (const c of Object.values(state.circuits)) for (const h of c.hops) used.set(h, (used.get(h) ?? 0) + 1);
  const entries = new Set(t.clients.flatMap((c) => c.entry));
  const role = (r: Topology['routers'][number]) => (r.exit ? 'exit' : entries.has(r.name) ? 'entry' : 'other');
  const max: PoolUsage['max'] = {
    entry: { used: 0, capacity: 1, router: '' },
    exit: { used: 0, capacity: 1, router: '' },
    other: { used: 0, capacity: 1, router: '' },
  };
  const sum = { entry: 0, exit: 0, other: 0 };
  const n = { entry: 0, exit: 0, other: 0 };
  for (const r of t.routers) {
    const k = role(r);
    const u = used.get(r.name) ?? 0;
    const capacity = 2 ** (32 - Number(r.pool.split('/')[1])) - 2;
    sum[k] += u;
    n[k]++;
    if (u / capacity > max[k].used / max[k].capacity) max[k] = { used: u, capacity, router: r.name };
  }
  const mean = { entry: sum.entry / (n.entry || 1), exit: sum.exit / (n.exit || 1), other: sum.other / (n.other || 1) };
  return { max, mean };
}
