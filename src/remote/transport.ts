/**
 * How onionctl runs commands on a node. Commands are argv arrays; they become a string only to
 * cross SSH (quoted for the remote shell) or for display. Secrets travel on stdin only.
 */
import { execa } from 'execa';
import { OnionctlError } from '../util/errors.js';

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  stdin?: string;
  timeoutMs?: number;
}

export interface Transport {
  /** e.g. "or1 (ssh root@198.51.100.11:22)" */
  readonly label: string;
  exec(argv: readonly string[], opts?: ExecOptions): Promise<ExecResult>;
  close(): Promise<void>;
}

export class TransportError extends OnionctlError {
  readonly kind = 'transport' as const;
  constructor(
    readonly node: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** POSIX shell quoting, for the remote side of SSH and for display. */
export function shellQuote(arg: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(arg)) return arg;
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

export function shellJoin(argv: readonly string[]): string {
  return argv.map(shellQuote).join(' ');
}

/** Runs commands in a network namespace on this machine (lab stand-in and tests). */
export class NetnsTransport implements Transport {
  readonly label: string;
  constructor(
    readonly node: string,
    private readonly netns: string,
  ) {
    this.label = `${node} (netns ${netns})`;
  }
  async exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const r = await execa('ip', ['netns', 'exec', this.netns, ...argv], {
      input: opts.stdin ?? '',
      reject: false,
      timeout: opts.timeoutMs ?? 60_000,
    });
    return { exitCode: r.exitCode ?? 1, stdout: String(r.stdout), stderr: String(r.stderr) };
  }
  async close(): Promise<void> {}
}
