/**
 * The lab's wiring, computed from the network (pure):
 *
 *            underlay bridge (topology addresses)              outside bridge
 *   client ──eth0──┐                                  ┌──eth1── exit ... server(s)
 *   mix    ──eth0──┼── b<id>u                  b<id>o ┼──eth0── one server per circuit
 *   exit   ──eth0──┘                                  │
 *   every router/client also has mgmt0 on b<id>m, where the controller's SSH goes, so that
 *   management traffic never shows up in the underlay captures.
 *
 * Names are unique per lab id; host-side veth names fit IFNAMSIZ (15).
 */
import { cidrContainsAddr, cidrOverlaps, formatCidr, formatIPv4, hostCidr, isLabSafe, maskOf, parseCidr, type Cidr } from '../net/addr.js';
import type { Net } from '../topology/net.js';
import type { State } from '../state/model.js';
import { LabError } from './errors.js';

export interface LabIface {
  /** name inside the namespace */
  name: string;
  /** bridge-side veth end in the lab's root namespace (capture here to see the wire) */
  hostVeth: string;
  bridge: string;
  addr: number;
  len: number;
  mtu: number;
}

export interface LabNode {
  name: string;
  kind: 'router' | 'client';
  ns: string;
  underlay: LabIface;
  outside?: LabIface;
  mgmt: LabIface;
  /** addresses outside the underlay's connected subnet, reached on-link */
  onlink: number[];
  /** exits: server addresses reached on-link through the outside interface */
  outsideRoutes: number[];
}

export interface LabServer {
  circuit: string;
  ns: string;
  iface: LabIface;
  /** exit addresses reached on-link */
  routes: number[];
}

export interface LabLayout {
  id: string;
  bridges: { underlay: string; outside: string; mgmt: string };
  mgmtNet: Cidr;
  controllerMgmt: number;
  nodes: LabNode[];
  servers: LabServer[];
}


/** Every address the lab would put on a wire, with where it comes from. */
function topologyAddresses(net: Net): { what: string; cidr: Cidr }[] {
  const out: { what: string; cidr: Cidr }[] = [];
  for (const n of net.nodes.values()) {
    out.push({ what: `${n.name} underlay`, cidr: hostCidr(n.underlay.addr) });
    if (n.kind === 'router') {
      out.push({ what: `${n.name} pool`, cidr: n.pool });
      if (n.exit) out.push({ what: `${n.name} exit address`, cidr: hostCidr(n.exit.addr) });
    }
  }
  for (const c of net.circuits) c.to.forEach((d, i) => out.push({ what: `circuit ${c.name} destination ${i + 1}`, cidr: d }));
  return out;
}

export function checkLabSafe(net: Net): void {
  const bad = topologyAddresses(net).filter((a) => !isLabSafe(a.cidr));
  if (bad.length > 0) {
    throw new LabError(
      `the lab only puts documentation and benchmark addresses on its wires (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 198.18.0.0/15, 100.64.0.0/10); ` +
        `not lab-safe: ${bad.slice(0, 6).map((b) => `${b.what} ${formatCidr(b.cidr)}`).join(', ')}${bad.length > 6 ? ', ...' : ''}. ` +
        'Copy the topology and change those addresses for the lab.',
    );
  }
}

/**
 * The /16 the lab would take for management given the prefixes in use: the first one inside
 * 100.64.0.0/10 that overlaps none of them, counting down from 100.127.0.0/16. Exported so
 * that remap.ts can keep it free when it moves a topology into lab-safe ranges.
 */
export function freeMgmtNet(used: readonly Cidr[]): Cidr | undefined {
  for (let second = 127; second >= 64; second--) {
    const c = parseCidr(`100.${second}.0.0/16`);
    if (!used.some((u) => cidrOverlaps(u, c))) return c;
  }
  return undefined;
}

/** A /16 inside 100.64.0.0/10 that overlaps nothing in the topology, for management. */
function pickMgmtNet(net: Net): Cidr {
  const c = freeMgmtNet(topologyAddresses(net).map((a) => a.cidr));
  if (!c) throw new LabError('no free /16 in 100.64.0.0/10 for the lab management network');
  return c;
}

/** The address a circuit's server gets: the first destination's address (first host for a prefix). */
export function serverAddress(dest: Cidr): number {
  if (dest.len >= 31) return dest.base;
  return (dest.base + 1) >>> 0;
}

export function labLayout(net: Net, id: string, _state?: State): LabLayout {
  if (!/^[0-9a-f]{4}$/.test(id)) throw new Error(`lab id must be 4 hex digits, got ${id}`);
  checkLabSafe(net);
  const bridges = { underlay: `oc${id}u`, outside: `oc${id}o`, mgmt: `oc${id}m` };
  const mgmtNet = pickMgmtNet(net);
  const controllerMgmt = (mgmtNet.base + 1) >>> 0;
  const nodes: LabNode[] = [];
  const servers: LabServer[] = [];
  let idx = 0;
  const veth = (role: string) => `oc${id}${role}${(idx).toString(36)}`;

  const allUnderlay = [...net.nodes.values()].map((n) => n.underlay.addr);
  const serverAddrs = new Map<string, number>();
  for (const c of net.circuits) serverAddrs.set(c.name, serverAddress(c.to[0]!));
  const exitAddrs: number[] = [];

  for (const n of net.nodes.values()) {
    idx++;
    const subnet: Cidr = { base: (n.underlay.addr & maskOf(n.underlay.len)) >>> 0, len: n.underlay.len };
    const node: LabNode = {
      name: n.name,
      kind: n.kind,
      ns: `oc-${id}-${n.name}`,
      underlay: { name: n.underlay.name, hostVeth: veth('u'), bridge: bridges.underlay, addr: n.underlay.addr, len: n.underlay.len, mtu: n.underlay.mtu },
      mgmt: { name: 'mgmt0', hostVeth: veth('m'), bridge: bridges.mgmt, addr: (mgmtNet.base + 1 + idx) >>> 0, len: mgmtNet.len, mtu: 1500 },
      onlink: allUnderlay.filter((a) => a !== n.underlay.addr && !cidrContainsAddr(subnet, a)),
      outsideRoutes: [],
    };
    if (n.kind === 'router' && n.exit) {
      if (n.exit.iface.name === n.underlay.name) {
        throw new LabError(`exit ${n.name} uses its underlay interface as outside interface; the lab needs exits with their own outside interface (exit.interface and exit.address)`);
      }
      node.outside = { name: n.exit.iface.name, hostVeth: veth('x'), bridge: bridges.outside, addr: n.exit.iface.addr, len: n.exit.iface.len, mtu: n.exit.iface.mtu };
      node.outsideRoutes = [...new Set(serverAddrs.values())];
      exitAddrs.push(n.exit.addr);
    }
    nodes.push(node);
  }
  const seenServer = new Map<number, LabServer>();
  for (const c of net.circuits) {
    const addr = serverAddrs.get(c.name)!;
    if (seenServer.has(addr)) continue;
    idx++;
    const s: LabServer = {
      circuit: c.name,
      ns: `oc-${id}-srv-${c.name}`,
      iface: { name: 'eth0', hostVeth: veth('s'), bridge: bridges.outside, addr, len: 32, mtu: 1500 },
      routes: exitAddrs,
    };
    seenServer.set(addr, s);
    servers.push(s);
  }
  return { id, bridges, mgmtNet, controllerMgmt, nodes, servers };
}

/** Lines for `ip -batch -` in the lab's root namespace: bridges and veth pairs. */
export function rootBatch(l: LabLayout, o: { controllerOnBridge: boolean }): string[] {
  const lines: string[] = [];
  for (const b of Object.values(l.bridges)) lines.push(`link add ${b} type bridge`, `link set ${b} up`);
  // directly, the controller sits on the management bridge; with User-Mode Linux its address
  // is on the host side of the guest's network device
  if (o.controllerOnBridge) lines.push(`address add ${formatIPv4(l.controllerMgmt)}/${l.mgmtNet.len} dev ${l.bridges.mgmt}`);
  for (const n of l.nodes) lines.push(...nodeRootBatch(n));
  for (const s of l.servers) lines.push(`netns add ${s.ns}`, ...vethPair(s.ns, s.iface));
  return lines;
}

/** MAC addresses to give a veth pair: its bridge-side end and the end in the namespace. */
export interface VethMacs {
  host: string;
  ns: string;
}

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

function vethPair(ns: string, i: LabIface, macs?: VethMacs): string[] {
  const mac = (m: string | undefined) => {
    if (m === undefined) return '';
    if (!MAC_RE.test(m)) throw new Error(`internal: bad MAC address ${m}`);
    return ` address ${m}`;
  };
  return [
    `link add ${i.hostVeth}${mac(macs?.host)} mtu ${i.mtu} type veth peer name ${i.name}${mac(macs?.ns)} mtu ${i.mtu} netns ${ns}`,
    `link set ${i.hostVeth} master ${i.bridge}`,
    `link set ${i.hostVeth} up`,
  ];
}

/**
 * Lines for `ip -batch -` in the lab's root namespace: one node's namespace and its wires.
 * `macs` (by bridge-side veth name) keeps the addresses a node had, as a rebooted router keeps
 * its NICs' addresses: its neighbours' ARP entries stay right.
 */
export function nodeRootBatch(n: LabNode, macs?: ReadonlyMap<string, VethMacs>): string[] {
  const pair = (i: LabIface) => vethPair(n.ns, i, macs?.get(i.hostVeth));
  return [`netns add ${n.ns}`, ...pair(n.underlay), ...pair(n.mgmt), ...(n.outside ? pair(n.outside) : [])];
}

/** Every veth pair of a node. */
export function nodeIfaces(n: LabNode): LabIface[] {
  return [n.underlay, n.mgmt, ...(n.outside ? [n.outside] : [])];
}

/** The node's bridge ports that do not flood unknown unicast (each capture keeps to its own traffic). */
export function quietPorts(n: LabNode): string[] {
  return [n.underlay, ...(n.outside ? [n.outside] : [])].map((i) => i.hostVeth);
}

/** Lines for `ip -n NS -batch -` inside one node's namespace. */
export function nodeBatch(n: LabNode, quickack: boolean): string[] {
  const qa = quickack ? ' quickack 1' : '';
  const lines = ['link set lo up'];
  for (const i of [n.underlay, n.mgmt, ...(n.outside ? [n.outside] : [])]) {
    lines.push(`address add ${formatIPv4(i.addr)}/${i.len} dev ${i.name}`, `link set ${i.name} up`);
  }
  for (const a of n.onlink) lines.push(`route add ${formatIPv4(a)}/32 dev ${n.underlay.name}${qa}`);
  if (n.outside) for (const a of n.outsideRoutes) lines.push(`route add ${formatIPv4(a)}/32 dev ${n.outside.name}${qa}`);
  return lines;
}

export function serverBatch(s: LabServer): string[] {
  return [
    'link set lo up',
    `address add ${formatIPv4(s.iface.addr)}/32 dev ${s.iface.name}`,
    `link set ${s.iface.name} up`,
    ...s.routes.map((a) => `route add ${formatIPv4(a)}/32 dev ${s.iface.name} quickack 1`),
  ];
}

