/**
 * File I/O at the edge: atomic 0600 writes, the key secret, the state file, templates.
 */
import { randomBytes } from 'node:crypto';
import { constants, existsSync, promises as fs, readFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { parseJson } from './json.js';
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

/**
 * Files that hold or lead to keys (the secret, the key store, the state, the high-water mark) are
 * trusted only when nobody else could have written them: opened without following a symbolic
 * link (O_NOFOLLOW), checked on the opened descriptor (a regular file, owned by the effective
 * user, no group or other bits), and only in a directory whose every ancestor is owned by that
 * user or root and not writable by others (unless sticky, like /tmp).
 */
const euid = (): number | undefined => process.geteuid?.();

/** Why a directory and its ancestors could let someone else replace a file in it (undefined: safe). */
export async function unsafeDirectory(dir: string): Promise<string | undefined> {
  let real: string;
  try {
    real = await fs.realpath(dir);
  } catch (e) {
    return `${dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`;
  }
  const me = euid();
  for (let d = real; ; d = path.dirname(d)) {
    const st = await fs.stat(d);
    if (me !== undefined && st.uid !== me && st.uid !== 0) return `directory ${d} belongs to uid ${st.uid}, not to you (uid ${me}) or root`;
    if ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0) {
      return `directory ${d} can be written by ${st.mode & 0o002 ? 'everyone' : 'its group'} (mode ${(st.mode & 0o7777).toString(8)}); run: chmod go-w ${d}`;
    }
    if (path.dirname(d) === d) return undefined;
  }
}

async function checkDirectory(file: string, what: string): Promise<void> {
  const why = await unsafeDirectory(path.dirname(path.resolve(file)));
  if (why) throw new UserError(`${what} ${file} is refused: ${why}; someone else could put their own file there`);
}

/**
 * Reads a private file as described above; undefined when it does not exist. `maxBytes` bounds
 * what is read.
 */
export async function readPrivateFile(file: string, what: string, maxBytes: number): Promise<string | undefined> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'ELOOP') throw new UserError(`${what} ${file} is a symbolic link; onionctl does not follow links to files that hold keys: put the file itself there`);
    throw new UserError(`cannot read ${what} ${file}: ${code ?? (e as Error).message}`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new UserError(`${what} ${file} is not a regular file`);
    const me = euid();
    if (me !== undefined && st.uid !== me) throw new UserError(`${what} ${file} belongs to uid ${st.uid}, not to you (uid ${me}); a file someone else wrote is not trusted`);
    if ((st.mode & 0o077) !== 0) {
      throw new UserError(`${what} ${file} is readable by others (mode ${(st.mode & 0o777).toString(8)}); run: chmod 600 ${file}`);
    }
    if (st.size > maxBytes) throw new UserError(`${what} ${file} is larger than ${Math.round(maxBytes / 1024 / 1024)} MiB; it is not onionctl's`);
    await checkDirectory(file, what);
    const buf = Buffer.alloc(Math.min(st.size, maxBytes) + 1);
    let n = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
      if (bytesRead === 0) break;
      n += bytesRead;
      if (n > maxBytes) throw new UserError(`${what} ${file} is larger than ${Math.round(maxBytes / 1024 / 1024)} MiB; it is not onionctl's`);
      if (n === buf.length) break;
    }
    return buf.subarray(0, n).toString('utf8');
  } finally {
    await fh.close();
  }
}

const SECRET_MAX = 64 * 1024;
const STATE_MAX = 1024 * 1024 * 1024;
const STORE_MAX = 1024 * 1024 * 1024;
const HIGH_WATER_MAX = 16 * 1024 * 1024;

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

const dotted = (p: readonly PropertyKey[]) => p.map(String).join('.') || '(top)';

/**
 * A private file's text as JSON checked against `schema`; `where` says where in the file the
 * first problem is (the path, dotted, unless the file's keys need quoting).
 */
function parseChecked<T>(text: string, file: string, what: string, schema: z.ZodType<T>, where: (path: readonly PropertyKey[]) => string = dotted): T {
  let raw: unknown;
  try {
    raw = parseJson(text);
  } catch (e) {
    throw new UserError(`${what} ${file} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const i = parsed.error.issues[0]!;
    throw new UserError(`${what} ${file} is damaged at ${where(i.path)}: ${i.message}`);
  }
  return parsed.data;
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
