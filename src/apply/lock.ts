/**
 * One apply (or destroy) at a time per state file: STATE.lock, created exclusively, says who
 * holds it and since when. A lock left by a process of this machine that no longer runs (an
 * apply killed with SIGKILL) is taken over with a note; any other lock is broken only on request
 * (--break-lock).
 */
import { promises as fs, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import { UserError } from '../util/files.js';

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

async function readLock(file: string): Promise<LockInfo | undefined> {
  try {
    const j = JSON.parse(await fs.readFile(file, 'utf8')) as Partial<LockInfo>;
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
  for (let attempt = 0; attempt < 3; attempt++) {
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
    const holder = await readLock(file);
    if (!holder) {
      // unreadable or half-written: only a deliberate break removes it
      if (!o.breakLock) throw new UserError(`the state is locked (${file} exists but cannot be read); if no other onionctl runs, rerun with --break-lock`);
      o.note?.(`breaking the unreadable lock ${file}`);
      await fs.rm(file, { force: true });
      continue;
    }
    if (holder.host === info.host && !alive(holder.pid)) {
      o.note?.(`taking over a stale lock: ${describeLock(holder)} no longer runs`);
      await fs.rm(file, { force: true });
      continue;
    }
    if (o.breakLock) {
      o.note?.(`breaking the lock held by ${describeLock(holder)}`);
      await fs.rm(file, { force: true });
      continue;
    }
    throw new UserError(`the state is locked by ${describeLock(holder)}; wait for that run to finish, or rerun with --break-lock if it is gone (lock file ${file})`);
  }
  throw new UserError(`could not take the lock ${file}`);
}
