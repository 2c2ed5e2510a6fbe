/**
 * The pure logic of rekey and rotate (src/state/reconcile.ts, src/apply/engine.ts,
 * src/apply/commands.ts, src/apply/due.ts, src/cli/apply-command.ts parseDuration):
 *   - rekeySa: a new SPI from the counter, the next epoch, the same reqid, an empty install list;
 *     with retireUntil the previous epoch stays (as `retiring`) and buildConfigs installs it on
 *     both ends next to the new one, under another key;
 *   - expireRetiring drops exactly the epochs whose grace ended;
 *   - planAgainst: make-before-break (new SAs added, old kept), then the old removed; a retiring
 *     epoch a node lost (or holds with other attributes) is dropped, never installed again;
 *     no (SA, epoch) is ever added to a node that its key already went to;
 *   - stages: a new SA is received before it is sent with, an old one stops being sent with
 *     before the receiver drops it, clients are configured after routers;
 *   - rotateCircuits: a new generation, SAs, SPIs, reqids and addresses, other circuits untouched,
 *     an eligible path drawn from all eligible ones;
 *   - dueForRekey by age and by the soft byte/packet limits; parseDuration.
 *
 * The routers are simulated from the planner's own configs (observedStates below: what a router
 * holding exactly those SAs would read back as), so these tests do not depend on recordings.
 */
import { beforeAll, describe, expect, test } from '@jest/globals';
import { STAGES, ownAddresses, stageOf, stageSteps, type Stage } from '../../src/apply/commands.js';
import { dueForRekey } from '../../src/apply/due.js';
import { interfaceAddresses, markInstalled, planAgainst, pushChanges, type LivePlan, type NodePlan, type NodeRead } from '../../src/apply/engine.js';
import { parseDuration } from '../../src/cli/apply-command.js';
import type { Change } from '../../src/diff/index.js';
import { KdfKeySource, fingerprint, type KeySource, type SaKeyId } from '../../src/keys/kdf.js';
import { REKEY_AGE_SECONDS, type SaLifetime } from '../../src/keys/lifetimes.js';
import { PROFILES } from '../../src/keys/profiles.js';
import type { NodeConfig, XfrmState } from '../../src/model/config.js';
import { cidrContainsAddr, parseIPv4 } from '../../src/net/addr.js';
import { NONCE_LABEL, drawNonce, liveRngFactory, rngFactory } from '../../src/pathselect/rng.js';
import { HighWaterSchema, behindMark, emptyHighWater, raiseMark, resumeBehind } from '../../src/state/high-water.js';
import { PathSpace, constraintsFor } from '../../src/pathselect/select.js';
import type { ObservedNode, ObservedState } from '../../src/readback/observed.js';
import type { Templates } from '../../src/render/render.js';
import { Sessions } from '../../src/remote/fleet.js';
import { buildConfigs } from '../../src/spd/build.js';
import { emptyState, type State } from '../../src/state/model.js';
import { formatSaId } from '../../src/keys/sa-id.js';
import { PlanError, allSas, expireRetiring, reconcile, rekeySa, rotateCircuits, saRecord, saRefOfId, type SaRef } from '../../src/state/reconcile.js';
import type { Net } from '../../src/topology/net.js';
import { loadTemplates } from '../../src/store/files.js';
import { UserError } from '../../src/util/errors.js';
import { FakeTransport, emptyObserved, recordingProgress, type ExecRecord } from '../helpers/apply.js';
import { K4_YAML, exampleNet, netFromYaml } from '../helpers/net.js';

/** nonces for the epochs planAgainst/rekeySa allocate (reproducible in tests) */
const NONCES = rngFactory('test-nonces');

let templates: Templates;
beforeAll(async () => {
  templates = await loadTemplates();
});

const T0 = '2025-03-01T10:00:00.000Z';
const T_PUSH = '2025-03-01T10:00:05.000Z';
const GRACE_END = '2025-03-01T10:00:35.000Z';
const AFTER_GRACE = '2025-03-01T10:00:36.000Z';

const three = exampleNet('three-mixes.yaml');
const k4 = netFromYaml(K4_YAML);
const state0 = (net: Net, seed = 'rot'): State => reconcile(net, emptyState('5e'.repeat(32)), rngFactory(seed), T0).state;
const keys = new KdfKeySource(Buffer.alloc(32, 0x71), state0(three).salt);

// ------------------------------------------------------------------------------------------
// a simulated fleet: each node holds exactly the given configs' SAs (nothing else is read)

function observedState(d: XfrmState, k: KeySource): ObservedState {
  return {
    src: d.src,
    dst: d.dst,
    proto: 'esp',
    spi: d.spi,
    reqid: d.reqid,
    mode: 'tunnel',
    replayWindow: d.replayWindow,
    profile: d.profile,
    algos: [],
    keyFingerprint: fingerprint(k.key(d.key, PROFILES[d.profile].keyBytes)),
    esn: d.esn,
    flags: d.esn ? ['esn'] : [],
    selectorIsWildcard: true,
    other: [],
    extraFlags: [],
    lifetime: d.lifetime,
    ...(d.tfcpad !== undefined ? { tfcpad: d.tfcpad } : {}),
  };
}

/** what the fleet reads back as when it holds `configs`' SAs (states only; other kinds "not read") */
function observedStates(configs: Map<string, NodeConfig>, k: KeySource = keys): Map<string, ObservedNode> {
  return new Map([...configs].map(([node, cfg]) => [node, { node, states: { owned: cfg.states.map((s) => observedState(s, k)), foreign: [] } }]));
}
const noStates = (net: Net): Map<string, ObservedNode> => new Map([...net.nodes.keys()].map((node) => [node, { node, states: { owned: [], foreign: [] } }]));
const readsOf = (obs: Map<string, ObservedNode>): Map<string, NodeRead> => new Map([...obs].map(([node, observed]) => [node, { node, observed }]));

type StateChange = Extract<Change, { kind: 'state' }>;
const stateChanges = (n: NodePlan) => n.changes.filter((c): c is StateChange => c.kind === 'state');
const addedSpis = (n: NodePlan) => stateChanges(n).flatMap((c) => (c.op === 'add' ? [c.desired.spi] : [])).sort();
const removedSpis = (n: NodePlan) => stateChanges(n).flatMap((c) => (c.op === 'remove' ? [c.observed.spi] : [])).sort();
const nodePlan = (p: LivePlan, node: string) => p.nodes.find((n) => n.node === node)!;
const hex = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;

/** every SPI a state knows of: current and retiring epochs */
const everySpi = (s: State) => allSas(s).flatMap(({ rec }) => [rec.spi, ...(rec.retiring ?? []).map((r) => r.spi)]);
const everyReqid = (s: State) => allSas(s).map(({ rec }) => rec.reqid);

/** the nodes that hold an SA (by SPI) in some configs */
function holdersBySpi(configs: Map<string, NodeConfig>): Map<number, string[]> {
  const m = new Map<number, string[]>();
  for (const [node, cfg] of configs) for (const st of cfg.states) m.set(st.spi, [...(m.get(st.spi) ?? []), node].sort());
  return m;
}

/** the state after a first push of everything to nodes that held nothing */
function installedEverywhere(net: Net, s0: State): State {
  const p = planAgainst(net, s0, readsOf(noStates(net)), keys, NONCES);
  expect(p.rekeys).toEqual([]);
  return markInstalled(p.state, p.nodes, T0);
}

/**
 * The never-twice rule, checked on a plan: no add gives a node an (SA, epoch) whose key the
 * state `before` records as installed there (current or retiring epoch).
 */
function expectNoKeyReuse(before: State, p: LivePlan): void {
  const went = new Map<string, string[]>();
  for (const { ref, rec } of allSas(before)) {
    const id = idOf(before, ref);
    went.set(`${id}@${rec.epoch}`, rec.installed ?? []);
    for (const r of rec.retiring ?? []) went.set(`${id}@${r.epoch}`, r.installed ?? []);
  }
  for (const n of p.nodes) {
    for (const c of stateChanges(n)) {
      if (c.op !== 'add') continue;
      const k: SaKeyId = c.desired.key;
      expect({ node: n.node, sa: `${k.id}@${k.epoch}`, reinstalled: (went.get(`${k.id}@${k.epoch}`) ?? []).includes(n.node) }).toEqual({ node: n.node, sa: `${k.id}@${k.epoch}`, reinstalled: false });
    }
  }
}

function idOf(s: State, ref: SaRef): string {
  if ('circuit' in ref) return formatSaId({ kind: 'telescope', circuit: ref.circuit, generation: s.circuits[ref.circuit]!.generation, hop: ref.hop, dir: ref.dir });
  const l = s.links[ref.link]!;
  return ref.dir === 'ab' ? `link:${l.a}>${l.b}` : `link:${l.b}>${l.a}`;
}

const webRefs = (s: State): SaRef[] => allSas(s).map((x) => x.ref).filter((r) => 'circuit' in r && r.circuit === 'web');
function rekeyAll(s: State, refs: SaRef[], retireUntil?: string): State {
  for (const ref of refs) s = rekeySa(s, ref, retireUntil !== undefined ? { retireUntil, rngFor: NONCES } : { rngFor: NONCES }).state;
  return s;
}

// ------------------------------------------------------------------------------------------

describe('the simulated fleet (test scaffolding)', () => {
  test('routers holding exactly the planned SAs give no change; routers holding nothing get every SA added', () => {
    const s1 = installedEverywhere(three, state0(three));
    const cfgs = buildConfigs(three, s1);
    const same = planAgainst(three, s1, readsOf(observedStates(cfgs)), keys, NONCES);
    expect(same.rekeys).toEqual([]);
    expect(same.nodes.map((n) => [n.node, n.changes.length])).toEqual([...cfgs.keys()].map((n) => [n, 0]));
    // another secret: every key differs, every SA is held "with other attributes (key)"
    const other = planAgainst(three, s1, readsOf(observedStates(cfgs, new KdfKeySource(Buffer.alloc(32, 0x72), s1.salt))), keys, NONCES);
    expect(other.rekeys.length).toBe(allSas(s1).length);
    expect(other.rekeys.every((r) => /other attributes \(key\)/.test(r.reason))).toBe(true);
  });
});

describe('rekeySa', () => {
  const s1 = installedEverywhere(three, state0(three));
  const ref: SaRef = { circuit: 'web', hop: 2, dir: 'fwd' };

  test('with retireUntil: new SPI from the counter, next epoch, same reqid, empty install list, the previous epoch retiring', () => {
    const before = structuredClone(s1);
    const old = saRecord(s1, ref)!;
    expect(old.installed).toEqual(['alice', 'or2']);
    const r = rekeySa(s1, ref, { retireUntil: GRACE_END, rngFor: NONCES });
    expect(s1).toEqual(before); // pure
    expect(r.old).toEqual(old);
    const now = saRecord(r.state, ref)!;
    expect(r.now).toEqual(now);
    expect(now.spi).toBe(s1.next.spi);
    expect(everySpi(s1)).not.toContain(now.spi);
    expect(r.state.next).toEqual({ spi: s1.next.spi + 1, reqid: s1.next.reqid });
    expect(now.epoch).toBe(old.epoch + 1);
    expect(now.reqid).toBe(old.reqid);
    expect(now.installed).toEqual([]);
    expect(now.since).toBeUndefined();
    expect(now.retiring).toEqual([{ spi: old.spi, epoch: old.epoch, nonce: old.nonce, until: GRACE_END, installed: ['alice', 'or2'] }]);
    expect(now.nonce).toMatch(/^[0-9a-f]{32}$/);
    expect(now.nonce).not.toBe(old.nonce);
    expect(r.state.serial).toBe(s1.serial + 1);
    // nothing else moved
    for (const x of allSas(s1)) if (JSON.stringify(x.ref) !== JSON.stringify(ref)) expect(saRecord(r.state, x.ref)).toEqual(x.rec);
  });

  test('two successive rekeys keep both previous epochs; a third without retireUntil keeps them and adds none', () => {
    const a = rekeySa(s1, ref, { retireUntil: GRACE_END, rngFor: NONCES });
    const b = rekeySa(a.state, ref, { retireUntil: AFTER_GRACE, rngFor: NONCES });
    const rec = saRecord(b.state, ref)!;
    const e1 = saRecord(s1, ref)!;
    expect(rec.epoch).toBe(e1.epoch + 2);
    expect(rec.retiring).toEqual([
      { spi: e1.spi, epoch: e1.epoch, nonce: e1.nonce, until: GRACE_END, installed: ['alice', 'or2'] },
      { spi: a.now.spi, epoch: a.now.epoch, nonce: a.now.nonce, until: AFTER_GRACE, installed: [] },
    ]);
    expect(new Set([e1.spi, a.now.spi, rec.spi]).size).toBe(3);
    const c = rekeySa(b.state, ref, { rngFor: NONCES });
    expect(saRecord(c.state, ref)!.retiring).toEqual(rec.retiring);
    expect(saRecord(c.state, ref)!.epoch).toBe(rec.epoch + 1);
  });

  test('without retireUntil nothing is kept', () => {
    const r = rekeySa(s1, ref, { rngFor: NONCES });
    expect(saRecord(r.state, ref)!.retiring).toBeUndefined();
    expect('retiring' in saRecord(r.state, ref)!).toBe(false);
    expect(r.now.spi).not.toBe(r.old.spi);
  });

  test('every SA of a circuit and a link, rekeyed: SPIs all new and distinct, reqids unchanged', () => {
    const refs = allSas(s1).map((x) => x.ref);
    const s2 = rekeyAll(s1, refs, GRACE_END);
    const spis = allSas(s2).map((x) => x.rec.spi);
    expect(new Set(spis).size).toBe(spis.length);
    for (const sp of spis) expect(everySpi(s1)).not.toContain(sp);
    expect(everyReqid(s2)).toEqual(everyReqid(s1));
    // link refs work too
    expect(refs.some((r) => 'link' in r)).toBe(true);
  });

  test('an unknown SA is a PlanError', () => {
    expect(() => rekeySa(s1, { circuit: 'nope', hop: 1, dir: 'fwd' }, { rngFor: NONCES })).toThrow(PlanError);
    expect(() => rekeySa(s1, { circuit: 'web', hop: 9, dir: 'rev' }, { rngFor: NONCES })).toThrow(PlanError);
    expect(() => rekeySa(s1, { link: 'x|y', dir: 'ab' }, { rngFor: NONCES })).toThrow(PlanError);
  });

  test('buildConfigs: the current and the retiring epoch on both ends, same reqid, distinct SPIs, different keys; policies unchanged', () => {
    const before = buildConfigs(three, s1);
    const refs = allSas(s1).map((x) => x.ref);
    const s2 = rekeyAll(s1, refs, GRACE_END);
    const after = buildConfigs(three, s2);
    for (const { ref: r, rec } of allSas(s2)) {
      const id = idOf(s2, r);
      const prev = rec.retiring![0]!;
      const ends = [...after].filter(([, c]) => c.states.some((s) => s.key.id === id)).map(([n]) => n);
      expect(ends).toHaveLength(2);
      for (const n of ends) {
        const mine = after.get(n)!.states.filter((s) => s.key.id === id);
        expect(mine.map((s) => ({ spi: s.spi, epoch: s.key.epoch, keySpi: s.key.spi, reqid: s.reqid })).sort((a, b) => a.epoch - b.epoch)).toEqual([
          { spi: prev.spi, epoch: prev.epoch, keySpi: prev.spi, reqid: rec.reqid },
          { spi: rec.spi, epoch: rec.epoch, keySpi: rec.spi, reqid: rec.reqid },
        ]);
        const [cur, old] = [mine.find((s) => s.spi === rec.spi)!, mine.find((s) => s.spi === prev.spi)!];
        const bytes = PROFILES[cur.profile].keyBytes;
        expect(keys.key(cur.key, bytes).equals(keys.key(old.key, bytes))).toBe(false);
        // the retiring state is the old SA as it was (same endpoints and options)
        const was = before.get(n)!.states.find((s) => s.spi === prev.spi)!;
        expect({ ...old, comment: '' }).toEqual({ ...was, comment: '' });
      }
    }
    // the same (id, epoch, spi) gives the same key on both ends; the configs agree
    for (const n of after.keys()) expect(after.get(n)!.policies).toEqual(before.get(n)!.policies);
    for (const n of after.keys()) expect(after.get(n)!.states.length).toBe(2 * before.get(n)!.states.length);
  });
});

describe('expireRetiring', () => {
  const s1 = installedEverywhere(three, state0(three));
  const refs = allSas(s1).map((x) => x.ref);
  const untils = ['2025-03-01T10:00:10.000Z', '2025-03-01T10:00:20.000Z', '2025-03-01T10:00:30.000Z'];
  // SA i gets retiring epochs with untils[i % 3] (and SA 0 a second one with untils[2])
  function mixed(): State {
    let s = s1;
    refs.forEach((r, i) => (s = rekeySa(s, r, { retireUntil: untils[i % 3]!, rngFor: NONCES }).state));
    s = rekeySa(s, refs[0]!, { retireUntil: untils[2]!, rngFor: NONCES }).state;
    return s;
  }
  const count = (s: State, f: (u: string) => boolean) => allSas(s).reduce((n, { rec }) => n + (rec.retiring ?? []).filter((r) => f(r.until)).length, 0);

  test.each([
    ['before any', '2025-03-01T10:00:05.000Z'],
    ['exactly the first', untils[0]!],
    ['between', '2025-03-01T10:00:25.000Z'],
    ['exactly the last', untils[2]!],
    ['after all', AFTER_GRACE],
  ])('now %s: drops exactly the entries with until <= now, keeps the rest', (_what, now) => {
    const s = mixed();
    const total = count(s, () => true);
    const r = expireRetiring(s, now);
    const gone = count(s, (u) => u <= now);
    expect(r.expired).toBe(gone);
    expect(count(r.state, () => true)).toBe(total - gone);
    expect(count(r.state, (u) => u <= now)).toBe(0);
    for (const { ref, rec } of allSas(s)) {
      const kept = (rec.retiring ?? []).filter((x) => x.until > now);
      const got = saRecord(r.state, ref)!;
      if (kept.length === 0) expect('retiring' in got).toBe(false);
      else expect(got.retiring).toEqual(kept);
      // the current epoch is untouched
      const { retiring: _a, ...cur } = rec;
      const { retiring: _b, ...cur2 } = got;
      expect(cur2).toEqual(cur);
    }
    expect(r.state.serial).toBe(gone > 0 ? s.serial + 1 : s.serial);
    expect(r.state.next).toEqual(s.next);
  });

  test('nothing to expire: the same state, serial unchanged', () => {
    const r = expireRetiring(s1, AFTER_GRACE);
    expect(r).toEqual({ state: s1, expired: 0 });
  });
});

// ------------------------------------------------------------------------------------------

describe('planAgainst: make-before-break and the never-twice rule', () => {
  const net = three;
  const s1 = installedEverywhere(net, state0(net));
  const obs1 = observedStates(buildConfigs(net, s1));
  // rekey every SA of circuit web, keep the old epochs through the grace
  const s2 = rekeyAll(s1, webRefs(s1), GRACE_END);
  const rekeyed = webRefs(s1).map((ref) => ({ ref, old: saRecord(s1, ref)!, now: saRecord(s2, ref)! }));
  const holders1 = holdersBySpi(buildConfigs(net, s1));

  test('after the rekey: the new SAs are added on both ends, nothing is removed, no further rekey', () => {
    const p = planAgainst(net, s2, readsOf(obs1), keys, NONCES);
    expect(p.rekeys).toEqual([]);
    expect(p.state).toEqual(s2);
    for (const n of p.nodes) {
      expect({ node: n.node, removed: removedSpis(n) }).toEqual({ node: n.node, removed: [] });
      const want = rekeyed.filter((x) => holders1.get(x.old.spi)!.includes(n.node)).map((x) => x.now.spi).sort();
      expect({ node: n.node, added: addedSpis(n) }).toEqual({ node: n.node, added: want });
      expect(n.changes.every((c) => c.kind === 'state')).toBe(true);
    }
    expect(rekeyed.length).toBe(2 * s1.circuits.web!.hops.length);
    expectNoKeyReuse(s2, p);
  });

  function pushedAndHeld(): { s3: State; obs2: Map<string, ObservedNode> } {
    const p = planAgainst(net, s2, readsOf(obs1), keys, NONCES);
    const s3 = markInstalled(p.state, p.nodes, T_PUSH);
    return { s3, obs2: observedStates(buildConfigs(net, s3)) };
  }

  test('once pushed: both epochs held, nothing to do; the new epoch records both ends, the old keeps its own list', () => {
    const { s3, obs2 } = pushedAndHeld();
    for (const x of rekeyed) {
      const rec = saRecord(s3, x.ref)!;
      expect(rec.installed).toEqual(holders1.get(x.old.spi));
      expect(rec.since).toBe(T_PUSH);
      expect(rec.retiring).toEqual([{ spi: x.old.spi, epoch: x.old.epoch, nonce: x.old.nonce, until: GRACE_END, installed: x.old.installed }]);
    }
    const p = planAgainst(net, s3, readsOf(obs2), keys, NONCES);
    expect(p.rekeys).toEqual([]);
    expect(p.nodes.every((n) => n.changes.length === 0)).toBe(true);
  });

  test('after the grace: the old SPIs are removed on both ends and nothing is added', () => {
    const { s3, obs2 } = pushedAndHeld();
    const e = expireRetiring(s3, AFTER_GRACE);
    expect(e.expired).toBe(rekeyed.length);
    const p = planAgainst(net, e.state, readsOf(obs2), keys, NONCES);
    expect(p.rekeys).toEqual([]);
    expect(p.state).toEqual(e.state);
    for (const n of p.nodes) {
      expect({ node: n.node, added: addedSpis(n) }).toEqual({ node: n.node, added: [] });
      const want = rekeyed.filter((x) => holders1.get(x.old.spi)!.includes(n.node)).map((x) => x.old.spi).sort();
      expect({ node: n.node, removed: removedSpis(n) }).toEqual({ node: n.node, removed: want });
    }
  });

  test('a node lost a retiring SA: it is not installed again anywhere, dropped from retiring, removed on the other end', () => {
    const { s3, obs2 } = pushedAndHeld();
    const victim = rekeyed.find((x) => 'circuit' in x.ref && x.ref.hop === 2 && x.ref.dir === 'rev')!;
    const ends = holders1.get(victim.old.spi)!;
    expect(ends).toContain('or2');
    const lost = 'or2';
    const other = ends.find((n) => n !== lost)!;
    const obs = new Map(obs2);
    const o = structuredClone(obs.get(lost)!);
    o.states!.owned = o.states!.owned.filter((s) => s.spi !== victim.old.spi);
    obs.set(lost, o);

    const p = planAgainst(net, s3, readsOf(obs), keys, NONCES);
    expect(p.rekeys).toEqual([]);
    for (const n of p.nodes) expect({ node: n.node, added: addedSpis(n) }).toEqual({ node: n.node, added: [] });
    expect(removedSpis(nodePlan(p, other))).toEqual([victim.old.spi]);
    expect(removedSpis(nodePlan(p, lost))).toEqual([]);
    for (const n of p.nodes) if (n.node !== other) expect({ node: n.node, changes: n.changes }).toEqual({ node: n.node, changes: [] });
    const rec = saRecord(p.state, victim.ref)!;
    expect(rec.retiring ?? []).toEqual([]);
    expect([...p.configs.values()].flatMap((c) => c.states).some((s) => s.spi === victim.old.spi)).toBe(false);
    // the other SAs keep their retiring epochs and the current epoch is untouched
    expect({ ...rec, retiring: undefined }).toEqual({ ...saRecord(s3, victim.ref)!, retiring: undefined });
    for (const x of rekeyed) if (x !== victim) expect(saRecord(p.state, x.ref)).toEqual(saRecord(s3, x.ref));
    expectNoKeyReuse(s3, p);
  });

  test('a node rebooted during the grace (lost every SA): no retiring epoch comes back; its current SAs get new keys on both ends', () => {
    const { s3, obs2 } = pushedAndHeld();
    const obs = new Map(obs2);
    obs.set('or2', { node: 'or2', states: { owned: [], foreign: [] } });
    const p = planAgainst(net, s3, readsOf(obs), keys, NONCES);
    expectNoKeyReuse(s3, p);
    const retiringSpis = new Set(allSas(s3).flatMap(({ rec }) => (rec.retiring ?? []).map((r) => r.spi)));
    for (const n of p.nodes) for (const sp of addedSpis(n)) expect({ node: n.node, spi: hex(sp), retiring: retiringSpis.has(sp) }).toEqual({ node: n.node, spi: hex(sp), retiring: false });
    // every SA with an end at or2 is rekeyed (its current key went there before)
    const atOr2 = buildConfigs(net, s3).get('or2')!.states.filter((s) => !retiringSpis.has(s.spi)).map((s) => s.key.id);
    expect(p.rekeys.map((r) => r.sa).sort()).toEqual([...new Set(atOr2)].sort());
    // and nothing it held stays retiring anywhere in the plan
    const or2Ids = new Set(atOr2);
    for (const { ref, rec } of allSas(p.state)) {
      if (!or2Ids.has(idOf(p.state, ref))) continue;
      expect(rec.retiring ?? []).toEqual([]);
      expect(rec.installed).toEqual([]);
    }
    // or2's peers remove what they held of those SAs (old current and retiring epochs)
    const h = holdersBySpi(buildConfigs(net, s3));
    for (const n of p.nodes.filter((x) => x.node !== 'or2')) {
      const want = [...h].filter(([, ns]) => ns.includes('or2') && ns.includes(n.node)).map(([sp]) => sp).sort();
      expect({ node: n.node, removed: removedSpis(n) }).toEqual({ node: n.node, removed: want });
    }
  });

  test('a retiring SA held with other attributes on one end is dropped, never re-installed under its old SPI', () => {
    const { s3, obs2 } = pushedAndHeld();
    const victim = rekeyed[0]!;
    const [a] = holders1.get(victim.old.spi)!;
    const obs = new Map(obs2);
    const o = structuredClone(obs.get(a!)!);
    o.states!.owned.find((s) => s.spi === victim.old.spi)!.replayWindow += 32;
    obs.set(a!, o);
    const p = planAgainst(net, s3, readsOf(obs), keys, NONCES);
    expectNoKeyReuse(s3, p);
    // no replace can reach the routers (stageSteps refuses it), and the old SPI is not re-added
    for (const n of p.nodes) for (const c of stateChanges(n)) expect({ node: n.node, key: c.key, op: c.op }).toEqual({ node: n.node, key: c.key, op: c.op === 'replace' ? 'add or remove' : c.op });
    for (const n of p.nodes) expect(addedSpis(n)).not.toContain(victim.old.spi);
    // the current epoch was never the problem
    expect(saRecord(p.state, victim.ref)!.spi).toBe(victim.now.spi);
    expect(p.rekeys).toEqual([]);
  });

  test('rekey --all on routers that hold every SA with other lifetimes (an older onionctl): old epochs dropped, new ones added, no replace, no key reused', () => {
    // the fleet as an older version installed it: same SPIs and keys, other soft/hard limits
    const obs = observedStates(buildConfigs(net, s1));
    for (const o of obs.values()) for (const st of o.states!.owned) st.lifetime = { soft: { packets: 7 }, hard: { packets: 9 } };
    const s = rekeyAll(s1, allSas(s1).map((x) => x.ref), GRACE_END);
    const p = planAgainst(net, s, readsOf(obs), keys, NONCES);
    expectNoKeyReuse(s, p);
    expect(p.rekeys).toEqual([]);
    const h0 = holdersBySpi(buildConfigs(net, s1));
    const h = holdersBySpi(buildConfigs(net, s));
    for (const n of p.nodes) {
      expect(stateChanges(n).filter((c) => c.op === 'replace')).toEqual([]);
      expect({ node: n.node, added: addedSpis(n) }).toEqual({ node: n.node, added: allSas(s).map((x) => x.rec.spi).filter((sp) => h.get(sp)!.includes(n.node)).sort() });
      expect({ node: n.node, removed: removedSpis(n) }).toEqual({ node: n.node, removed: allSas(s1).map((x) => x.rec.spi).filter((sp) => h0.get(sp)!.includes(n.node)).sort() });
    }
    for (const { rec } of allSas(p.state)) expect(rec.retiring).toBeUndefined();
  });
});

// ------------------------------------------------------------------------------------------

describe('stages of a rekey', () => {
  const net = three;
  const iface = interfaceAddresses(net);
  const s1 = installedEverywhere(net, state0(net));
  const cfg1 = buildConfigs(net, s1);
  const obs1 = observedStates(cfg1);
  const refs = allSas(s1).map((x) => x.ref);
  const s2 = rekeyAll(s1, refs, GRACE_END);
  const p1 = planAgainst(net, s2, readsOf(obs1), keys, NONCES);
  const s3 = markInstalled(p1.state, p1.nodes, T_PUSH);
  const obs2 = observedStates(buildConfigs(net, s3));
  const p2 = planAgainst(net, expireRetiring(s3, AFTER_GRACE).state, readsOf(obs2), keys, NONCES);
  /** the node whose own address an SA goes to */
  const receiver = (dst: number) => [...net.nodes.keys()].find((n) => ownAddresses(cfg1.get(n)!, iface.get(n) ?? [])(dst))!;
  const own = (p: LivePlan, n: string) => ownAddresses(p.configs.get(n)!, iface.get(n) ?? []);
  const ctx = (p: LivePlan, n: string) => ({ keys, templates, version: 'test', own: own(p, n) });
  const spisIn = (steps: { stdin: string }[], verb: 'add' | 'delete') =>
    steps.flatMap((s) => s.stdin.split('\n').filter((l) => l.startsWith(`xfrm state ${verb} `)).map((l) => parseInt(/ spi (0x[0-9a-f]+)/.exec(l)![1]!, 16))).sort();

  test('every SA has exactly one receiving end (the owner of its dst) among its two holders', () => {
    for (const [spi, ns] of holdersBySpi(cfg1)) {
      const st = cfg1.get(ns[0]!)!.states.find((s) => s.spi === spi)!;
      const r = receiver(st.dst);
      expect({ spi: hex(spi), r: ns.includes(r) }).toEqual({ spi: hex(spi), r: true });
    }
  });

  test('stageOf: the new SA is added in receive on the node owning its dst, in install on the other end', () => {
    let seen = 0;
    for (const n of p1.nodes) {
      for (const c of stateChanges(n)) {
        expect(c.op).toBe('add');
        if (c.op !== 'add') continue;
        const want: Stage = receiver(c.desired.dst) === n.node ? 'receive' : 'install';
        expect({ node: n.node, spi: hex(c.desired.spi), stage: stageOf(c, own(p1, n.node)) }).toEqual({ node: n.node, spi: hex(c.desired.spi), stage: want });
        seen++;
      }
    }
    expect(seen).toBe(2 * refs.length);
    // each new SA: one receive end, one install end
    const stagesBySpi = new Map<number, Stage[]>();
    for (const n of p1.nodes) for (const c of stateChanges(n)) if (c.op === 'add') stagesBySpi.set(c.desired.spi, [...(stagesBySpi.get(c.desired.spi) ?? []), stageOf(c, own(p1, n.node))].sort());
    for (const [spi, st] of stagesBySpi) expect({ spi: hex(spi), st }).toEqual({ spi: hex(spi), st: ['install', 'receive'] });
  });

  test('stageOf: the old SA is removed in retire on the sending end and in drain on the receiving end', () => {
    const stagesBySpi = new Map<number, Stage[]>();
    for (const n of p2.nodes) {
      for (const c of stateChanges(n)) {
        expect(c.op).toBe('remove');
        if (c.op !== 'remove') continue;
        const want: Stage = receiver(c.observed.dst) === n.node ? 'drain' : 'retire';
        const got = stageOf(c, own(p2, n.node));
        expect({ node: n.node, spi: hex(c.observed.spi), stage: got }).toEqual({ node: n.node, spi: hex(c.observed.spi), stage: want });
        stagesBySpi.set(c.observed.spi, [...(stagesBySpi.get(c.observed.spi) ?? []), got].sort());
      }
    }
    expect(stagesBySpi.size).toBe(refs.length);
    for (const [spi, st] of stagesBySpi) expect({ spi: hex(spi), st }).toEqual({ spi: hex(spi), st: ['drain', 'retire'] });
  });

  test('stageSteps: adds go to receive/install, removes to retire/drain, each SPI exactly once per node', () => {
    for (const [p, verb, stages] of [
      [p1, 'add', ['receive', 'install']],
      [p2, 'delete', ['retire', 'drain']],
    ] as const) {
      for (const n of p.nodes) {
        const by = Object.fromEntries(STAGES.map((s) => [s, stageSteps(s, p.configs.get(n.node)!, n.changes, ctx(p, n.node))]));
        for (const s of STAGES) if (!(stages as readonly Stage[]).includes(s)) expect({ node: n.node, s, steps: by[s] }).toEqual({ node: n.node, s, steps: [] });
        const want = (st: Stage) =>
          stateChanges(n)
            .filter((c) => stageOf(c, own(p, n.node)) === st)
            .map((c) => (c.op === 'remove' ? c.observed.spi : c.op === 'add' ? c.desired.spi : -1))
            .sort();
        for (const st of stages) expect({ node: n.node, st, spis: spisIn(by[st]!, verb) }).toEqual({ node: n.node, st, spis: want(st) });
        expect(spisIn([...by[stages[0]]!, ...by[stages[1]]!], verb)).toEqual(verb === 'add' ? addedSpis(n) : removedSpis(n));
      }
    }
  });

  async function push(p: LivePlan, nodes: readonly NodePlan[] = p.nodes): Promise<{ log: ExecRecord[]; results: Awaited<ReturnType<typeof pushChanges>> }> {
    const log: ExecRecord[] = [];
    const sessions = new Sessions(async (node) => new FakeTransport(node, log));
    const reads = new Map([...net.nodes.keys()].map((n) => [n, { node: n, observed: emptyObserved(n, [...net.routers.values()].map((r) => r.pool)) } as NodeRead]));
    const results = await pushChanges({ configs: p.configs, nodes: [...nodes], reads, keys, templates, version: 'test', sessions, parallel: 10, progress: recordingProgress(), ifaceAddrs: iface });
    await sessions.closeAll();
    return { log, results };
  }
  const firstIndex = (log: ExecRecord[], node: string, verb: string, spi: number) => log.findIndex((e) => e.node === node && e.stdin.split('\n').some((l) => l.startsWith(`xfrm state ${verb} `) && l.includes(` spi ${hex(spi)}`)));

  test('pushChanges: every new SA reaches its receiver before its sender; the old one leaves its sender before its receiver', async () => {
    const a = await push(p1);
    expect(a.results.every((r) => r.ok)).toBe(true);
    for (const { rec } of allSas(s2)) {
      const st = [...p1.configs.values()].flatMap((c) => c.states).find((s) => s.spi === rec.spi)!;
      const r = receiver(st.dst);
      const sender = holdersBySpi(p1.configs).get(rec.spi)!.find((n) => n !== r)!;
      const ir = firstIndex(a.log, r, 'add', rec.spi);
      const is = firstIndex(a.log, sender, 'add', rec.spi);
      expect({ spi: hex(rec.spi), received: ir >= 0, sent: is >= 0, order: ir < is }).toEqual({ spi: hex(rec.spi), received: true, sent: true, order: true });
    }
    const b = await push(p2);
    expect(b.results.every((r) => r.ok)).toBe(true);
    for (const { rec } of allSas(s2)) {
      const old = rec.retiring![0]!.spi;
      const st = [...cfg1.values()].flatMap((c) => c.states).find((s) => s.spi === old)!;
      const r = receiver(st.dst);
      const sender = holdersBySpi(cfg1).get(old)!.find((n) => n !== r)!;
      const ir = firstIndex(b.log, r, 'delete', old);
      const is = firstIndex(b.log, sender, 'delete', old);
      expect({ spi: hex(old), drained: ir >= 0, retired: is >= 0, order: is < ir }).toEqual({ spi: hex(old), drained: true, retired: true, order: true });
    }
  });

  test('pushChanges: the client is configured only after every router is', async () => {
    // routers and the client start from nothing: every one of them has configure work
    const pools = [...net.routers.values()].map((r) => r.pool);
    const reads = new Map([...net.nodes.keys()].map((n) => [n, { node: n, observed: emptyObserved(n, pools, { sysctls: true }) } as NodeRead]));
    const p = planAgainst(net, s1, reads, keys, NONCES);
    const { log, results } = await push(p);
    expect(results.every((r) => r.ok)).toBe(true);
    const expected = new Map(p.nodes.map((n) => [n.node, STAGES.flatMap((stage) => stageSteps(stage, p.configs.get(n.node)!, n.changes, ctx(p, n.node)).map((s) => ({ stage, argv: s.argv, stdin: s.stdin })))]));
    const seen = new Map<string, number>();
    const stageOfExec = log.map((e) => {
      const i = seen.get(e.node) ?? 0;
      seen.set(e.node, i + 1);
      const want = expected.get(e.node)![i]!;
      expect({ argv: e.argv, stdin: e.stdin }).toEqual({ argv: want.argv, stdin: want.stdin });
      return { node: e.node, stage: want.stage, kind: p.configs.get(e.node)!.kind };
    });
    const cfgIdx = (kind: 'router' | 'client') => stageOfExec.flatMap((x, i) => (x.stage === 'configure' && x.kind === kind ? [i] : []));
    const routers = cfgIdx('router');
    const clients = cfgIdx('client');
    expect(new Set(stageOfExec.filter((x) => x.stage === 'configure' && x.kind === 'router').map((x) => x.node))).toEqual(new Set(['or1', 'or2', 'or3']));
    expect(clients.length).toBeGreaterThan(0);
    expect(Math.max(...routers)).toBeLessThan(Math.min(...clients));
    // and the stages run in lock step overall
    const order = stageOfExec.map((x) => STAGES.indexOf(x.stage) * 2 + (x.stage === 'configure' && x.kind === 'client' ? 1 : 0));
    expect(order).toEqual([...order].sort((x, y) => x - y));
  });
});

// ------------------------------------------------------------------------------------------

describe('rotateCircuits', () => {
  test('three-mixes (one path): the same routers again, generation+1, new SA ids, SPIs, reqids and addresses', () => {
    const s1 = installedEverywhere(three, state0(three));
    const old = s1.circuits.web!;
    const r = rotateCircuits(three, s1, ['web'], rngFactory('rotate'), T_PUSH);
    const c = r.state.circuits.web!;
    expect(c.hops).toEqual(old.hops);
    expect(c.generation).toBe(old.generation + 1);
    expect(c.created).toBe(T_PUSH);
    expect(c.client).toBe(old.client);
    expect(c.to).toEqual(old.to);
    c.hops.forEach((h, i) => {
      const pool = three.routers.get(h)!.pool;
      expect(cidrContainsAddr(pool, parseIPv4(c.addrs[i]!))).toBe(true);
      expect({ h, addr: c.addrs[i] }).not.toEqual({ h, addr: old.addrs[i] });
    });
    expect(new Set([...c.addrs, ...old.addrs]).size).toBe(2 * c.addrs.length);
    // new SPIs and reqids, never used before
    const newSpis = [...c.fwd, ...c.rev].map((x) => x.spi);
    const newReqids = [...c.fwd, ...c.rev].map((x) => x.reqid);
    for (const sp of newSpis) expect(everySpi(s1)).not.toContain(sp);
    for (const q of newReqids) expect(everyReqid(s1)).not.toContain(q);
    expect(Math.min(...newSpis)).toBeGreaterThanOrEqual(s1.next.spi);
    expect(Math.min(...newReqids)).toBeGreaterThanOrEqual(s1.next.reqid);
    expect(new Set(newSpis).size).toBe(newSpis.length);
    for (const x of [...c.fwd, ...c.rev]) expect({ epoch: x.epoch, installed: x.installed, retiring: x.retiring }).toEqual({ epoch: 1, installed: [], retiring: undefined });
    // SA ids of the new generation
    const ids = [...buildConfigs(three, r.state).values()].flatMap((cfg) => cfg.states.map((s) => s.key.id)).filter((id) => id.startsWith('circuit:'));
    expect(ids.length).toBeGreaterThan(0);
    for (const id of ids) expect(id).toMatch(new RegExp(`^circuit:web:g${old.generation + 1}:hop[1-3]:(fwd|rev)$`));
    expect(saRefOfId(r.state, formatSaId({ kind: 'telescope', circuit: 'web', generation: old.generation, hop: 1, dir: 'fwd' }))).toBeUndefined();
    expect(saRefOfId(r.state, formatSaId({ kind: 'telescope', circuit: 'web', generation: c.generation, hop: 1, dir: 'fwd' }))).toEqual({ circuit: 'web', hop: 1, dir: 'fwd' });
    // every overlay SA id names its link and direction, both ways round; an unknown link none
    for (const [k, l] of Object.entries(r.state.links)) {
      expect(saRefOfId(r.state, formatSaId({ kind: 'overlay', from: l.a, to: l.b }))).toEqual({ link: k, dir: 'ab' });
      expect(saRefOfId(r.state, formatSaId({ kind: 'overlay', from: l.b, to: l.a }))).toEqual({ link: k, dir: 'ba' });
    }
    expect(saRefOfId(r.state, formatSaId({ kind: 'overlay', from: 'nobody', to: 'or1' }))).toBeUndefined();
    expect(saRefOfId(r.state, 'link:constructor>prototype')).toBeUndefined();
    // links untouched; one event
    expect(JSON.stringify(r.state.links)).toBe(JSON.stringify(s1.links));
    expect(r.events).toEqual([expect.objectContaining({ kind: 'circuit-repathed', circuit: 'web', hops: c.hops, from: old.hops, reason: expect.stringMatching(/^rotated/) })]);
    expect(r.state.serial).toBe(s1.serial + 1);
    // the input is not modified
    expect(s1.circuits.web).toEqual(old);
  });

  test('rotating again moves on to the next generation and never reuses an SPI of the state', () => {
    const s1 = state0(three);
    const a = rotateCircuits(three, s1, ['web'], rngFactory('r1'), T_PUSH).state;
    const b = rotateCircuits(three, a, ['web'], rngFactory('r2'), AFTER_GRACE).state;
    expect(b.circuits.web!.generation).toBe(3);
    for (const sp of [...b.circuits.web!.fwd, ...b.circuits.web!.rev].map((x) => x.spi)) {
      expect(everySpi(a)).not.toContain(sp);
      expect(everySpi(s1)).not.toContain(sp);
    }
    expect(b.circuits.web!.addrs).not.toEqual(a.circuits.web!.addrs);
  });

  test('K4: the other circuit is byte-identical; the new path satisfies the constraints; addresses never collide on a shared router', () => {
    const s = state0(k4, 'k4');
    for (const name of ['a1', 'b1']) {
      const other = name === 'a1' ? 'b1' : 'a1';
      const def = k4.circuits.find((c) => c.name === name)!;
      const space = new PathSpace(k4, constraintsFor(k4, def));
      for (let i = 0; i < 10; i++) {
        const r = rotateCircuits(k4, s, [name], rngFactory(`k4-${name}-${i}`), T_PUSH);
        expect(JSON.stringify(r.state.circuits[other])).toBe(JSON.stringify(s.circuits[other]));
        expect(JSON.stringify(r.state.links)).toBe(JSON.stringify(s.links));
        const c = r.state.circuits[name]!;
        expect(space.isEligible(c.hops)).toBeUndefined();
        // per router: the new addresses differ from the old path's and the other circuit's
        const taken = new Map<string, string[]>();
        for (const x of [s.circuits[name]!, s.circuits[other]!]) x.hops.forEach((h, j) => taken.set(h, [...(taken.get(h) ?? []), x.addrs[j]!]));
        c.hops.forEach((h, j) => {
          expect(cidrContainsAddr(k4.routers.get(h)!.pool, parseIPv4(c.addrs[j]!))).toBe(true);
          expect({ h, clash: (taken.get(h) ?? []).includes(c.addrs[j]!) }).toEqual({ h, clash: false });
        });
      }
    }
  });

  test('K4 circuit b1 (6 eligible paths): over 50 seeds the new path varies, always among the eligible ones', () => {
    const s = state0(k4, 'k4');
    const def = k4.circuits.find((c) => c.name === 'b1')!;
    const eligible = new Set(new PathSpace(k4, constraintsFor(k4, def)).all().map((p) => p.join('>')));
    expect(eligible.size).toBe(6);
    const seen = new Map<string, number>();
    for (let i = 0; i < 50; i++) {
      const p = rotateCircuits(k4, s, ['b1'], rngFactory(`uniform-${i}`), T_PUSH).state.circuits.b1!.hops.join('>');
      expect(eligible.has(p)).toBe(true);
      seen.set(p, (seen.get(p) ?? 0) + 1);
    }
    expect(seen.size).toBeGreaterThan(1);
    // far from a fixed or a hop-by-hop-biased choice: no path takes half the draws (expected 8 of 50)
    expect(Math.max(...seen.values())).toBeLessThan(25);
  });

  test('an unknown circuit name is a PlanError, and nothing is rotated', () => {
    const s = state0(k4, 'k4');
    expect(() => rotateCircuits(k4, s, ['nope'], rngFactory('x'), T_PUSH)).toThrow(PlanError);
    expect(() => rotateCircuits(k4, s, ['a1', 'nope'], rngFactory('x'), T_PUSH)).toThrow(/nope/);
  });

  test('the rotated state against the old fleet: the old generation is removed, the new added, no key reused', () => {
    const s1 = installedEverywhere(three, state0(three));
    const obs = observedStates(buildConfigs(three, s1));
    const r = rotateCircuits(three, s1, ['web'], rngFactory('rotate'), T_PUSH);
    const p = planAgainst(three, r.state, readsOf(obs), keys, NONCES);
    expect(p.rekeys).toEqual([]);
    expectNoKeyReuse(s1, p);
    const oldSpis = [...s1.circuits.web!.fwd, ...s1.circuits.web!.rev].map((x) => x.spi);
    const newSpis = [...r.state.circuits.web!.fwd, ...r.state.circuits.web!.rev].map((x) => x.spi);
    const h0 = holdersBySpi(buildConfigs(three, s1));
    const h1 = holdersBySpi(p.configs);
    for (const n of p.nodes) {
      expect({ node: n.node, removed: removedSpis(n) }).toEqual({ node: n.node, removed: oldSpis.filter((sp) => h0.get(sp)!.includes(n.node)).sort() });
      expect({ node: n.node, added: addedSpis(n) }).toEqual({ node: n.node, added: newSpis.filter((sp) => h1.get(sp)!.includes(n.node)).sort() });
    }
  });
});

// ------------------------------------------------------------------------------------------

describe('dueForRekey', () => {
  const net = three;
  const s1 = installedEverywhere(net, state0(net));
  const now = new Date(Date.parse(T0) + REKEY_AGE_SECONDS * 1000 + 60_000);
  const fresh = (s: State) => {
    const c = structuredClone(s);
    for (const { rec } of allSas(c)) rec.since = new Date(now.getTime() - 60_000).toISOString();
    return c;
  };
  const lifetime = (bytes: number, packets: number): SaLifetime => ({ soft: { bytes, packets }, hard: { bytes: bytes * 4, packets: packets * 4 } });
  /** the fleet holding s's SAs with the given soft limits and counters (per node and SPI) */
  function reads(s: State, use: (node: string, spi: number) => { bytes: number; packets: number } = () => ({ bytes: 0, packets: 0 }), lt = lifetime(1_000_000, 1_000)): Map<string, NodeRead> {
    const obs = observedStates(buildConfigs(net, s));
    for (const [node, o] of obs) {
      for (const st of o.states!.owned) {
        st.lifetime = lt;
        st.counters = { ...use(node, st.spi), replayWindowErrors: 0, replayErrors: 0, integrityFailed: 0 };
      }
    }
    return readsOf(obs);
  }
  const refKey = (r: SaRef) => JSON.stringify(r);
  const dueKeys = (s: State, rd: Map<string, NodeRead>, at = now) => dueForRekey(net, s, rd, at).map((d) => refKey(d.ref)).sort();

  test('by age: older than REKEY_AGE_SECONDS is due, younger is not', () => {
    const s = fresh(s1);
    const old = allSas(s)[3]!;
    saRecord(s, old.ref)!.since = new Date(now.getTime() - REKEY_AGE_SECONDS * 1000 - 1000).toISOString();
    const young = allSas(s)[4]!;
    saRecord(s, young.ref)!.since = new Date(now.getTime() - REKEY_AGE_SECONDS * 1000 + 1000).toISOString();
    const d = dueForRekey(net, s, reads(s), now);
    expect(d.map((x) => refKey(x.ref))).toEqual([refKey(old.ref)]);
    expect(d[0]!.why).toMatch(/^epoch 3601s old \(since .*\) >= 3600s$/);
    // s1's SAs were pushed at T0, more than the rekey age ago: all due
    expect(dueKeys(s1, reads(s1))).toEqual(allSas(s1).map((x) => refKey(x.ref)).sort());
    // and none of them just before the age is reached
    expect(dueKeys(s1, reads(s1), new Date(Date.parse(T0) + REKEY_AGE_SECONDS * 1000 - 1000))).toEqual([]);
  });

  test.each(['bytes', 'packets'] as const)('by the soft %s limit, as observed on either end', (what) => {
    const s = fresh(s1);
    const cfg = buildConfigs(net, s);
    const h = holdersBySpi(cfg);
    const sas = allSas(s);
    const [x, y, z] = [sas[0]!, sas[5]!, sas[9]!];
    const [nx, ny] = [h.get(x.rec.spi)![0]!, h.get(y.rec.spi)![1]!];
    const lt = lifetime(1_000_000, 1_000);
    const at = what === 'bytes' ? { bytes: 1_000_000, packets: 10 } : { bytes: 1000, packets: 1_000 };
    const below = what === 'bytes' ? { bytes: 999_999, packets: 10 } : { bytes: 1000, packets: 999 };
    const rd = reads(s, (node, spi) => ((spi === x.rec.spi && node === nx) || (spi === y.rec.spi && node === ny) ? at : spi === z.rec.spi ? below : { bytes: 0, packets: 0 }), lt);
    const d = dueForRekey(net, s, rd, now);
    expect(d.map((e) => refKey(e.ref)).sort()).toEqual([refKey(x.ref), refKey(y.ref)].sort());
    for (const e of d) expect(e.why).toMatch(new RegExp(`${what} on (${nx}|${ny}): \\d+ >= soft limit`));
  });

  test('no since, below the limits, or no counters read: not due', () => {
    const s = structuredClone(s1);
    for (const { rec } of allSas(s)) delete rec.since;
    expect(dueKeys(s, reads(s, () => ({ bytes: 999_999, packets: 999 })))).toEqual([]);
    // SAs whose readback has no lifetime or counters (ip xfrm state without -s) are judged by age only
    const plain = readsOf(observedStates(buildConfigs(net, s)));
    for (const r of plain.values()) for (const st of r.observed!.states!.owned) delete st.lifetime;
    expect(dueKeys(s, plain)).toEqual([]);
    // a node that could not be read does not make anything due
    expect(dueKeys(s, new Map([['or1', { node: 'or1', error: 'timeout' }]]))).toEqual([]);
  });

  test('a retiring epoch\'s counters do not make the current epoch due', () => {
    const s = rekeyAll(fresh(s1), webRefs(s1), GRACE_END);
    for (const { rec } of allSas(s)) rec.since = new Date(now.getTime() - 60_000).toISOString();
    const retiring = new Set(allSas(s).flatMap(({ rec }) => (rec.retiring ?? []).map((r) => r.spi)));
    expect(retiring.size).toBe(2 * s1.circuits.web!.hops.length);
    const rd = reads(s, (_n, spi) => (retiring.has(spi) ? { bytes: 5_000_000, packets: 5_000 } : { bytes: 0, packets: 0 }));
    expect(dueKeys(s, rd)).toEqual([]);
  });
});

describe('parseDuration', () => {
  test.each([
    ['90s', 90_000],
    ['10m', 600_000],
    ['10min', 600_000],
    ['2h', 7_200_000],
    ['1d', 86_400_000],
    ['0s', 0],
    ['45', 45_000],
    [' 1.5h ', 5_400_000],
  ])('%j -> %i ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  test.each(['', 'abc', '10x', '-5m', 'm', '1h30m', '5 minutes', '1e3s'])('%j is a UserError', (text) => {
    expect(() => parseDuration(text)).toThrow(UserError);
    expect(() => parseDuration(text)).toThrow(/is not a duration/);
  });
});

// ------------------------------------------------------------------------------------------
// issue 11, defect 1: a state put back from a backup hands its counters out again

describe('a state restored from a backup never gives a router a (SPI, key) pair used before', () => {
  const live = liveRngFactory('lab-seed'); // what apply uses: paths from the seed, nonces from the CSPRNG
  /** the (SPI, key) pairs of every SA the nodes hold after applying `p` */
  const pairs = (p: LivePlan) => [...p.configs.values()].flatMap((c) => c.states.map((s) => `${s.spi.toString(16)}:${keys.key(s.key, PROFILES[s.profile].keyBytes).toString('hex')}`));
  const flushed = (obs: Map<string, ObservedNode>, node: string) => new Map([...obs].map(([n, o]) => [n, n === node ? { node: n, states: { owned: [], foreign: [] } } : o]));

  test('apply, back up the state, or2 reboots, apply, or2 reboots, restore, apply: every pair installed is new', () => {
    // apply 1 to empty routers
    const p1 = planAgainst(three, state0(three), readsOf(noStates(three)), keys, live);
    const s1 = markInstalled(p1.state, p1.nodes, T_PUSH);
    const used = new Set(pairs(p1));
    const backup = structuredClone(s1);

    // or2 reboots; apply 2 re-keys what it had
    const held1 = observedStates(buildConfigs(three, s1));
    const p2 = planAgainst(three, s1, readsOf(flushed(held1, 'or2')), keys, live);
    expect(p2.rekeys.length).toBe(6);
    const s2 = markInstalled(p2.state, p2.nodes, T_PUSH);
    for (const x of pairs(p2)) used.add(x);

    // or2 reboots again, the old state comes back, apply 3: the counters are those of apply 2's
    // start, so the same SPIs and epochs are handed out again; the nonces make the keys new
    const held2 = flushed(observedStates(buildConfigs(three, s2)), 'or2');
    const p3 = planAgainst(three, backup, readsOf(held2), keys, live);
    expect(p3.rekeys.length).toBeGreaterThanOrEqual(6);
    const again = p3.nodes.flatMap((n) =>
      stateChanges(n).flatMap((c) => (c.op === 'add' ? [`${c.desired.spi.toString(16)}:${keys.key(c.desired.key, PROFILES[c.desired.profile].keyBytes).toString('hex')}`] : [])),
    );
    expect(again.length).toBeGreaterThan(0);
    expect(again.filter((x) => used.has(x))).toEqual([]);
  });

  test('two controllers with copies of one state re-key the same lost SA: the same SPI and epoch, two different keys', () => {
    const p1 = planAgainst(three, state0(three), readsOf(noStates(three)), keys, live);
    const s1 = markInstalled(p1.state, p1.nodes, T_PUSH);
    const lost = readsOf(flushed(observedStates(buildConfigs(three, s1)), 'or2'));
    const a = planAgainst(three, structuredClone(s1), lost, keys, liveRngFactory('lab-seed'));
    const b = planAgainst(three, structuredClone(s1), lost, keys, liveRngFactory('lab-seed'));
    expect(a.rekeys.map((r) => r.newSpi)).toEqual(b.rekeys.map((r) => r.newSpi));
    const ka = new Set(pairs(a));
    expect(pairs(b).filter((x) => ka.has(x) && !pairs(p1).includes(x))).toEqual([]);
  });

  test('the nonce is part of the key: same id, epoch and SPI with another nonce is another key; no nonce keeps the old derivation', () => {
    const id: SaKeyId = { id: 'circuit:web:g1:hop1:fwd', epoch: 2, spi: 0x4f000010 };
    const a = keys.key({ ...id, nonce: '00'.repeat(16) }, 36);
    const b = keys.key({ ...id, nonce: '01'.repeat(16) }, 36);
    const legacy = keys.key(id, 36);
    expect(new Set([a, b, legacy].map((k) => k.toString('hex'))).size).toBe(3);
    expect(keys.key({ ...id, nonce: '00'.repeat(16) }, 36)).toEqual(a);
  });

  test('live nonces come from the CSPRNG even with a seed; the paths still follow the seed', () => {
    const a = liveRngFactory('same');
    const b = liveRngFactory('same');
    expect(drawNonce(a(`${NONCE_LABEL}x`))).not.toBe(drawNonce(b(`${NONCE_LABEL}x`)));
    expect(a('circuit/web/g1').int(2 ** 40)).toBe(b('circuit/web/g1').int(2 ** 40));
    // offline plans with a seed stay byte-identical: their nonces follow the seed
    expect(drawNonce(rngFactory('same')(`${NONCE_LABEL}x`))).toBe(drawNonce(rngFactory('same')(`${NONCE_LABEL}x`)));
  });
});

describe('the high-water mark', () => {
  const s = state0(three);
  const ahead = { ...structuredClone(s), serial: s.serial + 3, next: { spi: s.next.spi + 12, reqid: s.next.reqid + 12 } };

  test('a state behind the mark of its salt is named with what is behind; equal or ahead is not; another salt has no mark', () => {
    const hw = raiseMark(emptyHighWater(), ahead, T_PUSH);
    expect(behindMark(hw, ahead)).toBeUndefined();
    expect(behindMark(hw, { ...ahead, serial: ahead.serial + 1 })).toBeUndefined();
    expect(behindMark(hw, s)).toMatch(/^serial \d+ < \d+, next SPI 0x[0-9a-f]+ < 0x[0-9a-f]+, next reqid 0x[0-9a-f]+ < 0x[0-9a-f]+, saved 2025-03-01T10:00:05.000Z$/);
    expect(behindMark(hw, { ...s, salt: 'ab'.repeat(32) })).toBeUndefined();
    // the SPI counter alone behind (a hand-edited serial) is still behind
    expect(behindMark(hw, { ...ahead, next: s.next })).toMatch(/next SPI/);
  });

  test('raising never lowers it, and returns the same object when nothing moved', () => {
    const hw = raiseMark(emptyHighWater(), ahead, T_PUSH);
    const lower = raiseMark(hw, s, T0);
    expect(lower).toBe(hw);
    expect(HighWaterSchema.parse(hw)).toEqual(hw);
  });

  test('resuming from a state behind it: counters past the mark, serial past it, no record of where keys went', () => {
    const p1 = planAgainst(three, s, readsOf(noStates(three)), keys, liveRngFactory(undefined));
    const installed = markInstalled(p1.state, p1.nodes, T_PUSH);
    const hw = raiseMark(emptyHighWater(), { ...installed, serial: installed.serial + 2, next: { spi: installed.next.spi + 6, reqid: installed.next.reqid } }, T_PUSH);
    const r = resumeBehind(hw, installed);
    expect(behindMark(hw, r)).toBeUndefined();
    expect(r.serial).toBe(installed.serial + 3);
    expect(r.next.spi).toBe(installed.next.spi + 6);
    expect(allSas(r).every(({ rec }) => rec.installed === undefined)).toBe(true);
    // and so every SA that a node lacks gets a new epoch (and nonce) on both ends
    const held = observedStates(buildConfigs(three, installed));
    held.set('or1', { node: 'or1', states: { owned: [], foreign: [] } });
    const p = planAgainst(three, r, readsOf(held), keys, liveRngFactory(undefined));
    expect(p.rekeys.length).toBeGreaterThan(0);
    expect(p.rekeys.every((x) => x.newSpi >= installed.next.spi + 6)).toBe(true);
  });
});
