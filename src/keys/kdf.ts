/**
 * Per-SA keys. Two sources:
 *  - kdf (default): HKDF-SHA256 over a 32-byte secret kept in a 0600 file, salted with the
 *    state's random salt, with the SA's identity, epoch and SPI as info. Nothing per SA is
 *    stored; the same state and secret always give the same key, and a new epoch or SPI always
 *    gives a new one. Each epoch also has 16 random bytes of its own (the nonce, drawn when the
 *    epoch is allocated and saved before any push), so that a state put back from a backup that
 *    hands out the same SPI and epoch again still gets a new key. If the state file is lost, a
 *    new state has a new salt, so no old key comes back.
 *  - random: each key is drawn from the CSPRNG once and kept in a 0600 key store file.
 *
 * Keys never leave this module except towards an apply script (0600) or the kernel; plans and
 * diffable files show `fingerprint(key)`.
 */
import { createSecretKey, hash, hkdfSync, type KeyObject } from 'node:crypto';

export interface SaKeyId {
  /** stable identity, e.g. link:or1>or2 or circuit:web:g1:hop2:fwd */
  id: string;
  epoch: number;
  spi: number;
  /** the epoch's random nonce (state/model.ts); absent for epochs allocated before it existed */
  nonce?: string;
}

export interface KeySource {
  key(sa: SaKeyId, bytes: number): Buffer;
}

export function kdfInfo(sa: SaKeyId, bytes: number): string {
  if (sa.nonce === undefined) return `onionctl/sa-key/v1\0${sa.id}\0epoch=${sa.epoch}\0spi=${sa.spi}\0len=${bytes}`;
  return `onionctl/sa-key/v2\0${sa.id}\0epoch=${sa.epoch}\0spi=${sa.spi}\0nonce=${sa.nonce}\0len=${bytes}`;
}

export class KdfKeySource implements KeySource {
  private readonly salt: Buffer;
  /** the secret as a KeyObject once, rather than hkdfSync converting the Buffer on every call */
  private readonly secretKey: KeyObject;
  constructor(secret: Buffer, saltHex: string) {
    if (secret.length < 32) throw new Error('the key secret must be at least 32 bytes');
    this.salt = Buffer.from(saltHex, 'hex');
    this.secretKey = createSecretKey(secret);
  }
  key(sa: SaKeyId, bytes: number): Buffer {
    return Buffer.from(hkdfSync('sha256', this.secretKey, this.salt, kdfInfo(sa, bytes), bytes));
  }
}

/** A short, one-way tag for a key: enough to see in a diff that a key changed, useless to an attacker. */
export function fingerprint(key: Buffer): string {
  // one-shot crypto.hash: a plan renders a fingerprint per SA end, and a Hash object per call
  // (create, two updates, digest) cost three times as much
  return hash('sha256', Buffer.concat([FP_PREFIX, key]), 'hex').slice(0, 12);
}
const FP_PREFIX = Buffer.from('onionctl/key-fingerprint/v1\0');

/** The key store's name for an SA epoch's key: a new nonce is a new entry, hence a new key. */
export function keyStoreId(sa: SaKeyId): string {
  return `${sa.id}@${sa.epoch}#${sa.spi.toString(16)}${sa.nonce === undefined ? '' : `~${sa.nonce}`}`;
}

/**
 * Keys drawn from the CSPRNG and remembered in a store. `draw` is injected (the edge passes
 * crypto.randomBytes) so this stays free of I/O; the caller persists `entries()` with mode 0600.
 */
export class StoredKeySource implements KeySource {
  private readonly keys: Map<string, string>;
  private dirty = false;
  constructor(
    entries: Record<string, string>,
    private readonly draw: (n: number) => Buffer,
  ) {
    this.keys = new Map(Object.entries(entries));
  }
  key(sa: SaKeyId, bytes: number): Buffer {
    const id = keyStoreId(sa);
    const hex = this.keys.get(id);
    if (hex !== undefined) {
      const k = Buffer.from(hex, 'hex');
      if (k.length === bytes) return k;
    }
    const k = this.draw(bytes);
    this.keys.set(id, k.toString('hex'));
    this.dirty = true;
    return k;
  }
  /** keep only keys of SAs still in use */
  retain(ids: Set<string>): void {
    for (const k of [...this.keys.keys()]) {
      if (!ids.has(k)) {
        this.keys.delete(k);
        this.dirty = true;
      }
    }
  }
  changed(): boolean {
    return this.dirty;
  }
  entries(): Record<string, string> {
    return Object.fromEntries([...this.keys].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  }
}
