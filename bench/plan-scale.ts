/**
 * How the planner scales: generated topologies of N routers with 10·N circuits (bench/gen-topology.ts),
 * each size planned in its own child process (so its peak RSS is its own), plus a kernel baseline:
 * how fast `ip -batch` loads xfrm policies into a fresh network namespace.
 *
 *   npm run build && node dist/bench/plan-scale.js [--sizes 100,1000,5000] [--seed 1]
 *       [--kernel-policies 10000] [--kernel-runs 3] [--no-kernel] [--json]
 *
 * Measured per size:
 *   validate  TopologySchema (zod) + validateSemantics + buildNet: what `onionctl plan` does to a
 *             file after YAML parsing;
 *   core      the pure core: reconcile (path selection, addresses, SPIs) + buildConfigs + render
 *             of every node's files in redacted mode with a KDF key source (one HKDF per SA end);
 *   maxRSS    the child's peak resident set (process.resourceUsage().maxRSS).
 * The kernel baseline (root and ip(8) needed; skipped otherwise) loads policies only: this host's
 * kernel has xfrm but no ESP, so no states. Its rate gives the time the kernel would need for all
 * of a plan's policies (serially; routers really load theirs in parallel).
 *
 * A benchmark prints; it never asserts timings. See docs/bench.md.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { KdfKeySource } from '../src/keys/kdf.js';
import { PRIORITY_BLOCK, PRIORITY_CIRCUIT, type XfrmPolicy, type XfrmTmpl } from '../src/model/config.js';
import { ANY, hostCidr, parseIPv4 } from '../src/net/addr.js';
import { rngFactory } from '../src/pathselect/rng.js';
import { renderAll, type Plan } from '../src/plan/plan.js';
import { policyLine } from '../src/render/render.js';
import { buildConfigs } from '../src/spd/build.js';
import { emptyState } from '../src/state/model.js';
import { reconcile } from '../src/state/reconcile.js';
import { buildNet } from '../src/topology/net.js';
import { packageVersion } from '../src/util/files.js';
import { loadTemplates } from '../src/store/files.js';
import { checkGenerated, generateTopology, parseGenerated, poolUsage, type PoolUsage } from './gen-topology.js';

const MiB = 1024 * 1024;

interface SizeResult {
  routers: number;
  clients: number;
  circuits: number;
  links: number;
  ms: { generate: number; schema: number; semantics: number; buildNet: number; reconcile: number; buildConfigs: number; render: number };
  validateMs: number;
  coreMs: number;
  /** CPU time (user + system) of the child during the core and during validation */
  coreCpuMs: number;
  validateCpuMs: number;
  totalPolicies: number;
  totalStates: number;
  maxNode: { name: string; policies: number };
  maxRouter: { name: string; policies: number };
  renderedMiB: number;
  rssMiB: Record<string, number>;
  maxRssMiB: number;
  pools: PoolUsage;
}

// ---------------------------------------------------------------------------------------------
// child: one size

async function runSize(n: number, seed: string, dumpPolicies: string | undefined): Promise<SizeResult> {
  const rss: Record<string, number> = {};
  const mark = (phase: string) => (rss[phase] = Math.round(process.memoryUsage().rss / MiB));
  const templates = await loadTemplates();
  const version = packageVersion();
  mark('start');

  const cpu = () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  };
  let t0 = performance.now();
  const input = generateTopology({ routers: n, seed });
  const generate = performance.now() - t0;
  mark('generate');

  const cpuValidate0 = cpu();
  t0 = performance.now();
  const topology = parseGenerated(input);
  const schema = performance.now() - t0;
  t0 = performance.now();
  checkGenerated(topology);
  const semantics = performance.now() - t0;
  t0 = performance.now();
  const net = buildNet(topology);
  const buildNetMs = performance.now() - t0;
  const validateCpuMs = cpu() - cpuValidate0;
  mark('validate');

  const state0 = emptyState('5eed'.repeat(16));
  const keys = new KdfKeySource(Buffer.alloc(32, 7), state0.salt);
  const cpuCore0 = cpu();
  t0 = performance.now();
  const { state, events } = reconcile(net, state0, rngFactory(seed), '2000-01-01T00:00:00.000Z');
  const reconcileMs = performance.now() - t0;
  mark('reconcile');
  t0 = performance.now();
  const configs = buildConfigs(net, state);
  const buildMs = performance.now() - t0;
  mark('buildConfigs');
  const plan: Plan = { state, events, configs };
  t0 = performance.now();
  const files = renderAll(plan, { keys, mode: 'redacted', templates, version });
  const renderMs = performance.now() - t0;
  const coreCpuMs = cpu() - cpuCore0;
  mark('render');

  let bytes = 0;
  for (const f of files) bytes += f.content.length;
  let totalPolicies = 0;
  let totalStates = 0;
  let maxNode = { name: '', policies: -1 };
  let maxRouter = { name: '', policies: -1 };
  for (const cfg of configs.values()) {
    totalPolicies += cfg.policies.length;
    totalStates += cfg.states.length;
    if (cfg.policies.length > maxNode.policies) maxNode = { name: cfg.node, policies: cfg.policies.length };
    if (cfg.kind === 'router' && cfg.policies.length > maxRouter.policies) maxRouter = { name: cfg.node, policies: cfg.policies.length };
  }
  if (dumpPolicies) {
    writeFileSync(dumpPolicies, configs.get(maxNode.name)!.policies.map(policyLine).join('\n') + '\n');
  }
  return {
    routers: n,
    clients: topology.clients.length,
    circuits: topology.circuits.length,
    links: net.links.length,
    ms: { generate, schema, semantics, buildNet: buildNetMs, reconcile: reconcileMs, buildConfigs: buildMs, render: renderMs },
    validateMs: schema + semantics + buildNetMs,
    coreMs: reconcileMs + buildMs + renderMs,
    coreCpuMs,
    validateCpuMs,
    totalPolicies,
    totalStates,
    maxNode,
    maxRouter,
    renderedMiB: bytes / MiB,
    rssMiB: rss,
    maxRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
    pools: poolUsage(topology, state),
  };
}

// ---------------------------------------------------------------------------------------------
// kernel baseline

/**
 * `count` policies shaped like a plan's: per k=3 circuit the client's block/out/in, each mix's
 * fwd/out/fwd/out and the exit's fwd/out (13 policies, 0 to 4 templates), with unique selectors,
 * printed by the renderer's own policyLine.
 */
function syntheticPolicies(count: number): string[] {
  const lines: string[] = [];
  const R = [parseIPv4('100.96.0.1'), parseIPv4('100.97.0.1'), parseIPv4('100.98.0.1'), parseIPv4('100.99.0.1')];
  const client = parseIPv4('198.18.0.1');
  const aBase = parseIPv4('100.64.0.0');
  const dBase = parseIPv4('198.19.0.0');
  let reqid = 0x4f000000;
  const t = (src: number, dst: number): XfrmTmpl => ({ src, dst, reqid: reqid++ });
  const pol = (src: number | 'any', dst: number, dir: XfrmPolicy['dir'], tmpls: XfrmTmpl[], esp = false, block = false): XfrmPolicy => ({
    src: src === 'any' ? ANY : hostCidr(src),
    dst: hostCidr(dst),
    dir,
    priority: block ? PRIORITY_BLOCK : PRIORITY_CIRCUIT,
    action: block ? 'block' : 'allow',
    tmpls,
    comment: '',
    ...(esp ? { proto: 'esp' as const } : {}),
  });
  for (let c = 0; lines.length < count; c++) {
    const A = [aBase + 4 * c + 1, aBase + 4 * c + 2, aBase + 4 * c + 3];
    const d = dBase + c + 1;
    const [r1, r2, r3] = [R[0]!, R[1]!, R[2]!];
    const ps = [
      pol('any', d, 'out', [], false, true),
      pol(A[2]!, d, 'out', [t(A[2]!, r3), t(A[1]!, r2), t(A[0]!, r1), t(client, r1)]),
      pol(d, A[2]!, 'in', [t(r3, A[2]!), t(r2, A[1]!), t(r1, A[0]!), t(r1, client)]),
      pol(A[1]!, r2, 'fwd', [t(A[0]!, r1), t(client, r1)], true),
      pol(A[1]!, r2, 'out', [t(r1, r2)], true),
      pol(r2, A[1]!, 'fwd', [t(r2, r1)], true),
      pol(r2, A[1]!, 'out', [t(r1, A[0]!), t(r1, client)], true),
      pol(A[2]!, r3, 'fwd', [t(A[1]!, r2), t(r1, r2)], true),
      pol(A[2]!, r3, 'out', [t(r2, r3)], true),
      pol(r3, A[2]!, 'fwd', [t(r3, r2)], true),
      pol(r3, A[2]!, 'out', [t(r2, A[1]!), t(r2, r1)], true),
      pol(A[2]!, d, 'fwd', [t(A[2]!, r3), t(r2, r3)]),
      pol(d, A[2]!, 'out', [t(r3, A[2]!), t(r3, r2)]),
    ];
    for (const p of ps) if (lines.length < count) lines.push(policyLine(p));
  }
  return lines;
}

interface KernelLoad {
  policies: number;
  ms: number;
  loaded: number;
}

function sh(argv: string[], input?: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(argv[0]!, argv.slice(1), { input, encoding: 'utf8', maxBuffer: 256 * MiB });
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? (r.error ? String(r.error) : '') };
}

const NS = `onionctl-bench-${process.pid}`;

/** An interrupted run must not leave its namespace behind. */
function deleteNsOnSignal(): void {
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      sh(['ip', 'netns', 'del', NS]);
      process.exit(130);
    });
  }
}

/** Loads `lines` with `ip -n NS -batch -` into a fresh namespace, which is deleted afterwards. */
function kernelLoad(lines: string[]): KernelLoad {
  const ns = NS;
  sh(['ip', 'netns', 'del', ns]);
  const add = sh(['ip', 'netns', 'add', ns]);
  if (add.status !== 0) throw new Error(`ip netns add ${ns}: ${add.stderr.trim()}`);
  try {
    const input = lines.join('\n') + '\n';
    const t0 = performance.now();
    const r = sh(['ip', '-n', ns, '-batch', '-'], input);
    const ms = performance.now() - t0;
    if (r.status !== 0) throw new Error(`ip -batch failed: ${r.stderr.trim().split('\n').slice(0, 3).join('; ')}`);
    const count = sh(['ip', '-n', ns, 'xfrm', 'policy', 'count']).stdout;
    const m = /SPD IN\s+(\d+)\s+OUT\s+(\d+)\s+FWD\s+(\d+)/.exec(count);
    const loaded = m ? Number(m[1]) + Number(m[2]) + Number(m[3]) : NaN;
    return { policies: lines.length, ms, loaded };
  } finally {
    sh(['ip', 'netns', 'del', ns]);
  }
}

function kernelAvailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root';
  if (sh(['ip', '-V']).status !== 0) return 'ip(8) not found';
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// parent

interface Args {
  sizes: number[];
  seed: string;
  kernelPolicies: number;
  kernelRuns: number;
  json: boolean;
  child?: number;
  dump?: string;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { sizes: [100, 1000, 5000], seed: '1', kernelPolicies: 10000, kernelRuns: 3, json: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = () => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${k} needs a value`);
      return x;
    };
    if (k === '--sizes') a.sizes = v().split(',').map((s) => Number(s.trim()));
    else if (k === '--seed') a.seed = v();
    else if (k === '--kernel-policies') a.kernelPolicies = Number(v());
    else if (k === '--kernel-runs') a.kernelRuns = Number(v());
    else if (k === '--no-kernel') a.kernelPolicies = 0;
    else if (k === '--json') a.json = true;
    else if (k === '--child') a.child = Number(v());
    else if (k === '--dump-policies') a.dump = v();
    else if (k === '--help' || k === '-h') {
      process.stdout.write(
        'usage: node dist/bench/plan-scale.js [--sizes 100,1000,5000] [--seed S] [--kernel-policies 10000] [--kernel-runs 3] [--no-kernel] [--json]\n',
      );
      process.exit(0);
    } else throw new Error(`unknown argument ${k}`);
  }
  if (a.sizes.some((s) => !Number.isInteger(s) || s < 20)) throw new Error('--sizes: integers >= 20');
  if (!Number.isInteger(a.kernelRuns) || a.kernelRuns < 1) throw new Error('--kernel-runs: an integer >= 1');
  if (!Number.isInteger(a.kernelPolicies) || a.kernelPolicies < 0) throw new Error('--kernel-policies: an integer >= 0');
  return a;
}

const RESULT = 'PLAN-SCALE-RESULT ';

function runChild(n: number, seed: string, dump?: string): SizeResult {
  const self = fileURLToPath(import.meta.url);
  const argv = [...process.execArgv, self, '--child', String(n), '--seed', seed, ...(dump ? ['--dump-policies', dump] : [])];
  const r = spawnSync(process.execPath, argv, { encoding: 'utf8', maxBuffer: 64 * MiB, stdio: ['ignore', 'pipe', 'inherit'] });
  const line = (r.stdout ?? '').split('\n').find((l) => l.startsWith(RESULT));
  if (r.status !== 0 || !line) throw new Error(`size ${n}: child exited with ${r.status ?? r.signal}`);
  return JSON.parse(line.slice(RESULT.length)) as SizeResult;
}

const f1 = (x: number) => x.toFixed(1);
const f2 = (x: number) => x.toFixed(2);
const int = (x: number) => Math.round(x).toLocaleString('en-US');
const s = (ms: number) => (ms / 1000).toFixed(ms < 10000 ? 2 : 1);

function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => '  ' + r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  return [line(head), line(w.map((x) => '-'.repeat(x))), ...rows.map(line)].join('\n') + '\n';
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (args.child !== undefined) {
    const r = await runSize(args.child, args.seed, args.dump);
    process.stdout.write(RESULT + JSON.stringify(r) + '\n');
    return;
  }
  const out = (x: string) => {
    if (!args.json) process.stdout.write(x);
  };
  out(`onionctl plan-scale: node ${process.version}, ${os.cpus().length} CPUs (${os.cpus()[0]?.model.trim() ?? '?'}), seed ${args.seed}\n`);
  out('Each size runs in its own child process; circuits = 10 x routers; k = 2/3/4 mixed (80% k=3).\n\n');

  const tmp = mkdtempSync(path.join(os.tmpdir(), 'onionctl-bench-'));
  const dump = path.join(tmp, 'largest-node.policies');
  const largest = Math.max(...args.sizes);
  const results: SizeResult[] = [];
  try {
    for (const n of args.sizes) {
      out(`  planning ${int(n)} routers ...\n`);
      results.push(runChild(n, args.seed, n === largest ? dump : undefined));
    }
    out('\n');

    out('Validation (schema + semantic checks + buildNet; runs before planning, reported apart):\n');
    out(
      table(
        ['routers', 'circuits', 'links', 'generate s', 'schema s', 'semantics s', 'buildNet s', 'validate s', 'CPU s'],
        results.map((r) => [
          int(r.routers),
          int(r.circuits),
          int(r.links),
          s(r.ms.generate),
          s(r.ms.schema),
          s(r.ms.semantics),
          s(r.ms.buildNet),
          s(r.validateMs),
          s(r.validateCpuMs),
        ]),
      ),
    );
    out('\nPure core (reconcile + buildConfigs + render redacted, KDF keys); wall time, and the CPU time (user + system) that the child used:\n');
    out(
      table(
        ['routers', 'circuits', 'reconcile s', 'build s', 'render s', 'core s', 'CPU s', 'circuits/s', 'us/circuit', 'policies', 'states', 'files MiB', 'max RSS MiB'],
        results.map((r) => [
          int(r.routers),
          int(r.circuits),
          s(r.ms.reconcile),
          s(r.ms.buildConfigs),
          s(r.ms.render),
          s(r.coreMs),
          s(r.coreCpuMs),
          int(r.circuits / (r.coreMs / 1000)),
          f1((r.coreMs * 1000) / r.circuits),
          int(r.totalPolicies),
          int(r.totalStates),
          f1(r.renderedMiB),
          int(r.maxRssMiB),
        ]),
      ),
    );
    out('\nGrowth (time per circuit relative to the previous size; 1.00 = linear):\n');
    out(
      table(
        ['routers', 'core us/circuit', 'x prev', 'x first', 'validate us/circuit', 'x prev'],
        results.map((r, i) => {
          const per = (r.coreMs * 1000) / r.circuits;
          const vper = (r.validateMs * 1000) / r.circuits;
          const p = results[i - 1];
          const first = results[0]!;
          return [
            int(r.routers),
            f1(per),
            p ? f2(per / ((p.coreMs * 1000) / p.circuits)) : '-',
            f2(per / ((first.coreMs * 1000) / first.circuits)),
            f1(vper),
            p ? f2(vper / ((p.validateMs * 1000) / p.circuits)) : '-',
          ];
        }),
      ),
    );
    out('\nMemory (RSS MiB after each phase; max = peak of the child):\n');
    const phases = Object.keys(results[0]!.rssMiB);
    out(table(['routers', ...phases, 'max'], results.map((r) => [int(r.routers), ...phases.map((p) => int(r.rssMiB[p] ?? 0)), int(r.maxRssMiB)])));
    out('\nPools (per-hop addresses used; highest fill per role, and mean per router):\n');
    out(
      table(
        ['routers', 'entry max', 'exit max', 'other max', 'entry mean', 'exit mean', 'other mean'],
        results.map((r) => [
          int(r.routers),
          `${r.pools.max.entry.used}/${r.pools.max.entry.capacity}`,
          `${r.pools.max.exit.used}/${r.pools.max.exit.capacity}`,
          `${r.pools.max.other.used}/${r.pools.max.other.capacity}`,
          f1(r.pools.mean.entry),
          f1(r.pools.mean.exit),
          f1(r.pools.mean.other),
        ]),
      ),
    );

    let rate: number | undefined;
    const kernel: { synthetic?: KernelLoad[]; largestNode?: KernelLoad & { node: string }; skipped?: string } = {};
    if (args.kernelPolicies > 0) {
      const why = kernelAvailable();
      if (why) {
        kernel.skipped = why;
        out(`\nKernel baseline skipped: ${why}.\n`);
      } else {
        deleteNsOnSignal();
        out(
          `\nKernel baseline: ${int(args.kernelPolicies)} plan-shaped xfrm policies (no states: this kernel has no ESP) via ip -n NS -batch - into a fresh namespace, ${args.kernelRuns} run${args.kernelRuns === 1 ? '' : 's'}:\n`,
        );
        const lines = syntheticPolicies(args.kernelPolicies);
        kernel.synthetic = [];
        for (let i = 0; i < args.kernelRuns; i++) {
          const k = kernelLoad(lines);
          kernel.synthetic.push(k);
          out(`  run ${i + 1}: ${int(k.policies)} policies in ${s(k.ms)} s = ${int(k.policies / (k.ms / 1000))} policies/s (kernel holds ${int(k.loaded)})\n`);
        }
        const sorted = [...kernel.synthetic].sort((a, b) => a.ms - b.ms);
        const med = sorted[Math.floor(sorted.length / 2)]!;
        rate = med.policies / (med.ms / 1000);
        out(`  median: ${int(rate)} policies/s\n`);
        const node = results.find((r) => r.routers === largest)!.maxNode;
        const real = readFileSync(dump, 'utf8').split('\n').filter((l) => l);
        const k = kernelLoad(real);
        kernel.largestNode = { ...k, node: node.name };
        out(`  the largest node of the ${int(largest)}-router plan (${node.name}, ${int(k.policies)} policies): ${f1(k.ms)} ms (kernel holds ${int(k.loaded)})\n`);

        out('\nPlan time vs kernel time for all of the plan\'s policies (extrapolated at the median rate, as if loaded one after another):\n');
        out(
          table(
            ['routers', 'policies', 'kernel s', 'core s', 'core/kernel', 'largest router', 'its kernel ms'],
            results.map((r) => {
              const ks = r.totalPolicies / rate!;
              return [int(r.routers), int(r.totalPolicies), s(ks * 1000), s(r.coreMs), f2(r.coreMs / 1000 / ks), `${r.maxRouter.name} (${r.maxRouter.policies})`, f1((r.maxRouter.policies / rate!) * 1000)];
            }),
          ),
        );
      }
    }
    if (args.json) process.stdout.write(JSON.stringify({ node: process.version, cpus: os.cpus().length, seed: args.seed, results, kernel, kernelRate: rate }, null, 2) + '\n');
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`plan-scale: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
