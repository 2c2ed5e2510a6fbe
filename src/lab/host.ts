/**
 * Where the lab's own commands run: the lab "switch" namespace that holds the bridges and the
 * bridge-side veth ends. Directly, that is the controller's network namespace on this machine;
 * with User-Mode Linux, it is the guest's root namespace, reached through the guest agent.
 *
 * Process starts are expensive inside User-Mode Linux (about a second each), so callers batch
 * work into one `sh -c` script per step.
 */
import { execa } from 'execa';
import type { Guest } from './uml.js';

export interface HostResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface LabHost {
  readonly kind: 'direct' | 'uml';
  run(argv: readonly string[], opts?: { stdin?: string; timeoutMs?: number }): Promise<HostResult>;
}

export class DirectHost implements LabHost {
  readonly kind = 'direct' as const;
  async run(argv: readonly string[], opts: { stdin?: string; timeoutMs?: number } = {}): Promise<HostResult> {
    const r = await execa(argv[0]!, argv.slice(1), { input: opts.stdin ?? '', reject: false, timeout: opts.timeoutMs ?? 300_000 });
    return { code: r.exitCode ?? 1, stdout: String(r.stdout), stderr: String(r.stderr) };
  }
}

export class GuestHost implements LabHost {
  readonly kind = 'uml' as const;
  constructor(private readonly guest: Guest) {}
  async run(argv: readonly string[], opts: { stdin?: string; timeoutMs?: number } = {}): Promise<HostResult> {
    const r = await this.guest.exec(argv, { ...(opts.stdin !== undefined ? { stdin: opts.stdin } : {}), timeoutMs: opts.timeoutMs ?? 300_000 });
    return { code: r.exitCode, stdout: r.stdout, stderr: r.stderr };
  }
}

/** Runs a POSIX sh script (set -e) and throws with its stderr on failure. */
export async function script(h: LabHost, what: string, lines: string[], opts: { timeoutMs?: number } = {}): Promise<string> {
  const r = await h.run(['sh', '-e', '-c', lines.join('\n')], opts);
  if (r.code !== 0) {
    const err = (r.stderr || r.stdout).trim().split('\n').slice(-6).join('; ');
    throw new Error(`${what} failed (exit ${r.code}): ${err}`);
  }
  return r.stdout;
}

/** Runs a command inside a network namespace of the lab (via nsenter: cheaper than ip netns exec). */
export function inNs(ns: string, argv: string[]): string[] {
  return ['nsenter', `--net=/run/netns/${ns}`, ...argv];
}
