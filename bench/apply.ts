/**
 * `onionctl apply` against lab routers holding about 2,000 objects each, set against the slowest
 * router's local `ip -batch` time for the same input, measured in the same run (issue 4 point 9).
 * See docs/bench-apply.md.
 *
 *   npm run bench:apply
 *   node dist/bench/apply.js [--sizes 1,4,8] [--reps 3] [--circuits-per-router 160] [--json]
 *
 * Per lab size R (4 and 8; "1" runs in the R=4 lab):
 *   1. `onionctl lab up` on a skeleton topology (bench/apply-topology.ts: R routers, R clients,
 *      one circuit per client; the lab starts one HTTP server per distinct destination, so the
 *      lab is built small), then the skeleton's configuration is destroyed (untimed);
 *   2. the full topology: the lab's own topology file (pinned host keys, management addresses)
 *      with 160·R circuits of k = 2, applied once untimed (warm-up; it also makes the state);
 *   3. every node's `ip -batch` input, from `onionctl plan --out-dir --with-keys` on a copy of that
 *      state with a throw-away KDF secret (the same lines apply pushes, other key bytes), copied
 *      into the guest's tmpfs;
 *   4. N repetitions, the order of apply and baseline alternating:
 *        apply:     `onionctl destroy` (untimed), then the timed `onionctl apply` (the whole CLI run
 *                   from the lab's controller namespace: start, SSH connect, read-back, diff,
 *                   push; per-phase times from its progress lines), then a second, no-op apply
 *                   (timed apart: connect + read-back of full routers + diff);
 *        baseline:  in the guest, each router's input loaded with `ip -n NS -batch FILE` into an
 *                   empty copy of its namespace (dummy interfaces with its addresses), one router
 *                   after another (the issue's baseline: the slowest router's time), then every
 *                   node's input at once (what apply makes the one guest CPU do);
 *   R=1: one router of the R=4 lab emptied as a reboot would (xfrm flushed, onionctl's routes and
 *   addresses removed, iptables emptied, ip_forward 0; untimed), then the timed apply; the others
 *   keep their configuration and only get the rekeyed ends of the SAs they share with it.
 *
 * Keys: apply's keys come from the lab state's KDF secret and travel on SSH stdin; the baseline's
 * come from a throw-away secret, in files (0600) on this machine's /dev/shm (deleted right after
 * they are copied) and the guest's tmpfs (deleted at the end; the guest goes with `lab down`).
 * Nothing printed contains key material. A benchmark prints; it never asserts.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs as parseCliArgs } from 'node:util';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { formatIPv4 } from '../src/net/addr.js';
import { GuestHost, DirectHost, type LabHost } from '../src/lab/host.js';
import type { LabNode } from '../src/lab/layout.js';
import { ctlPaths, labDir, readPointer, readRecord, type LabRecord } from '../src/lab/record.js';
import { attachGuest } from '../src/lab/uml.js';
import { applyTopology } from './apply-topology.js';
import { validateGenerated } from './gen-topology.js';
import { binPath, exitOnSignals, KERNEL_OPTIONS, KERNEL_USAGE, kernelUpArgs, loadavg, log, runIfMain, stat, type Stat } from './common.js';

// ---------------------------------------------------------------------------------------------
// pure helpers

export interface ObjectCounts {
  states: number;
  policies: number;
  routes: number;
  addresses: number;
  total: number;
  /** ip -batch lines (every line is one object) */
  lines: number;
}

/** The `ip -batch` input of a rendered NAME.ip: comments and blank lines dropped, order kept. */
export function batchLines(ipFile: string): string[] {
  return ipFile
    .split('\n')
    .map((l) => l.replace(/\s+#.*$/, '').trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
}

export function countObjects(lines: readonly string[]): ObjectCounts {
  const c = { states: 0, policies: 0, routes: 0, addresses: 0, total: 0, lines: lines.length };
  for (const l of lines) {
    if (l.startsWith('xfrm state ')) c.states++;
    else if (l.startsWith('xfrm policy ')) c.policies++;
    else if (l.startsWith('route ')) c.routes++;
    else if (l.startsWith('address ')) c.addresses++;
  }
  c.total = c.states + c.policies + c.routes + c.addresses;
  return c;
}

/** A progress line of apply: `NODE  reading`, `NODE  STAGE: what`, `NODE  done: ...`. */
export interface ProgressLine {
  t: number;
  node: string;
  what: string;
}

export function parseProgress(t: number, line: string): ProgressLine | undefined {
  const m = /^(\S+)\s{2,}(\S.*)$/.exec(line);
  if (!m) return undefined;
  return { t, node: m[1]!, what: m[2]! };
}

export interface Phases {
  /** start of the CLI until every node's SSH session is up (its "reading" line) */
  connect: number;
  /** last connection until the first push step: read-back, diff, plan output, state saved */
  readPlan: number;
  /** stage name -> seconds from its first step to the first step of the next stage (or the end of the push) */
  stages: [string, number][];
  /** first push step until the last node reported done */
  push: number;
  /** last "done" line until the process exited */
  tail: number;
}

/** Phase times from the timestamped progress lines of one apply (seconds from its start). */
export function phases(lines: readonly ProgressLine[], wall: number): Phases {
  const reading = lines.filter((l) => l.what === 'reading');
  const steps = lines.filter((l) => /^[a-z]+: /.test(l.what) && !/^(done|FAILED): /.test(l.what));
  const done = lines.filter((l) => /^(done|FAILED): /.test(l.what));
  const connect = reading.length > 0 ? Math.max(...reading.map((l) => l.t)) : NaN;
  const pushStart = steps.length > 0 ? steps[0]!.t : NaN;
  const pushEnd = done.length > 0 ? Math.max(...done.map((l) => l.t)) : NaN;
  const order: string[] = [];
  const first = new Map<string, number>();
  for (const s of steps) {
    const st = s.what.slice(0, s.what.indexOf(':'));
    if (!first.has(st)) {
      first.set(st, s.t);
      order.push(st);
    }
  }
  const stages: [string, number][] = order.map((st, i) => [st, (i + 1 < order.length ? first.get(order[i + 1]!)! : pushEnd) - first.get(st)!]);
  return { connect, readPlan: pushStart - connect, stages, push: pushEnd - pushStart, tail: wall - pushEnd };
}

/** /proc/stat -> busy and total jiffies (USER_HZ, 1/100 s) of the `cpu` line, and processes started since boot */
export function procStat(text: string): { busy: number; total: number; procs: number } {
  const f = (/^cpu\s+(.*)$/m.exec(text)?.[1] ?? '').trim().split(/\s+/).map(Number);
  const total = f.reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  return { busy: total - idle, total, procs: Number(/^processes\s+(\d+)/m.exec(text)?.[1] ?? NaN) };
}

/** Never show a hex string long enough to be a key. */
const redact = (s: string) => s.replace(/0x[0-9a-f]{16,}|[0-9a-f]{32,}/gi, '<redacted>');
const f2 = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const fs3 = (s: Stat, d = 1) => (s.n === 0 ? '-' : `${f2(s.median, d)} (${f2(s.min, d)}/${f2(s.max, d)})`);

// ---------------------------------------------------------------------------------------------

interface Args {
  sizes: number[];
  reps: number;
  circuitsPerRouter: number;
  seed: string;
  json: boolean;
  /** `onionctl lab up` arguments: the lab kernel */
  upArgs: string[];
}

export function parseArgs(argv: string[]): Args {
  const { values: v } = parseCliArgs({
    args: argv,
    strict: true,
    options: {
      sizes: { type: 'string', default: '1,4,8' },
      reps: { type: 'string', default: '3' },
      'circuits-per-router': { type: 'string', default: '160' },
      seed: { type: 'string', default: '1' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
      ...KERNEL_OPTIONS,
    },
  });
  if (v.help) {
    process.stdout.write(
      `usage: node dist/bench/apply.js [--sizes 1,4,8] [--reps 3] [--circuits-per-router 160] [--seed 1] ${KERNEL_USAGE} [--json]\n` +
        'Needs root and user-mode-linux (or a kernel with ESP). See docs/bench-apply.md.\n',
    );
    process.exit(0);
  }
  const a: Args = { sizes: v.sizes.split(',').map(Number), reps: Number(v.reps), circuitsPerRouter: Number(v['circuits-per-router']), seed: v.seed, json: v.json, upArgs: kernelUpArgs(v) };
  if (a.sizes.some((s) => ![1, 2, 3, 4, 5, 6, 7, 8].includes(s))) throw new Error('--sizes: 1..8 routers (1 runs inside the 4-router lab)');
  if (!(a.reps >= 1) || !(a.circuitsPerRouter >= 1)) throw new Error('--reps and --circuits-per-router must be >= 1');
  return a;
}

interface Child {
  kill(sig: NodeJS.Signals): void;
  done: Promise<number>;
}
let current: Child | undefined;

/** Runs a command; stdout to a file (or ignored), stderr lines to `onLine` with seconds since the start. */
function run(argv: string[], o: { stdoutFile?: string; onLine?: (t: number, line: string) => void } = {}): Promise<{ code: number; wall: number }> {
  const start = performance.now();
  return new Promise((resolve) => {
    const out = o.stdoutFile ? createWriteStream(o.stdoutFile, { mode: 0o600 }) : undefined;
    const opened = out ? new Promise<void>((r) => out.once('open', () => r())) : Promise.resolve();
    void opened.then(() => {
      const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', out ? 'pipe' : 'ignore', 'pipe'] });
      if (out && child.stdout) child.stdout.pipe(out);
      const rl = readline.createInterface({ input: child.stderr! });
      rl.on('line', (l) => (o.onLine ? o.onLine((performance.now() - start) / 1000, l) : undefined));
      const done = new Promise<number>((r) => {
        child.on('error', () => r(1));
        child.on('close', (code, sig) => r(code ?? (sig ? 128 : 1)));
      });
      const me: Child = { kill: (s) => child.kill(s), done };
      current = me;
      void done.then(async (code) => {
        const wall = (performance.now() - start) / 1000;
        if (current === me) current = undefined;
        if (out) await new Promise<void>((r) => out.end(() => r()));
        resolve({ code, wall });
      });
    });
  });
}

/** `onionctl ARGS` on this machine, its output on our stderr (indented), exit code returned. */
async function onionctl(args: string[], quiet = false): Promise<number> {
  const r = await run([process.execPath, binPath(), ...args], { onLine: (_t, l) => (quiet ? undefined : process.stderr.write(`    ${l}\n`)) });
  return r.code;
}

// ---------------------------------------------------------------------------------------------
// the lab of one size

interface Lab {
  size: number;
  skeleton: string;
  rec: LabRecord;
  host: LabHost;
  /** the guest's uname -r */
  kernel: string;
  /** the full topology (lab topology file with every circuit) and its state and secret */
  topo: string;
  state: string;
  secret: string;
  identity: string;
  routers: LabNode[];
  nodes: LabNode[];
  counts: Map<string, ObjectCounts>;
  /** where the baseline inputs are inside the guest */
  guestDir: string;
}

interface ApplyRun {
  rep: number;
  kind: 'full' | 'noop' | 'single';
  ok: boolean;
  code: number;
  wall: number;
  /** user + system CPU seconds of the controller (the whole CLI process tree on this machine) */
  cpu?: number;
  /** guest CPU busy fraction during the run, the guest CPU seconds it used, and the processes started in the guest */
  guestBusy?: number;
  guestCpu?: number;
  guestProcs?: number;
  phases: Phases;
  /** per node: added / changed / destroyed, from apply's summary */
  changes: Record<string, { add: number; change: number; destroy: number }>;
  summary: string;
  load: string;
}

interface BaselineRun {
  rep: number;
  /** node -> seconds, each router alone */
  alone: Record<string, number>;
  /** node -> seconds when every node loads at once; and the time until the last finished */
  together?: Record<string, number>;
  togetherWall?: number;
  ok: boolean;
  errors: string[];
}

interface SizeResult {
  size: number;
  label: string;
  routers: string[];
  clients: string[];
  nodes: number;
  counts: Record<string, ObjectCounts>;
  applies: ApplyRun[];
  baselines: BaselineRun[];
  /** process start in the guest (nsenter ... true), seconds */
  procStart: number[];
}

const loadavg3 = () => loadavg(3);

async function guestRun(lab: Lab, script: string, o: { stdin?: string; timeoutMs?: number } = {}) {
  return lab.host.run(['bash', '-c', script], { ...(o.stdin !== undefined ? { stdin: o.stdin } : {}), timeoutMs: o.timeoutMs ?? 1_800_000 });
}

/**
 * bash: wait until the guest CPU is idle (>= 80% over a second, at most 30 s), so that work the
 * kernel does after a command returned (freeing thousands of SAs of a deleted namespace) does not
 * run into the next measurement. No process is started while waiting (`read -t` on a
 * FIFO that nobody writes), since a process start is itself a large part of a second of guest CPU.
 */
const SETTLE = `zzf=\${TMPDIR:-/tmp}/onionctl-bench-zz-$$; mkfifo -m 600 $zzf; exec {zz}<>$zzf; rm -f $zzf
settle() {
  local i a b c d e rest x t1 t2 u1 u2
  for i in {1..30}; do
    read -r a b c d e rest < /proc/stat; t1=0; for x in $b $c $d $e $rest; do t1=$((t1+x)); done; u1=$e
    read -t 1 -u $zz
    read -r a b c d e rest < /proc/stat; t2=0; for x in $b $c $d $e $rest; do t2=$((t2+x)); done; u2=$e
    if [ $((t2-t1)) -gt 0 ] && [ $(( (u2-u1)*100/(t2-t1) )) -ge 80 ]; then echo "@settled $i $(( (u2-u1)*100/(t2-t1) ))"; return 0; fi
  done
  echo "@settled no $(( (u2-u1)*100/(t2-t1 > 0 ? t2-t1 : 1) ))"
}`;

let unsettled = 0;
function noteSettled(out: string): void {
  for (const m of out.matchAll(/^@settled no (\S+)/gm)) {
    unsettled++;
    log(`  (the guest did not go idle within 30 s: ${m[1]}% idle)`);
  }
}

async function settle(lab: Lab): Promise<void> {
  noteSettled((await guestRun(lab, `${SETTLE}\nsettle`, { timeoutMs: 120_000 })).stdout);
}

async function guestCpu(lab: Lab): Promise<ReturnType<typeof procStat>> {
  const r = await lab.host.run(['cat', '/proc/stat']);
  return procStat(r.stdout);
}

async function procStartProbe(lab: Lab): Promise<number> {
  const ns = lab.routers[0]!.ns;
  const r = await guestRun(lab, `for i in 1 2 3; do s=$EPOCHREALTIME; nsenter --net=/run/netns/${ns} true; e=$EPOCHREALTIME; echo "$s $e"; done`);
  return stat(r.stdout.trim().split('\n').map((l) => { const [s, e] = l.split(' ').map(Number); return e! - s!; })).median;
}

async function labUp(a: Args, size: number, work: string, secrets: string): Promise<Lab> {
  const clients = size;
  const skeleton = path.join(work, `skeleton-${size}.yaml`);
  // the skeleton: every node, one circuit per client (all to the same destination: one server)
  await fs.writeFile(skeleton, stringifyYaml(applyTopology({ routers: size, clients, circuits: clients }), { lineWidth: 0 }), { mode: 0o600 });
  const help = await new Promise<string>((resolve) => {
    let s = '';
    const c = spawn(process.execPath, [binPath(), 'lab', 'up', '--help'], { stdio: ['ignore', 'pipe', 'ignore'] });
    c.stdout.on('data', (d: Buffer) => (s += d.toString()));
    c.on('close', () => resolve(s));
  });
  const noApply = help.includes('--no-apply');
  log(`lab up: ${size} routers, ${clients} clients (skeleton ${skeleton}${noApply ? ', --no-apply' : ''})`);
  let code = 1;
  for (let attempt = 1; attempt <= 3 && !stopping; attempt++) {
    code = await onionctl(['lab', 'up', skeleton, ...a.upArgs, ...(noApply ? ['--no-apply'] : [])]);
    if (code === 0) break;
    if (attempt < 3) log(`onionctl lab up exited ${code}; trying again (${attempt + 1}/3)`);
  }
  if (code !== 0) throw new Error(`onionctl lab up exited ${code}`);
  const id = await readPointer(skeleton);
  const rec = id ? await readRecord(labDir(id)) : undefined;
  if (!rec) throw new Error('no lab record after lab up');
  const host: LabHost = rec.mode === 'uml' ? new GuestHost(await attachGuest(rec.guestDir!)) : new DirectHost();
  if (!noApply) {
    log('destroying the skeleton\'s configuration (untimed)');
    if ((await onionctl(['lab', 'ctl', skeleton, 'destroy'], true)) !== 0) throw new Error('lab ctl destroy of the skeleton failed');
  }
  // the full topology: the lab's own file (ssh blocks with pinned host keys), every circuit
  const ctl = rec.ctl ?? ctlPaths(rec.dir);
  const labTopo = parseYaml(await fs.readFile(ctl.topology, 'utf8')) as Record<string, unknown>;
  const full = applyTopology({ routers: size, clients, circuits: a.circuitsPerRouter * size });
  validateGenerated(full);
  labTopo.circuits = full.circuits;
  const topo = path.join(work, `apply-${size}.yaml`);
  await fs.writeFile(topo, stringifyYaml(labTopo, { lineWidth: 0 }), { mode: 0o600 });
  const routers = rec.layout.nodes.filter((n) => n.kind === 'router');
  const kernel = (await host.run(['uname', '-r'])).stdout.trim();
  return {
    kernel,
    size,
    skeleton,
    rec,
    host,
    topo,
    state: path.join(secrets, `apply-${size}.state.json`),
    secret: path.join(secrets, `apply-${size}.secret`),
    identity: ctl.identity,
    routers,
    nodes: rec.layout.nodes,
    counts: new Map(),
    guestDir: `/run/lab/tmp/onionctl-bench-apply-${rec.id}`,
  };
}

function ctlApplyArgv(lab: Lab, sub: 'apply' | 'destroy', extra: string[] = []): string[] {
  return [
    'ip', 'netns', 'exec', lab.rec.ctlNs, process.execPath, binPath(), sub, lab.topo,
    '--state', lab.state, '--secret', lab.secret, '--identity', lab.identity,
    '--connect-timeout', '60', '--command-timeout', '900', '--parallel', String(lab.nodes.length), '--auto-approve',
    ...extra,
  ];
}

/** destroy (untimed), then wait for the guest to go idle */
async function destroy(lab: Lab): Promise<void> {
  const r = await run(ctlApplyArgv(lab, 'destroy'));
  if (r.code !== 0) throw new Error(`onionctl destroy exited ${r.code}`);
  await settle(lab);
}

const TIME = existsSync('/usr/bin/time') ? '/usr/bin/time' : undefined;

async function timedApply(lab: Lab, work: string, rep: number, kind: ApplyRun['kind'], extra: string[] = []): Promise<ApplyRun> {
  const load = await loadavg3();
  const outFile = path.join(work, `apply-${lab.size}-${kind}-${rep}.out`);
  const timeFile = path.join(work, `apply-${lab.size}-${kind}-${rep}.time`);
  const errFile = path.join(work, `apply-${lab.size}-${kind}-${rep}.err`);
  const lines: ProgressLine[] = [];
  const errLog: string[] = [];
  const cpu0 = await guestCpu(lab);
  const argv = ctlApplyArgv(lab, 'apply', extra);
  const r = await run(TIME ? [TIME, '-f', '%U %S', '-o', timeFile, ...argv] : argv, {
    stdoutFile: outFile,
    onLine: (t, l) => {
      errLog.push(`${t.toFixed(3)} ${l}`);
      const p = parseProgress(t, l);
      if (p) lines.push(p);
    },
  });
  const cpu1 = await guestCpu(lab);
  await fs.writeFile(errFile, errLog.join('\n') + '\n', { mode: 0o600 });
  const out = await fs.readFile(outFile, 'utf8');
  await fs.rm(outFile, { force: true });
  const changes: ApplyRun['changes'] = {};
  for (const m of out.matchAll(/^(\S+): (\d+) to add, (\d+) to change, (\d+) to destroy$/gm)) changes[m[1]!] = { add: +m[2]!, change: +m[3]!, destroy: +m[4]! };
  const summary = (/^(Apply complete: .*|No changes: .*)$/m.exec(out)?.[1] ?? `exit ${r.code}`).trim();
  let cpu: number | undefined;
  if (TIME) {
    const t = (await fs.readFile(timeFile, 'utf8').catch(() => '')).trim().split('\n').pop()!.split(' ').map(Number);
    if (t.length === 2 && t.every(Number.isFinite)) cpu = t[0]! + t[1]!;
    await fs.rm(timeFile, { force: true });
  }
  const busy = cpu1.total - cpu0.total > 0 ? (cpu1.busy - cpu0.busy) / (cpu1.total - cpu0.total) : undefined;
  // (the `cat` that reads /proc/stat afterwards is one of them)
  const guest = { guestCpu: (cpu1.busy - cpu0.busy) / 100, guestProcs: cpu1.procs - cpu0.procs - 1 };
  const ok = r.code === 0 && (kind === 'noop' ? /^No changes/.test(summary) : /^Apply complete/.test(summary));
  if (!ok) log(`  apply (${kind}) exit ${r.code}: ${redact(errLog.slice(-4).join(' | '))} ${redact(summary)}`);
  return { rep, kind, ok, code: r.code, wall: r.wall, ...(cpu !== undefined ? { cpu } : {}), ...(busy !== undefined ? { guestBusy: busy } : {}), ...guest, phases: phases(lines, r.wall), changes, summary, load };
}

/**
 * Every node's ip -batch input: `plan --out-dir --with-keys` on a copy of the lab's state with a
 * throw-away secret (files 0600 in /dev/shm, deleted as soon as they are in the guest's tmpfs).
 */
async function prepareBaseline(lab: Lab, secrets: string): Promise<void> {
  const dir = path.join(secrets, `baseline-${lab.size}`);
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const st = path.join(dir, 'state.json');
  const sec = path.join(dir, 'throwaway.secret');
  const outDir = path.join(dir, 'out');
  try {
    await fs.copyFile(lab.state, st);
    await fs.writeFile(sec, randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
    const code = await onionctl(['plan', lab.topo, '--state', st, '--secret', sec, '--no-save-state', '--out-dir', outDir, '--with-keys'], true);
    if (code !== 0) throw new Error(`onionctl plan --out-dir exited ${code}`);
    await fs.rm(sec, { force: true });
    const mk = await lab.host.run(['sh', '-c', `umask 077; rm -rf ${lab.guestDir}; mkdir -p ${lab.guestDir}`]);
    if (mk.code !== 0) throw new Error(`cannot make ${lab.guestDir} in the guest`);
    for (const n of lab.nodes) {
      const lines = batchLines(await fs.readFile(path.join(outDir, `${n.name}.ip`), 'utf8'));
      lab.counts.set(n.name, countObjects(lines));
      const r = await lab.host.run(['sh', '-c', `umask 077; cat > ${lab.guestDir}/${n.name}.ip`], { stdin: lines.join('\n') + '\n' });
      if (r.code !== 0) throw new Error(`cannot copy ${n.name}'s baseline input into the guest`);
    }
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/** ip -batch lines that build empty copies of these nodes' namespaces (dummy interfaces, same addresses) */
function copyNamespaces(lab: Lab, nodes: readonly LabNode[]): { root: string[]; per: Map<string, string[]> } {
  const root: string[] = [];
  const per = new Map<string, string[]>();
  nodes.forEach((n, i) => {
    const ns = `ab${lab.rec.id}-${n.name}`;
    root.push(`netns add ${ns}`);
    const lines = ['link set lo up'];
    for (const [j, itf] of [n.underlay, ...(n.outside ? [n.outside] : [])].entries()) {
      const tmp = `ab${lab.rec.id}${i}x${j}`;
      root.push(`link add ${tmp} netns ${ns} type dummy`);
      lines.push(`link set ${tmp} name ${itf.name}`, `address add ${formatIPv4(itf.addr)}/${itf.len} dev ${itf.name}`, `link set ${itf.name} up`);
    }
    per.set(n.name, lines);
  });
  return { root, per };
}

function baselineScript(lab: Lab, nodes: readonly LabNode[], together: boolean): string {
  const { root, per } = copyNamespaces(lab, nodes);
  const ns = (n: LabNode) => `ab${lab.rec.id}-${n.name}`;
  const d = lab.guestDir;
  const q = (lines: string[]) => `'${lines.join('\n')}'`;
  const load = (n: LabNode) =>
    `s=$EPOCHREALTIME; ip -n ${ns(n)} -batch ${d}/${n.name}.ip >/dev/null 2>${d}/${n.name}.err; rc=$?; e=$EPOCHREALTIME; echo "@bl ${n.name} $rc $s $e"`;
  const build = (n: LabNode) => `printf '%s\\n' ${q(per.get(n.name)!)} | ip -n ${ns(n)} -batch - || echo "@err building ${ns(n)}"`;
  const teardown = (n: LabNode) => `printf 'xfrm policy flush\\nxfrm state flush\\n' | ip -n ${ns(n)} -batch - ; ip netns del ${ns(n)}`;
  const lines = [SETTLE, `printf '%s\\n' ${q(root)} | ip -batch - || echo "@err building the copies"`, ...nodes.map(build), 'settle'];
  if (together) {
    lines.push(...nodes.map((n) => `( ${load(n)} ) &`), 'wait');
  } else {
    // one after another, each into its empty copy, the guest idle before each
    for (const n of nodes) lines.push(load(n), 'settle');
  }
  lines.push(...nodes.map(teardown), `for f in ${d}/*.err; do [ -s "$f" ] && echo "@stderr $(basename $f .err) $(head -c 200 $f | tr '\\n' ' ')"; rm -f "$f"; done; true`, 'settle');
  return lines.join('\n');
}

function parseBaseline(out: string, errors: string[]): Record<string, { secs: number; s: number; e: number }> {
  const res: Record<string, { secs: number; s: number; e: number }> = {};
  for (const m of out.matchAll(/^@bl (\S+) (\d+) ([\d.]+) ([\d.]+)$/gm)) {
    if (m[2] !== '0') errors.push(`${m[1]}: ip -batch exit ${m[2]}`);
    else res[m[1]!] = { secs: Number(m[4]) - Number(m[3]), s: Number(m[3]), e: Number(m[4]) };
  }
  for (const m of out.matchAll(/^@(err|stderr) (.*)$/gm)) errors.push(redact(m[2]!));
  return res;
}

async function baseline(lab: Lab, rep: number, routers: readonly LabNode[], withTogether: boolean): Promise<BaselineRun> {
  const errors: string[] = [];
  const r1 = await guestRun(lab, baselineScript(lab, routers, false));
  noteSettled(r1.stdout);
  const alone = Object.fromEntries(Object.entries(parseBaseline(r1.stdout, errors)).map(([k, v]) => [k, v.secs]));
  const run: BaselineRun = { rep, alone, ok: true, errors };
  if (withTogether) {
    const r2 = await guestRun(lab, baselineScript(lab, lab.nodes, true));
    noteSettled(r2.stdout);
    const t = parseBaseline(r2.stdout, errors);
    run.together = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, v.secs]));
    const vs = Object.values(t);
    if (vs.length === lab.nodes.length) run.togetherWall = Math.max(...vs.map((v) => v.e)) - Math.min(...vs.map((v) => v.s));
  }
  run.ok = errors.length === 0 && Object.keys(alone).length === routers.length && (!withTogether || run.togetherWall !== undefined);
  if (!run.ok) log(`  baseline problems: ${errors.join('; ') || 'missing results'}`);
  return run;
}

/** empties one router as a reboot would; the rest of the lab keeps its configuration */
async function emptyRouter(lab: Lab, n: LabNode): Promise<void> {
  const ns = n.ns;
  const r = await guestRun(
    lab,
    [
      SETTLE,
      `ip -n ${ns} xfrm policy flush`,
      `ip -n ${ns} xfrm state flush`,
      `ip -n ${ns} route flush proto 79`,
      `ip -n ${ns} -4 address flush dev lo scope global`,
      `nsenter --net=/run/netns/${ns} sh -c 'for t in filter nat mangle raw; do iptables -t $t -F; iptables -t $t -X; done; echo 0 > /proc/sys/net/ipv4/ip_forward'`,
      'settle',
    ].join('\n'),
  );
  noteSettled(r.stdout);
  if (r.code !== 0) throw new Error(`emptying ${n.name} failed: ${r.stderr.trim().slice(0, 300)}`);
}

/** results so far, written after every repetition (work dir, no keys), so that an interrupted run keeps them */
let partial: (r: SizeResult) => Promise<void> = async () => undefined;

async function measureSize(a: Args, lab: Lab, work: string, secrets: string, withFull: boolean, withSingle: boolean): Promise<SizeResult[]> {
  log(`warm-up apply of ${lab.topo} (untimed; ${a.circuitsPerRouter * lab.size} circuits)`);
  const warm = await timedApply(lab, work, 0, 'full', ['--seed', a.seed]);
  if (!warm.ok) throw new Error(`the warm-up apply failed (${warm.summary}); see ${path.join(work, `apply-${lab.size}-full-0.err`)}`);
  log(`  warm-up: ${f2(warm.wall)} s, ${warm.summary}`);
  await prepareBaseline(lab, secrets);
  const counts = Object.fromEntries(lab.counts);
  const rc = lab.routers.map((n) => lab.counts.get(n.name)!.total);
  log(`objects per router ${Math.min(...rc)}-${Math.max(...rc)}; per client ${lab.nodes.filter((n) => n.kind === 'client').map((n) => lab.counts.get(n.name)!.total).join(', ')}`);
  const out: SizeResult[] = [];

  if (withFull) {
    const clients = lab.nodes.filter((n) => n.kind === 'client').map((n) => n.name);
    const res: SizeResult = { size: lab.size, label: `${lab.size}`, routers: lab.routers.map((n) => n.name), clients, nodes: lab.nodes.length, counts, applies: [], baselines: [], procStart: [] };
    for (let rep = 1; rep <= a.reps && !stopping; rep++) {
      log(`R=${lab.size} repetition ${rep}/${a.reps} (load ${await loadavg3()})`);
      res.procStart.push(await procStartProbe(lab));
      const doApply = async () => {
        log('  destroy (untimed)');
        await destroy(lab);
        const ap = await timedApply(lab, work, rep, 'full');
        res.applies.push(ap);
        log(`  apply: ${f2(ap.wall)} s (connect ${f2(ap.phases.connect)}, read+diff ${f2(ap.phases.readPlan)}, push ${f2(ap.phases.push)}; guest busy ${f2((ap.guestBusy ?? NaN) * 100, 0)}%)`);
        await settle(lab);
        const noop = await timedApply(lab, work, rep, 'noop');
        res.applies.push(noop);
        log(`  no-op apply: ${f2(noop.wall)} s (${noop.summary})`);
      };
      const doBaseline = async () => {
        const b = await baseline(lab, rep, lab.routers, true);
        res.baselines.push(b);
        const slow = Math.max(...Object.values(b.alone));
        log(`  baseline: slowest router alone ${f2(slow, 2)} s; all ${lab.nodes.length} nodes at once ${f2(b.togetherWall ?? NaN, 2)} s`);
      };
      if (rep % 2 === 1) {
        await doApply();
        await doBaseline();
      } else {
        await doBaseline();
        await doApply();
      }
      await partial(res);
    }
    out.push(res);
  }

  if (withSingle) {
    // the router with the most objects: the same router the R=4 baseline calls the slowest, usually
    const target = [...lab.routers].sort((x, y) => lab.counts.get(y.name)!.total - lab.counts.get(x.name)!.total)[0]!;
    const clients = lab.nodes.filter((n) => n.kind === 'client').map((n) => n.name);
    const res: SizeResult = { size: 1, label: `1 (${target.name} of ${lab.size})`, routers: [target.name], clients, nodes: lab.nodes.length, counts, applies: [], baselines: [], procStart: [] };
    for (let rep = 1; rep <= a.reps && !stopping; rep++) {
      log(`R=1 (${target.name} of the ${lab.size}-router lab) repetition ${rep}/${a.reps} (load ${await loadavg3()})`);
      res.procStart.push(await procStartProbe(lab));
      const doApply = async () => {
        log(`  emptying ${target.name} as a reboot would (untimed)`);
        await emptyRouter(lab, target);
        const ap = await timedApply(lab, work, rep, 'single');
        res.applies.push(ap);
        log(`  apply: ${f2(ap.wall)} s (connect ${f2(ap.phases.connect)}, read+diff ${f2(ap.phases.readPlan)}, push ${f2(ap.phases.push)}; guest busy ${f2((ap.guestBusy ?? NaN) * 100, 0)}%)`);
        await settle(lab);
      };
      const doBaseline = async () => {
        const b = await baseline(lab, rep, [target], false);
        res.baselines.push(b);
        log(`  baseline: ${target.name} alone ${f2(b.alone[target.name] ?? NaN, 2)} s`);
      };
      if (rep % 2 === 1) {
        await doApply();
        await doBaseline();
      } else {
        await doBaseline();
        await doApply();
      }
      await partial(res);
    }
    out.push(res);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// summary

interface Row {
  label: string;
  size: number;
  nodes: number;
  routerObjects: Stat;
  clientObjects: Stat;
  apply: Stat;
  slowestAlone: Stat;
  ratioAlone: Stat;
  together?: Stat;
  ratioTogether?: Stat;
  noop?: Stat;
  connect: Stat;
  readPlan: Stat;
  push: Stat;
  stages: [string, Stat][];
  cpu: Stat;
  guestBusy: Stat;
  guestCpu: Stat;
  guestProcs: Stat;
  noopProcs?: Stat;
  procStart: Stat;
  changes: Record<string, string>;
}

function summarizeSize(r: SizeResult): Row {
  const full = r.applies.filter((x) => x.kind !== 'noop' && x.ok);
  const noop = r.applies.filter((x) => x.kind === 'noop' && x.ok);
  const bl = r.baselines.filter((b) => b.ok);
  const slowest = (b: BaselineRun) => Math.max(...r.routers.map((n) => b.alone[n] ?? NaN));
  // ratios pair each apply with the baseline of the same repetition
  const paired = (den: (b: BaselineRun) => number | undefined) =>
    stat(full.map((ap) => { const b = bl.find((x) => x.rep === ap.rep); const d = b ? den(b) : undefined; return d ? ap.wall / d : NaN; }));
  const stageNames = [...new Set(full.flatMap((x) => x.phases.stages.map(([s]) => s)))];
  const changes: Record<string, string> = {};
  const last = full.at(-1);
  if (last) for (const [n, c] of Object.entries(last.changes)) changes[n] = `+${c.add} ~${c.change} -${c.destroy}`;
  const row: Row = {
    label: r.label,
    size: r.size,
    nodes: r.nodes,
    routerObjects: stat(r.routers.map((n) => r.counts[n]?.total ?? NaN)),
    clientObjects: stat(r.clients.map((n) => r.counts[n]?.total ?? NaN)),
    apply: stat(full.map((x) => x.wall)),
    slowestAlone: stat(bl.map(slowest)),
    ratioAlone: paired(slowest),
    connect: stat(full.map((x) => x.phases.connect)),
    readPlan: stat(full.map((x) => x.phases.readPlan)),
    push: stat(full.map((x) => x.phases.push)),
    stages: stageNames.map((s) => [s, stat(full.map((x) => x.phases.stages.find(([n]) => n === s)?.[1] ?? NaN))]),
    cpu: stat(full.map((x) => x.cpu ?? NaN)),
    guestBusy: stat(full.map((x) => (x.guestBusy ?? NaN) * 100)),
    guestCpu: stat(full.map((x) => x.guestCpu ?? NaN)),
    guestProcs: stat(full.map((x) => x.guestProcs ?? NaN)),
    procStart: stat(r.procStart),
    changes,
  };
  if (bl.some((b) => b.togetherWall !== undefined)) {
    row.together = stat(bl.map((b) => b.togetherWall ?? NaN));
    row.ratioTogether = paired((b) => b.togetherWall);
  }
  if (noop.length > 0) {
    row.noop = stat(noop.map((x) => x.wall));
    row.noopProcs = stat(noop.map((x) => x.guestProcs ?? NaN));
  }
  return row;
}

function formatReport(a: Args, results: SizeResult[], meta: { load0: string; load1: string; commit: string; kernel: string }): string {
  const rows = results.map(summarizeSize);
  const o: string[] = [];
  const w = (x: string, n: number) => x.padEnd(n);
  o.push(`apply benchmark: k=2, ${a.circuitsPerRouter} circuits per router, one client per router, ${a.reps} repetitions (onionctl ${meta.commit}); kernel ${meta.kernel}`);
  o.push(`host load average (1/5/15 min): ${meta.load0} at the start, ${meta.load1} at the end (a shared 2-core machine)`);
  o.push('NOTE: the routers run in one User-Mode Linux guest with ONE CPU: every router, client and sshd shares it, and');
  o.push('      every process start in it costs a large fraction of a second (probe below). Times are medians (min/max).');
  o.push('');
  o.push('Objects (xfrm states + policies + routes + addresses = ip -batch lines) per node:');
  for (const r of results) {
    const byNode = Object.entries(r.counts).map(([n, c]) => `${n} ${c.total} (${c.states}s/${c.policies}p/${c.routes}r/${c.addresses}a)`);
    o.push(`  R=${r.label}: ${byNode.join(', ')}`);
  }
  o.push('');
  o.push(
    `${w('R', 12)}${w('nodes', 7)}${w('obj/router', 12)}${w('apply s', 22)}${w('slowest router alone s', 24)}${w('apply/alone', 20)}${w('all nodes at once s', 22)}apply/at once`,
  );
  for (const r of rows) {
    o.push(
      `${w(r.label, 12)}${w(String(r.nodes), 7)}${w(f2(r.routerObjects.median, 0), 12)}${w(fs3(r.apply), 22)}${w(fs3(r.slowestAlone, 2), 24)}${w(fs3(r.ratioAlone, 2), 20)}${w(r.together ? fs3(r.together, 1) : '-', 22)}${r.ratioTogether ? fs3(r.ratioTogether, 2) : '-'}`,
    );
  }
  const one = rows.find((r) => r.size === 1);
  for (const r of rows.filter((x) => x.size > 1)) {
    if (one) o.push(`apply R=${r.size} / R=1: ${f2(r.apply.median / one.apply.median, 2)} (target: about 1); all-at-once baseline R=${r.size} / one router alone: ${r.together ? f2(r.together.median / one.slowestAlone.median, 2) : '-'}`);
  }
  o.push('target: apply / slowest router alone <= 1.5');
  o.push('');
  o.push('Where apply\'s time goes (seconds from its start; stage = first step of that stage to the first step of the next):');
  const stageNames = [...new Set(rows.flatMap((r) => r.stages.map(([s]) => s)))];
  o.push(`${w('R', 12)}${w('connect', 18)}${w('read+diff', 18)}${stageNames.map((s) => w(s, 19)).join('')}`);
  for (const r of rows) {
    const st = stageNames.map((s) => w(fs3(r.stages.find(([n]) => n === s)?.[1] ?? stat([]), 1), 19)).join('');
    o.push(`${w(r.label, 12)}${w(fs3(r.connect), 18)}${w(fs3(r.readPlan), 18)}${st}`);
  }
  o.push('');
  o.push(`${w('R', 12)}${w('controller CPU s', 19)}${w('guest CPU s', 19)}${w('guest busy %', 14)}${w('guest processes', 19)}${w('no-op apply s', 19)}${w('its processes', 19)}process start s`);
  for (const r of rows) {
    o.push(
      `${w(r.label, 12)}${w(fs3(r.cpu), 19)}${w(fs3(r.guestCpu), 19)}${w(fs3(r.guestBusy, 0), 14)}${w(fs3(r.guestProcs, 0), 19)}${w(r.noop ? fs3(r.noop) : '-', 19)}${w(r.noopProcs ? fs3(r.noopProcs, 0) : '-', 19)}${fs3(r.procStart, 2)}`,
    );
  }
  o.push('  connect: CLI start (node, topology, state, plan) until every SSH session is up; read+diff: every node read back');
  o.push('  (one `sh -s` each), diff, plan printed, state saved; controller CPU: user+system of the CLI on this machine;');
  o.push('  guest CPU / busy / processes: CPU seconds the guest used during the apply, its non-idle share, and the processes');
  o.push('  started in it (sshd sessions, shells, ip, iptables...; the baseline starts one `ip` per node); no-op apply: a second');
  o.push('  apply right after (connect, read-back of full routers, diff, nothing to push); process start: `nsenter --net=NS true`.');
  o.push('');
  o.push('Changes pushed per node (last repetition: +added ~changed -destroyed, firewall rules and sysctls included):');
  for (const r of rows) o.push(`  R=${r.label}: ${Object.entries(r.changes).map(([n, c]) => `${n} ${c}`).join(', ')}`);
  const bad = results.flatMap((r) => [...r.applies.filter((x) => !x.ok).map((x) => `R=${r.label} ${x.kind} apply rep ${x.rep}: ${x.summary}`), ...r.baselines.filter((b) => !b.ok).map((b) => `R=${r.label} baseline rep ${b.rep}: ${b.errors.join('; ')}`)]);
  if (bad.length > 0) o.push('', 'failed runs (left out of the statistics):', ...bad.map((b) => `  ${b}`));
  return o.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------

let stopping = false;

async function gitDescribe(): Promise<string> {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
  const git = (args: string[]) =>
    new Promise<string>((resolve) => {
      let s = '';
      const c = spawn('git', ['-C', root, ...args], { stdio: ['ignore', 'pipe', 'ignore'] });
      c.stdout.on('data', (d: Buffer) => (s += d.toString()));
      c.on('close', () => resolve(s.trim()));
      c.on('error', () => resolve(''));
    });
  const head = await git(['rev-parse', '--short', 'HEAD']);
  const dirty = (await git(['status', '--porcelain', '--untracked-files=no', 'src'])) !== '';
  return head ? `${head}${dirty ? ' + uncommitted changes in src/' : ''}` : 'unknown';
}

async function main(): Promise<number> {
  const a = parseArgs(process.argv.slice(2));
  if (process.getuid && process.getuid() !== 0) throw new Error('the lab needs root');
  const load0 = await loadavg3();
  const commit = await gitDescribe();
  const work = await fs.mkdtemp('/tmp/bench-apply/run-').catch(async () => {
    await fs.mkdir('/tmp/bench-apply', { recursive: true, mode: 0o700 });
    return fs.mkdtemp('/tmp/bench-apply/run-');
  });
  // state, secrets and the baseline's key files live on a tmpfs
  const secrets = await fs.mkdtemp('/dev/shm/onionctl-bench-apply-');
  await fs.chmod(secrets, 0o700);
  const labs: Lab[] = [];
  const skeletons: string[] = [];
  let downP: Promise<void> | undefined;
  const down = () =>
    (downP ??= (async () => {
      stopping = true;
      const running = current;
      if (running) {
        running.kill('SIGTERM');
        await running.done;
      }
      for (const lab of labs) await lab.host.run(['rm', '-rf', lab.guestDir]).catch(() => undefined);
      for (const s of skeletons) {
        log(`tearing the lab of ${s} down`);
        const code = await onionctl(['lab', 'down', s], true);
        if (code !== 0) log(`onionctl lab down exited ${code}; check ip netns list and ${labDir('*')}`);
      }
      await fs.rm(secrets, { recursive: true, force: true });
    })());
  const dispose = exitOnSignals(down);

  const results: SizeResult[] = [];
  let kernelSeen = '?';
  const saved = new Map<string, SizeResult>();
  partial = async (r) => {
    saved.set(r.label, r);
    await fs.writeFile(path.join(work, 'results.json'), JSON.stringify({ args: a, commit, results: [...saved.values()] }, null, 2) + '\n', { mode: 0o600 });
  };
  try {
    const labSizes = [...new Set(a.sizes.map((s) => (s === 1 ? 4 : s)))].sort((x, y) => x - y);
    for (const size of labSizes) {
      if (stopping) break;
      const lab = await labUp(a, size, work, secrets);
      kernelSeen = lab.kernel;
      labs.push(lab);
      skeletons.push(lab.skeleton);
      try {
        const res = await measureSize(a, lab, work, secrets, a.sizes.includes(size), size === 4 && a.sizes.includes(1));
        results.push(...res);
      } finally {
        // (on a signal, down() tears everything down)
        if (!stopping) {
          await lab.host.run(['rm', '-rf', lab.guestDir]).catch(() => undefined);
          log(`tearing the ${size}-router lab down`);
          await onionctl(['lab', 'down', lab.skeleton], true);
          skeletons.splice(skeletons.indexOf(lab.skeleton), 1);
          labs.splice(labs.indexOf(lab), 1);
        }
        await fs.rm(lab.state, { force: true });
        await fs.rm(lab.secret, { force: true });
        await fs.rm(`${lab.state}.lock`, { force: true });
      }
    }
    const order = (r: SizeResult) => r.size;
    results.sort((x, y) => order(x) - order(y));
    const meta = { load0, load1: await loadavg3(), commit, kernel: kernelSeen };
    if (a.json) process.stdout.write(JSON.stringify({ args: a, meta, results, summary: results.map(summarizeSize) }, null, 2) + '\n');
    else process.stdout.write(formatReport(a, results, meta));
    log(`per-apply progress logs and results.json (no keys): ${work}`);
    return 0;
  } finally {
    await down();
    dispose();
  }
}

// not when imported (e.g. by a test of the pure helpers)
runIfMain(import.meta.url, 'bench/apply', main);

