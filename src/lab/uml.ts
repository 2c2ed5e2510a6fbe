/**
 * A persistent User-Mode Linux (UML) guest for the onionctl lab.
 *
 * Why: the lab needs a kernel with ESP, xfrm, netfilter, veth and bridges,
 * and the host kernel may lack some (see `kernelHasEsp()` in ./esp-probe.ts).
 * Debian's `user-mode-linux` package ships a kernel (`linux.uml`) that runs as
 * an ordinary host process and brings those as modules.
 *
 * How it works (details and measurements in docs/lab-uml.md):
 *
 * - The guest's root file system is the host's `/` through hostfs
 *   (`rootfstype=hostfs rootflags=/ rw`), so the guest runs the host's
 *   binaries (ip, iptables-legacy, sshd, tcpdump, node) and can read and write
 *   host files. The guest mounts its own proc, sysfs, devpts and a tmpfs on
 *   /run, so namespaces, /run/netns, /run/sshd ... stay inside the guest.
 * - A lab directory `dir` on the host is the control channel. `bootGuest()`
 *   copies the guest scripts (src/lab/guest/) to `dir/guest/` and boots UML
 *   with `init=dir/guest/init.sh`. init mounts, loads modules, and starts
 *   `dir/guest/agent.mjs` (node), which polls `dir/spool/` for requests, runs
 *   them as root in the guest and writes stdout, stderr and the exit status
 *   back. The agent writes `dir/ready` when the guest is usable.
 * - UML runs detached (own session and process group) so that it survives
 *   the Node process that booted it: `onionctl lab up`, `lab test` and
 *   `lab down` can be separate invocations that `attachGuest(dir)`.
 *
 * Files in `dir`: `uml.pid` (host pid of the UML kernel process, which is also
 * its process group), `console.log` (guest console), `ready` (JSON, see
 * {@link GuestInfo}), `spool/` (requests), `guest/` (scripts, module root,
 * iptables-legacy symlinks), `uml/` (UML's own umid directory with the
 * mconsole socket), `agent.exit` (present if init or the agent died).
 *
 * Where the guest scripts come from: this file is compiled to
 * `dist/src/lab/uml.js`; at run time it walks up from its own location to the
 * first directory holding a package.json (the repository / package root) and
 * uses `<root>/src/lab/guest/`. `BootOptions.guestSourceDir` overrides that.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { LabError } from './errors.js';

// ---------------------------------------------------------------------------
// Errors

/** `linux.uml` (or another host prerequisite such as modprobe) is missing. */
export class UmlNotFoundError extends LabError {}

/** The guest did not become ready. `consoleTail` holds the end of console.log. */
export class GuestBootError extends LabError {
  constructor(
    message: string,
    readonly consoleTail: string,
    options?: ErrorOptions,
  ) {
    super(`${message}\n--- last lines of the guest console ---\n${consoleTail}`, options);
  }
}

/** There is no running guest in the lab directory (any more). */
export class GuestNotRunningError extends LabError {
}

/** The UML process or the agent inside it died while we were talking to it. */
export class GuestAgentError extends LabError {
  constructor(
    message: string,
    readonly consoleTail: string,
    options?: ErrorOptions,
  ) {
    super(`${message}\n--- last lines of the guest console ---\n${consoleTail}`, options);
  }
}

/** A command run by {@link Guest.exec} exceeded its timeout and was killed (with its process group). */
export class GuestExecTimeoutError extends LabError {
  constructor(
    message: string,
    readonly argv: readonly string[],
    readonly stdout: string,
    readonly stderr: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

// ---------------------------------------------------------------------------
// Public types

export interface BootOptions {
  /** Lab directory on the host (absolute; no whitespace). Created if missing. */
  dir: string;
  /** Guest memory in MiB. Default 512. */
  memMB?: number;
  /** How long to wait for the agent's ready file. Default 120 000 ms (a loaded host slows UML a lot). */
  timeoutMs?: number;
  /** Receives the guest console lines during boot and a few progress lines. */
  log?: (line: string) => void;
  /** The UML kernel binary. Default: $ONIONCTL_UML, else `linux.uml` from PATH. */
  umlBinary?: string;
  /** Modules loaded in addition to {@link DEFAULT_MODULES}. */
  extraModules?: readonly string[];
  /** Directory holding init.sh, modprobe.sh and agent.mjs. Default: <package root>/src/lab/guest. */
  guestSourceDir?: string;
  /**
   * Host network namespace to run the UML process in, so that its network devices (see
   * `extraArgs`, e.g. `eth0=tuntap,TAP`) attach to devices in that namespace only.
   */
  netns?: string;
  /** Extra kernel command-line arguments, e.g. `eth0=tuntap,oc1234t`. */
  extraArgs?: readonly string[];
  /**
   * Hide the host's /root inside the guest behind an empty tmpfs (default
   * true), so guest programs running as root (sshd sessions, ssh, bash) do not
   * read or write the host's dotfiles (~/.bashrc, ~/.ssh, ...). Skipped, with a
   * log line, when the lab directory or the node binary is under /root.
   */
  maskRootHome?: boolean;
}

export interface ExecOptions {
  /** Written to a 0600 file in the spool, which the agent unlinks as soon as it has opened it. */
  stdin?: string;
  /** Added to the guest's base environment (PATH with iptables-legacy first, HOME=/root, TMPDIR=/run/lab/tmp, ...). */
  env?: Record<string, string>;
  /** Working directory in the guest. Default `/`. */
  cwd?: string;
  /**
   * Kill the command (and its whole process group) after this long.
   * Default 120 000 ms; 0 means no limit.
   */
  timeoutMs?: number;
}

export interface ExecResult {
  /** Exit status; 128+N when killed by signal N; 127 if the program was not found. */
  exitCode: number;
  stdout: string;
  stderr: string;
  /** Set when the command was killed by a signal. */
  signal?: string;
}

/** What the agent reports in `dir/ready`. */
export interface GuestInfo {
  /** Guest kernel release (uname -r), e.g. "6.1.176". */
  kernel: string;
  /** Guest pid of the agent. */
  agentPid: number;
  /** Node version running the agent. */
  node: string;
  /** Guest uptime (s) when the agent became ready: roughly the boot time. */
  uptimeAtReady: number;
  /** How long node took from start to ready (ms). */
  agentStartMs: number;
  /** Loaded modules (/proc/modules) at ready time. */
  modules: string[];
}

// ---------------------------------------------------------------------------
// Constants

/** Loaded first: ESP states cannot be created until the DRBG (with SHA-512) is there. */
export const EARLY_MODULES: readonly string[] = ['sha512_generic', 'drbg'];

/**
 * Loaded at boot (modprobe -a). aes_generic, sha1_generic and sha256_generic
 * are built in; modprobe accepts their names. Anything else the kernel asks
 * for later is found through the modprobe wrapper.
 */
export const DEFAULT_MODULES: readonly string[] = [
  // IPsec / xfrm and the crypto it uses
  'xfrm_user', 'esp4', 'xfrm4_tunnel', 'authenc', 'gcm', 'ctr', 'ghash-generic', 'seqiv', 'echainiv',
  'cbc', 'hmac', 'sha1_generic', 'aes_generic',
  // virtual links
  'veth', 'bridge', 'dummy',
  // iptables-legacy: tables, NAT, conntrack and the matches/targets onionctl renders
  'ip_tables', 'iptable_filter', 'iptable_nat', 'iptable_mangle', 'iptable_raw',
  'nf_conntrack', 'nf_nat', 'nf_defrag_ipv4', 'ipt_REJECT',
  'xt_MASQUERADE', 'xt_nat', 'xt_comment', 'xt_policy', 'xt_conntrack', 'xt_state', 'xt_multiport',
  'xt_TCPMSS', 'xt_tcpmss', 'xt_tcpudp', 'xt_mark', 'xt_esp', 'xt_addrtype', 'xt_LOG', 'xt_limit',
];

const SPOOL = 'spool';
const HOSTFS_INIT = 'guest/init.sh';
const DEFAULT_EXEC_TIMEOUT_MS = 120_000;
/** Host-side slack on top of the guest-side command timeout. */
const EXEC_GRACE_MS = 15_000;
const HALT_TIMEOUT_MS = 15_000;
const KILL_WAIT_MS = 5_000;
const MODULE_NAME = /^[A-Za-z0-9_-]+$/;
/** Characters allowed in the lab directory: it ends up on the UML kernel command line. */
const SAFE_DIR = /^\/[A-Za-z0-9._+,:@/-]*$/;

// ---------------------------------------------------------------------------
// Small helpers

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function errno(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
}

async function exists(p: string): Promise<boolean> {
  try {
    await fsp.access(p);
    return true;
  } catch {
    return false;
  }
}

async function unlinkQuiet(p: string): Promise<void> {
  try {
    await fsp.unlink(p);
  } catch {
    /* gone already */
  }
}

/** The last `lines` lines of dir/console.log (best effort). */
export async function consoleTail(dir: string, lines = 40): Promise<string> {
  try {
    const fh = await fsp.open(path.join(dir, 'console.log'), 'r');
    try {
      const { size } = await fh.stat();
      const len = Math.min(size, 64 * 1024);
      const buf = Buffer.alloc(len);
      await fh.read(buf, 0, len, size - len);
      return buf.toString('utf8').replaceAll('\r', '').split('\n').slice(-lines).join('\n');
    } finally {
      await fh.close();
    }
  } catch (err) {
    return `(no console output: ${(err as Error).message})`;
  }
}

/** The kernel-command-line argument that identifies the UML processes of one lab directory. */
function initArg(dir: string): string {
  return `init=${path.join(dir, HOSTFS_INIT)}`;
}

/** Read /proc/<pid>/cmdline as an argv array; undefined if the process is gone. */
function readCmdline(pid: number): string[] | undefined {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return undefined;
  }
}

/** True when host process `pid` exists, is not a zombie, and is a UML kernel of `dir`. */
function isGuestProcess(pid: number, dir: string): boolean {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  // "pid (comm) S ..." - comm may contain spaces/parens, so split after the last ')'.
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  if (state === 'Z' || state === 'X') return false;
  return readCmdline(pid)?.includes(initArg(dir)) ?? false;
}

/**
 * Host pids of every UML process (kernel, its helper threads' processes and the
 * processes that host guest address spaces) started for `dir`. All of them
 * carry the same command line, so they are found by their `init=` argument.
 */
export function findGuestProcesses(dir: string): number[] {
  const abs = path.resolve(dir);
  const pids: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    if (isGuestProcess(pid, abs)) pids.push(pid);
  }
  return pids;
}

/** The pid recorded in dir/uml.pid, or undefined. */
export async function readUmlPid(dir: string): Promise<number | undefined> {
  try {
    const n = Number((await fsp.readFile(path.join(dir, 'uml.pid'), 'utf8')).trim());
    return Number.isInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

function killQuiet(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    /* gone */
  }
}

/** SIGKILL the UML process group and any stray process of `dir`; wait until none is left. */
async function killAll(dir: string, pid: number | undefined): Promise<void> {
  const deadline = Date.now() + KILL_WAIT_MS;
  for (;;) {
    if (pid !== undefined && isGuestProcess(pid, dir)) killQuiet(-pid, 'SIGKILL');
    const left = findGuestProcesses(dir);
    if (left.length === 0) return;
    for (const p of left) killQuiet(p, 'SIGKILL');
    if (Date.now() > deadline) {
      throw new LabError(`UML processes of ${dir} survived SIGKILL: ${left.join(' ')}`);
    }
    await sleep(50);
  }
}

function findInPath(name: string): string | undefined {
  for (const d of (process.env.PATH ?? '').split(':')) {
    if (!d) continue;
    const p = path.join(d, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

/** Walk up from this file to the first directory with a package.json. */
function packageRoot(): string {
  let d = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (fs.existsSync(path.join(d, 'package.json'))) return d;
    const up = path.dirname(d);
    if (up === d) throw new LabError(`no package.json above ${fileURLToPath(import.meta.url)}`);
    d = up;
  }
}

/** Where the guest scripts live in the source tree. */
export function guestSourceDir(): string {
  return path.join(packageRoot(), 'src', 'lab', 'guest');
}

function shQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

let idCounter = 0;
function newId(): string {
  return `${process.pid}-${Date.now().toString(36)}-${(idCounter++).toString(36)}-${randomBytes(4).toString('hex')}`;
}

function checkDir(dir: string): string {
  const abs = path.resolve(dir);
  if (!SAFE_DIR.test(abs)) {
    throw new LabError(
      `lab directory ${JSON.stringify(abs)} must be an absolute path of [A-Za-z0-9._+,:@/-] only ` +
        '(it is passed on the UML kernel command line)',
    );
  }
  return abs;
}

// ---------------------------------------------------------------------------
// Host prerequisites

async function resolveUml(opt: string | undefined): Promise<string> {
  const wanted = opt ?? process.env.ONIONCTL_UML;
  if (wanted) {
    try {
      await fsp.access(wanted, fs.constants.X_OK);
      return wanted;
    } catch (err) {
      throw new UmlNotFoundError(
        `the UML kernel ${wanted} is not an executable file; install it with \`apt-get install user-mode-linux\``,
        { cause: err },
      );
    }
  }
  const found = findInPath('linux.uml');
  if (!found) {
    throw new UmlNotFoundError('linux.uml was not found in PATH; install it with `apt-get install user-mode-linux`', {
      cause: new Error(`searched PATH=${process.env.PATH ?? ''}`),
    });
  }
  return found;
}

/** `linux.uml --version` prints the kernel release (its modules are in /usr/lib/uml/modules/<release>). */
async function umlRelease(uml: string): Promise<string> {
  let out: string;
  try {
    out = (await execa(uml, ['--version'], { timeout: 20_000, stdin: 'ignore' })).stdout.trim();
  } catch (err) {
    throw new UmlNotFoundError(`cannot run ${uml} --version`, { cause: err });
  }
  const release = out.split(/\s+/).pop() ?? '';
  if (!/^\d+\.\d+/.test(release)) throw new LabError(`unexpected output from ${uml} --version: ${out}`);
  return release;
}

// ---------------------------------------------------------------------------
// Guest

/**
 * A running UML guest, reached through the spool in its lab directory. Any
 * number of `Guest` objects (in any number of host processes) may talk to one
 * guest at the same time; requests are independent.
 */
export class Guest {
  /** @internal use bootGuest() or attachGuest() */
  constructor(
    /** Absolute lab directory. */
    readonly dir: string,
    /** Host pid of the UML kernel process (also its process group id). */
    readonly pid: number,
    /** What the agent reported when it became ready. */
    readonly info: GuestInfo,
  ) {}

  private get spool(): string {
    return path.join(this.dir, SPOOL);
  }

  /** True while the UML kernel process of this guest exists. */
  isRunning(): boolean {
    return isGuestProcess(this.pid, this.dir);
  }

  /**
   * Run `argv` in the guest as root (no shell: argv[0] is looked up in PATH and
   * every element reaches the program unchanged). Resolves with the exit code
   * and output whatever the exit code; rejects with GuestExecTimeoutError on
   * timeout, GuestAgentError if the guest or agent dies meanwhile.
   *
   * stdout/stderr are files, not pipes: a command may leave a background
   * process behind (e.g. `sh -c 'tcpdump ... >/run/lab/x.log 2>&1 &'`) and
   * still return at once. On timeout the command's whole process group is
   * killed, including such children.
   */
  async exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    if (!Array.isArray(argv) || argv.length === 0 || !argv.every((a) => typeof a === 'string')) {
      throw new TypeError('Guest.exec: argv must be a non-empty array of strings');
    }
    if (argv.some((a) => a.includes('\0'))) throw new TypeError('Guest.exec: argv elements must not contain NUL');
    const timeoutMs = opts.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS;
    const id = newId();
    const f = (ext: string) => path.join(this.spool, `${id}.${ext}`);
    try {
      if (!this.isRunning()) {
        throw new GuestNotRunningError(`the UML guest in ${this.dir} (pid ${this.pid}) is not running`);
      }
      if (opts.stdin !== undefined) {
        // 0600 and exclusive-create; the agent unlinks it as soon as it has opened it.
        await fsp.writeFile(f('in'), opts.stdin, { mode: 0o600, flag: 'wx' });
      }
      const req = {
        argv,
        env: opts.env ?? {},
        cwd: opts.cwd ?? '/',
        timeoutMs,
        stdin: opts.stdin !== undefined,
      };
      await fsp.writeFile(f('req.tmp'), JSON.stringify(req), { mode: 0o600 });
      await fsp.rename(f('req.tmp'), f('req'));
      const deadline = timeoutMs > 0 ? Date.now() + timeoutMs + EXEC_GRACE_MS : Infinity;
      const raw = await this.waitForFile(f('res'), deadline, `${JSON.stringify(argv[0])}`);
      const res = JSON.parse(raw) as { exitCode: number; signal: string | null; timedOut: boolean; error?: string };
      const [stdout, stderr] = await Promise.all([
        fsp.readFile(f('out'), 'utf8').catch(() => ''),
        fsp.readFile(f('err'), 'utf8').catch(() => ''),
      ]);
      if (res.timedOut) {
        throw new GuestExecTimeoutError(
          `guest command ${JSON.stringify(argv)} timed out after ${timeoutMs} ms and was killed`,
          argv,
          stdout,
          stderr,
        );
      }
      const result: ExecResult = { exitCode: res.exitCode, stdout, stderr };
      if (res.signal) result.signal = res.signal;
      return result;
    } finally {
      // Never leave stdin (possibly a secret) or results behind.
      await Promise.all(['in', 'req.tmp', 'req', 'res', 'out', 'err'].map((e) => unlinkQuiet(f(e))));
    }
  }

  /** Ask the agent to answer; rejects if it does not within `timeoutMs`. */
  async ping(timeoutMs = 10_000): Promise<void> {
    const id = newId();
    const pong = path.join(this.spool, `${id}.pong`);
    try {
      await fsp.writeFile(path.join(this.spool, `${id}.ping`), '', { mode: 0o600 });
      await this.waitForFile(pong, Date.now() + timeoutMs, 'ping');
    } finally {
      await unlinkQuiet(path.join(this.spool, `${id}.ping`));
      await unlinkQuiet(pong);
    }
  }

  /**
   * Power the guest off: the agent kills what it started and exits, init
   * powers off through the guest kernel (sysrq o). Waits for the UML process
   * to exit; after `timeoutMs` SIGKILLs its process group and every stray UML
   * process of this lab directory. Then removes the spool and the pid/ready
   * files (console.log is kept). Safe to call on a guest that is already gone.
   */
  async halt(opts: { timeoutMs?: number } = {}): Promise<void> {
    await haltLab(this.dir, this.pid, opts.timeoutMs ?? HALT_TIMEOUT_MS);
  }

  /**
   * Wait for `file` to appear and return its content. Meanwhile watch the UML
   * process and the agent; reject if either dies or `deadline` passes.
   */
  private async waitForFile(file: string, deadline: number, what: string): Promise<string> {
    let pause = 1;
    let nextCheck = Date.now() + 200;
    for (;;) {
      try {
        return await fsp.readFile(file, 'utf8');
      } catch (err) {
        if (errno(err) !== 'ENOENT') throw err;
      }
      const now = Date.now();
      if (now >= nextCheck) {
        nextCheck = now + 200;
        await this.assertAlive(what);
      }
      if (now > deadline) {
        throw new GuestAgentError(
          `no answer from the guest agent in ${this.dir} for ${what} (deadline passed)`,
          await consoleTail(this.dir),
        );
      }
      await sleep(pause);
      pause = Math.min(20, pause * 2);
    }
  }

  private async assertAlive(what: string): Promise<void> {
    // agent.exit first: when the agent dies, init powers the guest off at once.
    const died = await fsp.readFile(path.join(this.dir, 'agent.exit'), 'utf8').catch(() => undefined);
    if (died !== undefined) {
      throw new GuestAgentError(
        `the guest agent in ${this.dir} died (exit status ${died.trim()}) while waiting for ${what}; ` +
          'the guest powers itself off then',
        await consoleTail(this.dir),
      );
    }
    if (!this.isRunning()) {
      throw new GuestAgentError(
        `the UML guest in ${this.dir} (pid ${this.pid}) exited while waiting for ${what}`,
        await consoleTail(this.dir),
      );
    }
  }
}

/** See Guest.halt(). `pid` may be undefined or stale. */
async function haltLab(dir: string, pid: number | undefined, timeoutMs: number): Promise<void> {
  if (pid !== undefined && isGuestProcess(pid, dir)) {
    try {
      const tmp = path.join(dir, SPOOL, `halt.${newId()}.tmp`);
      await fsp.writeFile(tmp, '', { mode: 0o600 });
      await fsp.rename(tmp, path.join(dir, SPOOL, 'halt'));
    } catch {
      /* no spool: fall through to the kill */
    }
    const deadline = Date.now() + timeoutMs;
    let pause = 5;
    while (isGuestProcess(pid, dir) && Date.now() < deadline) {
      await sleep(pause);
      pause = Math.min(50, pause * 2);
    }
  }
  // Also catches processes that outlived the kernel process, or a guest whose
  // agent never came up (the halt request is then never read).
  await killAll(dir, pid);
  await cleanupLabDir(dir);
}

/**
 * Stop whatever guest runs for lab directory `dir`, without needing a
 * responsive agent (for `lab down` after an interrupted `lab up`): asks the
 * agent to halt if there is one, then kills every UML process of `dir` and
 * cleans up like {@link Guest.halt}. Returns false if nothing was running.
 */
export async function haltGuest(dir: string, opts: { timeoutMs?: number } = {}): Promise<boolean> {
  const abs = checkDir(dir);
  const pid = await readUmlPid(abs);
  const wasRunning = (pid !== undefined && isGuestProcess(pid, abs)) || findGuestProcesses(abs).length > 0;
  const ready = await readReady(abs);
  await haltLab(abs, ready ? pid : undefined, opts.timeoutMs ?? HALT_TIMEOUT_MS);
  return wasRunning;
}

async function cleanupLabDir(dir: string): Promise<void> {
  await fsp.rm(path.join(dir, SPOOL), { recursive: true, force: true });
  await fsp.rm(path.join(dir, 'uml'), { recursive: true, force: true });
  for (const f of ['ready', 'uml.pid', 'halting', 'agent.exit']) await unlinkQuiet(path.join(dir, f));
}

async function readReady(dir: string): Promise<(GuestInfo & { token?: string }) | undefined> {
  try {
    return JSON.parse(await fsp.readFile(path.join(dir, 'ready'), 'utf8')) as GuestInfo & { token?: string };
  } catch {
    return undefined;
  }
}

/** Prepare dir/guest: scripts, boot parameters, module root, iptables-legacy PATH directory. */
/**
 * Where a UML kernel's modules are: beside the binary (`<dir>/modules/<release>`, as
 * scripts/uml-kernel.sh lays out the kernels it builds), else Debian's /usr/lib/uml/modules.
 */
export async function umlModuleDir(uml: string, release: string): Promise<string> {
  const candidates = [path.join(path.dirname(uml), 'modules', release), path.join('/usr/lib/uml/modules', release)];
  for (const c of candidates) if (await exists(path.join(c, 'modules.dep'))) return c;
  throw new UmlNotFoundError(
    `UML kernel modules for ${release} are missing (looked in ${candidates.join(' and ')}); reinstall user-mode-linux, or rebuild the kernel with scripts/uml-kernel.sh`,
  );
}

async function prepareGuestDir(
  dir: string,
  srcDir: string,
  uml: string,
  release: string,
  token: string,
  modules: readonly string[],
  maskRoot: boolean,
): Promise<void> {
  const g = path.join(dir, 'guest');
  await fsp.rm(g, { recursive: true, force: true });
  await fsp.mkdir(g, { mode: 0o755 });
  for (const [name, mode] of [
    ['init.sh', 0o755],
    ['modprobe.sh', 0o755],
    ['agent.mjs', 0o644],
  ] as const) {
    const from = path.join(srcDir, name);
    try {
      await fsp.copyFile(from, path.join(g, name));
    } catch (err) {
      throw new LabError(`guest script ${from} is missing (guest scripts are read from ${srcDir})`, { cause: err });
    }
    await fsp.chmod(path.join(g, name), mode);
  }

  const modRoot = path.join(g, 'mr');
  const modSrc = await umlModuleDir(uml, release);
  await fsp.mkdir(path.join(modRoot, 'lib', 'modules'), { recursive: true });
  await fsp.symlink(modSrc, path.join(modRoot, 'lib', 'modules', release));

  // The guest kernel has no NF_TABLES_IPV4: iptables must be the legacy one.
  const bin = path.join(g, 'bin');
  await fsp.mkdir(bin);
  for (const fam of ['iptables', 'ip6tables']) {
    for (const suffix of ['', '-save', '-restore']) {
      const target = `/usr/sbin/${fam}-legacy${suffix}`;
      if (await exists(target)) await fsp.symlink(target, path.join(bin, `${fam}${suffix}`));
    }
  }

  // Crypto aliases that a module really provides (see modprobe.sh): the wrapper
  // answers every other crypto-* request without starting modprobe.
  const aliases = (await fsp.readFile(path.join(modSrc, 'modules.alias'), 'utf8'))
    .split('\n')
    .map((l) => l.split(' '))
    .filter((w) => w[0] === 'alias' && w[1]?.startsWith('crypto-') && !/[\s'*?[]/.test(w[1]))
    .map((w) => w[1] as string);
  const builtin = (await fsp.readFile(path.join(modSrc, 'modules.builtin'), 'utf8'))
    .split('\n')
    .map((l) => path.basename(l.trim()).replace(/\.ko(\.[a-z]+)?$/, ''))
    .filter((m) => MODULE_NAME.test(m));
  const names = (ns: readonly string[]) => shQuote(` ${[...new Set(ns)].join(' ')} `);
  await fsp.writeFile(
    path.join(g, 'modprobe.env'),
    `CRYPTO_ALIASES=${names(aliases)}\nBUILTIN_MODULES=${names(builtin)}\n`,
    { mode: 0o644 },
  );

  const env = [
    `NODE=${shQuote(process.execPath)}`,
    `MODROOT=${shQuote(modRoot)}`,
    `MODULES_EARLY=${shQuote(EARLY_MODULES.join(' '))}`,
    `MODULES=${shQuote(modules.join(' '))}`,
    `TOKEN=${shQuote(token)}`,
    `MASK_ROOT=${maskRoot ? 1 : 0}`,
  ];
  await fsp.writeFile(path.join(g, 'boot.env'), `${env.join('\n')}\n`, { mode: 0o644 });
  await fsp.writeFile(path.join(g, 'boot.json'), JSON.stringify({ token, release }), { mode: 0o644 });
}

/**
 * Boot a UML guest for lab directory `opts.dir` and wait until its agent is
 * ready. The guest keeps running after this process exits; use
 * {@link attachGuest} to reach it later and {@link Guest.halt} to stop it.
 */
export async function bootGuest(opts: BootOptions): Promise<Guest> {
  const dir = checkDir(opts.dir);
  const log = opts.log ?? (() => {});
  const memMB = opts.memMB ?? 512;
  const timeoutMs = opts.timeoutMs ?? 120_000;
  if (!Number.isInteger(memMB) || memMB < 64) throw new LabError(`memMB must be an integer >= 64 (got ${memMB})`);
  const extra = opts.extraModules ?? [];
  for (const m of extra) if (!MODULE_NAME.test(m)) throw new LabError(`bad module name ${JSON.stringify(m)}`);
  const modules = [...new Set([...DEFAULT_MODULES, ...extra])];

  const uml = await resolveUml(opts.umlBinary);
  if (!findInPath('modprobe') && !(await exists('/usr/sbin/modprobe')) && !(await exists('/sbin/modprobe'))) {
    throw new UmlNotFoundError('modprobe was not found; the guest uses the host\'s; install it with `apt-get install kmod`');
  }
  const release = await umlRelease(uml);

  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  // Refuse to start a second guest on the same directory.
  const oldPid = await readUmlPid(dir);
  const stray = findGuestProcesses(dir);
  if ((oldPid !== undefined && isGuestProcess(oldPid, dir)) || stray.length > 0) {
    throw new LabError(
      `a UML guest is already running for ${dir} (pid ${oldPid ?? stray.join(' ')}); attachGuest() or halt it first`,
    );
  }
  await cleanupLabDir(dir);
  await fsp.mkdir(path.join(dir, SPOOL), { mode: 0o700 });

  const token = randomBytes(16).toString('hex');
  const underRoot = [dir, process.execPath].filter((p) => p === '/root' || p.startsWith('/root/'));
  let maskRoot = opts.maskRootHome ?? true;
  if (maskRoot && underRoot.length > 0) {
    log(`onionctl-lab: not hiding /root in the guest: the guest needs ${underRoot.join(', ')}`);
    maskRoot = false;
  }
  await prepareGuestDir(dir, opts.guestSourceDir ?? guestSourceDir(), uml, release, token, modules, maskRoot);

  const args = [
    `mem=${memMB}M`,
    'rootfstype=hostfs',
    'rootflags=/',
    'rw',
    initArg(dir),
    'con=null',
    'con0=fd:0,fd:1',
    'ssl=null',
    `uml_dir=${dir}`,
    'umid=uml',
    ...(opts.extraArgs ?? []),
  ];
  const consolePath = path.join(dir, 'console.log');
  const out = fs.openSync(consolePath, 'w', 0o600);
  log(`onionctl-lab: booting ${uml} ${args.join(' ')}`);
  const started = Date.now();
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  let spawnError: Error | undefined;
  // `ip netns exec` enters the namespace and execs UML: the pid stays the UML kernel's
  const [cmd, cmdArgs] = opts.netns ? ['ip', ['netns', 'exec', opts.netns, uml, ...args]] : [uml, args];
  const child = spawn(cmd, cmdArgs, {
    cwd: dir,
    detached: true, // own session + process group: survives us, and halt can kill the group
    stdio: ['ignore', out, out],
  });
  fs.closeSync(out);
  child.on('error', (err) => (spawnError = err));
  child.on('exit', (code, signal) => (exited = { code, signal }));
  child.unref();

  const fail = async (msg: string, cause?: unknown): Promise<never> => {
    if (child.pid !== undefined) await killAll(dir, child.pid).catch(() => {});
    await fsp.rm(path.join(dir, SPOOL), { recursive: true, force: true });
    throw new GuestBootError(msg, await consoleTail(dir), cause === undefined ? undefined : { cause });
  };

  // Wait for the spawn to succeed or fail.
  await new Promise<void>((resolve) => {
    child.once('spawn', () => resolve());
    child.once('error', () => resolve());
  });
  if (spawnError || child.pid === undefined) {
    if (errno(spawnError) === 'ENOENT') {
      throw new UmlNotFoundError(`cannot start ${uml}; install it with \`apt-get install user-mode-linux\``, {
        cause: spawnError,
      });
    }
    return fail(`cannot start ${uml}`, spawnError);
  }
  const pid = child.pid;
  await fsp.writeFile(path.join(dir, 'uml.pid'), `${pid}\n`);

  // Stream the console to opts.log while waiting for the agent's ready file.
  let offset = 0;
  let partial = '';
  const pump = async () => {
    try {
      const fh = await fsp.open(consolePath, 'r');
      try {
        const buf = Buffer.alloc(64 * 1024);
        for (;;) {
          const { bytesRead } = await fh.read(buf, 0, buf.length, offset);
          if (bytesRead === 0) break;
          offset += bytesRead;
          partial += buf.subarray(0, bytesRead).toString('utf8');
          const lines = partial.split('\n');
          partial = lines.pop() ?? '';
          for (const l of lines) log(l.replace(/\r$/, '')); // the UML console writes \r\n
        }
      } finally {
        await fh.close();
      }
    } catch {
      /* not there yet */
    }
  };

  const deadline = started + timeoutMs;
  let pause = 5;
  // While `ip netns exec` execs UML, /proc/<pid>/cmdline can read empty for a moment: only a
  // process missing on several checks in a row (or an exit event) counts as gone.
  let missingSince: number | undefined;
  for (;;) {
    if (opts.log) await pump();
    const ready = await readReady(dir);
    if (ready && ready.token === token) {
      const { token: _t, ...info } = ready;
      void _t;
      log(`onionctl-lab: guest ready after ${Date.now() - started} ms (kernel ${info.kernel}, host pid ${pid})`);
      return new Guest(dir, pid, info);
    }
    const died = await fsp.readFile(path.join(dir, 'agent.exit'), 'utf8').catch(() => undefined);
    if (died !== undefined) return fail(`the guest's init or agent failed during boot: ${died.trim()}`);
    if (isGuestProcess(pid, dir)) missingSince = undefined;
    else missingSince ??= Date.now();
    if (exited || (missingSince !== undefined && Date.now() - missingSince > 2_000)) {
      const how = exited ? (exited.signal ? `signal ${exited.signal}` : `exit code ${exited.code}`) : 'unknown status';
      return fail(`UML exited during boot (${how})`);
    }
    if (Date.now() > deadline) {
      return fail(`the guest did not become ready within ${timeoutMs} ms`, new Error('boot timeout'));
    }
    await sleep(pause);
    pause = Math.min(25, pause * 2);
  }
}

/**
 * Re-attach to the guest of lab directory `dir` started earlier (possibly by
 * another process): checks that the recorded UML process is alive, that the
 * agent reported ready, and that it answers a ping.
 */
export async function attachGuest(dir: string, opts: { timeoutMs?: number } = {}): Promise<Guest> {
  const abs = checkDir(dir);
  const pid = await readUmlPid(abs);
  if (pid === undefined) throw new GuestNotRunningError(`no UML guest recorded in ${abs} (no uml.pid)`);
  if (!isGuestProcess(pid, abs)) {
    throw new GuestNotRunningError(`the UML guest of ${abs} (pid ${pid}) is not running`, {
      cause: new Error(await consoleTail(abs, 15)),
    });
  }
  const ready = await readReady(abs);
  if (!ready) throw new GuestNotRunningError(`the UML guest of ${abs} (pid ${pid}) is not ready (no ready file)`);
  const { token: _t, ...info } = ready;
  void _t;
  const guest = new Guest(abs, pid, info);
  try {
    await guest.ping(opts.timeoutMs ?? 10_000);
  } catch (err) {
    throw new GuestAgentError(`the agent of the UML guest in ${abs} does not answer`, await consoleTail(abs), {
      cause: err,
    });
  }
  return guest;
}
