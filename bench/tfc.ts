/**
 * The cost of ESP TFC padding (issue 6, point 4): two circuits from one client over the same three
 * mixes, one with `tfcpad` and one without, measured interleaved in one lab run.
 * See docs/bench-tfc.md.
 *
 *   npm run bench:tfc
 *   node dist/bench/tfc.js [--size 512] [--layers 3] [--reps 5] [--pings 500] [--ping-sizes 56,400] [--json]
 *
 *   alice ──ov── or1 ──ov── or2 ──ov── or3 ══ outside ══ 203.0.113.80 (circuit padded: tfcpad SIZE on LAYERS)
 *                                                    ╚═ 203.0.113.81 (circuit plain: no tfcpad)
 *
 * Both circuits have the same path (there is only one), the same client, overlay SAs (unpadded,
 * shared) and exit; they differ only in the padding of their telescope SAs. Per repetition, for
 * each circuit (the order alternates): a 10 MiB download (curl), then flood pings (`ping -f`) of
 * each payload size. Around each, the byte and packet counters of every node's bridge-side veth:
 * what went onto the underlay wires. Reported: throughput (MB/s, pings/s), underlay bytes per
 * payload byte, bytes on the client's own link per payload byte, and the mean frame on that link.
 *
 * It brings the lab up with `onionctl lab up` on a private topology file, and always takes it down
 * again (on errors and on SIGINT/SIGTERM too). A benchmark prints; it never asserts.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { parseArgs as parseCliArgs } from 'node:util';
import type { LabHost } from '../src/lab/host.js';
import type { LabNode } from '../src/lab/layout.js';
import type { LabRecord } from '../src/lab/record.js';
import { formatIPv4 } from '../src/net/addr.js';
import { bringUpLab, KERNEL_OPTIONS, KERNEL_USAGE, kernelUpArgs, labTeardown, loadavg, log, nsx, runIfMain, stat, type Stat } from './common.js';

const CIRCUITS = ['padded', 'plain'] as const;
type Circuit = (typeof CIRCUITS)[number];

export function topologyText(size: number, layers: string): string {
  return `# bench/tfc.ts: two circuits over the same mixes, with and without TFC padding
version: 1
hops: 3
crypto: aes-gcm
operators:
  - name: north
  - name: middle
  - name: south
routers:
  - name: or1
    operator: north
    underlay: { interface: eth0, address: 198.51.100.11/24 }
    pool: 100.64.1.0/24
  - name: or2
    operator: middle
    underlay: { interface: eth0, address: 198.51.100.12/24 }
    pool: 100.64.2.0/24
  - name: or3
    operator: south
    underlay: { interface: eth0, address: 198.51.100.13/24 }
    pool: 100.64.3.0/24
    exit:
      interface: eth1
      address: 203.0.113.1/24
      allow:
        - to: 203.0.113.0/24
          proto: tcp
        - to: 203.0.113.0/24
          proto: icmp
clients:
  - name: alice
    underlay: { interface: eth0, address: 198.51.100.10/24 }
    entry: [or1]
links:
  - [or1, or2]
  - [or2, or3]
circuits:
  - name: padded
    client: alice
    to: [203.0.113.80/32]
    tfcpad: { size: ${size}, layers: ${layers} }
  - name: plain
    client: alice
    to: [203.0.113.81/32]
`;
}

// ---------------------------------------------------------------------------------------------
// pure helpers

/** veth counters: "@cnt NAME rx_bytes rx_packets tx_bytes tx_packets" lines -> map */
export interface Counters {
  rxBytes: number;
  rxPackets: number;
  txBytes: number;
  txPackets: number;
}

export function parseCounters(lines: string[]): Map<string, Counters> {
  const m = new Map<string, Counters>();
  for (const l of lines) {
    const t = l.trim().split(/\s+/);
    if (t[0] !== '@cnt' || t.length !== 6) continue;
    m.set(t[1]!, { rxBytes: Number(t[2]), rxPackets: Number(t[3]), txBytes: Number(t[4]), txPackets: Number(t[5]) });
  }
  return m;
}

/** `ping -q` summary: transmitted, received, time (ms) */
export function parsePing(text: string): { sent: number; received: number; ms: number } | undefined {
  const m = /(\d+) packets transmitted, (\d+) received.*time (\d+)ms/.exec(text);
  return m ? { sent: Number(m[1]), received: Number(m[2]), ms: Number(m[3]) } : undefined;
}

const f = (x: number, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '-');

// ---------------------------------------------------------------------------------------------

interface Args {
  size: number;
  layers: string;
  reps: number;
  pings: number;
  pingSizes: number[];
  json: boolean;
  /** `onionctl lab up` arguments: the lab kernel */
  upArgs: string[];
}

export function parseArgs(argv: string[]): Args {
  const { values: v } = parseCliArgs({
    args: argv,
    strict: true,
    options: {
      size: { type: 'string', default: '512' },
      layers: { type: 'string', default: '3' },
      reps: { type: 'string', default: '5' },
      pings: { type: 'string', default: '500' },
      'ping-sizes': { type: 'string', default: '56,400' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
      ...KERNEL_OPTIONS,
    },
  });
  if (v.help) {
    process.stdout.write(
      `usage: node dist/bench/tfc.js [--size 512] [--layers 3|1,2|telescope|overlay|all] [--reps 5] [--pings 500] [--ping-sizes 56,400] ${KERNEL_USAGE} [--json]\n` +
        'Needs root, user-mode-linux (or a kernel with ESP), curl, ping, python3. See docs/bench-tfc.md.\n',
    );
    process.exit(0);
  }
  const a: Args = {
    size: Number(v.size),
    layers: /^[0-9,]+$/.test(v.layers) ? `[${v.layers}]` : v.layers,
    reps: Number(v.reps),
    pings: Number(v.pings),
    pingSizes: v['ping-sizes'].split(',').map(Number),
    json: v.json,
    upArgs: kernelUpArgs(v),
  };
  if (!(a.reps >= 1) || !(a.pings >= 1) || !(a.size >= 64) || a.pingSizes.some((s) => !(s >= 0 && s <= 1400))) throw new Error('bad --reps, --pings, --size or --ping-sizes');
  return a;
}

interface Lab {
  /** the guest's uname -r */
  kernel: string;
  rec: LabRecord;
  host: LabHost;
  client: LabNode;
  nodes: LabNode[];
  servers: Record<Circuit, string>;
}

/** one measurement of one circuit: the download, then the pings of each size */
interface Sample {
  circuit: Circuit;
  bulk: { bytes: number; seconds: number; underlay: number; clientLink: number; clientFrames: number };
  pings: { size: number; sent: number; received: number; seconds: number; underlay: number; clientLink: number; clientFrames: number }[];
}

function counterScript(l: Lab): string {
  // every node's bridge-side veth: rx = what the node put on the wire, tx = what it was sent
  return l.nodes.map((n) => `echo "@cnt ${n.name} $(cat /sys/class/net/${n.underlay.hostVeth}/statistics/rx_bytes /sys/class/net/${n.underlay.hostVeth}/statistics/rx_packets /sys/class/net/${n.underlay.hostVeth}/statistics/tx_bytes /sys/class/net/${n.underlay.hostVeth}/statistics/tx_packets | tr '\\n' ' ')"`).join('\n');
}

async function measure(l: Lab, c: Circuit, a: Args): Promise<Sample> {
  const srv = l.servers[c];
  const cnt = counterScript(l);
  const lines = [
    'echo @mark start',
    cnt,
    `echo "@bulk $(${nsx(l.client.ns, `curl -sS -o /dev/null --max-time 600 -w '%{size_download} %{time_total} %{http_code}' http://${srv}/10M.bin`)})"`,
    'echo @mark bulk',
    cnt,
  ];
  for (const s of a.pingSizes) {
    lines.push(`${nsx(l.client.ns, `ping -n -q -f -c ${a.pings} -s ${s} -w 120 ${srv}`)} | sed 's/^/@ping ${s} /'`, `echo @mark ping-${s}`, cnt);
  }
  const r = await l.host.run(['sh', '-c', lines.join('\n')], { timeoutMs: 900_000 });
  if (r.code !== 0) throw new Error(`measuring ${c} failed (exit ${r.code}): ${r.stderr.trim()}`);
  // split the output at the marks: counters before/after each part
  const parts: { mark: string; counters: Map<string, Counters> }[] = [];
  let cur: string[] = [];
  let mark = '';
  for (const line of r.stdout.split('\n')) {
    if (line.startsWith('@mark ')) {
      if (mark) parts.push({ mark, counters: parseCounters(cur) });
      mark = line.slice(6).trim();
      cur = [];
    } else cur.push(line);
  }
  if (mark) parts.push({ mark, counters: parseCounters(cur) });
  const at = (m: string) => parts.find((p) => p.mark === m)?.counters;
  const wire = (from: Map<string, Counters> | undefined, to: Map<string, Counters> | undefined) => {
    if (!from || !to) throw new Error(`counters missing in the output of ${c}: ${r.stdout.slice(0, 400)}`);
    let underlay = 0;
    for (const [n, x] of to) underlay += x.rxBytes - (from.get(n)?.rxBytes ?? 0);
    const cl = to.get(l.client.name)!;
    const cl0 = from.get(l.client.name)!;
    const frames = cl.rxPackets - cl0.rxPackets + cl.txPackets - cl0.txPackets;
    return { underlay, clientLink: cl.rxBytes - cl0.rxBytes + cl.txBytes - cl0.txBytes, clientFrames: frames };
  };
  const bulk = /@bulk (\d+) ([\d.]+) (\d+)/.exec(r.stdout);
  if (!bulk || bulk[3] !== '200') throw new Error(`the download through ${c} failed: ${r.stdout.match(/@bulk.*/)?.[0] ?? ''} ${r.stderr.trim()}`);
  const sample: Sample = { circuit: c, bulk: { bytes: Number(bulk[1]), seconds: Number(bulk[2]), ...wire(at('start'), at('bulk')) }, pings: [] };
  let prev = 'bulk';
  for (const s of a.pingSizes) {
    const p = parsePing(r.stdout.split('\n').filter((x) => x.startsWith(`@ping ${s} `)).join('\n'));
    if (!p) throw new Error(`ping -s ${s} through ${c} printed no summary: ${r.stderr.trim()}`);
    sample.pings.push({ size: s, sent: p.sent, received: p.received, seconds: p.ms / 1000, ...wire(at(prev), at(`ping-${s}`)) });
    prev = `ping-${s}`;
  }
  return sample;
}

interface Row {
  workload: string;
  metric: string;
  padded: Stat;
  plain: Stat;
}

function summarize(samples: Sample[], a: Args): Row[] {
  const by = (c: Circuit) => samples.filter((s) => s.circuit === c);
  const rows: Row[] = [];
  const row = (workload: string, metric: string, fn: (s: Sample) => number) => rows.push({ workload, metric, padded: stat(by('padded').map(fn)), plain: stat(by('plain').map(fn)) });
  row('download 10 MiB', 'throughput, MB/s', (s) => s.bulk.bytes / s.bulk.seconds / 1e6);
  row('download 10 MiB', 'underlay bytes per payload byte', (s) => s.bulk.underlay / s.bulk.bytes);
  row('download 10 MiB', "client link bytes per payload byte", (s) => s.bulk.clientLink / s.bulk.bytes);
  row('download 10 MiB', 'client link mean frame, bytes', (s) => s.bulk.clientLink / s.bulk.clientFrames);
  a.pingSizes.forEach((size, i) => {
    const w = `ping -f, ${size} B payload`;
    // payload: the ICMP data of every request and every reply
    const payload = (s: Sample) => 2 * size * s.pings[i]!.received;
    row(w, 'rate, pings/s', (s) => s.pings[i]!.received / s.pings[i]!.seconds);
    row(w, 'underlay bytes per payload byte', (s) => (size > 0 ? s.pings[i]!.underlay / payload(s) : NaN));
    row(w, 'client link bytes per payload byte', (s) => (size > 0 ? s.pings[i]!.clientLink / payload(s) : NaN));
    row(w, 'client link mean frame, bytes', (s) => s.pings[i]!.clientLink / s.pings[i]!.clientFrames);
  });
  return rows;
}

function formatTable(rows: Row[], a: Args, samples: Sample[], lab: Lab, load: { start: string; end: string }): string {
  const out: string[] = [];
  out.push(`TFC padding cost: circuit padded (tfcpad ${a.size} on layers ${a.layers}) against circuit plain, same client, mixes and exit`);
  out.push(`lab ${lab.rec.id} (${lab.rec.mode}, kernel ${lab.kernel}), ${a.reps} repetitions interleaved, ${a.pings} pings per size; load average ${load.start} -> ${load.end}`);
  out.push('medians (min/max); ratio = padded / plain of the medians');
  out.push('');
  const w = [28, 36, 24, 24, 7];
  const cell = (s: Stat, d: number) => (s.n === 0 ? '-' : `${f(s.median, d)} (${f(s.min, d)}/${f(s.max, d)})`);
  out.push(['workload'.padEnd(w[0]!), 'metric'.padEnd(w[1]!), 'padded'.padEnd(w[2]!), 'plain'.padEnd(w[3]!), 'ratio'].join(' '));
  let last = '';
  for (const r of rows) {
    const d = r.metric.includes('mean frame') ? 0 : r.metric.includes('pings/s') ? 0 : 3;
    out.push([(r.workload === last ? '' : r.workload).padEnd(w[0]!), r.metric.padEnd(w[1]!), cell(r.padded, d).padEnd(w[2]!), cell(r.plain, d).padEnd(w[3]!), f(r.padded.median / r.plain.median, 3)].join(' '));
    last = r.workload;
  }
  const lost = samples.flatMap((s) => s.pings.map((p) => p.sent - p.received)).reduce((x, y) => x + y, 0);
  out.push('');
  out.push(`pings lost in all: ${lost}`);
  return out.join('\n') + '\n';
}

async function main(): Promise<number> {
  const a = parseArgs(process.argv.slice(2));
  if (process.getuid && process.getuid() !== 0) throw new Error('the lab needs root');
  const load0 = await loadavg();
  const tmp = await fs.mkdtemp('/var/tmp/onionctl-tfcbench-');
  const topo = path.join(tmp, 'tfc.yaml');
  await fs.writeFile(topo, topologyText(a.size, a.layers));

  const { down, stopping, dispose } = labTeardown(topo, tmp);

  try {
    log(`bringing up a lab: two circuits, padded (tfcpad ${a.size} on layers ${a.layers}) and plain (${topo})`);
    const { rec, host } = await bringUpLab(topo, a.upArgs, stopping);
    const servers = Object.fromEntries(rec.layout.servers.map((s) => [s.circuit, formatIPv4(s.iface.addr)])) as Record<Circuit, string>;
    for (const c of CIRCUITS) if (!servers[c]) throw new Error(`the lab has no server for circuit ${c}`);
    const client = rec.layout.nodes.find((n) => n.name === 'alice')!;
    const kernel = (await host.run(['uname', '-r'])).stdout.trim();
    const lab: Lab = { rec, host, client, nodes: rec.layout.nodes, servers, kernel };

    // warm-up: one fetch and a few pings per circuit (ARP, conntrack, page cache), checked
    for (const c of CIRCUITS) {
      const r = await host.run(['sh', '-c', `${nsx(client.ns, `ping -n -q -c 3 -w 30 ${servers[c]}`)} >/dev/null; ${nsx(client.ns, `curl -sS --max-time 120 -o /dev/null -w '%{http_code}' http://${servers[c]}/obj0.bin`)}`], { timeoutMs: 300_000 });
      if (r.stdout.trim() !== '200') throw new Error(`warm-up through circuit ${c} failed: ${r.stdout} ${r.stderr}`);
    }

    const samples: Sample[] = [];
    for (let i = 0; i < a.reps; i++) {
      const order: Circuit[] = i % 2 === 0 ? ['padded', 'plain'] : ['plain', 'padded'];
      for (const c of order) {
        if (stopping()) return 1;
        const s = await measure(lab, c, a);
        samples.push(s);
        log(
          `rep ${i + 1}/${a.reps} ${c.padEnd(6)}: 10 MiB at ${f(s.bulk.bytes / s.bulk.seconds / 1e6)} MB/s, ${f(s.bulk.underlay / s.bulk.bytes, 3)} underlay B/B; ` +
            s.pings.map((p) => `ping ${p.size} B: ${f(p.received / p.seconds, 0)}/s, frame ${f(p.clientLink / p.clientFrames, 0)} B`).join('; '),
        );
      }
    }
    const rows = summarize(samples, a);
    const load = { start: load0, end: await loadavg() };
    if (a.json) process.stdout.write(JSON.stringify({ size: a.size, layers: a.layers, reps: a.reps, pings: a.pings, pingSizes: a.pingSizes, load, rows, samples }, null, 2) + '\n');
    else process.stdout.write(formatTable(rows, a, samples, lab, load));
    return 0;
  } finally {
    await down();
    dispose();
  }
}

// not when imported (e.g. by a test of the pure helpers)
runIfMain(import.meta.url, 'tfc', main);
