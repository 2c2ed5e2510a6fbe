/**
 * The lab's own topology file (src/lab/topology-file.ts): what `onionctl apply` reads to reach the
 * lab's nodes like real routers. It must parse and validate like any topology, carry an ssh block
 * with a pinned key per node, quickack, and iptables where the lab kernel lacks nf_tables; and it
 * must plan exactly the circuits and configurations of the topology it came from.
 */
import { describe, expect, test } from '@jest/globals';
import { readFileSync } from 'node:fs';
import { parseBuildableTopology } from '../../src/pathselect/buildable.js';
import { buildNet } from '../../src/topology/net.js';
import { labTopology, labTopologyText } from '../../src/lab/topology-file.js';
import { sshTargetFor } from '../../src/remote/fleet.js';
import { buildConfigs } from '../../src/spd/build.js';
import { computePlan } from '../../src/plan/plan.js';
import { rngFactory } from '../../src/pathselect/rng.js';
import { emptyState } from '../../src/state/model.js';
import { examplePath, dedent } from '../helpers/net.js';

const keyOf = (i: number) => `ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI${String(i).repeat(43).slice(0, 43)}`;

function optionsFor(names: string[], nftReplaced: string[] = []) {
  return {
    mgmt: new Map(names.map((n, i) => [n, `100.127.0.${i + 2}`])),
    hostKeys: new Map(names.map((n, i) => [n, keyOf(i)])),
    nftReplaced,
  };
}

describe('the lab topology file', () => {
  const file = examplePath('three-mixes.yaml');
  const { topology: t } = parseBuildableTopology(readFileSync(file, 'utf8'), file);
  const names = [...t.routers.map((r) => r.name), ...t.clients.map((c) => c.name)];

  test('parses back (schema and semantics) with an ssh block per node, quickack on', () => {
    const text = labTopologyText(labTopology(t, optionsFor(names)), ['made by a test', '', 'second line']);
    expect(text.startsWith('# made by a test\n#\n# second line\n')).toBe(true);
    const back = parseBuildableTopology(text, 'lab.yaml').topology;
    const net = buildNet(back);
    expect(net.quickack).toBe(true);
    names.forEach((n, i) => {
      expect(sshTargetFor(net, n)).toEqual({ node: n, host: `100.127.0.${i + 2}`, port: 22, user: 'root', hostKey: keyOf(i) });
    });
  });

  test('plans the same circuits and, quickack aside, the same configuration as the original', () => {
    const back = buildNet(parseBuildableTopology(labTopologyText(labTopology(t, optionsFor(names)), []), 'lab.yaml').topology);
    const orig = buildNet(t);
    const plan = (net: typeof orig) => computePlan({ net, state: emptyState('a'.repeat(64)), rngFor: rngFactory('7'), now: '2025-01-01T00:00:00Z' });
    const a = plan(orig);
    const b = plan(back);
    expect(b.state.circuits).toEqual(a.state.circuits);
    orig.quickack = true;
    expect(buildConfigs(back, b.state)).toEqual(buildConfigs(orig, a.state));
  });

  test('routers whose nftables backend the lab kernel lacks use iptables; the others keep theirs', () => {
    const yaml = dedent(`
      version: 1
      nat: nftables
      operators: [{ name: a }, { name: b }]
      routers:
        - { name: r1, operator: a, nat: nftables, underlay: { interface: eth0, address: 198.51.100.1/24 }, pool: 100.64.1.0/24 }
        - { name: r2, operator: b, underlay: { interface: eth0, address: 198.51.100.2/24 }, pool: 100.64.2.0/24,
            exit: { interface: eth1, address: 203.0.113.1/24, nat: nftables, allow: [{ to: 203.0.113.0/24 }] } }
      clients: [{ name: c, underlay: { interface: eth0, address: 198.51.100.3/24 }, entry: [r1] }]
      links: [[r1, r2]]
      circuits: [{ name: x, client: c, to: [203.0.113.80/32], hops: 2 }]
    `);
    const src = parseBuildableTopology(yaml, 'nft.yaml').topology;
    const n = ['r1', 'r2', 'c'];
    const none = buildNet(parseBuildableTopology(labTopologyText(labTopology(src, optionsFor(n)), []), 'a.yaml').topology);
    expect([none.nat, none.routers.get('r1')!.nat, none.routers.get('r2')!.nat, none.routers.get('r2')!.exit!.nat]).toEqual(['nftables', 'nftables', 'nftables', 'nftables']);
    const lab = buildNet(parseBuildableTopology(labTopologyText(labTopology(src, optionsFor(n, ['r1', 'r2'])), []), 'b.yaml').topology);
    expect([lab.nat, lab.routers.get('r1')!.nat, lab.routers.get('r2')!.nat, lab.routers.get('r2')!.exit!.nat]).toEqual(['iptables', 'iptables', 'iptables', 'iptables']);
  });

  test('a node without a management address or host key is an internal error, not a silent gap', () => {
    expect(() => labTopology(t, optionsFor(names.slice(1)))).toThrow(/or1/);
  });
});
