/**
 * File I/O at the edge: atomic 0600 writes, the key secret, the state file, templates.
 */
import { randomBytes } from 'node:crypto';
import { constants, existsSync, promises as fs, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { StateSchema, emptyState, type State } from '../state/model.js';
import { HighWaterSchema, emptyHighWater, type HighWater } from '../state/high-water.js';
import type { Templates } from '../render/render.js';

export class UserError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UserError';
  }
}

/** Write via a temporary file in the same directory, fsync, rename: readers see old or new, never half. */
export async function writeFileAtomic(file: string, content: string | Buffer, mode = 0o600): Promise<void> {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fh = await fs.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
  try {
    await fh.writeFile(content);
    await fh.chmod(mode); // umask may have narrowed or the caller wants it exact
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await fs.rename(tmp, file);
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
  const dh = await fs.open(dir, constants.O_RDONLY).catch(() => undefined);
  if (dh) {
    await dh.sync().catch(() => undefined);
    await dh.close();
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await fs.access(file);
    return true;
  } catch {
    return false;
  }
}

async function checkPrivate(file: string, what: string): Promise<void> {
  const st = await fs.stat(file);
  if ((st.mode & 0o077) !== 0) {
    throw new UserError(`${what} ${file} is readable by others (mode ${(st.mode & 0o777).toString(8)}); run: chmod 600 ${file}`);
  }
}

/** The 32-byte KDF secret, created from the CSPRNG on first use, mode 0600. */
export async function loadOrCreateSecret(file: string): Promise<{ secret: Buffer; created: boolean }> {
  if (await exists(file)) {
    await checkPrivate(file, 'key secret');
    const text = (await fs.readFile(file, 'utf8')).trim();
    if (!/^(?:[0-9a-f]{2}){32,}$/.test(text)) throw new UserError(`key secret ${file} is not a hex string of at least 32 bytes`);
    return { secret: Buffer.from(text, 'hex'), created: false };
  }
  await fs.mkdir(path.dirname(file), { recursive: true });
  const secret = randomBytes(32);
  // O_EXCL: never overwrite a secret that appeared meanwhile; if another run created it first,
  // use that one
  const fh = await fs.open(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600).catch(async (e: NodeJS.ErrnoException) => {
    if (e.code === 'EEXIST') return undefined;
    throw e;
  });
  if (!fh) {
    await new Promise((r) => setTimeout(r, 50));
    return { ...(await loadOrCreateSecret(file)), created: false };
  }
  try {
    await fh.writeFile(secret.toString('hex') + '\n');
    await fh.sync();
  } finally {
    await fh.close();
  }
  return { secret, created: true };
}

export async function loadState(file: string): Promise<{ state: State; fresh: boolean }> {
  if (!(await exists(file))) return { state: emptyState(randomBytes(32).toString('hex')), fresh: true };
  let raw: unknown;
  try {
    raw = JSON.parse(await fs.readFile(file, 'utf8'));
  } catch (e) {
    throw new UserError(`state file ${file} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  const parsed = StateSchema.safeParse(raw);
  if (!parsed.success) {
    const i = parsed.error.issues[0]!;
    throw new UserError(`state file ${file} is damaged at ${i.path.join('.') || '(top)'}: ${i.message}`);
  }
  return { state: parsed.data, fresh: false };
}

export async function saveState(file: string, state: State): Promise<void> {
  await writeFileAtomic(file, JSON.stringify(state, null, 2) + '\n', 0o600);
}

/** The high-water mark file (state/high-water.ts); absent: no state was saved beside this secret yet. */
export async function loadHighWater(file: string): Promise<HighWater> {
  if (!(await exists(file))) return emptyHighWater();
  await checkPrivate(file, 'high-water mark');
  const st = await fs.stat(file);
  if (st.size > 16 * 1024 * 1024) throw new UserError(`high-water mark ${file} is larger than 16 MiB; it is not onionctl's`);
  let raw: unknown;
  try {
    raw = JSON.parse(await fs.readFile(file, 'utf8'));
  } catch (e) {
    throw new UserError(`high-water mark ${file} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  const parsed = HighWaterSchema.safeParse(raw);
  if (!parsed.success) {
    const i = parsed.error.issues[0]!;
    throw new UserError(`high-water mark ${file} is damaged at ${i.path.join('.') || '(top)'}: ${i.message}`);
  }
  return parsed.data;
}

export async function saveHighWater(file: string, hw: HighWater): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true });
  await writeFileAtomic(file, JSON.stringify(hw, null, 2) + '\n', 0o600);
}

export async function loadKeyStore(file: string): Promise<Record<string, string>> {
  if (!(await exists(file))) return {};
  await checkPrivate(file, 'key store');
  return JSON.parse(await fs.readFile(file, 'utf8')) as Record<string, string>;
}

/** The package root: the nearest directory above this module whose package.json is onionctl's. */
export function packageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'onionctl') return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error('cannot find the onionctl package root');
    dir = up;
  }
}

export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as { version: string };
  return pkg.version;
}

export async function loadTemplates(dir = path.join(packageRoot(), 'templates')): Promise<Templates> {
  const read = (n: string) => fs.readFile(path.join(dir, `${n}.tmpl`), 'utf8');
  const [ip, iptables, nft, sysctl] = await Promise.all([read('ip'), read('iptables'), read('nft'), read('sysctl')]);
  return { ip, iptables, nft, sysctl };
}
