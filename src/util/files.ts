/**
 * File I/O at the edge, for any file: atomic 0600 writes, reading a private file safely, JSON
 * checked against a schema, the package's own files. What onionctl keeps in such files (state,
 * secret, key store, high-water mark) is in src/store/.
 */
import { randomBytes } from 'node:crypto';
import { constants, existsSync, promises as fs, readFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { parseJson } from './json.js';
import { UserError } from './errors.js';
import { fileURLToPath } from 'node:url';


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

/** Throws when the directory of `file` is unsafe (unsafeDirectory). */
export async function checkDirectory(file: string, what: string): Promise<void> {
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

const dotted = (p: readonly PropertyKey[]) => p.map(String).join('.') || '(top)';

/**
 * A private file's text as JSON checked against `schema`; `where` says where in the file the
 * first problem is (the path, dotted, unless the file's keys need quoting).
 */
export function parseChecked<T>(text: string, file: string, what: string, schema: z.ZodType<T>, where: (path: readonly PropertyKey[]) => string = dotted): T {
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
