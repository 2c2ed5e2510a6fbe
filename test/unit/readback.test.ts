/**
 * Read-back parsers (src/readback/) on REAL recorded output (test/fixtures/readback/README.md):
 * `ip [-s] xfrm state` from the UML lab (keys replaced by zeros), `ip xfrm policy`, routes,
 * addresses, iptables-save and nft from the lab and from this host's kernel; key hygiene; and
 * the split into onionctl's objects and foreign ones.
 */
import { describe, expect, test } from '@jest/globals';
import { fingerprint } from '../../src/keys/kdf.js';
import { PRIORITY_BAND, ROUTE_PROTO } from '../../src/model/config.js';
import { formatCidr, formatIPv4, parseCidr, parseIPv4 } from '../../src/net/addr.js';
import {
  ReadbackError,
  iptablesFilterRule,
  nftFilterRule,
  observeNode,
  parseAddresses,
  parseIptablesSave,
  parseNftRuleset,
  parseRoutes,
  parseXfrmPolicies,
  parseXfrmStat,
  parseXfrmStates,
  shellWords,
  xfrmTimeSeconds,
  type XfrmStateRecord,
} from '../../src/readback/index.js';
import { iptablesRule } from '../../src/render/render.js';
import { REQID_BASE, REQID_LAST, SPI_BASE, SPI_LAST } from '../../src/state/model.js';
import { saOptions } from '../../src/keys/lifetimes.js';
import { PAIR_CASES, SA_SETS, padPlan, saFixture, saObserved, type SaSet } from '../helpers/sa.js';
import { FIXTURES, fixture, fixtureFiles, hostObserved, k4Net, k4Plan, labNet, labPlan, umlObserved, UML_NODES } from '../helpers/readback.js';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';

const ZERO_FP_36 = fingerprint(Buffer.alloc(36));
/** what `ip -s` adds: counters and the lifetime config */
const withoutCounters = (r: XfrmStateRecord) => {
  const { counters: _c, lifetime: _l, ...rest } = r;
  return rest;
};

describe('fixtures', () => {
  test('the README says the keys are fake, and every key in every fixture is zeros', () => {
    expect(readFileSync(path.join(FIXTURES, 'README.md'), 'utf8')).toMatch(/THE KEYS IN THESE FILES ARE FAKE/);
    let keys = 0;
    for (const f of fixtureFiles('uml-6.1')) {
      for (const m of f.text.matchAll(/^\s*(?:aead|enc|auth|auth-trunc|comp)\s+\S+\s+(0x\S+)/gm)) {
        keys++;
        expect({ file: `${f.node}/${f.file}`, key: m[1] }).toEqual({ file: `${f.node}/${f.file}`, key: expect.stringMatching(/^0x(00)+$/) });
      }
      // nothing that looks like a key anywhere else either
      for (const m of f.text.matchAll(/[0-9a-f]{17,}/gi)) expect(m[0]).toMatch(/^0+$/);
    }
    expect(keys).toBeGreaterThan(60);
    // the SA-options recordings (uml-6.1-sa, uml-6.12-sa) too
    for (const set of SA_SETS) {
    let saKeys = 0;
    for (const dir of readdirSync(path.join(FIXTURES, set))) {
      for (const f of readdirSync(path.join(FIXTURES, set, dir))) {
        const text = readFileSync(path.join(FIXTURES, set, dir, f), 'utf8');
        for (const m of text.matchAll(/^\s*(?:aead|enc|auth|auth-trunc|comp)\s+\S+\s+(0x\S+)/gm)) {
          saKeys++;
          expect({ file: `${dir}/${f}`, key: m[1] }).toEqual({ file: `${dir}/${f}`, key: expect.stringMatching(/^0x(00)+$/) });
        }
        for (const m of text.matchAll(/[0-9a-f]{17,}/gi)) expect(m[0]).toMatch(/^0+$/);
      }
    }
    expect({ set, saKeys: saKeys > 60 }).toEqual({ set, saKeys: true });
    }
  });
});

describe.each(SA_SETS)('ip xfrm state: lifetimes, ESN, TFC padding (UML, recorded from the planner\'s own lines: %s)', (set: SaSet) => {
  const ZERO_FP = ZERO_FP_36;
  const one = (dir: string, spi: number, file = 'ip-s-xfrm-state') => parseXfrmStates(saFixture(dir, file, set)).find((s) => s.spi === spi)!;

  test('the lifetime config reads back as the planned limits, per kind; "(INF)" and 0 seconds are no limit', () => {
    for (const c of PAIR_CASES) {
      for (const end of ['a', 'b']) {
        for (const spi of [c.spi, c.spi + 1]) {
          const s = one(`${c.name}-${end}`, spi);
          expect({ c: c.name, spi, lifetime: s.lifetime }).toEqual({ c: c.name, spi, lifetime: saOptions(c.kind, c.profile).lifetime });
          expect(s.profile).toBe(c.profile);
          expect(s.keyFingerprint).toBe(ZERO_FP);
        }
      }
    }
    // the old recording (no limits set): every limit absent, not 0 and not 2^64-1
    for (const s of parseXfrmStates(fixture('uml-6.1', 'or1', 'ip-s-xfrm-state'))) expect(s.lifetime).toEqual({ soft: {}, hard: {} });
    // without -s there is no lifetime config at all
    for (const s of parseXfrmStates(saFixture('gcm-telescope-a', 'ip-xfrm-state', set))) expect(s.lifetime).toBeUndefined();
  });

  test('ESN: flag esn, the window from the ESN context (iproute2 prints replay-window 0), sequence numbers', () => {
    const b = one('gcm-overlay-esn-pad-b', 0x4f0001c2);
    expect(b).toMatchObject({ esn: true, flags: ['esn'], replayWindow: 128, seq: 10, oseq: 0, tfcpad: 600 });
    const cbc = one('cbc-overlay-esn-a', 0x4f0001c6);
    expect(cbc).toMatchObject({ esn: true, flags: ['esn'], replayWindow: 128, oseq: 10, profile: 'aes-cbc-hmac-sha1' });
    expect(cbc.tfcpad).toBeUndefined();
    const t = one('gcm-telescope-b', 0x4f0001c0);
    expect(t).toMatchObject({ esn: false, flags: [], replayWindow: 32, seq: 10 });
    // the plain listing says the same
    expect(withoutCounters(one('gcm-overlay-esn-pad-b', 0x4f0001c2, 'ip-xfrm-state'))).toEqual(withoutCounters(b));
  });

  test('usage: bytes, packets, add and first-use times; TFC padding counts at the receiving end only', () => {
    const send = one('cbc-telescope-pad-a', 0x4f0001c4);
    const recv = one('cbc-telescope-pad-b', 0x4f0001c4);
    // 5 pings of 44 bytes and 5 of 328: the sender counts the inner packets, the receiver the padded ones
    expect(send.counters).toMatchObject({ bytes: 5 * 44 + 5 * 328, packets: 10, replayErrors: 0, integrityFailed: 0 });
    expect(recv.counters).toMatchObject({ bytes: 10 * 600, packets: 10 });
    expect(send.tfcpad).toBe(600);
    const added = xfrmTimeSeconds(send.counters!.added)!;
    const used = xfrmTimeSeconds(send.counters!.used)!;
    expect(used - added).toBeGreaterThanOrEqual(0);
    expect(used - added).toBeLessThan(120);
    expect(other(one('alice', 0x4f000004))).toEqual([]);
  });

  test('router times: naive seconds, "-" and junk are undefined', () => {
    expect(xfrmTimeSeconds('2026-11-24 07:56:19')).toBe(Date.UTC(2026, 10, 24, 7, 56, 19) / 1000);
    expect(xfrmTimeSeconds('2026-11-24 07:57:19')! - xfrmTimeSeconds('2026-11-24 07:56:19')!).toBe(60);
    expect(xfrmTimeSeconds('-')).toBeUndefined();
    expect(xfrmTimeSeconds(undefined)).toBeUndefined();
    expect(xfrmTimeSeconds('24.11.2026 07:56')).toBeUndefined();
  });

  test('a lifetime line of another shape is an error with its line number', () => {
    const text = saFixture('gcm-telescope-a', 'ip-s-xfrm-state', set).replace('limit: soft 68719476736(bytes)', 'limit: soft lots(bytes)');
    const line = text.split('\n').findIndex((l) => l.includes('lots')) + 1;
    let err: unknown;
    try {
      parseXfrmStates(text);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ReadbackError);
    expect((err as ReadbackError).line).toBe(line);
  });

  test('observed states carry lifetime, tfcpad and usage for status and the rekey schedule', () => {
    const o = saObserved('alice', '-s', set);
    const cfg = padPlan().configs.get('alice')!;
    for (const st of cfg.states) {
      const got = o.states!.owned.find((x) => x.spi === st.spi)!;
      expect({ spi: st.spi, lifetime: got.lifetime, tfcpad: got.tfcpad, esn: got.flags.includes('esn') }).toEqual({ spi: st.spi, lifetime: st.lifetime, tfcpad: st.tfcpad, esn: st.esn });
      expect(got.counters).toMatchObject({ bytes: 0, packets: 0, used: '-' });
      expect(xfrmTimeSeconds(got.counters!.added)).toBeDefined();
    }
    expect(cfg.states.filter((s) => s.tfcpad !== undefined)).toHaveLength(4); // layers 1 and 3, both ways
  });
});

const other = (s: XfrmStateRecord) => s.other;

describe('ip xfrm state (UML lab, recorded)', () => {
  test('alice: the eight SAs of the circuit, in the kernel\'s order, with profile and the zero key\'s fingerprint', () => {
    const st = parseXfrmStates(fixture('uml-6.1', 'alice', 'ip-xfrm-state'));
    expect(st.map((s) => `${s.src}>${s.dst} ${s.spi.toString(16)}`)).toEqual([
      '198.51.100.13>100.64.3.1 4f00000b',
      '100.64.3.1>198.51.100.13 4f000008',
      '198.51.100.12>100.64.2.1 4f00000a',
      '100.64.2.1>198.51.100.12 4f000007',
      '198.51.100.11>100.64.1.1 4f000009',
      '100.64.1.1>198.51.100.11 4f000006',
      '198.51.100.11>198.51.100.10 4f000005',
      '198.51.100.10>198.51.100.11 4f000004',
    ]);
    for (const s of st) {
      expect(s).toMatchObject({ family: 4, proto: 'esp', mode: 'tunnel', replayWindow: 32, esn: false, flags: [], profile: 'aes-gcm', keyFingerprint: ZERO_FP_36 });
      expect(s.reqid).toBe(s.spi); // the planner allocates SPI and reqid together
      expect(s.algos).toEqual([{ kind: 'aead', name: 'rfc4106(gcm(aes))', keyBits: 288, icvBits: 128 }]);
      expect(s.sel).toEqual({ src: '0.0.0.0/0', dst: '0.0.0.0/0', extra: [] });
      expect(s.counters).toBeUndefined();
    }
    // alice sent the GET and the pings: her outbound SAs have an output sequence number
    expect(st.find((s) => s.spi === 0x4f000004)!.oseq).toBeGreaterThan(0);
    expect(st.find((s) => s.spi === 0x4f000005)!.seq).toBeGreaterThan(0);
  });

  test('-s gives the same records plus counters; hex(decimal) forms are read', () => {
    for (const n of UML_NODES) {
      const plain = parseXfrmStates(fixture('uml-6.1', n, 'ip-xfrm-state'));
      const stats = parseXfrmStates(fixture('uml-6.1', n, 'ip-s-xfrm-state'));
      expect(stats.map(withoutCounters)).toEqual(plain);
      for (const s of stats) expect(s.counters).toBeDefined();
    }
    const or1 = parseXfrmStates(fixture('uml-6.1', 'or1', 'ip-s-xfrm-state'));
    // overlay or1 -> or2 carried the GET's data packets
    expect(or1.find((s) => s.spi === 0x4f000009)!.counters).toEqual({
      bytes: 454432,
      packets: 334,
      added: '2026-11-24 07:56:20',
      used: '2026-11-24 07:57:32',
      replayWindowErrors: 0,
      replayErrors: 0,
      integrityFailed: 0,
    });
  });

  test('replay and integrity errors per SA, and /proc/net/xfrm_stat, for status', () => {
    const [b] = parseXfrmStates(fixture('uml-6.1', 'errB', 'ip-s-xfrm-state'));
    expect(b!.counters).toMatchObject({ bytes: 672, packets: 8, replayErrors: 13, integrityFailed: 4, replayWindowErrors: 0 });
    expect(b!.seq).toBe(8);
    const [a] = parseXfrmStates(fixture('uml-6.1', 'errA', 'ip-s-xfrm-state'));
    expect(a!.counters).toMatchObject({ packets: 12, replayErrors: 0, integrityFailed: 0 });
    expect(a!.oseq).toBe(12);
    const stat = parseXfrmStat(fixture('uml-6.1', 'errB', 'proc-net-xfrm_stat'));
    expect(stat).toMatchObject({ XfrmInStateSeqError: 13, XfrmInStateProtoError: 4, XfrmInNoStates: 0 });
    expect(Object.keys(stat)).toHaveLength(28);
  });

  test('foreign SAs: ESN window, transport mode, other algorithms, selector, mark and flags', () => {
    const or1 = parseXfrmStates(fixture('uml-6.1', 'or1', 'ip-xfrm-state'));
    const by = (spi: number) => or1.find((s) => s.spi === spi)!;
    expect(by(0x1000)).toMatchObject({ mode: 'transport', reqid: 7, esn: true, replayWindow: 64, algos: [{ kind: 'aead', keyBits: 160, icvBits: 128 }] });
    expect(by(0x1000).profile).toBeUndefined(); // a 160-bit GCM key is not onionctl's profile
    expect(by(0x1000).keyFingerprint).toBeUndefined();
    expect(by(0x1001)).toMatchObject({ sel: { src: '10.9.0.0/16', dst: '10.8.0.0/16', extra: [] } });
    expect(by(0x1001).algos.map((a) => `${a.kind} ${a.name} ${a.keyBits}`)).toEqual(['auth-trunc hmac(sha256) 256', 'enc cbc(aes) 256']);
    expect(by(0x1002)).toMatchObject({ mark: '0x10/0xff', flags: ['af-unspec'], profile: 'aes-cbc-hmac-sha1' });
  });

  test('the paper\'s profile: auth-trunc is printed before enc; the fingerprint is of enc key || auth key', () => {
    const st = parseXfrmStates(fixture('uml-6.1', 'or1-scratch', 'ip-s-xfrm-state'));
    expect(st.map((s) => s.spi)).toEqual([0x4f000011, 0x4f000010]);
    for (const s of st) expect(s).toMatchObject({ profile: 'aes-cbc-hmac-sha1', keyFingerprint: ZERO_FP_36, replayWindow: 32 });
  });

  test('keys: only a fingerprint is kept, and nothing of a key reaches a record or an error', () => {
    const enc = 'a1b2c3d4e5f60718293a4b5c6d7e8f90';
    const auth = 'deadbeefcafebabe0011223344556677feedface';
    const gcm = 'c0ffee00'.repeat(9);
    const text = [
      'src 198.51.100.1 dst 198.51.100.2',
      '\tproto esp spi 0x4f000001 reqid 1325400065 mode tunnel',
      '\treplay-window 32 ',
      `\tauth-trunc hmac(sha1) 0x${auth} 96`,
      `\tenc cbc(aes) 0x${enc}`,
      '\tsel src 0.0.0.0/0 dst 0.0.0.0/0 ',
      'src 198.51.100.2 dst 198.51.100.1',
      '\tproto esp spi 0x4f000002 reqid 1325400066 mode tunnel',
      '\treplay-window 32 ',
      `\taead rfc4106(gcm(aes)) 0x${gcm} 128`,
      '\tsecurity context: whatever',
    ].join('\n');
    const st = parseXfrmStates(text);
    expect(st[0]!.keyFingerprint).toBe(fingerprint(Buffer.from(enc + auth, 'hex')));
    expect(st[1]!.keyFingerprint).toBe(fingerprint(Buffer.from(gcm, 'hex')));
    expect(st[1]!.other).toEqual(['security']);
    const json = JSON.stringify(st);
    for (const k of [enc, auth, gcm, enc.slice(0, 12), auth.slice(0, 12), gcm.slice(0, 12)]) expect(json).not.toContain(k);

    const bad = `src 198.51.100.1 dst 198.51.100.2 0x${gcm}\n\tproto esp spi 0x4f000001 reqid 1 mode tunnel\n\taead rfc4106(gcm(aes)) 0x${gcm} 128\n`;
    let err: unknown;
    try {
      parseXfrmStates(bad);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ReadbackError);
    expect(String((err as Error).message)).not.toContain('c0ffee');
    expect((err as ReadbackError).line).toBe(1);
  });
});

describe('ip xfrm policy', () => {
  test('UML alice: out with 4 templates innermost first, in with the reverse layers, the block policy', () => {
    const p = parseXfrmPolicies(fixture('uml-6.1', 'alice', 'ip-xfrm-policy'));
    expect(p.map((x) => `${x.dir} ${x.src} ${x.dst} ${x.action} ${x.priority}`)).toEqual([
      'in 203.0.113.80/32 100.64.3.1/32 allow 20225',
      'out 100.64.3.1/32 203.0.113.80/32 allow 20225',
      'out 0.0.0.0/0 203.0.113.80/32 block 20239',
      // the nested reply layers (see the fixtures' README), ahead of the circuit's in policy
      'in 198.51.100.13/32 100.64.3.1/32 allow 20224',
      'in 198.51.100.12/32 100.64.2.1/32 allow 20224',
      'in 198.51.100.11/32 100.64.1.1/32 allow 20224',
    ]);
    expect(p.slice(3).map((x) => x.proto)).toEqual(['esp', 'esp', 'esp']);
    expect(p[3]!.tmpls.map((t) => `${t.src}>${t.dst} ${t.reqid.toString(16)}`)).toEqual([
      '198.51.100.12>100.64.2.1 4f00000a',
      '198.51.100.11>100.64.1.1 4f000009',
      '198.51.100.11>198.51.100.10 4f000005',
    ]);
    expect(p[1]!.tmpls.map((t) => `${t.src}>${t.dst} ${t.proto} ${t.reqid.toString(16)} ${t.mode} ${t.level}`)).toEqual([
      '100.64.3.1>198.51.100.13 esp 4f000008 tunnel required',
      '100.64.2.1>198.51.100.12 esp 4f000007 tunnel required',
      '100.64.1.1>198.51.100.11 esp 4f000006 tunnel required',
      '198.51.100.10>198.51.100.11 esp 4f000004 tunnel required',
    ]);
    expect(p[2]!.tmpls).toEqual([]);
  });

  test('mixes match proto esp; -s adds index, spi 0 and "level required" but the same policies', () => {
    for (const set of ['uml-6.1', 'host-6.18'] as const) {
      for (const n of set === 'uml-6.1' ? UML_NODES : (['alice', 'r1', 'r6'] as const)) {
        const plain = parseXfrmPolicies(fixture(set, n, 'ip-xfrm-policy'));
        const stats = parseXfrmPolicies(fixture(set, n, 'ip-s-xfrm-policy'));
        const strip = (x: (typeof plain)[number]) => ({ ...x, index: undefined, flags: [], tmpls: x.tmpls.map((t) => ({ ...t, spi: undefined })) });
        expect(stats.map(strip)).toEqual(plain.map(strip));
        expect(stats.every((x) => x.index !== undefined)).toBe(true);
      }
    }
    const or1 = parseXfrmPolicies(fixture('uml-6.1', 'or1', 'ip-xfrm-policy'));
    expect(or1.every((x) => x.proto === 'esp' && x.selExtra.length === 0)).toBe(true);
  });

  test('host: foreign policies (level use, mark, selector ports, IPv6, block) parse', () => {
    const p = parseXfrmPolicies(fixture('host-6.18', 'alice', 'ip-xfrm-policy'));
    const by = (src: string) => p.find((x) => x.src === src)!;
    expect(by('10.2.0.0/16')).toMatchObject({ dir: 'in', priority: 100, tmpls: [{ src: '192.0.2.2', dst: '192.0.2.1', reqid: 6, level: 'use' }] });
    expect(by('10.4.0.1/32')).toMatchObject({ mark: '0x1/0xff', tmpls: [{ mode: 'transport', reqid: 7 }] });
    expect(by('10.3.0.0/16')).toMatchObject({ proto: 'tcp', selExtra: ['dport 22'], action: 'block', priority: 50 });
    expect(by('2001:db8::/32')).toMatchObject({ family: 6, dir: 'fwd', tmpls: [{ family: 6, src: '2001:db8::1' }] });
    expect(by('10.5.0.0/16').priority).toBe(PRIORITY_BAND[0] - 1);
    expect(by('10.6.0.0/16').priority).toBe(PRIORITY_BAND[1] + 1);
  });

  test('UML errA: a selector with proto icmp', () => {
    const [p] = parseXfrmPolicies(fixture('uml-6.1', 'errA', 'ip-xfrm-policy'));
    expect(p).toMatchObject({ src: '10.99.0.1/32', dst: '10.99.0.2/32', proto: 'icmp', dir: 'out' });
  });
});

describe('routes and addresses', () => {
  test('UML: onionctl routes with src, mtu, advmss, quickack; the lab\'s own routes', () => {
    const r = parseRoutes(fixture('uml-6.1', 'alice', 'ip-route-main'));
    expect(r.find((x) => x.proto === '79')).toEqual({
      type: 'unicast',
      dst: '203.0.113.80',
      table: 'main',
      via: '198.51.100.11',
      dev: 'eth0',
      proto: '79',
      src: '100.64.3.1',
      metric: 0,
      mtu: 1278,
      advmss: 1238,
      quickack: true,
      flags: [],
      other: [],
    });
    const or3 = parseRoutes(fixture('uml-6.1', 'or3', 'ip-route-main'));
    expect(or3.find((x) => x.dst === '203.0.113.80')).toMatchObject({ proto: 'boot', dev: 'eth1', scope: 'link', quickack: true });
  });

  test('-d prints unicast, scope global and proto boot; the parse is otherwise the same', () => {
    for (const [set, n] of [['uml-6.1', 'or3'], ['host-6.18', 'alice'], ['host-6.18', 'r6']] as const) {
      const plain = parseRoutes(fixture(set, n, 'ip-route-main'));
      const d = parseRoutes(fixture(set, n, 'ip-d-route-main'));
      const noScope = (x: (typeof plain)[number]) => ({ ...x, scope: x.scope === 'global' ? undefined : x.scope });
      expect(d.map(noScope)).toEqual(plain.map(noScope));
    }
  });

  test('host: foreign route kinds', () => {
    const r = parseRoutes(fixture('host-6.18', 'alice', 'ip-route-main'));
    const by = (dst: string) => r.find((x) => x.dst === dst)!;
    expect(by('10.21.0.0/16')).toMatchObject({ proto: 'static', metric: 100 });
    expect(by('10.22.0.0/16')).toMatchObject({ type: 'blackhole' });
    expect(by('10.23.0.0/16')).toMatchObject({ proto: '80', mtu: 1400, mtuLocked: true });
    expect(by('10.24.0.0/16').nexthops).toEqual([
      { via: '198.51.100.254', dev: 'eth0', weight: 1 },
      { via: '198.51.100.253', dev: 'eth0', weight: 2 },
    ]);
    expect(by('10.25.0.0/16')).toMatchObject({ type: 'unreachable' });
    expect(by('10.26.0.0/16')).toMatchObject({ scope: 'link', src: '198.51.100.40', proto: 'boot' });
    expect(r.filter((x) => x.proto === String(ROUTE_PROTO)).map((x) => x.dst)).toEqual(['203.0.113.0/25', '203.0.113.200']);
  });

  test('ip -4 addr show dev lo', () => {
    const a = parseAddresses(fixture('host-6.18', 'alice', 'ip-4-addr-lo'));
    expect(a.map((x) => `${x.addr}/${x.len} ${x.scope} ${x.label}`)).toEqual([
      '127.0.0.1/8 host lo',
      '10.30.0.1/32 global lo',
      '192.0.2.99/32 global lo',
      '100.64.41.1/32 global lo',
      '100.64.43.1/32 global lo',
      '100.64.44.1/32 global lo',
      '100.64.46.1/32 global lo',
    ]);
    expect(a.every((x) => x.dev === 'lo' && x.family === 4)).toBe(true);
  });
});

describe('iptables-save', () => {
  test('tables, chains, quoted comments with escapes, targets', () => {
    const s = parseIptablesSave(fixture('host-6.18', 'r5', 'iptables-save'));
    expect(s.tables).toEqual(['mangle', 'filter', 'nat']);
    expect(s.chains.filter((c) => !c.builtin).map((c) => `${c.table} ${c.chain}`)).toEqual(['filter ADMIN', 'filter ONIONCTL-FORWARD', 'nat ONIONCTL-POSTROUTING']);
    expect(s.rules.find((r) => r.chain === 'INPUT')).toMatchObject({ comment: 'ssh "admin"', target: 'ACCEPT' });
    expect(shellWords('-m comment --comment "a \\"b\\" c" -j X')).toEqual(['-m', 'comment', '--comment', 'a "b" c', '-j', 'X']);
  });

  test('the exit\'s rules read back as the FilterRule/SnatRule the planner made (UML or3, legacy)', () => {
    const plan = labPlan();
    const cfg = plan.configs.get('or3')!;
    const o = umlObserved('or3', labNet());
    const fw = o.iptables!.owned;
    expect(fw.chains.map((c) => `${c.table} ${c.chain} <- ${c.hooks.join(',')}`).sort()).toEqual(['filter ONIONCTL-FORWARD <- FORWARD', 'nat ONIONCTL-POSTROUTING <- POSTROUTING']);
    expect(fw.rules.filter((r) => r.snat).map((r) => r.snat)).toEqual(cfg.firewall.snat);
    // the planner's rules: tcp 80,443 / icmp / drop / replies
    expect(fw.rules.filter((r) => r.filter).map((r) => r.filter)).toEqual(cfg.firewall.forward);
  });

  test('every line render writes parses back to the same rule (rules split over 15 ports too)', () => {
    const rules = [
      { src: parseCidr('100.64.1.1/32'), dst: parseCidr('203.0.113.0/24'), proto: 'tcp' as const, ports: [80, 443, '8000-8080'], action: 'accept' as const, comment: 'c "q"' },
      { src: parseCidr('100.64.1.1/32'), dst: parseCidr('0.0.0.0/0'), proto: 'any' as const, action: 'drop' as const, comment: 'x' },
      { src: parseCidr('203.0.113.0/24'), dst: parseCidr('100.64.1.1/32'), proto: 'any' as const, established: true, action: 'accept' as const, comment: 'r' },
      { src: parseCidr('100.64.1.1/32'), dst: parseCidr('192.0.2.0/24'), proto: 'udp' as const, ports: Array.from({ length: 20 }, (_, i) => 1000 + i), action: 'accept' as const, comment: 'many' },
    ];
    for (const r of rules) {
      const lines = iptablesRule('ONIONCTL-FORWARD', r);
      const back = lines.map((l) => iptablesFilterRule(shellWords(l).slice(2))!);
      expect(back.every((b) => b !== undefined)).toBe(true);
      expect(back.flatMap((b) => b.ports ?? [])).toEqual(r.ports ?? []);
      for (const b of back) expect({ ...b, ports: undefined }).toEqual({ ...r, ports: undefined, comment: r.comment.replace(/"/g, '') });
    }
  });
});

describe('nft', () => {
  test('nft list ruleset: every table; onionctl\'s chains and rules; counters dropped', () => {
    const t = parseNftRuleset(fixture('host-6.18', 'r6', 'nft-list-ruleset'));
    expect(t.map((x) => `${x.family} ${x.name}`)).toEqual(['ip filter', 'ip nat', 'ip mangle', 'inet admin', 'ip onionctl']);
    const mine = t.find((x) => x.name === 'onionctl')!;
    expect(mine.chains.map((c) => [c.name, c.type, c.hook, c.priority, c.policy])).toEqual([
      ['postrouting', 'nat', 'postrouting', 'srcnat', 'accept'],
      ['forward', 'filter', 'forward', 'filter', 'accept'],
    ]);
    expect(t.find((x) => x.name === 'filter')!.chains.find((c) => c.name === 'ADMIN')!.rules[0]!.text).toBe('meta l4proto udp udp dport { 53, 123 } accept');
  });

  test('nft list table ip onionctl and the ruleset give the same rules, as the planner\'s', () => {
    const plan = k4Plan();
    const cfg = plan.configs.get('r6')!;
    expect(cfg.firewall.backend).toBe('nftables');
    const a = observeNode('r6', { nft: fixture('host-6.18', 'r6', 'nft-list-table-ip-onionctl') }, { pools: [] }).nft!;
    const b = hostObserved('r6', k4Net()).nft!;
    expect(a.owned).toEqual(b.owned);
    expect(a.foreignTables).toEqual([]);
    expect(b.foreignTables).toEqual(['ip filter', 'ip nat', 'ip mangle', 'inet admin']);
    expect(b.owned.rules.filter((r) => r.snat).map((r) => r.snat)).toEqual(cfg.firewall.snat);
    expect(b.owned.rules.filter((r) => r.filter).map((r) => r.filter)).toEqual(cfg.firewall.forward);
    expect(nftFilterRule('ip saddr 1.2.3.4 tcp dport { 80, 443, 8000-8080 } accept comment "x"')).toMatchObject({ proto: 'tcp', ports: [80, 443, '8000-8080'] });
    expect(nftFilterRule('ip saddr 1.2.3.4 jump elsewhere')).toBeUndefined();
  });

  test('an absent table: empty input means "read, not there"', () => {
    const o = observeNode('x', { nft: '' }, { pools: [] });
    expect(o.nft).toEqual({ owned: { chains: [], rules: [] }, present: false, foreignTables: [] });
  });
});

describe('ownership: onionctl\'s objects and foreign ones', () => {
  const inBand = (p: number) => p >= PRIORITY_BAND[0] && p <= PRIORITY_BAND[1];

  test('UML: SAs in the reserved range are onionctl\'s, the three added by hand are foreign', () => {
    const net = labNet();
    const or1 = umlObserved('or1', net);
    expect(or1.states!.owned).toHaveLength(6);
    expect(or1.states!.foreign.map((s) => s.spi)).toEqual([0x1002, 0x1001, 0x1000]);
    for (const s of or1.states!.owned) {
      expect(s.spi >= SPI_BASE && s.spi <= SPI_LAST && s.reqid >= REQID_BASE && s.reqid <= REQID_LAST).toBe(true);
      expect(s.selectorIsWildcard).toBe(true);
    }
    const alice = umlObserved('alice', net);
    expect(alice.addresses!.owned.map((a) => formatIPv4(a.addr))).toEqual(['100.64.1.1', '100.64.2.1', '100.64.3.1']);
    expect(alice.addresses!.foreign.map((a) => a.addr)).toEqual(['127.0.0.1']);
    expect(alice.routes!.foreign.map((r) => r.dst)).toEqual(['100.127.0.0/16', '198.51.100.0/24']);
  });

  test('host: every foreign object stays foreign, every onionctl object is found', () => {
    const net = k4Net();
    const plan = k4Plan();
    for (const n of net.nodes.keys()) {
      const o = hostObserved(n, net);
      const cfg = plan.configs.get(n)!;
      expect({ n, owned: o.policies!.owned.length }).toEqual({ n, owned: cfg.policies.length });
      expect(o.policies!.foreign).toHaveLength(7);
      for (const p of o.policies!.foreign) expect(p.family === 6 || !inBand(p.priority)).toBe(true);
      for (const p of o.policies!.owned) expect(inBand(p.priority)).toBe(true);
      expect({ n, routes: o.routes!.owned.length }).toEqual({ n, routes: cfg.routes.length });
      expect(o.routes!.foreign.every((r) => r.proto !== '79')).toBe(true);
      expect(o.routes!.foreign.map((r) => r.dst)).toEqual(expect.arrayContaining(['10.20.0.0/16', '10.21.0.0/16', '10.22.0.0/16', '10.23.0.0/16', '10.24.0.0/16', '10.25.0.0/16', '10.26.0.0/16']));
      expect(o.addresses!.owned.map((a) => a.addr).sort()).toEqual(cfg.addresses.map((a) => a.addr).sort());
      expect(o.addresses!.foreign.map((a) => a.addr)).toEqual(['127.0.0.1', '10.30.0.1', '192.0.2.99']);
      // the ACCEPT commented "onionctl" is not a jump into onionctl's chain, so it is foreign
      expect(o.iptables!.foreignRules.map((r) => r.text)).toEqual(expect.arrayContaining(['-A FORWARD -m comment --comment onionctl -j ACCEPT', '-A FORWARD -s 10.0.0.0/8 -j ADMIN']));
      expect(o.iptables!.foreignRules.some((r) => r.chain.startsWith('ONIONCTL-') || r.target?.startsWith('ONIONCTL-'))).toBe(false);
      expect(o.iptables!.foreignChains.map((c) => c.chain)).toContain('ADMIN');
      // table inet admin has a rule commented "onionctl": still not onionctl's
      expect(o.nft!.foreignTables).toContain('inet admin');
      expect(o.nft!.present).toBe(cfg.firewall.backend === 'nftables');
    }
  });

  test('the owned objects are in the planner\'s terms', () => {
    const o = hostObserved('alice', k4Net());
    const cfg = k4Plan().configs.get('alice')!;
    const want = cfg.policies.find((p) => p.dir === 'out' && p.action === 'allow')!;
    const got = o.policies!.owned.find((p) => formatCidr(p.dst) === formatCidr(want.dst) && p.dir === 'out' && p.action === 'allow')!;
    expect(got.tmpls.map((t) => ({ src: t.src, dst: t.dst, reqid: t.reqid }))).toEqual(want.tmpls);
    const r = o.routes!.owned.find((x) => x.dst.len === 25)!;
    expect(r).toMatchObject({ via: parseIPv4('198.51.100.41'), dev: 'eth0', src: parseIPv4('100.64.46.1'), mtu: 1222, advmss: 1182, quickack: false, metric: 0 });
  });
});
