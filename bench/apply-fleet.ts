/**
 * `onionctl apply` against a simulated fleet: what apply costs per router when the routers' own
 * CPU is out of the picture (issue 13 point 4). See docs/bench-apply-fleet.md.
 *
 *   npm run build && node dist/bench/apply-fleet.js [--sizes 250,500,1000] [--parallel 50]
 *       [--latency-ms 20] [--json]
 *
 * Three processes:
 *   fleet       one in-process ssh2 server per node (own ed25519 host key, 127.0.0.1, own
 *               port), each behind a proxy that holds every byte the server sends for
 *               --latency-ms (so every round trip on the wire costs that much); it counts per
 *               node the TCP connections, SSH channels, commands (by program), bytes each way and
 *               round trips (a round trip: server bytes after client bytes). A command's stdin is
 *               read to its end and dropped; every command exits 0; a stage script (`sh -s`
 *               with several commands of one apply stage) counts its commands and answers as
 *               they would; any other `sh -s` (the read-back) answers with read-back output recorded from a real kernel: the first time a
 *               read-back script is seen, it runs once in an empty network namespace of this
 *               machine (lo, and eth0, one end of a veth pair), and that output is replayed for every node that sends
 *               the same script. The fleet is an empty one: every apply is a first apply.
 *   controller  the onionctl CLI, `apply --auto-approve --parallel P` of a generated topology
 *               (bench/gen-topology.ts: N routers, N/10 clients, 10·N circuits) with a known_hosts
 *               file naming every node's key; its stdout is counted and dropped; it reports its
 *               CPU time and peak RSS when it ends.
 *   this one    starts both, per size, and prints the table.
 * Per size: wall time of the controller (process start to exit), its CPU and peak RSS, per node
 * the medians of the fleet's counts, and the ratios that say whether time is linear in
 * nodes/parallel. Needs root (the network namespace for the recording). A benchmark prints; it
 * never asserts.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { promises as fs, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import ssh2 from 'ssh2';
import { stringify as stringifyYaml } from 'yaml';
import { parseStageScript } from '../src/apply/commands.js';
import { generateEd25519 } from '../src/lab/run.js';
import { generateTopology } from './gen-topology.js';
import { exitOnSignals, loadavg, log, runIfMain, stat } from './common.js';

const self = fileURLToPath(import.meta.url);

// ---------------------------------------------------------------------------------------------
// the fleet (child process)

interface NodeCounts {
  connections: number;
  channels: number;
  /** commands by program (first word of the command line; `sh -s` is the read-back or a stage script, whose commands count too) */
  commands: Record<string, number>;
  bytesIn: number;
  bytesOut: number;
  roundTrips: number;
}

interface FleetConfig {
  nodes: string[];
  latencyMs: number;
  netns: string;
}

type FleetMsg = { type: 'config'; config: FleetConfig } | { type: 'report' };
type ParentMsg = { type: 'ready'; nodes: { name: string; port: number; pubLine: string }[]; keygenMs: number } | { type: 'report'; counts: Record<string, NodeCounts>; recordings: number; cpuMs: number };

const newCounts = (): NodeCounts => ({ connections: 0, channels: 0, commands: {}, bytesIn: 0, bytesOut: 0, roundTrips: 0 });

async function fleet(): Promise<void> {
  const cfg = await new Promise<FleetConfig>((resolve) => process.once('message', (m: FleetMsg) => m.type === 'config' && resolve(m.config)));
  const counts: Record<string, NodeCounts> = {};
  // read-back output per distinct script, recorded from the kernel once
  const recorded = new Map<string, Promise<string>>();
  const record = (script: string): Promise<string> => {
    let r = recorded.get(script);
    if (!r) {
      r = execa('ip', ['netns', 'exec', cfg.netns, 'sh', '-s'], { input: script, reject: false }).then((x) => String(x.stdout) + '\n');
      recorded.set(script, r);
    }
    return r;
  };
  const t0 = performance.now();
  const out: { name: string; port: number; pubLine: string }[] = [];
  for (const name of cfg.nodes) {
    const hk = generateEd25519(name);
    const c = (counts[name] = newCounts());
    const srv = new ssh2.Server({ hostKeys: [hk.private] }, (client) => {
      client.on('error', () => {});
      client.on('authentication', (ctx) => (ctx.method === 'publickey' ? ctx.accept() : ctx.reject(['publickey'])));
      client.on('session', (accept) => {
        c.channels++;
        const session = accept();
        session.once('exec', (acc, _rej, info) => {
          const st = acc();
          const program = info.command.split(' ')[0] ?? '';
          const count = (key: string) => (c.commands[key] = (c.commands[key] ?? 0) + 1);
          if (program !== 'sh') count(program);
          const chunks: Buffer[] = [];
          st.on('data', (d: Buffer) => chunks.push(d));
          st.on('error', () => {});
          st.once('end', () => {
            let reply: Promise<string> = Promise.resolve('');
            if (program === 'sh') {
              const script = Buffer.concat(chunks).toString('utf8');
              // a stage script (several commands of one apply stage on one channel): its
              // commands are counted, and answered as every other command (exit 0, no output)
              const parts = parseStageScript(script);
              if (parts) {
                count('sh -s (stage script)');
                for (const x of parts) count(x.argv[0] ?? '');
              } else {
                count('sh -s (read-back)');
                reply = record(script);
              }
            }
            void reply.then((text) => {
              if (text) st.write(text);
              st.exit(0);
              st.end();
            });
          });
        });
      });
    });
    const internal = await new Promise<number>((resolve) => srv.listen(0, '127.0.0.1', () => resolve((srv.address() as net.AddressInfo).port)));
    // the proxy the controller connects to: the server's bytes wait latencyMs (timers of one
    // duration fire in order, so the stream keeps its order)
    const proxy = net.createServer((ext) => {
      c.connections++;
      let last: 'in' | 'out' = 'out';
      const int = net.connect(internal, '127.0.0.1');
      ext.on('data', (d: Buffer) => {
        c.bytesIn += d.length;
        last = 'in';
        int.write(d);
      });
      int.on('data', (d: Buffer) => {
        c.bytesOut += d.length;
        if (last === 'in') c.roundTrips++;
        last = 'out';
        setTimeout(() => ext.writable && ext.write(d), cfg.latencyMs);
      });
      const done = () => {
        ext.destroy();
        int.destroy();
      };
      ext.on('close', () => setTimeout(done, cfg.latencyMs + 1));
      int.on('close', () => setTimeout(done, cfg.latencyMs + 1));
      ext.on('error', done);
      int.on('error', done);
    });
    const port = await new Promise<number>((resolve) => proxy.listen(0, '127.0.0.1', () => resolve((proxy.address() as net.AddressInfo).port)));
    out.push({ name, port, pubLine: hk.public.split(/\s+/).slice(0, 2).join(' ') });
  }
  const keygenMs = performance.now() - t0;
  process.send!({ type: 'ready', nodes: out, keygenMs } satisfies ParentMsg);
  process.on('message', (m: FleetMsg) => {
    if (m.type !== 'report') return;
    const u = process.cpuUsage();
    process.send!({ type: 'report', counts, recordings: recorded.size, cpuMs: (u.user + u.system) / 1000 } satisfies ParentMsg);
  });
}

// ---------------------------------------------------------------------------------------------
// the controller (child process): the CLI, with its stdout counted and dropped

async function controller(args: string[]): Promise<void> {
  let outBytes = 0;
  let tail = '';
  const write = process.stdout.write.bind(process.stdout);
  process.stdout.write = ((chunk: string | Uint8Array) => {
    outBytes += typeof chunk === 'string' ? Buffer.byteLength(chunk) : chunk.length;
    tail = (tail + (typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'))).slice(-2000);
    return true;
  }) as typeof process.stdout.write;
  const { main, reportError } = await import('../src/cli/main.js');
  let code: number;
  try {
    code = await main(args);
  } catch (e) {
    code = reportError(e, (s) => process.stderr.write(s));
  }
  if (typeof process.exitCode === 'number' && process.exitCode !== 0) code = process.exitCode;
  const u = process.resourceUsage();
  if (code !== 0) process.stderr.write(tail);
  write(`FLEET-CONTROLLER ${JSON.stringify({ code, outBytes, cpuMs: (u.userCPUTime + u.systemCPUTime) / 1000, maxRssMiB: u.maxRSS / 1024 })}\n`);
  process.exit(code);
}

// ---------------------------------------------------------------------------------------------
// the orchestration

interface SizeResult {
  routers: number;
  nodes: number;
  circuits: number;
  parallel: number;
  latencyMs: number;
  exitCode: number;
  wallS: number;
  controllerCpuS: number;
  controllerCpuMsPerNode: number;
  controllerMaxRssMiB: number;
  fleetCpuS: number;
  recordings: number;
  perNode: { connections: Stats; channels: Stats; roundTrips: Stats; kibIn: Stats; kibOut: Stats };
  commands: Record<string, Stats>;
  /** wall seconds per (nodes / parallel): constant when apply is linear in nodes/parallel */
  wallPerWave: number;
}
type Stats = { median: number; max: number };

interface Args {
  sizes: number[];
  parallel: number;
  latencyMs: number;
  json: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { sizes: [250, 500, 1000], parallel: 50, latencyMs: 20, json: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = () => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${k} needs a value`);
      return x;
    };
    if (k === '--sizes') a.sizes = v().split(',').map(Number);
    else if (k === '--parallel') a.parallel = Number(v());
    else if (k === '--latency-ms') a.latencyMs = Number(v());
    else if (k === '--json') a.json = true;
    else throw new Error(`unknown argument ${k}`);
  }
  if (a.sizes.some((n) => !Number.isInteger(n) || n < 20)) throw new Error('--sizes: routers per size, each at least 20');
  if (!Number.isInteger(a.parallel) || a.parallel < 1) throw new Error('--parallel: a positive integer');
  if (!(a.latencyMs >= 0)) throw new Error('--latency-ms: a number >= 0');
  return a;
}

const st = (xs: number[]): Stats => {
  const s = stat(xs);
  return { median: s.median, max: s.max };
};

function onceMessage<T extends ParentMsg['type']>(child: ChildProcess, type: T): Promise<Extract<ParentMsg, { type: T }>> {
  return new Promise((resolve, reject) => {
    const onMsg = (m: ParentMsg) => {
      if (m.type !== type) return;
      child.off('message', onMsg);
      child.off('exit', onExit);
      resolve(m as Extract<ParentMsg, { type: T }>);
    };
    const onExit = (code: number | null) => reject(new Error(`the fleet process ended (exit ${code}) before it answered`));
    child.on('message', onMsg);
    child.once('exit', onExit);
  });
}

async function runSize(n: number, a: Args, netns: string, children: Set<ChildProcess>): Promise<SizeResult> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'onionctl-fleet-'));
  try {
    const topo = generateTopology({ routers: n, seed: '1' });
    const names = [...topo.routers.map((r) => r.name), ...(topo.clients ?? []).map((c) => c.name)];
    log(`N=${n}: ${names.length} nodes, ${(topo.circuits ?? []).length} circuits; starting the fleet`);
    const child = fork(self, ['--fleet'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: ['--max-old-space-size=4096'] });
    children.add(child);
    child.send({ type: 'config', config: { nodes: names, latencyMs: a.latencyMs, netns } } satisfies FleetMsg);
    const ready = await onceMessage(child, 'ready');
    log(`N=${n}: fleet up (${(ready.keygenMs / 1000).toFixed(1)} s for keys and listeners)`);
    const port = new Map(ready.nodes.map((x) => [x.name, x.port]));
    for (const r of topo.routers) r.ssh = { host: '127.0.0.1', port: port.get(r.name)! };
    for (const c of topo.clients ?? []) c.ssh = { host: '127.0.0.1', port: port.get(c.name)! };
    const topoFile = path.join(dir, 'fleet.yaml');
    await fs.writeFile(topoFile, stringifyYaml(topo));
    const known = path.join(dir, 'known_hosts');
    await fs.writeFile(known, ready.nodes.map((x) => `[127.0.0.1]:${x.port} ${x.pubLine}\n`).join(''));
    const id = generateEd25519('onionctl-bench');
    const idFile = path.join(dir, 'id');
    await fs.writeFile(idFile, id.private, { mode: 0o600 });

    const args = ['apply', topoFile, '--auto-approve', '--quiet', '--parallel', String(a.parallel), '--identity', idFile, '--known-hosts', known, '--connect-timeout', '60', '--command-timeout', '600'];
    log(`N=${n}: onionctl ${args.join(' ')}`);
    const t0 = performance.now();
    // ONIONCTL_BENCH_CPU_PROF=DIR: a CPU profile of the controller in DIR (node --cpu-prof)
    const prof = process.env.ONIONCTL_BENCH_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.ONIONCTL_BENCH_CPU_PROF}`] : [];
    const ctl = spawn(process.execPath, ['--max-old-space-size=4096', ...prof, self, '--controller', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(ctl);
    let stdout = '';
    let stderr = '';
    ctl.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    ctl.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
    const exit = await new Promise<number>((resolve) => ctl.on('exit', (c) => resolve(c ?? 1)));
    const wallS = (performance.now() - t0) / 1000;
    children.delete(ctl);
    const m = /^FLEET-CONTROLLER (.*)$/m.exec(stdout);
    if (!m) throw new Error(`the controller printed no result (exit ${exit}): ${stderr.trim()}`);
    const c = JSON.parse(m[1]!) as { code: number; outBytes: number; cpuMs: number; maxRssMiB: number };
    if (c.code !== 0) log(`N=${n}: apply exited ${c.code}: ${stderr.trim().split('\n').slice(-5).join(' | ')}`);

    child.send({ type: 'report' } satisfies FleetMsg);
    const rep = await onceMessage(child, 'report');
    child.kill();
    children.delete(child);
    const per = Object.values(rep.counts);
    const programs = [...new Set(per.flatMap((x) => Object.keys(x.commands)))].sort();
    return {
      routers: n,
      nodes: names.length,
      circuits: (topo.circuits ?? []).length,
      parallel: a.parallel,
      latencyMs: a.latencyMs,
      exitCode: c.code,
      wallS,
      controllerCpuS: c.cpuMs / 1000,
      controllerCpuMsPerNode: c.cpuMs / names.length,
      controllerMaxRssMiB: c.maxRssMiB,
      fleetCpuS: rep.cpuMs / 1000,
      recordings: rep.recordings,
      perNode: {
        connections: st(per.map((x) => x.connections)),
        channels: st(per.map((x) => x.channels)),
        roundTrips: st(per.map((x) => x.roundTrips)),
        kibIn: st(per.map((x) => x.bytesIn / 1024)),
        kibOut: st(per.map((x) => x.bytesOut / 1024)),
      },
      commands: Object.fromEntries(programs.map((p) => [p, st(per.map((x) => x.commands[p] ?? 0))])),
      wallPerWave: wallS / (names.length / a.parallel),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function table(rows: (string | number)[][]): string {
  const cells = rows.map((r) => r.map(String));
  const w = cells[0]!.map((_, i) => Math.max(...cells.map((r) => r[i]!.length)));
  return cells.map((r, j) => `  ${r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ')}${j === 0 ? `\n  ${w.map((x) => '-'.repeat(x)).join('  ')}` : ''}`).join('\n');
}

function report(rs: SizeResult[], a: Args, load: string): string {
  const f = (x: number, d = 2) => x.toFixed(d);
  const out: string[] = [];
  out.push(`onionctl apply-fleet: node ${process.version}, ${os.cpus().length} CPUs, parallel ${a.parallel}, +${a.latencyMs} ms per round trip; load ${load}`);
  out.push('', 'Controller (the onionctl process, start to exit):');
  out.push(
    table([
      ['routers', 'nodes', 'circuits', 'exit', 'wall s', 's per wave', 'x first', 'CPU s', 'CPU ms/node', 'max RSS MiB'],
      ...rs.map((r) => [r.routers, r.nodes, r.circuits, r.exitCode, f(r.wallS, 1), f(r.wallPerWave), f(r.wallPerWave / rs[0]!.wallPerWave), f(r.controllerCpuS, 1), f(r.controllerCpuMsPerNode, 1), Math.round(r.controllerMaxRssMiB)]),
    ]),
  );
  out.push('', '  (a wave = parallel nodes; "x first" = wall per wave against the first size: 1.00 = linear in nodes/parallel)');
  out.push('', 'Per node, on the wire (median / max over nodes):');
  out.push(
    table([
      ['routers', 'connections', 'channels', 'round trips', 'KiB to node', 'KiB from node'],
      ...rs.map((r) => [r.routers, `${r.perNode.connections.median} / ${r.perNode.connections.max}`, `${r.perNode.channels.median} / ${r.perNode.channels.max}`, `${r.perNode.roundTrips.median} / ${r.perNode.roundTrips.max}`, `${f(r.perNode.kibIn.median, 1)} / ${f(r.perNode.kibIn.max, 1)}`, `${f(r.perNode.kibOut.median, 1)} / ${f(r.perNode.kibOut.max, 1)}`]),
    ]),
  );
  const programs = [...new Set(rs.flatMap((r) => Object.keys(r.commands)))].sort();
  out.push('', 'Commands started per node (median / max), by program:');
  out.push(table([['routers', ...programs], ...rs.map((r) => [r.routers, ...programs.map((p) => (r.commands[p] ? `${r.commands[p]!.median} / ${r.commands[p]!.max}` : '-'))])]));
  out.push('', `Fleet: ${rs.map((r) => `N=${r.routers} ${f(r.fleetCpuS, 1)} s CPU, ${r.recordings} read-back recording(s)`).join('; ')}.`);
  return out.join('\n') + '\n';
}

async function orchestrate(argv: string[]): Promise<number> {
  const a = parseArgs(argv);
  if (process.getuid?.() !== 0) throw new Error('needs root: the read-back is recorded in a network namespace of its own');
  const netns = `onionctl-fleet-${process.pid}`;
  const children = new Set<ChildProcess>();
  const down = async () => {
    for (const c of children) c.kill();
    await execa('ip', ['netns', 'del', netns], { reject: false });
  };
  const unhook = exitOnSignals(down);
  try {
    await execa('ip', ['netns', 'add', netns]);
    await execa('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
    await execa('ip', ['-n', netns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0p']);
    await execa('ip', ['-n', netns, 'address', 'add', '100.96.0.1/11', 'dev', 'eth0']);
    await execa('ip', ['-n', netns, 'link', 'set', 'eth0', 'up']);
    const rs: SizeResult[] = [];
    for (const n of a.sizes) rs.push(await runSize(n, a, netns, children));
    const load = await loadavg();
    process.stdout.write(a.json ? JSON.stringify({ args: a, results: rs }, null, 2) + '\n' : report(rs, a, load));
    return rs.every((r) => r.exitCode === 0) ? 0 : 1;
  } finally {
    unhook();
    await down();
  }
}

if (process.argv[2] === '--fleet') void fleet();
else if (process.argv[2] === '--controller') void controller(process.argv.slice(3));
else runIfMain(import.meta.url, 'apply-fleet', () => orchestrate(process.argv.slice(2)));

