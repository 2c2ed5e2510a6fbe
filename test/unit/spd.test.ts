/**
 * The SPD builder (src/spd/build.ts): for every circuit, the policies, SAs, routes, sysctls and
 * SNAT on the client, each mix and the exit, as XFRM-FACTS.md describes them. Expectations are
 * derived here from the state (hops, A_ci, SAs) and the topology, not from buildConfigs.
 */
import { describe, expect, test } from '@jest/globals';
import { readFileSync } from 'node:fs';
import { KdfKeySource } from '../../src/keys/kdf.js';
import { PROFILES, innerMtu, mssFor, nestedMtu, type CryptoProfile } from '../../src/keys/profiles.js';
import { PRIORITY_BLOCK, PRIORITY_CIRCUIT, PRIORITY_NESTED, REPLAY_WINDOW, type NodeConfig, type XfrmPolicy, type XfrmTmpl } from '../../src/model/config.js';
import { REPLAY_WINDOW_OVERLAY, saOptions } from '../../src/keys/lifetimes.js';
import { ANY as ANY_CIDR, formatCidr, formatIPv4, parseCidr, parseIPv4, type Cidr } from '../../src/net/addr.js';
import { rngFactory } from '../../src/pathselect/rng.js';
import { computePlan, type Plan } from '../../src/plan/plan.js';
import { stateLine } from '../../src/render/render.js';
import { emptyState, type SaRecord, type State } from '../../src/state/model.js';
import type { Net } from '../../src/topology/net.js';
import { buildConfigs } from '../../src/spd/build.js';
import { TopologyError } from '../../src/topology/diagnostics.js';
import { parseBuildableTopology } from '../../src/pathselect/buildable.js';
import { auditState } from '../../src/audit/audit.js';
import { K2_YAML, K4_YAML, exampleNet, examplePath, netFromYaml } from '../helpers/net.js';

const SALT = '5a'.repeat(32);

function plan(net: Net, seed = 'spd'): Plan {
  return computePlan({ net, state: emptyState(SALT), rngFor: rngFactory(seed), now: '2024-01-01T00:00:00Z' });
}

const ip = formatIPv4;
const t = (x: XfrmTmpl) => `${ip(x.src)}>${ip(x.dst)}#${x.reqid.toString(16)}`;
const host = (a: number): Cidr => ({ base: a, len: 32 });
const sel = (p: XfrmPolicy) => `${formatCidr(p.src)} ${formatCidr(p.dst)}${p.proto ? ` ${p.proto}` : ''} ${p.dir}`;

/** The kernel's esp4 MTU formula, written out independently of profiles.ts. */
function kernelInner(mtu: number, iv: number, icv: number, block: number): number {
  const align = Math.max(4, Math.ceil(block / 4) * 4);
  return (Math.floor((mtu - (8 + iv + 20) - icv) / align) * align) - 2;
}

/** Checks one plan against the paper's scheme (XFRM-FACTS.md, "One working circuit"). */
function checkPlan(net: Net, p: Plan): void {
  const s: State = p.state;
  const cfg = (n: string): NodeConfig => {
    const c = p.configs.get(n);
    expect(c).toBeDefined();
    return c!;
  };
  const addr = (n: string) => net.nodes.get(n)!.underlay.addr;
  const linkSa = (from: string, to: string): SaRecord => {
    const l = Object.values(s.links).find((x) => (x.a === from && x.b === to) || (x.a === to && x.b === from));
    expect(l).toBeDefined();
    return l!.a === from ? l!.ab : l!.ba;
  };
  const ov = (from: string, to: string): XfrmTmpl => ({ src: addr(from), dst: addr(to), reqid: linkSa(from, to).reqid });
  const find = (node: string, src: Cidr, dst: Cidr, dir: XfrmPolicy['dir'], action: XfrmPolicy['action'] = 'allow') => {
    const hits = cfg(node).policies.filter(
      (x) => x.dir === dir && x.action === action && formatCidr(x.src) === formatCidr(src) && formatCidr(x.dst) === formatCidr(dst),
    );
    expect({ node, sel: `${formatCidr(src)} ${formatCidr(dst)} ${dir} ${action}`, n: hits.length }).toEqual({
      node,
      sel: `${formatCidr(src)} ${formatCidr(dst)} ${dir} ${action}`,
      n: 1,
    });
    return hits[0]!;
  };
  const expectTmpls = (pol: XfrmPolicy, want: XfrmTmpl[]) => expect({ sel: sel(pol), tmpls: pol.tmpls.map(t) }).toEqual({ sel: sel(pol), tmpls: want.map(t) });

  const expectedPolicies = new Map<string, number>();
  const expectedRoutes = new Map<string, number>();
  const bump = (m: Map<string, number>, n: string, by: number) => m.set(n, (m.get(n) ?? 0) + by);
  const profile = PROFILES[net.crypto];

  for (const def of net.circuits) {
    const c = s.circuits[def.name]!;
    const k = c.hops.length;
    expect(k).toBe(def.hops);
    const A = c.addrs.map(parseIPv4);
    const dests = c.to.map(parseCidr);
    const client = c.client;
    const hop = (i: number) => c.hops[i - 1]!; // 1-based, as in the paper
    const tf = (i: number): XfrmTmpl => ({ src: A[i - 1]!, dst: addr(hop(i)), reqid: c.fwd[i - 1]!.reqid });
    const tr = (i: number): XfrmTmpl => ({ src: addr(hop(i)), dst: A[i - 1]!, reqid: c.rev[i - 1]!.reqid });
    const entry = hop(1);

    // ---- client
    const cc = cfg(client);
    const outT: XfrmTmpl[] = [];
    const inT: XfrmTmpl[] = [];
    for (let i = k; i >= 1; i--) {
      outT.push(tf(i));
      inT.push(tr(i));
    }
    outT.push(ov(client, entry));
    inT.push(ov(entry, client));
    const clientMtu = net.clients.get(client)!.underlay.mtu;
    const mtu = nestedMtu(profile, clientMtu, k + 1);
    let km = clientMtu;
    for (let i = 0; i < k + 1; i++) km = kernelInner(km, profile.ivLen, profile.icvLen, profile.blockSize);
    expect(mtu).toBe(km);
    for (const d of dests) {
      const out = find(client, host(A[k - 1]!), d, 'out');
      expect(out.priority).toBe(PRIORITY_CIRCUIT);
      expect(out.tmpls).toHaveLength(k + 1);
      expectTmpls(out, outT);
      const inn = find(client, d, host(A[k - 1]!), 'in');
      expect(inn.priority).toBe(PRIORITY_CIRCUIT);
      expectTmpls(inn, inT);
      const block = find(client, { base: 0, len: 0 }, d, 'out', 'block');
      expect(block.tmpls).toEqual([]);
      expect(block.priority).toBe(PRIORITY_BLOCK);
      expect(block.priority).toBeGreaterThan(out.priority); // larger number = lower precedence
      const routes = cc.routes.filter((r) => formatCidr(r.dst) === formatCidr(d));
      expect(routes).toHaveLength(1);
      expect(routes[0]).toMatchObject({ via: addr(entry), dev: net.clients.get(client)!.underlay.name, src: A[k - 1], mtu, advmss: mtu - 40 });
      bump(expectedPolicies, client, 3);
      bump(expectedRoutes, client, 1);
    }
    // nested reply layers (kernels with xfrm_interface check each ESP packet that already carries
    // a secpath, docs/kernels.md): before removing hop j's reverse layer, ESP from OR_j to A_cj
    // that came through the overlay and the reverse layers of hops 1..j-1
    for (let j = 1; j <= k; j++) {
      const nested = find(client, host(addr(hop(j))), host(A[j - 1]!), 'in');
      expect(nested.proto).toBe('esp');
      expect(nested.priority).toBe(PRIORITY_NESTED);
      expect(nested.priority).toBeLessThan(PRIORITY_CIRCUIT); // ahead of the circuit's own in policy
      const want: XfrmTmpl[] = [];
      for (let i = j - 1; i >= 1; i--) want.push(tr(i));
      want.push(ov(entry, client));
      expectTmpls(nested, want);
    }
    bump(expectedPolicies, client, k);
    // at every hop (mixes and exit): ESP from A_ci to OR_i that came through the overlay from prev
    for (let i = 1; i <= k; i++) {
      const me = hop(i);
      const prev = i === 1 ? client : hop(i - 1);
      const nested = find(me, host(A[i - 1]!), host(addr(me)), 'in');
      expect(nested.proto).toBe('esp');
      expect(nested.priority).toBe(PRIORITY_NESTED);
      expectTmpls(nested, [ov(prev, me)]);
      bump(expectedPolicies, me, 1);
    }
    expect(cc.addresses.filter((a) => a.comment.startsWith(`circuit ${def.name}:`)).map((a) => [ip(a.addr), a.dev])).toEqual(
      c.addrs.map((a) => [a, 'lo']),
    );

    // ---- mixes
    for (let i = 1; i < k; i++) {
      const me = hop(i);
      const prev = i === 1 ? client : hop(i - 1);
      const next = hop(i + 1);
      const fwdSrc = host(A[i]!); // A_c(i+1)
      const nextH = host(addr(next));
      const f = find(me, fwdSrc, nextH, 'fwd');
      expect(f.proto).toBe('esp');
      expectTmpls(f, [tf(i), ov(prev, me)]);
      const o = find(me, fwdSrc, nextH, 'out');
      expect(o.proto).toBe('esp');
      expectTmpls(o, [ov(me, next)]);
      const rf = find(me, nextH, fwdSrc, 'fwd');
      expect(rf.proto).toBe('esp');
      expectTmpls(rf, [ov(next, me)]);
      const ro = find(me, nextH, fwdSrc, 'out');
      expect(ro.proto).toBe('esp');
      expectTmpls(ro, [tr(i), ov(me, prev)]);
      for (const x of [f, o, rf, ro]) expect(x.priority).toBe(PRIORITY_CIRCUIT);
      bump(expectedPolicies, me, 4);
      const dev = net.routers.get(me)!.underlay.name;
      for (const a of [A[i - 1]!, A[i]!]) {
        const r = cfg(me).routes.filter((x) => formatCidr(x.dst) === formatCidr(host(a)));
        expect(r).toHaveLength(1);
        expect(r[0]).toMatchObject({ via: addr(prev), dev });
        expect(r[0]!.src).toBeUndefined();
      }
      bump(expectedRoutes, me, 2);
    }

    // ---- exit
    const exitName = hop(k);
    const exit = net.routers.get(exitName)!;
    expect(exit.exit).toBeDefined();
    const prev = k === 1 ? client : hop(k - 1);
    for (const d of dests) {
      expectTmpls(find(exitName, host(A[k - 1]!), d, 'fwd'), [tf(k), ov(prev, exitName)]);
      expectTmpls(find(exitName, d, host(A[k - 1]!), 'out'), [tr(k), ov(exitName, prev)]);
      bump(expectedPolicies, exitName, 2);
    }
    const er = cfg(exitName).routes.filter((x) => formatCidr(x.dst) === formatCidr(host(A[k - 1]!)));
    expect(er).toHaveLength(1);
    expect(er[0]).toMatchObject({ via: addr(prev), dev: exit.underlay.name });
    bump(expectedRoutes, exitName, 1);
    const snat = cfg(exitName).firewall.snat.filter((x) => formatCidr(x.src) === formatCidr(host(A[k - 1]!)));
    expect(snat).toHaveLength(1);
    expect(snat[0]).toMatchObject({ outIf: exit.exit!.iface.name, to: exit.exit!.addr });
    expect(cfg(exitName).firewall.backend).toBe(exit.exit!.nat);
  }

  // no policies or routes beyond the ones the scheme calls for
  for (const [n, c] of p.configs) {
    expect({ n, policies: c.policies.length }).toEqual({ n, policies: expectedPolicies.get(n) ?? 0 });
    expect({ n, routes: c.routes.length }).toEqual({ n, routes: expectedRoutes.get(n) ?? 0 });
  }

  // sysctls on the routers that carry circuits, none on clients
  const onCircuit = new Set(Object.values(s.circuits).flatMap((c) => c.hops));
  for (const [n, c] of p.configs) {
    const r = net.routers.get(n);
    if (r && onCircuit.has(n)) {
      expect(c.sysctls).toEqual(
        expect.arrayContaining([
          { key: 'net.ipv4.ip_forward', value: '1' },
          { key: 'net.ipv4.conf.all.rp_filter', value: '2' },
          { key: `net.ipv4.conf.${r.underlay.name}.rp_filter`, value: '2' },
        ]),
      );
    } else expect({ n, sysctls: c.sysctls }).toEqual({ n, sysctls: [] });
  }

  // every SA on exactly its two end-points, identical on both
  const bySpi = new Map<number, { node: string; st: NodeConfig['states'][number] }[]>();
  for (const [n, c] of p.configs) {
    for (const st of c.states) bySpi.set(st.spi, [...(bySpi.get(st.spi) ?? []), { node: n, st }]);
  }
  const totalSas = Object.keys(s.links).length * 2 + Object.values(s.circuits).reduce((a, c) => a + 2 * c.hops.length, 0);
  expect(bySpi.size).toBe(totalSas);
  const owned = (n: string) => new Set([addr(n), ...p.configs.get(n)!.addresses.map((a) => a.addr)]);
  for (const [spi, list] of bySpi) {
    expect({ spi, nodes: list.length }).toEqual({ spi, nodes: 2 });
    const [a, b] = list as [(typeof list)[0], (typeof list)[0]];
    expect(a.node).not.toBe(b.node);
    expect(a.st).toEqual(b.st);
    expect(a.st.reqid).toBe(spi); // one counter each, moved together: they stay equal from a fresh state
    // keys/lifetimes.ts: telescope SAs 32 packets without ESN, overlay SAs ESN with 128
    expect(a.st).toMatchObject(a.st.kind === 'overlay' ? { replayWindow: REPLAY_WINDOW_OVERLAY, esn: true } : { replayWindow: REPLAY_WINDOW, esn: false });
    expect(a.st.lifetime).toEqual(saOptions(a.st.kind, net.crypto).lifetime);
    expect(a.st.kind).toBe(a.st.key.id.startsWith('link:') ? 'overlay' : 'telescope');
    for (const { node, st } of list) {
      const mine = owned(node);
      expect({ node, spi, endpoint: mine.has(st.src) || mine.has(st.dst) }).toEqual({ node, spi, endpoint: true });
    }
  }
  // every template refers to an SA installed on that node with the same src/dst
  for (const [n, c] of p.configs) {
    const sas = new Set(c.states.map((st) => `${ip(st.src)}>${ip(st.dst)}#${st.reqid.toString(16)}`));
    for (const pol of c.policies) for (const x of pol.tmpls) expect({ n, tmpl: t(x), installed: sas.has(t(x)) }).toEqual({ n, tmpl: t(x), installed: true });
  }
}

describe('SPD on examples/three-mixes.yaml', () => {
  const net = exampleNet('three-mixes.yaml');
  const p = plan(net);

  test('follows the scheme on every node', () => checkPlan(net, p));

  test('the concrete configuration of the quick-start network', () => {
    const c = p.state.circuits.web!;
    expect(c.hops).toEqual(['or1', 'or2', 'or3']);
    expect(c.addrs).toEqual(['100.64.1.1', '100.64.2.1', '100.64.3.1']);
    const alice = p.configs.get('alice')!;
    expect(alice.policies.map(sel)).toEqual([
      '0.0.0.0/0 203.0.113.80/32 out',
      '100.64.3.1/32 203.0.113.80/32 out',
      '203.0.113.80/32 100.64.3.1/32 in',
      // the nested reply layers: ESP from each mix to its A_ci
      '198.51.100.11/32 100.64.1.1/32 esp in',
      '198.51.100.12/32 100.64.2.1/32 esp in',
      '198.51.100.13/32 100.64.3.1/32 esp in',
    ]);
    expect(alice.policies.slice(3).map((x) => x.tmpls.map((y) => `${ip(y.src)}>${ip(y.dst)}`))).toEqual([
      ['198.51.100.11>198.51.100.10'],
      ['198.51.100.11>100.64.1.1', '198.51.100.11>198.51.100.10'],
      ['198.51.100.12>100.64.2.1', '198.51.100.11>100.64.1.1', '198.51.100.11>198.51.100.10'],
    ]);
    expect(p.configs.get('or2')!.policies.filter((x) => x.priority === PRIORITY_NESTED).map((x) => [sel(x), x.tmpls.map((y) => `${ip(y.src)}>${ip(y.dst)}`)])).toEqual([
      ['100.64.2.1/32 198.51.100.12/32 esp in', ['198.51.100.11>198.51.100.12']],
    ]);
    expect(alice.policies[1]!.tmpls.map((x) => `${ip(x.src)}>${ip(x.dst)}`)).toEqual([
      '100.64.3.1>198.51.100.13',
      '100.64.2.1>198.51.100.12',
      '100.64.1.1>198.51.100.11',
      '198.51.100.10>198.51.100.11',
    ]);
    expect(alice.routes).toEqual([
      expect.objectContaining({ dst: parseCidr('203.0.113.80/32'), via: parseIPv4('198.51.100.11'), dev: 'eth0', src: parseIPv4('100.64.3.1'), mtu: 1278, advmss: 1238 }),
    ]);
    expect(p.configs.get('or2')!.routes.map((r) => `${formatCidr(r.dst)} via ${ip(r.via)}`)).toEqual([
      '100.64.2.1/32 via 198.51.100.11',
      '100.64.3.1/32 via 198.51.100.11',
    ]);
    expect(p.configs.get('or3')!.firewall.snat).toEqual([
      expect.objectContaining({ src: parseCidr('100.64.3.1/32'), outIf: 'eth1', to: parseIPv4('203.0.113.1') }),
    ]);
    // alice: 3 circuit SAs each way + the overlay pair to or1
    expect(alice.states).toHaveLength(8);
    expect(p.configs.get('or1')!.states).toHaveLength(6); // overlays to alice and or2, own telescope pair
    expect(p.configs.get('or3')!.states).toHaveLength(4);
    expect(p.configs.get('alice')!.sysctls).toEqual([]);
  });

  test('the exit forwards only what its allow list admits and drops the rest of the circuit', () => {
    const fw = p.configs.get('or3')!.firewall.forward;
    const accepts = fw.filter((r) => r.action === 'accept' && !r.established);
    expect(accepts.map((r) => [formatCidr(r.src), formatCidr(r.dst), r.proto, r.ports ?? null])).toEqual([
      ['100.64.3.1/32', '203.0.113.80/32', 'tcp', [80, 443]],
      ['100.64.3.1/32', '203.0.113.80/32', 'icmp', null],
    ]);
    const drop = fw.findIndex((r) => r.action === 'drop');
    expect(fw[drop]).toMatchObject({ src: parseCidr('100.64.3.1/32'), dst: { base: 0, len: 0 }, proto: 'any' });
    expect(drop).toBeGreaterThan(fw.indexOf(accepts[accepts.length - 1]!));
    // per overlay link to the previous hop (or2): replies into the circuits and the later packets
    // of connections already let out come first; nothing else enters the circuits (last rule)
    const ov = (from: string, to: string) => p.state.links[[from, to].sort().join('~')]!;
    const reqid = (from: string, to: string) => {
      const l = ov(from, to);
      return (l.a === from ? l.ab : l.ba).reqid;
    };
    expect(fw.filter((r) => r.established)).toEqual([
      expect.objectContaining({ src: ANY_CIDR, dst: ANY_CIDR, ipsecOut: reqid('or3', 'or2'), action: 'accept' }),
      expect.objectContaining({ src: ANY_CIDR, dst: ANY_CIDR, ipsecIn: reqid('or2', 'or3'), action: 'accept' }),
    ]);
    expect(fw.slice(0, 2).every((r) => r.established)).toBe(true);
    expect(fw[fw.length - 1]).toEqual(expect.objectContaining({ src: ANY_CIDR, dst: ANY_CIDR, proto: 'any', ipsecOut: reqid('or3', 'or2'), action: 'drop' }));
    expect(fw[fw.length - 1]!.established).toBeUndefined();
  });

  test('a mix forwards ESP from one overlay link into another, one rule per pair of links', () => {
    const l = (a: string, b: string) => {
      const x = p.state.links[[a, b].sort().join('~')]!;
      return (x.a === a ? x.ab : x.ba).reqid;
    };
    expect(p.configs.get('or1')!.firewall.forward).toEqual([
      { src: ANY_CIDR, dst: ANY_CIDR, proto: 'esp', ipsecIn: l('alice', 'or1'), ipsecOut: l('or1', 'or2'), action: 'accept', comment: 'circuits alice -> or2 (overlay to overlay)' },
      { src: ANY_CIDR, dst: ANY_CIDR, proto: 'esp', ipsecIn: l('or2', 'or1'), ipsecOut: l('or1', 'alice'), action: 'accept', comment: 'circuits or2 -> alice (overlay to overlay)' },
    ]);
  });

  test('the example file still says what the test assumes', () => {
    expect(readFileSync(examplePath('three-mixes.yaml'), 'utf8')).toMatch(/hops: 3/);
  });
});

describe('SPD with k=2 (two destinations)', () => {
  const net = netFromYaml(K2_YAML);
  const p = plan(net);
  test('follows the scheme on every node', () => checkPlan(net, p));
  test('one out, one in and one block policy per destination; 3 layers -> inner MTU 1334', () => {
    const alice = p.configs.get('alice')!;
    expect(alice.policies.filter((x) => x.dir === 'out' && x.action === 'allow')).toHaveLength(2);
    expect(alice.policies.filter((x) => x.dir === 'out' && x.action === 'block')).toHaveLength(2);
    expect(alice.policies.filter((x) => x.dir === 'in' && x.priority === PRIORITY_CIRCUIT)).toHaveLength(2);
    expect(alice.policies.filter((x) => x.dir === 'in' && x.priority === PRIORITY_NESTED)).toHaveLength(2); // one per hop
    for (const x of alice.policies.filter((y) => y.action === 'allow' && y.priority === PRIORITY_CIRCUIT)) expect(x.tmpls).toHaveLength(3);
    expect(alice.routes.map((r) => [r.mtu, r.advmss])).toEqual([
      [1334, 1294],
      [1334, 1294],
    ]);
    // or1 is a mix (4 policies), or2 the exit (2 per destination); each one nested in policy
    expect(p.configs.get('or1')!.policies).toHaveLength(5);
    expect(p.configs.get('or2')!.policies).toHaveLength(5);
  });
  test('the exit splits each destination by the allow rules that overlap it', () => {
    const accepts = p.configs.get('or2')!.firewall.forward.filter((r) => r.action === 'accept' && !r.established);
    expect(accepts.map((r) => `${formatCidr(r.dst)} ${r.proto}`)).toEqual(['203.0.113.80/32 tcp', '192.0.2.0/28 any']);
    expect(accepts[0]!.ports).toEqual([80, 443, '8000-8080']);
  });
});

describe('SPD with k=4 (two clients, shared routers, an nftables exit)', () => {
  for (const seed of ['k4-a', 'k4-b', 'k4-c', 'k4-d']) {
    test(`follows the scheme on every node (seed ${seed})`, () => {
      const net = netFromYaml(K4_YAML);
      const p = plan(net, seed);
      expect(Object.values(p.state.circuits).every((c) => c.hops.length === 4)).toBe(true);
      checkPlan(net, p);
    });
  }
  test('5 GCM layers: 1222 on a 1500 underlay, 1122 on bob\'s 1400', () => {
    const net = netFromYaml(K4_YAML);
    const p = plan(net);
    expect(new Set(p.configs.get('alice')!.routes.map((r) => r.mtu))).toEqual(new Set([1222]));
    expect(p.configs.get('bob')!.routes.map((r) => [r.mtu, r.advmss])).toEqual([[1122, 1082]]);
    for (const x of p.configs.get('alice')!.policies.filter((y) => y.action === 'allow' && y.priority === PRIORITY_CIRCUIT)) expect(x.tmpls).toHaveLength(5);
  });
});

describe('crypto profiles', () => {
  test('inner MTU follows the kernel formula: 1278 for 4 GCM layers over 1500', () => {
    const gcm = PROFILES['aes-gcm'];
    expect(nestedMtu(gcm, 1500, 4)).toBe(1278);
    expect([1, 2, 3, 4, 5].map((n) => nestedMtu(gcm, 1500, n))).toEqual([1446, 1390, 1334, 1278, 1222]);
    expect(innerMtu(gcm, 1500)).toBe(1446);
    expect(mssFor(1278)).toBe(1238);
    const cbc = PROFILES['aes-cbc-hmac-sha1'];
    // 16-byte IV, 12-byte ICV, payload aligned to the 16-byte block
    expect([1, 2, 3, 4].map((n) => nestedMtu(cbc, 1500, n))).toEqual([1438, 1374, 1310, 1246]);
    for (const p of [gcm, cbc] as CryptoProfile[]) {
      for (let mtu = 1280; mtu <= 1500; mtu += 7) expect(innerMtu(p, mtu)).toBe(kernelInner(mtu, p.ivLen, p.icvLen, p.blockSize));
    }
  });

  test('aes-cbc-hmac-sha1 renders enc cbc(aes) + auth-trunc hmac(sha1) 96, with 16- and 20-byte keys', () => {
    const yaml = readFileSync(examplePath('three-mixes.yaml'), 'utf8').replace('crypto: aes-gcm', 'crypto: aes-cbc-hmac-sha1');
    const net = netFromYaml(yaml);
    expect(net.crypto).toBe('aes-cbc-hmac-sha1');
    const p = plan(net);
    checkPlan(net, p);
    expect(p.configs.get('alice')!.routes[0]).toMatchObject({ mtu: 1246, advmss: 1206 });
    const keys = new KdfKeySource(Buffer.alloc(32, 7), SALT);
    for (const st of p.configs.get('or2')!.states) {
      expect(st.profile).toBe('aes-cbc-hmac-sha1');
      const key = keys.key(st.key, 36);
      const secret = stateLine(st, keys, 'secret');
      expect(secret).toMatch(/ mode tunnel replay-window (32|128 flag esn) enc cbc\(aes\) 0x[0-9a-f]{32} auth-trunc hmac\(sha1\) 0x[0-9a-f]{40} 96 limit /);
      expect(secret).toContain(`enc cbc(aes) 0x${key.subarray(0, 16).toString('hex')} auth-trunc hmac(sha1) 0x${key.subarray(16).toString('hex')} 96`);
      expect(stateLine(st, keys, 'redacted')).toMatch(/ enc cbc\(aes\) redacted:fp=[0-9a-f]{12} auth-trunc hmac\(sha1\) redacted:fp=[0-9a-f]{12} 96 limit /);
    }
  });

  test('aes-gcm renders rfc4106(gcm(aes)) with a 36-byte key and a 128-bit ICV', () => {
    const net = exampleNet('three-mixes.yaml');
    const p = plan(net);
    const keys = new KdfKeySource(Buffer.alloc(32, 7), SALT);
    const st = p.configs.get('or1')!.states[0]!;
    expect(stateLine(st, keys, 'secret')).toMatch(/ aead rfc4106\(gcm\(aes\)\) 0x[0-9a-f]{72} 128 limit /);
  });
});

describe('buildConfigs refuses an inconsistent state', () => {
  test('a circuit of the topology missing from the state', () => {
    const net = exampleNet('three-mixes.yaml');
    const p = plan(net);
    const s = structuredClone(p.state);
    delete s.circuits.web;
    expect(() => buildConfigs(net, s)).toThrow(/circuit web has no path in the state/);
  });
  test('an overlay link a circuit needs missing from the state', () => {
    const p = plan(exampleNet('three-mixes.yaml'));
    const s = structuredClone(p.state);
    delete s.links['or1~or2'];
    expect(() => buildConfigs(exampleNet('three-mixes.yaml'), s)).toThrow(/no overlay link or1 - or2/);
  });
});

describe('TFC padding (circuit option tfcpad)', () => {
  const base = readFileSync(examplePath('three-mixes.yaml'), 'utf8');
  /** three-mixes with `extra` lines added to circuit web (after its `to:` line) */
  const withWeb = (extra: string) => base.replace(/^(\s*)to: \[203\.0\.113\.80\/32\]$/m, (_, ind: string) => `${ind}to: [203.0.113.80/32]\n${extra.split('\n').map((l) => ind + l).join('\n')}`);
  const pads = (p: Plan, node: string) =>
    Object.fromEntries(p.configs.get(node)!.states.map((s) => [s.comment, s.tfcpad ?? 0]));
  const diag = (text: string) => {
    try {
      parseBuildableTopology(text, 't.yaml');
    } catch (e) {
      if (e instanceof TopologyError) return e.diagnostics.map((d) => `${d.line}:${d.col}: ${d.message}`);
      throw e;
    }
    throw new Error('accepted');
  };
  const lineOf = (text: string, needle: string) => text.split('\n').findIndex((l) => l.includes(needle)) + 1;

  test('telescope layers by number: hops 1 and 3, both directions, on both ends; rendered as tfcpad', () => {
    const net = netFromYaml(withWeb('tfcpad: { size: 900, layers: [3, 1] }'));
    expect(net.circuits[0]!.tfcpad).toEqual({ size: 900, telescope: [1, 3], overlay: false });
    const p = plan(net);
    checkPlan(net, p);
    expect(pads(p, 'alice')).toEqual({
      'overlay alice->or1': 0,
      'overlay or1->alice': 0,
      'circuit web hop 1 forward': 900,
      'circuit web hop 1 reverse': 900,
      'circuit web hop 2 forward': 0,
      'circuit web hop 2 reverse': 0,
      'circuit web hop 3 forward': 900,
      'circuit web hop 3 reverse': 900,
    });
    expect(Object.values(pads(p, 'or2'))).toEqual([0, 0, 0, 0, 0, 0]);
    expect(pads(p, 'or3')).toMatchObject({ 'circuit web hop 3 forward': 900, 'circuit web hop 3 reverse': 900, 'overlay or2->or3': 0 });
    const keys = new KdfKeySource(Buffer.alloc(32, 7), SALT);
    for (const st of p.configs.get('or1')!.states) {
      const line = stateLine(st, keys, 'redacted');
      if (st.tfcpad) expect(line).toMatch(/ limit packet-hard 4026531840 tfcpad 900$/);
      else expect(line).not.toContain('tfcpad');
    }
  });

  test('"overlay" pads the overlay links of the path; "telescope" (the default) every telescope layer; "all" both', () => {
    const ov = plan(netFromYaml(withWeb('tfcpad: { size: 700, layers: overlay }')));
    for (const n of ['alice', 'or1', 'or2', 'or3']) {
      for (const [comment, pad] of Object.entries(pads(ov, n))) expect({ n, comment, pad }).toEqual({ n, comment, pad: comment.startsWith('overlay') ? 700 : 0 });
    }
    const tel = plan(netFromYaml(withWeb('tfcpad: { size: 700 }')));
    for (const [comment, pad] of Object.entries(pads(tel, 'alice'))) expect({ comment, pad }).toEqual({ comment, pad: comment.startsWith('overlay') ? 0 : 700 });
    const all = plan(netFromYaml(withWeb('tfcpad: { size: 700, layers: all }')));
    for (const n of ['alice', 'or1', 'or2', 'or3']) expect(Object.values(pads(all, n)).every((x) => x === 700)).toBe(true);
  });

  test('an overlay link shared by two circuits gets the larger size; a circuit without tfcpad pads nothing of its own', () => {
    const text = withWeb('tfcpad: { size: 600, layers: overlay }').replace(
      /^circuits:\n/m,
      'circuits:\n  - name: big\n    client: alice\n    to: [203.0.113.81/32]\n    tfcpad: { size: 1100, layers: all }\n  - name: plain\n    client: alice\n    to: [203.0.113.82/32]\n',
    );
    const p = plan(netFromYaml(text));
    const a = pads(p, 'alice');
    expect(a['overlay alice->or1']).toBe(1100);
    expect(a['overlay or1->alice']).toBe(1100);
    expect(pads(p, 'or2')['overlay or2->or3']).toBe(1100);
    expect(a['circuit big hop 2 forward']).toBe(1100);
    expect(a['circuit web hop 2 forward']).toBe(0);
    expect(a['circuit plain hop 1 reverse']).toBe(0);
  });

  test('located errors: layer numbers beyond k, listed twice, size out of range, empty list, unknown keys', () => {
    /** line:col of the n-th occurrence of `needle` on the line holding `lineNeedle` */
    const at = (text: string, lineNeedle: string, needle: string, n = 1) => {
      const no = lineOf(text, lineNeedle);
      const l = text.split('\n')[no - 1]!;
      let col = -1;
      for (let i = 0; i < n; i++) col = l.indexOf(needle, col + 1);
      return `${no}:${col + 1}`;
    };
    const t1 = withWeb('tfcpad:\n  size: 600\n  layers: [1, 4, 1]');
    expect(diag(t1)).toEqual([
      `${at(t1, 'layers: [1, 4, 1]', '4')}: circuits[0].tfcpad.layers[1]: circuit "web" has 3 telescope layers (1 = the entry's, 3 = the exit's); there is no layer 4`,
      `${at(t1, 'layers: [1, 4, 1]', '1', 2)}: circuits[0].tfcpad.layers[2]: layer 1 is listed twice`,
    ]);
    // k comes from the circuit when it sets hops
    const k2 = withWeb('hops: 2\ntfcpad: { size: 600, layers: [2] }').replace(/^links:\n/m, 'links:\n  - [or1, or3]\n');
    expect(netFromYaml(k2).circuits[0]!.tfcpad).toEqual({ size: 600, telescope: [2], overlay: false });
    const t2 = withWeb('hops: 2\ntfcpad: { size: 600, layers: [3] }');
    expect(diag(t2)).toEqual([`${at(t2, 'layers: [3]', '3')}: circuits[0].tfcpad.layers[0]: circuit "web" has 2 telescope layers (1 = the entry's, 2 = the exit's); there is no layer 3`]);
    const t3 = withWeb('tfcpad: { size: 20 }');
    expect(diag(t3)).toEqual([`${at(t3, 'size: 20', '20')}: circuits[0].tfcpad.size: tfcpad size must be at least 64 bytes`]);
    expect(diag(withWeb('tfcpad: { size: 70000 }'))[0]).toMatch(/tfcpad size must be at most 65535 bytes/);
    expect(diag(withWeb('tfcpad: { size: 600, layers: [] }'))[0]).toMatch(/:\d+: /);
    expect(diag(withWeb('tfcpad: { size: 600, layers: [0] }'))[0]).toMatch(/telescope layers are numbered from 1/);
    expect(diag(withWeb('tfcpad: { size: 600, layers: some }'))).toHaveLength(1);
    expect(diag(withWeb('tfcpad: { size: 600, pad: 3 }'))[0]).toMatch(/pad/);
    expect(diag(withWeb('tfcpad: { layers: all }'))).toHaveLength(1);
  });
});

describe('nested dir-in policies (what kernels with xfrm_interface check) for every k and both crypto profiles', () => {
  const nets: [string, string][] = [
    ['k=2', K2_YAML],
    ['k=3', readFileSync(examplePath('three-mixes.yaml'), 'utf8')],
    ['k=4', K4_YAML],
  ];
  for (const [k, yaml] of nets) {
    for (const crypto of ['aes-gcm', 'aes-cbc-hmac-sha1'] as const) {
      test(`${k}, ${crypto}: the scheme holds on every node and the audit walk delivers both ways through the nested checks`, () => {
        const net = netFromYaml(yaml.replace('crypto: aes-gcm', `crypto: ${crypto}`));
        expect(net.crypto).toBe(crypto);
        const p = plan(net, `nested-${k}-${crypto}`);
        checkPlan(net, p);
        const nested = [...p.configs.values()].flatMap((c) => c.policies.filter((x) => x.priority === PRIORITY_NESTED));
        // one per hop at the routers and one per hop at the client, for every circuit
        const hops = Object.values(p.state.circuits).reduce((n, c) => n + c.hops.length, 0);
        expect(nested).toHaveLength(2 * hops);
        const delivery = auditState(net, p.state, p.configs).invariants.find((i) => i.name === 'delivery')!;
        expect(delivery.violations).toEqual([]);
      });
    }
  }
});


describe('firewall rules do not grow with the circuits a mix carries (issue 13 point 2)', () => {
  // three-mixes with n more circuits of alice, each to its own 198.18.x.y (wider pools, and an
  // exit that allows UDP there): what bench/mix-scale loads into the lab
  const withCircuits = (n: number) => {
    let y = readFileSync(examplePath('three-mixes.yaml'), 'utf8')
      .replace('100.64.1.0/24', '100.100.0.0/16')
      .replace('100.64.2.0/24', '100.101.0.0/16')
      .replace('100.64.3.0/24', '100.102.0.0/16')
      .replace(/(\n {10}proto: icmp\n)/, '$1        - to: 198.18.0.0/15\n          proto: udp\n');
    for (let i = 0; i < n; i++) y += `  - name: bg${i}\n    client: alice\n    to: [198.18.${i >> 8}.${i & 255}/32]\n`;
    return plan(netFromYaml(y), 'grow');
  };
  const small = withCircuits(10);
  const big = withCircuits(300);
  const fw = (p: Plan, n: string) => p.configs.get(n)!.firewall.forward;

  test('a mix: the same rules for 11 and 301 circuits (before: two per circuit, walked by every packet)', () => {
    for (const m of ['or1', 'or2']) {
      expect(fw(big, m)).toHaveLength(2);
      expect(fw(big, m).map((r) => r.comment)).toEqual(fw(small, m).map((r) => r.comment));
      expect(fw(big, m).every((r) => r.src.len === 0 && r.dst.len === 0 && r.ipsecIn !== undefined && r.ipsecOut !== undefined)).toBe(true);
    }
  });

  test('the exit: per circuit only what its exit policy needs for a first packet; the link rules that every later packet meets first stay 3', () => {
    const perCircuit = (p: Plan) => fw(p, 'or3').filter((r) => r.src.len === 32);
    // web: tcp + icmp + drop; every bg circuit: udp + drop
    expect(perCircuit(big)).toHaveLength(3 + 300 * 2);
    expect(fw(big, 'or3')).toHaveLength(perCircuit(big).length + 3);
    expect(fw(big, 'or3').filter((r) => r.src.len === 0)).toEqual(fw(small, 'or3').filter((r) => r.src.len === 0));
    // no per-circuit rule is ever met by a reply or by a later packet of a connection
    expect(perCircuit(big).some((r) => r.established)).toBe(false);
  });
});
