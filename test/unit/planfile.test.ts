/**
 * Saved plans (issue 11, defect 2): sealed with a MAC keyed from the secret in its own domain,
 * opened only when authentic, young enough and well formed; the state inside is checked against
 * the topology as if it had been planned; the events are recomputed from the two states. The
 * built CLI refuses a forged plan before it connects to any router.
 */
import { describe, expect, jest, test } from '@jest/globals';
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { makeSavedPlan, planInputsMoved, planMacKey, openPlan, sealPlan, SavedPlanError, staleNodes, stateDelta, SAVED_PLAN_FORMAT, type PlannedNode, type SavedPlan } from '../../src/plan/planfile.js';
import { diffNode } from '../../src/diff/diff.js';
import type { ObservedNode } from '../../src/readback/observed.js';
import { computePlan } from '../../src/plan/plan.js';
import { rngFactory } from '../../src/pathselect/rng.js';
import { emptyState, type State } from '../../src/state/model.js';
import { checkPlannedState } from '../../src/state/check.js';
import { describeEvent } from '../../src/state/model.js';
import { exampleNet } from '../helpers/net.js';
import { EXAMPLES, run, SPAWN_TIMEOUT, STACK_LINE, tempDir } from '../helpers/cli.js';

jest.setTimeout(SPAWN_TIMEOUT);

const three = exampleNet('three-mixes.yaml');
const NOW = new Date('2026-01-02T03:04:05Z');
const DAY = 24 * 3600 * 1000;
const secret = Buffer.alloc(32, 0x5a);
const key = planMacKey(secret);
const planned = (salt = 'a1'.repeat(32)) => computePlan({ net: three, state: emptyState(salt), rngFor: rngFactory('saved'), now: NOW.toISOString() }).state;

function planOf(state: State, created = NOW): SavedPlan {
  return {
    created: created.toISOString(),
    topology: { path: 't.yaml', sha256: 'ab'.repeat(32) },
    stateBefore: { path: 't.state.json', sha256: null },
    state,
    rekeys: [],
    summary: { add: 1, change: 0, destroy: 0 },
    nodes: [{ node: 'or1', digest: '0123456789abcdef', changes: [{ op: 'add', kind: 'state', key: 'esp 198.51.100.12 spi 0x4f000000', phase: 'SAs' }], conflicts: [] }],
  };
}
const opened = (text: string, o: { now?: Date; maxAgeMs?: number; key?: Buffer } = {}) => openPlan(text, o.key ?? key, { now: o.now ?? NOW, maxAgeMs: o.maxAgeMs ?? DAY });
const why = (f: () => unknown) => {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(SavedPlanError);
    return (e as Error).message;
  }
  throw new Error('no error');
};

describe('sealing and opening', () => {
  test('a sealed plan opens to what was sealed; the file says its format and carries no key', () => {
    const p = planOf(planned());
    const text = sealPlan(p, key);
    expect(opened(text)).toEqual(p);
    expect(JSON.parse(text)).toMatchObject({ format: SAVED_PLAN_FORMAT, mac: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect(text).not.toContain(key.toString('hex'));
    expect(text).not.toContain(secret.toString('hex'));
  });

  test('the issue\'s forgery: the state edited so that web runs or3 -> or2 -> or3; and every other edit of any field', () => {
    const text = sealPlan(planOf(planned()), key);
    const j = JSON.parse(text) as { plan: { state: State; nodes: { changes: string[] }[]; created: string } };
    const forged = structuredClone(j);
    forged.plan.state.circuits.web!.hops = ['or3', 'or2', 'or3'];
    expect(why(() => opened(JSON.stringify(forged)))).toMatch(/is not authentic: its MAC does not match/);
    const edits: ((x: typeof j) => void)[] = [
      (x) => (x.plan.state.next.spi += 1),
      (x) => (x.plan.nodes[0]!.changes = []),
      (x) => (x.plan.created = '2026-01-02T03:04:06.000Z'),
      (x) => (x.plan.state.circuits.web!.fwd[0]!.nonce = '00'.repeat(16)),
    ];
    for (const e of edits) {
      const x = structuredClone(j);
      e(x);
      expect(why(() => opened(JSON.stringify(x)))).toMatch(/not authentic/);
    }
    // sealed under another secret
    expect(why(() => opened(text, { key: planMacKey(Buffer.alloc(32, 0x5b)) }))).toMatch(/not authentic/);
    // the MAC key is not the secret, nor any SA key's derivation: its own HKDF label
    expect(key.equals(secret)).toBe(false);
  });

  test('too old, from the future, an older format, not JSON, a bad MAC field, a damaged body: each refused with its reason', () => {
    const p = planOf(planned());
    expect(why(() => opened(sealPlan(p, key), { now: new Date(NOW.getTime() + DAY + 1000) }))).toMatch(/is too old \(made 2026-01-02T03:04:05.000Z, limit 1440 min; --max-plan-age\)/);
    expect(opened(sealPlan(p, key), { now: new Date(NOW.getTime() + DAY - 1000) })).toEqual(p);
    expect(why(() => opened(sealPlan(planOf(planned(), new Date(NOW.getTime() + 3600_000)), key)))).toMatch(/made in the future/);
    expect(why(() => opened(JSON.stringify({ format: 'onionctl-plan/v1', created: NOW.toISOString() })))).toMatch(/not a plan written by/);
    expect(why(() => opened(JSON.stringify({ format: 'onionctl-plan/v1', mac: '', plan: {} })))).toMatch(/older onionctl \(format onionctl-plan\/v1, without authentication\)/);
    // v2 stored changes as display lines: its MAC may be good, it is still refused by format
    expect(why(() => opened(JSON.stringify({ format: 'onionctl-saved-plan/v2', mac: 'ab'.repeat(32), plan: {} })))).toMatch(/older onionctl \(format onionctl-saved-plan\/v2\); make a new one/);
    expect(why(() => opened('{"format"'))).toMatch(/not JSON/);
    expect(why(() => opened(JSON.stringify({ format: SAVED_PLAN_FORMAT, mac: 'zz', plan: {} })))).toMatch(/not authentic/);
    // authentic but not a plan (sealed by a bug, or by whoever holds the secret): the schema still holds
    const body = { ...p, state: { ...p.state, serial: -1 } } as unknown as SavedPlan;
    expect(why(() => opened(sealPlan(body, key)))).toMatch(/is damaged at state\.serial/);
  });
});

describe('making a saved plan and checking it against the routers again (plan/planfile.ts)', () => {
  const state = planned();
  const configs = computePlan({ net: three, state, rngFor: rngFactory('saved'), now: NOW.toISOString() }).configs;
  const or1 = configs.get('or1')!;
  const empty = (node: string): ObservedNode => ({ node, states: { owned: [], foreign: [] }, policies: { owned: [], foreign: [] }, routes: { owned: [], foreign: [] }, addresses: { owned: [], foreign: [] }, sysctls: {} });
  const nodePlan = (observed: ObservedNode, digest = 'd1') => ({ node: observed.node, digest, changes: diffNode(or1, observed), conflicts: [] });
  const make = (nodes: PlannedNode[]) =>
    makeSavedPlan({ topology: { path: 't.yaml', text: 'topology text' }, stateBefore: { path: 't.state.json', text: undefined }, state, rekeys: [], nodes, now: NOW });

  test('changes are stored typed, in apply order, with counts; the hashes are of the two inputs', () => {
    const p = make([nodePlan(empty('or1'))]);
    const changes = p.nodes[0]!.changes;
    expect(changes.length).toBeGreaterThan(5);
    // an empty router: everything is added but the sysctls, which are changed from unset
    expect(changes.filter((c) => c.op !== 'add').map((c) => [c.op, c.kind])).toEqual(changes.filter((c) => c.kind === 'sysctl').map(() => ['replace', 'sysctl']));
    expect(changes.find((c) => c.kind === 'sysctl')!.fields![0]).toMatchObject({ field: 'value', from: 'unset' });
    expect(changes.map((c) => c.kind)).toContain('state');
    // apply order: the fail-closed blocks before the SAs, the SAs before the policies that use them
    const at = (phase: string) => changes.findIndex((c) => c.phase === phase);
    expect(at('fail closed')).toBeLessThan(at('SAs'));
    expect(at('SAs')).toBeLessThan(at('policies'));
    const sysctls = changes.filter((c) => c.kind === 'sysctl').length;
    expect(p.summary).toEqual({ add: changes.length - sysctls, change: sysctls, destroy: 0 });
    expect(p.topology.sha256).toBe(createHash('sha256').update('topology text').digest('hex'));
    expect(p.stateBefore.sha256).toBeNull();
    expect(p.created).toBe(NOW.toISOString());
    // it is what sealing and opening round-trips (the schema accepts every change it writes)
    expect(opened(sealPlan(p, key))).toEqual(p);
  });

  test('planInputsMoved: the topology or the state file edited since', () => {
    const p = make([]);
    expect(planInputsMoved(p, { topologyText: 'topology text', stateText: undefined })).toEqual([]);
    expect(planInputsMoved(p, { topologyText: 'topology text ', stateText: undefined })).toEqual(['topology']);
    expect(planInputsMoved(p, { topologyText: 'topology text', stateText: '{}' })).toEqual(['state']);
  });

  test('staleNodes: the same read-back is not stale; another digest, other changes or an unreadable router is', () => {
    const p = make([nodePlan(empty('or1'))]);
    expect(staleNodes(p, [nodePlan(empty('or1'))])).toEqual([]);
    expect(staleNodes(p, [nodePlan(empty('or1'), 'd2')])).toEqual(['or1']);
    // the router now holds the planned SAs: fewer changes, same digest (a digest collision would not hide it)
    const some = { ...empty('or1'), states: undefined };
    expect(staleNodes(p, [nodePlan(some)])).toEqual(['or1']);
    expect(staleNodes(p, [{ node: 'or1', error: 'unreachable', changes: [], conflicts: [] }])).toEqual(['or1 (cannot be read now: unreachable)']);
    expect(staleNodes(p, [])).toEqual(['or1 (not planned now)']);
  });
});

describe('the state inside, checked as if it had been planned', () => {
  test('a state onionctl planned passes, from nothing and from the state before', () => {
    const s = planned();
    expect(checkPlannedState(three, undefined, s)).toEqual([]);
    expect(checkPlannedState(three, s, s)).toEqual([]);
  });

  test('or3 -> or2 -> or3 over a link not in the topology is refused even with a valid MAC', () => {
    const s = structuredClone(planned());
    s.circuits.web!.hops = ['or3', 'or2', 'or3'];
    expect(checkPlannedState(three, undefined, s)).toEqual([expect.stringMatching(/^circuit web: or3 -> or2 -> or3 is not a path the topology allows \(.+\)$/)]);
  });

  test('links, circuits, destinations, addresses, counters and old SPIs: each forgery is named', () => {
    const base = planned();
    const cases: [string, (s: State) => void, RegExp][] = [
      ['an extra link', (s) => (s.links['or1~or3'] = structuredClone(s.links[Object.keys(s.links)[0]!]!)), /overlay link or1~or3 is not in the topology/],
      ['a link dropped', (s) => delete s.links[Object.keys(s.links)[0]!], /of the topology is missing/],
      ['a link\'s ends swapped', (s) => {
        const l = s.links[Object.keys(s.links)[0]!]!;
        [l.a, l.b] = [l.b, l.a];
      }, /has ends/],
      ['a circuit not in the topology', (s) => (s.circuits.evil = structuredClone(s.circuits.web!)), /circuit evil is not in the topology/],
      ['other destinations', (s) => (s.circuits.web!.to = ['192.0.2.0/24']), /destinations 192\.0\.2\.0\/24, the topology says/],
      ['an address outside the pool', (s) => (s.circuits.web!.addrs[0] = '198.18.0.1'), /is no longer in or\d's pool/],
      ['an SPI beyond the counter', (s) => (s.circuits.web!.fwd[0]!.spi = s.next.spi + 5), /is not from the state's counter/],
      ['two SAs with one SPI', (s) => (s.circuits.web!.fwd[1]!.spi = s.circuits.web!.fwd[0]!.spi), /is also .*'s/],
      ['fewer SAs than hops', (s) => s.circuits.web!.rev.pop(), /3 hops but 3 addresses and 3\/2 SAs/],
    ];
    for (const [what, edit, re] of cases) {
      const s = structuredClone(base);
      edit(s);
      expect({ what, problems: checkPlannedState(three, undefined, s).join('\n') }).toEqual({ what, problems: expect.stringMatching(re) });
    }
  });

  test('against the state it was planned from: another salt, counters behind, an old SPI with another nonce', () => {
    const before = planned();
    const other = planned('b2'.repeat(32));
    expect(checkPlannedState(three, before, other).join('\n')).toMatch(/belongs to another state/);
    const behind = structuredClone(before);
    behind.next.spi -= 1;
    expect(checkPlannedState(three, before, behind).join('\n')).toMatch(/counter is behind/);
    const renonced = structuredClone(before);
    renonced.circuits.web!.fwd[0]!.nonce = 'ff'.repeat(16);
    expect(checkPlannedState(three, before, renonced).join('\n')).toMatch(/was handed out before with another epoch or key/);
  });

  test('events are recomputed from the two states', () => {
    const before = planned();
    const after = structuredClone(before);
    delete after.circuits.web;
    expect(stateDelta(before, after).map(describeEvent)).toEqual(['circuit web: removed']);
    expect(stateDelta(emptyState(before.salt), before).map(describeEvent)).toEqual(
      expect.arrayContaining([expect.stringMatching(/^overlay link .*: new SAs$/), `circuit web: new path ${before.circuits.web!.hops.join(' -> ')}`]),
    );
  });
});

describe('the built CLI', () => {
  const sha = (s: string) => createHash('sha256').update(s).digest('hex');

  /** a directory with three-mixes as t.yaml and its secret (no state: plans are made from nothing) */
  async function project(): Promise<{ dir: string; topo: string; sealed(s: State, created: Date): string }> {
    const dir = await tempDir();
    const topo = path.join(dir, 't.yaml');
    const topoText = await fs.readFile(path.join(EXAMPLES, 'three-mixes.yaml'), 'utf8');
    await fs.writeFile(topo, topoText);
    expect((await run(['plan', topo, '--no-save-state'])).code).toBe(0);
    const sec = Buffer.from((await fs.readFile(path.join(dir, 't.secret'), 'utf8')).trim(), 'hex');
    /** a plan of state `s` made at `created` for this topology, sealed with this secret */
    const sealed = (st: State, created: Date) =>
      sealPlan({ ...planOf(st, created), topology: { path: topo, sha256: sha(topoText) }, stateBefore: { path: path.join(dir, 't.state.json'), sha256: null } }, planMacKey(sec));
    return { dir, topo, sealed };
  }

  test('show PLANFILE: what the plan would do, only once it is authentic; --json gives the plan; a tampered or foreign plan is an error', async () => {
    const { dir, topo, sealed } = await project();
    const file = path.join(dir, 'p.json');
    const text = sealed(planned(), new Date(Date.now() - 3 * 60_000));
    await fs.writeFile(file, text, { mode: 0o600 });
    const [human, json] = await Promise.all([run(['show', file]), run(['show', file, '--json'])]);
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(new RegExp(`^Saved plan ${file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} \\(onionctl-saved-plan/v3, authentic\\), made .* \\(3 min ago\\)\n`));
    expect(human.stdout).toContain('  web: alice -> ');
    expect(human.stdout).toContain('or1: 1 to add, 0 to change, 0 to destroy\n  + state esp 198.51.100.12 spi 0x4f000000');
    expect(human.stdout).toContain(`Apply exactly this plan with: onionctl apply ${topo} ${file}`);
    expect(JSON.parse(json.stdout)).toEqual({ format: SAVED_PLAN_FORMAT, authentic: true, plan: JSON.parse(text).plan });
    // one byte of the plan changed: not shown
    const j = JSON.parse(text) as { plan: { summary: { add: number } } };
    j.plan.summary.add = 99;
    await fs.writeFile(file, JSON.stringify(j), { mode: 0o600 });
    const forged = await run(['show', file]);
    expect(forged.code).toBe(1);
    expect(forged.stderr).toMatch(/is not authentic: its MAC does not match/);
    expect(forged.stdout).toBe('');
    // another secret given: not authentic either; no secret at all: says how to give one, creates none
    await fs.writeFile(file, text, { mode: 0o600 });
    const other = path.join(dir, 'other.secret');
    await fs.writeFile(other, '5a'.repeat(32) + '\n', { mode: 0o600 });
    expect((await run(['show', file, '--secret', other])).stderr).toMatch(/not authentic/);
    const missing = await run(['show', file, '--secret', path.join(dir, 'none.secret')]);
    expect(missing.stderr).toMatch(/cannot check plan .*: no key secret .*none\.secret \(give --secret FILE/);
    expect(existsSync(path.join(dir, 'none.secret'))).toBe(false);
  });

  test('apply TOPOLOGY PLAN: a forged plan sealed with the right secret is refused for its state, a tampered one as not authentic, before any router is contacted', async () => {
    const { dir, topo, sealed } = await project();
    const s = planned();
    s.circuits.web!.hops = ['or3', 'or2', 'or3'];
    const file = path.join(dir, 'forged.json');
    await fs.writeFile(file, sealed(s, new Date()), { mode: 0o600 });
    const r = await run(['apply', topo, file, '--connect-timeout', '1']);
    expect(r.code).toBe(1);
    expect(r.stdout + r.stderr).not.toMatch(STACK_LINE);
    expect(r.stderr).toMatch(/refusing to apply \S+forged\.json: its state is not one onionctl would plan for \S+: circuit web: or3 -> or2 -> or3 is not a path the topology allows/);
    expect(r.stdout).toBe('');

    const j = JSON.parse(await fs.readFile(file, 'utf8')) as { plan: SavedPlan };
    j.plan.state.circuits.web!.hops = [...planned().circuits.web!.hops];
    await fs.writeFile(file, JSON.stringify(j));
    const t = await run(['apply', topo, file, '--connect-timeout', '1']);
    expect(t.code).toBe(1);
    expect(t.stderr).toMatch(/plan \S+forged\.json is not authentic/);
    expect(await fs.stat(path.join(dir, 't.state.json')).catch(() => undefined)).toBeUndefined();
  });

  test('an old saved plan applied again after the state was deleted is refused: its state was pushed before (the high-water mark says so)', async () => {
    const { dir, topo, sealed } = await project();
    const s = planned('c4'.repeat(32));
    // what the first apply of this plan left beside the secret; the state file itself is gone
    const mark = { format: 'onionctl-high-water/v1', states: { [s.salt]: { serial: s.serial, spi: s.next.spi, reqid: s.next.reqid, updated: new Date().toISOString() } } };
    await fs.writeFile(path.join(dir, 't.secret.high-water.json'), JSON.stringify(mark), { mode: 0o600 });
    const file = path.join(dir, 'old.json');
    await fs.writeFile(file, sealed(s, new Date()), { mode: 0o600 });
    const r = await run(['apply', topo, file, '--connect-timeout', '1']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/refusing to apply \S+old\.json: its state was saved and pushed before \(the state it was planned from is gone, but its high-water mark in \S+ is there\)/);
    expect(r.stdout).toBe('');
  });

  test('a plan older than --max-plan-age is refused; a usable age is a duration', async () => {
    const { dir, topo, sealed } = await project();
    const file = path.join(dir, 'aged.json');
    await fs.writeFile(file, sealed(planned(), new Date(Date.now() - 2 * 3600_000)), { mode: 0o600 });
    const r = await run(['apply', topo, file, '--max-plan-age', '1h', '--connect-timeout', '1']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/plan \S+aged\.json is too old \(made .*, limit 60 min; --max-plan-age\); make a new one/);
    const bad = await run(['apply', topo, file, '--max-plan-age', 'soon']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/"soon" is not a duration/);
  });
});
