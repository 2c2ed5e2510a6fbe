/**
 * Moves a topology's addresses into the lab-safe ranges (pure), so that `onionctl lab` can
 * build a topology written with real addresses without putting them on a wire.
 *
 * Strategy: whole prefixes are translated, never single addresses.
 *   1. Every address and prefix in the file gets a footprint:
 *        - an underlay address that is not lab-safe: its /16 (or its subnet, if that is wider),
 *          so that routers in one /16 stay in one /16 and routers in distinct /16s stay in
 *          distinct /16s (path selection's `distinct: { subnets16 }` depends on it);
 *        - an exit address: its subnet; pools, circuit destinations and exit allow prefixes:
 *          themselves; an ssh host written as an IP address: that address;
 *        - anything already lab-safe: itself (its subnet, for interface addresses);
 *        - an allow prefix of 0.0.0.0/0 has none and is kept: it contains every address before
 *          and after.
 *   2. The footprints are merged into roots: the prefixes no other footprint contains (two
 *      prefixes either nest or are disjoint, so the roots are disjoint and cover everything).
 *   3. A lab-safe root stays where it is. Every other root gets a free, aligned lab-safe block of
 *      the same prefix length (largest first, then by address: deterministic), avoiding the
 *      roots that stay and the /16 the lab will take for management; everything inside a root
 *      keeps its offset in it.
 * The translation is thus injective and keeps prefix lengths, host parts, subnets, containment,
 * disjointness, and /16 membership of underlay addresses: the result passes the same validation
 * and has the same eligible paths.
 */
import {
  cidrLast,
  formatCidr,
  formatIPv4,
  hostCidr,
  isLabSafe,
  maskOf,
  parseCidr,
  parseIPv4,
  parseIfAddr,
  type Cidr,
} from '../net/addr.js';
import type { Topology } from '../topology/schema.js';
import { LabError } from './errors.js';
import { freeMgmtNet } from './layout.js';

export interface RemapEntry {
  /** the source prefix (a root) */
  from: string;
  /** the lab-safe block it is translated onto, same prefix length */
  to: string;
  /** what lies in it, e.g. "underlay: or1, or2; pool: or1" */
  what: string;
}

export interface RemapResult {
  topology: Topology;
  mapping: RemapEntry[];
}

type Kind = 'underlay' | 'exit address' | 'pool' | 'allow' | 'destination' | 'ssh host';
const KIND_ORDER: readonly Kind[] = ['underlay', 'exit address', 'pool', 'allow', 'destination', 'ssh host'];

/** Where blocks are taken from, in order of preference. */
const ALLOC_ORDER: readonly Cidr[] = ['100.64.0.0/10', '198.18.0.0/15', '203.0.113.0/24', '198.51.100.0/24', '192.0.2.0/24'].map(parseCidr);

const IPV4_RE = /^\d{1,3}(\.\d{1,3}){3}$/;

function isIPv4Text(s: string): boolean {
  if (!IPV4_RE.test(s)) return false;
  try {
    parseIPv4(s);
    return true;
  } catch {
    return false;
  }
}

/**
 * Rebuilds the topology with every address field passed through `f` (kind, value, owner name).
 * Used both to collect (f returns the value) and to translate.
 */
function mapAddresses(t: Topology, f: (kind: Kind, value: string, owner: string) => string): Topology {
  const ssh = <S extends { host?: string | undefined }>(s: S, owner: string): S =>
    s.host !== undefined && isIPv4Text(s.host) ? { ...s, host: f('ssh host', s.host, owner) } : s;
  return {
    ...t,
    routers: t.routers.map((r) => ({
      ...r,
      underlay: { ...r.underlay, address: f('underlay', r.underlay.address, r.name) },
      pool: f('pool', r.pool, r.name),
      ...(r.exit
        ? {
            exit: {
              ...r.exit,
              ...(r.exit.address !== undefined ? { address: f('exit address', r.exit.address, r.name) } : {}),
              allow: r.exit.allow.map((a) => ({ ...a, to: f('allow', a.to, r.name) })),
            },
          }
        : {}),
      ...(r.ssh ? { ssh: ssh(r.ssh, r.name) } : {}),
    })),
    clients: t.clients.map((c) => ({
      ...c,
      underlay: { ...c.underlay, address: f('underlay', c.underlay.address, c.name) },
      ...(c.ssh ? { ssh: ssh(c.ssh, c.name) } : {}),
    })),
    circuits: t.circuits.map((c) => ({ ...c, to: c.to.map((d) => f('destination', d, c.name)) })),
  };
}

function subnetOf(addr: number, len: number): Cidr {
  return { base: (addr & maskOf(len)) >>> 0, len };
}

/** The address a value stands for (host of an interface address, base of a prefix) and its footprint. */
function analyse(kind: Kind, value: string): { addr: number; footprint: Cidr | undefined } {
  switch (kind) {
    case 'underlay':
    case 'exit address': {
      const a = parseIfAddr(value);
      const host = hostCidr(a.addr);
      const sub = subnetOf(a.addr, a.len);
      if (isLabSafe(host)) return { addr: a.addr, footprint: isLabSafe(sub) ? sub : host };
      if (kind === 'underlay' && a.len >= 16) return { addr: a.addr, footprint: subnetOf(a.addr, 16) };
      return { addr: a.addr, footprint: sub };
    }
    case 'ssh host': {
      const addr = parseIPv4(value);
      return { addr, footprint: hostCidr(addr) };
    }
    default: {
      const c = parseCidr(value);
      return { addr: c.base, footprint: kind === 'allow' && c.len === 0 ? undefined : c };
    }
  }
}

/** Prefixes by length and network address, to find the root containing a prefix in 33 lookups. */
class PrefixSet {
  private readonly byLen: Map<number, Cidr>[] = Array.from({ length: 33 }, () => new Map());
  /** the member containing c (c itself included), if any */
  containing(c: Cidr): Cidr | undefined {
    for (let l = 0; l <= c.len; l++) {
      const hit = this.byLen[l]!.get((c.base & maskOf(l)) >>> 0);
      if (hit) return hit;
    }
    return undefined;
  }
  add(c: Cidr): void {
    this.byLen[c.len]!.set(c.base, c);
  }
}

/** Free address space as inclusive intervals, in order of preference. */
class FreeSpace {
  private ivs: { lo: number; hi: number }[];
  constructor(ranges: readonly Cidr[]) {
    this.ivs = ranges.map((r) => ({ lo: r.base, hi: cidrLast(r) }));
  }
  remove(c: Cidr): void {
    this.removeAll([c]);
  }
  /** Removes many blocks in one pass over the free list (topologies can have thousands). */
  removeAll(cs: readonly Cidr[]): void {
    const cut = cs.map((c) => ({ lo: c.base, hi: cidrLast(c) })).sort((a, b) => a.lo - b.lo);
    this.ivs = this.ivs.flatMap((iv) => {
      const out: { lo: number; hi: number }[] = [];
      let lo = iv.lo;
      for (const c of cut) {
        if (c.hi < lo) continue;
        if (c.lo > iv.hi) break;
        if (c.lo > lo) out.push({ lo, hi: c.lo - 1 });
        lo = Math.max(lo, c.hi + 1);
        if (lo > iv.hi) break;
      }
      if (lo <= iv.hi) out.push({ lo, hi: iv.hi });
      return out;
    });
  }
  /** The first aligned free block of this length, taken; undefined if there is none. */
  take(len: number): Cidr | undefined {
    const size = 2 ** (32 - len);
    for (const iv of this.ivs) {
      const start = Math.ceil(iv.lo / size) * size;
      if (start + size - 1 <= iv.hi) {
        const c = { base: start >>> 0, len };
        this.remove(c);
        return c;
      }
    }
    return undefined;
  }
}

/** The widest block the lab could ever give: an empty topology, one /16 kept for management. */
function widestLabBlock(): number {
  for (let l = 0; l <= 32; l++) {
    const probe = new FreeSpace(ALLOC_ORDER);
    probe.remove(freeMgmtNet([])!);
    if (probe.take(l)) return l;
  }
  return 32;
}

function describeRoot(items: Map<Kind, Set<string>>): string {
  return KIND_ORDER.filter((k) => items.has(k))
    .map((k) => {
      const names = [...items.get(k)!];
      return `${k}: ${names.slice(0, 6).join(', ')}${names.length > 6 ? ', ...' : ''}`;
    })
    .join('; ');
}

/**
 * The topology with every address moved into lab-safe ranges, and the table of what moved
 * where. A topology that is lab-safe already comes back as it is, with an empty table.
 * Throws LabError naming the prefix that does not fit.
 */
export function remapToLab(t: Topology): RemapResult {
  // 1. footprints
  const found: { kind: Kind; owner: string; footprint: Cidr }[] = [];
  mapAddresses(t, (kind, value, owner) => {
    const { footprint } = analyse(kind, value);
    if (footprint) found.push({ kind, owner, footprint });
    return value;
  });
  if (found.every((f) => isLabSafe(f.footprint))) return { topology: t, mapping: [] };

  // 2. roots: widest first, so a footprint's container is always seen before it
  const sorted = [...found].sort((a, b) => a.footprint.len - b.footprint.len || a.footprint.base - b.footprint.base);
  const roots = new PrefixSet();
  const rootList: Cidr[] = [];
  const contents = new Map<Cidr, Map<Kind, Set<string>>>();
  for (const f of sorted) {
    if (roots.containing(f.footprint)) continue;
    roots.add(f.footprint);
    rootList.push(f.footprint);
    contents.set(f.footprint, new Map());
  }
  for (const f of found) {
    // names in file order
    const byKind = contents.get(roots.containing(f.footprint)!)!;
    if (!byKind.has(f.kind)) byKind.set(f.kind, new Set());
    byKind.get(f.kind)!.add(f.owner);
  }

  // 3. blocks: lab-safe roots stay, the lab's management /16 stays free, the rest is allocated
  const staying = rootList.filter((r) => isLabSafe(r));
  const moving = rootList.filter((r) => !isLabSafe(r)); // already sorted widest first, then by address
  const mgmt = freeMgmtNet(staying);
  if (!mgmt) throw new LabError('the topology leaves no free /16 in 100.64.0.0/10 for the lab management network');
  const free = new FreeSpace(ALLOC_ORDER);
  free.removeAll([...staying, mgmt]);
  const widest = widestLabBlock();
  const target = new Map<Cidr, Cidr>();
  for (const r of moving) {
    const block = free.take(r.len);
    if (!block) {
      const what = describeRoot(contents.get(r)!);
      if (r.len < widest) {
        throw new LabError(
          `${formatCidr(r)} (${what}) is too large for the lab: the lab-safe ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 198.18.0.0/15, 100.64.0.0/10, ` +
            `less one /16 for management) hold blocks of at most /${widest}. Use a smaller prefix for the lab.`,
        );
      }
      throw new LabError(
        `no free lab-safe /${r.len} left for ${formatCidr(r)} (${what}): the topology's ${moving.length} address blocks ` +
          `(each distinct /16 of underlay addresses takes a whole /16) do not fit into the lab-safe ranges.`,
      );
    }
    target.set(r, block);
  }

  // 4. translate
  const translate = (kind: Kind, value: string): string => {
    const { addr, footprint } = analyse(kind, value);
    if (!footprint) return value;
    const root = roots.containing(footprint)!;
    const to = target.get(root);
    if (!to) return value;
    const moved = formatIPv4((to.base + (addr - root.base)) >>> 0);
    const slash = value.indexOf('/');
    return slash < 0 ? moved : moved + value.slice(slash);
  };
  const topology = mapAddresses(t, (kind, value) => translate(kind, value));
  const mapping = moving
    .map((r) => ({ r, to: target.get(r)! }))
    .sort((a, b) => a.r.base - b.r.base)
    .map(({ r, to }) => ({ from: formatCidr(r), to: formatCidr(to), what: describeRoot(contents.get(r)!) }));
  return { topology, mapping };
}

/** The table for the log: one "FROM -> TO (what)" per moved block. */
export function formatMapping(mapping: readonly RemapEntry[]): string[] {
  const w = Math.max(0, ...mapping.map((m) => m.from.length));
  return mapping.map((m) => `${m.from.padEnd(w)} -> ${m.to} (${m.what})`);
}

