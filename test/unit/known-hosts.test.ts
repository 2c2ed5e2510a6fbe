import { describe, expect, test } from '@jest/globals';
import { createHmac, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { generateEd25519 } from '../../src/lab/run.js';
import { fingerprintSha256, hostField, hostsMatch, keyTypeOf, parseKnownHosts, parsePinnedKey, verifyHostKey } from '../../src/remote/known-hosts.js';

const keyA = generateEd25519('a').public; // "ssh-ed25519 AAAA... a"
const keyB = generateEd25519('b').public;
const blob = (pub: string) => Buffer.from(pub.split(' ')[1]!, 'base64');
const hashed = (name: string) => {
  const salt = randomBytes(20);
  return `|1|${salt.toString('base64')}|${createHmac('sha1', salt).update(name).digest('base64')}`;
};

describe('known_hosts', () => {
  test('plain, port and pattern entries', () => {
    const kh = parseKnownHosts(
      [
        '# comment',
        `or1.example.org,198.51.100.11 ${keyA}`,
        `[198.51.100.12]:2222 ${keyA}`,
        `*.lab.example,!bad.lab.example ${keyB}`,
        '',
      ].join('\n'),
    );
    expect(kh).toHaveLength(3);
    expect(verifyHostKey(kh, [hostField('198.51.100.11', 22)], blob(keyA), 'or1').ok).toBe(true);
    expect(verifyHostKey(kh, [hostField('198.51.100.12', 2222)], blob(keyA), 'or2').ok).toBe(true);
    // port 22 entry does not answer for another port
    expect(verifyHostKey(kh, [hostField('198.51.100.11', 2222)], blob(keyA), 'or1')).toMatchObject({ ok: false, reason: 'unknown' });
    expect(verifyHostKey(kh, ['x.lab.example'], blob(keyB), 'x').ok).toBe(true);
    expect(verifyHostKey(kh, ['bad.lab.example'], blob(keyB), 'bad')).toMatchObject({ ok: false, reason: 'unknown' });
  });

  test('hashed entries (|1|salt|hmac), also with [host]:port', () => {
    const kh = parseKnownHosts(`${hashed('198.51.100.11')} ${keyA}\n${hashed('[198.51.100.12]:2222')} ${keyA}\n`);
    expect(hostsMatch(kh[0]!.hosts, '198.51.100.11')).toBe(true);
    expect(hostsMatch(kh[0]!.hosts, '198.51.100.13')).toBe(false);
    expect(verifyHostKey(kh, ['[198.51.100.12]:2222'], blob(keyA), 'or2').ok).toBe(true);
  });

  test('hashed entries written by OpenSSH itself (ssh-keygen -H) match', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'kh-'));
    try {
      const f = path.join(dir, 'known_hosts');
      writeFileSync(f, `198.51.100.11 ${keyA}\n[198.51.100.12]:2222 ${keyB}\n`, { mode: 0o600 });
      execFileSync('ssh-keygen', ['-H', '-f', f], { stdio: 'ignore' });
      const kh = parseKnownHosts(readFileSync(f, 'utf8'));
      expect(kh.every((e) => e.hosts.startsWith('|1|'))).toBe(true);
      expect(verifyHostKey(kh, ['198.51.100.11'], blob(keyA), 'or1').ok).toBe(true);
      expect(verifyHostKey(kh, ['[198.51.100.12]:2222'], blob(keyB), 'or2').ok).toBe(true);
      expect(verifyHostKey(kh, ['198.51.100.12'], blob(keyB), 'or2').ok).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a changed key is refused with both fingerprints; an unknown host names the offered one', () => {
    const kh = parseKnownHosts(`198.51.100.11 ${keyA}\n`);
    const changed = verifyHostKey(kh, ['198.51.100.11'], blob(keyB), 'or1 (198.51.100.11:22)');
    expect(changed).toMatchObject({ ok: false, reason: 'changed' });
    if (!changed.ok) {
      expect(changed.message).toContain(fingerprintSha256(blob(keyB)));
      expect(changed.message).toContain(fingerprintSha256(blob(keyA)));
      expect(changed.message).toMatch(/HOST KEY CHANGED/);
    }
    const unknown = verifyHostKey(kh, ['198.51.100.99'], blob(keyB), 'or9');
    expect(unknown).toMatchObject({ ok: false, reason: 'unknown' });
    if (!unknown.ok) expect(unknown.message).toContain(`ssh-ed25519 ${fingerprintSha256(blob(keyB))}`);
  });

  test('@revoked wins over a matching entry; @cert-authority lines are ignored', () => {
    const kh = parseKnownHosts(`198.51.100.11 ${keyA}\n@revoked * ${keyA}\n@cert-authority * ${keyB}\n`);
    expect(verifyHostKey(kh, ['198.51.100.11'], blob(keyA), 'or1')).toMatchObject({ ok: false, reason: 'revoked' });
    expect(verifyHostKey(kh, ['198.51.100.11'], blob(keyB), 'or1')).toMatchObject({ ok: false, reason: 'changed' });
  });

  test('fingerprints are what ssh-keygen -l prints; key types come from the blob', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'kh-'));
    try {
      const f = path.join(dir, 'k.pub');
      writeFileSync(f, keyA + '\n');
      const out = execFileSync('ssh-keygen', ['-l', '-E', 'sha256', '-f', f]).toString();
      expect(out).toContain(fingerprintSha256(blob(keyA)));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    expect(keyTypeOf(blob(keyA))).toBe('ssh-ed25519');
    expect(parsePinnedKey(keyA).equals(blob(keyA))).toBe(true);
    expect(() => parsePinnedKey('ssh-ed25519 xx')).toThrow(/not an OpenSSH public key/);
  });
});
