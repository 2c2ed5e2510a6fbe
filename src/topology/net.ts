/**
 * The resolved network: the topology with addresses parsed, defaults filled in and the overlay
 * adjacency built. Everything downstream (path selection, SPD, audit) works on this.
 */
import { parseCidr, parseIfAddr, type Cidr } from '../net/addr.js';
import type { CryptoProfileName, NatBackend, Topology } from './schema.js';

export interface Iface {
  name: string;
  addr: number;
  len: number;
  mtu: number;
}

export interface AllowResolved {
  to: Cidr;
  proto: 'tcp' | 'udp' | 'icmp' | 'any';
  /** ports and "a-b" ranges, as written */
  ports?: (number | string)[];
}

export interface ExitResolved {
  iface: Iface;
  /** SNAT target address */
  addr: number;
  nat: NatBackend;
  allow: AllowResolved[];
}

export interface SshSpec {
  host?: string;
  port?: number;
  user?: string;
  hostKey?: string;
}

export interface RouterNode {
  kind: 'router';
  name: string;
  operator: string;
  country?: string;
  underlay: Iface;
  pool: Cidr;
  exit?: ExitResolved;
  /** this router's firewall backend */
  nat: NatBackend;
  ssh?: SshSpec;
  /** index in the topology's routers list (stable ordering) */
  index: number;
}

export interface ClientNode {
  kind: 'client';
  name: string;
  underlay: Iface;
  entry: string[];
  ssh?: SshSpec;
  index: number;
}

export type NetNode = RouterNode | ClientNode;

export interface CircuitDef {
  name: string;
  client: string;
  to: Cidr[];
  hops: number;
  distinctCountries: boolean;
  distinct16: boolean;
  /** TFC padding (size in bytes) on telescope layers (1-based hop numbers) and/or the overlay links of the path */
  tfcpad?: { size: number; telescope: number[]; overlay: boolean };
  /** what the circuit says it carries (topology `proto`/`ports`); undefined: unstated */
  traffic?: Traffic;
  index: number;
}

/** A protocol and, for tcp/udp, destination ports (numbers or "FIRST-LAST"); no ports: all of them. */
export interface Traffic {
  proto: 'tcp' | 'udp' | 'icmp' | 'any';
  ports?: (number | string)[];
}

export interface Net {
  hops: number;
  crypto: CryptoProfileName;
  keySource: 'kdf' | 'random';
  /** topology-wide firewall backend; an exit may override it */
  nat: NatBackend;
  quickack: boolean;
  routers: Map<string, RouterNode>;
  clients: Map<string, ClientNode>;
  /** routers then clients, each in file order */
  nodes: Map<string, NetNode>;
  /** overlay adjacency (links plus client->entry), both directions */
  adj: Map<string, Set<string>>;
  /** each overlay link once, endpoints sorted, in a stable order */
  links: [string, string][];
  circuits: CircuitDef[];
}

const DEFAULT_MTU = 1500;

function iface(u: { interface: string; address: string; mtu?: number | undefined }): Iface {
  const a = parseIfAddr(u.address);
  return { name: u.interface, addr: a.addr, len: a.len, mtu: u.mtu ?? DEFAULT_MTU };
}

function tfcpadOf(p: NonNullable<Topology['circuits'][number]['tfcpad']>, k: number): NonNullable<CircuitDef['tfcpad']> {
  const all = Array.from({ length: k }, (_, i) => i + 1);
  if (Array.isArray(p.layers)) return { size: p.size, telescope: [...new Set(p.layers)].sort((a, b) => a - b), overlay: false };
  return { size: p.size, telescope: p.layers === 'overlay' ? [] : all, overlay: p.layers !== 'telescope' };
}

/** Every node of the net: routers, then clients, each in file order (the order commands report in). */
export function topologyNodes(net: Net): string[] {
  return [...[...net.routers.values()].sort((a, b) => a.index - b.index), ...[...net.clients.values()].sort((a, b) => a.index - b.index)].map((n) => n.name);
}

export function linkKey(a: string, b: string): string {
  return a < b ? `${a}~${b}` : `${b}~${a}`;
}

/**
 * Builds the Net. Assumes references resolve (validate.ts checks that first and reports
 * located errors); unresolved references are skipped here rather than thrown.
 */
export function buildNet(t: Topology): Net {
  const routers = new Map<string, RouterNode>();
  const clients = new Map<string, ClientNode>();
  t.routers.forEach((r, index) => {
    const underlay = iface(r.underlay);
    let exit: ExitResolved | undefined;
    if (r.exit) {
      const outIf = r.exit.address
        ? iface({ interface: r.exit.interface ?? r.underlay.interface, address: r.exit.address, mtu: r.underlay.mtu })
        : { ...underlay, name: r.exit.interface ?? underlay.name };
      exit = {
        iface: outIf,
        addr: outIf.addr,
        nat: r.exit.nat ?? r.nat ?? t.nat,
        allow: r.exit.allow.map((a) => ({
          to: parseCidr(a.to),
          proto: a.proto,
          ...(a.ports ? { ports: a.ports } : {}),
        })),
      };
    }
    routers.set(r.name, {
      kind: 'router',
      name: r.name,
      operator: r.operator,
      ...(r.country ? { country: r.country } : {}),
      underlay,
      pool: parseCidr(r.pool),
      ...(exit ? { exit } : {}),
      nat: exit?.nat ?? r.nat ?? t.nat,
      ...(r.ssh ? { ssh: r.ssh } : {}),
      index,
    });
  });
  t.clients.forEach((c, index) => {
    clients.set(c.name, {
      kind: 'client',
      name: c.name,
      underlay: iface(c.underlay),
      entry: [...c.entry],
      ...(c.ssh ? { ssh: c.ssh } : {}),
      index,
    });
  });
  const nodes = new Map<string, NetNode>([...routers, ...clients]);
  const adj = new Map<string, Set<string>>();
  for (const n of nodes.keys()) adj.set(n, new Set());
  const seen = new Set<string>();
  const links: [string, string][] = [];
  const addLink = (a: string, b: string) => {
    if (a === b || !nodes.has(a) || !nodes.has(b)) return;
    const k = linkKey(a, b);
    if (seen.has(k)) return;
    seen.add(k);
    adj.get(a)!.add(b);
    adj.get(b)!.add(a);
    links.push(a < b ? [a, b] : [b, a]);
  };
  for (const [a, b] of t.links) addLink(a, b);
  for (const c of clients.values()) for (const e of c.entry) if (routers.has(e)) addLink(c.name, e);
  const circuits: CircuitDef[] = t.circuits.map((c, index) => ({
    name: c.name,
    client: c.client,
    to: c.to.map(parseCidr),
    hops: c.hops ?? t.hops,
    distinctCountries: c.distinct?.countries ?? t.distinct.countries ?? false,
    distinct16: c.distinct?.subnets16 ?? t.distinct.subnets16 ?? false,
    ...(c.tfcpad ? { tfcpad: tfcpadOf(c.tfcpad, c.hops ?? t.hops) } : {}),
    ...(c.proto ? { traffic: { proto: c.proto, ...(c.ports ? { ports: c.ports } : {}) } } : {}),
    index,
  }));
  return {
    hops: t.hops,
    crypto: t.crypto,
    keySource: t.keys.source,
    nat: t.nat,
    quickack: t.routeOptions?.quickack ?? false,
    routers,
    clients,
    nodes,
    adj,
    links,
    circuits,
  };
}
