/**
 * Circuits that state what they carry (issue 15, defect 5): an exit is chosen only when its allow
 * list lets all of it out, validate names the circuit no exit would carry, and audit says what a
 * circuit's exit drops (a state made before the circuit said, or a circuit that says nothing).
 */
import { describe, expect, test } from '@jest/globals';
import { readFileSync } from 'node:fs';
import { auditState } from '../../src/audit/audit.js';
import { parseCidr } from '../../src/net/addr.js';
import { rngFactory } from '../../src/pathselect/rng.js';
import { PathSpace, constraintsFor } from '../../src/pathselect/select.js';
import { reconcile } from '../../src/state/reconcile.js';
import { emptyState } from '../../src/state/model.js';
import { TopologyError } from '../../src/topology/diagnostics.js';
import { droppedTraffic, trafficText } from '../../src/topology/exit-policy.js';
import type { AllowResolved } from '../../src/topology/net.js';
import { parseBuildableTopology } from '../../src/pathselect/buildable.js';
import { buildNet } from '../../src/topology/net.js';
import { examplePath } from '../helpers/net.js';

const LARGE = readFileSync(examplePath('large.yaml'), 'utf8');
const THREE = readFileSync(examplePath('three-mixes.yaml'), 'utf8');

/** large.yaml with a circuit "resolver" (bob to 203.0.113.90, no distinctness constraints) saying what it carries */
const largeWith = (lines: string) => {
  const anchor = '\ncircuits:\n';
  if (!LARGE.includes(anchor)) throw new Error('large.yaml changed: update the anchor');
  return LARGE.replace(anchor, `${anchor}  - name: resolver\n    client: bob\n    to: [203.0.113.90/32]\n${lines}`);
};

function exitsOf(yaml: string, circuit: string): Set<string> {
  const net = buildNet(parseBuildableTopology(yaml, 'large.yaml').topology);
  const def = net.circuits.find((c) => c.name === circuit)!;
  const space = new PathSpace(net, constraintsFor(net, def));
  const exits = new Set<string>();
  for (let i = 0; i < space.count(); i++) exits.add(space.nth(i)!.at(-1)!);
  return exits;
}

function diagnostics(yaml: string): string[] {
  try {
    parseBuildableTopology(yaml, 't.yaml');
  } catch (e) {
    if (e instanceof TopologyError) return e.diagnostics.map((d) => `${d.line}:${d.col}: ${d.message}`);
    throw e;
  }
  return [];
}

describe('the exit policy as a set of traffic', () => {
  const allow = (rules: Omit<AllowResolved, 'to'>[], to = '203.0.113.0/24'): AllowResolved[] => rules.map((r) => ({ to: parseCidr(to), ...r }));
  const d = parseCidr('203.0.113.53/32');
  test.each([
    [[{ proto: 'tcp', ports: [443] }], { proto: 'udp', ports: [53] }, 'udp 53'],
    [[{ proto: 'udp', ports: [53] }], { proto: 'udp', ports: [53] }, undefined],
    [[{ proto: 'udp', ports: ['50-60'] }], { proto: 'udp', ports: [53, '55-58'] }, undefined],
    [[{ proto: 'tcp', ports: [80, '8000-8099'] }], { proto: 'tcp', ports: ['8050-8200'] }, 'tcp 8100-8200'],
    [[{ proto: 'tcp' }], { proto: 'tcp', ports: [1, 65535] }, undefined],
    [[{ proto: 'any' }], { proto: 'any' }, undefined],
    [[{ proto: 'tcp', ports: [80, 443] }, { proto: 'icmp' }], { proto: 'any' }, 'tcp 1-79,81-442,444-65535, udp, other protocols'],
    [[{ proto: 'icmp' }], { proto: 'icmp' }, undefined],
    [[], { proto: 'icmp' }, 'icmp'],
  ] as [Omit<AllowResolved, 'to'>[], Parameters<typeof droppedTraffic>[2], string | undefined][])('%j lets %j out, dropping %j', (rules, traffic, drops) => {
    expect(droppedTraffic(allow(rules), d, traffic)).toBe(drops);
  });

  test('a rule for a wider destination counts; one for a narrower or other destination does not', () => {
    expect(droppedTraffic(allow([{ proto: 'any' }], '203.0.113.0/25'), d, { proto: 'udp', ports: [53] })).toBeUndefined();
    expect(droppedTraffic(allow([{ proto: 'any' }], '203.0.113.128/25'), d, { proto: 'udp', ports: [53] })).toBe('udp 53');
  });

  test('traffic as messages say it', () => {
    expect(trafficText({ proto: 'udp', ports: [53, 54, '100-200', 150] })).toBe('udp 53-54,100-200');
    expect(trafficText({ proto: 'any' })).toBe('any traffic');
  });
});

describe('path selection and validate', () => {
  test('large.yaml: a circuit saying udp 53 only ever gets or10 (allow any) or or11 (udp 53) as its exit; unstated, also or12 (or09 admits it too, but no path from bob reaches it)', () => {
    expect(exitsOf(largeWith(''), 'resolver')).toEqual(new Set(['or10', 'or11', 'or12']));
    expect(exitsOf(largeWith('    proto: udp\n    ports: [53]\n'), 'resolver')).toEqual(new Set(['or10', 'or11']));
    expect(exitsOf(largeWith('    proto: tcp\n    ports: [8080]\n'), 'resolver')).toEqual(new Set(['or10', 'or11']));
    expect(exitsOf(largeWith('    proto: tcp\n    ports: [443]\n'), 'resolver')).toEqual(new Set(['or10', 'or12']));
  });

  test("the issue's case: a DNS circuit where the only exit admits tcp 80,443 and icmp is refused at validate time, at the circuit, saying what would be dropped", () => {
    const yaml = THREE.replace('    to: [203.0.113.80/32]\n', '    to: [203.0.113.80/32]\n    proto: udp\n    ports: [53]\n');
    expect(yaml).not.toBe(THREE);
    const d = diagnostics(yaml);
    expect(d).toHaveLength(1);
    expect(d[0]).toMatch(/^\d+:\d+: circuits\[0\]: circuit "web" cannot be built: no exit lets the circuit's traffic \(udp 53\) out to all of its destinations \(or3 would drop udp 53\)/);
  });

  test('ports need tcp or udp on a circuit too', () => {
    const yaml = THREE.replace('    to: [203.0.113.80/32]\n', '    to: [203.0.113.80/32]\n    ports: [53]\n');
    expect(diagnostics(yaml)).toEqual([expect.stringMatching(/circuits\[0\]\.ports: ports need proto tcp or udp$/)]);
  });
});

describe('audit', () => {
  const plan = (yaml: string) => {
    const net = buildNet(parseBuildableTopology(yaml, 't.yaml').topology);
    return { net, state: reconcile(net, emptyState('ab'.repeat(32)), rngFactory('exit-policy'), '2026-01-01T00:00:00Z').state };
  };

  test('a circuit that states nothing: audit says what its exit drops, and the invariants still hold', () => {
    const { net, state } = plan(THREE);
    const a = auditState(net, state);
    expect(a.ok).toBe(true);
    expect(a.exitDrops).toEqual([{ circuit: 'web', exit: 'or3', destination: '203.0.113.80', traffic: 'unstated', drops: 'tcp 1-79,81-442,444-65535, udp, other protocols' }]);
  });

  test('a state planned before the circuit said udp 53, with an exit that drops it: audit fails the path invariant and lists the drop', () => {
    // the first seed whose unstated plan gives the circuit an exit that drops udp 53 (or12)
    let found: { state: ReturnType<typeof plan>['state']; exit: string } | undefined;
    for (let seed = 0; seed < 50 && !found; seed++) {
      const net = buildNet(parseBuildableTopology(largeWith(''), 't.yaml').topology);
      const state = reconcile(net, emptyState('ab'.repeat(32)), rngFactory(`exit-policy-${seed}`), '2026-01-01T00:00:00Z').state;
      const exit = state.circuits.resolver!.hops.at(-1)!;
      if (exit === 'or09' || exit === 'or12') found = { state, exit };
    }
    expect(found).toBeDefined();
    const stated = buildNet(parseBuildableTopology(largeWith('    proto: udp\n    ports: [53]\n'), 't.yaml').topology);
    const a = auditState(stated, found!.state);
    expect(a.ok).toBe(false);
    expect(a.invariants.find((i) => i.name === 'path')!.violations.map((v) => v.message)).toContainEqual(
      expect.stringContaining(`exit ${found!.exit} would drop the circuit's traffic (udp 53)`),
    );
    expect(a.exitDrops).toContainEqual({ circuit: 'resolver', exit: found!.exit, destination: '203.0.113.90', traffic: 'udp 53', drops: 'udp 53' });
  });
});
