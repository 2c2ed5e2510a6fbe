/**
 * Runs the built CLI (dist/src/cli/bin.js) as a child process, the way a user does, and a few
 * file-tree helpers for the CLI and golden tests. Spawning node costs about 0.2 s, so tests
 * start independent runs together (runAll) instead of one after another.
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** The repository root (this file is compiled to dist/test/helpers/cli.js). */
export const ROOT = path.resolve(HERE, '../../..');
/** The CLI compiled together with these tests (dist/src/cli/bin.js). */
export const BIN = path.resolve(HERE, '../../src/cli/bin.js');
export const EXAMPLES = path.join(ROOT, 'examples');
export const BAD_FIXTURES = path.join(ROOT, 'test/fixtures/bad');

export interface RunResult {
  args: string[];
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `onionctl ...args` in `cwd`; never rejects on a non-zero exit. */
export function run(args: string[], opts: { cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    delete env.ONIONCTL_DEBUG; // stacks are only printed on request; tests check they are not
    const child = spawn(process.execPath, [BIN, ...args], { cwd: opts.cwd ?? ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ args, code, stdout, stderr }));
  });
}

/** Runs several independent invocations at once (bounded), results in input order. */
export async function runAll(jobs: { args: string[]; cwd?: string }[], limit = Math.max(2, os.availableParallelism())): Promise<RunResult[]> {
  const results: RunResult[] = new Array(jobs.length);
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const i = next++;
      results[i] = await run(jobs[i]!.args, jobs[i]!.cwd === undefined ? {} : { cwd: jobs[i]!.cwd });
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, jobs.length) }, worker));
  return results;
}

/**
 * Generous per-test and per-hook time limit for tests that spawn the CLI: a busy machine can make
 * one node start take seconds. A limit, not a timing assertion.
 */
export const SPAWN_TIMEOUT = 180_000;

/** A line that looks like a JavaScript stack frame. */
export const STACK_LINE = /^\s+at /m;

export async function tempDir(prefix = 'onionctl-test-'): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), prefix));
}

/** Every regular file under `dir` (relative paths, sorted), with its bytes. */
export async function readTree(dir: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  const walk = async (rel: string) => {
    for (const e of await fs.readdir(path.join(dir, rel), { withFileTypes: true })) {
      const r = rel === '' ? e.name : `${rel}/${e.name}`;
      if (e.isDirectory()) await walk(r);
      else if (e.isFile()) out.set(r, await fs.readFile(path.join(dir, r)));
    }
  };
  await walk('');
  return new Map([...out].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** Permission bits of a file or directory, e.g. 0o600. */
export async function modeOf(file: string): Promise<number> {
  return (await fs.stat(file)).mode & 0o777;
}

export async function exists(file: string): Promise<boolean> {
  return fs.access(file).then(
    () => true,
    () => false,
  );
}
