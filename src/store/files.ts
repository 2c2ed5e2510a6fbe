/**
 * onionctl's own files: the key secret, the state, the high-water mark, the key store and the
 * render templates. Each private one is read with util/files.ts readPrivateFile (no symbolic
 * links, owner-only, bounded) and checked against its schema before anything uses it.
 */
import { randomBytes } from 'node:crypto';
import { constants, promises as fs } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import type { Templates } from '../render/render.js';
import { HighWaterSchema, emptyHighWater, type HighWater } from '../state/high-water.js';
import { StateSchema, emptyState, type State } from '../state/model.js';
import { UserError } from '../util/errors.js';
import { checkDirectory, packageRoot, parseChecked, readPrivateFile, writeFileAtomic } from '../util/files.js';

const SECRET_MAX = 64 * 1024;
const STATE_MAX = 1024 * 1024 * 1024;
const STORE_MAX = 1024 * 1024 * 1024;
const HIGH_WATER_MAX = 16 * 1024 * 1024;

/** The KDF secret if it exists (never created: for commands that only verify, such as show). */
export async function loadSecret(file: string): Promise<Buffer | undefined> {
  const text = await readPrivateFile(file, 'key secret', SECRET_MAX);
  if (text === undefined) return undefined;
  const t = text.trim();
  if (!/^(?:[0-9a-f]{2}){32,}$/.test(t)) throw new UserError(`key secret ${file} is not a hex string of at least 32 bytes`);
  return Buffer.from(t, 'hex');
}

/** The 32-byte KDF secret, created from the CSPRNG on first use, mode 0600. */
export async function loadOrCreateSecret(file: string): Promise<{ secret: Buffer; created: boolean }> {
  // a bounded number of rounds: another run may create the file between our read and our create
  for (let attempt = 0; attempt < 3; attempt++) {
    const text = await readPrivateFile(file, 'key secret', SECRET_MAX);
    if (text !== undefined) {
      const t = text.trim();
      if (!/^(?:[0-9a-f]{2}){32,}$/.test(t)) throw new UserError(`key secret ${file} is not a hex string of at least 32 bytes`);
      return { secret: Buffer.from(t, 'hex'), created: false };
    }
    await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    await checkDirectory(file, 'key secret');
    const secret = randomBytes(32);
    // O_EXCL: never overwrite a secret that appeared meanwhile (nor follow a link planted there)
    const fh = await fs.open(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'EEXIST') return undefined;
      throw new UserError(`cannot create key secret ${file}: ${e.code ?? e.message}`);
    });
    if (!fh) continue; // someone made it first: read theirs (checked like any other)
    try {
      await fh.writeFile(secret.toString('hex') + '\n');
      await fh.sync();
    } finally {
      await fh.close();
    }
    return { secret, created: true };
  }
  throw new UserError(`key secret ${file} keeps appearing and vanishing (a dangling link, or another program); look at it`);
}

export async function loadState(file: string): Promise<{ state: State; fresh: boolean }> {
  const text = await readPrivateFile(file, 'state file', STATE_MAX);
  if (text === undefined) return { state: emptyState(randomBytes(32).toString('hex')), fresh: true };
  return { state: parseChecked(text, file, 'state file', StateSchema), fresh: false };
}

export async function saveState(file: string, state: State): Promise<void> {
  await writeFileAtomic(file, JSON.stringify(state, null, 2) + '\n', 0o600);
}

/** The high-water mark file (state/high-water.ts); absent: no state was saved beside this secret yet. */
export async function loadHighWater(file: string): Promise<HighWater> {
  const text = await readPrivateFile(file, 'high-water mark', HIGH_WATER_MAX);
  if (text === undefined) return emptyHighWater();
  return parseChecked(text, file, 'high-water mark', HighWaterSchema);
}

export async function saveHighWater(file: string, hw: HighWater): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  await writeFileAtomic(file, JSON.stringify(hw, null, 2) + '\n', 0o600);
}

/** key store entries: keyStoreId (kdf.ts) -> key hex */
const KeyStoreSchema = z.record(z.string().min(1).max(400), z.string().regex(/^(?:[0-9a-f]{2}){16,128}$/));

export async function loadKeyStore(file: string): Promise<Record<string, string>> {
  const text = await readPrivateFile(file, 'key store', STORE_MAX);
  if (text === undefined) return {};
  // the keys of a key store are its entries' ids: quoted and bounded, as the file is not trusted
  return parseChecked(text, file, 'key store', KeyStoreSchema, (p) => JSON.stringify(String(p[0] ?? '(top)')).slice(0, 80));
}

export async function loadTemplates(dir = path.join(packageRoot(), 'templates')): Promise<Templates> {
  const read = (n: string) => fs.readFile(path.join(dir, `${n}.tmpl`), 'utf8');
  const [ip, iptables, nft, sysctl] = await Promise.all([read('ip'), read('iptables'), read('nft'), read('sysctl')]);
  return { ip, iptables, nft, sysctl };
}
