/**
 * The rekey schedule (src/rekey/schedule.ts): which SAs `rekey --due` rekeys and why, on the
 * recorded read-back of the padded lab plan (test/fixtures/readback/uml-6.1-sa, every SA added at
 * ADDED by the router's clock) with usage edited per test: soft and hard limits on either end,
 * the exact boundaries, the router's own limits when stricter, missing SAs, unread nodes, epoch
 * and circuit ages.
 */
import { describe, expect, test } from '@jest/globals';
import {
  BYTES_HARD,
  BYTES_SOFT,
  HARD_AGE_SECONDS,
  HARD_URGENT_FRACTION,
  PACKETS_HARD_SEQ32,
  PACKETS_SOFT_ESN,
  PACKETS_SOFT_SEQ32,
  REKEY_AGE_SECONDS,
} from '../../src/keys/lifetimes.js';
import type { ObservedState } from '../../src/readback/observed.js';
import { allSas, describeDue, schedule, type NodeReading, type ScheduleInput } from '../../src/rekey/schedule.js';
import type { State } from '../../src/state/model.js';
import { SA_PLAN_NODES, padPlan, saObserved } from '../helpers/sa.js';

/** when the last recorded SA was added, by the router's clock */
const ADDED = (() => {
  const t = saObserved('alice').states!.owned.map((s) => s.counters!.added!).sort();
  return t[t.length - 1]!;
})();
/** the router's clock `s` seconds after ADDED (naive, as the router prints it) */
const clockAt = (s: number) => new Date(Date.parse(`${ADDED.replace(' ', 'T')}Z`) + s * 1000).toISOString().replace('T', ' ').slice(0, 19);
const NOW = '2026-11-24T12:00:00Z';
const isoBefore = (s: number) => new Date(Date.parse(NOW) - s * 1000).toISOString();

/** the padded lab plan's state, every SA pushed to both its ends just now */
function pushedState(since = NOW): State {
  const s = structuredClone(padPlan().state);
  for (const { info, rec } of allSas(s)) {
    rec.installed = [...info.nodes];
    rec.since = since;
  }
  for (const c of Object.values(s.circuits)) c.created = since;
  return s;
}

/** the recorded SAs of every node, their add times set to ADDED (the recording spans a few seconds) */
function readings(clock: string | undefined = clockAt(5)): Map<string, NodeReading> {
  return new Map(
    SA_PLAN_NODES.map((n) => {
      const states = saObserved(n).states!.owned;
      for (const o of states) o.counters!.added = ADDED;
      return [n, { states, ...(clock !== undefined ? { clock } : {}) }];
    }),
  );
}

/** edits the observed SA `spi` on `node` */
function edit(r: Map<string, NodeReading>, node: string, spi: number, f: (o: ObservedState) => void): void {
  const o = r.get(node)!.states.find((s) => s.spi === spi);
  if (!o) throw new Error(`no SA ${spi.toString(16)} on ${node}`);
  f(o);
}

const input = (over: Partial<ScheduleInput> = {}): ScheduleInput => ({ state: pushedState(), crypto: 'aes-gcm', readings: readings(), now: NOW, ...over });
const sas = (s: State) => allSas(s).map((x) => x.info);
const overlay = (s: State, label: string) => sas(s).find((x) => x.label === label)!;
const dueLabels = (i: ScheduleInput) => schedule(i).due.map((d) => d.label);

describe('nothing due', () => {
  test('freshly pushed SAs, just added, nothing used: nothing due, nothing unknown', () => {
    const r = schedule(input());
    expect(r).toEqual({ due: [], unknown: [], notInstalled: [], oldCircuits: [] });
    expect(allSas(pushedState())).toHaveLength(12);
  });
});

describe('soft limits, on either end, at the exact boundary', () => {
  test('bytes: one below the soft limit is not due, at the limit it is, on the sending or the receiving end', () => {
    const st = pushedState();
    const sa = sas(st).find((x) => x.label === 'circuit web hop 2 forward')!;
    for (const node of sa.nodes) {
      const below = readings();
      edit(below, node, sa.spi, (o) => (o.counters!.bytes = BYTES_SOFT - 1));
      expect(dueLabels(input({ state: st, readings: below }))).toEqual([]);
      const at = readings();
      edit(at, node, sa.spi, (o) => (o.counters!.bytes = BYTES_SOFT));
      const r = schedule(input({ state: st, readings: at }));
      expect(r.due).toEqual([
        expect.objectContaining({ label: sa.label, ref: { circuit: 'web', hop: 2, dir: 'fwd' }, id: 'circuit:web:g1:hop2:fwd', urgent: false, reasons: [{ code: 'limit', level: 'soft', measure: 'bytes', node, used: BYTES_SOFT, limit: BYTES_SOFT }] }),
      ]);
    }
  });

  test('packets: telescope SAs (no ESN) at 2^31, overlay SAs (ESN) only at 2^32', () => {
    const st = pushedState();
    const tel = sas(st).find((x) => x.kind === 'telescope')!;
    const ov = sas(st).find((x) => x.kind === 'overlay')!;
    const r = readings();
    edit(r, tel.nodes[1], tel.spi, (o) => (o.counters!.packets = PACKETS_SOFT_SEQ32));
    edit(r, ov.nodes[0], ov.spi, (o) => (o.counters!.packets = PACKETS_SOFT_SEQ32));
    expect(dueLabels(input({ state: st, readings: r }))).toEqual([tel.label]);
    edit(r, ov.nodes[0], ov.spi, (o) => (o.counters!.packets = PACKETS_SOFT_ESN));
    expect(dueLabels(input({ state: st, readings: r }))).toEqual([ov.label, tel.label]);
  });

  test('time: the router\'s add time against the router\'s clock; 3599 s is not due, 3600 s is, for every SA on both ends', () => {
    expect(schedule(input({ readings: readings(clockAt(REKEY_AGE_SECONDS - 1)) })).due).toEqual([]);
    const r = schedule(input({ readings: readings(clockAt(REKEY_AGE_SECONDS)) }));
    expect(r.due).toHaveLength(12);
    for (const d of r.due) {
      expect(d.reasons.map((x) => (x.code === 'limit' ? `${x.level} ${x.measure} ${x.node}` : x.code))).toEqual(d.nodes.map((n) => `soft seconds since added ${n}`));
      expect(d.urgent).toBe(false);
    }
  });

  test('without the router\'s clock its times are not used (the controller\'s clock is another one)', () => {
    expect(schedule(input({ readings: readings(undefined) })).due).toEqual([]);
  });

  test('a stricter limit the router reports wins; a missing (infinite) one leaves the planned limit', () => {
    const st = pushedState();
    const ov = overlay(st, 'overlay or1->or2');
    const r = readings();
    edit(r, 'or2', ov.spi, (o) => {
      o.lifetime = { soft: { bytes: 1000 }, hard: {} };
      o.counters!.bytes = 1000;
    });
    expect(schedule(input({ state: st, readings: r })).due).toEqual([
      expect.objectContaining({ label: 'overlay or1->or2', reasons: [{ code: 'limit', level: 'soft', measure: 'bytes', node: 'or2', used: 1000, limit: 1000 }] }),
    ]);
    const inf = readings();
    edit(inf, 'or2', ov.spi, (o) => {
      o.lifetime = { soft: {}, hard: {} };
      o.counters!.bytes = BYTES_SOFT - 1;
    });
    expect(dueLabels(input({ state: st, readings: inf }))).toEqual([]);
  });

  test('a use-time limit the router has counts from the first use; a never used SA is not due by it', () => {
    const st = pushedState();
    const sa = sas(st)[0]!;
    const r = readings(clockAt(100));
    edit(r, sa.nodes[0], sa.spi, (o) => (o.lifetime = { soft: { useSeconds: 50 }, hard: {} }));
    expect(dueLabels(input({ state: st, readings: r }))).toEqual([]);
    edit(r, sa.nodes[0], sa.spi, (o) => (o.counters!.used = clockAt(50)));
    expect(schedule(input({ state: st, readings: r })).due[0]!.reasons).toEqual([{ code: 'limit', level: 'soft', measure: 'seconds since first use', node: sa.nodes[0], used: 50, limit: 50 }]);
  });
});

describe('hard limits: urgent', () => {
  test(`at ${HARD_URGENT_FRACTION} of a hard limit the reason is the hard limit and the rekey is urgent`, () => {
    const st = pushedState();
    const sa = sas(st).find((x) => x.kind === 'telescope')!;
    const near = Math.ceil(BYTES_HARD * HARD_URGENT_FRACTION);
    const r = readings();
    edit(r, sa.nodes[0], sa.spi, (o) => (o.counters!.bytes = near - 1));
    expect(schedule(input({ state: st, readings: r })).due[0]).toMatchObject({ urgent: false, reasons: [{ level: 'soft', measure: 'bytes' }] });
    edit(r, sa.nodes[0], sa.spi, (o) => (o.counters!.bytes = near));
    expect(schedule(input({ state: st, readings: r })).due[0]).toMatchObject({ urgent: true, reasons: [{ level: 'hard', measure: 'bytes', used: near, limit: BYTES_HARD }] });
    const p = readings();
    edit(p, sa.nodes[1], sa.spi, (o) => (o.counters!.packets = PACKETS_HARD_SEQ32));
    expect(schedule(input({ state: st, readings: p })).due[0]).toMatchObject({ urgent: true, reasons: [{ level: 'hard', measure: 'packets', node: sa.nodes[1] }] });
    expect(schedule(input({ state: st, readings: readings(clockAt(HARD_AGE_SECONDS)) })).due.every((d) => d.urgent)).toBe(true);
  });

  test('an SA gone from a node it was installed on is due and urgent; one never pushed there is apply\'s business', () => {
    const st = pushedState();
    const ov = overlay(st, 'overlay alice->or1');
    const r = readings();
    r.get('or1')!.states = r.get('or1')!.states.filter((s) => s.spi !== ov.spi);
    expect(schedule(input({ state: st, readings: r })).due).toEqual([expect.objectContaining({ label: ov.label, urgent: true, reasons: [{ code: 'missing', node: 'or1' }] })]);

    const notYet = structuredClone(st);
    const rec = notYet.links[(ov.ref as { link: string }).link]!.ab;
    rec.installed = ['alice'];
    const res = schedule(input({ state: notYet, readings: r }));
    expect(res.due).toEqual([]);
    expect(res.notInstalled).toEqual([{ sa: expect.objectContaining({ label: ov.label }), nodes: ['or1'] }]);

    // a state from before `installed` was recorded: a pushed epoch (since set) counts as installed
    const old = structuredClone(st);
    delete old.links[(ov.ref as { link: string }).link]!.ab.installed;
    expect(dueLabels(input({ state: old, readings: r }))).toEqual([ov.label]);
    delete old.links[(ov.ref as { link: string }).link]!.ab.since;
    expect(dueLabels(input({ state: old, readings: r }))).toEqual([]);
  });
});

describe('missing readings', () => {
  test('a node not read: its SAs are unknown unless the other end makes them due', () => {
    const st = pushedState();
    const r = readings();
    r.delete('or3');
    const res = schedule(input({ state: st, readings: r }));
    expect(res.due).toEqual([]);
    expect(res.unknown.map((u) => `${u.label}: ${u.unread.join(',')}`)).toEqual([
      'overlay or2->or3: or3',
      'overlay or3->or2: or3',
      'circuit web hop 3 forward: or3',
      'circuit web hop 3 reverse: or3',
    ]);
    const sa = sas(st).find((x) => x.label === 'circuit web hop 3 forward')!;
    edit(r, 'alice', sa.spi, (o) => (o.counters!.bytes = BYTES_SOFT));
    const res2 = schedule(input({ state: st, readings: r }));
    expect(res2.due.map((d) => d.label)).toEqual(['circuit web hop 3 forward']);
    expect(res2.unknown.map((u) => u.label)).not.toContain('circuit web hop 3 forward');
  });

  test('a node read without counters (ip xfrm state without -s) is unknown, not "nothing used"', () => {
    const r = readings();
    r.set('or2', { states: saObserved('or2', '').states!.owned, clock: clockAt(REKEY_AGE_SECONDS * 2) });
    const res = schedule(input({ readings: r }));
    expect(res.due).toEqual([]);
    expect(res.unknown.map((u) => u.unread)).toEqual([['or2'], ['or2'], ['or2'], ['or2'], ['or2'], ['or2']]);
  });
});

describe('ages by the controller\'s clock', () => {
  test('an epoch pushed maxSaAge ago is due, one second less is not; the default maximum is the rekey age', () => {
    expect(dueLabels(input({ state: pushedState(isoBefore(REKEY_AGE_SECONDS - 1)) }))).toEqual([]);
    const r = schedule(input({ state: pushedState(isoBefore(REKEY_AGE_SECONDS)) }));
    expect(r.due).toHaveLength(12);
    expect(r.due[0]!.reasons).toEqual([{ code: 'age', since: isoBefore(REKEY_AGE_SECONDS), ageSeconds: REKEY_AGE_SECONDS, maxSeconds: REKEY_AGE_SECONDS }]);
    expect(dueLabels(input({ state: pushedState(isoBefore(600)), maxSaAgeSeconds: 600 }))).toHaveLength(12);
    expect(dueLabels(input({ state: pushedState(isoBefore(599)), maxSaAgeSeconds: 600 }))).toEqual([]);
  });

  test('one SA re-keyed recently among old ones: only the old ones are due', () => {
    const st = pushedState(isoBefore(REKEY_AGE_SECONDS * 2));
    const c = st.circuits.web!;
    c.fwd[0]!.since = isoBefore(10);
    const labels = dueLabels(input({ state: st }));
    expect(labels).toHaveLength(11);
    expect(labels).not.toContain('circuit web hop 1 forward');
  });

  test('circuits at least --max-age old (state "created"), only when a maximum is given', () => {
    const st = pushedState();
    st.circuits.web!.created = isoBefore(600);
    expect(schedule(input({ state: st })).oldCircuits).toEqual([]);
    expect(schedule(input({ state: st, maxCircuitAgeSeconds: 601 })).oldCircuits).toEqual([]);
    expect(schedule(input({ state: st, maxCircuitAgeSeconds: 600 })).oldCircuits).toEqual([{ circuit: 'web', created: isoBefore(600), ageSeconds: 600 }]);
  });

  test('"now" must be a time', () => {
    expect(() => schedule(input({ now: 'yesterday' }))).toThrow(/not an ISO time/);
  });
});

describe('output', () => {
  test('a stable order (links, then circuits hop by hop) and a readable line per SA', () => {
    const r = schedule(input({ readings: readings(clockAt(REKEY_AGE_SECONDS)) }));
    expect(r.due.map((d) => d.label)).toEqual([
      'overlay alice->or1',
      'overlay or1->alice',
      'overlay or1->or2',
      'overlay or2->or1',
      'overlay or2->or3',
      'overlay or3->or2',
      'circuit web hop 1 forward',
      'circuit web hop 1 reverse',
      'circuit web hop 2 forward',
      'circuit web hop 2 reverse',
      'circuit web hop 3 forward',
      'circuit web hop 3 reverse',
    ]);
    expect(describeDue(r.due[0]!)).toBe(
      `overlay alice->or1 spi 0x4f000004 epoch 1: seconds since added on alice: ${REKEY_AGE_SECONDS} >= soft limit ${REKEY_AGE_SECONDS}; seconds since added on or1: ${REKEY_AGE_SECONDS} >= soft limit ${REKEY_AGE_SECONDS}`,
    );
    const st = pushedState();
    const sa = sas(st)[6]!;
    const g = readings();
    g.get(sa.nodes[1])!.states = g.get(sa.nodes[1])!.states.filter((s) => s.spi !== sa.spi);
    expect(describeDue(schedule(input({ state: st, readings: g })).due[0]!)).toMatch(/^circuit web hop 1 forward spi 0x4f0000[0-9a-f]{2} epoch 1 \[urgent\]: gone from or1 /);
    // the same input gives the same answer
    expect(schedule(input())).toEqual(schedule(input()));
  });
});
