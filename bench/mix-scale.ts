/**
 * The cost of one circuit as its mixes carry more circuits (issue 13 point 2). See
 * docs/bench-mix-scale.md.
 *
 *   npm run bench:mix-scale
 *   node dist/bench/mix-scale.js [--topology examples/three-mixes.yaml] [--counts 0,100,1000,10000]
 *       [--reps 3] [--pings 20] [--kernel PATH|6.12] [--xfrm-interface] [--guest-memory 4096] [--json]
 *
 * One lab run: `onionctl lab up` on a private copy of the topology (router pools widened to a
 * /16 each, exits allowing UDP to 198.18.0.0/15), then for each N of --counts, in order, and
 * once more at the first N ("again", which shows drift and that removing circuits works):
 *   1. N background circuits (the measured circuit's client, each to its own 198.18.x.y) are
 *      added to the lab topology and pushed by the real `onionctl apply` over SSH: timed;
 *   2. the measured circuit (the first in the lab state) fetches 10 MiB --reps times and pings
 *      --pings times; the guest's CPU time per packet on the client's wire is read from
 *      /proc/stat around each transfer;
 *   3. every node's xfrm counts (`ip -s -s xfrm policy count`: the policy hash and its
 *      thresholds) and the length of onionctl's FORWARD chain are recorded.
 * The background circuits carry no traffic: what they cost the measured one is lookup work.
 * A benchmark prints; it never asserts.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { parseArgs as parseCliArgs } from 'node:util';
import { parseDocument } from 'yaml';
import { formatIPv4 } from '../src/net/addr.js';
import type { LabHost } from '../src/lab/host.js';
import type { LabRecord } from '../src/lab/record.js';
import { loadState } from '../src/store/files.js';
import { labStatePath } from '../src/lab/run.js';
import { bringUpLab, KERNEL_OPTIONS, KERNEL_USAGE, kernelUpArgs, labApply, labTeardown, loadavg, log, nsx, runIfMain, stat, type Stat } from './common.js';

const BIG = '10M.bin';
const BIG_BYTES = 10 * 1024 * 1024;
/** background circuits' destinations: 198.18.0.0/15 (benchmark range), one /32 each */
const BG_NET = (198 << 24) | (18 << 16);

interface Args {
  topology: string;
  counts: number[];
  reps: number;
  pings: number;
  kernel?: string;
  xfrmInterface: boolean;
  /** the UML guest's memory (MiB): every node's SAs live in it */
  guestMemory: number;
  json: boolean;
}

function usage(): never {
  process.stdout.write(
    'usage: node dist/bench/mix-scale.js [--topology FILE] [--counts 0,100,1000,10000] [--reps 3] [--pings 20]\n' +
      `                                   ${KERNEL_USAGE} [--guest-memory MiB (4096)] [--json]\n` +
      'Needs root and what onionctl lab needs (docs/lab-uml.md), plus curl and ping. See docs/bench-mix-scale.md.\n',
  );
  process.exit(0);
}

export function parseArgs(argv: string[]): Args {
  const { values: v } = parseCliArgs({
    args: argv,
    strict: true,
    options: {
      topology: { type: 'string', default: 'examples/three-mixes.yaml' },
      counts: { type: 'string', default: '0,100,1000,10000' },
      reps: { type: 'string', default: '3' },
      pings: { type: 'string', default: '20' },
      ...KERNEL_OPTIONS,
      'guest-memory': { type: 'string', default: '4096' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (v.help) usage();
  const int = (s: string, what: string) => {
    if (!/^\d+$/.test(s)) throw new Error(`--${what}: not a whole number: ${s}`);
    return Number(s);
  };
  const a: Args = {
    topology: v.topology,
    counts: v.counts.split(',').map((s) => int(s.trim(), 'counts')),
    reps: Math.max(1, int(v.reps, 'reps')),
    pings: Math.max(1, int(v.pings, 'pings')),
    ...(v.kernel !== undefined ? { kernel: v.kernel } : {}),
    xfrmInterface: v['xfrm-interface'],
    guestMemory: int(v['guest-memory'], 'guest-memory'),
    json: v.json,
  };
  if (Math.max(...a.counts) > 60_000) throw new Error('--counts: at most 60000 background circuits (one /16 pool per router)');
  return a;
}

/**
 * The benchmark's copy of the topology: every router's pool widened to its own /16 in
 * 100.64.0.0/10 (100.(100+i).0.0/16, clear of the lab's management /16, which is picked free of
 * them), and every exit allowing UDP to the background destinations.
 */
export function widenTopology(text: string): string {
  const doc = parseDocument(text);
  const routers = doc.get('routers') as { items: { set(k: string, v: unknown): void; get(k: string): unknown }[] } | undefined;
  if (!routers?.items) throw new Error('the topology has no routers');
  routers.items.forEach((r, i) => {
    r.set('pool', `100.${100 + i}.0.0/16`);
    const exit = r.get('exit') as { get(k: string): unknown } | undefined;
    const allow = exit?.get('allow') as { add(v: unknown): void } | undefined;
    if (allow) allow.add(doc.createNode({ to: '198.18.0.0/15', proto: 'udp' }));
  });
  return doc.toString();
}

/** The lab topology with `n` background circuits of `client`, placed before the existing ones. */
export function withBackground(labText: string, client: string, n: number): string {
  const doc = parseDocument(labText);
  const circuits = (doc.toJS() as { circuits?: unknown[] }).circuits ?? [];
  const bg = Array.from({ length: n }, (_, i) => ({ name: `bg${String(i).padStart(5, '0')}`, client, to: [`${formatIPv4((BG_NET + i) >>> 0)}/32`] }));
  doc.set('circuits', doc.createNode([...bg, ...circuits]));
  return doc.toString({ lineWidth: 0 });
}

/** "SPD IN  1 OUT 2 FWD 3" and friends from `ip -s -s xfrm policy count`, as one line. */
export function spdSummary(text: string): string {
  return text
    .split('\n')
    .map((l) => l.trim().replace(/\s+/g, ' '))
    .filter((l) => /^SPD/.test(l))
    .join('; ');
}

interface Measure {
  n: number;
  label: string;
  applySeconds: number;
  applyCode: number;
  MBps: number[];
  cpuUsPerPacket: number[];
  rttMs: number[];
  /** per node: `ip -s -s xfrm policy count` lines, state count, onionctl FORWARD chain length */
  nodes: Record<string, { spd: string; states: number; forwardRules: number; measuredRuleAt: number }>;
  load: string;
}

const f = (x: number, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const fs3 = (s: Stat, d = 2) => (s.n === 0 ? '-' : `${f(s.median, d)} (${f(s.min, d)}/${f(s.max, d)})`);

interface Ctx {
  rec: LabRecord;
  host: LabHost;
  topo: string;
  tmp: string;
  circuit: string;
  client: LabRecord['layout']['nodes'][number];
  hops: LabRecord['layout']['nodes'];
  dest: string;
  iptables: string;
}

async function measure(c: Ctx, a: Args, n: number, label: string, applySeconds: number, applyCode: number): Promise<Measure> {
  const d = `/sys/class/net/${c.client.underlay.hostVeth}/statistics`;
  const mark = (tag: string) => `echo "@${tag} $(head -1 /proc/stat | cut -d' ' -f2-) | $(cat ${d}/rx_packets ${d}/tx_packets | tr '\\n' ' ')"`;
  const lines: string[] = [nsx(c.client.ns, `curl -sS --max-time 120 -o /dev/null http://${c.dest}/${BIG}`) + ' >/dev/null 2>&1 || true'];
  for (let r = 0; r < a.reps; r++) {
    lines.push(mark(`t0 ${r}`));
    lines.push(`echo "@curl ${r} $(${nsx(c.client.ns, `curl -sS --max-time 600 -o /dev/null -w '%{time_total} %{size_download} %{http_code}' http://${c.dest}/${BIG}`)})"`);
    lines.push(mark(`t1 ${r}`));
  }
  lines.push(`echo "@ping"; ${nsx(c.client.ns, `ping -n -c ${a.pings} -i 0.1 -W 2 ${c.dest}`)}; echo "@endping"`);
  for (const node of [c.client, ...c.hops]) {
    lines.push(`echo "@node ${node.name}"`, nsx(node.ns, 'ip -s -s xfrm policy count'), `echo "@states $(${nsx(node.ns, 'ip xfrm state list')} | grep -c '^src')"`);
    lines.push(`echo "@rules $(${nsx(node.ns, `${c.iptables} -S ONIONCTL-FORWARD`)} 2>/dev/null | grep -c '^-A') $(${nsx(node.ns, `${c.iptables} -S ONIONCTL-FORWARD`)} 2>/dev/null | grep '^-A' | grep -n 'circuit ${c.circuit} ' | head -1 | cut -d: -f1)"`);
  }
  const r = await c.host.run(['sh', '-c', lines.join('\n')], { timeoutMs: 1_800_000 });
  const m: Measure = { n, label, applySeconds, applyCode, MBps: [], cpuUsPerPacket: [], rttMs: [], nodes: {}, load: await loadavg() };
  const marks = new Map<string, { busy: number; total: number; pkts: number }>();
  let node: string | undefined;
  let inPing = false;
  const pingLines: string[] = [];
  for (const line of r.stdout.split('\n')) {
    let x: RegExpExecArray | null;
    if ((x = /^@(t[01]) (\d+) (.*) \| (.*)$/.exec(line))) {
      const cpu = x[3]!.trim().split(/\s+/).map(Number);
      const total = cpu.slice(0, 8).reduce((s, v) => s + v, 0);
      const idle = (cpu[3] ?? 0) + (cpu[4] ?? 0);
      const p = x[4]!.trim().split(/\s+/).map(Number);
      marks.set(`${x[1]} ${x[2]}`, { busy: total - idle, total, pkts: (p[0] ?? 0) + (p[1] ?? 0) });
    } else if ((x = /^@curl (\d+) (\S+) (\d+) (\d+)$/.exec(line))) {
      const ok = Number(x[4]) === 200 && Number(x[3]) === BIG_BYTES;
      m.MBps.push(ok ? BIG_BYTES / Number(x[2]) / 1e6 : NaN);
      if (!ok) log(`  ${label} N=${n}: transfer ${x[1]} failed: ${line}`);
    } else if (line === '@ping') inPing = true;
    else if (line === '@endping') inPing = false;
    else if (inPing) pingLines.push(line);
    else if ((x = /^@node (\S+)$/.exec(line))) {
      node = x[1]!;
      m.nodes[node] = { spd: '', states: NaN, forwardRules: NaN, measuredRuleAt: NaN };
    } else if (node && (x = /^@states (\d+)$/.exec(line))) m.nodes[node]!.states = Number(x[1]);
    else if (node && (x = /^@rules (\d+) ?(\d*)$/.exec(line))) {
      m.nodes[node]!.forwardRules = Number(x[1]);
      m.nodes[node]!.measuredRuleAt = x[2] ? Number(x[2]) : NaN;
    } else if (node && /^\s*SPD/.test(line)) m.nodes[node]!.spd = [m.nodes[node]!.spd, spdSummary(line)].filter(Boolean).join('; ');
  }
  for (let i = 0; i < a.reps; i++) {
    const t0 = marks.get(`t0 ${i}`);
    const t1 = marks.get(`t1 ${i}`);
    // USER_HZ is 100: one jiffy is 10 ms of one CPU
    m.cpuUsPerPacket.push(t0 && t1 && t1.pkts > t0.pkts ? ((t1.busy - t0.busy) * 10_000) / (t1.pkts - t0.pkts) : NaN);
  }
  m.rttMs = [...pingLines.join('\n').matchAll(/time=([\d.]+) ms/g)].map((x) => Number(x[1]));
  if (r.code !== 0 && r.stderr.trim()) log(`  measurement script: ${r.stderr.trim().split('\n').slice(-3).join('; ')}`);
  return m;
}

async function applyWith(c: Ctx, n: number): Promise<{ seconds: number; code: number }> {
  const labText = await fs.readFile(c.rec.ctl!.topology, 'utf8');
  const big = path.join(c.tmp, `topology-bg${n}.yaml`);
  await fs.writeFile(big, withBackground(labText, c.client.name, n), { mode: 0o600 });
  return labApply(c.topo, c.rec, big, ['--command-timeout', '1200']);
}

function formatTable(c: Ctx, a: Args, ms: Measure[], kernel: string): string {
  const out: string[] = [];
  const base = ms[0]!;
  const baseMB = stat(base.MBps).median;
  const baseCpu = stat(base.cpuUsPerPacket).median;
  out.push(`mix-scale benchmark: ${a.topology}, circuit ${c.circuit} ${[c.client.name, ...c.hops.map((h) => h.name)].join(' -> ')} -> ${c.dest}; kernel ${kernel}${a.xfrmInterface ? ', xfrm_interface loaded' : ''}`);
  out.push(`N background circuits of ${c.client.name} through the same mixes (no traffic), added and removed by onionctl apply; ${a.reps} x ${BIG} and ${a.pings} pings per step`);
  out.push('NOTE: one User-Mode Linux CPU for every node, software AES: compare the rows, not the absolute numbers.');
  out.push('');
  const w = (x: string, k: number) => x.padEnd(k);
  out.push(`${w('N', 7)}${w('step', 8)}${w('apply s', 10)}${w('MB/s median (min/max)', 24)}${w('x N=first', 11)}${w('CPU us/pkt', 16)}${w('x N=first', 11)}${w('RTT ms', 20)}load`);
  for (const m of ms) {
    const mb = stat(m.MBps);
    const cpu = stat(m.cpuUsPerPacket);
    out.push(
      `${w(String(m.n), 7)}${w(m.label, 8)}${w(m.applyCode === 0 ? f(m.applySeconds, 1) : `exit ${m.applyCode}`, 10)}${w(fs3(mb), 24)}${w(f(mb.median / baseMB), 11)}` +
        `${w(fs3(cpu, 1), 16)}${w(f(cpu.median / baseCpu), 11)}${w(fs3(stat(m.rttMs), 3), 20)}${m.load}`,
    );
  }
  out.push('');
  out.push('per node at each step: xfrm states, SPD (ip -s -s xfrm policy count), onionctl FORWARD rules (position of the measured circuit\'s first rule)');
  for (const m of ms) {
    out.push(`N=${m.n} (${m.label}):`);
    for (const [name, x] of Object.entries(m.nodes)) {
      out.push(`  ${w(name, 8)} states ${w(String(x.states), 7)} rules ${w(`${x.forwardRules}${Number.isFinite(x.measuredRuleAt) ? ` (at ${x.measuredRuleAt})` : ''}`, 16)} ${x.spd}`);
    }
  }
  return out.join('\n') + '\n';
}

async function main(): Promise<number> {
  const a = parseArgs(process.argv.slice(2));
  if (process.getuid && process.getuid() !== 0) throw new Error('the lab needs root');
  const src = path.resolve(a.topology);
  const tmp = await fs.mkdtemp('/var/tmp/onionctl-mixscale-');
  const topo = path.join(tmp, path.basename(src));
  await fs.writeFile(topo, widenTopology(await fs.readFile(src, 'utf8')), { mode: 0o600 });
  // User-Mode Linux maps guest memory page by page in its host process: a router process holding
  // tens of thousands of SAs' worth of batch input passes vm.max_map_count (65530 by default),
  // and UML kills it ("UML ran out of memory on the host side"). Raised for the run, restored after.
  const MAP_COUNT = '/proc/sys/vm/max_map_count';
  const mapCount = (await fs.readFile(MAP_COUNT, 'utf8').catch(() => '')).trim();
  const raise = /^\d+$/.test(mapCount) && Number(mapCount) < 1_048_576;
  if (raise) {
    await fs.writeFile(MAP_COUNT, '1048576');
    log(`vm.max_map_count ${mapCount} -> 1048576 for this run (User-Mode Linux maps guest memory page by page)`);
  }
  // restored however the run ends, SIGINT and SIGTERM included
  const { down, stopping, dispose } = labTeardown(topo, tmp, async () => {
    if (raise) await fs.writeFile(MAP_COUNT, mapCount);
  });
  try {
    log(`bringing up a lab for ${a.topology} (copy with wide pools: ${topo})`);
    const upArgs = [...kernelUpArgs({ kernel: a.kernel, 'xfrm-interface': a.xfrmInterface }), '--guest-memory', String(a.guestMemory)];
    const { rec, host } = await bringUpLab(topo, upArgs, stopping);
    if (!rec.ctl) throw new Error('the lab record has no controller files');
    const { state } = await loadState(labStatePath(rec));
    const circuit = Object.keys(state.circuits)[0];
    if (!circuit) throw new Error('the lab has no circuit');
    const sc = state.circuits[circuit]!;
    const node = (nm: string) => {
      const x = rec.layout.nodes.find((y) => y.name === nm);
      if (!x) throw new Error(`no lab node ${nm}`);
      return x;
    };
    const server = rec.layout.servers.find((s) => s.circuit === circuit) ?? rec.layout.servers[0]!;
    const c: Ctx = {
      rec, host, topo, tmp, circuit,
      client: node(sc.client),
      hops: sc.hops.map(node),
      dest: formatIPv4(server.iface.addr),
      iptables: rec.iptablesRestore.replace(/-restore$/, ''),
    };
    const kernel = (await host.run(['uname', '-r'])).stdout.trim();
    log(`lab ${rec.id} (kernel ${kernel}): circuit ${circuit} ${c.client.name} -> ${c.hops.map((h) => h.name).join(' -> ')} -> ${c.dest}`);
    const steps = [...a.counts.map((n) => ({ n, label: 'up' })), { n: a.counts[0]!, label: 'again' }];
    const ms: Measure[] = [];
    for (const s of steps) {
      if (stopping()) return 1;
      const ap = await applyWith(c, s.n);
      log(`N=${s.n}: apply ${ap.code === 0 ? 'ok' : `exited ${ap.code}`} in ${f(ap.seconds, 1)} s; measuring`);
      if (ap.code !== 0) {
        // what the lab kernel said while apply failed (the OOM killer, a netlink error)
        const d = await host.run(['sh', '-c', 'dmesg | tail -n 12; free -m']);
        for (const l of d.stdout.trim().split('\n')) log(`  guest: ${l}`);
      }
      const m = await measure(c, a, s.n, s.label, ap.seconds, ap.code);
      log(`N=${s.n}: ${fs3(stat(m.MBps))} MB/s, CPU ${fs3(stat(m.cpuUsPerPacket), 1)} us/packet, RTT ${fs3(stat(m.rttMs), 3)} ms`);
      ms.push(m);
    }
    if (a.json) process.stdout.write(JSON.stringify({ topology: a.topology, kernel, xfrmInterface: a.xfrmInterface, circuit, steps: ms }, null, 2) + '\n');
    else process.stdout.write(formatTable(c, a, ms, kernel));
    return ms.every((m) => m.applyCode === 0) ? 0 : 1;
  } finally {
    await down();
    dispose();
  }
}

runIfMain(import.meta.url, 'mix-scale', main);
