/**
 * The state (src/state/reconcile.ts): paths are state, not re-rolled; only broken circuits are
 * re-pathed; addresses come from the hop's pool and are freed with their circuit; SPIs and reqids
 * only move forward. Also the state file I/O in src/util/files.ts.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { cidrContainsAddr, parseCidr, parseIPv4 } from '../../src/net/addr.js';
import { NONCE_LABEL, rngFactory, SeededRng, type RngFactory } from '../../src/pathselect/rng.js';
import { SPI_BASE, emptyState, type CircuitState, type SaRecord, type State } from '../../src/state/model.js';
import { PlanError, reconcile } from '../../src/state/reconcile.js';
import type { Net } from '../../src/topology/net.js';
import { loadState, saveState } from '../../src/store/files.js';
import { UserError } from '../../src/util/errors.js';
import { netFromYaml } from '../helpers/net.js';

const SALT = 'ab'.repeat(32);
const NOW = '2024-01-01T00:00:00.000Z';
const LATER = '2024-06-01T00:00:00.000Z';

/** an RNG factory that fails the test if anything asks it for randomness */
const noRandomness: RngFactory = (label) => {
  // a new SA's nonce is drawn from the factory too; only path selection is unexpected here
  if (label.startsWith(NONCE_LABEL)) return new SeededRng('nonces', label);
  throw new Error(`unexpected path selection (${label})`);
};

function sasOf(c: CircuitState): SaRecord[] {
  return [...c.fwd, ...c.rev];
}
function allSas(s: State): SaRecord[] {
  return [...Object.values(s.links).flatMap((l) => [l.ab, l.ba]), ...Object.values(s.circuits).flatMap(sasOf)];
}

/** Invariants every state must keep, whatever happened before. */
function checkInvariants(net: Net, s: State): void {
  const sas = allSas(s);
  const spis = sas.map((x) => x.spi);
  const reqids = sas.map((x) => x.reqid);
  expect(new Set(spis).size).toBe(spis.length);
  expect(new Set(reqids).size).toBe(reqids.length);
  if (sas.length > 0) {
    expect(s.next.spi).toBeGreaterThan(Math.max(...spis));
    expect(s.next.reqid).toBeGreaterThan(Math.max(...reqids));
  }
  const perRouter = new Map<string, string[]>();
  for (const [name, c] of Object.entries(s.circuits)) {
    expect(c.addrs.length).toBe(c.hops.length);
    expect(c.fwd.length).toBe(c.hops.length);
    expect(c.rev.length).toBe(c.hops.length);
    c.hops.forEach((h, i) => {
      const r = net.routers.get(h);
      expect(r).toBeDefined();
      const a = parseIPv4(c.addrs[i]!);
      // A_ci lies in OR_ci's pool, and is neither its network nor its broadcast address
      expect(cidrContainsAddr(r!.pool, a)).toBe(true);
      if (r!.pool.len < 31) {
        expect(a).not.toBe(r!.pool.base);
        expect(a).not.toBe(r!.pool.base + 2 ** (32 - r!.pool.len) - 1);
      }
      perRouter.set(h, [...(perRouter.get(h) ?? []), `${c.addrs[i]} (${name})`]);
    });
  }
  for (const [r, list] of perRouter) {
    const addrs = list.map((x) => x.split(' ')[0]);
    expect({ router: r, unique: new Set(addrs).size }).toEqual({ router: r, unique: addrs.length });
  }
}

// ---------------------------------------------------------------------------------------------
// A small network where the outcome is determined by the topology alone (one path per circuit).
//
//   alice ─┐                 ┌── r3 (exit) ══ 203.0.113.0/24
//   carol ─┴ r1a ─┐          │
//                 ├── r2 ────┘
//   bob ──── r1b ─┘

interface SmallOpts {
  bobEntry?: string[];
  withR1b?: boolean;
  circuits?: string[];
  r2Pool?: string;
  c2Hops?: number;
}
function small(o: SmallOpts = {}): Net {
  const withR1b = o.withR1b ?? true;
  const bobEntry = (o.bobEntry ?? ['r1b']).filter((e) => withR1b || e !== 'r1b');
  const circuits = o.circuits ?? ['c1', 'c2', 'c3'];
  const owner: Record<string, string> = { c1: 'alice', c2: 'bob', c3: 'carol', c4: 'alice', c5: 'carol' };
  return netFromYaml(`
    version: 1
    hops: 3
    operators: [{ name: n1 }, { name: n2 }, { name: m }, { name: s }]
    routers:
      - { name: r1a, operator: n1, underlay: { interface: eth0, address: 198.51.100.1/24 }, pool: 100.64.1.0/24 }
      ${withR1b ? '- { name: r1b, operator: n2, underlay: { interface: eth0, address: 198.51.100.2/24 }, pool: 100.64.2.0/24 }' : ''}
      - { name: r2, operator: m, underlay: { interface: eth0, address: 198.51.100.3/24 }, pool: ${o.r2Pool ?? '100.64.3.0/24'} }
      - name: r3
        operator: s
        underlay: { interface: eth0, address: 198.51.100.4/24 }
        pool: 100.64.4.0/24
        exit: { allow: [{ to: 203.0.113.0/24 }] }
    clients:
      - { name: alice, underlay: { interface: eth0, address: 198.51.100.10/24 }, entry: [r1a] }
      - { name: bob, underlay: { interface: eth0, address: 198.51.100.11/24 }, entry: [${bobEntry.join(', ')}] }
      - { name: carol, underlay: { interface: eth0, address: 198.51.100.12/24 }, entry: [r1a] }
    links:
      - [r1a, r2]
      ${withR1b ? '- [r1b, r2]' : ''}
      - [r2, r3]
    circuits:
${circuits
  .map((c) => {
    const n = Number(c.slice(1));
    const hops = c === 'c2' && o.c2Hops !== undefined ? `, hops: ${o.c2Hops}` : '';
    return `      - { name: ${c}, client: ${owner[c]}, to: [203.0.113.${n}/32]${hops} }`;
  })
  .join('\n')}
  `);
}

describe('reconcile on a network with one path per circuit', () => {
  const rng = rngFactory('state-small');
  const first = reconcile(small(), emptyState(SALT), rng, NOW);
  const s1 = first.state;

  test('a first plan adds links and circuits, allocating the lowest free pool addresses in circuit order', () => {
    expect(first.events.filter((e) => e.kind === 'circuit-added').map((e) => e.circuit)).toEqual(['c1', 'c2', 'c3']);
    expect(first.events.filter((e) => e.kind === 'link-added')).toHaveLength(6); // 3 router links + 3 client links
    expect(s1.serial).toBe(1);
    expect(s1.circuits.c1).toMatchObject({ client: 'alice', hops: ['r1a', 'r2', 'r3'], addrs: ['100.64.1.1', '100.64.3.1', '100.64.4.1'], generation: 1, created: NOW, to: ['203.0.113.1/32'] });
    expect(s1.circuits.c2).toMatchObject({ hops: ['r1b', 'r2', 'r3'], addrs: ['100.64.2.1', '100.64.3.2', '100.64.4.2'] });
    expect(s1.circuits.c3).toMatchObject({ hops: ['r1a', 'r2', 'r3'], addrs: ['100.64.1.2', '100.64.3.3', '100.64.4.3'] });
    checkInvariants(small(), s1);
    // the counters start at onionctl's reserved base and every SA got one
    expect(Math.min(...allSas(s1).map((x) => x.spi))).toBe(SPI_BASE);
    expect(s1.next.spi).toBe(SPI_BASE + allSas(s1).length);
  });

  test('the input state is not modified', () => {
    const prev = emptyState(SALT);
    const copy = structuredClone(prev);
    reconcile(small(), prev, rng, NOW);
    expect(prev).toEqual(copy);
  });

  test('planning the unchanged topology again: no events, deep-equal state, no randomness drawn', () => {
    const again = reconcile(small(), s1, noRandomness, LATER);
    expect(again.events).toEqual([]);
    expect(again.state).toEqual(s1);
    expect(again.state.serial).toBe(s1.serial);
    // and the key order of the file is the same too
    expect(JSON.stringify(again.state)).toBe(JSON.stringify(s1));
  });

  test('adding a circuit leaves the other circuits exactly as they were', () => {
    const r = reconcile(small({ circuits: ['c1', 'c2', 'c3', 'c4'] }), s1, rng, LATER);
    expect(r.events).toEqual([{ kind: 'circuit-added', circuit: 'c4', hops: ['r1a', 'r2', 'r3'] }]);
    for (const c of ['c1', 'c2', 'c3']) expect(r.state.circuits[c]).toEqual(s1.circuits[c]);
    expect(r.state.links).toEqual(s1.links);
    expect(r.state.circuits.c4!.addrs).toEqual(['100.64.1.3', '100.64.3.4', '100.64.4.4']);
    expect(r.state.circuits.c4!.created).toBe(LATER);
    expect(Math.min(...sasOf(r.state.circuits.c4!).map((x) => x.spi))).toBe(s1.next.spi);
    expect(r.state.serial).toBe(s1.serial + 1);
    checkInvariants(small({ circuits: ['c1', 'c2', 'c3', 'c4'] }), r.state);
  });

  test('removing a circuit frees its addresses; a later circuit reuses them but never its SPIs', () => {
    const r = reconcile(small({ circuits: ['c2', 'c3'] }), s1, noRandomness, LATER);
    expect(r.events).toEqual([{ kind: 'circuit-removed', circuit: 'c1' }]);
    expect(Object.keys(r.state.circuits)).toEqual(['c2', 'c3']);
    expect(r.state.circuits.c2).toEqual(s1.circuits.c2);
    expect(r.state.circuits.c3).toEqual(s1.circuits.c3);
    expect(r.state.next).toEqual(s1.next);

    const r2 = reconcile(small({ circuits: ['c2', 'c3', 'c5'] }), r.state, rng, LATER);
    // c1's addresses were the lowest on r1a, r2 and r3; c5 gets exactly those back
    expect(r2.state.circuits.c5!.addrs).toEqual(s1.circuits.c1!.addrs);
    const oldSpis = new Set(allSas(s1).map((x) => x.spi));
    const oldReqids = new Set(allSas(s1).map((x) => x.reqid));
    for (const sa of sasOf(r2.state.circuits.c5!)) {
      expect(oldSpis.has(sa.spi)).toBe(false);
      expect(oldReqids.has(sa.reqid)).toBe(false);
      expect(sa.spi).toBeGreaterThanOrEqual(s1.next.spi);
    }
    checkInvariants(small({ circuits: ['c2', 'c3', 'c5'] }), r2.state);
  });

  test('removing a router re-paths only the circuit that used it', () => {
    // bob gains r1a as a second entry first: his circuit still runs through r1b and stays put
    const widened = reconcile(small({ bobEntry: ['r1b', 'r1a'] }), s1, noRandomness, LATER);
    expect(widened.events).toEqual([{ kind: 'link-added', link: 'bob~r1a' }]);
    expect(widened.state.circuits).toEqual(s1.circuits);

    const net = small({ bobEntry: ['r1b', 'r1a'], withR1b: false });
    const r = reconcile(net, widened.state, rng, LATER);
    const s0 = widened.state;
    expect(r.events).toEqual(
      expect.arrayContaining([
        { kind: 'link-removed', link: 'bob~r1b' },
        { kind: 'link-removed', link: 'r1b~r2' },
        {
          kind: 'circuit-repathed',
          circuit: 'c2',
          hops: ['r1a', 'r2', 'r3'],
          from: ['r1b', 'r2', 'r3'],
          reason: expect.stringContaining('r1b is no longer in the topology') as unknown as string,
        },
      ]),
    );
    expect(r.events).toHaveLength(3);
    expect(r.state.circuits.c1).toEqual(s0.circuits.c1);
    expect(r.state.circuits.c3).toEqual(s0.circuits.c3);
    const c2 = r.state.circuits.c2!;
    expect(c2.generation).toBe(s0.circuits.c2!.generation + 1);
    expect(c2.created).toBe(LATER);
    // r1a: .1 and .2 are c1's and c3's, so .3; on r2 and r3, c2's own old address (.2) was
    // freed when it was re-pathed and is the lowest free one again
    expect(c2.addrs).toEqual(['100.64.1.3', '100.64.3.2', '100.64.4.2']);
    for (const sa of sasOf(c2)) {
      expect(sa.spi).toBeGreaterThanOrEqual(s0.next.spi);
      expect(sa.reqid).toBeGreaterThanOrEqual(s0.next.reqid);
      expect(sa.epoch).toBe(1);
    }
    expect(r.state.links['r1a~r2']).toEqual(s0.links['r1a~r2']);
    expect(r.state.links['r1b~r2']).toBeUndefined();
    checkInvariants(net, r.state);
  });

  test('a changed destination list only updates the circuit (same path, addresses and SAs)', () => {
    const same = reconcile(small({ c2Hops: 3 }), s1, noRandomness, LATER);
    expect(same.events).toEqual([]); // an explicit hop count equal to the default changes nothing

    const net = small();
    net.circuits[0] = { ...net.circuits[0]!, to: [parseCidr('203.0.113.0/28')] };
    const upd = reconcile(net, s1, noRandomness, LATER);
    expect(upd.events).toEqual([{ kind: 'circuit-updated', circuit: 'c1', reason: 'destinations now 203.0.113.0/28' }]);
    expect(upd.state.circuits.c1).toEqual({ ...s1.circuits.c1, to: ['203.0.113.0/28'] });
    expect(upd.state.serial).toBe(s1.serial + 1);
  });

  test('a destination the exit no longer admits re-paths (and here cannot: PathError)', () => {
    const net = small();
    net.circuits[0] = { ...net.circuits[0]!, to: [parseCidr('192.0.2.0/24')] };
    expect(() => reconcile(net, s1, rng, LATER)).toThrow(/no exit admits/);
  });

  test('pool exhaustion is a PlanError naming the router and its pool', () => {
    // a /30 has two usable hosts; the third circuit through r2 finds none
    const net = small({ r2Pool: '100.64.3.0/30' });
    let err: unknown;
    try {
      reconcile(net, emptyState(SALT), rng, NOW);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PlanError);
    expect((err as Error).message).toMatch(/router r2: pool 100\.64\.3\.0\/30 has no free address for circuit c3/);
    // two circuits fit, using .1 and .2 (network and broadcast addresses are never handed out)
    const ok = reconcile(small({ r2Pool: '100.64.3.0/30', circuits: ['c1', 'c2'] }), emptyState(SALT), rng, NOW);
    expect(ok.state.circuits.c1!.addrs[1]).toBe('100.64.3.1');
    expect(ok.state.circuits.c2!.addrs[1]).toBe('100.64.3.2');
  });

  test('a /32 pool holds exactly one circuit address', () => {
    const ok = reconcile(small({ r2Pool: '100.64.3.7/32', circuits: ['c1'] }), emptyState(SALT), rng, NOW);
    expect(ok.state.circuits.c1!.addrs[1]).toBe('100.64.3.7');
    expect(() => reconcile(small({ r2Pool: '100.64.3.7/32', circuits: ['c1', 'c2'] }), emptyState(SALT), rng, NOW)).toThrow(PlanError);
  });

  test('an exhausted SPI range is a PlanError, not a wrap-around', () => {
    const s = emptyState(SALT);
    s.next.spi = 0x4fffffff + 1;
    expect(() => reconcile(small(), s, rng, NOW)).toThrow(PlanError);
  });
});

// ---------------------------------------------------------------------------------------------
// A full mesh where paths are random: a sequence of changes, checking stability and the
// invariants after each.

function mesh(o: { routers: string[]; circuits: { name: string; client: string; to: string; hops?: number }[] }): Net {
  const all = ['r0', 'r1', 'r2', 'r3', 'r4', 'r5', 'r6', 'r7'];
  const exits = new Set(['r5', 'r6', 'r7']);
  const present = all.filter((r) => o.routers.includes(r));
  const links: string[] = [];
  for (let i = 0; i < present.length; i++) for (let j = i + 1; j < present.length; j++) links.push(`  - [${present[i]}, ${present[j]}]`);
  const entries = (list: string[]) => list.filter((r) => present.includes(r)).join(', ');
  return netFromYaml(`
version: 1
hops: 3
operators: [${all.map((r) => `{ name: op-${r} }`).join(', ')}]
routers:
${present
  .map((r) => {
    const i = Number(r.slice(1));
    const base = `  - { name: ${r}, operator: op-${r}, underlay: { interface: eth0, address: 198.51.100.${20 + i}/24 }, pool: 100.64.${i}.0/28`;
    return exits.has(r) ? `${base}, exit: { allow: [{ to: 203.0.113.0/24 }, { to: 192.0.2.0/24 }] } }` : `${base} }`;
  })
  .join('\n')}
clients:
  - { name: alice, underlay: { interface: eth0, address: 198.51.100.10/24 }, entry: [${entries(['r0', 'r1', 'r2', 'r3'])}] }
  - { name: bob, underlay: { interface: eth0, address: 198.51.100.11/24 }, entry: [${entries(['r1', 'r2', 'r3', 'r4'])}] }
links:
${links.join('\n')}
circuits:
${o.circuits.map((c) => `  - { name: ${c.name}, client: ${c.client}, to: [${c.to}]${c.hops ? `, hops: ${c.hops}` : ''} }`).join('\n')}
`);
}

describe('reconcile over a sequence of changes on a random-path mesh', () => {
  const R = ['r0', 'r1', 'r2', 'r3', 'r4', 'r5', 'r6', 'r7'];
  const C = [
    { name: 'a1', client: 'alice', to: '203.0.113.1/32' },
    { name: 'a2', client: 'alice', to: '203.0.113.2/32' },
    { name: 'a3', client: 'alice', to: '192.0.2.0/28' },
    { name: 'b1', client: 'bob', to: '203.0.113.1/32' },
    { name: 'b2', client: 'bob', to: '203.0.113.64/26' },
    { name: 'b3', client: 'bob', to: '192.0.2.128/25' },
  ];
  const rng = rngFactory('state-mesh');
  const everSpi = new Set<number>();
  const everReqid = new Set<number>();
  let state = emptyState(SALT);
  let routers = [...R];
  let circuits = [...C];

  /** runs one step and checks: new SAs are fresh, untouched circuits unchanged, counters forward */
  function step(label: string, expectRepathed?: (before: State) => Set<string>): { state: State; events: ReturnType<typeof reconcile>['events'] } {
    const net = mesh({ routers, circuits });
    const before = state;
    const res = reconcile(net, before, rng, label);
    checkInvariants(net, res.state);
    expect(res.state.next.spi).toBeGreaterThanOrEqual(before.next.spi);
    expect(res.state.next.reqid).toBeGreaterThanOrEqual(before.next.reqid);
    const beforeSpis = new Set(allSas(before).map((x) => x.spi));
    for (const sa of allSas(res.state)) {
      if (beforeSpis.has(sa.spi)) continue;
      // a new SA: never handed out before, by any earlier state in this history
      expect(everSpi.has(sa.spi)).toBe(false);
      expect(everReqid.has(sa.reqid)).toBe(false);
      expect(sa.spi).toBeGreaterThanOrEqual(before.next.spi);
    }
    for (const sa of allSas(res.state)) {
      everSpi.add(sa.spi);
      everReqid.add(sa.reqid);
    }
    if (expectRepathed) {
      const changed = expectRepathed(before);
      for (const [name, c] of Object.entries(res.state.circuits)) {
        const old = before.circuits[name];
        if (!old) continue;
        if (changed.has(name)) {
          expect(c.generation).toBe(old.generation + 1);
          expect(c.created).toBe(label);
          for (const sa of sasOf(c)) expect(beforeSpis.has(sa.spi)).toBe(false);
        } else {
          expect({ name, c }).toEqual({ name, c: old });
        }
      }
      const repathed = res.events.filter((e) => e.kind === 'circuit-repathed').map((e) => e.circuit);
      expect(repathed.sort()).toEqual([...changed].filter((n) => before.circuits[n]).sort());
    }
    state = res.state;
    return res;
  }

  const users = (s: State, r: string) => new Set(Object.entries(s.circuits).filter(([, c]) => c.hops.includes(r)).map(([n]) => n));

  test('initial plan', () => {
    step('t0');
    expect(Object.keys(state.circuits)).toEqual(C.map((c) => c.name));
  });

  test('no change twice in a row', () => {
    const r = step('t1', () => new Set());
    expect(r.events).toEqual([]);
  });

  test('remove the middle router used by the most circuits: only its circuits move', () => {
    const counts = ['r0', 'r1', 'r2', 'r3', 'r4'].map((r) => [r, users(state, r).size] as const).sort((a, b) => b[1] - a[1]);
    const [victim, n] = counts[0]!;
    expect(n).toBeGreaterThan(0);
    expect(n).toBeLessThan(C.length); // some circuits must stay put, or the test shows nothing
    routers = routers.filter((r) => r !== victim);
    step('t2', (before) => users(before, victim));
    for (const c of Object.values(state.circuits)) expect(c.hops).not.toContain(victim);
  });

  test('remove an exit: only the circuits ending there move', () => {
    const exit = ['r5', 'r6', 'r7'].map((r) => [r, users(state, r).size] as const).sort((a, b) => b[1] - a[1])[0]![0];
    routers = routers.filter((r) => r !== exit);
    step('t3', (before) => users(before, exit));
  });

  test('remove two circuits, add one: the new one gets fresh SPIs', () => {
    circuits = circuits.filter((c) => c.name !== 'a2' && c.name !== 'b2');
    step('t4', () => new Set());
    circuits = [...circuits, { name: 'a4', client: 'alice', to: '203.0.113.2/32' }];
    const r = step('t5', () => new Set());
    expect(r.events).toEqual([{ kind: 'circuit-added', circuit: 'a4', hops: state.circuits.a4!.hops }]);
  });

  test('a changed hop count re-paths that circuit only', () => {
    circuits = circuits.map((c) => (c.name === 'b1' ? { ...c, hops: 4 } : c));
    const r = step('t5b', () => new Set(['b1']));
    expect(state.circuits.b1!.hops).toHaveLength(4);
    expect(r.events).toEqual([expect.objectContaining({ kind: 'circuit-repathed', circuit: 'b1', reason: 'hop count changed from 3 to 4' })]);
  });

  test('routers come back: new links get new SAs, no circuit moves', () => {
    routers = [...R];
    const r = step('t6', () => new Set());
    expect(r.events.every((e) => e.kind === 'link-added')).toBe(true);
    expect(r.events.length).toBeGreaterThan(0);
  });

  test('every SPI and reqid seen in the history was handed out once', () => {
    // counters only move forward, so the history's SPIs are all below the final counter
    expect(Math.max(...everSpi)).toBeLessThan(state.next.spi);
    expect(everSpi.size).toBeGreaterThan(allSas(state).length); // some SAs were retired on the way
  });
});

// ---------------------------------------------------------------------------------------------

describe('state file I/O', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'onionctl-state-test-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const planned = () => reconcile(small(), emptyState(SALT), rngFactory('io'), NOW).state;

  test('a missing state file gives a fresh state with a random 32-byte salt', async () => {
    const a = await loadState(path.join(dir, 'missing.json'));
    const b = await loadState(path.join(dir, 'missing.json'));
    expect(a.fresh).toBe(true);
    expect(a.state.salt).toMatch(/^[0-9a-f]{64}$/);
    expect(a.state.salt).not.toBe(b.state.salt);
    expect(a.state.circuits).toEqual({});
  });

  test('saveState writes mode 0600, atomically (no temporary file left), and round-trips', async () => {
    const sub = await mkdtemp(path.join(dir, 'save-'));
    const file = path.join(sub, 'net.state.json');
    const s = planned();
    await saveState(file, s);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(await readdir(sub)).toEqual(['net.state.json']);
    const back = await loadState(file);
    expect(back.fresh).toBe(false);
    expect(back.state).toEqual(s);
    expect(await readFile(file, 'utf8')).toMatch(/\n$/);
  });

  test('saving over an existing group-readable file leaves a 0600 file with the new content', async () => {
    const sub = await mkdtemp(path.join(dir, 'over-'));
    const file = path.join(sub, 's.json');
    await writeFile(file, 'old');
    await chmod(file, 0o644);
    const s = planned();
    await saveState(file, s);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(JSON.parse(await readFile(file, 'utf8'))).toEqual(s);
    expect(await readdir(sub)).toEqual(['s.json']);
  });

  test('a failed rename (the target is a directory) leaves no temporary file behind', async () => {
    const sub = await mkdtemp(path.join(dir, 'fail-'));
    const target = path.join(sub, 's.json');
    await mkdir(target);
    await expect(saveState(target, planned())).rejects.toThrow();
    expect(await readdir(sub)).toEqual(['s.json']);
    expect(await readdir(target)).toEqual([]);
  });

  test('a file that is not JSON is refused with a clear message', async () => {
    const file = path.join(dir, 'broken.json');
    await writeFile(file, '{"version": 1, "salt": ', { mode: 0o600 });
    await expect(loadState(file)).rejects.toThrow(UserError);
    await expect(loadState(file)).rejects.toThrow(/state file .*broken\.json is not valid JSON/);
  });

  test('a JSON file that breaks the schema is refused, naming the field', async () => {
    const cases: [string, (s: Record<string, unknown>) => void, RegExp][] = [
      ['salt', (s) => (s.salt = 'not-hex'), /damaged at salt/],
      ['spi', (s) => ((s.next as { spi: number }).spi = 5), /damaged at next\.spi/],
      ['extra', (s) => (s.surprise = true), /damaged at \(top\)/],
      ['version', (s) => (s.version = 2), /damaged at version/],
      ['circuit', (s) => ((s.circuits as Record<string, { generation: number }>).c1!.generation = 0), /damaged at circuits\.c1\.generation/],
    ];
    for (const [name, mutate, re] of cases) {
      const raw = JSON.parse(JSON.stringify(planned())) as Record<string, unknown>;
      mutate(raw);
      const file = path.join(dir, `bad-${name}.json`);
      await writeFile(file, JSON.stringify(raw), { mode: 0o600 });
      await expect(loadState(file)).rejects.toThrow(re);
    }
  });
});
