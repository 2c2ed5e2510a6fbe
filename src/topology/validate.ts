/**
 * Checks that need the whole file. Each issue carries the path of the YAML node to blame, so
 * load.ts can print file:line:col. Whether every circuit has a path is checked a floor up
 * (pathselect/buildable.ts), through parseTopology's `more`.
 */
import { cidrContainsAddr, cidrOverlaps, formatCidr, formatIPv4, parseCidr, type Cidr } from '../net/addr.js';
import type { Topology } from './schema.js';

export interface SemanticIssue {
  path: (string | number)[];
  message: string;
}

export function validateSemantics(t: Topology): SemanticIssue[] {
  const issues: SemanticIssue[] = [];
  const add = (path: (string | number)[], message: string) => issues.push({ path, message });

  // unique names
  const opNames = new Map<string, number>();
  t.operators.forEach((o, i) => {
    if (opNames.has(o.name)) add(['operators', i, 'name'], `duplicate operator name "${o.name}" (first at operators[${opNames.get(o.name)}])`);
    else opNames.set(o.name, i);
  });
  const nodeNames = new Map<string, string>();
  t.routers.forEach((r, i) => {
    const prev = nodeNames.get(r.name);
    if (prev) add(['routers', i, 'name'], `duplicate node name "${r.name}" (first at ${prev})`);
    else nodeNames.set(r.name, `routers[${i}]`);
  });
  t.clients.forEach((c, i) => {
    const prev = nodeNames.get(c.name);
    if (prev) add(['clients', i, 'name'], `duplicate node name "${c.name}" (first at ${prev}); routers and clients share one name space`);
    else nodeNames.set(c.name, `clients[${i}]`);
  });
  const circuitNames = new Map<string, number>();
  t.circuits.forEach((c, i) => {
    if (circuitNames.has(c.name)) add(['circuits', i, 'name'], `duplicate circuit name "${c.name}" (first at circuits[${circuitNames.get(c.name)}])`);
    else circuitNames.set(c.name, i);
  });

  // references
  const routerNames = new Set(t.routers.map((r) => r.name));
  const clientNames = new Set(t.clients.map((c) => c.name));
  const known = (set: Set<string>) => [...set].slice(0, 8).join(', ') + (set.size > 8 ? ', ...' : '');
  t.routers.forEach((r, i) => {
    if (!opNames.has(r.operator)) add(['routers', i, 'operator'], `unknown operator "${r.operator}" (known: ${known(new Set(opNames.keys()))})`);
  });
  t.clients.forEach((c, i) => {
    c.entry.forEach((e, j) => {
      if (!routerNames.has(e)) add(['clients', i, 'entry', j], `unknown router "${e}"`);
    });
  });
  const linkSeen = new Map<string, number>();
  t.links.forEach(([a, b], i) => {
    [a, b].forEach((n, j) => {
      if (!routerNames.has(n) && !clientNames.has(n)) add(['links', i, j], `unknown node "${n}"`);
    });
    if (a === b) add(['links', i], `a link needs two different nodes, got "${a}" twice`);
    if (clientNames.has(a) && clientNames.has(b)) add(['links', i], `clients "${a}" and "${b}" cannot be overlay neighbours; a client links only to routers`);
    const k = a < b ? `${a}~${b}` : `${b}~${a}`;
    if (linkSeen.has(k)) add(['links', i], `duplicate link ${a} - ${b} (first at links[${linkSeen.get(k)}])`);
    else linkSeen.set(k, i);
  });
  t.circuits.forEach((c, i) => {
    if (!clientNames.has(c.client)) add(['circuits', i, 'client'], `unknown client "${c.client}" (known: ${known(clientNames)})`);
  });

  // addresses: underlay addresses unique; pools disjoint from each other and from every
  // underlay / exit address; destinations never inside a pool
  const addrs: { addr: number; path: (string | number)[] }[] = [];
  const seenAddr = new Map<number, string>();
  const noteAddr = (text: string, path: (string | number)[]) => {
    const addr = ipOf(text);
    const prev = seenAddr.get(addr);
    if (prev) add(path, `address ${formatIPv4(addr)} is already used at ${prev}`);
    else seenAddr.set(addr, path.join('.'));
    addrs.push({ addr, path });
  };
  t.routers.forEach((r, i) => {
    noteAddr(r.underlay.address, ['routers', i, 'underlay', 'address']);
    if (r.exit?.address) noteAddr(r.exit.address, ['routers', i, 'exit', 'address']);
  });
  t.clients.forEach((c, i) => noteAddr(c.underlay.address, ['clients', i, 'underlay', 'address']));
  const pools: { pool: Cidr; i: number }[] = t.routers.map((r, i) => ({ pool: parseCidr(r.pool), i }));
  for (const { pool, i } of pools) {
    for (const o of pools) {
      if (o.i < i && cidrOverlaps(pool, o.pool)) {
        add(['routers', i, 'pool'], `pool ${formatCidr(pool)} overlaps the pool of ${t.routers[o.i]!.name} (${formatCidr(o.pool)})`);
      }
    }
    for (const a of addrs) {
      if (cidrContainsAddr(pool, a.addr)) add(['routers', i, 'pool'], `pool ${formatCidr(pool)} contains the underlay address ${formatIPv4(a.addr)} (${a.path.join('.')})`);
    }
  }
  t.circuits.forEach((c, i) => {
    c.to.forEach((d, j) => {
      const dc = parseCidr(d);
      for (const { pool, i: ri } of pools) {
        if (cidrOverlaps(dc, pool)) add(['circuits', i, 'to', j], `destination ${d} overlaps the pool of ${t.routers[ri]!.name} (${formatCidr(pool)})`);
      }
      // a destination that covers an underlay address would route the overlay itself (and the
      // client's own subnet, SSH included) into the circuit and its fail-closed block policy
      const hit = addrs.find((a) => cidrContainsAddr(dc, a.addr) && !a.path.includes('exit'));
      if (hit) add(['circuits', i, 'to', j], `destination ${d} contains the underlay address ${formatIPv4(hit.addr)} (${hit.path.join('.')}); circuits must not carry the overlay's own traffic`);
    });
  });
  // one client, two circuits, overlapping destinations: the kernel could not tell which
  // circuit a packet belongs to
  // (compared within each client's circuits, destinations parsed once: comparing every pair of
  // circuits made this O(circuits^2) and the slowest step of planning 10,000 circuits)
  const earlier = new Map<string, { j: number; to: Cidr[] }[]>();
  t.circuits.forEach((c, i) => {
    const to = c.to.map(parseCidr);
    let same = earlier.get(c.client);
    if (!same) earlier.set(c.client, (same = []));
    for (const { j, to: oto } of same) {
      const o = t.circuits[j]!;
      for (const [di, d] of c.to.entries()) {
        for (const [ei, e] of o.to.entries()) {
          if (cidrOverlaps(to[di]!, oto[ei]!)) {
            add(['circuits', i, 'to', di], `destination ${d} overlaps ${e} of circuit "${o.name}" of the same client; each destination of a client must belong to one circuit`);
          }
        }
      }
    }
    same.push({ j: i, to });
  });
  // TFC padding: telescope layer numbers exist in this circuit (1..k) and are listed once
  t.circuits.forEach((c, i) => {
    const layers = c.tfcpad?.layers;
    if (!Array.isArray(layers)) return;
    const k = c.hops ?? t.hops;
    const seen = new Set<number>();
    layers.forEach((l, j) => {
      if (l > k) add(['circuits', i, 'tfcpad', 'layers', j], `circuit "${c.name}" has ${k} telescope layers (1 = the entry's, ${k} = the exit's); there is no layer ${l}`);
      else if (seen.has(l)) add(['circuits', i, 'tfcpad', 'layers', j], `layer ${l} is listed twice`);
      seen.add(l);
    });
  });
  t.routers.forEach((r, i) => {
    if (r.exit && r.exit.interface && r.exit.interface !== r.underlay.interface && !r.exit.address) {
      add(['routers', i, 'exit'], `exit interface "${r.exit.interface}" differs from the underlay interface, so the exit needs its own "address"`);
    }
  });

  return issues;
}

function ipOf(ifaddr: string): number {
  const cidr = ifaddr.split('/')[0]!;
  return parseCidr(cidr).base;
}
