/**
 * src/apply/commands.ts: ordered changes -> stdin-fed steps, per stage (receive, install,
 * configure, retire, drain), for the three-mixes plan of the UML lab (test/helpers/apply.ts
 * heldPlan, whose every object the recorded read-backs hold):
 *   - a freshly booted node: its receiving SAs in receive; sysctls, blocks and sending SAs in
 *     install (secret steps); the firewall rewrite then policies, addresses and routes in
 *     configure; nothing in retire or drain;
 *   - a node holding extra objects of onionctl's: their delete lines in retire, in the order
 *     policies -> sending SAs -> routes -> addresses -> blocks, receiving SAs in drain;
 *   - destroy (engine.removalChanges): unhook and drop the chains, never (re-)add a jump;
 *   - a `replace` of a state is refused; no key ever in an argv.
 */
import { beforeAll, describe, expect, test } from '@jest/globals';
import { interfaceAddresses } from '../../src/apply/engine.js';
import { ownAddresses, STAGES, stageSteps, type Stage, type Step } from '../../src/apply/commands.js';
import { diffNode, removalChanges, type Change } from '../../src/diff/index.js';
import { KdfKeySource, type KeySource } from '../../src/keys/kdf.js';
import { PROFILES } from '../../src/keys/profiles.js';
import type { NodeConfig } from '../../src/model/config.js';
import { formatCidr, formatIPv4, parseCidr } from '../../src/net/addr.js';
import type { ObservedNode } from '../../src/readback/observed.js';
import type { Templates } from '../../src/render/render.js';
import { loadTemplates } from '../../src/store/files.js';
import { containsKey, emptyConfig, emptyObserved, heldNet, heldObserved, heldPlan, plannedKeysHex } from '../helpers/apply.js';
import { ZERO_KEYS, hostObserved, k4Net, k4Plan, poolsOf, UML_NODES } from '../helpers/readback.js';

let templates: Templates;
beforeAll(async () => {
  templates = await loadTemplates();
});

const net = heldNet();
const plan = heldPlan();
const ifaces = interfaceAddresses(net);
/** real-looking keys (not the fixtures' zeros), so that a leaked key can be found */
const keys: KeySource = new KdfKeySource(Buffer.alloc(32, 0x5a), plan.state.salt);
const cfgOf = (n: string): NodeConfig => plan.configs.get(n)!;
/** which end of an SA a node is: its interface addresses and its planned lo addresses */
const ownOf = (cfg: NodeConfig, ifs = ifaces) => ownAddresses(cfg, ifs.get(cfg.node)!);
const ctx = (k: KeySource = keys, cfg?: NodeConfig, ifs = ifaces) => ({ keys: k, templates, version: 'test', ...(cfg ? { own: ownOf(cfg, ifs) } : {}) });
const lines = (st: Step) => st.stdin.split('\n').filter((l) => l.length > 0);
const allSteps = (cfg: NodeConfig, changes: Change[], k: KeySource = keys, ifs = ifaces) => Object.fromEntries(STAGES.map((s) => [s, stageSteps(s, cfg, changes, ctx(k, cfg, ifs))])) as Record<Stage, Step[]>;
const spiOf = (l: string) => /spi (0x[0-9a-f]+)/.exec(l)![1];
const hex32 = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;

describe('a freshly booted node (holds nothing)', () => {
  test.each([...UML_NODES])('%s: receive = its receiving SAs; install = sysctls, blocks, sending SAs; configure = firewall, policies, addresses, routes; nothing to retire or drain', (node) => {
    const cfg = cfgOf(node);
    const own = ownOf(cfg);
    const changes = diffNode(cfg, emptyObserved(node, poolsOf(net), { sysctls: true }), { keys });
    const st = allSteps(cfg, changes);
    const receiving = cfg.states.filter((x) => own(x.dst));
    const sending = cfg.states.filter((x) => !own(x.dst));
    // every SA has exactly one end here, and every node both sends and receives
    expect(cfg.states.every((x) => own(x.src) !== own(x.dst))).toBe(true);
    expect(receiving.length * sending.length).toBeGreaterThan(0);
    const stateLine = /^xfrm state add src \S+ dst \S+ proto esp spi 0x4f[0-9a-f]{6} reqid 0x4f[0-9a-f]{6} mode tunnel replay-window [1-9]\d* /;

    // receive: the SAs that come in to this node, first of all
    expect(st.receive).toHaveLength(1);
    expect(st.receive[0]).toMatchObject({ what: 'ip -batch', argv: ['ip', '-batch', '-'], secret: true, changes: receiving.length });
    lines(st.receive[0]!).forEach((l) => expect(l).toMatch(stateLine));
    expect(lines(st.receive[0]!).map(spiOf).sort()).toEqual(receiving.map((x) => hex32(x.spi)).sort());

    // install
    const install = [...st.install];
    if (cfg.sysctls.length > 0) {
      const sc = install.shift()!;
      expect(sc).toMatchObject({ what: 'sysctl', argv: ['sysctl', '-q', '--load=-'], secret: false, changes: cfg.sysctls.length });
      expect(lines(sc).sort()).toEqual(cfg.sysctls.map((x) => `${x.key} = ${x.value}`).sort());
    }
    expect(install).toHaveLength(1);
    const ipi = install[0]!;
    const blocks = cfg.policies.filter((p) => p.action === 'block');
    expect(ipi.argv).toEqual(['ip', '-batch', '-']);
    expect(ipi.secret).toBe(true);
    expect(ipi.changes).toBe(blocks.length + sending.length);
    const il = lines(ipi);
    expect(il).toHaveLength(blocks.length + sending.length);
    // blocks first (fail closed), then the sending SAs, each with its planned SPI
    il.slice(0, blocks.length).forEach((l) => expect(l).toMatch(/^xfrm policy update .* dir out priority 20239 action block$/));
    for (const b of blocks) expect(il.slice(0, blocks.length)).toContain(`xfrm policy update src ${formatCidr(b.src)} dst ${formatCidr(b.dst)} dir out priority ${b.priority} action block`);
    const sas = il.slice(blocks.length);
    sas.forEach((l) => expect(l).toMatch(stateLine));
    expect(sas.map(spiOf).sort()).toEqual(sending.map((x) => hex32(x.spi)).sort());
    // the keys are in the input (it is what installs them), never on the command line
    const allSas = [...lines(st.receive[0]!), ...sas];
    for (const x of cfg.states) {
      const k = keys.key(x.key, PROFILES[x.profile].keyBytes).toString('hex');
      expect(allSas.find((l) => l.includes(`spi ${hex32(x.spi)} `))).toContain(`0x${k}`);
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
    expect(st.drain).toEqual([]);
    // every change is carried exactly once
    expect([...st.receive, ...st.install, ...st.configure].reduce((n, x) => n + x.changes, 0)).toBe(changes.length);
  });

  test('without the node\'s addresses every SA counts as sending: all in install, receive empty', () => {
    const cfg = cfgOf('or2');
    const changes = diffNode(cfg, emptyObserved('or2', poolsOf(net)), { keys });
    expect(stageSteps('receive', cfg, changes, ctx())).toEqual([]);
    const ip = stageSteps('install', cfg, changes, ctx()).find((x) => x.what === 'ip -batch')!;
    expect(lines(ip).filter((l) => l.startsWith('xfrm state add'))).toHaveLength(cfg.states.length);
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
    const o = structuredClone(heldObserved('alice'));
    const own = ownOf(cfgOf('alice'));
    const inbound = o.states!.owned.find((x) => own(x.dst))!;
    const outbound = o.states!.owned.find((x) => !own(x.dst))!;
    const allow = o.policies!.owned.find((p) => p.action === 'allow' && p.dir === 'out')!;
    const block = o.policies!.owned.find((p) => p.action === 'block')!;
    const route = o.routes!.owned[0]!;
    const pool = net.routers.get('or1')!.pool;
    o.states!.owned.push({ ...inbound, spi: 0x4f0000f0, reqid: 0x4f0000f0 });
    o.states!.owned.push({ ...outbound, spi: 0x4f0000f1, reqid: 0x4f0000f1 });
    o.policies!.owned.push({ ...allow, src: parseCidr('100.64.1.200/32') });
    o.policies!.owned.push({ ...block, dst: parseCidr('203.0.113.0/24') });
    o.routes!.owned.push({ ...route, dst: parseCidr('100.64.9.9/32') });
    o.addresses!.owned.push({ addr: pool.base + 200, len: 32, dev: 'lo' });
    return {
      o,
      extra: {
        policy: `xfrm policy delete src 100.64.1.200/32 dst ${formatCidr(allow.dst)} dir out`,
        sending: `xfrm state delete src ${formatIPv4(outbound.src)} dst ${formatIPv4(outbound.dst)} proto esp spi 0x4f0000f1`,
        receiving: `xfrm state delete src ${formatIPv4(inbound.src)} dst ${formatIPv4(inbound.dst)} proto esp spi 0x4f0000f0`,
        route: 'route del 100.64.9.9/32 table main proto 79',
        address: `address del ${formatIPv4(pool.base + 200)}/32 dev lo`,
        block: `xfrm policy delete src 0.0.0.0/0 dst 203.0.113.0/24 dir out`,
      },
    };
  }

  test('retire deletes them: policies -> sending SAs -> routes -> addresses -> blocks; drain the receiving SAs; nothing else', () => {
    const { o, extra } = withExtras();
    const cfg = cfgOf('alice');
    const changes = diffNode(cfg, o, { keys: ZERO_KEYS });
    expect(changes.map((c) => `${c.op} ${c.kind}`).sort()).toEqual(['remove address', 'remove policy', 'remove policy', 'remove route', 'remove state', 'remove state']);
    // whatever order the diff gives them in
    for (const cs of [changes, [...changes].reverse()]) {
      const st = allSteps(cfg, cs);
      expect({ receive: st.receive, install: st.install, configure: st.configure }).toEqual({ receive: [], install: [], configure: [] });
      expect(st.retire).toHaveLength(1);
      expect(st.retire[0]).toMatchObject({ what: 'ip -batch', argv: ['ip', '-batch', '-'], secret: false, changes: 5 });
      expect(lines(st.retire[0]!)).toEqual([extra.policy!, extra.sending!, extra.route!, extra.address!, extra.block!]);
      expect(st.drain).toHaveLength(1);
      expect(st.drain[0]).toMatchObject({ what: 'ip -batch', secret: false, changes: 1 });
      expect(lines(st.drain[0]!)).toEqual([extra.receiving!]);
    }
  });

  test('an SA received on an address that is itself being removed is still drained last', () => {
    const o = structuredClone(heldObserved('alice'));
    const pool = net.routers.get('or2')!.pool;
    const gone = pool.base + 201;
    const inbound = o.states!.owned.find((x) => ownOf(cfgOf('alice'))(x.dst))!;
    o.addresses!.owned.push({ addr: gone, len: 32, dev: 'lo' });
    o.states!.owned.push({ ...inbound, dst: gone, spi: 0x4f0000f2, reqid: 0x4f0000f2 });
    const st = allSteps(cfgOf('alice'), diffNode(cfgOf('alice'), o, { keys: ZERO_KEYS }));
    expect(lines(st.retire[0]!)).toEqual([`address del ${formatIPv4(gone)}/32 dev lo`]);
    expect(lines(st.drain[0]!)).toEqual([`xfrm state delete src ${formatIPv4(inbound.src)} dst ${formatIPv4(gone)} proto esp spi 0x4f0000f2`]);
  });

  test('a policy with a mark and extra selector fields is deleted by its full selector', () => {
    const o = structuredClone(heldObserved('or1'));
    const p = o.policies!.owned.find((x) => x.dir === 'fwd')!;
    o.policies!.owned.push({ ...p, src: parseCidr('100.64.1.201/32'), selExtra: ['dport', '443'], proto: 'tcp' as never, mark: '0x1/0xff', ifId: '0x7' });
    const ch = diffNode(cfgOf('or1'), o, { keys: ZERO_KEYS });
    expect(ch.map((c) => `${c.op} ${c.kind}`)).toEqual(['remove policy']);
    const [s] = stageSteps('retire', cfgOf('or1'), ch, ctx());
    expect(lines(s!)).toEqual([`xfrm policy delete src 100.64.1.201/32 dst ${formatCidr(p.dst)} proto tcp dport 443 dir fwd mark 0x1 mask 0xff if_id 0x7`]);
  });
});

describe('destroy: engine.removalChanges', () => {
  test.each([...UML_NODES])('%s: every onionctl object deleted, receiving SAs and chains last, no jump ever added', (node) => {
    const o = heldObserved(node);
    const ch = removalChanges(o);
    expect(ch.every((c) => c.op === 'remove')).toBe(true);
    // destroy pushes against an empty config: the node's own addresses are its interfaces and the lo addresses going away
    const cfg = emptyConfig(cfgOf(node));
    const own = ownOf(cfgOf(node));
    const st = allSteps(cfg, ch, ZERO_KEYS);
    expect({ receive: st.receive, install: st.install, configure: st.configure }).toEqual({ receive: [], install: [], configure: [] });
    expect(st.retire.map((x) => x.what)).toEqual(['ip -batch']);
    const il = lines(st.retire[0]!);
    const inbound = o.states!.owned.filter((x) => own(x.dst));
    const outbound = o.states!.owned.filter((x) => !own(x.dst));
    expect(inbound.length * outbound.length).toBeGreaterThan(0);
    expect(il).toHaveLength(outbound.length + o.policies!.owned.length + o.routes!.owned.length + o.addresses!.owned.length);
    expect(st.retire[0]!.secret).toBe(false);
    const blockLines = new Set(o.policies!.owned.filter((p) => p.action === 'block').map((p) => `xfrm policy delete src ${formatCidr(p.src)} dst ${formatCidr(p.dst)} dir ${p.dir}`));
    const kind = (l: string) => (blockLines.has(l) ? 'block' : l.startsWith('xfrm policy delete ') ? 'policy' : l.split(' ').slice(0, 2).join(' '));
    const order = il.map(kind);
    const want = ['policy', 'xfrm state', 'route del', 'address del', 'block'];
    // grouped, and the groups in the safe order
    expect(order).toEqual([...order].sort((a, b) => want.indexOf(a) - want.indexOf(b)));
    expect(order.filter((k) => k === 'block')).toHaveLength(blockLines.size);
    expect(order.filter((k) => k === 'policy')).toHaveLength(o.policies!.owned.length - blockLines.size);
    const del = (x: { src: number; dst: number; spi: number }) => `xfrm state delete src ${formatIPv4(x.src)} dst ${formatIPv4(x.dst)} proto esp spi ${hex32(x.spi)}`;
    expect(il.filter((l) => l.startsWith('xfrm state')).sort()).toEqual(outbound.map(del).sort());
    for (const r of o.routes!.owned) expect(il).toContain(`route del ${formatCidr(r.dst)} table main proto 79`);
    for (const a of o.addresses!.owned) expect(il).toContain(`address del ${formatIPv4(a.addr)}/32 dev lo`);

    // drain: the SAs this node receives through, then the firewall chains
    expect(st.drain.map((x) => x.what)).toEqual(['ip -batch', 'iptables-restore (remove chains)']);
    expect(lines(st.drain[0]!).sort()).toEqual(inbound.map(del).sort());
    const fw = st.drain[1]!;
    expect(fw.argv).toEqual(['iptables-restore', '--noflush']);
    const fl = lines(fw);
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
    // the foreign SAs recorded on or1 are never named
    for (const f of o.states!.foreign) expect(il.concat(lines(st.drain[0]!)).join('\n')).not.toContain(`spi 0x${f.spi.toString(16).padStart(8, '0')}`);
  });

  test('a chain hooked twice (a duplicated jump) is unhooked twice; the legacy variant is used when that is what the router runs', () => {
    const o = structuredClone(heldObserved('or1'));
    o.iptables!.owned.chains.find((c) => c.chain === 'ONIONCTL-FORWARD')!.hooks.push('FORWARD');
    const st = stageSteps('drain', emptyConfig(cfgOf('or1')), removalChanges(o), { ...ctx(ZERO_KEYS), iptables: { save: 'iptables-legacy-save', restore: 'iptables-legacy-restore' } });
    const fw = st.find((s) => s.what.startsWith('iptables-restore'))!;
    expect(fw.argv).toEqual(['iptables-legacy-restore', '--noflush']);
    expect(lines(fw).filter((l) => l === '-D FORWARD -m comment --comment onionctl -j ONIONCTL-FORWARD')).toHaveLength(2);
  });

  test('an nftables node: table ip onionctl deleted; foreign objects never named', () => {
    const k4 = k4Net();
    const o = hostObserved('r6', k4);
    expect(o.nft!.owned.chains.length).toBeGreaterThan(0);
    const ch = removalChanges(o);
    const st = allSteps(emptyConfig(k4Plan().configs.get('r6')!), ch, ZERO_KEYS, interfaceAddresses(k4));
    expect(st.install).toEqual([]);
    expect(st.configure).toEqual([]);
    const nft = [...st.retire, ...st.drain].filter((s) => s.argv[0] === 'nft');
    expect(nft).toHaveLength(1);
    expect(st.drain).toContain(nft[0]);
    expect(nft[0]!.stdin).toBe('table ip onionctl\ndelete table ip onionctl\n');
    const all = [...st.retire, ...st.drain].map((s) => s.stdin).join('\n');
    for (const foreign of ['10.1.0.0', '10.5.0.0', '10.20.0.0', '10.30.0.1', 'ADMIN', 'admin']) expect(all).not.toContain(foreign);
  });

  test('a node holding nothing of onionctl\'s gets no steps at all', () => {
    const ch = removalChanges(emptyObserved('or2', poolsOf(net)));
    expect(ch).toEqual([]);
    expect(allSteps(emptyConfig(cfgOf('or2')), ch)).toEqual({ receive: [], install: [], configure: [], retire: [], drain: [] });
  });
});

describe('refusals and key hygiene', () => {
  test('a replace of a state throws (an SA is never re-installed under its SPI)', () => {
    const cfg = structuredClone(cfgOf('or2'));
    cfg.states[0]!.replayWindow = 64;
    const ch = diffNode(cfg, heldObserved('or2'), { keys: ZERO_KEYS });
    expect(ch).toContainEqual(expect.objectContaining({ op: 'replace', kind: 'state', key: `esp ${formatIPv4(cfg.states[0]!.dst)} spi ${hex32(cfg.states[0]!.spi)}` }));
    // whichever end it is, the stage that would install it refuses
    expect(() => stageSteps('install', cfg, ch, ctx(ZERO_KEYS))).toThrow(/same SPI/);
    expect(() => stageSteps(ownOf(cfg)(cfg.states[0]!.dst) ? 'receive' : 'install', cfg, ch, ctx(ZERO_KEYS, cfg))).toThrow(/same SPI/);
    expect(() => stageSteps('configure', cfg, ch, ctx(ZERO_KEYS, cfg))).not.toThrow();
  });

  test('no step\'s argv (or description) holds a key, on any node, in any stage; only secret steps\' input does', () => {
    const keysHex = plannedKeysHex(plan.configs.values(), keys);
    expect(keysHex.length).toBeGreaterThan(10);
    let secretSteps = 0;
    for (const node of UML_NODES) {
      const cfg = cfgOf(node);
      for (const changes of [diffNode(cfg, emptyObserved(node, poolsOf(net), { sysctls: true }), { keys }), removalChanges(heldObserved(node))]) {
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
    // receive and install, on every node
    expect(secretSteps).toBe(2 * UML_NODES.length);
  });
});
