/**
 * Topologies for bench/apply.ts: R routers and C clients, every router an exit run by its own
 * operator, a full mesh of overlay links, every client entering through every router, and
 * `circuits` circuits of k = 2 hops (the smallest k the schema allows) spread evenly over the
 * clients. Path selection is uniform among the R·(R-1) ordered router pairs, so every router
 * carries about the same number of circuits: 2·circuits/R hops.
 *
 * Addresses (all lab-safe, so `onionctl lab up` needs no remapping):
 *   underlay 198.18.0.0/24 (routers .10+i, clients .100+j), exits' outside 198.19.0.0/24 (.1+i),
 *   pools 100.64.0.0/22 + 4i (1,022 addresses, room for every hop of every circuit),
 *   destinations /32s in 203.0.113.0/24, 198.51.100.0/24, 192.0.2.0/24: circuit j of every
 *   client goes to the j-th address, so clients share destinations.
 *
 * The lab starts one HTTP server per distinct destination address (`lab up`); the benchmark
 * therefore brings the lab up with the skeleton (`circuits` = a few) and applies the full
 * topology, built with the same function, from the lab's controller namespace.
 */
import type { TopologyInput } from '../src/topology/schema.js';

export interface ApplyTopoOptions {
  routers: number;
  clients: number;
  circuits: number;
  hops?: number;
}

const DEST_NETS = ['203.0.113', '198.51.100', '192.0.2'] as const;

export const benchRouter = (i: number) => `r${i}`;
export const benchClient = (j: number) => `c${j}`;

export function applyTopology(o: ApplyTopoOptions): TopologyInput {
  const R = o.routers;
  const C = o.clients;
  const k = o.hops ?? 2;
  if (!Number.isInteger(R) || R < k || R > 64) throw new RangeError(`applyTopology: routers must be ${k}..64`);
  if (!Number.isInteger(C) || C < 1 || C > 100) throw new RangeError('applyTopology: clients must be 1..100');
  const perClient = Math.ceil(o.circuits / C);
  if (perClient > 3 * 254) throw new RangeError('applyTopology: too many circuits per client for the destination plan');

  const operators = Array.from({ length: R }, (_, i) => ({ name: `op${i}` }));
  const routers: TopologyInput['routers'] = Array.from({ length: R }, (_, i) => ({
    name: benchRouter(i),
    operator: `op${i}`,
    underlay: { interface: 'eth0', address: `198.18.0.${10 + i}/24` },
    pool: `100.64.${4 * i}.0/22`,
    exit: {
      interface: 'eth1',
      address: `198.19.0.${1 + i}/24`,
      nat: 'iptables' as const,
      allow: DEST_NETS.map((n) => ({ to: `${n}.0/24` })),
    },
  }));
  const clients: TopologyInput['clients'] = Array.from({ length: C }, (_, j) => ({
    name: benchClient(j),
    underlay: { interface: 'eth0', address: `198.18.0.${100 + j}/24` },
    entry: routers.map((r) => r.name),
  }));
  const links: [string, string][] = [];
  for (let a = 0; a < R; a++) for (let b = a + 1; b < R; b++) links.push([benchRouter(a), benchRouter(b)]);
  const circuits: NonNullable<TopologyInput['circuits']> = [];
  for (let n = 0; n < o.circuits; n++) {
    const c = n % C;
    const j = Math.floor(n / C);
    circuits.push({ name: `${benchClient(c)}-${j}`, client: benchClient(c), to: [`${DEST_NETS[j % 3]}.${1 + Math.floor(j / 3)}/32`] });
  }
  return { version: 1, hops: k, nat: 'iptables', operators, routers, clients, links, circuits };
}
