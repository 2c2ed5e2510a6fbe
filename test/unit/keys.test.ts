/**
 * Keys (src/keys/kdf.ts, src/util/files.ts): the KDF is deterministic and separates every input,
 * keys have the profile's length, fingerprints are one-way tags, the secret file is private, and
 * the random-key store keeps, adds and drops keys as SAs come and go.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { KdfKeySource, StoredKeySource, fingerprint, kdfInfo, keyStoreId, type SaKeyId } from '../../src/keys/kdf.js';
import { PROFILES } from '../../src/keys/profiles.js';
import { CRYPTO_PROFILES } from '../../src/topology/schema.js';
import { loadKeyStore, loadOrCreateSecret } from '../../src/store/files.js';
import { UserError } from '../../src/util/errors.js';

const SECRET = Buffer.from('00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff', 'hex');
const SALT = 'c0'.repeat(32);
const SA: SaKeyId = { id: 'circuit:web:g1:hop2:fwd', epoch: 1, spi: 0x4f000007 };

describe('KdfKeySource', () => {
  const kdf = new KdfKeySource(SECRET, SALT);

  test('the same secret, salt, identity, epoch and SPI give the same key, also from a new instance', () => {
    const a = kdf.key(SA, 36);
    expect(kdf.key(SA, 36).equals(a)).toBe(true);
    expect(new KdfKeySource(Buffer.from(SECRET), SALT).key({ ...SA }, 36).equals(a)).toBe(true);
  });

  test('changing any one input changes the key', () => {
    const base = kdf.key(SA, 36).toString('hex');
    const variants: [string, Buffer][] = [
      ['secret', new KdfKeySource(Buffer.concat([SECRET.subarray(0, 31), Buffer.from([SECRET[31]! ^ 1])]), SALT).key(SA, 36)],
      ['salt', new KdfKeySource(SECRET, 'c1' + 'c0'.repeat(31)).key(SA, 36)],
      ['id', kdf.key({ ...SA, id: 'circuit:web:g1:hop2:rev' }, 36)],
      ['generation', kdf.key({ ...SA, id: 'circuit:web:g2:hop2:fwd' }, 36)],
      ['epoch bump', kdf.key({ ...SA, epoch: 2 }, 36)],
      ['spi', kdf.key({ ...SA, spi: SA.spi + 1 }, 36)],
    ];
    const hexes = variants.map(([, k]) => k.toString('hex'));
    for (const [name, k] of variants) expect({ name, same: k.toString('hex') === base }).toEqual({ name, same: false });
    expect(new Set([base, ...hexes]).size).toBe(hexes.length + 1);
  });

  test('identity fields cannot be shifted into each other (the info string separates them)', () => {
    expect(kdfInfo({ id: 'a', epoch: 12, spi: 3 }, 36)).not.toBe(kdfInfo({ id: 'a', epoch: 1, spi: 23 }, 36));
    expect(kdf.key({ id: 'a', epoch: 12, spi: 3 }, 36).equals(kdf.key({ id: 'a', epoch: 1, spi: 23 }, 36))).toBe(false);
  });

  test('keys have the profile length, and a different length is a different key (not a prefix)', () => {
    for (const name of CRYPTO_PROFILES) {
      const p = PROFILES[name];
      expect(kdf.key(SA, p.keyBytes)).toHaveLength(p.keyBytes);
    }
    expect(PROFILES['aes-gcm'].keyBytes).toBe(36); // AES-256 + 4-byte salt
    expect(PROFILES['aes-cbc-hmac-sha1'].keyBytes).toBe(36); // AES-128 + HMAC-SHA1
    const k20 = kdf.key(SA, 20);
    const k36 = kdf.key(SA, 36);
    expect(k20).toHaveLength(20);
    expect(k36.subarray(0, 20).equals(k20)).toBe(false);
  });

  test('keys do not look like each other or like zeros', () => {
    const k = kdf.key(SA, 36);
    expect(k.equals(Buffer.alloc(36))).toBe(false);
    expect(new Set(k).size).toBeGreaterThan(10);
  });

  test('a secret shorter than 32 bytes is refused', () => {
    expect(() => new KdfKeySource(Buffer.alloc(31, 1), SALT)).toThrow(/at least 32 bytes/);
  });
});

describe('fingerprint', () => {
  const kdf = new KdfKeySource(SECRET, SALT);
  const key = kdf.key(SA, 36);

  test('is 12 hex characters, stable, and different for different keys', () => {
    expect(fingerprint(key)).toMatch(/^[0-9a-f]{12}$/);
    expect(fingerprint(Buffer.from(key))).toBe(fingerprint(key));
    expect(fingerprint(kdf.key({ ...SA, epoch: 2 }, 36))).not.toBe(fingerprint(key));
  });

  test('does not contain the key, any part of it, or a plain hash prefix of it', () => {
    const fp = fingerprint(key);
    const hex = key.toString('hex');
    expect(hex).not.toContain(fp);
    for (let i = 0; i + 8 <= fp.length; i++) expect(hex).not.toContain(fp.slice(i, i + 8));
    for (let i = 0; i + 8 <= hex.length; i += 2) expect(fp).not.toContain(hex.slice(i, i + 8));
  });
});

describe('key secret file', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'onionctl-keys-test-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('is created 0600 on first use (in a new directory), then read back unchanged', async () => {
    const file = path.join(dir, 'sub', 'net.secret');
    const first = await loadOrCreateSecret(file);
    expect(first.created).toBe(true);
    expect(first.secret).toHaveLength(32);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(await readFile(file, 'utf8')).toBe(first.secret.toString('hex') + '\n');
    const second = await loadOrCreateSecret(file);
    expect(second.created).toBe(false);
    expect(second.secret.equals(first.secret)).toBe(true);
  });

  test('two new secrets differ', async () => {
    const a = await loadOrCreateSecret(path.join(dir, 'a.secret'));
    const b = await loadOrCreateSecret(path.join(dir, 'b.secret'));
    expect(a.secret.equals(b.secret)).toBe(false);
  });

  test('is refused when group- or other-readable, with the chmod to run', async () => {
    const file = path.join(dir, 'open.secret');
    await loadOrCreateSecret(file);
    for (const mode of [0o640, 0o604, 0o660, 0o644]) {
      await chmod(file, mode);
      await expect(loadOrCreateSecret(file)).rejects.toThrow(UserError);
      await expect(loadOrCreateSecret(file)).rejects.toThrow(`run: chmod 600 ${file}`);
    }
    await chmod(file, 0o400);
    await expect(loadOrCreateSecret(file)).resolves.toMatchObject({ created: false });
  });

  test('a secret that is not hex, or too short, is refused', async () => {
    for (const [name, text] of [['short', 'ab'.repeat(31)], ['nothex', 'zz'.repeat(32)]] as const) {
      const file = path.join(dir, `${name}.secret`);
      await writeFile(file, text + '\n', { mode: 0o600 });
      await expect(loadOrCreateSecret(file)).rejects.toThrow(/not a hex string of at least 32 bytes/);
    }
  });
});

describe('StoredKeySource (random keys)', () => {
  /** a deterministic stand-in for crypto.randomBytes that counts its calls */
  function drawer() {
    let n = 0;
    const draw = (bytes: number) => {
      n++;
      return Buffer.alloc(bytes, n);
    };
    return { draw, calls: () => n };
  }

  test('keeps a key once drawn, for the same SA', () => {
    const d = drawer();
    const s = new StoredKeySource({}, d.draw);
    const a = s.key(SA, 36);
    expect(s.key(SA, 36).equals(a)).toBe(true);
    expect(d.calls()).toBe(1);
    expect(s.changed()).toBe(true);
    expect(s.entries()).toEqual({ [keyStoreId(SA)]: a.toString('hex') });
  });

  test('loaded keys are used as they are, without drawing', () => {
    const d = drawer();
    const hex = 'ab'.repeat(36);
    const s = new StoredKeySource({ [keyStoreId(SA)]: hex }, d.draw);
    expect(s.key(SA, 36).toString('hex')).toBe(hex);
    expect(d.calls()).toBe(0);
    expect(s.changed()).toBe(false);
  });

  test('a new epoch or SPI draws a new key and keeps the old one until retain()', () => {
    const d = drawer();
    const s = new StoredKeySource({}, d.draw);
    const a = s.key(SA, 36);
    const b = s.key({ ...SA, epoch: 2 }, 36);
    const c = s.key({ ...SA, spi: SA.spi + 1 }, 36);
    expect(d.calls()).toBe(3);
    expect(new Set([a, b, c].map((k) => k.toString('hex'))).size).toBe(3);
    expect(Object.keys(s.entries())).toHaveLength(3);
  });

  test('a stored key of the wrong length is replaced', () => {
    const d = drawer();
    const s = new StoredKeySource({ [keyStoreId(SA)]: 'ab'.repeat(20) }, d.draw);
    expect(s.key(SA, 36)).toHaveLength(36);
    expect(d.calls()).toBe(1);
    expect(s.changed()).toBe(true);
  });

  test('retain() drops the keys of SAs no longer in use and marks the store changed', () => {
    const old = { ...SA, epoch: 1 };
    const cur = { ...SA, epoch: 2 };
    const s = new StoredKeySource({ [keyStoreId(old)]: '01'.repeat(36), [keyStoreId(cur)]: '02'.repeat(36) }, drawer().draw);
    s.retain(new Set([keyStoreId(cur)]));
    expect(s.entries()).toEqual({ [keyStoreId(cur)]: '02'.repeat(36) });
    expect(s.changed()).toBe(true);
    const t = new StoredKeySource({ [keyStoreId(cur)]: '02'.repeat(36) }, drawer().draw);
    t.retain(new Set([keyStoreId(cur)]));
    expect(t.changed()).toBe(false);
  });

  test('entries() are sorted by id, so the store file is stable', () => {
    const s = new StoredKeySource({ 'z@1#1': '00', 'a@1#1': '01', 'm@1#1': '02' }, drawer().draw);
    expect(Object.keys(s.entries())).toEqual(['a@1#1', 'm@1#1', 'z@1#1']);
  });

  test('the key store file is refused when readable by others', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'onionctl-keystore-test-'));
    try {
      const file = path.join(dir, 'k.json');
      expect(await loadKeyStore(file)).toEqual({});
      await writeFile(file, JSON.stringify({ [keyStoreId(SA)]: 'ab'.repeat(36) }), { mode: 0o644 });
      await chmod(file, 0o644);
      await expect(loadKeyStore(file)).rejects.toThrow(/key store .* is readable by others/);
      await chmod(file, 0o600);
      expect(await loadKeyStore(file)).toEqual({ [keyStoreId(SA)]: 'ab'.repeat(36) });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
