/**
 * What every benchmark needs: the statistics, a timestamped log on stderr, the onionctl CLI as a
 * child process, a LabHost for the lab's switch namespace, and the load average (printed beside
 * every result: these machines are shared, so a number is read with the load it was taken under).
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DirectHost, GuestHost, type HostResult, type LabHost } from '../src/lab/host.js';
import { labDir, readPointer, readRecord, type LabRecord } from '../src/lab/record.js';
import { attachGuest } from '../src/lab/uml.js';

export interface Stat {
  median: number;
  min: number;
  max: number;
  n: number;
}

/** median, min, max of the finite values */
export function stat(xs: readonly number[]): Stat {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return { median: NaN, min: NaN, max: NaN, n: 0 };
  const m = v.length >> 1;
  return { median: v.length % 2 ? v[m]! : (v[m - 1]! + v[m]!) / 2, min: v[0]!, max: v[v.length - 1]!, n: v.length };
}

const t0 = Date.now();
/** a line on stderr, stamped with the seconds since the benchmark started */
export const log = (s: string): void => void process.stderr.write(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(7)}s] ${s}\n`);

/** the built CLI beside this module (dist/bench -> dist/src/cli/bin.js) */
export const binPath = (): string => path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/cli/bin.js');

let running: { child: ReturnType<typeof spawn>; done: Promise<number> } | undefined;

/** The onionctl child running now, if any (to stop it when the benchmark is interrupted). */
export const currentChild = () => running;

/** Runs `onionctl ARGS` as a child process; its output goes to our stderr; resolves to its exit code. */
export function onionctl(args: string[]): Promise<number> {
  const child = spawn(process.execPath, [binPath(), ...args], { stdio: ['ignore', 2, 2] });
  const done = new Promise<number>((resolve) => {
    child.on('error', () => resolve(1));
    child.on('exit', (code) => resolve(code ?? 1));
  });
  const me = { child, done };
  running = me;
  void done.then(() => {
    if (running === me) running = undefined;
  });
  return done;
}

/** The lab's switch namespace on this machine (the lab without UML): commands run inside it. */
export class CtlHost implements LabHost {
  readonly kind = 'direct' as const;
  private readonly d = new DirectHost();
  constructor(private readonly ns: string) {}
  run(argv: readonly string[], opts?: { stdin?: string; timeoutMs?: number }): Promise<HostResult> {
    return this.d.run(['ip', 'netns', 'exec', this.ns, ...argv], opts);
  }
}

/** a shell command run in a lab namespace */
export const nsx = (ns: string, cmd: string): string => `nsenter --net=/run/netns/${ns} ${cmd}`;

/** the 1-minute load average (or the first `n` of /proc/loadavg's three) */
export async function loadavg(n = 1): Promise<string> {
  return (await fs.readFile('/proc/loadavg', 'utf8').catch(() => '?')).split(' ').slice(0, n).join(' ');
}

/**
 * Tears the lab of `topo` down once, however the benchmark ends: a `lab up` still running is
 * stopped first (it removes what it made itself), then `onionctl lab down`, then `tmp` is
 * removed, then `after` runs (what the benchmark changed on this machine, put back). SIGINT and
 * SIGTERM tear down and exit; call dispose() after the last down().
 */
export function labTeardown(topo: string, tmp: string, after?: () => Promise<void>): { down(): Promise<void>; stopping(): boolean; dispose(): void } {
  let downP: Promise<void> | undefined;
  const down = () =>
    (downP ??= (async () => {
      log('tearing the lab down');
      const r = currentChild();
      if (r) {
        r.child.kill('SIGTERM');
        await r.done;
      }
      const code = await onionctl(['lab', 'down', topo]);
      if (code !== 0) log(`onionctl lab down exited ${code}; check ip netns list and ${labDir('*')}`);
      await fs.rm(tmp, { recursive: true, force: true });
      await after?.().catch(() => undefined);
    })());
  return { down, stopping: () => downP !== undefined, dispose: exitOnSignals(down) };
}

/** SIGINT and SIGTERM run `down`, then exit 130 / 143; the returned function removes the handlers. */
export function exitOnSignals(down: () => Promise<void>): () => void {
  const onSignal = (sig: NodeJS.Signals) => {
    log(`${sig}: stopping`);
    void down().then(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
}

/** node:util parseArgs options every lab benchmark takes: which lab kernel, and xfrm_interface */
export const KERNEL_OPTIONS = {
  kernel: { type: 'string' },
  'xfrm-interface': { type: 'boolean', default: false },
} as const;
export const KERNEL_USAGE = '[--kernel PATH|6.12] [--xfrm-interface]';

/** `onionctl lab up` arguments for those options */
export function kernelUpArgs(v: { kernel?: string | undefined; 'xfrm-interface'?: boolean | undefined }): string[] {
  return [...(v.kernel !== undefined ? ['--kernel', v.kernel] : []), ...(v['xfrm-interface'] ? ['--xfrm-interface'] : [])];
}

/**
 * `onionctl lab up TOPO ...upArgs`, tried up to `attempts` times (a failed up removes what it
 * made, so a transient failure is simply tried again: before 9197841, about one boot in three
 * failed with "UML exited during boot"), then the lab's record and a host to run commands in
 * it (the UML guest, or the switch namespace of a lab without UML). Throws when every attempt
 * failed or the benchmark is stopping.
 */
export async function bringUpLab(topo: string, upArgs: readonly string[], stopping: () => boolean, attempts = 3): Promise<{ rec: LabRecord; host: LabHost }> {
  let code = 1;
  for (let attempt = 1; attempt <= attempts && !stopping(); attempt++) {
    code = await onionctl(['lab', 'up', topo, ...upArgs]);
    if (code === 0) break;
    if (attempt < attempts && !stopping()) log(`onionctl lab up exited ${code}; trying again (${attempt + 1}/${attempts})`);
  }
  if (stopping()) throw new Error('stopped');
  if (code !== 0) throw new Error(`onionctl lab up exited ${code}`);
  const id = await readPointer(topo);
  const rec = id ? await readRecord(labDir(id)) : undefined;
  if (!rec) throw new Error('no lab record after lab up');
  const host: LabHost = rec.mode === 'uml' ? new GuestHost(await attachGuest(rec.guestDir!)) : new CtlHost(rec.ctlNs);
  return { rec, host };
}

/**
 * The real `onionctl apply` of topology `file` on the lab's nodes, over SSH from the lab's
 * controller namespace, with the lab's state, secret and SSH key: how a benchmark changes what
 * the routers hold. Resolves to the wall time and the exit code.
 */
export async function labApply(topo: string, rec: LabRecord, file: string, extra: readonly string[] = []): Promise<{ seconds: number; code: number }> {
  const ctl = rec.ctl;
  if (!ctl) throw new Error('the lab record has no controller files');
  const t0 = process.hrtime.bigint();
  const code = await onionctl(['-q', 'lab', 'exec', topo, 'onionctl', '-q', 'apply', file, '--state', ctl.state, '--secret', ctl.secret, '--identity', ctl.identity, '--auto-approve', ...extra]);
  return { seconds: Number(process.hrtime.bigint() - t0) / 1e9, code };
}

/** Runs `main` when `moduleUrl` is the script node was started with (not when a test imports it). */
export function runIfMain(moduleUrl: string, name: string, main: () => Promise<number>): void {
  if (!process.argv[1] || path.resolve(process.argv[1]) !== fileURLToPath(moduleUrl)) return;
  main().then(
    (code) => process.exit(code),
    (e: unknown) => {
      process.stderr.write(`${name}: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exit(1);
    },
  );
}
