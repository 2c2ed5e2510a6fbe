/**
 * The paper's table: the onion circuit against Tor and against direct routing, in one lab run
 * and one guest, interleaved (issue 13 point 1). See docs/bench-vs-tor.md.
 *
 *   npm run bench:vs-tor
 *   node dist/bench/vs-tor.js [--topology examples/three-mixes.yaml] [--reps 10] [--kernel PATH|6.12]
 *       [--xfrm-interface] [--json]
 *
 * One lab (`onionctl lab up` on a private copy of the topology). Four ways from the circuit's
 * client to the same HTTP server process and the same files, all through the circuit's routers:
 *   direct   plain routing client -> hop 1 -> ... -> hop k -> SNAT (bench/dataplane.ts's path)
 *   gcm      the onionctl circuit with crypto aes-gcm
 *   cbc      the onionctl circuit with the paper's crypto, aes-cbc-hmac-sha1
 *   tor      a private Tor network (bench/tor-net.ts): one relay and directory authority on each
 *            hop, the exit on the last, the client's path pinned to the same hops, curl through
 *            its SOCKS port
 * The circuit changes crypto by the real `onionctl apply` of the topology with the other
 * profile (new SPIs and keys on every router, as for any change of an SA's algorithm), once per
 * repetition: a repetition measures direct, Tor and the circuit under its current profile in
 * alternating order, switches, and measures the circuit under the other one; the profile that
 * goes first alternates too.
 *
 * Per path and repetition: a page of 9 objects fetched one after another with a new connection
 * (a new Tor stream) for each, with every object's connect and first-byte time, and a 20 MiB file.
 * A benchmark prints; it never asserts.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { parseArgs as parseCliArgs } from 'node:util';
import { parseDocument } from 'yaml';
import { inNs } from '../src/lab/host.js';
import { formatIPv4 } from '../src/net/addr.js';
import type { CryptoProfileName } from '../src/topology/schema.js';
import { bringUpLab, KERNEL_OPTIONS, KERNEL_USAGE, kernelUpArgs, labApply, labTeardown, loadavg, log, nsx, runIfMain, stat, type Stat } from './common.js';
import { BIG, DIRECT_DST, HTTP_PORT, OBJECTS, describe, parseSections, scaffold, type Bench } from './dataplane.js';
import { findTor, OR_PORT, setUpTor, type TorNet } from './tor-net.js';

const PATHS = ['direct', 'gcm', 'cbc', 'tor'] as const;
export type PathKey = (typeof PATHS)[number];
const PROFILE_OF: Record<'gcm' | 'cbc', CryptoProfileName> = { gcm: 'aes-gcm', cbc: 'aes-cbc-hmac-sha1' };

interface Args {
  topology: string;
  reps: number;
  kernel?: string;
  xfrmInterface: boolean;
  bootTimeoutS: number;
  json: boolean;
}

function usage(): never {
  process.stdout.write(
    `usage: node dist/bench/vs-tor.js [--topology FILE] [--reps 10] ${KERNEL_USAGE} [--tor-boot-timeout 600] [--json]\n` +
      'Needs root, what onionctl lab needs (docs/lab-uml.md), curl and python3; Debian\'s tor is used if installed, else\n' +
      'scripts/bench-tor.sh unpacks the package into /var/cache/onionctl/tor (never installs it). See docs/bench-vs-tor.md.\n',
  );
  process.exit(0);
}

export function parseArgs(argv: string[]): Args {
  const { values: v } = parseCliArgs({
    args: argv,
    strict: true,
    options: {
      topology: { type: 'string', default: 'examples/three-mixes.yaml' },
      reps: { type: 'string', default: '10' },
      ...KERNEL_OPTIONS,
      'tor-boot-timeout': { type: 'string', default: '600' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (v.help) usage();
  const int = (s: string, what: string) => {
    if (!/^\d+$/.test(s) || Number(s) < 1) throw new Error(`--${what}: not a positive whole number: ${s}`);
    return Number(s);
  };
  return {
    topology: v.topology,
    reps: int(v.reps, 'reps'),
    ...(v.kernel !== undefined ? { kernel: v.kernel } : {}),
    xfrmInterface: v['xfrm-interface'],
    bootTimeoutS: int(v['tor-boot-timeout'], 'tor-boot-timeout'),
    json: v.json,
  };
}

/** The topology text with `crypto:` set to `profile` (comments and everything else kept). */
export function withCrypto(text: string, profile: CryptoProfileName): string {
  const doc = parseDocument(text);
  doc.set('crypto', profile);
  return doc.toString({ lineWidth: 0 });
}

export interface ObjectTimes {
  connect: number;
  firstByte: number;
  total: number;
}

export interface PageResult {
  seconds: number;
  connects: number;
  bytes: number;
  objects: ObjectTimes[];
  ok: boolean;
}

/**
 * One curl run over the page's objects, one line per object:
 * "time_connect time_starttransfer time_total num_connects size_download http_code".
 */
export function parsePage(lines: readonly string[], rc: number): PageResult {
  const rows = lines.map((l) => l.trim().split(/\s+/).map(Number));
  return {
    seconds: rows.reduce((t, x) => t + (x[2] ?? NaN), 0),
    connects: rows.reduce((t, x) => t + (x[3] ?? 0), 0),
    bytes: rows.reduce((t, x) => t + (x[4] ?? 0), 0),
    objects: rows.map((x) => ({ connect: x[0] ?? NaN, firstByte: x[1] ?? NaN, total: x[2] ?? NaN })),
    ok: rc === 0 && rows.length === OBJECTS && rows.every((x) => x[5] === 200 && x[3] === 1),
  };
}

export interface BigResult {
  seconds: number;
  bytes: number;
  MBps: number;
  ok: boolean;
}

export function parseBig(lines: readonly string[], rc: number): BigResult {
  const row = (lines[0] ?? '').trim().split(/\s+/).map(Number);
  const [seconds, bytes, code] = [row[0] ?? NaN, row[1] ?? NaN, row[2]];
  return { seconds, bytes, MBps: bytes / seconds / 1e6, ok: rc === 0 && code === 200 && bytes === 20 * 1024 * 1024 };
}

export interface RepResult {
  rep: number;
  /** the order the paths were measured in */
  order: PathKey[];
  page: Partial<Record<PathKey, PageResult>>;
  big: Partial<Record<PathKey, BigResult>>;
  /** the crypto switch's apply: seconds and exit code */
  apply?: { seconds: number; code: number; to: 'gcm' | 'cbc' };
}

interface Ctx {
  b: Bench;
  tor: TorNet;
  topo: string;
  tmp: string;
  labText: string;
  urls: Record<PathKey, string>;
}

function curlOpts(c: Ctx, p: PathKey): string {
  return p === 'tor' ? `${c.tor.socks} ` : '';
}

function pageCmd(c: Ctx, p: PathKey): string {
  const objs = Array.from({ length: OBJECTS }, (_, i) => `-o /dev/null ${c.urls[p]}/obj${i}.bin`).join(' ');
  // a new connection per object: through Tor, a new stream on the client's circuit
  return nsx(c.b.client.ns, `curl -sS --max-time 600 ${curlOpts(c, p)}-H 'Connection: close' -w '%{time_connect} %{time_starttransfer} %{time_total} %{num_connects} %{size_download} %{http_code}\\n' ${objs}`);
}

function bigCmd(c: Ctx, p: PathKey): string {
  return nsx(c.b.client.ns, `curl -sS --max-time 600 ${curlOpts(c, p)}-o /dev/null -w '%{time_total} %{size_download} %{http_code}\\n' ${c.urls[p]}/${BIG}`);
}

/** Page and 20 MiB for each path in `paths`, in that order, in one guest shell. */
async function measure(c: Ctx, paths: PathKey[], into: RepResult): Promise<void> {
  const lines: string[] = [];
  for (const p of paths) lines.push(`echo "@page ${p}"`, `${pageCmd(c, p)}; echo "@rc $?"`);
  for (const p of paths) lines.push(`echo "@big ${p}"`, `${bigCmd(c, p)}; echo "@rc $?"`);
  const r = await c.b.host.run(['sh', '-c', lines.join('\n')], { timeoutMs: 3_600_000 });
  for (const s of parseSections(r.stdout)) {
    const p = s.args[0] as PathKey;
    if (s.tag === 'page') into.page[p] = parsePage(s.lines, s.rc);
    else if (s.tag === 'big') into.big[p] = parseBig(s.lines, s.rc);
  }
  into.order.push(...paths);
  if (r.code !== 0 && r.stderr.trim()) log(`  rep ${into.rep + 1}: ${r.stderr.trim().split('\n').slice(-3).join('; ')}`);
}

/** The client's SAs by algorithm, counted here (`ip xfrm state` prints keys: never shown). */
async function clientAlgos(c: Ctx): Promise<{ gcm: number; cbc: number }> {
  const r = await c.b.host.run(inNs(c.b.client.ns, ['ip', 'xfrm', 'state']));
  return { gcm: (r.stdout.match(/aead rfc4106\(gcm\(aes\)\)/g) ?? []).length, cbc: (r.stdout.match(/enc cbc\(aes\)/g) ?? []).length };
}

async function switchCrypto(c: Ctx, to: 'gcm' | 'cbc'): Promise<{ seconds: number; code: number }> {
  const file = path.join(c.tmp, `topology-${to}.yaml`);
  await fs.writeFile(file, withCrypto(c.labText, PROFILE_OF[to]), { mode: 0o600 });
  const r = await labApply(c.topo, c.b.rec, file);
  const algos = await clientAlgos(c);
  const want = to === 'gcm' ? algos.gcm > 0 && algos.cbc === 0 : algos.cbc > 0 && algos.gcm === 0;
  if (r.code !== 0 || !want) throw new Error(`switching the circuit to ${PROFILE_OF[to]}: apply exited ${r.code}; the client holds ${algos.gcm} GCM and ${algos.cbc} CBC SAs`);
  return r;
}

// ---------------------------------------------------------------------------------------------

const f = (x: number, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const fs3 = (s: Stat, d = 2) => (s.n === 0 ? '-' : `${f(s.median, d)} (${f(s.min, d)}/${f(s.max, d)})`);

export interface Summary {
  page: Record<PathKey, Stat>;
  connectMs: Record<PathKey, Stat>;
  firstByteMs: Record<PathKey, Stat>;
  bigMBps: Record<PathKey, Stat>;
  /** paired per repetition */
  ratios: {
    /** Tor's page time / the circuit's: how many times faster the circuit is */
    pageTorOver: Record<'gcm' | 'cbc', Stat>;
    bigOverTor: Record<'gcm' | 'cbc', Stat>;
    /** path time / direct time (page), path MB/s / direct MB/s (20 MiB) */
    pageOverDirect: Record<Exclude<PathKey, 'direct'>, Stat>;
    bigOverDirect: Record<Exclude<PathKey, 'direct'>, Stat>;
  };
  applySeconds: Stat;
}

export function summarize(reps: readonly RepResult[]): Summary {
  const okPage = (r: RepResult, p: PathKey) => (r.page[p]?.ok ? r.page[p] : undefined);
  const okBig = (r: RepResult, p: PathKey) => (r.big[p]?.ok ? r.big[p] : undefined);
  const per = <T>(fn: (p: PathKey) => T) => Object.fromEntries(PATHS.map((p) => [p, fn(p)])) as Record<PathKey, T>;
  const objs = (p: PathKey, get: (o: ObjectTimes) => number) => stat(reps.flatMap((r) => (okPage(r, p)?.objects ?? []).map((o) => get(o) * 1000)));
  const paired = (num: (r: RepResult) => number | undefined, den: (r: RepResult) => number | undefined) =>
    stat(reps.map((r) => { const a = num(r); const d = den(r); return a !== undefined && d !== undefined ? a / d : NaN; }));
  const pt = (p: PathKey) => (r: RepResult) => okPage(r, p)?.seconds;
  const mb = (p: PathKey) => (r: RepResult) => okBig(r, p)?.MBps;
  return {
    page: per((p) => stat(reps.map((r) => okPage(r, p)?.seconds ?? NaN))),
    connectMs: per((p) => objs(p, (o) => o.connect)),
    firstByteMs: per((p) => objs(p, (o) => o.firstByte)),
    bigMBps: per((p) => stat(reps.map((r) => okBig(r, p)?.MBps ?? NaN))),
    ratios: {
      pageTorOver: { gcm: paired(pt('tor'), pt('gcm')), cbc: paired(pt('tor'), pt('cbc')) },
      bigOverTor: { gcm: paired(mb('gcm'), mb('tor')), cbc: paired(mb('cbc'), mb('tor')) },
      pageOverDirect: { gcm: paired(pt('gcm'), pt('direct')), cbc: paired(pt('cbc'), pt('direct')), tor: paired(pt('tor'), pt('direct')) },
      bigOverDirect: { gcm: paired(mb('gcm'), mb('direct')), cbc: paired(mb('cbc'), mb('direct')), tor: paired(mb('tor'), mb('direct')) },
    },
    applySeconds: stat(reps.map((r) => r.apply?.seconds ?? NaN)),
  };
}

function formatTable(c: Ctx, a: Args, s: Summary, reps: RepResult[], kernel: string, load: { start: string; end: string }, checks: string[]): string {
  const b = c.b;
  const route = [b.client.name, ...b.hops.map((h) => h.name)].join(' -> ');
  const pageBytes = reps.find((r) => r.page.gcm?.ok)?.page.gcm?.bytes ?? NaN;
  const out: string[] = [];
  const w = (x: string, n: number) => x.padEnd(n);
  out.push(`vs-tor benchmark: ${a.topology}, ${route} (k=${b.k}); kernel ${kernel}${a.xfrmInterface ? ', xfrm_interface loaded' : ''}; ${a.reps} repetitions, interleaved`);
  out.push(`  direct  plain routing through the same routers, SNAT at ${b.exit.name} -> ${DIRECT_DST}`);
  out.push(`  gcm     the onionctl circuit ${b.circuit}, aes-gcm (${b.k + 1} ESP layers at the client) -> ${b.dest}`);
  out.push(`  cbc     the same circuit after onionctl apply with crypto aes-cbc-hmac-sha1 (the paper's)`);
  out.push(`  tor     Tor ${c.tor.relays.length}-hop circuit ${route} (a relay and directory authority on each hop), curl via SOCKS -> ${DIRECT_DST}`);
  out.push(`host load average (1 min): ${load.start} at the start, ${load.end} at the end (a shared 2-core machine)`);
  out.push('NOTE: one User-Mode Linux guest: one CPU shared by every node and every Tor process, software AES.');
  out.push('');
  out.push(`${w('median (min/max)', 34)}${PATHS.map((p) => w(p, 22)).join('')}`);
  out.push(`${w(`page (${OBJECTS} objects, ${f(pageBytes / 1e6)} MB), s`, 34)}${PATHS.map((p) => w(fs3(s.page[p], 3), 22)).join('')}`);
  out.push(`${w('  per object: connect, ms', 34)}${PATHS.map((p) => w(fs3(s.connectMs[p], 1), 22)).join('')}`);
  out.push(`${w('  per object: first byte, ms', 34)}${PATHS.map((p) => w(fs3(s.firstByteMs[p], 1), 22)).join('')}`);
  out.push(`${w(`20 MiB, MB/s`, 34)}${PATHS.map((p) => w(fs3(s.bigMBps[p]), 22)).join('')}`);
  out.push('');
  out.push('ratios, paired per repetition, median (min/max):');
  out.push(`${w('', 34)}${w('page: x faster than Tor', 30)}20 MiB: x Tor's throughput`);
  for (const p of ['gcm', 'cbc'] as const) out.push(`${w(`  circuit ${p}`, 34)}${w(fs3(s.ratios.pageTorOver[p]), 30)}${fs3(s.ratios.bigOverTor[p])}`);
  out.push(`${w('', 34)}${w('page: time / direct', 30)}20 MiB: throughput / direct`);
  for (const p of ['gcm', 'cbc', 'tor'] as const) out.push(`${w(`  ${p}`, 34)}${w(fs3(s.ratios.pageOverDirect[p]), 30)}${fs3(s.ratios.bigOverDirect[p])}`);
  out.push(`target: the circuit at least 15x faster than Tor for the page (the paper measured 3-4x): gcm ${f(s.ratios.pageTorOver.gcm.median, 1)}x, cbc ${f(s.ratios.pageTorOver.cbc.median, 1)}x`);
  out.push(`crypto switches (onionctl apply, new SAs on every node): ${fs3(s.applySeconds, 1)} s`);
  out.push('');
  out.push('checks:');
  out.push(...checks.map((x) => `  ${x}`));
  const bad = reps.flatMap((r) => [
    ...Object.entries(r.page).filter(([, x]) => !x!.ok).map(([p]) => `rep ${r.rep + 1} page ${p}`),
    ...Object.entries(r.big).filter(([, x]) => !x!.ok).map(([p]) => `rep ${r.rep + 1} 20 MiB ${p}`),
  ]);
  if (bad.length > 0) out.push(`  failed runs (left out of the statistics): ${bad.join(', ')}`);
  return out.join('\n') + '\n';
}

/**
 * Bytes received per peer over the client's established TCP connections, from `ss -Htni state
 * established` (a connection line, then its indented info line with bytes_received), loopback
 * left out.
 */
export function parsePeerBytes(text: string): Map<string, number> {
  const out = new Map<string, number>();
  let peer: string | undefined;
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    if (!/^\s/.test(line)) {
      const cols = line.trim().split(/\s+/);
      peer = cols[cols.length - 1];
      if (peer?.startsWith('127.')) peer = undefined;
      else if (peer) out.set(peer, out.get(peer) ?? 0);
    } else if (peer) {
      const m = /\bbytes_received:(\d+)/.exec(line);
      if (m) out.set(peer, (out.get(peer) ?? 0) + Number(m[1]));
    }
  }
  return out;
}

/** Where the Tor client's traffic came from: all of it should come over the entry relay. */
async function torPeers(c: Ctx): Promise<string> {
  const r = await c.b.host.run(inNs(c.b.client.ns, ['ss', '-Htni', 'state', 'established']));
  const peers = parsePeerBytes(r.stdout);
  const name = new Map(c.tor.relays.map((x) => [`${x.addr}:${OR_PORT}`, x.nick]));
  return [...peers].map(([p, n]) => `${name.get(p) ?? p} ${(n / 1e6).toFixed(2)} MB`).join(', ') || 'none';
}

async function main(): Promise<number> {
  const a = parseArgs(process.argv.slice(2));
  if (process.getuid && process.getuid() !== 0) throw new Error('the lab needs root');
  const load0 = await loadavg();
  const src = path.resolve(a.topology);
  const torBin = await findTor();
  const tmp = await fs.mkdtemp('/var/tmp/onionctl-vstor-');
  const topo = path.join(tmp, path.basename(src));
  // the lab starts with GCM; the first repetition switches to CBC
  await fs.writeFile(topo, withCrypto(await fs.readFile(src, 'utf8'), 'aes-gcm'), { mode: 0o600 });
  const { down, stopping, dispose } = labTeardown(topo, tmp);
  try {
    log(`bringing up a lab for ${a.topology} (copy: ${topo})`);
    const upArgs = kernelUpArgs({ kernel: a.kernel, 'xfrm-interface': a.xfrmInterface });
    const { rec, host } = await bringUpLab(topo, upArgs, stopping);
    const kernel = (await host.run(['uname', '-r'])).stdout.trim();
    const b = await describe(rec, host);
    log(`lab ${rec.id} (kernel ${kernel}): circuit ${b.circuit} ${b.client.name} -> ${b.hops.map((h) => h.name).join(' -> ')} -> ${b.dest}; adding the direct path`);
    await scaffold(b, 'off');
    const tor = await setUpTor(host, {
      bin: torBin,
      work: b.work,
      runDir: host.kind === 'uml' ? '/run/lab/tmp/vstor' : path.join(b.work, 'tor-run'),
      pidDir: rec.dir,
      relays: b.hops.map((h, i) => ({
        nick: `r${i + 1}${h.name.replace(/[^A-Za-z0-9]/g, '')}`.slice(0, 19),
        ns: h.ns,
        addr: formatIPv4(h.underlay.addr),
        ...(i === b.hops.length - 1 ? { exitTo: { addr: DIRECT_DST, port: HTTP_PORT } } : {}),
      })),
      clientNs: b.client.ns,
      bootTimeoutS: a.bootTimeoutS,
    });
    const c: Ctx = {
      b,
      tor,
      topo,
      tmp,
      labText: await fs.readFile(rec.ctl!.topology, 'utf8'),
      urls: { direct: `http://${DIRECT_DST}:${HTTP_PORT}`, gcm: `http://${b.dest}:${HTTP_PORT}`, cbc: `http://${b.dest}:${HTTP_PORT}`, tor: `http://${DIRECT_DST}:${HTTP_PORT}` },
    };

    // warm-up: one object per path (ARP, conntrack, page cache, Tor's first stream), checked
    const warm = (['direct', 'gcm', 'tor'] as const).map((p) => `echo "@warm ${p}"; ${nsx(b.client.ns, `curl -sS --max-time 300 ${curlOpts(c, p)}-o /dev/null -w '%{size_download} %{http_code}\\n' ${c.urls[p]}/obj0.bin`)}; echo "@rc $?"`);
    const wr = await host.run(['sh', '-c', warm.join('\n')], { timeoutMs: 900_000 });
    for (const s of parseSections(wr.stdout)) {
      if (s.rc !== 0 || !/ 200$/.test(s.lines[0] ?? '')) {
        const exitFetch = await host.run(['sh', '-c', nsx(b.exit.ns, `curl -sS --max-time 20 -o /dev/null -w '%{http_code}' ${c.urls.tor}/obj0.bin 2>&1`)]);
        throw new Error(`warm-up fetch over ${s.args[0]} failed: ${(s.lines[0] ?? '').trim()} ${wr.stderr.trim()}\n(the same fetch from ${b.exit.name} itself: ${exitFetch.stdout.trim()})\n${s.args[0] === 'tor' ? await tor.logs() : ''}`);
      }
    }
    const checks = [`bytes the Tor client received per relay connection after the warm-up: ${await torPeers(c)} (the entry is ${tor.relays[0]!.nick})`];
    for (const x of checks) log(x);

    const reps: RepResult[] = [];
    let current: 'gcm' | 'cbc' = 'gcm';
    for (let i = 0; i < a.reps; i++) {
      if (stopping()) return 1;
      const r: RepResult = { rep: i, order: [], page: {}, big: {} };
      const first: PathKey[] = [current, 'direct', 'tor'];
      await measure(c, i % 2 === 0 ? first : [...first].reverse(), r);
      const to: 'gcm' | 'cbc' = current === 'gcm' ? 'cbc' : 'gcm';
      r.apply = { ...(await switchCrypto(c, to)), to };
      current = to;
      await measure(c, [current], r);
      reps.push(r);
      const pg = (p: PathKey) => f(r.page[p]?.seconds ?? NaN, 3);
      const mb = (p: PathKey) => f(r.big[p]?.MBps ?? NaN);
      log(`rep ${i + 1}/${a.reps}: page s direct ${pg('direct')} gcm ${pg('gcm')} cbc ${pg('cbc')} tor ${pg('tor')}; 20 MiB MB/s direct ${mb('direct')} gcm ${mb('gcm')} cbc ${mb('cbc')} tor ${mb('tor')}; switch to ${to} ${f(r.apply.seconds, 1)} s`);
    }
    checks.push(`... and after the run: ${await torPeers(c)}`);
    // a Tor network whose consensus lapsed builds no new circuits and its streams crawl
    const warn = await host.run(['sh', '-c', `grep -c 'No available nodes' ${tor.clientDir}/notice.log; grep -c 'Bootstrapped 100%' ${tor.clientDir}/notice.log`]);
    const [noNodes, boots] = warn.stdout.trim().split('\n');
    checks.push(`the Tor client's log: "No available nodes" ${noNodes ?? '?'} times (0 when the consensus stayed valid), "Bootstrapped 100%" ${boots ?? '?'} time(s)`);
    const x = await host.run(['sh', '-c', [b.client, ...b.hops].map((n) => `echo "@xstat ${n.name}"; ${nsx(n.ns, 'cat /proc/net/xfrm_stat')}; echo "@rc $?"`).join('\n')]);
    const errs = parseSections(x.stdout).map((s) => [s.args[0], s.lines.map((l) => l.trim().split(/\s+/)).filter((y) => Number(y[1]) > 0).map((y) => `${y[0]} ${y[1]}`)] as const);
    checks.push(
      errs.every(([, e]) => e.length === 0)
        ? `/proc/net/xfrm_stat: every error counter 0 on ${errs.map(([n]) => n).join(', ')}`
        : `/proc/net/xfrm_stat: ${errs.filter(([, e]) => e.length > 0).map(([n, e]) => `${n}: ${e.join(', ')}`).join('; ')}`,
    );
    const s = summarize(reps);
    const load = { start: load0, end: await loadavg() };
    if (a.json) process.stdout.write(JSON.stringify({ topology: a.topology, kernel, xfrmInterface: a.xfrmInterface, summary: s, reps, checks, load }, null, 2) + '\n');
    else process.stdout.write(formatTable(c, a, s, reps, kernel, load, checks));
    return 0;
  } finally {
    await down();
    dispose();
  }
}

runIfMain(import.meta.url, 'vs-tor', main);
