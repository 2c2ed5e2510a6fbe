/**
 * Shared test helpers: build a Net from an inline YAML string (validated, as the CLI does, or
 * schema-only for topologies that validation would refuse), read the examples, and a few
 * canonical topologies used across the planner tests.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { parseBuildableTopology } from '../../src/pathselect/buildable.js';
import { buildNet, type Net } from '../../src/topology/net.js';
import { TopologySchema, type Topology } from '../../src/topology/schema.js';
import { packageRoot } from '../../src/util/files.js';

/** Strips the common indentation of a template literal so YAML can be written indented in tests. */
export function dedent(text: string): string {
  const lines = text.replace(/^\n/, '').split('\n');
  const indents = lines.filter((l) => l.trim() !== '').map((l) => /^ */.exec(l)![0].length);
  const cut = indents.length > 0 ? Math.min(...indents) : 0;
  return lines.map((l) => l.slice(cut)).join('\n');
}

/** Parses and fully validates (schema + semantics, including path eligibility), like `onionctl validate`. */
export function topologyFromYaml(yaml: string, file = 'inline.yaml'): Topology {
  return parseBuildableTopology(dedent(yaml), file).topology;
}

export function netFromYaml(yaml: string, file = 'inline.yaml'): Net {
  return buildNet(topologyFromYaml(yaml, file));
}

/**
 * Schema only, no semantic validation: for topologies on which no circuit can be built (which
 * validation rejects by calling diagnose()).
 */
export function netFromYamlUnchecked(yaml: string): Net {
  return buildNet(TopologySchema.parse(parseYaml(dedent(yaml))));
}

export function examplePath(name: string): string {
  return path.join(packageRoot(), 'examples', name);
}

export function exampleNet(name: string): Net {
  const file = examplePath(name);
  return buildNet(parseBuildableTopology(readFileSync(file, 'utf8'), file).topology);
}

/**
 * k=2: alice -> or1 -> or2 (exit), one circuit with two destinations admitted by different
 * allow rules, so that the client gets two out/in/block policies.
 */
export const K2_YAML = `
  version: 1
  hops: 2
  crypto: aes-gcm
  operators: [{ name: alpha }, { name: beta }]
  routers:
    - name: or1
      operator: alpha
      underlay: { interface: eth0, address: 198.51.100.21/24 }
      pool: 100.64.21.0/24
    - name: or2
      operator: beta
      underlay: { interface: eth0, address: 198.51.100.22/24 }
      pool: 100.64.22.0/24
      exit:
        allow:
          - { to: 203.0.113.0/24, proto: tcp, ports: [80, 443, "8000-8080"] }
          - { to: 192.0.2.0/24, proto: any }
  clients:
    - name: alice
      underlay: { interface: eth0, address: 198.51.100.20/24 }
      entry: [or1]
  links:
    - [or1, or2]
  circuits:
    - name: two
      client: alice
      to: [203.0.113.80/32, 192.0.2.0/28]
`;

/**
 * k=4: six routers of six operators, two exits (one with its own outside interface and the
 * nftables backend), two clients and two circuits that share routers.
 */
export const K4_YAML = `
  version: 1
  hops: 4
  crypto: aes-gcm
  operators: [{ name: o1 }, { name: o2 }, { name: o3 }, { name: o4 }, { name: o5 }, { name: o6 }]
  routers:
    - { name: r1, operator: o1, underlay: { interface: eth0, address: 198.51.100.41/24 }, pool: 100.64.41.0/24 }
    - { name: r2, operator: o2, underlay: { interface: ens3, address: 198.51.100.42/24 }, pool: 100.64.42.0/24 }
    - { name: r3, operator: o3, underlay: { interface: eth0, address: 198.51.100.43/24 }, pool: 100.64.43.0/24 }
    - { name: r4, operator: o4, underlay: { interface: eth0, address: 198.51.100.44/24 }, pool: 100.64.44.0/24 }
    - name: r5
      operator: o5
      underlay: { interface: eth0, address: 198.51.100.45/24 }
      pool: 100.64.45.0/24
      exit:
        allow:
          - { to: 203.0.113.0/24, proto: any }
    - name: r6
      operator: o6
      underlay: { interface: eth0, address: 198.51.100.46/24 }
      pool: 100.64.46.0/24
      exit:
        interface: eth1
        address: 192.0.2.6/24
        nat: nftables
        allow:
          - { to: 203.0.113.0/24, proto: tcp, ports: [443] }
          - { to: 203.0.113.0/24, proto: icmp }
  clients:
    - { name: alice, underlay: { interface: eth0, address: 198.51.100.40/24 }, entry: [r1] }
    - { name: bob, underlay: { interface: eth0, address: 198.51.100.39/24, mtu: 1400 }, entry: [r1, r2] }
  links:
    - [r1, r2]
    - [r2, r3]
    - [r3, r4]
    - [r4, r5]
    - [r4, r6]
    - [r1, r3]
    - [r3, r5]
  circuits:
    - { name: a1, client: alice, to: [203.0.113.0/25, 203.0.113.200/32] }
    - { name: b1, client: bob, to: [203.0.113.128/26] }
`;
