/**
 * The recorded read-back fixtures (test/fixtures/readback, see its README) and the plans they
 * were recorded from: the UML lab's three-mixes plan, and the host recording's K4 plan.
 */
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import type { KeySource } from '../../src/keys/kdf.js';
import type { Cidr } from '../../src/net/addr.js';
import { rngFactory } from '../../src/pathselect/rng.js';
import { computePlan, type Plan } from '../../src/plan/plan.js';
import { observeNode, type ObservedNode, type ReadbackOutputs } from '../../src/readback/observed.js';
import { emptyState } from '../../src/state/model.js';
import type { Net } from '../../src/topology/net.js';
import { packageRoot } from '../../src/util/files.js';
import { K4_YAML, exampleNet, netFromYaml } from './net.js';

export const FIXTURES = path.join(packageRoot(), 'test', 'fixtures', 'readback');

export function fixture(set: 'uml-6.1' | 'host-6.18', node: string, file: string): string {
  return readFileSync(path.join(FIXTURES, set, node, `${file}.txt`), 'utf8');
}

export function fixtureFiles(set: 'uml-6.1' | 'host-6.18'): { node: string; file: string; text: string }[] {
  const dir = path.join(FIXTURES, set);
  const out: { node: string; file: string; text: string }[] = [];
  for (const node of readdirSync(dir, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name).sort()) {
    for (const f of readdirSync(path.join(dir, node)).sort()) out.push({ node, file: f, text: readFileSync(path.join(dir, node, f), 'utf8') });
  }
  return out;
}

/** the fixtures' keys are all zero: this source "plans" exactly those */
export const ZERO_KEYS: KeySource = { key: (_sa, n) => Buffer.alloc(n) };

export const poolsOf = (net: Net): Cidr[] => [...net.routers.values()].map((r) => r.pool);

/** examples/three-mixes.yaml as `onionctl lab` plans it (quickack on) */
export function labNet(yamlTransform?: (yaml: string) => string): Net {
  if (!yamlTransform) {
    const n = exampleNet('three-mixes.yaml');
    n.quickack = true;
    return n;
  }
  const text = yamlTransform(readFileSync(path.join(packageRoot(), 'examples', 'three-mixes.yaml'), 'utf8'));
  const n = netFromYaml(text);
  n.quickack = true;
  return n;
}

export function labPlan(): Plan {
  return computePlan({ net: labNet(), state: emptyState('00'.repeat(32)), rngFor: rngFactory('lab'), now: '2024-01-01T00:00:00Z' });
}

export const UML_NODES = ['alice', 'or1', 'or2', 'or3'] as const;

export function umlObserved(node: string, net: Net, variant: '' | '-s' = '-s'): ObservedNode {
  const f = (c: string) => fixture('uml-6.1', node, c);
  const out: ReadbackOutputs = {
    xfrmState: f(variant === '-s' ? 'ip-s-xfrm-state' : 'ip-xfrm-state'),
    xfrmPolicy: f(variant === '-s' ? 'ip-s-xfrm-policy' : 'ip-xfrm-policy'),
    routes: f(variant === '-s' ? 'ip-d-route-main' : 'ip-route-main'),
    addresses: f('ip-4-addr-lo'),
    iptablesSave: f('iptables-save'),
  };
  return observeNode(node, out, { pools: poolsOf(net) });
}

export function k4Net(yamlTransform: (yaml: string) => string = (y) => y): Net {
  return netFromYaml(yamlTransform(K4_YAML));
}

/** the plan test/fixtures/readback/record-host.mjs loaded */
export function k4Plan(): Plan {
  return computePlan({ net: k4Net(), state: emptyState('e7'.repeat(32)), rngFor: rngFactory('k4-b'), now: '2024-01-01T00:00:00Z' });
}

export function hostObserved(node: string, net: Net, variant: '' | '-s' = ''): ObservedNode {
  const f = (c: string) => fixture('host-6.18', node, c);
  return observeNode(
    node,
    {
      xfrmPolicy: f(variant === '-s' ? 'ip-s-xfrm-policy' : 'ip-xfrm-policy'),
      routes: f(variant === '-s' ? 'ip-d-route-main' : 'ip-route-main'),
      addresses: f('ip-4-addr-lo'),
      iptablesSave: f('iptables-save'),
      nft: f('nft-list-ruleset'),
    },
    { pools: poolsOf(net) },
  );
}
