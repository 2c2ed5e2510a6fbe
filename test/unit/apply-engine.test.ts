/**
 * src/apply/engine.ts on the UML lab's recorded read-backs (test/helpers/apply.ts heldPlan and
 * heldObserved: the recorded routers hold every object of that plan):
 *   - planAgainst: a fleet that holds the plan gives nothing to do; a rebooted router whose SAs'
 *     keys were installed there before gets every one of its SAs rekeyed (new SPI and epoch, on
 *     both ends), and nothing else moves; an SA held with other attributes is rekeyed too;
 *   - markInstalled, observedDigest;
 *   - pushChanges over fake transports: stages in lock step across nodes (configure: routers,
 *     then clients), make-before-break order of a rekeyed SA's two ends, a failing node stops
 *     while the others finish, an abort starts no new step.
 */
import { rngFactory } from '../../src/pathselect/rng.js';
import { beforeAll, describe, expect, test } from '@jest/globals';
import { NO_BUILTIN_PRINTF, NO_BUILTIN_PRINTF_EXIT, ownAddresses, parseStageScript, STAGES, stageSteps, type Stage } from '../../src/apply/commands.js';
import { describeRekey, interfaceAddresses, markInstalled, observedDigest, planAgainst, pushChanges, type LivePlan, type NodePlan, type NodeRead, type PushInput } from '../../src/apply/engine.js';
import type { Change } from '../../src/diff/index.js';
import { KdfKeySource, type KeySource } from '../../src/keys/kdf.js';
import { formatIPv4, parseCidr } from '../../src/net/addr.js';
import type { ObservedNode } from '../../src/readback/observed.js';
import type { Templates } from '../../src/render/render.js';
import { Sessions } from '../../src/remote/fleet.js';
import type { ExecResult } from '../../src/remote/transport.js';
import type { SaRecord, State } from '../../src/state/model.js';
import { loadTemplates } from '../../src/store/files.js';
import { containsKey, emptyObserved, FakeTransport, heldNet, heldObserved, heldPlan, plannedKeysHex, recordingProgress, type ExecRecord, type FakeResponder } from '../helpers/apply.js';
import { ZERO_KEYS, poolsOf, UML_NODES } from '../helpers/readback.js';

/** nonces for the epochs planAgainst/rekeySa allocate (reproducible in tests) */
const NONCES = rngFactory('test-nonces');

let templates: Templates;
beforeAll(async () => {
  templates = await loadTemplates();
});

const net = heldNet();
const plan0 = heldPlan();
const ifaces = interfaceAddresses(net);
const pools = poolsOf(net);
const NOW = '2024-01-02T03:04:05Z';

type Obs = Record<string, ObservedNode>;
const recorded = (): Obs => Object.fromEntries(UML_NODES.map((n) => [n, heldObserved(n)]));
const readsOf = (obs: Obs): Map<string, NodeRead> => new Map(Object.entries(obs).map(([node, observed]) => [node, { node, observed }]));

/** every SA record of a state, by its current SPI */
function records(s: State): SaRecord[] {
  return [...Object.values(s.links).flatMap((l) => [l.ab, l.ba]), ...Object.values(s.circuits).flatMap((c) => [...c.fwd, ...c.rev])];
}
function withInstalled(s: State, f: (r: SaRecord) => string[]): State {
  const c = structuredClone(s);
  for (const r of records(c)) r.installed = f(r);
  return c;
}

/** which nodes hold each SA id in a plan's configs */
function holders(configs: LivePlan['configs']): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (const [node, cfg] of configs) for (const st of cfg.states) m.set(st.key.id, [...(m.get(st.key.id) ?? []), node].sort());
  return m;
}

/** the state after a first apply of the whole plan to empty routers (markInstalled on its changes) */
function installedEverywhere(): State {
  const fresh = planAgainst(net, plan0.state, readsOf(Object.fromEntries(UML_NODES.map((n) => [n, emptyObserved(n, pools)]))), ZERO_KEYS, NONCES);
  expect(fresh.rekeys).toEqual([]);
  return markInstalled(fresh.state, fresh.nodes, NOW);
}

const stateChanges = (n: NodePlan) => n.changes.filter((c): c is Extract<Change, { kind: 'state' }> => c.kind === 'state');
const addedSpis = (n: NodePlan) => stateChanges(n).flatMap((c) => (c.op === 'add' ? [c.desired.spi] : []));
const removedSpis = (n: NodePlan) => stateChanges(n).flatMap((c) => (c.op === 'remove' ? [c.observed.spi] : []));
const nodePlan = (p: LivePlan, node: string) => p.nodes.find((n) => n.node === node)!;

describe('planAgainst', () => {
  test('routers that hold the plan: no changes, no rekeys, the state as it was', () => {
    const p = planAgainst(net, plan0.state, readsOf(recorded()), ZERO_KEYS, NONCES);
    expect(p.rekeys).toEqual([]);
    expect(p.nodes.map((n) => ({ node: n.node, changes: n.changes, conflicts: n.conflicts, error: n.error }))).toEqual(UML_NODES.map((node) => ({ node, changes: [], conflicts: [], error: undefined })));
    expect(p.nodes.every((n) => /^[0-9a-f]{16}$/.test(n.digest ?? ''))).toBe(true);
    expect(p.state).toEqual(plan0.state);
  });

  test('a node that could not be read is reported and planned for no change', () => {
    const reads = readsOf(recorded());
    reads.set('or2', { node: 'or2', error: 'connect ETIMEDOUT' });
    const p = planAgainst(net, plan0.state, reads, ZERO_KEYS, NONCES);
    expect(nodePlan(p, 'or2')).toEqual({ node: 'or2', error: 'connect ETIMEDOUT', changes: [], conflicts: [] });
    expect(p.rekeys).toEqual([]);
  });

  test('markInstalled records both ends of every added SA, with the time, and nothing for removals', () => {
    const s = installedEverywhere();
    const h = holders(plan0.configs);
    const byId = new Map([...plan0.configs.values()].flatMap((c) => c.states.map((st) => [st.spi, st.key.id] as const)));
    const recs = records(s);
    expect(recs).toHaveLength(h.size);
    for (const r of recs) {
      expect({ spi: r.spi, installed: r.installed, since: r.since }).toEqual({ spi: r.spi, installed: h.get(byId.get(r.spi)!), since: NOW });
    }
    // the input is not modified; marking again changes nothing
    expect(records(plan0.state).every((r) => !r.installed || r.installed.length === 0)).toBe(true);
    const again = planAgainst(net, plan0.state, readsOf(Object.fromEntries(UML_NODES.map((n) => [n, emptyObserved(n, pools)]))), ZERO_KEYS, NONCES);
    expect(markInstalled(s, again.nodes, '2030-01-01T00:00:00Z')).toEqual(s);
  });

  test('or2 rebooted, its keys installed there before: every SA with an end at or2 is rekeyed on both ends, nothing else moves', () => {
    const s1 = installedEverywhere();
    const obs = recorded();
    obs.or2 = emptyObserved('or2', pools);
    const p = planAgainst(net, s1, readsOf(obs), ZERO_KEYS, NONCES);

    const atOr2 = new Set(plan0.configs.get('or2')!.states.map((s) => s.key.id));
    expect(atOr2.size).toBe(6);
    expect(p.rekeys.map((r) => r.sa).sort()).toEqual([...atOr2].sort());
    const oldById = new Map(plan0.configs.get('or2')!.states.map((s) => [s.key.id, s]));
    const h = holders(p.configs);
    const newSpis = new Set<number>();
    for (const r of p.rekeys) {
      const old = oldById.get(r.sa)!;
      expect(r.oldSpi).toBe(old.spi);
      expect(r.newSpi).toBeGreaterThan(r.oldSpi);
      expect(r.newSpi).toBeGreaterThanOrEqual(s1.next.spi);
      expect(r.reason).toMatch(/or2 lost it/);
      expect(describeRekey(r)).toContain(`rekey ${r.sa}: spi 0x${r.oldSpi.toString(16)} -> 0x${r.newSpi.toString(16)}`);
      newSpis.add(r.newSpi);
      const now = [...p.configs.values()].flatMap((c) => c.states).find((s) => s.key.id === r.sa)!;
      expect(now.spi).toBe(r.newSpi);
      expect(now.key).toEqual({ id: r.sa, epoch: old.key.epoch + 1, spi: r.newSpi, nonce: expect.stringMatching(/^[0-9a-f]{32}$/) });
      expect(now.key.nonce).not.toBe(old.key.nonce);
      // the new epoch has been installed nowhere yet
      const rec = records(p.state).find((x) => x.spi === r.newSpi)!;
      expect(rec.epoch).toBe(old.key.epoch + 1);
      expect(rec.installed ?? []).toEqual([]);
      // both ends get the new SPI; the end that kept the old one removes it
      const ends = h.get(r.sa)!;
      expect(ends).toContain('or2');
      expect(ends).toHaveLength(2);
      for (const e of ends) {
        const np = nodePlan(p, e);
        expect({ e, added: addedSpis(np).includes(r.newSpi) }).toEqual({ e, added: true });
        expect({ e, removed: removedSpis(np).includes(r.oldSpi) }).toEqual({ e, removed: e !== 'or2' });
      }
    }
    expect(newSpis.size).toBe(6);

    // SAs with no end at or2 keep SPI, epoch and where they were installed
    const kept = records(s1).filter((r) => !p.rekeys.some((k) => k.oldSpi === r.spi));
    expect(kept.length).toBe(records(s1).length - 6);
    for (const r of kept) expect(records(p.state)).toContainEqual(r);

    // the other nodes change nothing but the rekeyed SAs they hold: one add and one remove each
    for (const n of ['alice', 'or1', 'or3']) {
      const np = nodePlan(p, n);
      const mine = p.rekeys.filter((r) => h.get(r.sa)!.includes(n));
      expect({ n, kinds: [...new Set(np.changes.map((c) => c.kind))] }).toEqual({ n, kinds: mine.length > 0 ? ['state'] : [] });
      expect(addedSpis(np).sort()).toEqual(mine.map((r) => r.newSpi).sort());
      expect(removedSpis(np).sort()).toEqual(mine.map((r) => r.oldSpi).sort());
    }
    // or2 gets its whole configuration back, with the new SPIs only
    const o2 = nodePlan(p, 'or2');
    expect(o2.changes.every((c) => c.op === 'add')).toBe(true);
    expect(addedSpis(o2).sort()).toEqual([...newSpis].sort());
    const cfg2 = p.configs.get('or2')!;
    expect(o2.changes.filter((c) => c.kind === 'policy')).toHaveLength(cfg2.policies.length);
    expect(o2.changes.filter((c) => c.kind === 'route')).toHaveLength(cfg2.routes.length);

    // once pushed (marked), planning against routers that hold the new SAs would rekey nothing more
    const s2 = markInstalled(p.state, p.nodes, NOW);
    for (const r of p.rekeys) expect(records(s2).find((x) => x.spi === r.newSpi)!.installed).toEqual(h.get(r.sa));
  });

  test('the same reboot when the state records the keys were installed elsewhere only: plain adds, no rekey', () => {
    const s = withInstalled(plan0.state, () => []);
    const obs = recorded();
    obs.or2 = emptyObserved('or2', pools);
    const p = planAgainst(net, s, readsOf(obs), ZERO_KEYS, NONCES);
    expect(p.rekeys).toEqual([]);
    expect(p.state).toEqual(s);
    expect(addedSpis(nodePlan(p, 'or2')).sort()).toEqual(plan0.configs.get('or2')!.states.map((x) => x.spi).sort());
    expect(removedSpis(nodePlan(p, 'or2'))).toEqual([]);
    for (const n of ['alice', 'or1', 'or3']) expect({ n, changes: nodePlan(p, n).changes }).toEqual({ n, changes: [] });
  });

  test('a state that does not record where keys went (older onionctl): an SA to be installed is rekeyed, never trusted', () => {
    const s = withInstalled(plan0.state, () => []);
    const old = structuredClone(s);
    for (const r of records(old)) delete r.installed;
    const obs = recorded();
    obs.or2 = emptyObserved('or2', pools);
    const p = planAgainst(net, old, readsOf(obs), ZERO_KEYS, NONCES);
    expect(p.rekeys.map((r) => r.sa).sort()).toEqual(plan0.configs.get('or2')!.states.map((x) => x.key.id).sort());
    expect(p.rekeys.every((r) => /does not record/.test(r.reason))).toBe(true);
    // routers that hold everything need nothing, whatever the state records
    const q = planAgainst(net, old, readsOf(recorded()), ZERO_KEYS, NONCES);
    expect(q.rekeys).toEqual([]);
    expect(q.nodes.every((n) => n.changes.length === 0)).toBe(true);
  });

  test('an SA held with another replay window on one end is rekeyed on both ends', () => {
    const s = withInstalled(plan0.state, () => []);
    const obs = recorded();
    obs.or2 = structuredClone(obs.or2!);
    const victim = obs.or2.states!.owned[0]!;
    victim.replayWindow = 64;
    const id = plan0.configs.get('or2')!.states.find((x) => x.spi === victim.spi)!.key.id;
    const p = planAgainst(net, s, readsOf(obs), ZERO_KEYS, NONCES);
    expect(p.rekeys).toEqual([expect.objectContaining({ sa: id, oldSpi: victim.spi, reason: expect.stringMatching(/or2 holds it with other attributes \(replay-window\)/) })]);
    const [r] = p.rekeys;
    for (const e of holders(p.configs).get(id)!) {
      const np = nodePlan(p, e);
      expect(addedSpis(np)).toEqual([r!.newSpi]);
      expect(removedSpis(np)).toEqual([victim.spi]);
      expect(np.changes).toHaveLength(2);
    }
    expect(p.nodes.filter((n) => n.changes.length > 0).map((n) => n.node).sort()).toEqual(holders(p.configs).get(id));
  });

  test('an SA whose key on the routers is not the planned one is rekeyed (a replace never reuses the SPI)', () => {
    const s = withInstalled(plan0.state, () => []);
    const id = plan0.configs.get('or1')!.states[0]!.key.id;
    // the planned key of that SA (epoch 1) is not the zeros the routers hold
    const keys: KeySource = { key: (sa, n) => Buffer.alloc(n, sa.id === id && sa.epoch === 1 ? 0x11 : 0) };
    const p = planAgainst(net, s, readsOf(recorded()), keys, NONCES);
    expect(p.rekeys).toEqual([expect.objectContaining({ sa: id, reason: expect.stringMatching(/other attributes \(key\)/) })]);
    const changed = p.nodes.filter((n) => n.changes.length > 0);
    expect(changed.map((n) => n.node).sort()).toEqual(holders(p.configs).get(id));
    for (const n of changed) expect(n.changes.map((c) => `${c.op} ${c.kind}`).sort()).toEqual(['add state', 'remove state']);
  });
});

describe('observedDigest', () => {
  test('ignores counters, sequence numbers and kernel indexes', () => {
    for (const n of UML_NODES) {
      const o = heldObserved(n);
      const d = observedDigest(o);
      expect(observedDigest(heldObserved(n))).toBe(d);
      const busy = structuredClone(o);
      for (const s of busy.states!.owned) {
        s.seq = (s.seq ?? 0) + 1000;
        s.oseq = (s.oseq ?? 0) + 1000;
        if (s.counters) s.counters = { ...s.counters, bytes: s.counters.bytes + 123456, packets: s.counters.packets + 99, used: '2030-01-01 00:00:00' };
      }
      for (const p of busy.policies!.owned) p.index = (p.index ?? 0) + 8;
      expect({ n, d: observedDigest(busy) }).toEqual({ n, d });
    }
  });

  test('changes when an owned object changes, not when a foreign one does', () => {
    const o = heldObserved('or1');
    const d = observedDigest(o);
    const mutate = (f: (x: ObservedNode) => void) => {
      const c = structuredClone(o);
      f(c);
      return observedDigest(c);
    };
    expect(mutate((c) => (c.policies!.owned[0]!.priority += 1))).not.toBe(d);
    expect(mutate((c) => (c.states!.owned[0]!.keyFingerprint = 'ffffffffffff'))).not.toBe(d);
    expect(mutate((c) => c.states!.owned.pop())).not.toBe(d);
    expect(mutate((c) => (c.routes!.owned[0]!.mtu = 1300))).not.toBe(d);
    expect(mutate((c) => c.addresses!.owned.push({ addr: net.routers.get('or1')!.pool.base + 9, len: 32, dev: 'lo' }))).not.toBe(d);
    expect(mutate((c) => c.iptables!.owned.chains[0]!.hooks.push('FORWARD'))).not.toBe(d);
    expect(mutate((c) => (c.sysctls = { 'net.ipv4.ip_forward': '0' }))).not.toBe(d);
    // foreign objects are not onionctl's business
    expect(mutate((c) => c.states!.foreign.pop())).toBe(d);
    expect(mutate((c) => c.routes!.foreign.pop())).toBe(d);
    expect(o.states!.foreign.length).toBeGreaterThan(0);
    expect(mutate((c) => c.iptables!.foreignRules.pop())).toBe(d);
    // a different policy selector, too
    expect(mutate((c) => (c.policies!.owned[0]!.src = parseCidr('100.64.1.77/32')))).not.toBe(d);
  });
});

// ------------------------------------------------------------------------------------------

describe('pushChanges over fake transports', () => {
  const pushKeys = new KdfKeySource(Buffer.alloc(32, 0x3c), plan0.state.salt);

  /** the reboot of or2: new SAs everywhere (receive, install), configure on or2, the old SPIs retired and drained on its neighbours */
  function rebootPlan(): LivePlan {
    const obs = recorded();
    obs.or2 = emptyObserved('or2', pools);
    return planAgainst(net, installedEverywhere(), readsOf(obs), ZERO_KEYS, NONCES);
  }

  interface Run {
    log: ExecRecord[];
    /** every exec the engine made (one SSH channel each); a stage script's commands are in log */
    channels: ExecRecord[];
    connects: string[];
    results: Awaited<ReturnType<typeof pushChanges>>;
    progress: ReturnType<typeof recordingProgress>;
    expected: Map<string, { stage: Stage; argv: string[]; stdin: string }[]>;
  }

  async function run(
    live: LivePlan,
    o: { respond?: FakeResponder; parallel?: number; signal?: AbortSignal; onExec?: (r: ExecRecord, log: ExecRecord[], channels: ExecRecord[]) => void; failConnect?: string; nodes?: NodePlan[]; noBuiltinPrintf?: boolean } = {},
  ): Promise<Run> {
    const log: ExecRecord[] = [];
    const channels: ExecRecord[] = [];
    const connects: string[] = [];
    const sessions = new Sessions(async (node) => {
      connects.push(node);
      if (node === o.failConnect) throw new Error(`${node}: connect ECONNREFUSED`);
      // a router whose sh has no builtin printf: every stage script stops before running anything
      const respond: FakeResponder | undefined = o.noBuiltinPrintf
        ? (n, argv, stdin) => (argv.join(' ') === 'sh -s' ? { exitCode: NO_BUILTIN_PRINTF_EXIT, stdout: '', stderr: `${NO_BUILTIN_PRINTF}\n` } : o.respond?.(n, argv, stdin))
        : o.respond;
      return new FakeTransport(node, log, respond, (r) => o.onExec?.(r, log, channels), channels, { scripts: !o.noBuiltinPrintf });
    });
    const progress = recordingProgress();
    const nodes = o.nodes ?? live.nodes;
    const reads = readsOf(Object.fromEntries(nodes.map((n) => [n.node, emptyObserved(n.node, pools)])));
    const input: PushInput = { configs: live.configs, nodes, reads, keys: pushKeys, templates, version: 'test', sessions, parallel: o.parallel ?? 10, progress, ifaceAddrs: ifaces, ...(o.signal ? { signal: o.signal } : {}) };
    const results = await pushChanges(input);
    await sessions.closeAll();
    const stepsOf = (n: NodePlan) => {
      const cfg = live.configs.get(n.node)!;
      const ctx = { keys: pushKeys, templates, version: 'test', own: ownAddresses(cfg, ifaces.get(n.node) ?? []) };
      return STAGES.flatMap((stage) => stageSteps(stage, cfg, n.changes, ctx).map((x) => ({ stage, argv: x.argv, stdin: x.stdin })));
    };
    const expected = new Map(nodes.map((n) => [n.node, n.error ? [] : stepsOf(n)]));
    return { log, channels, connects, results, progress, expected };
  }

  /** the stage of each exec, from its position in its node's expected sequence */
  const stagesInOrder = (r: Run): Stage[] => {
    const seen = new Map<string, number>();
    return r.log.map((e) => {
      const i = seen.get(e.node) ?? 0;
      seen.set(e.node, i + 1);
      return r.expected.get(e.node)![i]!.stage;
    });
  };
  /** the wave each exec ran in: the stages in order, configure split into routers then clients */
  const WAVES = ['receive', 'install', 'configure router', 'configure client', 'retire', 'drain'];
  const wavesInOrder = (r: Run): number[] =>
    stagesInOrder(r).map((st, i) => WAVES.indexOf(st === 'configure' ? `configure ${net.clients.has(r.log[i]!.node) ? 'client' : 'router'}` : st));
  const perNode = (r: Run, node: string) => r.log.filter((e) => e.node === node).map(({ argv, stdin }) => ({ argv, stdin }));
  const want = (r: Run, node: string, n?: number) => r.expected.get(node)!.slice(0, n).map(({ argv, stdin }) => ({ argv, stdin }));

  test.each([10, 1])('every node runs its steps, each stage everywhere before the next, configure on routers before clients (parallel %i)', async (parallel) => {
    const live = rebootPlan();
    const r = await run(live, { parallel });
    for (const n of UML_NODES) expect({ n, steps: perNode(r, n) }).toEqual({ n, steps: want(r, n) });
    // the scenario has work in every stage but configure on the client
    expect(new Set(stagesInOrder(r))).toEqual(new Set(STAGES));
    const order = wavesInOrder(r);
    expect(order).toEqual([...order].sort((a, b) => a - b));
    // or2 configures (firewall, policies, routes); its neighbours retire and drain the old SPIs
    expect(r.expected.get('or2')!.map((e) => e.stage)).toContain('configure');
    for (const n of ['alice', 'or1', 'or3']) expect(new Set(r.expected.get(n)!.map((e) => e.stage))).toEqual(new Set(['receive', 'install', 'retire', 'drain']));
    expect(r.results.map((x) => ({ node: x.node, ok: x.ok, stages: x.stages, error: x.error }))).toEqual(UML_NODES.map((node) => ({ node, ok: true, stages: [...STAGES], error: undefined })));
    const or2 = r.results.find((x) => x.node === 'or2')!;
    expect(or2.counts.add).toBe(nodePlan(live, 'or2').changes.length);
    // one connection per node for all the stages
    expect(r.connects.sort()).toEqual([...UML_NODES].sort());
    expect(r.progress.events.filter((e) => e.kind === 'done').map((e) => e.node).sort()).toEqual([...UML_NODES].sort());
    expect(r.progress.events.filter((e) => e.kind === 'fail')).toEqual([]);
  });

  test('one SSH channel per node and stage: a stage of several commands runs them as one stage script', async () => {
    const live = rebootPlan();
    const r = await run(live);
    // or2's configure stage has several commands (firewall, policies and routes, sysctls)
    const configure = r.expected.get('or2')!.filter((e) => e.stage === 'configure');
    expect(configure.length).toBeGreaterThan(1);
    const perStage = new Map<string, number>();
    for (const n of UML_NODES) {
      const stages = new Set(r.expected.get(n)!.map((e) => e.stage));
      const mine = r.channels.filter((c) => c.node === n);
      expect({ n, channels: mine.length }).toEqual({ n, channels: stages.size });
      for (const st of stages) perStage.set(`${n} ${st}`, r.expected.get(n)!.filter((e) => e.stage === st).length);
    }
    const script = r.channels.find((c) => c.node === 'or2' && c.argv.join(' ') === 'sh -s' && parseStageScript(c.stdin)?.some((x) => x.argv[0] === 'iptables-restore'))!;
    expect(parseStageScript(script.stdin)!.map((x) => x.argv)).toEqual(configure.map((e) => e.argv));
    expect(parseStageScript(script.stdin)!.map((x) => x.stdin)).toEqual(configure.map((e) => e.stdin));
  });

  test('a stage script whose iptables-restore finds no nf_tables goes on with iptables-legacy-restore, then the commands after it, one channel each', async () => {
    const live = rebootPlan();
    const noNft: ExecResult = { exitCode: 1, stdout: '', stderr: 'iptables-restore v1.8.9 (nf_tables): TABLE_ADD failed (Operation not supported): table filter\n' };
    const r = await run(live, { respond: (node, argv) => (node === 'or2' && argv[0] === 'iptables-restore' ? noNft : undefined) });
    expect(r.results.find((x) => x.node === 'or2')).toMatchObject({ ok: true, stages: [...STAGES] });
    const or2 = r.log.filter((e) => e.node === 'or2').map((e) => e.argv[0]);
    const k = or2.indexOf('iptables-restore');
    expect(or2[k + 1]).toBe('iptables-legacy-restore');
    const configure = r.expected.get('or2')!.filter((e) => e.stage === 'configure').map((e) => e.argv[0]);
    // after the legacy restore, the configure commands that follow iptables-restore, on their own channels
    const after = configure.slice(configure.indexOf('iptables-restore') + 1);
    expect(or2.slice(k + 2, k + 2 + after.length)).toEqual(after);
    const ch = r.channels.filter((c) => c.node === 'or2').map((c) => c.argv[0]);
    expect(ch.slice(ch.indexOf('iptables-legacy-restore'), ch.indexOf('iptables-legacy-restore') + 1 + after.length)).toEqual(['iptables-legacy-restore', ...after]);
  });

  test("a failing command inside a stage script is named, with the router's message and not the script's own line", async () => {
    const live = rebootPlan();
    const fail: ExecResult = { exitCode: 2, stdout: '', stderr: 'RTNETLINK answers: No such device\nCommand failed -:3\n' };
    // the ip -batch after the firewall in or2's configure script
    let sawFirewall = false;
    const r = await run(live, {
      respond: (node, argv) => {
        if (node !== 'or2') return undefined;
        if (argv[0] === 'iptables-restore') sawFirewall = true;
        else if (sawFirewall && argv[0] === 'ip') return fail;
        return undefined;
      },
    });
    const res = r.results.find((x) => x.node === 'or2')!;
    expect(res.ok).toBe(false);
    expect(res.error).toMatch(/configure: ip -batch failed \(exit 2\): RTNETLINK answers: No such device; Command failed -:3$/);
    expect(res.stages).toEqual(['receive', 'install']);
    expect(res.error).not.toContain('onionctl: step');
  });

  test('where sh has no builtin printf, the stage script runs nothing and the commands go one channel each', async () => {
    const live = rebootPlan();
    const r = await run(live, { noBuiltinPrintf: true });
    expect(r.results.every((x) => x.ok)).toBe(true);
    for (const n of UML_NODES) expect({ n, steps: perNode(r, n).filter((e) => e.argv.join(' ') !== 'sh -s') }).toEqual({ n, steps: want(r, n) });
    expect(r.progress.events).toContainEqual({ kind: 'step', node: 'or2', text: expect.stringMatching(/no builtin printf/) });
  });

  test('make-before-break after a reboot: a rekeyed SA reaches its receiver before its sender; the old SPI goes only once both have the new one', async () => {
    const live = rebootPlan();
    const r = await run(live);
    const at = (node: string, pred: (line: string) => boolean) => r.log.findIndex((e) => e.node === node && e.stdin.split('\n').some(pred));
    expect(live.rekeys.length).toBeGreaterThan(0);
    for (const k of live.rekeys) {
      const st = [...live.configs.values()].flatMap((c) => c.states).find((x) => x.key.id === k.sa)!;
      const ends = [...live.configs].filter(([, c]) => c.states.some((x) => x.spi === st.spi)).map(([n]) => n);
      const receiver = ends.find((n) => ownAddresses(live.configs.get(n)!, ifaces.get(n)!)(st.dst))!;
      const sender = ends.find((n) => n !== receiver)!;
      const added = (n: string) => at(n, (l) => l.startsWith('xfrm state add ') && l.includes(` spi 0x${k.newSpi.toString(16).padStart(8, '0')} `));
      const removed = (n: string) => at(n, (l) => l === `xfrm state delete src ${formatIPv4(st.src)} dst ${formatIPv4(st.dst)} proto esp spi 0x${k.oldSpi.toString(16).padStart(8, '0')}`);
      expect({ sa: k.sa, receiverFirst: added(receiver) >= 0 && added(receiver) < added(sender) }).toEqual({ sa: k.sa, receiverFirst: true });
      // or2 (rebooted) holds no old SA; its peer removes its copy, after the new one is in place everywhere
      const peer = receiver === 'or2' ? sender : receiver;
      expect({ sa: k.sa, removedAfterBoth: removed(peer) > Math.max(added(receiver), added(sender)) }).toEqual({ sa: k.sa, removedAfterBoth: true });
      expect(removed('or2')).toBe(-1);
    }
  });

  test('make-before-break when both ends hold the old SA: the new one in receiver-then-sender order, the old one out of the sender before the receiver', async () => {
    const s = withInstalled(plan0.state, () => []);
    const obs = recorded();
    obs.or2 = structuredClone(obs.or2!);
    const own2 = ownAddresses(plan0.configs.get('or2')!, ifaces.get('or2')!);
    // an SA that or2 sends: or2 is the sender, its neighbour the receiver
    const victim = obs.or2.states!.owned.find((x) => !own2(x.dst))!;
    victim.replayWindow = 7;
    const live = planAgainst(net, s, readsOf(obs), ZERO_KEYS, NONCES);
    expect(live.rekeys).toHaveLength(1);
    const k = live.rekeys[0]!;
    const receiver = [...live.configs].find(([n, c]) => n !== 'or2' && c.states.some((x) => x.spi === k.newSpi))![0];
    const r = await run(live);
    const hex = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;
    const at = (node: string, re: RegExp) => r.log.findIndex((e) => e.node === node && re.test(e.stdin));
    const add = (n: string) => at(n, new RegExp(`^xfrm state add .* spi ${hex(k.newSpi)} `, 'm'));
    const del = (n: string) => at(n, new RegExp(`^xfrm state delete .* spi ${hex(k.oldSpi)}$`, 'm'));
    expect([add(receiver), add('or2'), del('or2'), del(receiver)].every((x) => x >= 0)).toBe(true);
    expect(add(receiver)).toBeLessThan(add('or2'));
    expect(add('or2')).toBeLessThan(del('or2'));
    expect(del('or2')).toBeLessThan(del(receiver));
    expect(stagesInOrder(r)[del(receiver)]).toBe('drain');
    expect(stagesInOrder(r)[del('or2')]).toBe('retire');
    expect(r.results.every((x) => x.ok)).toBe(true);
  });

  describe('a node that fails keeps the SAs it shares working: its peers neither switch to a new SPI it lacks nor drop the old one it uses', () => {
    /** a plan whose only change is a rekey of one SA between or2 and a neighbour, or2 being its `role` */
    function oneRekey(role: 'receiver' | 'sender') {
      const s = withInstalled(plan0.state, () => []);
      const obs = recorded();
      obs.or2 = structuredClone(obs.or2!);
      const own2 = ownAddresses(plan0.configs.get('or2')!, ifaces.get('or2')!);
      const victim = obs.or2.states!.owned.find((x) => own2(x.dst) === (role === 'receiver'))!;
      victim.replayWindow = 7;
      const live = planAgainst(net, s, readsOf(obs), ZERO_KEYS, NONCES);
      expect(live.rekeys).toHaveLength(1);
      const k = live.rekeys[0]!;
      const peer = [...live.configs].find(([n, c]) => n !== 'or2' && c.states.some((x) => x.spi === k.newSpi))![0];
      const hex = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;
      const touched = (r: Run, node: string, spi: number) => r.log.filter((e) => e.node === node && new RegExp(`^xfrm state (add|delete) .*spi ${hex(spi)}( |$)`, 'm').test(e.stdin));
      return { live, k, peer, touched };
    }
    const failSas: FakeResponder = (node, argv, stdin) => (node === 'or2' && stdin.includes('xfrm state add') ? { exitCode: 2, stdout: '', stderr: 'RTNETLINK answers: No buffer space available\n' } : undefined);

    test('the receiver fails to take the new SA: the sender neither installs it nor removes the old one', async () => {
      const { live, k, peer, touched } = oneRekey('receiver');
      const r = await run(live, { respond: failSas });
      expect(r.results.find((x) => x.node === 'or2')).toMatchObject({ ok: false, stages: [] });
      expect(touched(r, peer, k.newSpi)).toEqual([]);
      expect(touched(r, peer, k.oldSpi)).toEqual([]);
      expect(r.results.find((x) => x.node === peer)!.error).toBeUndefined();
    });

    test('the sender fails to take the new SA: the receiver does not drain the old one the sender still uses', async () => {
      const { live, k, peer, touched } = oneRekey('sender');
      const r = await run(live, { respond: failSas });
      expect(r.results.find((x) => x.node === 'or2')).toMatchObject({ ok: false });
      expect(touched(r, peer, k.oldSpi)).toEqual([]);
    });
  });

  test('a node whose step fails stops there; the others complete every stage; the result says where and why', async () => {
    const live = rebootPlan();
    const fail: ExecResult = { exitCode: 1, stdout: '', stderr: 'iptables-restore v1.8.9 (legacy): line 5 failed\n' };
    const r = await run(live, { respond: (node, argv) => (node === 'or2' && argv[0] === 'iptables-restore' ? fail : undefined) });
    // or2: its receive and install steps, then the failing firewall step, then nothing
    const or2 = perNode(r, 'or2');
    const k = r.expected.get('or2')!.findIndex((e) => e.argv[0] === 'iptables-restore');
    expect(r.expected.get('or2')![k]!.stage).toBe('configure');
    expect(k).toBeLessThan(r.expected.get('or2')!.length - 1);
    expect(or2).toEqual(want(r, 'or2', k + 1));
    // the others do all their work, but keep the old SAs they share with or2 for the next run
    const or2Addr = formatIPv4(net.routers.get('or2')!.underlay.addr);
    const sharedDelete = (x: { stdin: string }) => x.stdin.split('\n').filter(Boolean).every((l) => l.startsWith('xfrm state delete ') && l.includes(` ${or2Addr} `));
    for (const n of ['alice', 'or1', 'or3']) {
      expect(want(r, n).filter(sharedDelete).length).toBeGreaterThan(0);
      expect({ n, steps: perNode(r, n) }).toEqual({ n, steps: want(r, n).filter((x) => !sharedDelete(x)) });
      expect(r.progress.events).toContainEqual({ kind: 'step', node: n, text: expect.stringMatching(/left for the next run/) });
    }
    const res = new Map(r.results.map((x) => [x.node, x]));
    expect(res.get('or2')).toMatchObject({ ok: false, stages: ['receive', 'install'] });
    expect(res.get('or2')!.error).toMatch(/configure: iptables-restore failed \(exit 1\): iptables-restore v1\.8\.9 \(legacy\): line 5 failed/);
    expect(res.get('or2')!.error).toContain('or2 (fake)');
    for (const n of ['alice', 'or1', 'or3']) expect(res.get(n)).toMatchObject({ ok: true, stages: [...STAGES] });
    expect(r.progress.events.filter((e) => e.kind === 'fail').map((e) => e.node)).toEqual(['or2']);
    expect(r.progress.events.filter((e) => e.kind === 'done').map((e) => e.node).sort()).toEqual(['alice', 'or1', 'or3']);
  });

  test('a failing SA install reports the router\'s message and never the input that holds the keys', async () => {
    const live = rebootPlan();
    const keysHex = plannedKeysHex(live.configs.values(), pushKeys);
    const r = await run(live, { respond: (node, argv, stdin) => (node === 'or1' && argv[0] === 'ip' && stdin.includes('xfrm state add') ? { exitCode: 2, stdout: '', stderr: 'RTNETLINK answers: File exists\nCommand failed -:1\n' } : undefined) });
    const res = r.results.find((x) => x.node === 'or1')!;
    expect(res).toMatchObject({ ok: false, stages: [] });
    expect(res.error).toMatch(/receive: ip -batch failed \(exit 2\): RTNETLINK answers: File exists; Command failed -:1/);
    // the keys did go to the routers, on stdin only
    expect(r.log.some((e) => containsKey(e.stdin, keysHex))).toBe(true);
    const visible = JSON.stringify(r.results) + JSON.stringify(r.progress.events) + r.log.map((e) => e.argv.join(' ')).join('\n');
    expect(containsKey(visible, keysHex)).toBeUndefined();
    // or1 stopped at its first step; the others went on
    expect(perNode(r, 'or1')).toHaveLength(1);
    for (const n of ['alice', 'or2', 'or3']) expect(r.results.find((x) => x.node === n)).toMatchObject({ ok: true, stages: [...STAGES] });
  });

  test('an unreachable node fails alone; a node that could not be read, or has nothing to do, is not contacted', async () => {
    const live = rebootPlan();
    const nodes: NodePlan[] = [...live.nodes, { node: 'ghost', error: 'reading the router back failed', changes: [], conflicts: [] }];
    // alice has nothing to do in this variant
    const quiet = nodes.map((n) => (n.node === 'alice' ? { ...n, changes: [] } : n));
    const r = await run(live, { nodes: quiet, failConnect: 'or3' });
    const res = new Map(r.results.map((x) => [x.node, x]));
    expect(res.get('or3')).toMatchObject({ ok: false, stages: [] });
    expect(res.get('or3')!.error).toMatch(/ECONNREFUSED/);
    expect(res.get('ghost')).toMatchObject({ ok: false, stages: [], error: 'reading the router back failed' });
    expect(res.get('alice')).toMatchObject({ ok: true, stages: [] });
    for (const n of ['or1', 'or2']) expect(res.get(n)).toMatchObject({ ok: true, stages: [...STAGES] });
    expect(r.connects).not.toContain('alice');
    expect(r.connects).not.toContain('ghost');
    expect(r.log.filter((e) => ['alice', 'ghost', 'or3'].includes(e.node))).toEqual([]);
  });

  test('an already aborted signal starts nothing', async () => {
    const ac = new AbortController();
    ac.abort();
    const r = await run(rebootPlan(), { signal: ac.signal });
    expect(r.log).toEqual([]);
    for (const x of r.results) {
      expect(x.ok).toBe(false);
      expect(x.stages).toEqual([]);
      expect(x.error).toMatch(/interrupted/);
    }
  });

  test('an abort during a run lets running steps finish and starts no new one', async () => {
    const ac = new AbortController();
    let at = -1;
    let chAt = -1;
    const r = await run(rebootPlan(), {
      signal: ac.signal,
      onExec: (e, log, channels) => {
        if (at < 0 && e.node === 'or2' && e.argv[0] === 'iptables-restore') {
          at = log.length;
          chAt = channels.length;
          ac.abort();
        }
      },
    });
    expect(at).toBeGreaterThan(0);
    // no channel opened after the abort; the stage script that was running ran to its end
    expect(r.channels).toHaveLength(chAt);
    const running = r.channels[chAt - 1]!;
    expect(running).toMatchObject({ node: 'or2', argv: ['sh', '-s'] });
    expect(stagesInOrder(r)).not.toContain('retire');
    expect(stagesInOrder(r)).not.toContain('drain');
    for (const x of r.results) {
      expect({ node: x.node, ok: x.ok }).toEqual({ node: x.node, ok: false });
      expect(x.error).toMatch(/interrupted/);
      expect(x.stages).not.toContain('retire');
    }
    // or2's configure stage was one script, already running: it finished that stage, and no more
    expect(r.results.find((x) => x.node === 'or2')!.stages).toEqual(['receive', 'install', 'configure']);
  });

  test('the empty plan pushes nothing', async () => {
    const p = planAgainst(net, plan0.state, readsOf(recorded()), ZERO_KEYS, NONCES);
    const r = await run(p);
    expect(r.log).toEqual([]);
    expect(r.connects).toEqual([]);
    expect(r.results.every((x) => x.ok && x.stages.length === 0)).toBe(true);
  });
});

