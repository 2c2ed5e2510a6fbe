/**
 * The data plane of one circuit against plain routing through the same routers, in one lab run
 * (issue point 8). See docs/bench-dataplane.md.
 *
 *   npm run bench:dataplane
 *   node dist/bench/dataplane.js [--topology examples/three-mixes.yaml] [--reps 10] [--pings 20]
 *       [--connections keep-alive|close] [--offloads off|on] [--json]
 *
 * It brings a lab up with `onionctl lab up` (on a private copy of the topology, so that it never
 * collides with a lab somebody else has up for the same file), adds benchmark scaffolding through
 * `ip -batch` / `iptables-restore` scripts run in the lab's namespaces (never onionctl config),
 * measures, and always tears the lab down again with `onionctl lab down`, on error and on
 * SIGINT/SIGTERM too.
 *
 * Four paths from the circuit's client to its server, all through the circuit's own routers:
 *   circuit   the onion circuit: k telescope layers inside the overlay to the entry; exit SNAT
 *   direct    plain routing, no IPsec: client -> hop 1 -> ... -> hop k -> SNAT -> a second
 *             address of the server (not a circuit destination, so no onionctl policy sees it)
 *   ceiling   one tunnel-mode ESP SA pair (the circuit's cipher, fresh CSPRNG keys fed on stdin
 *             to `ip -batch -`) from the client to an HTTP server in the entry's namespace
 *   onelayer  the same SA pair to the entry, then the direct path (one layer through the routers)
 * and, interleaved per repetition: a 9-object page, a 20 MiB transfer (with the first link's
 * counters around it), and pings.
 *
 * A benchmark prints; it never asserts.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { parseArgs as parseCliArgs } from 'node:util';
import { PROFILES, innerMtu } from '../src/keys/profiles.js';
import { formatIPv4 } from '../src/net/addr.js';
import { startCapture, type Packet } from '../src/lab/capture.js';
import { parseXfrmStats } from '../src/lab/check.js';
import { inNs, script, type LabHost } from '../src/lab/host.js';
import type { LabNode } from '../src/lab/layout.js';
import type { LabRecord } from '../src/lab/record.js';
import { labStatePath, loadLabNet } from '../src/lab/run.js';
import { loadState } from '../src/store/files.js';
import { bringUpLab, KERNEL_OPTIONS, KERNEL_USAGE, kernelUpArgs, labTeardown, loadavg, log, nsx, runIfMain, stat, type Stat } from './common.js';

// ---------------------------------------------------------------------------------------------
// benchmark addresses (lab-safe) and xfrm identifiers (outside onionctl's 0x4f000000 range)

/** the server's second address: the direct and one-layer paths go here */
export const DIRECT_DST = '203.0.113.90';
/** the client's inner address for the one-SA paths, and the HTTP server in the entry */
const CEIL_SRC = '192.0.2.10';
const CEIL_DST = '192.0.2.11';
export const HTTP_PORT = 443; // the example exit allows tcp 80 and 443; 80 is the lab's HTTP/1.0 server
const SPI_OUT = 0x0dbe0001; // client -> entry
const SPI_IN = 0x0dbe0002; // entry -> client
const REQID_OUT = 0x0dbe0001;
const REQID_IN = 0x0dbe0002;
const TABLE = 4242; // policy-routing table for the replies of the benchmark paths
const PRIORITY = 100; // xfrm policy priority of the benchmark's policies
export const OBJECTS = 9;
export const BIG = '20M.bin';

const PATHS = ['circuit', 'direct', 'ceiling', 'onelayer'] as const;
type PathKey = (typeof PATHS)[number];

// ---------------------------------------------------------------------------------------------
// pure helpers (statistics, parsing, formatting)

/** "time=0.43 ms" values of a ping run. */
export function parsePingRtts(text: string): number[] {
  return [...text.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
}

/** Sections of a measurement script's output: "@tag a b" ... "@rc N". */
export interface Section {
  tag: string;
  args: string[];
  lines: string[];
  rc: number;
}

export function parseSections(text: string): Section[] {
  const out: Section[] = [];
  let cur: Section | undefined;
  for (const line of text.split('\n')) {
    if (line.startsWith('@rc ')) {
      if (cur) cur.rc = Number(line.slice(4));
      cur = undefined;
    } else if (line.startsWith('@')) {
      const [tag, ...args] = line.slice(1).trim().split(/\s+/);
      cur = { tag: tag!, args, lines: [], rc: -1 };
      out.push(cur);
    } else if (cur && line.trim() !== '') cur.lines.push(line);
  }
  return out;
}

/** Counters of iptables rules carrying a "dpbench ..." comment, from `iptables -nvxL FORWARD`. */
export function parseRuleCounters(text: string): Map<string, { packets: number; bytes: number }> {
  const out = new Map<string, { packets: number; bytes: number }>();
  for (const line of text.split('\n')) {
    const m = /^\s*(\d+)\s+(\d+)\s.*\/\* (dpbench [^*]+?) \*\//.exec(line);
    if (m) out.set(m[3]!, { packets: Number(m[1]), bytes: Number(m[2]) });
  }
  return out;
}

const hex32 = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;
const f = (x: number, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const fs3 = (s: Stat, d = 2) => (s.n === 0 ? '-' : `${f(s.median, d)} (${f(s.min, d)}/${f(s.max, d)})`);

// ---------------------------------------------------------------------------------------------

interface Args {
  topology: string;
  reps: number;
  pings: number;
  connections: 'keep-alive' | 'close';
  /** off: no TSO/GSO super-packets on the lab's veths (gso_max_segs 1), as on a real 1500-byte wire */
  offloads: 'on' | 'off';
  json: boolean;
  /** `onionctl lab up` arguments: the lab kernel */
  upArgs: string[];
}

export function parseArgs(argv: string[]): Args {
  const { values: v } = parseCliArgs({
    args: argv,
    strict: true,
    options: {
      topology: { type: 'string', default: 'examples/three-mixes.yaml' },
      reps: { type: 'string', default: '10' },
      pings: { type: 'string', default: '20' },
      connections: { type: 'string', default: 'keep-alive' },
      offloads: { type: 'string', default: 'off' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
      ...KERNEL_OPTIONS,
    },
  });
  if (v.help) {
    process.stdout.write(
      `usage: node dist/bench/dataplane.js [--topology FILE] [--reps 10] [--pings 20] [--connections keep-alive|close] [--offloads off|on] ${KERNEL_USAGE} [--json]\n` +
        'Needs root, user-mode-linux (or a kernel with ESP), curl, python3, tcpdump. See docs/bench-dataplane.md.\n',
    );
    process.exit(0);
  }
  if (v.connections !== 'keep-alive' && v.connections !== 'close') throw new Error('--connections is keep-alive or close');
  if (v.offloads !== 'on' && v.offloads !== 'off') throw new Error('--offloads is on or off');
  const a: Args = { topology: v.topology, reps: Number(v.reps), pings: Number(v.pings), connections: v.connections, offloads: v.offloads, json: v.json, upArgs: kernelUpArgs(v) };
  if (!(a.reps >= 1) || !(a.pings >= 1)) throw new Error('--reps and --pings must be >= 1');
  return a;
}

/** Everything the measurement needs to know about the lab. */
export interface Bench {
  rec: LabRecord;
  host: LabHost;
  work: string;
  k: number;
  circuit: string;
  client: LabNode;
  hops: LabNode[];
  exit: LabNode;
  serverNs: string;
  dest: string;
  clientReal: string;
  exitOut: string;
  iptables: string;
  www: string;
  urls: Record<PathKey, { base: string; curl: string }>;
  underlayMtu: number;
  ceilMtu: number;
  crypto: string;
  /** the lab kernel (uname -r where the nodes run) */
  kernel: string;
}

export async function describe(rec: LabRecord, host: LabHost): Promise<Bench> {
  const net = await loadLabNet(rec);
  const { state } = await loadState(labStatePath(rec));
  const name = Object.keys(state.circuits)[0];
  if (!name) throw new Error('the lab has no circuit');
  const c = state.circuits[name]!;
  const node = (n: string) => {
    const x = rec.layout.nodes.find((y) => y.name === n);
    if (!x) throw new Error(`no lab node ${n}`);
    return x;
  };
  const client = node(c.client);
  const hops = c.hops.map(node);
  const exit = hops[hops.length - 1]!;
  if (!exit.outside) throw new Error(`exit ${exit.name} has no outside interface in the lab`);
  const server = rec.layout.servers.find((s) => s.circuit === name) ?? rec.layout.servers[0]!;
  const dest = formatIPv4(server.iface.addr);
  // the benchmark's addresses must be free in this lab
  const used = new Set<string>([
    ...rec.layout.nodes.flatMap((n) => [n.underlay.addr, n.mgmt.addr, ...(n.outside ? [n.outside.addr] : [])].map(formatIPv4)),
    ...rec.layout.servers.map((s) => formatIPv4(s.iface.addr)),
    ...Object.values(state.circuits).flatMap((x) => [...x.addrs, ...x.to.map((t) => t.split('/')[0]!)]),
  ]);
  for (const a of [DIRECT_DST, CEIL_SRC, CEIL_DST]) if (used.has(a)) throw new Error(`benchmark address ${a} is in use in this topology`);
  const work = path.join(rec.dir, 'dpbench');
  await fs.mkdir(work, { recursive: true, mode: 0o700 });
  const profile = PROFILES[net.crypto];
  const underlayMtu = client.underlay.mtu;
  const hp = `:${HTTP_PORT}`;
  return {
    rec,
    host,
    work,
    k: c.hops.length,
    circuit: name,
    client,
    hops,
    exit,
    serverNs: server.ns,
    dest,
    clientReal: formatIPv4(client.underlay.addr),
    exitOut: formatIPv4(exit.outside.addr),
    iptables: rec.iptablesRestore.replace(/-restore$/, ''),
    www: host.kind === 'uml' ? '/run/lab/tmp/dpbench-www' : path.join(rec.dir, 'www'),
    urls: {
      circuit: { base: `http://${dest}${hp}`, curl: '' },
      direct: { base: `http://${DIRECT_DST}${hp}`, curl: '' },
      ceiling: { base: `http://${CEIL_DST}${hp}`, curl: '' },
      onelayer: { base: `http://${DIRECT_DST}${hp}`, curl: `--interface ${CEIL_SRC}` },
    },
    underlayMtu,
    ceilMtu: innerMtu(profile, underlayMtu),
    crypto: net.crypto,
    kernel: (await host.run(['uname', '-r'])).stdout.trim(),
  };
}

/** A tiny HTTP/1.1 server (keep-alive, sendfile), the same code in the server and the entry. */
const HTTP_SERVER_PY = `import functools, http.server, sys
class H(http.server.SimpleHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    disable_nagle_algorithm = True
    def log_message(self, *a):
        pass
    def copyfile(self, src, dst):
        self.wfile.flush()
        self.connection.sendfile(src)
class S(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
S((sys.argv[1], int(sys.argv[2])), functools.partial(H, directory=sys.argv[3])).serve_forever()
`;

export async function writeWork(b: Bench, name: string, lines: string[]): Promise<string> {
  const p = path.join(b.work, name);
  await fs.writeFile(p, lines.join('\n') + '\n', { mode: 0o600 });
  return p;
}

/**
 * Routes, addresses, SNAT, counters and sysctls for the direct and one-layer paths, and the HTTP
 * servers; everything through ip -batch / iptables-restore files run in the namespaces.
 */
export async function scaffold(b: Bench, offloads: Args['offloads']): Promise<void> {
  const { client, hops, exit, clientReal, k } = b;
  const qa = 'quickack 1';
  const addr = (n: LabNode) => formatIPv4(n.underlay.addr);
  const lines: string[] = [];
  const ipBatch = async (n: string, ns: string, batch: string[]) => lines.push(`ip -n ${ns} -batch ${await writeWork(b, `${n}.batch`, batch)}`);
  const cm = b.ceilMtu;
  const ceilRoute = `mtu ${cm} advmss ${cm - 40} ${qa}`;
  // veths hand 64 KiB TSO/GSO super-packets through the routers; a real wire carries one
  // frame per packet, so every sender in the lab is limited to one segment per packet
  const gso = (...ifs: string[]) => (offloads === 'off' ? ifs.map((i) => `link set dev ${i} gso_max_segs 1`) : []);

  // client: the direct destination via the entry from its real address; the one-layer source
  // address and its routes (policy routing, so that the one-layer path gets the one-layer MTU)
  await ipBatch('client', client.ns, [
    ...gso(client.underlay.name),
    `route add ${DIRECT_DST}/32 via ${addr(hops[0]!)} dev ${client.underlay.name} src ${clientReal} ${qa}`,
    `address add ${CEIL_SRC}/32 dev lo`,
    `route add ${CEIL_DST}/32 via ${addr(hops[0]!)} dev ${client.underlay.name} src ${CEIL_SRC} ${ceilRoute}`,
    `route add ${DIRECT_DST}/32 via ${addr(hops[0]!)} dev ${client.underlay.name} src ${CEIL_SRC} table ${TABLE} ${ceilRoute}`,
    `rule add from ${CEIL_SRC} lookup ${TABLE} pref ${TABLE}`,
  ]);
  // hops: forward toward the next hop (the exit: out of its outside interface); replies from the
  // direct destination go back hop by hop (policy routing on the source, so that nothing else
  // the routers do changes); the entry also holds the ceiling's HTTP server address
  for (let i = 0; i < k; i++) {
    const h = hops[i]!;
    const batch: string[] = gso(h.underlay.name, ...(h.outside ? [h.outside.name] : []));
    if (i < k - 1) batch.push(`route add ${DIRECT_DST}/32 via ${addr(hops[i + 1]!)} dev ${h.underlay.name} ${qa}`);
    else batch.push(`route add ${DIRECT_DST}/32 dev ${exit.outside!.name} ${qa}`);
    if (i === 0) {
      batch.push(`address add ${CEIL_DST}/32 dev lo`, `route add ${CEIL_SRC}/32 via ${clientReal} dev ${h.underlay.name} ${ceilRoute}`);
    } else {
      const prev = addr(hops[i - 1]!);
      batch.push(
        `route add ${clientReal}/32 via ${prev} dev ${h.underlay.name} table ${TABLE} ${qa}`,
        `route add ${CEIL_SRC}/32 via ${prev} dev ${h.underlay.name} table ${TABLE} ${qa}`,
        `rule add from ${DIRECT_DST} lookup ${TABLE} pref ${TABLE}`,
      );
    }
    await ipBatch(`hop${i + 1}`, h.ns, batch);
  }
  await ipBatch('server', b.serverNs, [...gso('eth0'), `address add ${DIRECT_DST}/32 dev eth0`]);

  // counters (rules without a target: they count and change nothing) and the exit's SNAT
  for (let i = 0; i < k; i++) {
    const h = hops[i]!;
    const rules = ['*filter'];
    for (const [what, src] of [['direct', clientReal], ['onelayer', CEIL_SRC]] as const) {
      rules.push(
        `-I FORWARD 1 -s ${src}/32 -d ${DIRECT_DST}/32 -m comment --comment "dpbench ${what} fwd"`,
        `-I FORWARD 1 -s ${DIRECT_DST}/32 -d ${src}/32 -m comment --comment "dpbench ${what} rev"`,
      );
    }
    rules.push('COMMIT');
    if (h === exit) {
      rules.push('*nat');
      for (const src of [clientReal, CEIL_SRC]) {
        rules.push(`-I POSTROUTING 1 -s ${src}/32 -d ${DIRECT_DST}/32 -o ${exit.outside!.name} -m comment --comment "dpbench SNAT" -j SNAT --to-source ${b.exitOut}`);
      }
      rules.push('COMMIT');
    }
    const file = await writeWork(b, `hop${i + 1}.iptables`, rules);
    lines.push(nsx(h.ns, `${b.rec.iptablesRestore} --noflush ${file}`));
  }

  // no ICMP redirects (the routers forward out of the interface a packet came in on), and no
  // TCP metrics cache at the end points (every transfer starts from the same state)
  const sysctl = (ns: string, kv: string[]) => lines.push(nsx(ns, `sysctl -q -w ${kv.join(' ')}`));
  for (const h of hops) sysctl(h.ns, ['net.ipv4.conf.all.send_redirects=0', `net.ipv4.conf.${h.underlay.name}.send_redirects=0`]);
  sysctl(client.ns, ['net.ipv4.conf.all.accept_redirects=0', `net.ipv4.conf.${client.underlay.name}.accept_redirects=0`, 'net.ipv4.tcp_no_metrics_save=1']);
  sysctl(b.serverNs, ['net.ipv4.tcp_no_metrics_save=1']);
  sysctl(hops[0]!.ns, ['net.ipv4.tcp_no_metrics_save=1']);
  await script(b.host, 'adding the direct path', lines);

  // the same www files on the guest's tmpfs (not hostfs), and one HTTP/1.1 server in the
  // server's namespace (all addresses) and one in the entry's (the ceiling)
  const py = path.join(b.work, 'http11.py');
  await fs.writeFile(py, HTTP_SERVER_PY, { mode: 0o600 });
  const start: string[] = [];
  if (b.host.kind === 'uml') start.push(`mkdir -p ${b.www}`, `cp ${path.join(b.rec.dir, 'www')}/*.bin ${b.www}/`);
  for (const [who, ns, bind] of [['server', b.serverNs, '0.0.0.0'], ['entry', hops[0]!.ns, CEIL_DST]] as const) {
    start.push(
      `setsid ${nsx(ns, `python3 ${py} ${bind} ${HTTP_PORT} ${b.www}`)} >${path.join(b.work, `http-${who}.log`)} 2>&1 </dev/null &`,
      `echo $! > ${path.join(b.rec.dir, `dpbench-http-${who}.pid`)}`, // lab down kills *.pid
    );
  }
  for (const [ns, a] of [[b.serverNs, DIRECT_DST], [hops[0]!.ns, CEIL_DST]] as const) {
    start.push(
      `i=0; until ${nsx(ns, `curl -s -o /dev/null http://${a}:${HTTP_PORT}/obj8.bin`)}; do i=$((i+1)); [ $i -lt 300 ] || { echo "HTTP server ${a} did not start" >&2; exit 1; }; sleep 0.2; done`,
    );
  }
  await script(b.host, 'starting the HTTP/1.1 servers', start, { timeoutMs: 300_000 });
}

/** The ceiling's SA pair, keys from the CSPRNG, on stdin to `ip -batch -` at both ends. */
async function addCeilingSas(b: Bench): Promise<void> {
  const p = PROFILES[b.crypto as keyof typeof PROFILES];
  const show = (x: Buffer) => `0x${x.toString('hex')}`;
  const e = formatIPv4(b.hops[0]!.underlay.addr);
  const c = b.clientReal;
  const hex = hex32;
  const states = [
    `xfrm state add src ${c} dst ${e} proto esp spi ${hex(SPI_OUT)} reqid ${hex(REQID_OUT)} mode tunnel replay-window 32 ${p.algo(randomBytes(p.keyBytes), show)}`,
    `xfrm state add src ${e} dst ${c} proto esp spi ${hex(SPI_IN)} reqid ${hex(REQID_IN)} mode tunnel replay-window 32 ${p.algo(randomBytes(p.keyBytes), show)}`,
  ];
  const tmpl = (dir: 'out' | 'in') =>
    dir === 'out'
      ? `tmpl src ${c} dst ${e} proto esp reqid ${hex(REQID_OUT)} mode tunnel level required`
      : `tmpl src ${e} dst ${c} proto esp reqid ${hex(REQID_IN)} mode tunnel level required`;
  const pol = (src: string, dst: string, dir: string, t: string) => `xfrm policy add src ${src}/32 dst ${dst}/32 dir ${dir} priority ${PRIORITY} ${t}`;
  const clientLines = [
    ...states,
    pol(CEIL_SRC, CEIL_DST, 'out', tmpl('out')),
    pol(CEIL_DST, CEIL_SRC, 'in', tmpl('in')),
    pol(CEIL_SRC, DIRECT_DST, 'out', tmpl('out')),
    pol(DIRECT_DST, CEIL_SRC, 'in', tmpl('in')),
  ];
  const entryLines = [
    ...states,
    pol(CEIL_SRC, CEIL_DST, 'in', tmpl('out')),
    pol(CEIL_DST, CEIL_SRC, 'out', tmpl('in')),
    pol(CEIL_SRC, DIRECT_DST, 'fwd', tmpl('out')),
    pol(DIRECT_DST, CEIL_SRC, 'out', tmpl('in')),
  ];
  for (const [ns, ls] of [[b.client.ns, clientLines], [b.hops[0]!.ns, entryLines]] as const) {
    const r = await b.host.run(inNs(ns, ['ip', '-batch', '-']), { stdin: ls.join('\n') + '\n' });
    // never print the output of a failed batch: it may echo a key
    if (r.code !== 0) throw new Error(`adding the ceiling SAs in ${ns} failed (exit ${r.code})`);
  }
}

function curlPage(b: Bench, p: PathKey, conn: Args['connections']): string {
  const u = b.urls[p];
  const objs = Array.from({ length: OBJECTS }, (_, i) => `-o /dev/null ${u.base}/obj${i}.bin`).join(' ');
  const close = conn === 'close' ? `-H 'Connection: close' ` : '';
  return nsx(b.client.ns, `curl -sS --max-time 120 ${u.curl} ${close}-w '%{time_total} %{num_connects} %{size_download} %{http_code}\\n' ${objs}`);
}

function counters(b: Bench): string {
  const d = `/sys/class/net/${b.client.underlay.hostVeth}/statistics`;
  return `echo "#wire $(cat ${d}/rx_bytes ${d}/tx_bytes ${d}/rx_packets ${d}/tx_packets | tr '\\n' ' ')"`;
}

function curlBig(b: Bench, p: PathKey): string {
  const u = b.urls[p];
  return nsx(b.client.ns, `curl -sS --max-time 600 ${u.curl} -o /dev/null -w '%{time_total} %{size_download} %{http_code}\\n' ${u.base}/${BIG}`);
}

function pingCmd(b: Bench, p: 'circuit' | 'direct', n: number): string {
  const dst = p === 'circuit' ? b.dest : DIRECT_DST;
  return nsx(b.client.ns, `ping -n -c ${n} -i 0.1 -W 2 ${dst}`);
}

interface BigResult {
  seconds: number;
  /** payload bytes (curl's size_download) */
  bytes: number;
  MBps: number;
  /** the client's bridge-side veth: bytes and packets in both directions, and toward the client */
  wireBytes: number;
  wirePackets: number;
  wireDownBytes: number;
  wireDownPackets: number;
  ok: boolean;
}

interface RepResult {
  rep: number;
  order: PathKey[];
  page: Partial<Record<PathKey, { seconds: number; connects: number; bytes: number; ok: boolean }>>;
  big: Partial<Record<PathKey, BigResult>>;
  rtt: Partial<Record<PathKey, { medianMs: number; rtts: number[]; ok: boolean }>>;
}

function section(lines: string[], tag: string, p: PathKey, cmd: string, around?: string): void {
  lines.push(`echo "@${tag} ${p}"`);
  if (around) lines.push(around);
  lines.push(`${cmd}; rc=$?`);
  if (around) lines.push(around);
  lines.push('echo "@rc $rc"');
}

async function runRep(b: Bench, a: Args, rep: number): Promise<RepResult> {
  // alternate which path goes first, so that a drift in load favours neither
  const fwd = rep % 2 === 0;
  const order = (xs: PathKey[]) => (fwd ? xs : [...xs].reverse());
  const lines: string[] = [];
  const pagePaths = order(['circuit', 'direct']);
  const bigPaths = order(['circuit', 'direct', 'ceiling', 'onelayer']);
  const pingPaths = order(['circuit', 'direct']) as ('circuit' | 'direct')[];
  for (const p of pagePaths) section(lines, 'page', p, curlPage(b, p, a.connections));
  for (const p of bigPaths) section(lines, 'big', p, curlBig(b, p), counters(b));
  for (const p of pingPaths) section(lines, 'ping', p, pingCmd(b, p, a.pings));
  const r = await b.host.run(['sh', '-c', lines.join('\n')], { timeoutMs: 1_800_000 });
  const res: RepResult = { rep, order: bigPaths, page: {}, big: {}, rtt: {} };
  for (const s of parseSections(r.stdout)) {
    const p = s.args[0] as PathKey;
    if (s.tag === 'page') {
      const rows = s.lines.map((l) => l.trim().split(/\s+/).map(Number));
      const ok = s.rc === 0 && rows.length === OBJECTS && rows.every((x) => x[3] === 200);
      res.page[p] = {
        seconds: rows.reduce((t, x) => t + (x[0] ?? NaN), 0),
        connects: rows.reduce((t, x) => t + (x[1] ?? 0), 0),
        bytes: rows.reduce((t, x) => t + (x[2] ?? 0), 0),
        ok,
      };
    } else if (s.tag === 'big') {
      const wire = s.lines.filter((l) => l.startsWith('#wire')).map((l) => l.split(/\s+/).slice(1).map(Number));
      const row = s.lines.find((l) => !l.startsWith('#'))?.trim().split(/\s+/).map(Number) ?? [];
      const [secs, bytes, code] = [row[0] ?? NaN, row[1] ?? NaN, row[2]];
      const w0 = wire[0] ?? [];
      const w1 = wire[1] ?? [];
      const d = (i: number) => (w1[i] ?? NaN) - (w0[i] ?? NaN);
      res.big[p] = {
        seconds: secs,
        bytes,
        MBps: bytes / secs / 1e6,
        // rx on the bridge side is what the client sent, tx what it received
        wireBytes: d(0) + d(1),
        wirePackets: d(2) + d(3),
        wireDownBytes: d(1),
        wireDownPackets: d(3),
        ok: s.rc === 0 && code === 200 && bytes === 20 * 1024 * 1024,
      };
    } else if (s.tag === 'ping') {
      const rtts = parsePingRtts(s.lines.join('\n'));
      res.rtt[p] = { medianMs: stat(rtts).median, rtts, ok: rtts.length >= a.pings / 2 };
    }
  }
  if (r.code !== 0 && r.stderr.trim()) log(`  rep ${rep + 1}: ${r.stderr.trim().split('\n').slice(-3).join('; ')}`);
  return res;
}

/** Which ports saw the direct and the one-layer pings, and in which form (one capture each). */
async function pathCheck(b: Bench): Promise<string[]> {
  const ports = new Map<string, string>();
  for (const n of b.rec.layout.nodes) {
    ports.set(n.underlay.hostVeth, `${n.name}:${n.underlay.name}`);
    if (n.outside) ports.set(n.outside.hostVeth, `${n.name}:${n.outside.name}`);
  }
  for (const s of b.rec.layout.servers) ports.set(s.iface.hostVeth, `server:${s.iface.name}`);
  const spis = [SPI_OUT, SPI_IN].map(hex32);
  const out: string[] = [];
  for (const [what, src, extra] of [['direct', b.clientReal, ''], ['one-layer', CEIL_SRC, `-I ${CEIL_SRC} `]] as const) {
    const cap = await startCapture(b.host, b.work, `pathcheck-${what}`);
    const r = await b.host.run(inNs(b.client.ns, ['sh', '-c', `ping -n -c 3 -i 0.2 -W 2 ${extra}${DIRECT_DST}`]));
    const pkts = await cap.stop();
    const seen = new Map<string, number>();
    const mine = (p: Packet) =>
      (p.proto === 'icmp' && [p.src, p.dst].some((x) => x === src || x === DIRECT_DST)) || (p.proto === 'esp' && p.spi !== undefined && spis.includes(p.spi));
    for (const p of pkts.filter(mine)) {
      const key = `${(ports.get(p.iface) ?? p.iface).padEnd(10)} ${p.src} > ${p.dst} ${p.proto}${p.spi ? ` ${p.spi}` : ''}`;
      seen.set(key, (seen.get(key) ?? 0) + 1);
    }
    out.push(`${what} ping from ${src}: ${/(\d+) received/.exec(r.stdout)?.[1] ?? 0}/3 replies; on the wire (port, packet, count):`);
    out.push(...[...seen.entries()].map(([key, n]) => `  ${key} x${n}`));
  }
  return out;
}

interface Counter {
  packets: number;
  bytes: number;
}

async function readCounters(b: Bench): Promise<{ rules: Record<string, Record<string, Counter>>; sas: Record<string, Counter>; xfrmErrors: Record<string, string[]> }> {
  const rules: Record<string, Record<string, Counter>> = {};
  const lines: string[] = [];
  for (const h of b.hops) lines.push(`echo "@rules ${h.name}"`, `${nsx(h.ns, `${b.iptables} -nvxL FORWARD`)}; echo "@rc $?"`);
  for (const n of [b.client, ...b.hops]) lines.push(`echo "@xstat ${n.name}"`, `${nsx(n.ns, 'cat /proc/net/xfrm_stat')}; echo "@rc $?"`);
  const r = await b.host.run(['sh', '-c', lines.join('\n')]);
  const xfrmErrors: Record<string, string[]> = {};
  for (const s of parseSections(r.stdout)) {
    if (s.tag === 'rules') rules[s.args[0]!] = Object.fromEntries(parseRuleCounters(s.lines.join('\n')));
    if (s.tag === 'xstat') {
      const rows = s.lines.map((l) => l.trim().split(/\s+/));
      xfrmErrors[s.args[0]!] = rows.filter((x) => Number(x[1]) > 0).map((x) => `${x[0]} ${x[1]}`);
    }
  }
  // the SA counters: `ip -s xfrm state` prints keys, so it is parsed here and never shown
  const st = parseXfrmStats((await b.host.run(inNs(b.client.ns, ['ip', '-s', 'xfrm', 'state']))).stdout);
  const none = { packets: 0, bytes: 0 };
  const sas = { [`${hex32(SPI_OUT)} client->entry`]: st.get(SPI_OUT) ?? none, [`${hex32(SPI_IN)} entry->client`]: st.get(SPI_IN) ?? none };
  return { rules, sas, xfrmErrors };
}

// ---------------------------------------------------------------------------------------------

interface Summary {
  page: Record<'circuit' | 'direct', Stat>;
  pageConnects: Record<'circuit' | 'direct', number>;
  bigMBps: Record<PathKey, Stat>;
  bigSeconds: Record<PathKey, Stat>;
  rttMs: Record<'circuit' | 'direct', Stat>;
  /** wire bytes on the client's link per payload byte: both directions (Ethernet, IP), and toward the client only (IP) */
  wire: Record<PathKey, { ethPerPayload: Stat; ipPerPayload: Stat; ipDownPerPayload: Stat }>;
  ratios: {
    pageTime: Stat;
    bigTime: Stat;
    bigThroughput: Stat;
    rtt: Stat;
    circuitVsCeilingShare: Stat;
    circuitVsOnelayerShare: Stat;
    circuitVsOneCpuBound: Stat;
    /** best runs only (highest throughput of each path): contention on a shared host only ever slows a run down */
    bestCircuitVsCeilingShare: number;
    bestCircuitVsDirect: number;
  };
  /** host load average (1 min) at the start and at the end */
  load?: { start: string; end: string };
}

function summarize(reps: RepResult[], k: number): Summary {
  const ok = <T extends { ok: boolean }>(x: T | undefined): T | undefined => (x && x.ok ? x : undefined);
  const col = <T>(get: (r: RepResult) => T | undefined, val: (t: T) => number) => reps.map((r) => get(r)).filter((x): x is T => x !== undefined).map(val);
  const paired = (num: (r: RepResult) => number | undefined, den: (r: RepResult) => number | undefined) =>
    stat(reps.map((r) => { const a = num(r); const d = den(r); return a !== undefined && d !== undefined ? a / d : NaN; }));
  const bigMBps = {} as Record<PathKey, Stat>;
  const bigSeconds = {} as Record<PathKey, Stat>;
  const wire = {} as Summary['wire'];
  for (const p of PATHS) {
    bigMBps[p] = stat(col((r) => ok(r.big[p]), (x) => x.MBps));
    bigSeconds[p] = stat(col((r) => ok(r.big[p]), (x) => x.seconds));
    wire[p] = {
      ethPerPayload: stat(col((r) => ok(r.big[p]), (x) => x.wireBytes / x.bytes)),
      ipPerPayload: stat(col((r) => ok(r.big[p]), (x) => (x.wireBytes - 14 * x.wirePackets) / x.bytes)),
      ipDownPerPayload: stat(col((r) => ok(r.big[p]), (x) => (x.wireDownBytes - 14 * x.wireDownPackets) / x.bytes)),
    };
  }
  const layers = k + 1;
  // in one single-CPU guest every node's crypto shares the CPU: per data packet of a download the
  // exit encrypts 2 layers, each middle mix decrypts 1 and encrypts 2, the client decrypts k+1:
  // 4k passes, against 2 (one encryption, one decryption) for the ceiling
  const passes = 4 * k;
  const mb = (p: PathKey) => (r: RepResult) => ok(r.big[p])?.MBps;
  return {
    page: { circuit: stat(col((r) => ok(r.page.circuit), (x) => x.seconds)), direct: stat(col((r) => ok(r.page.direct), (x) => x.seconds)) },
    pageConnects: { circuit: stat(col((r) => r.page.circuit, (x) => x.connects)).median, direct: stat(col((r) => r.page.direct, (x) => x.connects)).median },
    bigMBps,
    bigSeconds,
    rttMs: { circuit: stat(col((r) => ok(r.rtt.circuit), (x) => x.medianMs)), direct: stat(col((r) => ok(r.rtt.direct), (x) => x.medianMs)) },
    wire,
    ratios: {
      pageTime: paired((r) => ok(r.page.circuit)?.seconds, (r) => ok(r.page.direct)?.seconds),
      bigTime: paired((r) => ok(r.big.circuit)?.seconds, (r) => ok(r.big.direct)?.seconds),
      bigThroughput: paired(mb('circuit'), mb('direct')),
      rtt: paired((r) => ok(r.rtt.circuit)?.medianMs, (r) => ok(r.rtt.direct)?.medianMs),
      circuitVsCeilingShare: paired(mb('circuit'), (r) => { const c = mb('ceiling')(r); return c === undefined ? undefined : c / layers; }),
      circuitVsOnelayerShare: paired(mb('circuit'), (r) => { const c = mb('onelayer')(r); return c === undefined ? undefined : c / layers; }),
      circuitVsOneCpuBound: paired(mb('circuit'), (r) => { const c = mb('ceiling')(r); return c === undefined ? undefined : (c * 2) / passes; }),
      bestCircuitVsCeilingShare: bigMBps.circuit.max / (bigMBps.ceiling.max / layers),
      bestCircuitVsDirect: bigMBps.circuit.max / bigMBps.direct.max,
    },
  };
}

function formatTable(b: Bench, a: Args, s: Summary, reps: RepResult[], checks: string[]): string {
  const k = b.k;
  const L = k + 1;
  const path = [b.client.name, ...b.hops.map((h) => h.name)].join(' -> ');
  const pageBytes = reps.find((r) => r.page.circuit?.ok)?.page.circuit?.bytes ?? NaN;
  const out: string[] = [];
  out.push(`dataplane benchmark: ${a.topology}, circuit ${b.circuit} ${path} -> ${b.dest} (k=${k}, ${L} ESP layers at the client, ${b.crypto}); kernel ${b.kernel}`);
  out.push(`direct path: ${path} -> SNAT -> ${DIRECT_DST} (same server process), plain routing; ${a.reps} repetitions, interleaved`);
  out.push(
    a.offloads === 'off'
      ? 'offloads: off (gso_max_segs 1 on every lab veth: one packet per frame, as on a real 1500-byte wire)'
      : 'offloads: on (the lab\'s default: 64 KiB TSO/GSO super-packets cross the veths unsegmented where no ESP is applied)',
  );
  if (s.load) out.push(`host load average (1 min): ${s.load.start} at the start, ${s.load.end} at the end (a shared 2-core machine)`);
  out.push('NOTE: User-Mode Linux guest: one CPU shared by every node, software-only AES (generic C, no AES-NI).');
  out.push('      Absolute numbers mean little; only the ratios count.');
  out.push('');
  const w = (x: string, n: number) => x.padEnd(n);
  out.push(`${w('metric: median (min/max)', 40)}${w('circuit', 24)}${w('direct', 24)}circuit/direct (paired)`);
  out.push(`${w(`page: ${OBJECTS} objects, ${f(pageBytes / 1e6, 2)} MB, s`, 40)}${w(fs3(s.page.circuit, 3), 24)}${w(fs3(s.page.direct, 3), 24)}${fs3(s.ratios.pageTime)} x time`);
  out.push(`${w(`20 MiB transfer, MB/s`, 40)}${w(fs3(s.bigMBps.circuit), 24)}${w(fs3(s.bigMBps.direct), 24)}${fs3(s.ratios.bigThroughput)} x throughput`);
  out.push(`${w(`20 MiB transfer, s`, 40)}${w(fs3(s.bigSeconds.circuit), 24)}${w(fs3(s.bigSeconds.direct), 24)}${fs3(s.ratios.bigTime)} x time`);
  out.push(`${w(`RTT (ping x${a.pings}, median per run), ms`, 40)}${w(fs3(s.rttMs.circuit, 3), 24)}${w(fs3(s.rttMs.direct, 3), 24)}${fs3(s.ratios.rtt)} x`);
  out.push(`${w('wire/payload, first link, Ethernet', 40)}${w(fs3(s.wire.circuit.ethPerPayload, 3), 24)}${w(fs3(s.wire.direct.ethPerPayload, 3), 24)}`);
  out.push(`${w('wire/payload, first link, IP', 40)}${w(fs3(s.wire.circuit.ipPerPayload, 3), 24)}${w(fs3(s.wire.direct.ipPerPayload, 3), 24)}`);
  out.push(`${w('  toward the client only (data), IP', 40)}${w(fs3(s.wire.circuit.ipDownPerPayload, 3), 24)}${w(fs3(s.wire.direct.ipDownPerPayload, 3), 24)}`);
  out.push(
    `  page fetch: one curl, ${OBJECTS} URLs one after another, ${a.connections === 'keep-alive' ? 'HTTP/1.1 keep-alive' : "'Connection: close' (a new connection per object)"}; ` +
      `TCP connections per page: circuit ${s.pageConnects.circuit}, direct ${s.pageConnects.direct}`,
  );
  out.push(
    `  byte overhead on ${b.client.name}<->${b.hops[0]!.name} during a 20 MiB download (both directions, ACKs included): ` +
      `circuit +${f((s.wire.circuit.ipPerPayload.median - 1) * 100, 1)}% IP bytes, direct +${f((s.wire.direct.ipPerPayload.median - 1) * 100, 1)}%`,
  );
  out.push('');
  out.push(`crypto ceiling: one ESP SA pair ${b.client.name}<->${b.hops[0]!.name} (${b.crypto}, 20 MiB)`);
  out.push(`${w('MB/s: median (min/max)', 40)}${w('measured', 24)}${w(`/ ${L} layers`, 24)}wire/payload, IP`);
  for (const [p, label] of [['ceiling', `server in ${b.hops[0]!.name}'s namespace`], ['onelayer', 'one layer, then the direct path']] as const) {
    out.push(`${w(`  ${label}`, 40)}${w(fs3(s.bigMBps[p]), 24)}${w(f(s.bigMBps[p].median / L), 24)}${fs3(s.wire[p].ipPerPayload, 3)}`);
  }
  out.push(`${w(`circuit / (ceiling/${L})`, 40)}${w(fs3(s.ratios.circuitVsCeilingShare), 24)}paired; target >= 0.8`);
  out.push(`${w(`circuit / (one layer via routers/${L})`, 40)}${fs3(s.ratios.circuitVsOnelayerShare)}`);
  out.push(
    `${w(`circuit / (ceiling x 2/${4 * k})`, 40)}${w(fs3(s.ratios.circuitVsOneCpuBound), 24)}one CPU does all ${4 * k} AES-GCM passes of a circuit ` +
      `download (exit 2, each middle mix 3, client ${L}); the ceiling does 2`,
  );
  out.push(
    `best runs only: circuit ${f(s.bigMBps.circuit.max)} MB/s, ceiling ${f(s.bigMBps.ceiling.max)} MB/s, circuit / (ceiling/${L}) = ` +
      `${f(s.ratios.bestCircuitVsCeilingShare)}; circuit/direct throughput ${f(s.ratios.bestCircuitVsDirect)}`,
  );
  out.push('');
  out.push('checks (the direct path is plain and takes the circuit\'s routers):');
  out.push(...checks.map((c) => `  ${c}`));
  const bad = reps.flatMap((r) => [
    ...Object.entries(r.page).filter(([, x]) => !x!.ok).map(([p]) => `rep ${r.rep + 1} page ${p}`),
    ...Object.entries(r.big).filter(([, x]) => !x!.ok).map(([p]) => `rep ${r.rep + 1} 20 MiB ${p}`),
    ...Object.entries(r.rtt).filter(([, x]) => !x!.ok).map(([p]) => `rep ${r.rep + 1} ping ${p}`),
  ]);
  if (bad.length > 0) out.push(`  failed runs (left out of the statistics): ${bad.join(', ')}`);
  return out.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const a = parseArgs(process.argv.slice(2));
  const load0 = await loadavg();
  if (process.getuid && process.getuid() !== 0) throw new Error('the lab needs root');
  const src = path.resolve(a.topology);
  await fs.access(src);
  // a private copy: the lab's pointer is keyed by the topology's path
  const tmp = await fs.mkdtemp('/var/tmp/onionctl-dpbench-');
  const topo = path.join(tmp, path.basename(src));
  await fs.copyFile(src, topo);

  const { down, stopping, dispose } = labTeardown(topo, tmp);

  try {
    log(`bringing up a lab for ${a.topology} (copy: ${topo})`);
    const { rec, host } = await bringUpLab(topo, a.upArgs, stopping);
    const b = await describe(rec, host);
    log(`lab ${rec.id}: circuit ${b.circuit} ${b.client.name} -> ${b.hops.map((h) => h.name).join(' -> ')} -> ${b.dest}; adding the direct path and the ceiling SAs`);
    await scaffold(b, a.offloads);
    await addCeilingSas(b);

    // one warm-up fetch per path (ARP, conntrack, page cache), checked
    const warm = PATHS.map((p) => `echo "@warm ${p}"; ${nsx(b.client.ns, `curl -sS --max-time 60 ${b.urls[p].curl} -o /dev/null -w '%{size_download} %{http_code}\\n' ${b.urls[p].base}/obj0.bin`)}; echo "@rc $?"`);
    const wr = await host.run(['sh', '-c', warm.join('\n')], { timeoutMs: 300_000 });
    for (const s of parseSections(wr.stdout)) {
      if (s.rc !== 0 || !/ 200$/.test(s.lines[0] ?? '')) throw new Error(`warm-up fetch over ${s.args[0]} failed: ${(s.lines[0] ?? '').trim()} ${wr.stderr.trim()}`);
    }
    const checks = await pathCheck(b);
    for (const c of checks) log(c);

    const reps: RepResult[] = [];
    for (let i = 0; i < a.reps; i++) {
      if (stopping()) return 1;
      const r = await runRep(b, a, i);
      reps.push(r);
      log(
        `rep ${i + 1}/${a.reps}: page C ${f(r.page.circuit?.seconds ?? NaN, 3)} s D ${f(r.page.direct?.seconds ?? NaN, 3)} s; ` +
          `20MiB MB/s C ${f(r.big.circuit?.MBps ?? NaN)} D ${f(r.big.direct?.MBps ?? NaN)} ceil ${f(r.big.ceiling?.MBps ?? NaN)} 1layer ${f(r.big.onelayer?.MBps ?? NaN)}; ` +
          `RTT C ${f(r.rtt.circuit?.medianMs ?? NaN, 3)} D ${f(r.rtt.direct?.medianMs ?? NaN, 3)} ms`,
      );
    }

    const cnt = await readCounters(b);
    const pol = await host.run(inNs(b.client.ns, ['ip', 'xfrm', 'policy', 'list', 'action', 'block']));
    const blocked = [...pol.stdout.matchAll(/^src (\S+) dst (\S+)/gm)].map((m) => m[2]!);
    checks.push(`${b.client.name}'s block policies cover ${blocked.join(', ') || 'nothing'}; the direct destination ${DIRECT_DST} is ${blocked.some((x) => x === `${DIRECT_DST}/32`) ? 'COVERED' : 'not covered'}`);
    const sumBig = (p: PathKey) => reps.reduce((t, r) => t + (r.big[p]?.wirePackets ?? 0), 0);
    for (const h of b.hops) {
      const r = cnt.rules[h.name] ?? {};
      const g = (x: string) => r[`dpbench ${x}`]?.packets ?? 0;
      checks.push(`${h.name} forwarded direct ${g('direct fwd')}/${g('direct rev')} packets (fwd/rev), one-layer ${g('onelayer fwd')}/${g('onelayer rev')} (iptables counters)`);
    }
    checks.push(`client wire packets during the 20 MiB transfers: direct ${sumBig('direct')}, one-layer ${sumBig('onelayer')}, circuit ${sumBig('circuit')}`);
    for (const [k, v] of Object.entries(cnt.sas)) checks.push(`ceiling SA ${k}: ${v.packets} packets, ${v.bytes} bytes`);
    const errs = Object.entries(cnt.xfrmErrors).filter(([, e]) => e.length > 0);
    checks.push(
      errs.length === 0
        ? `/proc/net/xfrm_stat: every error counter 0 on ${Object.keys(cnt.xfrmErrors).join(', ')}`
        : `/proc/net/xfrm_stat: ${errs.map(([n, e]) => `${n}: ${e.join(', ')}`).join('; ')}`,
    );

    const s = summarize(reps, b.k);
    s.load = { start: load0, end: await loadavg() };
    if (a.json) process.stdout.write(JSON.stringify({ topology: a.topology, kernel: b.kernel, circuit: b.circuit, k: b.k, crypto: b.crypto, connections: a.connections, offloads: a.offloads, summary: s, reps, checks }, null, 2) + '\n');
    else process.stdout.write(formatTable(b, a, s, reps, checks));
    return 0;
  } finally {
    await down();
    dispose();
  }
}

// not when imported (e.g. by a test of the pure helpers)
runIfMain(import.meta.url, 'dataplane', main);

