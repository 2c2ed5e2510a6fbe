/**
 * One apply (or destroy) at a time per state file: STATE.lock, created exclusively, says who
 * holds it and since when. A lock left by a process of this machine that no longer runs (an
 * apply killed with SIGKILL) is taken over with a note; any other lock is broken only on request
 * (--break-lock).
 */
import { promises as fs, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import { UserError } from '../util/errors.js';

export interface LockInfo {
  user: string;
  host: string;
  pid: number;
  since: string;
  command: string;
}

export interface Lock {
  file: string;
  info: LockInfo;
  release(): Promise<void>;
  /** for exit handlers: release without awaiting */
  releaseSync(): void;
}

export const lockPath = (statePath: string) => `${statePath}.lock`;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Removes the lock file only if it still holds `expected` (the holder judged stale, or broken on
 * request), so that two runs can never both take one lock over: only the run that holds the
 * takeover mutex (STATE.lock.takeover, created exclusively) removes, and it reads the lock again
 * under the mutex. Creating a lock never needs the mutex, and a lock file that exists cannot be
 * replaced by a creator, so what was read under the mutex is what is removed. Returns false when
 * the lock was not the expected one any more (the caller looks again).
 */
async function removeIfStill(file: string, expected: string): Promise<boolean> {
  const mutex = `${file}.takeover`;
  for (let i = 0; ; i++) {
    try {
      await fs.writeFile(mutex, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new UserError(`cannot create ${mutex}: ${(e as Error).message}`);
      // another run is taking the lock over; this is over in milliseconds
      if (i >= TAKEOVER_WAITS) {
        throw new UserError(`another onionctl has been taking over the lock ${file} for ${(TAKEOVER_WAITS * TAKEOVER_WAIT_MS) / 1000} s; if none runs, remove ${mutex}`);
      }
      await new Promise((r) => setTimeout(r, TAKEOVER_WAIT_MS));
    }
  }
  try {
    if ((await readLockText(file)) !== expected) return false;
    await fs.rm(file, { force: true });
    return true;
  } finally {
    await fs.rm(mutex, { force: true });
  }
}
const TAKEOVER_WAITS = 100;
const TAKEOVER_WAIT_MS = 50;

async function readLockText(file: string): Promise<string | undefined> {
  return fs.readFile(file, 'utf8').catch(() => undefined);
}

function parseLock(text: string | undefined): LockInfo | undefined {
  if (text === undefined) return undefined;
  try {
    const j = JSON.parse(text) as Partial<LockInfo>;
    if (typeof j.pid !== 'number' || typeof j.host !== 'string') return undefined;
    return { user: String(j.user ?? '?'), host: j.host, pid: j.pid, since: String(j.since ?? '?'), command: String(j.command ?? '?') };
  } catch {
    return undefined;
  }
}

export const describeLock = (i: LockInfo) => `${i.user}@${i.host} (pid ${i.pid}, "${i.command}") since ${i.since}`;

export async function acquireLock(statePath: string, command: string, o: { breakLock?: boolean; note?: (s: string) => void } = {}): Promise<Lock> {
  const file = lockPath(statePath);
  const info: LockInfo = { user: os.userInfo().username, host: os.hostname(), pid: process.pid, since: new Date().toISOString(), command };
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      const mine = JSON.stringify(info, null, 2) + '\n';
      await fs.writeFile(file, mine, { flag: 'wx', mode: 0o600 });
      let held = true;
      // a lock broken by another run (--break-lock, or taken over as stale) is that run's now:
      // remove the file only while it still holds what this run wrote
      const release = async () => {
        if (!held) return;
        held = false;
        if ((await fs.readFile(file, 'utf8').catch(() => undefined)) === mine) await fs.rm(file, { force: true });
      };
      const releaseSync = () => {
        if (!held) return;
        held = false;
        try {
          if (readFileSync(file, 'utf8') === mine) rmSync(file, { force: true });
        } catch {
          /* already gone */
        }
      };
      return { file, info, release, releaseSync };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new UserError(`cannot create the lock ${file}: ${(e as Error).message}`);
    }
    const text = await readLockText(file);
    if (text === undefined) continue; // gone in the meantime: try to create it again
    const holder = parseLock(text);
    if (!holder) {
      // unreadable or half-written: only a deliberate break removes it
      if (!o.breakLock) throw new UserError(`the state is locked (${file} exists but cannot be read); if no other onionctl runs, rerun with --break-lock`);
      if (await removeIfStill(file, text)) o.note?.(`breaking the unreadable lock ${file}`);
      continue;
    }
    if (holder.host === info.host && !alive(holder.pid)) {
      if (await removeIfStill(file, text)) o.note?.(`taking over a stale lock: ${describeLock(holder)} no longer runs`);
      continue;
    }
    if (o.breakLock) {
      if (await removeIfStill(file, text)) o.note?.(`breaking the lock held by ${describeLock(holder)}`);
      continue;
    }
    throw new UserError(`the state is locked by ${describeLock(holder)}; wait for that run to finish, or rerun with --break-lock if it is gone (lock file ${file})`);
  }
  throw new UserError(`could not take the lock ${file}`);
}
