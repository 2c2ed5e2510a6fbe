/**
 * diffNode / orderChanges / summaries (src/diff/) on the recorded fixtures: a router that holds
 * exactly the plan gives no changes; keys that differ give a replace that needs a new epoch;
 * foreign objects never appear; a removed circuit gives removes; the order is safe.
 */
import { describe, expect, test } from '@jest/globals';
import { KdfKeySource } from '../../src/keys/kdf.js';
import { formatIPv4 } from '../../src/net/addr.js';
import { rngFactory } from '../../src/pathselect/rng.js';
import { computePlan } from '../../src/plan/plan.js';
import type { NodeConfig } from '../../src/model/config.js';
import { observeNode, type ObservedNode } from '../../src/readback/observed.js';
import { emptyState } from '../../src/state/model.js';
import {
  changesByPhase,
  changesJson,
  countChanges,
  describeChange,
  diffNode,
  findConflicts,
  formatChanges,
  orderChanges,
  rekeyNeeded,
  type Change,
} from '../../src/diff/index.js';
import { SA_PLAN_NODES, SA_SETS, padPlan, saObserved } from '../helpers/sa.js';
import { ZERO_KEYS, fixture, hostObserved, k4Net, k4Plan, labNet, labPlan, poolsOf, umlObserved, UML_NODES } from '../helpers/readback.js';

const emptyConfig = (c: NodeConfig): NodeConfig => ({ ...c, states: [], policies: [], addresses: [], routes: [], firewall: { ...c.firewall, snat: [], forward: [] } });

describe('a router that holds the plan: no changes', () => {
  test.each(SA_SETS)('UML: the padded lab plan\'s states (lifetimes, ESN, tfcpad) and policies, loaded by the planner\'s own lines (%s)', (set) => {
    const plan = padPlan();
    for (const n of SA_PLAN_NODES) {
      for (const variant of ['', '-s'] as const) {
        const o = saObserved(n, variant, set);
        expect(o.states!.owned).toHaveLength(plan.configs.get(n)!.states.length);
        expect({ n, variant, changes: diffNode(plan.configs.get(n)!, o, { keys: ZERO_KEYS }) }).toEqual({ n, variant, changes: [] });
        expect(findConflicts(plan.configs.get(n)!, o)).toEqual([]);
      }
    }
  });

  test('UML lab recorded before SA lifetimes: everything but the states is as planned; each state needs a new epoch', () => {
    const plan = labPlan();
    const net = labNet();
    for (const n of UML_NODES) {
      for (const variant of ['', '-s'] as const) {
        const o = umlObserved(n, net, variant);
        const cfg = plan.configs.get(n)!;
        const ch = diffNode(cfg, o, { keys: ZERO_KEYS });
        expect({ n, variant, other: ch.filter((c) => c.kind !== 'state') }).toEqual({ n, variant, other: [] });
        // an old install has no limits (and no ESN on overlays): re-installing it is a rekey. Without
        // -s the limits are not printed, so only the overlay SAs (window, ESN) show
        expect(ch).toHaveLength(cfg.states.filter((x) => variant === '-s' || x.kind === 'overlay').length);
        for (const c of ch) {
          if (c.kind !== 'state' || c.op !== 'replace') throw new Error(`unexpected ${c.op} ${c.kind}`);
          expect(c).toMatchObject({ needsNewEpoch: true, keyMismatch: false });
          const fields = c.fields.map((f) => f.field);
          const want = [...(c.desired.kind === 'overlay' ? ['replay-window', 'esn'] : []), ...(variant === '-s' ? ['lifetime'] : [])];
          expect({ key: c.key, fields }).toEqual({ key: c.key, fields: want });
        }
        expect(findConflicts(cfg, o)).toEqual([]);
      }
    }
    const or1 = diffNode(plan.configs.get('or1')!, umlObserved('or1', net), { keys: ZERO_KEYS });
    const ov = or1.find((c) => c.kind === 'state' && c.op === 'replace' && c.desired.kind === 'overlay')!;
    expect(describeChange(ov)).toMatch(
      /: replay-window 32 -> 128; esn false -> true; lifetime soft \[none\] hard \[none\] -> soft \[bytes 68719476736, packets 4294967296, 3600s after add\] hard \[bytes 274877906944, packets 17179869184, 604800s after add\] \(needs a new epoch\)/,
    );
  });

  test('host kernel, 8 nodes (policies, routes, addresses, iptables-nft and nftables), among foreign objects', () => {
    const plan = k4Plan();
    const net = k4Net();
    for (const n of net.nodes.keys()) {
      for (const variant of ['', '-s'] as const) {
        const o = hostObserved(n, net, variant);
        expect({ n, changes: diffNode(plan.configs.get(n)!, o) }).toEqual({ n, changes: [] });
        expect(findConflicts(plan.configs.get(n)!, o)).toEqual([]);
      }
    }
    const text = formatChanges([...net.nodes.keys()].map((node) => ({ node, changes: [] })));
    expect(text).toContain('r6: no changes');
    expect(text).toMatch(/Plan: 0 to add, 0 to change, 0 to destroy\.\n$/);
  });

  test('a kind that was not read is not compared', () => {
    const plan = labPlan();
    const o: ObservedNode = { node: 'alice' };
    expect(diffNode(plan.configs.get('alice')!, o)).toEqual([]);
  });
});

describe('keys', () => {
  test('an SA whose key is not the planned one is a replace that needs a new epoch; nothing else changes', () => {
    const plan = padPlan();
    const keys = new KdfKeySource(Buffer.alloc(32, 7), plan.state.salt);
    for (const n of SA_PLAN_NODES) {
      const cfg = plan.configs.get(n)!;
      const ch = diffNode(cfg, saObserved(n), { keys });
      expect(ch).toHaveLength(cfg.states.length);
      for (const c of ch) {
        if (c.kind !== 'state' || c.op !== 'replace') throw new Error(`unexpected ${c.op} ${c.kind}`);
        expect(c.needsNewEpoch).toBe(true);
        expect(c.keyMismatch).toBe(true);
        expect(c.fields.map((f) => f.field)).toEqual(['key']);
        expect(describeChange(c)).toMatch(/^~ state esp \S+ spi 0x4f0000[0-9a-f]{2}: key fp=[0-9a-f]{12} -> fp=[0-9a-f]{12} \(key differs: needs a new epoch\)  # /);
      }
      expect(rekeyNeeded(ch).map((s) => s.key.id).sort()).toEqual(cfg.states.map((s) => s.key.id).sort());
      const json = changesJson([{ node: n, changes: ch }]);
      expect(json.summary).toEqual({ add: 0, change: cfg.states.length, destroy: 0 });
      expect(json.nodes[0]!.changes.every((c) => c.needsNewEpoch && c.sa !== undefined)).toBe(true);
      // no key, only fingerprints
      const planned = cfg.states.map((s) => keys.key(s.key, 36).toString('hex'));
      const text = JSON.stringify(json) + formatChanges([{ node: n, changes: ch }]);
      for (const k of planned) expect(text).not.toContain(k.slice(0, 16));
    }
  });

  test('other differences of an SA are replaces too (re-installing restarts the sequence number)', () => {
    const plan = padPlan();
    const base = plan.configs.get('or2')!;
    const tel = base.states.findIndex((s) => s.kind === 'telescope');
    const ov = base.states.findIndex((s) => s.kind === 'overlay');
    const one = (edit: (c: NodeConfig) => void, variant: '' | '-s' = '-s') => {
      const cfg = structuredClone(base);
      edit(cfg);
      return diffNode(cfg, saObserved('or2', variant), { keys: ZERO_KEYS });
    };
    const replace = (fields: { field: string; from: string; to: string }[]) => [
      expect.objectContaining({ op: 'replace', kind: 'state', needsNewEpoch: true, keyMismatch: false, fields }),
    ];
    expect(one((c) => (c.states[tel]!.replayWindow = 64))).toEqual(replace([{ field: 'replay-window', from: '32', to: '64' }]));
    expect(one((c) => (c.states[ov]!.esn = false))).toEqual(replace([{ field: 'esn', from: 'true', to: 'false' }]));
    expect(one((c) => (c.states[tel]!.tfcpad = 1200))).toEqual(replace([{ field: 'tfcpad', from: '-', to: '1200' }]));
    expect(one((c) => {
      // lifetimes are shared by every SA of a kind (keys/lifetimes.ts): replace, never edit in place
      const l = c.states[tel]!.lifetime;
      c.states[tel]!.lifetime = { ...l, hard: { ...l.hard, addSeconds: 86400 } };
    })).toEqual(
      replace([{ field: 'lifetime', from: expect.stringContaining(' hard [bytes 274877906944, packets 4026531840, 604800s after add]') as unknown as string, to: expect.stringContaining(' hard [bytes 274877906944, packets 4026531840, 86400s after add]') as unknown as string }]),
    );
    // lifetimes are printed by `ip -s` only: read without it, they are not compared
    expect(one((c) => {
      // lifetimes are shared by every SA of a kind (keys/lifetimes.ts): replace, never edit in place
      const l = c.states[tel]!.lifetime;
      c.states[tel]!.lifetime = { ...l, hard: { ...l.hard, addSeconds: 86400 } };
    }, '')).toEqual([]);
  });
});

describe('foreign objects are never in the diff', () => {
  test('planning nothing removes exactly onionctl\'s objects', () => {
    const plan = k4Plan();
    const net = k4Net();
    for (const n of net.nodes.keys()) {
      const o = hostObserved(n, net);
      const ch = diffNode(emptyConfig(plan.configs.get(n)!), o);
      expect(ch.every((c) => c.op === 'remove' || c.kind === 'chain')).toBe(true);
      const removed = ch.filter((c) => c.op === 'remove');
      const owned = o.policies!.owned.length + o.routes!.owned.length + o.addresses!.owned.length + o.iptables!.owned.rules.length + o.nft!.owned.rules.length;
      expect(removed).toHaveLength(owned);
      const text = formatChanges([{ node: n, changes: ch }]);
      for (const foreign of ['10.1.0.0', '10.5.0.0', '2001:db8', '10.20.0.0', '10.24.0.0', '10.30.0.1', '192.0.2.99', '127.0.0.1', 'ADMIN', 'MASQUERADE', 'admin']) {
        expect(text).not.toContain(foreign);
      }
    }
  });

  test('adding or removing foreign objects does not change the diff', () => {
    const plan = k4Plan();
    const net = k4Net();
    const cfg = plan.configs.get('alice')!;
    const desired = { ...cfg, routes: cfg.routes.slice(1), policies: cfg.policies.slice(2) };
    const o = hostObserved('alice', net);
    const bare: ObservedNode = {
      ...o,
      policies: { owned: o.policies!.owned, foreign: [] },
      routes: { owned: o.routes!.owned, foreign: [] },
      addresses: { owned: o.addresses!.owned, foreign: [] },
      iptables: { ...o.iptables!, foreignRules: [], foreignChains: [] },
      nft: { ...o.nft!, foreignTables: [] },
    };
    const a = diffNode(desired, o);
    expect(a.length).toBeGreaterThan(0);
    expect(diffNode(desired, bare)).toEqual(a);
  });
});

describe('a removed circuit', () => {
  test('K4 without circuit b1: removes of b1\'s objects only, on every router it used', () => {
    const before = k4Plan();
    const net = k4Net((y) => y.replace(/^\s*- \{ name: b1.*$/m, ''));
    const after = computePlan({ net, state: before.state, rngFor: rngFactory('k4-b'), now: '2024-01-02T00:00:00Z' });
    expect(after.events).toEqual([{ kind: 'circuit-removed', circuit: 'b1' }]);
    const b1 = before.state.circuits.b1!;
    const a1 = before.state.circuits.a1!;
    const all: Change[] = [];
    for (const n of net.nodes.keys()) {
      const ch = diffNode(after.configs.get(n)!, hostObserved(n, k4Net()));
      all.push(...ch);
      const touched = n === b1.client || b1.hops.includes(n);
      expect({ n, touched: ch.length > 0 }).toEqual({ n, touched });
      for (const c of ch) {
        expect(c.op).toBe('remove');
        // nothing of a1 goes
        for (const addr of a1.addrs) expect(c.key).not.toContain(addr);
      }
    }
    const kinds = new Set(all.map((c) => c.kind));
    expect([...kinds].sort()).toEqual(['address', 'filter', 'policy', 'route', 'snat']);
    // bob had only b1: all his addresses, routes and policies go
    const bob = all.filter((c) => c.key.includes(b1.addrs[0]!) || c.key.includes(b1.addrs[b1.addrs.length - 1]!));
    expect(bob.length).toBeGreaterThan(0);
    const bobCfg = before.configs.get('bob')!;
    const bobChanges = diffNode(after.configs.get('bob')!, hostObserved('bob', k4Net()));
    expect(countChanges(bobChanges)).toEqual({ add: 0, change: 0, destroy: bobCfg.policies.length + bobCfg.routes.length + bobCfg.addresses.length });
  });
});

describe('drift: what differs is a replace of that object', () => {
  const plan = k4Plan();
  const net = k4Net();

  test('route and policy', () => {
    const cfg = structuredClone(plan.configs.get('alice')!);
    cfg.routes[0]!.mtu = 1200;
    cfg.routes[0]!.quickack = true;
    const out = cfg.policies.find((p) => p.dir === 'out' && p.action === 'allow')!;
    out.tmpls = out.tmpls.slice(1);
    out.priority += 1;
    const ch = diffNode(cfg, hostObserved('alice', net));
    expect(ch.map((c) => [c.op, c.kind, c.op === 'replace' ? c.fields.map((f) => f.field) : []])).toEqual([
      ['replace', 'policy', ['priority', 'tmpls']],
      ['replace', 'route', ['mtu', 'quickack']],
    ]);
    const text = describeChange(ch[1]!);
    expect(text).toMatch(/^~ route main 203\.0\.113\.0\/25: mtu 1222 -> 1200; quickack false -> true {2}# circuit a1 via entry r1$/);
  });

  test('iptables: a duplicate jump, a changed comment, a foreign jump into onionctl\'s chain', () => {
    const cfg = plan.configs.get('r5')!;
    const save = fixture('host-6.18', 'r5', 'iptables-save')
      .replace('-A FORWARD -m comment --comment onionctl -j ONIONCTL-FORWARD', '-A FORWARD -m comment --comment onionctl -j ONIONCTL-FORWARD\n-A FORWARD -m comment --comment onionctl -j ONIONCTL-FORWARD\n-A INPUT -j ONIONCTL-FORWARD')
      .replace('"circuit b1 exit policy: everything else"', '"old words"');
    const o = observeNode('r5', { iptablesSave: save }, { pools: poolsOf(net) });
    const ch = orderChanges(diffNode(cfg, o));
    expect(ch.map((c) => describeChange(c))).toEqual([
      '~ chain iptables filter ONIONCTL-FORWARD: hooks FORWARD, FORWARD -> FORWARD',
      '~ filter iptables filter ONIONCTL-FORWARD 100.64.45.1/32 -> 0.0.0.0/0 any drop: comment old words -> circuit b1 exit policy: everything else  # circuit b1 exit policy: everything else',
    ]);
    expect(findConflicts(cfg, o)).toEqual([{ kind: 'chain', key: 'iptables filter ONIONCTL-FORWARD', reason: expect.stringContaining('-A INPUT -j ONIONCTL-FORWARD') }]);
  });

  test('rule order: the exit policy\'s drop before its accepts is reported', () => {
    const cfg = plan.configs.get('r6')!;
    const ruleset = fixture('host-6.18', 'r6', 'nft-list-table-ip-onionctl');
    const lines = ruleset.split('\n');
    const drop = lines.findIndex((l) => l.includes('everything else'));
    const [d] = lines.splice(drop, 1);
    lines.splice(drop - 4, 0, d!);
    const ch = diffNode(cfg, observeNode('r6', { nft: lines.join('\n') }, { pools: [] }));
    expect(ch).toEqual([expect.objectContaining({ op: 'replace', kind: 'rule-order', key: 'nftables ip onionctl forward' })]);
  });

  test('conflicts: a foreign policy and a foreign route with onionctl\'s identity', () => {
    const cfg = plan.configs.get('alice')!;
    const pol = fixture('host-6.18', 'alice', 'ip-xfrm-policy') + 'src 0.0.0.0/0 dst 203.0.113.0/25 \n\tdir out priority 10 ptype main \n';
    const routes = fixture('host-6.18', 'alice', 'ip-route-main').replace('203.0.113.0/25 via 198.51.100.41 dev eth0 proto 79', '203.0.113.0/25 via 198.51.100.41 dev eth0 proto static');
    const o = observeNode('alice', { xfrmPolicy: pol, routes }, { pools: poolsOf(net) });
    expect(findConflicts(cfg, o).map((c) => `${c.kind} ${c.key}`)).toEqual(['policy out 0.0.0.0/0 -> 203.0.113.0/25', 'route main 203.0.113.0/25']);
    // and the diff still only adds onionctl's route (the foreign one is not "removed" or "changed")
    expect(diffNode(cfg, o).map((c) => `${c.op} ${c.kind} ${c.key}`)).toEqual(['add route main 203.0.113.0/25']);
  });
});

describe('ordering', () => {
  /**
   * Desired: three-mixes with circuit web replaced by web2 (to 203.0.113.81, new addresses, new
   * SAs); observed: the lab as recorded (web). Every kind is added and removed.
   */
  function swapScenario(): Map<string, Change[]> {
    const both = (y: string) => y.replace('to: [203.0.113.80/32]', 'to: [203.0.113.80/32]\n  - name: web2\n    client: alice\n    to: [203.0.113.81/32]');
    const p2 = computePlan({ net: labNet(both), state: emptyState('00'.repeat(32)), rngFor: rngFactory('lab'), now: '2024-01-01T00:00:00Z' });
    const only2 = (y: string) => both(y).replace(/ {2}- name: web\n.*\n.*\n/, '');
    const p3 = computePlan({ net: labNet(only2), state: p2.state, rngFor: rngFactory('lab'), now: '2024-01-02T00:00:00Z' });
    expect(p3.events).toEqual([{ kind: 'circuit-removed', circuit: 'web' }]);
    const out = new Map<string, Change[]>();
    for (const n of UML_NODES) out.set(n, diffNode(p3.configs.get(n)!, umlObserved(n, labNet()), { keys: ZERO_KEYS }));
    return out;
  }

  test('the swap touches every kind, adds and removes', () => {
    const all = [...swapScenario().values()].flat();
    const seen = new Set(all.map((c) => `${c.op} ${c.kind}`));
    for (const k of ['state', 'policy', 'route', 'address', 'snat', 'filter']) {
      expect(seen).toContain(`add ${k}`);
      expect(seen).toContain(`remove ${k}`);
    }
  });

  test('safe order: blocks first; SAs before their policies; policies out before their SAs; addresses before routes; routes out before addresses; blocks out last', () => {
    for (const [node, changes] of swapScenario()) {
      const ord = orderChanges(changes);
      expect(ord).toHaveLength(changes.length);
      const at = (pred: (c: Change) => boolean) => ord.map((c, i) => (pred(c) ? i : -1)).filter((i) => i >= 0);
      const blockAdds = at((c) => c.kind === 'policy' && c.op !== 'remove' && c.desired.action === 'block');
      const blockRemoves = at((c) => c.kind === 'policy' && c.op === 'remove' && c.observed.action === 'block');
      if (node === 'alice') {
        expect(blockAdds.length).toBe(1);
        expect(blockRemoves.length).toBe(1);
      }
      for (const i of blockAdds) expect(i).toBe(blockAdds.indexOf(i)); // all at the front
      for (const i of blockRemoves) expect(ord.length - 1 - i).toBe(blockRemoves.length - 1 - blockRemoves.indexOf(i)); // all at the end
      ord.forEach((c, i) => {
        if (c.kind === 'policy' && c.op !== 'remove') {
          for (const t of c.desired.tmpls) {
            const sa = ord.findIndex((x) => x.kind === 'state' && x.op !== 'remove' && x.desired.reqid === t.reqid);
            if (sa >= 0) expect(sa).toBeLessThan(i);
          }
        }
        if (c.kind === 'state' && c.op === 'remove') {
          const users = at((x) => x.kind === 'policy' && x.op === 'remove' && x.observed.tmpls.some((t) => t.reqid === c.observed.reqid));
          for (const u of users) expect(u).toBeLessThan(i);
        }
        if (c.kind === 'route' && c.op !== 'remove' && c.desired.src !== undefined) {
          const a = ord.findIndex((x) => x.kind === 'address' && x.op === 'add' && x.desired.addr === c.desired.src);
          if (a >= 0) expect(a).toBeLessThan(i);
        }
        if (c.kind === 'address' && c.op === 'remove') {
          for (const r of at((x) => x.kind === 'route' && x.op === 'remove')) expect(r).toBeLessThan(i);
        }
        if (c.kind === 'route' || c.kind === 'address') {
          // routes and addresses come after every SA, policy (but retired blocks) and firewall change
          for (const j of at((x) => x.kind === 'state' || (x.kind === 'policy' && !blockRemoves.includes(ord.indexOf(x))) || x.kind === 'filter' || x.kind === 'snat')) expect(j).toBeLessThan(i);
        }
        if ((c.kind === 'filter' || c.kind === 'snat') && c.op === 'add') {
          // an exit's firewall is in place before the policy that lets the circuit through
          for (const j of at((x) => x.kind === 'policy' && x.op !== 'remove' && x.desired.action === 'allow')) expect(j).toBeGreaterThan(i);
        }
      });
      // new firewall rules go in in the chain's order: an exit policy's drop after its accepts
      const adds = ord.filter((c): c is Extract<Change, { kind: 'filter'; op: 'add' }> => c.kind === 'filter' && c.op === 'add').map((c) => c.desired.filter!);
      const want = adds.length > 0 ? [...adds].sort((a, b) => changes.findIndex((c) => c.kind === 'filter' && c.op === 'add' && c.desired.filter === a) - changes.findIndex((c) => c.kind === 'filter' && c.op === 'add' && c.desired.filter === b)) : [];
      expect(adds).toEqual(want);
      // or3: the new circuit's two accepts and its drop; the link's rules stay (same links)
      if (node === 'or3') expect(adds.map((r) => r.action)).toEqual(['accept', 'accept', 'drop']);
      expect(changesByPhase(changes).flatMap((g) => g.changes)).toEqual(ord);
    }
  });

  test('summaries: text in apply order with totals, JSON with the same counts', () => {
    const byNode = swapScenario();
    const nodes = [...byNode].map(([node, changes]) => ({ node, changes }));
    const text = formatChanges(nodes);
    const json = changesJson(nodes);
    const total = nodes.reduce((s, n) => s + n.changes.length, 0);
    expect(json.summary.add + json.summary.change + json.summary.destroy).toBe(total);
    expect(text).toContain(`Plan: ${json.summary.add} to add, ${json.summary.change} to change, ${json.summary.destroy} to destroy.`);
    const alice = text.split('\n').filter((l) => l.startsWith('  '));
    expect(alice[0]).toMatch(/^ {2}\+ policy out 0\.0\.0\.0\/0 -> 203\.0\.113\.81\/32: priority 20239 block {2}# circuit web2: fail closed$/);
    expect(text).toMatch(/^ {2}\+ route main 203\.0\.113\.81\/32: via 198\.51\.100\.11 dev eth0 src 100\.64\.3\.2 mtu 1278 advmss 1238 quickack {2}# circuit web2 via entry or1$/m);
    expect(text).toMatch(/^ {2}\+ state esp 198\.51\.100\.11 spi 0x4f00000c: 100\.64\.1\.2 -> 198\.51\.100\.11 reqid 0x4f00000c aes-gcm {2}# circuit web2 hop 1 forward$/m);
    expect(text).toMatch(/^ {2}- policy out 0\.0\.0\.0\/0 -> 203\.0\.113\.80\/32$/m);
    expect(text).toMatch(/^ {2}\+ address 100\.64\.1\.2 dev lo {2}# circuit web2: A_c1$/m);
    expect(text).toMatch(/^ {2}- state esp 100\.64\.1\.1 spi 0x4f000009$/m);
    expect(json.nodes.map((n) => n.node)).toEqual([...UML_NODES]);
    for (const n of json.nodes) expect(n.changes.map((c) => c.phase)).toEqual(orderChanges(byNode.get(n.node)!).map((c) => changesByPhase([c])[0]!.phase));
  });
});

describe('keys of objects', () => {
  test('routes keyed by table and dst, addresses by address and device, states by dst and SPI', () => {
    const plan = labPlan();
    const o = umlObserved('alice', labNet());
    const cfg = plan.configs.get('alice')!;
    const ch = diffNode(emptyConfig(cfg), o);
    const keys = ch.map((c) => `${c.kind} ${c.key}`);
    expect(keys).toContain('route main 203.0.113.80/32');
    expect(keys).toContain('address 100.64.3.1 dev lo');
    expect(keys).toContain(`state esp ${formatIPv4(cfg.states[0]!.dst)} spi 0x${cfg.states[0]!.spi.toString(16).padStart(8, '0')}`);
    expect(keys).toContain('policy out 0.0.0.0/0 -> 203.0.113.80/32');
  });
});

describe('a change line quotes what the router printed, escaped', () => {
  test('control characters in a key or a field (an iptables comment, a chain name) never reach the terminal raw', () => {
    const c: Change = {
      op: 'replace',
      kind: 'rule-order',
      key: 'iptables filter ONIONCTL-\x1b[2JFORWARD',
      desired: ['a'],
      observed: ['b'],
      fields: [{ field: 'order', from: '\x1b]52;c;cm0gLXJm\x07\nApply complete!', to: 'a' }],
    };
    const line = describeChange(c);
    expect(line).not.toMatch(/[\x00-\x08\x0a-\x1f\x7f]/);
    expect(line).toContain('ONIONCTL-\\x1b[2JFORWARD');
    expect(line).toContain('\\x1b]52;c;cm0gLXJm\\x07\\nApply complete!');
  });
});
