/**
 * onionctl audit (src/audit, src/cli/audit-command.ts):
 *  - the observation table for examples/three-mixes.yaml is what the paper says;
 *  - a state edited by hand so that one operator runs both entry and exit fails (unit level and
 *    through the command, exit 1 naming circuit and party), and audit never writes the state;
 *  - configurations broken on purpose (no SNAT, missing telescope layers) are caught by the walk;
 *  - the adversary shares match a hand computation on a small topology.
 */
import { describe, expect, test } from '@jest/globals';
import { promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { adversaryReport, drawCompromised, routerOperators } from '../../src/audit/adversary.js';
import { auditState, type AuditResult } from '../../src/audit/audit.js';
import { compareObservations, formatObservations, kernelTemplatesMatch, observe, type ObservedRow } from '../../src/audit/observe.js';
import { PRIORITY_NESTED, type XfrmTmpl } from '../../src/model/config.js';
import { runAudit } from '../../src/cli/audit-command.js';
import { SeededRng, rngFactory } from '../../src/pathselect/rng.js';
import { computePlan, type Plan } from '../../src/plan/plan.js';
import { emptyState, type State } from '../../src/state/model.js';
import { parseBuildableTopology } from '../../src/pathselect/buildable.js';
import { buildNet, type Net } from '../../src/topology/net.js';
import { packageRoot } from '../../src/util/files.js';

const SALT = 'ab'.repeat(32);

function netOf(text: string, file = 'test.yaml'): Net {
  return buildNet(parseBuildableTopology(text, file).topology);
}
function planOf(net: Net, seed = '1'): Plan {
  return computePlan({ net, state: emptyState(SALT), rngFor: rngFactory(seed), now: '2024-01-01T00:00:00Z' });
}
const example = (name: string) => path.join(packageRoot(), 'examples', name);

const ALICE = '198.51.100.10';
const OR = { or1: '198.51.100.11', or2: '198.51.100.12', or3: '198.51.100.13' };
const OR3_OUT = '203.0.113.1';
const DEST = '203.0.113.80';

function addrsOf(rows: readonly ObservedRow[]): Set<string> {
  return new Set(rows.flatMap((r) => [r.src, r.dst]));
}
function violations(a: AuditResult) {
  return a.invariants.flatMap((i) => i.violations);
}

describe('three-mixes: the observation table is what the paper says', () => {
  const net = netOf(readFileSync(example('three-mixes.yaml'), 'utf8'));
  const plan = planOf(net);
  const a = auditState(net, plan.state, plan.configs);
  const c = plan.state.circuits.web!;
  const [A1, A2, A3] = c.addrs;
  const obs = a.table.observations;

  test('every invariant holds and the walk carries the packet both ways', () => {
    expect(a.table.errors).toEqual([]);
    expect(violations(a)).toEqual([]);
    expect(a.ok).toBe(true);
  });

  test('observation points: each overlay wire, the exit outside link, the destination', () => {
    expect(a.table.points.map((p) => p.id)).toEqual(['wire:alice~or1', 'wire:or1~or2', 'wire:or2~or3', 'outside:or3', `server:${DEST}`]);
  });

  test('overlay wires carry only ESP between underlay endpoints, k+1, k, k-1 layers deep', () => {
    const wire = (id: string) => obs[id]!.map((r) => [r.src, r.dst, r.proto, r.layers]);
    expect(wire('wire:alice~or1')).toEqual([
      [ALICE, OR.or1, 'esp', 4],
      [OR.or1, ALICE, 'esp', 4],
    ]);
    expect(wire('wire:or1~or2')).toEqual([
      [OR.or1, OR.or2, 'esp', 3],
      [OR.or2, OR.or1, 'esp', 3],
    ]);
    expect(wire('wire:or2~or3')).toEqual([
      [OR.or2, OR.or3, 'esp', 2],
      [OR.or3, OR.or2, 'esp', 2],
    ]);
    expect(obs['wire:alice~or1']![0]!.srcClass).toBe('client-real');
    expect(obs['wire:or1~or2']![0]!.srcClass).toBe('router');
  });

  test('the server (and the outside link) see only the exit address and the destination, in clear', () => {
    for (const id of ['outside:or3', `server:${DEST}`]) {
      expect(obs[id]!.map((r) => [r.srcClass, r.src, r.dstClass, r.dst, r.proto])).toEqual([
        ['exit-outside', OR3_OUT, 'destination', DEST, 'clear'],
        ['destination', DEST, 'exit-outside', OR3_OUT, 'clear'],
      ]);
    }
  });

  test('the entry sees the client real address and never the destination', () => {
    const seen = addrsOf(a.table.routers.or1!);
    expect(seen.has(ALICE)).toBe(true);
    expect(seen.has(DEST)).toBe(false);
    // it learns A_c1 -> or1 and, after peeling its layer, A_c2 -> or2
    const dec = a.table.routers.or1!.filter((r) => r.how === 'decrypted').map((r) => `${r.src}>${r.dst}`);
    expect(dec).toEqual(expect.arrayContaining([`${A1}>${OR.or1}`, `${A2}>${OR.or2}`]));
  });

  test('the middle mix sees neither end; it learns A_c2 -> or2 and A_c3 -> or3', () => {
    const seen = addrsOf(a.table.routers.or2!);
    expect(seen.has(ALICE)).toBe(false);
    expect(seen.has(DEST)).toBe(false);
    const dec = a.table.routers.or2!.filter((r) => r.how === 'decrypted').map((r) => `${r.src}>${r.dst}`);
    expect(dec).toEqual(expect.arrayContaining([`${A2}>${OR.or2}`, `${A3}>${OR.or3}`]));
  });

  test('only the exit sees the destination: A_c3 -> destination, then SNAT to its own address', () => {
    const seen = addrsOf(a.table.routers.or3!);
    expect(seen.has(ALICE)).toBe(false);
    expect(seen.has(DEST)).toBe(true);
    const rows = a.table.routers.or3!.map((r) => `${r.how} ${r.src}>${r.dst}`);
    expect(rows).toEqual(expect.arrayContaining([`decrypted ${A3}>${DEST}`, `nat ${OR3_OUT}>${DEST}`, `nat ${DEST}>${A3}`]));
    for (const [router, rows] of Object.entries(a.table.routers)) {
      if (router !== 'or3') expect(addrsOf(rows).has(DEST)).toBe(false);
    }
  });

  test('per-party views: entry, exit, operators and the wires', () => {
    const v = (kind: string, party: string) => a.views.find((x) => x.kind === kind && x.party === party)!;
    expect([v('router', 'or1').seesClient, v('router', 'or1').seesDestination]).toEqual([true, false]);
    expect([v('router', 'or2').seesClient, v('router', 'or2').seesDestination]).toEqual([false, false]);
    expect([v('router', 'or3').seesClient, v('router', 'or3').seesDestination]).toEqual([false, true]);
    expect([v('operator', 'north').seesClient, v('operator', 'south').seesDestination]).toEqual([true, true]);
    expect(v('point', `server:${DEST}`).names).toEqual([DEST, 'or3/outside']);
  });

  test('the formatter prints one block per point; compareObservations finds a capture difference', () => {
    const text = formatObservations(obs);
    expect(text).toContain('wire:alice~or1');
    expect(text).toContain(`${ALICE}  client-real alice`);
    expect(compareObservations(obs, { 'wire:or1~or2': obs['wire:or1~or2']! })).toEqual([]);
    const captured = { 'wire:or1~or2': [{ src: ALICE, dst: DEST, proto: 'clear' as const }] };
    const diff = compareObservations(obs, captured);
    expect(diff).toHaveLength(1);
    expect(diff[0]!.unexpected).toEqual([`${ALICE}>${DEST} clear`]);
    expect(diff[0]!.missing).toHaveLength(2);
  });
});

describe('large.yaml: every circuit walks and every invariant holds', () => {
  test('all circuits, k = 2, 3, 4', () => {
    const net = netOf(readFileSync(example('large.yaml'), 'utf8'));
    const plan = planOf(net, '7');
    const a = auditState(net, plan.state, plan.configs);
    expect(violations(a)).toEqual([]);
    expect(a.circuits.map((c) => c.hops.length).sort()).toEqual([2, 3, 3, 3, 3, 4]);
    // each circuit reaches its destination server
    for (const c of a.circuits) for (const t of c.to) expect(a.table.observations[`server:${t.replace('/32', '')}`]!.some((r) => r.circuit === c.name)).toBe(true);
  });
});

// ---------------------------------------------------------------------------------------------
// One operator (north) runs or1 (the only entry) and or4 (an exit). The selector only picks
// or1-or2-or3; the state is then edited to or1-or2-or4.

const SHARED = `version: 1
hops: 3
operators: [{name: north}, {name: middle}, {name: south}]
routers:
  - {name: or1, operator: north, underlay: {interface: eth0, address: 198.51.100.11/24}, pool: 100.64.1.0/24}
  - {name: or2, operator: middle, underlay: {interface: eth0, address: 198.51.100.12/24}, pool: 100.64.2.0/24}
  - name: or3
    operator: south
    underlay: {interface: eth0, address: 198.51.100.13/24}
    pool: 100.64.3.0/24
    exit: {interface: eth1, address: 203.0.113.1/24, allow: [{to: 203.0.113.0/24}]}
  - name: or4
    operator: north
    underlay: {interface: eth0, address: 198.51.100.14/24}
    pool: 100.64.4.0/24
    exit: {interface: eth1, address: 203.0.113.2/24, allow: [{to: 203.0.113.0/24}]}
clients:
  - {name: alice, underlay: {interface: eth0, address: 198.51.100.10/24}, entry: [or1]}
links: [[or1, or2], [or2, or3], [or2, or4]]
circuits:
  - {name: web, client: alice, to: [203.0.113.80/32]}
`;

function handEdited(s: State): State {
  const t = structuredClone(s);
  t.circuits.web!.hops[2] = 'or4';
  t.circuits.web!.addrs[2] = '100.64.4.1';
  return t;
}

describe('a state where one operator runs entry and exit', () => {
  const net = netOf(SHARED);
  const plan = planOf(net);

  test('the selector itself would never pick it', () => {
    expect(plan.state.circuits.web!.hops).toEqual(['or1', 'or2', 'or3']);
    expect(auditState(net, plan.state, plan.configs).ok).toBe(true);
  });

  test('unit level: the audit checks what the state says', () => {
    const a = auditState(net, handEdited(plan.state));
    expect(a.ok).toBe(false);
    const byInv = (n: string) => a.invariants.find((i) => i.name === n)!.violations;
    expect(byInv('operators')).toEqual([
      expect.objectContaining({ circuit: 'web', party: 'operator north', message: expect.stringContaining('or1 (hop 1, entry) and or4 (hop 3, exit)') }),
    ]);
    expect(byInv('separation')).toEqual([
      expect.objectContaining({ circuit: 'web', party: 'operator north', message: expect.stringContaining("alice's address 198.51.100.10 and the destination 203.0.113.80") }),
    ]);
    // the walk itself is fine: the routers would carry it (that is the danger)
    expect(byInv('delivery')).toEqual([]);
    // each router alone still sees only one end
    expect(byInv('client-hidden')).toEqual([]);
  });

  test('command level: exit 1 naming circuit and party; the state file is left as it was', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'onionctl-audit-'));
    try {
      const topo = path.join(dir, 'shared.yaml');
      await fs.writeFile(topo, SHARED);
      const stateFile = path.join(dir, 'shared.state.json');
      const text = JSON.stringify(handEdited(plan.state), null, 2) + '\n';
      await fs.writeFile(stateFile, text, { mode: 0o600 });

      const r = await runAudit(topo, {});
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('circuit web: operator north runs 2 of its hops');
      expect(r.stderr).toMatch(/separation \(stored state\): circuit web: operator north .* sees both/);
      expect(r.stderr).toContain('[party: operator north]');
      expect(r.stdout).toContain('plan would change: circuit web: re-pathed or1 -> or2 -> or4 => or1 -> or2 -> or3');
      expect(await fs.readFile(stateFile, 'utf8')).toBe(text);
      expect((await fs.readdir(dir)).sort()).toEqual(['shared.state.json', 'shared.yaml']);

      const j = await runAudit(topo, { json: true });
      expect(j.code).toBe(1);
      const doc = JSON.parse(j.stdout) as { ok: boolean; stored: { ok: boolean } };
      expect([doc.ok, doc.stored.ok]).toEqual([false, false]);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  test('command level: without a state file nothing is written and the audit passes', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'onionctl-audit-'));
    try {
      const topo = path.join(dir, 'shared.yaml');
      await fs.writeFile(topo, SHARED);
      const r = await runAudit(topo, { seed: '3' });
      expect([r.code, r.stderr]).toEqual([0, '']);
      expect(r.stdout).toContain('Result: every invariant holds.');
      expect(await fs.readdir(dir)).toEqual(['shared.yaml']);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

describe('configurations broken on purpose are caught by the walk', () => {
  const net = netOf(readFileSync(example('three-mixes.yaml'), 'utf8'));

  test('no SNAT at the exit: the destination sees the client address A_c3', () => {
    const plan = planOf(net);
    plan.configs.get('or3')!.firewall.snat = [];
    const a = auditState(net, plan.state, plan.configs);
    const v = a.invariants.find((i) => i.name === 'client-hidden')!.violations;
    expect(v.map((x) => x.party)).toEqual(expect.arrayContaining(['outside link of or3', `destination ${DEST}`]));
    expect(v[0]!.message).toContain(`alice/A_c3 ${plan.state.circuits.web!.addrs[2]}`);
  });

  test('a client policy without the telescope layers: mixes drop it, the wire is too thin', () => {
    const plan = planOf(net);
    const pol = plan.configs.get('alice')!.policies.find((p) => p.dir === 'out' && p.action === 'allow')!;
    pol.tmpls = pol.tmpls.slice(-1); // only the overlay
    const a = auditState(net, plan.state, plan.configs);
    expect(a.ok).toBe(false);
    const inv = (n: string) => a.invariants.find((i) => i.name === n)!.violations;
    expect(inv('esp-only')[0]!.message).toContain('carry 1 ESP layer(s), 4 expected');
    expect(inv('delivery')[0]!.message).toMatch(/at or1: .*XfrmInNoPols|at or1: .*XfrmInTmplMismatch/);
  });

  test('the plan of the old planner (no nested in policies): the entry mix drops it on kernels with xfrm_interface', () => {
    const plan = planOf(net);
    for (const c of plan.configs.values()) c.policies = c.policies.filter((p) => p.priority !== PRIORITY_NESTED);
    const a = auditState(net, plan.state, plan.configs);
    expect(a.ok).toBe(false);
    const v = a.invariants.find((i) => i.name === 'delivery')!.violations;
    expect(v[0]!.message).toMatch(/\(forward, .*at or1: no "in" policy matches .* an ESP packet that came through 1 ESP layer\(s\); kernels with xfrm_interface loaded .* \(XfrmInNoPols\)/);
  });

  test('only the client nested in policies missing: the reply dies at the client', () => {
    const plan = planOf(net);
    const alice = plan.configs.get('alice')!;
    alice.policies = alice.policies.filter((p) => p.priority !== PRIORITY_NESTED);
    const v = auditState(net, plan.state, plan.configs).invariants.find((i) => i.name === 'delivery')!.violations;
    expect(v.map((x) => x.message)).toEqual([expect.stringMatching(/\(reverse, .*at alice: no "in" policy matches .*(XfrmInNoPols)/)]);
  });

  test('a nested in policy with the wrong template: XfrmInTmplMismatch', () => {
    const plan = planOf(net);
    const or2 = plan.configs.get('or2')!;
    const nested = or2.policies.find((p) => p.priority === PRIORITY_NESTED)!;
    nested.tmpls = [{ ...nested.tmpls[0]!, reqid: nested.tmpls[0]!.reqid + 1 }];
    const v = auditState(net, plan.state, plan.configs).invariants.find((i) => i.name === 'delivery')!.violations;
    expect(v[0]!.message).toMatch(/at or2: "in" policy .* does not match the 1 layer\(s\) .*XfrmInTmplMismatch/);
  });

  test("kernelTemplatesMatch follows __xfrm_policy_check: order, verified_cnt, every tunnel entry matched", () => {
    const T = (n: number): XfrmTmpl => ({ src: n, dst: n + 100, reqid: n });
    const ov = T(1), t1 = T(2), t2 = T(3);
    // templates innermost first, secpath outermost first
    expect(kernelTemplatesMatch([ov], [ov], 0)).toBe(1);
    expect(kernelTemplatesMatch([t1, ov], [ov, t1], 0)).toBe(2);
    expect(kernelTemplatesMatch([ov, t1], [ov, t1], 0)).toBeUndefined(); // wrong order
    // an entry left unmatched is a reject (secpath_has_nontransport), unless verified before
    expect(kernelTemplatesMatch([t1], [ov, t1], 0)).toBeUndefined();
    expect(kernelTemplatesMatch([t1], [ov, t1], 1)).toBe(2);
    expect(kernelTemplatesMatch([t2, t1, ov], [ov, t1, t2], 2)).toBe(3);
    expect(kernelTemplatesMatch([ov], [ov, t1], 0)).toBeUndefined(); // t1 not covered
    expect(kernelTemplatesMatch([], [], 0)).toBe(0);
  });

  test('observe() reports a missing SA at the receiver', () => {
    const plan = planOf(net);
    const or2 = plan.configs.get('or2')!;
    or2.states = or2.states.filter((s) => !s.comment.includes('hop 2 forward'));
    const t = observe(net, plan.state, plan.configs);
    expect(t.errors).toEqual([expect.objectContaining({ circuit: 'web', node: 'or2', direction: 'forward', message: expect.stringContaining('XfrmInNoStates') })]);
  });
});

// ---------------------------------------------------------------------------------------------
// Adversary: a hand-computed case.
//
//   cl ── e1 (opa) ──┐            ┌── x1 (opd, exit: 203.0.113.0/24)
//                    ├── m1 (opc) ┤
//   cl ── e2 (opb) ──┘            └── x2 (opa, exit: 203.0.113.0/24 and 198.18.0.0/15)
//
// "web" (to 203.0.113.80): e1-m1-x1, e2-m1-x1, e2-m1-x2 are eligible (e1-m1-x2 repeats opa): 3.
// "lab" (to 198.18.0.1): only x2 admits it: e2-m1-x2: 1 path.
// Compromised {opa, opd}: web 1/3 (e1-m1-x1), lab 0/1; expected share (1/3 + 0) / 2 = 1/6.
// Compromised {opa, opb}: web 1/3 (e2-m1-x2), lab 1/1; expected (1/3 + 1) / 2 = 2/3.
// Compromised {opa}: nothing (entry and exit are never one operator).

const SMALL = `version: 1
hops: 3
operators: [{name: opa}, {name: opb}, {name: opc}, {name: opd}]
routers:
  - {name: e1, operator: opa, underlay: {interface: eth0, address: 198.51.100.1/24}, pool: 100.64.1.0/24}
  - {name: e2, operator: opb, underlay: {interface: eth0, address: 198.51.100.2/24}, pool: 100.64.2.0/24}
  - {name: m1, operator: opc, underlay: {interface: eth0, address: 198.51.100.3/24}, pool: 100.64.3.0/24}
  - name: x1
    operator: opd
    underlay: {interface: eth0, address: 198.51.100.4/24}
    pool: 100.64.4.0/24
    exit: {interface: eth1, address: 203.0.113.1/24, allow: [{to: 203.0.113.0/24}]}
  - name: x2
    operator: opa
    underlay: {interface: eth0, address: 198.51.100.5/24}
    pool: 100.64.5.0/24
    exit: {interface: eth1, address: 203.0.113.2/24, allow: [{to: 203.0.113.0/24}, {to: 198.18.0.0/15}]}
clients:
  - {name: cl, underlay: {interface: eth0, address: 198.51.100.10/24}, entry: [e1, e2]}
links: [[e1, m1], [e2, m1], [m1, x1], [m1, x2]]
circuits:
  - {name: web, client: cl, to: [203.0.113.80/32]}
  - {name: lab, client: cl, to: [198.18.0.1/32]}
`;

describe('adversary view', () => {
  const net = netOf(SMALL);
  const plan = planOf(net, '5');
  const web = plan.state.circuits.web!.hops;

  test('eligible path counts and exposed counts match the hand computation', () => {
    const r = adversaryReport(net, plan.state, ['opa', 'opd'], { by: 'list' });
    expect(r.circuits.map((c) => [c.circuit, c.eligibleExposed, c.eligible])).toEqual([
      ['web', 1, 3],
      ['lab', 0, 1],
    ]);
    expect(r.expectedShare).toBeCloseTo(1 / 6, 12);
    // actual exposure follows the state's paths
    const webExposed = web[0] === 'e1' && web[2] === 'x1';
    expect(r.circuits[0]!.exposed).toBe(webExposed);
    expect(r.circuits[1]!.exposed).toBe(false);
    expect(r.exposedShare).toBe(webExposed ? 0.5 : 0);
  });

  test('{opa, opb}: lab is always exposed', () => {
    expect(plan.state.circuits.lab!.hops).toEqual(['e2', 'm1', 'x2']);
    const r = adversaryReport(net, plan.state, ['opa', 'opb'], { by: 'list' });
    expect(r.circuits.map((c) => [c.eligibleExposed, c.eligible])).toEqual([
      [1, 3],
      [1, 1],
    ]);
    expect(r.expectedShare).toBeCloseTo(2 / 3, 12);
    expect(r.circuits[1]).toMatchObject({ circuit: 'lab', exposed: true, entryOperator: 'opb', exitOperator: 'opa' });
  });

  test('one operator alone never sees both ends', () => {
    const r = adversaryReport(net, plan.state, ['opa'], { by: 'list' });
    expect([r.exposedShare, r.expectedShare]).toEqual([0, 0]);
  });

  test('the exact count agrees with enumerating every eligible path', async () => {
    const { PathSpace, constraintsFor } = await import('../../src/pathselect/select.js');
    const bad = new Set(['opa', 'opb', 'opd']);
    const r = adversaryReport(net, plan.state, [...bad], { by: 'list' });
    for (const def of net.circuits) {
      const all = new PathSpace(net, constraintsFor(net, def)).all();
      const exposed = all.filter((p) => bad.has(net.routers.get(p[0]!)!.operator) && bad.has(net.routers.get(p[p.length - 1]!)!.operator));
      const c = r.circuits.find((x) => x.circuit === def.name)!;
      expect([c.eligibleExposed, c.eligible]).toEqual([exposed.length, all.length]);
    }
  });

  test('--compromised-fraction draws round(f * n) distinct operators, reproducibly with a seed', () => {
    const ops = routerOperators(net);
    expect(ops).toEqual(['opa', 'opb', 'opc', 'opd']);
    const a = drawCompromised(ops, 0.5, new SeededRng('s', 'audit/compromised'));
    const b = drawCompromised(ops, 0.5, new SeededRng('s', 'audit/compromised'));
    expect(a).toEqual(b);
    expect(new Set(a).size).toBe(2);
    expect(drawCompromised(ops, 0.2, new SeededRng('s', 'x'))).toHaveLength(1);
    expect(drawCompromised(ops, 1, new SeededRng('s', 'x'))).toEqual(ops);
    expect(() => drawCompromised(ops, 1.5, new SeededRng('s', 'x'))).toThrow(RangeError);
  });

  test('the command prints the shares and lists exposed circuits', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'onionctl-audit-'));
    try {
      const topo = path.join(dir, 'small.yaml');
      await fs.writeFile(topo, SMALL);
      const r = await runAudit(topo, { seed: '5', compromised: ['opa', 'opb'] });
      expect(r.code).toBe(0);
      expect(r.stdout).toContain('expected under uniform selection of eligible paths: 66.7%');
      expect(r.stdout).toMatch(/exposed: .*lab \(entry e2\/opb, exit x2\/opa\)/);
      await expect(runAudit(topo, { compromised: ['nobody'] })).rejects.toThrow(/nobody runs no router/);
      // for CI: --fail-on-exposure turns an exposed circuit into exit 1, naming it; without exposure, 0
      const gated = await runAudit(topo, { seed: '5', compromised: ['opa', 'opb'], failOnExposure: true });
      expect(gated.code).toBe(1);
      expect(gated.stderr).toMatch(/onionctl: audit: exposure: circuit lab: its entry e2 \(operator opb\) and exit x2 \(operator opa\) are both compromised\n/);
      expect(gated.stdout).toBe(r.stdout);
      const one = await runAudit(topo, { seed: '5', compromised: ['opa'], failOnExposure: true });
      expect(one.stdout).not.toMatch(/exposed: .*lab/);
      expect(one.code).toBe(0);
      await expect(runAudit(topo, { failOnExposure: true })).rejects.toThrow(/--fail-on-exposure needs --compromised/);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
