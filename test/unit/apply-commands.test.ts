/**
 * src/apply/commands.ts: ordered changes -> stdin-fed steps, per stage (install, configure,
 * retire), for the three-mixes plan of the UML lab (test/helpers/readback.ts):
 *   - a freshly booted node: sysctls, blocks and SAs in install (secret), the firewall rewrite
 *     then policies, addresses and routes in configure, nothing in retire;
 *   - a node holding extra objects of onionctl's: their delete lines in retire, in the order
 *     policies -> SAs -> routes -> addresses -> blocks;
 *   - destroy (engine.removalChanges): unhook and drop the chains, never (re-)add a jump;
 *   - a `replace` of a state is refused; no key ever in an argv.
 */
import { beforeAll, describe, expect, test } from '@jest/globals';
import { removalChanges } from '../../src/apply/engine.js';
import { STAGES, stageSteps, type Stage, type Step } from '../../src/apply/commands.js';
import { diffNode, type Change } from '../../src/diff/index.js';
import { KdfKeySource, type KeySource } from '../../src/keys/kdf.js';
import type { NodeConfig } from '../../src/model/config.js';
import { formatCidr, formatIPv4, parseCidr } from '../../src/net/addr.js';
import type { ObservedNode } from '../../src/readback/observed.js';
import type { Templates } from '../../src/render/render.js';
import { loadTemplates } from '../../src/util/files.js';
import { containsKey, emptyConfig, emptyObserved, plannedKeysHex } from '../helpers/apply.js';
import { ZERO_KEYS, hostObserved, k4Net, k4Plan, labNet, labPlan, poolsOf, umlObserved, UML_NODES } from '../helpers/readback.js';

let templates: Templates;
beforeAll(async () => {
  templates = await loadTemplates();
});

const net = labNet();
const plan = labPlan();
/** real-looking keys (not the fixtures' zeros), so that a leaked key can be found */
const keys: KeySource = new KdfKeySource(Buffer.alloc(32, 0x5a), plan.state.salt);
const cfgOf = (n: string): NodeConfig => plan.configs.get(n)!;
const ctx = (k: KeySource = keys) => ({ keys: k, templates, version: 'test' });
const lines = (st: Step) => st.stdin.split('\n').filter((l) => l.length > 0);
const allSteps = (cfg: NodeConfig, changes: Change[], k: KeySource = keys) => Object.fromEntries(STAGES.map((s) => [s, stageSteps(s, cfg, changes, ctx(k))])) as Record<Stage, Step[]>;
const hex32 = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;

describe('a freshly booted node (holds nothing)', () => {
  test.each([...UML_NODES])('%s: install = sysctls, blocks, SAs; configure = firewall, policies, addresses, routes; retire = nothing', (node) => {
    const cfg = cfgOf(node);
    const changes = diffNode(cfg, emptyObserved(node, poolsOf(net), { sysctls: true }), { keys });
    const st = allSteps(cfg, changes);

    // install
    const install = [...st.install];
    if (cfg.sysctls.length > 0) {
      const sc = install.shift()!;
      expect(sc).toMatchObject({ what: 'sysctl', argv: ['sysctl', '-q', '--load=-'], secret: false, changes: cfg.sysctls.length });
      expect(lines(sc).sort()).toEqual(cfg.sysctls.map((s) => `${s.key} = ${s.value}`).sort());
    }
    expect(install).toHaveLength(1);
    const ipi = install[0]!;
    const blocks = cfg.policies.filter((p) => p.action === 'block');
    expect(ipi.argv).toEqual(['ip', '-batch', '-']);
    expect(ipi.secret).toBe(true);
    expect(ipi.changes).toBe(blocks.length + cfg.states.length);
    const il = lines(ipi);
    expect(il).toHaveLength(blocks.length + cfg.states.length);
    // blocks first (fail closed), then every SA, each with its planned SPI
    il.slice(0, blocks.length).forEach((l) => expect(l).toMatch(/^xfrm policy update .* dir out priority 20239 action block$/));
    for (const b of blocks) expect(il.slice(0, blocks.length)).toContain(`xfrm policy update src ${formatCidr(b.src)} dst ${formatCidr(b.dst)} dir out priority ${b.priority} action block`);
    const sas = il.slice(blocks.length);
    sas.forEach((l) => expect(l).toMatch(/^xfrm state add src \S+ dst \S+ proto esp spi 0x4f[0-9a-f]{6} reqid 0x4f[0-9a-f]{6} mode tunnel replay-window [1-9]\d* /));
    expect(sas.map((l) => /spi (0x[0-9a-f]+)/.exec(l)![1]).sort()).toEqual(cfg.states.map((s) => hex32(s.spi)).sort());
    // the keys are in the input (it is what installs them), never on the command line
    for (const s of cfg.states) {
      const k = keys.key(s.key, 36).toString('hex');
      expect(sas.find((l) => l.includes(`spi ${hex32(s.spi)} `))).toContain(`0x${k}`);
    }

    // configure: the firewall rewrite, then one ip -batch: policies, addresses, routes
    expect(st.configure.map((s) => s.what)).toEqual(['iptables-restore', 'ip -batch']);
    const [fw, ipc] = st.configure as [Step, Step];
    expect(fw.argv).toEqual(['iptables-restore', '--noflush']);
    expect(fw.secret).toBe(false);
    expect(lines(fw)).toEqual(expect.arrayContaining(['*nat', ':ONIONCTL-POSTROUTING - [0:0]', '-A POSTROUTING -m comment --comment onionctl -j ONIONCTL-POSTROUTING', '*filter', ':ONIONCTL-FORWARD - [0:0]', '-A FORWARD -m comment --comment onionctl -j ONIONCTL-FORWARD']));
    expect(lines(fw).filter((l) => l.startsWith('-A ONIONCTL-')).length).toBeGreaterThanOrEqual(cfg.firewall.snat.length + cfg.firewall.forward.length);
    // nothing outside onionctl's chains but the two jumps
    expect(lines(fw).filter((l) => /^-[AIDFXRZN] /.test(l) && !/^-A ONIONCTL-/.test(l))).toEqual([
      '-A POSTROUTING -m comment --comment onionctl -j ONIONCTL-POSTROUTING',
      '-A FORWARD -m comment --comment onionctl -j ONIONCTL-FORWARD',
    ]);
    expect(ipc.secret).toBe(false);
    const cl = lines(ipc);
    const allow = cfg.policies.filter((p) => p.action === 'allow');
    expect(cl).toHaveLength(allow.length + cfg.addresses.length + cfg.routes.length);
    const kinds = cl.map((l) => (l.startsWith('xfrm policy update ') ? 'policy' : l.startsWith('address replace ') ? 'address' : l.startsWith('route replace ') ? 'route' : `?? ${l}`));
    expect(kinds).toEqual([...allow.map(() => 'policy'), ...cfg.addresses.map(() => 'address'), ...cfg.routes.map(() => 'route')]);
    expect(cl.filter((l) => l.includes('action block'))).toEqual([]);
    for (const a of cfg.addresses) expect(cl).toContain(`address replace ${formatIPv4(a.addr)}/32 dev ${a.dev}`);
    for (const r of cfg.routes) expect(cl.find((l) => l.startsWith(`route replace ${formatCidr(r.dst)} via ${formatIPv4(r.via)} dev ${r.dev}`))).toMatch(/ proto 79( |$)/);
    expect(ipc.changes + fw.changes).toBe(changes.filter((c) => c.kind !== 'state' && c.kind !== 'sysctl' && !(c.kind === 'policy' && c.op !== 'remove' && c.desired.action === 'block')).length);

    expect(st.retire).toEqual([]);
    // every change is carried exactly once
    expect([...st.install, ...st.configure].reduce((n, s) => n + s.changes, 0)).toBe(changes.length);
  });

  test('an nftables router: configure rewrites table ip onionctl with nft -f -, and iptables is not touched', () => {
    const k4 = k4Plan();
    const cfg = k4.configs.get('r6')!;
    expect(cfg.firewall.backend).toBe('nftables');
    const o = emptyObserved('r6', poolsOf(k4Net()));
    o.nft = { owned: { chains: [], rules: [] }, present: true, foreignTables: [] };
    const ch = diffNode(cfg, o);
    const st = stageSteps('configure', cfg, ch, ctx());
    expect(st.map((s) => s.argv)).toEqual([['nft', '-f', '-'], ['ip', '-batch', '-']]);
    expect(st[0]!.stdin).toContain('table ip onionctl {');
    expect(st[0]!.stdin).toContain('delete table ip onionctl');
    expect(st.some((s) => s.argv[0]!.startsWith('iptables'))).toBe(false);
  });
});

describe('a node holding extra objects of onionctl\'s', () => {
  function withExtras(): { o: ObservedNode; extra: Record<string, string> } {
    const o = structuredClone(umlObserved('alice', net));
    const st = o.states!.owned[0]!;
    const allow = o.policies!.owned.find((p) => p.action === 'allow' && p.dir === 'out')!;
    const block = o.policies!.owned.find((p) => p.action === 'block')!;
    const route = o.routes!.owned[0]!;
    const pool = net.routers.get('or1')!.pool;
    o.states!.owned.push({ ...st, spi: 0x4f0000f0, reqid: 0x4f0000f0 });
    o.policies!.owned.push({ ...allow, src: parseCidr('100.64.1.200/32') });
    o.policies!.owned.push({ ...block, dst: parseCidr('203.0.113.0/24') });
    o.routes!.owned.push({ ...route, dst: parseCidr('100.64.9.9/32') });
    o.addresses!.owned.push({ addr: pool.base + 200, len: 32, dev: 'lo' });
    return {
      o,
      extra: {
        policy: `xfrm policy delete src 100.64.1.200/32 dst ${formatCidr(allow.dst)} dir out`,
        state: `xfrm state delete src ${formatIPv4(st.src)} dst ${formatIPv4(st.dst)} proto esp spi 0x4f0000f0`,
        route: 'route del 100.64.9.9/32 table main proto 79',
        address: `address del ${formatIPv4(pool.base + 200)}/32 dev lo`,
        block: `xfrm policy delete src 0.0.0.0/0 dst 203.0.113.0/24 dir out`,
      },
    };
  }

  test('retire deletes them: policies -> SAs -> routes -> addresses -> blocks; install and configure do nothing', () => {
    const { o, extra } = withExtras();
    const cfg = cfgOf('alice');
    const changes = diffNode(cfg, o, { keys: ZERO_KEYS });
    expect(changes.map((c) => `${c.op} ${c.kind}`).sort()).toEqual(['remove address', 'remove policy', 'remove policy', 'remove route', 'remove state']);
    // whatever order the diff gives them in
    for (const cs of [changes, [...changes].reverse()]) {
      const st = allSteps(cfg, cs);
      expect(st.install).toEqual([]);
      expect(st.configure).toEqual([]);
      expect(st.retire).toHaveLength(1);
      expect(st.retire[0]).toMatchObject({ what: 'ip -batch', argv: ['ip', '-batch', '-'], secret: false, changes: 5 });
      expect(lines(st.retire[0]!)).toEqual([extra.policy!, extra.state!, extra.route!, extra.address!, extra.block!]);
    }
  });

  test('a policy with a mark and extra selector fields is deleted by its full selector', () => {
    const o = structuredClone(umlObserved('or1', net));
    const p = o.policies!.owned.find((x) => x.dir === 'fwd')!;
    o.policies!.owned.push({ ...p, src: parseCidr('100.64.1.201/32'), selExtra: ['dport', '443'], proto: 'tcp' as never, mark: '0x1/0xff', ifId: '0x7' });
    const ch = diffNode(cfgOf('or1'), o, { keys: ZERO_KEYS });
    expect(ch.map((c) => `${c.op} ${c.kind}`)).toEqual(['remove policy']);
    const [s] = stageSteps('retire', cfgOf('or1'), ch, ctx());
    expect(lines(s!)).toEqual([`xfrm policy delete src 100.64.1.201/32 dst ${formatCidr(p.dst)} proto tcp dport 443 dir fwd mark 0x1 mask 0xff if_id 0x7`]);
  });
});

describe('destroy: engine.removalChanges', () => {
  test.each([...UML_NODES])('%s: every onionctl object deleted, chains unhooked and dropped, no jump ever added', (node) => {
    const o = umlObserved(node, net);
    const ch = removalChanges(o);
    expect(ch.every((c) => c.op === 'remove')).toBe(true);
    const st = allSteps(emptyConfig(cfgOf(node)), ch, ZERO_KEYS);
    expect(st.install).toEqual([]);
    expect(st.configure).toEqual([]);
    const ip = st.retire.find((s) => s.what === 'ip -batch')!;
    const il = lines(ip);
    const own = o.states!.owned.length + o.policies!.owned.length + o.routes!.owned.length + o.addresses!.owned.length;
    expect(il).toHaveLength(own);
    expect(ip.secret).toBe(false);
    const blockLines = new Set(o.policies!.owned.filter((p) => p.action === 'block').map((p) => `xfrm policy delete src ${formatCidr(p.src)} dst ${formatCidr(p.dst)} dir ${p.dir}`));
    const kind = (l: string) => (blockLines.has(l) ? 'block' : l.startsWith('xfrm policy delete ') ? 'policy' : l.split(' ').slice(0, 2).join(' '));
    const order = il.map(kind);
    const want = ['policy', 'xfrm state', 'route del', 'address del', 'block'];
    // grouped, and the groups in the safe order
    expect(order).toEqual([...order].sort((a, b) => want.indexOf(a) - want.indexOf(b)));
    expect(order.filter((k) => k === 'xfrm state')).toHaveLength(o.states!.owned.length);
    expect(order.filter((k) => k === 'block')).toHaveLength(blockLines.size);
    expect(order.filter((k) => k === 'policy')).toHaveLength(o.policies!.owned.length - blockLines.size);
    for (const s of o.states!.owned) expect(il).toContain(`xfrm state delete src ${formatIPv4(s.src)} dst ${formatIPv4(s.dst)} proto esp spi ${hex32(s.spi)}`);
    for (const r of o.routes!.owned) expect(il).toContain(`route del ${formatCidr(r.dst)} table main proto 79`);
    for (const a of o.addresses!.owned) expect(il).toContain(`address del ${formatIPv4(a.addr)}/32 dev lo`);

    const fw = st.retire.filter((s) => s.what !== 'ip -batch');
    expect(fw).toHaveLength(1);
    expect(fw[0]!.argv).toEqual(['iptables-restore', '--noflush']);
    expect(st.retire.indexOf(fw[0]!)).toBeGreaterThan(st.retire.indexOf(ip));
    const fl = lines(fw[0]!);
    // no rule is added, anywhere, and nothing outside onionctl's chains is named but the jumps
    expect(fl.filter((l) => /^-[AIRN] /.test(l))).toEqual([]);
    for (const c of o.iptables!.owned.chains) {
      const t = fl.indexOf(`*${c.table}`);
      const d = fl.indexOf(`-D ${c.hooks[0]} -m comment --comment onionctl -j ${c.chain}`);
      const f = fl.indexOf(`-F ${c.chain}`);
      const x = fl.indexOf(`-X ${c.chain}`);
      expect({ chain: c.chain, ordered: t >= 0 && t < d && d < f && f < x && x < fl.indexOf('COMMIT', t) }).toEqual({ chain: c.chain, ordered: true });
    }
    expect(fl.filter((l) => l.startsWith('-D ')).length).toBe(o.iptables!.owned.chains.reduce((n, c) => n + c.hooks.length, 0));
  });

  test('a chain hooked twice (a duplicated jump) is unhooked twice; the legacy variant is used when that is what the router runs', () => {
    const o = structuredClone(umlObserved('or1', net));
    o.iptables!.owned.chains.find((c) => c.chain === 'ONIONCTL-FORWARD')!.hooks.push('FORWARD');
    const st = stageSteps('retire', emptyConfig(cfgOf('or1')), removalChanges(o), { ...ctx(ZERO_KEYS), iptables: { save: 'iptables-legacy-save', restore: 'iptables-legacy-restore' } });
    const fw = st.find((s) => s.what.startsWith('iptables-restore'))!;
    expect(fw.argv).toEqual(['iptables-legacy-restore', '--noflush']);
    expect(lines(fw).filter((l) => l === '-D FORWARD -m comment --comment onionctl -j ONIONCTL-FORWARD')).toHaveLength(2);
  });

  test('an nftables node: table ip onionctl deleted; foreign objects never named', () => {
    const k4 = k4Net();
    const o = hostObserved('r6', k4);
    expect(o.nft!.owned.chains.length).toBeGreaterThan(0);
    const ch = removalChanges(o);
    const st = allSteps(emptyConfig(k4Plan().configs.get('r6')!), ch, ZERO_KEYS);
    expect(st.install).toEqual([]);
    expect(st.configure).toEqual([]);
    const nft = st.retire.filter((s) => s.argv[0] === 'nft');
    expect(nft).toHaveLength(1);
    expect(nft[0]!.stdin).toBe('table ip onionctl\ndelete table ip onionctl\n');
    const all = st.retire.map((s) => s.stdin).join('\n');
    for (const foreign of ['10.1.0.0', '10.5.0.0', '10.20.0.0', '10.30.0.1', 'ADMIN', 'admin']) expect(all).not.toContain(foreign);
  });

  test('a node holding nothing of onionctl\'s gets no steps at all', () => {
    const ch = removalChanges(emptyObserved('or2', poolsOf(net)));
    expect(ch).toEqual([]);
    expect(allSteps(emptyConfig(cfgOf('or2')), ch)).toEqual({ install: [], configure: [], retire: [] });
  });
});

describe('refusals and key hygiene', () => {
  test('a replace of a state throws (an SA is never re-installed under its SPI)', () => {
    const cfg = structuredClone(cfgOf('or2'));
    cfg.states[0]!.replayWindow = 64;
    const ch = diffNode(cfg, umlObserved('or2', net), { keys: ZERO_KEYS });
    expect(ch).toContainEqual(expect.objectContaining({ op: 'replace', kind: 'state', key: `esp ${formatIPv4(cfg.states[0]!.dst)} spi ${hex32(cfg.states[0]!.spi)}` }));
    expect(() => stageSteps('install', cfg, ch, ctx(ZERO_KEYS))).toThrow(/same SPI/);
    // only the install stage carries SAs
    expect(() => stageSteps('configure', cfg, ch, ctx(ZERO_KEYS))).not.toThrow();
  });

  test('no step\'s argv (or description) holds a key, on any node, in any stage; only secret steps\' input does', () => {
    const keysHex = plannedKeysHex(plan.configs.values(), keys);
    expect(keysHex.length).toBeGreaterThan(10);
    let secretSteps = 0;
    for (const node of UML_NODES) {
      const cfg = cfgOf(node);
      for (const changes of [diffNode(cfg, emptyObserved(node, poolsOf(net), { sysctls: true }), { keys }), removalChanges(umlObserved(node, net))]) {
        for (const [stage, steps] of Object.entries(allSteps(cfg, changes))) {
          for (const s of steps) {
            expect({ node, stage, leak: containsKey(`${s.argv.join(' ')} ${s.what}`, keysHex) }).toEqual({ node, stage, leak: undefined });
            if (!s.secret) expect({ node, stage, what: s.what, leak: containsKey(s.stdin, keysHex) }).toEqual({ node, stage, what: s.what, leak: undefined });
            else {
              secretSteps++;
              expect(containsKey(s.stdin, keysHex)).toBeDefined();
            }
          }
        }
      }
    }
    expect(secretSteps).toBe(UML_NODES.length);
  });
});
