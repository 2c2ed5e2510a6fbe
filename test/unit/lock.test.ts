/**
 * src/apply/lock.ts: STATE.lock, one apply or destroy at a time per state file.
 */
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { acquireLock, describeLock, lockPath, type LockInfo } from '../../src/apply/lock.js';
import { UserError } from '../../src/util/errors.js';

let dir: string;
let state: string;
beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'onionctl-lock-'));
  state = path.join(dir, 'net.state.json');
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

const readInfo = (): LockInfo => JSON.parse(readFileSync(lockPath(state), 'utf8')) as LockInfo;
const writeInfo = (i: Partial<LockInfo>) => writeFileSync(lockPath(state), JSON.stringify(i), { mode: 0o600 });

/** the pid of a process of this machine that has exited */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  const pid = Number(r.stdout);
  expect(pid).toBeGreaterThan(0);
  // it has been reaped: signal 0 must fail with ESRCH (a reused pid would make the test meaningless)
  expect(() => process.kill(pid, 0)).toThrow();
  return pid;
}

describe('acquire and release', () => {
  test('the lock file says who holds it and since when, mode 0600, and goes on release', async () => {
    const before = Date.now();
    const l = await acquireLock(state, 'apply net.yaml');
    expect(l.file).toBe(`${state}.lock`);
    const i = readInfo();
    expect(i).toEqual({ user: os.userInfo().username, host: os.hostname(), pid: process.pid, since: l.info.since, command: 'apply net.yaml' });
    expect(Date.parse(i.since)).toBeGreaterThanOrEqual(before - 1000);
    expect(Date.parse(i.since)).toBeLessThanOrEqual(Date.now() + 1000);
    expect(statSync(l.file).mode & 0o777).toBe(0o600);
    await l.release();
    expect(existsSync(l.file)).toBe(false);
    // releasing twice is harmless, and the lock can be taken again
    await l.release();
    const again = await acquireLock(state, 'destroy net.yaml');
    expect(readInfo().command).toBe('destroy net.yaml');
    again.releaseSync();
    expect(existsSync(again.file)).toBe(false);
  });

  test('0600 even under a permissive umask', async () => {
    const old = process.umask(0o000);
    try {
      const l = await acquireLock(state, 'apply');
      expect(statSync(l.file).mode & 0o777).toBe(0o600);
      await l.release();
    } finally {
      process.umask(old);
    }
  });
});

describe('a lock someone holds', () => {
  test('a second acquire is refused, naming user, host, pid, command and since; the lock stays the holder\'s', async () => {
    const l = await acquireLock(state, 'apply net.yaml');
    const e = await acquireLock(state, 'destroy net.yaml').catch((x: unknown) => x);
    expect(e).toBeInstanceOf(UserError);
    const msg = (e as Error).message;
    expect(msg).toContain(`${os.userInfo().username}@${os.hostname()}`);
    expect(msg).toContain(`pid ${process.pid}`);
    expect(msg).toContain('"apply net.yaml"');
    expect(msg).toContain(`since ${l.info.since}`);
    expect(msg).toContain('--break-lock');
    expect(msg).toContain(l.file);
    expect(readInfo().command).toBe('apply net.yaml');
    expect(describeLock(l.info)).toBe(`${l.info.user}@${l.info.host} (pid ${process.pid}, "apply net.yaml") since ${l.info.since}`);
    await l.release();
  });

  test('a lock of another host is never taken over (its pid cannot be checked from here), even if that pid is dead here', async () => {
    writeInfo({ user: 'ops', host: `not-${os.hostname()}`, pid: deadPid(), since: '2024-01-01T00:00:00.000Z', command: 'apply' });
    await expect(acquireLock(state, 'apply')).rejects.toThrow(/locked by ops@not-.* since 2024-01-01T00:00:00\.000Z/);
    expect(readInfo().user).toBe('ops');
  });

  test('a stale lock of a dead process of this machine is taken over, with a note', async () => {
    const pid = deadPid();
    writeInfo({ user: 'ops', host: os.hostname(), pid, since: '2024-01-01T00:00:00.000Z', command: 'apply killed' });
    const notes: string[] = [];
    const l = await acquireLock(state, 'apply', { note: (s) => notes.push(s) });
    expect(readInfo().pid).toBe(process.pid);
    expect(notes).toEqual([expect.stringMatching(new RegExp(`taking over a stale lock: ops@.* \\(pid ${pid}, "apply killed"\\) since 2024-01-01T00:00:00\\.000Z no longer runs`))]);
    await l.release();
  });

  test('two runs taking over one stale lock at once: exactly one gets it, every time (20 tries, and 4 runs at once)', async () => {
    for (let i = 0; i < 20; i++) {
      for (const runs of [2, 4]) {
        writeInfo({ user: 'ops', host: os.hostname(), pid: deadPid(), since: '2024-01-01T00:00:00.000Z', command: 'apply killed' });
        const results = await Promise.allSettled(Array.from({ length: runs }, (_, j) => acquireLock(state, `apply run${j}`)));
        const won = results.filter((r) => r.status === 'fulfilled');
        expect({ i, runs, won: won.length }).toEqual({ i, runs, won: 1 });
        for (const r of results) if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(UserError);
        // the file names the winner, and no takeover mutex is left beside it
        const winner = (won[0] as PromiseFulfilledResult<Awaited<ReturnType<typeof acquireLock>>>).value;
        expect(readInfo().command).toBe(winner.info.command);
        expect(readdirSync(path.dirname(state)).filter((f) => f !== path.basename(lockPath(state)) && f.startsWith(path.basename(lockPath(state))))).toEqual([]);
        await winner.release();
        expect(existsSync(lockPath(state))).toBe(false);
      }
    }
  });

  test('--break-lock takes a live holder\'s lock, with a note naming it', async () => {
    const holder = await acquireLock(state, 'apply (hung)');
    const notes: string[] = [];
    const l = await acquireLock(state, 'apply', { breakLock: true, note: (s) => notes.push(s) });
    expect(notes).toEqual([expect.stringContaining(`breaking the lock held by ${describeLock(holder.info)}`)]);
    expect(readInfo()).toMatchObject({ command: 'apply', pid: process.pid });
    await l.release();
  });

  test('an unreadable lock is refused, and removed only with --break-lock', async () => {
    writeFileSync(lockPath(state), '{"user": "ops", "ho');
    await expect(acquireLock(state, 'apply')).rejects.toThrow(/exists but cannot be read.*--break-lock/);
    expect(readFileSync(lockPath(state), 'utf8')).toBe('{"user": "ops", "ho');
    const notes: string[] = [];
    const l = await acquireLock(state, 'apply', { breakLock: true, note: (s) => notes.push(s) });
    expect(notes).toEqual([expect.stringContaining('breaking the unreadable lock')]);
    expect(readInfo().pid).toBe(process.pid);
    await l.release();
  });

  test('a holder whose lock was broken does not remove the new holder\'s lock when it releases', async () => {
    const first = await acquireLock(state, 'apply (hung)');
    const second = await acquireLock(state, 'apply', { breakLock: true });
    await first.release();
    first.releaseSync();
    expect(existsSync(lockPath(state))).toBe(true);
    expect(readInfo().since).toBe(second.info.since);
    expect(readInfo().command).toBe('apply');
    // so a third run is still refused
    await expect(acquireLock(state, 'destroy')).rejects.toThrow(/locked by/);
    await second.release();
    expect(existsSync(lockPath(state))).toBe(false);
  });

  test('a lock directory that cannot be written is a user error naming the file', async () => {
    const missing = path.join(dir, 'no', 'such', 'dir', 'state.json');
    await expect(acquireLock(missing, 'apply')).rejects.toThrow(UserError);
    await expect(acquireLock(missing, 'apply')).rejects.toThrow(/cannot create the lock .*state\.json\.lock/);
  });
});
