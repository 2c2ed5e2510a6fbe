/**
 * The topology a lab runs, as a file (pure): `<lab dir>/topology.yaml`. It is what
 * `onionctl apply|plan|destroy|status` need to treat the lab's nodes exactly like real routers:
 *   - the user's topology, or its lab-safe copy when addresses had to be moved (remap.ts);
 *   - for every router and client an `ssh:` block: its management address, port 22, user root
 *     and its pinned ed25519 host key (so no known_hosts file is needed);
 *   - `nat: iptables` for routers (and the topology default) whose nftables backend the lab
 *     kernel lacks (User-Mode Linux has no nf_tables for IPv4);
 *   - `routeOptions: { quickack: true }`: delayed ACKs on zero-latency veths stall transfers.
 */
import { stringify as stringifyYaml } from 'yaml';
import type { Topology } from '../topology/schema.js';

export interface LabTopologyOptions {
  /** node name -> management address (dotted quad) */
  mgmt: ReadonlyMap<string, string>;
  /** node name -> "ssh-ed25519 AAAA..." */
  hostKeys: ReadonlyMap<string, string>;
  /** routers whose nftables backend is replaced by iptables (the lab kernel has no nf_tables) */
  nftReplaced: readonly string[];
}

function sshBlock(node: string, o: LabTopologyOptions) {
  const host = o.mgmt.get(node);
  const hostKey = o.hostKeys.get(node);
  if (!host || !hostKey) throw new Error(`internal: no management address or host key for ${node}`);
  return { host, port: 22, user: 'root', hostKey };
}

export function labTopology(t: Topology, o: LabTopologyOptions): Topology {
  const noNft = o.nftReplaced.length > 0;
  return {
    ...t,
    ...(noNft && t.nat === 'nftables' ? { nat: 'iptables' as const } : {}),
    routeOptions: { ...(t.routeOptions ?? {}), quickack: true },
    routers: t.routers.map((r) => {
      const replaced = o.nftReplaced.includes(r.name);
      return {
        ...r,
        ...(replaced ? { nat: 'iptables' as const } : {}),
        ...(replaced && r.exit ? { exit: { ...r.exit, ...(r.exit.nat === 'nftables' ? { nat: 'iptables' as const } : {}) } } : {}),
        ssh: sshBlock(r.name, o),
      };
    }),
    clients: t.clients.map((c) => ({ ...c, ssh: sshBlock(c.name, o) })),
  };
}

/** The file's text: a comment header, then the YAML. */
export function labTopologyText(t: Topology, header: readonly string[]): string {
  return header.map((l) => `# ${l}`.trimEnd()).join('\n') + '\n' + stringifyYaml(t, { lineWidth: 0 });
}
