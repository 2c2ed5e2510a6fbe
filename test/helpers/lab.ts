/**
 * Helpers for lab tests that drive a running lab (`onionctl lab up`) from outside, the way an
 * admin and an attacker with a shell on a router would:
 *   - run onionctl (the CLI compiled with these tests) and `lab ctl` commands;
 *   - run shell scripts inside a node's namespace in the lab kernel (User-Mode Linux or this one);
 *   - a /proc scanner in the lab kernel that records every command line and environment it sees;
 *   - parsers for `ip xfrm state` / `ip xfrm policy` / iptables-save text.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { formatIPv4 } from '../../src/net/addr.js';
import type { LabRecord } from '../../src/lab/record.js';
import { attachGuest, type Guest } from '../../src/lab/uml.js';
import { BIN, ROOT } from './cli.js';

export const LAB_ROOT = process.env.ONIONCTL_LAB_ROOT ?? '/var/tmp/onionctl-lab';
const MIN = 60_000;

export interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** A running child with its output so far; `done` resolves when it exits. */
export interface Running {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  done: Promise<Ran>;
}

export function start(argv: string[], opts: { env?: Record<string, string> } = {}): Running {
  const env: NodeJS.ProcessEnv = { ...process.env, ...(opts.env ?? {}) };
  delete env.ONIONCTL_DEBUG;
  const child = spawn(argv[0]!, argv.slice(1), { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const t0 = Date.now();
  const done = new Promise<Ran>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      // ONIONCTL_TEST_TRACE=1: one line per command on stderr, to see where a slow lab test spends its time
      if (process.env.ONIONCTL_TEST_TRACE) process.stderr.write(`[trace] ${((Date.now() - t0) / 1000).toFixed(1)}s exit ${code ?? signal}: ${argv.slice(argv.indexOf(BIN) + 1).join(' ').slice(0, 160)}\n`);
      resolve({ code, signal, stdout, stderr });
    });
  });
  return { child, stdout: () => stdout, stderr: () => stderr, done };
}

export async function onionctl(args: string[], opts: { env?: Record<string, string> } = {}): Promise<Ran> {
  return start([process.execPath, BIN, ...args], opts).done;
}

export function pointerPath(topology: string): string {
  return path.join(LAB_ROOT, 'by-topology', createHash('sha256').update(path.resolve(topology)).digest('hex').slice(0, 16));
}

export function readLabRecord(topology: string): LabRecord {
  const id = readFileSync(pointerPath(topology), 'utf8').trim();
  return JSON.parse(readFileSync(path.join(LAB_ROOT, id, 'lab.json'), 'utf8')) as LabRecord;
}

/** Everything a lab with this id could have left behind on this machine. */
export async function leftovers(id: string): Promise<string[]> {
  const found: string[] = [];
  const ns = await execa('ip', ['netns', 'list'], { reject: false });
  for (const line of String(ns.stdout).split('\n')) if (line.startsWith(`oc-${id}-`)) found.push(`netns ${line.split(' ')[0]}`);
  const ps = await execa('ps', ['-eo', 'pid,args'], { reject: false });
  for (const line of String(ps.stdout).split('\n')) if (line.includes(`${LAB_ROOT}/${id}`)) found.push(`process ${line.trim()}`);
  if (existsSync(path.join(LAB_ROOT, id))) found.push(`directory ${LAB_ROOT}/${id}`);
  return found;
}

/** A lab that is up, seen from outside. */
export class LabHandle {
  private guest: Guest | undefined;
  constructor(
    readonly topology: string,
    readonly rec: LabRecord,
  ) {}

  static open(topology: string): LabHandle {
    return new LabHandle(topology, readLabRecord(topology));
  }

  node(name: string) {
    const n = this.rec.layout.nodes.find((x) => x.name === name);
    if (!n) throw new Error(`no node ${name} in the lab`);
    return n;
  }

  get nodes(): string[] {
    return this.rec.layout.nodes.map((n) => n.name);
  }

  get ctl() {
    if (!this.rec.ctl) throw new Error('lab.json has no ctl paths');
    return this.rec.ctl;
  }

  /** the first server's address (the destination of the first circuit) */
  get server(): string {
    return formatIPv4(this.rec.layout.servers[0]!.iface.addr);
  }

  /** the iptables command of the lab kernel (iptables-legacy in User-Mode Linux) */
  get iptables(): string {
    return this.rec.iptablesRestore.replace(/-restore$/, '');
  }

  /** Runs argv in the lab kernel's root namespace (the lab's "switch"). */
  async root(argv: string[], opts: { stdin?: string; timeoutMs?: number; env?: Record<string, string> } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
    if (this.rec.mode === 'uml') {
      this.guest ??= await attachGuest(this.rec.guestDir!);
      const r = await this.guest.exec(argv, { ...(opts.stdin !== undefined ? { stdin: opts.stdin } : {}), ...(opts.env ? { env: opts.env } : {}), timeoutMs: opts.timeoutMs ?? 5 * MIN });
      return { code: r.exitCode, stdout: r.stdout, stderr: r.stderr };
    }
    // directly: the lab's bridges live in the controller namespace
    const r = await execa('ip', ['netns', 'exec', this.rec.ctlNs, ...argv], { input: opts.stdin ?? '', reject: false, timeout: opts.timeoutMs ?? 5 * MIN, ...(opts.env ? { env: opts.env } : {}) });
    return { code: r.exitCode ?? 1, stdout: String(r.stdout), stderr: String(r.stderr) };
  }

  /** Runs a POSIX shell script inside a node's namespace in the lab kernel. */
  async sh(node: string, script: string, opts: { stdin?: string; timeoutMs?: number } = {}) {
    return this.root(['nsenter', `--net=/run/netns/${this.node(node).ns}`, 'sh', '-c', script], opts);
  }

  /** Like sh, but a non-zero exit is an error naming the node and the script. */
  async shOk(node: string, script: string, opts: { stdin?: string } = {}): Promise<string> {
    const r = await this.sh(node, script, opts);
    if (r.code !== 0) throw new Error(`${node}: "${script}" failed (exit ${r.code}): ${r.stderr.trim()}`);
    return r.stdout;
  }

  /** argv that runs `onionctl SUB` on the lab's topology from the controller namespace, directly (signals reach onionctl itself) */
  ctlArgv(sub: string, args: string[] = []): string[] {
    const c = this.ctl;
    return [
      'ip', 'netns', 'exec', this.rec.ctlNs, process.execPath, BIN, sub, c.topology,
      '--state', c.state, ...(sub === 'status' ? [] : ['--secret', c.secret]), '--identity', c.identity,
      ...(this.rec.seed && sub !== 'destroy' ? ['--seed', this.rec.seed] : []),
      ...(sub === 'apply' || sub === 'destroy' ? ['--auto-approve'] : []),
      '--connect-timeout', '60', '--command-timeout', '600',
      ...args,
    ];
  }

  /** `onionctl lab ctl TOPOLOGY SUB ARGS` (the researcher's shorthand; tested by using it) */
  labCtl(sub: string, args: string[] = []): Promise<Ran> {
    return onionctl(['lab', 'ctl', this.topology, sub, ...args]);
  }

  /**
   * One ping train and one small HTTP fetch from the circuit's client to its server. The ping is
   * sent once more when fewer than 2 of 3 replies came back (an emulated kernel on a busy machine
   * can take seconds for the first packets through fresh SAs); a broken circuit fails both.
   */
  async traffic(client = 'alice'): Promise<{ replies: number; bytes: number; detail: string }> {
    const dest = this.server;
    const ping = `ping -n -c 3 -i 0.2 -W 5 ${dest}`;
    const r = await this.sh(client, `out=$(${ping}); case "$out" in *" 3 received"*|*" 2 received"*) ;; *) out=$(${ping}) ;; esac; echo "$out"; echo "@@curl $(curl -sS -o /dev/null --max-time 60 -w '%{size_download}' http://${dest}/obj8.bin 2>&1)"`);
    const replies = Number(/(\d+) (?:packets )?received/.exec(r.stdout)?.[1] ?? 0);
    const bytes = Number(/@@curl (\d+)/.exec(r.stdout)?.[1] ?? 0);
    let detail = `${replies}/3 pings answered, ${bytes} of 20000 bytes fetched; ${r.stdout.trim().split('\n').slice(-2).join(' | ')}${r.stderr.trim() ? `; stderr: ${r.stderr.trim()}` : ''}`;
    if (replies < 2 || bytes !== 20000) detail += `; ${await this.diagnose()}`;
    return { replies, bytes, detail };
  }

  /** For a failed traffic check: every node's non-zero /proc/net/xfrm_stat counters and onionctl's iptables counters. */
  async diagnose(): Promise<string> {
    const script = this.nodes
      .map((n) => `echo "@@ ${n}: $(nsenter --net=/run/netns/${this.node(n).ns} sh -c "grep -v ' 0$' /proc/net/xfrm_stat | tr -s ' ' | tr '\\n' ','; ${this.iptables}-save -c | grep -i onionctl | grep -v '^\\[0:0\\]' | tr '\\n' ','")"`)
      .join('\n');
    const r = await this.root(['sh', '-c', script]);
    return `xfrm_stat and iptables counters: ${r.stdout.trim().split('\n').join(' ')}${r.stderr.trim() ? ` (${r.stderr.trim()})` : ''}`;
  }
}

// ---- the /proc scanner ------------------------------------------------------------------------

/**
 * Runs in the lab kernel (node, no dependencies): reads /proc/<pid>/cmdline and environ of every
 * process over and over until the stop file appears, then writes every distinct text it saw.
 */
const SCANNER = `import fs from 'node:fs';
const [out, ready, stop] = process.argv.slice(2);
const self = String(process.pid);
const seen = new Set();
// kernel threads (and zombies) have an empty command line: skipped from then on; a process's
// environment is read again whenever its command line changes (exec)
const skip = new Set([self]);
const last = new Map();
const nap = new Int32Array(new SharedArrayBuffer(4));
const read = (p, f) => {
  try {
    return fs.readFileSync('/proc/' + p + '/' + f).toString('latin1').split('\\0').join(' ').trim();
  } catch {
    return undefined;
  }
};
let rounds = 0;
fs.writeFileSync(ready, self);
for (;;) {
  rounds++;
  let pids = [];
  try { pids = fs.readdirSync('/proc'); } catch {}
  for (const p of pids) {
    if (skip.has(p) || !/^[0-9]+$/.test(p)) continue;
    const cmd = read(p, 'cmdline');
    if (cmd === undefined) continue;
    if (cmd === '') { skip.add(p); continue; }
    if (last.get(p) === cmd) continue;
    last.set(p, cmd);
    seen.add('cmdline: ' + cmd);
    const env = read(p, 'environ');
    if (env) seen.add('environ: ' + env);
  }
  if (fs.existsSync(stop)) break;
  Atomics.wait(nap, 0, 0, 2);
}
fs.writeFileSync(out + '.tmp', JSON.stringify({ rounds, seen: [...seen] }));
fs.renameSync(out + '.tmp', out);
`;

export interface ScanResult {
  rounds: number;
  /** "cmdline: ip -batch -", "environ: PATH=... HOME=..." */
  seen: string[];
}

/** Starts the scanner in the lab kernel (it sees every node's processes) and waits until it runs. */
export async function startScanner(lab: LabHandle): Promise<{ stop(): Promise<ScanResult> }> {
  const dir = path.join(lab.rec.dir, 'scan');
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const script = path.join(dir, 'scanner.mjs');
  const out = path.join(dir, 'seen.json');
  const ready = path.join(dir, 'ready');
  const stopFile = path.join(dir, 'stop');
  for (const f of [out, ready, stopFile]) await fs.rm(f, { force: true });
  await fs.writeFile(script, SCANNER, { mode: 0o600 });
  const cmd = `${process.execPath} ${script} ${out} ${ready} ${stopFile}`;
  let local: ChildProcess | undefined;
  if (lab.rec.mode === 'uml') {
    const r = await lab.root(['sh', '-c', `${cmd} >${dir}/scanner.log 2>&1 </dev/null &`]);
    if (r.code !== 0) throw new Error(`cannot start the scanner: ${r.stderr}`);
  } else {
    local = spawn(process.execPath, [script, out, ready, stopFile], { stdio: 'ignore', detached: true });
  }
  const until = async (file: string, what: string) => {
    const end = Date.now() + 3 * MIN;
    while (!existsSync(file)) {
      if (Date.now() > end) throw new Error(`the scanner did not ${what}: ${await fs.readFile(path.join(dir, 'scanner.log'), 'utf8').catch(() => '')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  await until(ready, 'start');
  return {
    async stop() {
      await fs.writeFile(stopFile, '');
      await until(out, 'stop');
      local?.unref();
      return JSON.parse(await fs.readFile(out, 'utf8')) as ScanResult;
    },
  };
}

// ---- parsers ----------------------------------------------------------------------------------

export const ONIONCTL_SPI = (spi: number) => spi >= 0x4f000000 && spi <= 0x4fffffff;
export const ONIONCTL_PRIORITY = (p: number) => p >= 0x4f00 && p <= 0x4f0f;

export interface XfrmStateBlock {
  src: string;
  dst: string;
  spi: number;
  /** key material as lower-case hex, without 0x (aead, enc, auth) */
  keys: string[];
  text: string;
}

/** `ip xfrm state` (or `ip -s xfrm state`) output split into SAs */
export function parseStates(text: string): XfrmStateBlock[] {
  const out: XfrmStateBlock[] = [];
  for (const block of text.split(/^(?=src \S+ dst \S+)/m)) {
    const head = /^src (\S+) dst (\S+)/.exec(block);
    const spi = /\bspi (0x[0-9a-f]+)/.exec(block);
    if (!head || !spi) continue;
    const keys = [...block.matchAll(/^\s*(?:aead|enc|auth|auth-trunc)\s+\S+\s+0x([0-9a-f]+)/gm)].map((m) => m[1]!.toLowerCase());
    out.push({ src: head[1]!, dst: head[2]!, spi: Number.parseInt(spi[1]!, 16), keys, text: block });
  }
  return out;
}

export interface XfrmPolicyBlock {
  head: string;
  dir: string;
  priority: number;
  text: string;
}

export function parsePolicies(text: string): XfrmPolicyBlock[] {
  const out: XfrmPolicyBlock[] = [];
  for (const block of text.split(/^(?=src \S+ dst \S+)/m)) {
    const head = /^src \S+ dst \S+.*$/m.exec(block);
    const m = /\bdir (\S+) priority (\d+)/.exec(block);
    if (!head || !m) continue;
    out.push({ head: head[0].trim(), dir: m[1]!, priority: Number(m[2]), text: block });
  }
  return out;
}

/** iptables-save without comments and counters: what must survive apply and destroy verbatim */
export function iptablesRules(save: string): string[] {
  return save
    .split('\n')
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => l.replace(/\[\d+:\d+\]/g, '[]'));
}

/** iptables-save split by table: table name -> its lines (comments and counters dropped) */
export function iptablesTables(save: string): Map<string, string[]> {
  const m = new Map<string, string[]>();
  let cur: string[] | undefined;
  for (const l of iptablesRules(save)) {
    if (l.startsWith('*')) m.set(l.slice(1), (cur = []));
    else cur?.push(l);
  }
  return m;
}
