/**
 * The pure parts of bench/vs-tor.ts and bench/tor-net.ts: the topology switch onionctl must
 * accept, the private Tor network's configuration, and the parsing of curl's timings.
 */
import { describe, expect, test } from '@jest/globals';
import { readFileSync } from 'node:fs';
import { clientTorrc, dirAuthorityLine, parseCertV3Ident, parseFingerprintFile, relayTorrc } from '../../bench/tor-net.js';
import { parseArgs, parseBig, parsePage, parsePeerBytes, summarize, withCrypto, type RepResult } from '../../bench/vs-tor.js';
import { examplePath, netFromYaml } from '../helpers/net.js';

const FP1 = 'A'.repeat(40);
const FP3 = 'C'.repeat(40);

describe('bench/vs-tor helpers', () => {
  test('withCrypto switches the profile and keeps the rest of the topology', () => {
    const text = readFileSync(examplePath('three-mixes.yaml'), 'utf8');
    const cbc = netFromYaml(withCrypto(text, 'aes-cbc-hmac-sha1'));
    expect(cbc.crypto).toBe('aes-cbc-hmac-sha1');
    expect(cbc.circuits.map((c) => c.name)).toEqual(['web']);
    expect(netFromYaml(withCrypto(withCrypto(text, 'aes-cbc-hmac-sha1'), 'aes-gcm')).crypto).toBe('aes-gcm');
    expect(withCrypto(text, 'aes-gcm')).toContain('# The quick-start network');
  });

  test('a page is ok only with 9 objects, each a 200 over its own connection', () => {
    const line = (c: number) => `0.010 0.020 0.030 ${c} 174762 200`;
    const ok = parsePage(Array.from({ length: 9 }, () => line(1)), 0);
    expect(ok.ok).toBe(true);
    expect(ok.seconds).toBeCloseTo(0.27, 6);
    expect(ok.objects[0]).toEqual({ connect: 0.01, firstByte: 0.02, total: 0.03 });
    // a reused connection (0 connects) is not the page the benchmark means
    expect(parsePage([...Array.from({ length: 8 }, () => line(1)), line(0)], 0).ok).toBe(false);
    expect(parsePage(Array.from({ length: 8 }, () => line(1)), 0).ok).toBe(false);
    expect(parsePage(Array.from({ length: 9 }, () => line(1)), 7).ok).toBe(false);
  });

  test('a 20 MiB result is ok only when every byte came with a 200', () => {
    expect(parseBig(['2.0 20971520 200'], 0)).toMatchObject({ ok: true, seconds: 2 });
    expect(parseBig(['2.0 20971520 200'], 0).MBps).toBeCloseTo(10.485760, 5);
    expect(parseBig(['2.0 1000 200'], 0).ok).toBe(false);
    expect(parseBig(['2.0 20971520 502'], 0).ok).toBe(false);
    expect(parseBig([], 28).ok).toBe(false);
  });

  test('ratios are paired per repetition, and failed runs are left out', () => {
    const page = (s: number) => parsePage(Array.from({ length: 9 }, () => `0.01 0.02 ${s / 9} 1 100 200`), 0);
    const big = (mbps: number) => parseBig([`${20.97152 / mbps} 20971520 200`], 0);
    const rep = (i: number, tor: number, gcm: number): RepResult => ({
      rep: i, order: [], page: { direct: page(0.1), gcm: page(gcm), cbc: page(gcm * 2), tor: page(tor) }, big: { direct: big(10), gcm: big(5), cbc: big(4), tor: big(0.5) },
    });
    const bad = rep(2, 100, 1);
    bad.page.tor!.ok = false;
    const s = summarize([rep(0, 4, 0.2), rep(1, 6, 0.2), bad]);
    expect(s.ratios.pageTorOver.gcm.n).toBe(2);
    expect(s.ratios.pageTorOver.gcm.median).toBeCloseTo(25, 6);
    expect(s.ratios.pageTorOver.cbc.median).toBeCloseTo(12.5, 6);
    expect(s.ratios.bigOverTor.gcm.median).toBeCloseTo(10, 6);
    expect(s.ratios.bigOverDirect.tor.median).toBeCloseTo(0.05, 6);
    expect(s.connectMs.gcm.median).toBeCloseTo(10, 6);
  });

  test('bytes per peer from ss -Htni: loopback left out, connections to one peer added up', () => {
    const text = [
      '0      0      198.51.100.10:40000 198.51.100.11:5000',
      '\t cubic wscale:7,7 rto:204 bytes_sent:100 bytes_acked:101 bytes_received:2000000 segs_out:9',
      '0      0      127.0.0.1:9050 127.0.0.1:50000',
      '\t cubic bytes_received:999',
      '0      0      198.51.100.10:40001 198.51.100.12:5000',
      '\t cubic bytes_received:3000',
      '0      0      198.51.100.10:40002 198.51.100.11:5000',
      '\t cubic bytes_received:5',
      '0      0      198.51.100.10:40003 198.51.100.13:5000',
      '\t cubic rto:204',
    ].join('\n');
    expect([...parsePeerBytes(text)]).toEqual([['198.51.100.11:5000', 2000005], ['198.51.100.12:5000', 3000], ['198.51.100.13:5000', 0]]);
  });

  test('arguments: defaults and a clear error for a bad value', () => {
    expect(parseArgs([])).toMatchObject({ reps: 10, xfrmInterface: false, bootTimeoutS: 600 });
    expect(parseArgs(['--kernel', '6.12', '--xfrm-interface', '--reps', '3'])).toMatchObject({ kernel: '6.12', xfrmInterface: true, reps: 3 });
    expect(() => parseArgs(['--reps', '0'])).toThrow('--reps: not a positive whole number: 0');
    expect(() => parseArgs(['--nope'])).toThrow();
  });
});

describe('bench/tor-net: the private Tor network', () => {
  const r1 = { nick: 'r1or1', ns: 'n1', addr: '198.51.100.11' };
  const r3 = { nick: 'r3or3', ns: 'n3', addr: '198.51.100.13', exitTo: { addr: '203.0.113.90', port: 443 } };
  const auths = [dirAuthorityLine(r1, { fingerprint: FP1, v3ident: 'B'.repeat(40) })];

  test('the DirAuthority line names the v3 identity, the DirPort address and the relay fingerprint', () => {
    expect(auths[0]).toBe(`DirAuthority r1or1 orport=5000 no-v2 v3ident=${'B'.repeat(40)} 198.51.100.11:7000 ${FP1}`);
  });

  test('only the exit relay exits, and only to the benchmark port', () => {
    const exit = relayTorrc(r3, '/run/t/r3', auths);
    expect(exit).toContain('ExitRelay 1\n');
    const policy = exit.split('\n').filter((l) => l.startsWith('ExitPolicy '));
    expect(policy).toEqual(['ExitPolicy accept *:443', 'ExitPolicy reject *:*']);
    const middle = relayTorrc(r1, '/run/t/r1', auths);
    expect(middle).toContain('ExitRelay 0\n');
    expect(middle.split('\n').filter((l) => l.startsWith('ExitPolicy '))).toEqual(['ExitPolicy reject *:*']);
    for (const t of [exit, middle]) {
      expect(t).toContain('TestingTorNetwork 1\n');
      expect(t).toContain('V3AuthoritativeDirectory 1\n');
      expect(t).toContain(auths[0]);
      expect(t).toContain('SocksPort 0\n');
    }
  });

  test('the client listens on loopback only and pins its entry and exit', () => {
    const c = clientTorrc('/run/t/c', auths, { fingerprint: FP1, v3ident: 'B'.repeat(40) }, { fingerprint: FP3, v3ident: 'D'.repeat(40) });
    expect(c).toContain('SocksPort 127.0.0.1:9050\n');
    expect(c).toContain(`EntryNodes $${FP1}\n`);
    expect(c).toContain(`ExitNodes $${FP3}\n`);
    expect(c).toContain('StrictNodes 1\n');
    expect(c).not.toMatch(/^ORPort|^DirPort/m);
  });

  test('key files are parsed strictly', () => {
    expect(parseCertV3Ident(`dir-key-certificate-version 3\nfingerprint ${'ab'.repeat(20)}\ndir-key-published 2026-12-07 00:00:00\n`)).toBe('AB'.repeat(20));
    expect(() => parseCertV3Ident('fingerprint 1234\n')).toThrow('no fingerprint line');
    expect(parseFingerprintFile(`r1or1 ${'ABCD '.repeat(10).trim()}\n`, 'r1or1')).toBe('ABCD'.repeat(10));
    expect(() => parseFingerprintFile('other ABCD\n', 'r1or1')).toThrow('no fingerprint line for r1or1');
    expect(() => parseFingerprintFile('r1or1 XYZ\n', 'r1or1')).toThrow('not a relay fingerprint');
  });
});
