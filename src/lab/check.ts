/**
 * `onionctl lab test`: for every circuit, real traffic through the real kernel, then the
 * anonymity property checked on header-only captures of the wire.
 */
import path from 'node:path';
import { promises as fs } from 'node:fs';
import { formatDest, formatIPv4 } from '../net/addr.js';
import { buildConfigs } from '../spd/build.js';
import { loadState } from '../store/files.js';
import type { State } from '../state/model.js';
import { AddressBook, compareObservations, formatObservations, observe, rowKey, wirePointId, type ObservedRow } from '../audit/observe.js';
import { pairs, startCapture, type Packet, type Pair } from './capture.js';
import { inNs, type LabHost } from './host.js';
import { applyLab, labStatePath, loadLabNet, type Log } from './run.js';
import type { LabRecord } from './record.js';
import { LabError } from './errors.js';
import { parseXfrmStat } from '../readback/xfrm.js';

export interface CheckResult {
  name: string;
  ok: boolean;
  detail: string;
}

export interface ObservationRow {
  point: string;
  src: string;
  dst: string;
  proto: string;
  count: number;
}

export interface CircuitReport {
  circuit: string;
  path: string[];
  checks: CheckResult[];
  observations: ObservationRow[];
  /** what the captures saw, in audit's format (src/audit/observe.ts), keyed by point */
  observed: Record<string, ObservedRow[]>;
  /** differences from audit's prediction for the same points */
  modelDiff: { point: string; missing: string[]; unexpected: string[] }[];
  downloadBytes: number;
  downloadMBps: number;
}

export interface LabTestReport {
  /** the kernel the lab ran (lab up records it) */
  kernel?: LabRecord['kernel'];
  circuits: CircuitReport[];
  /** node-wide checks: /proc/net/xfrm_stat during the traffic checks */
  nodes: CheckResult[];
  /** per node, the xfrm_stat error counters that rose during the traffic checks */
  xfrmStatRises: Record<string, Record<string, number>>;
  failClosed: CheckResult[];
  ok: boolean;
}

/** Every node's /proc/net/xfrm_stat, read in one script (process starts are dear in UML). */
export async function readXfrmStats(host: LabHost, rec: LabRecord): Promise<Map<string, Record<string, number>>> {
  const lines = rec.layout.nodes.map((n) => `echo "== ${n.name}"; nsenter --net=/run/netns/${n.ns} cat /proc/net/xfrm_stat`);
  const r = await host.run(['sh', '-c', lines.join('\n')], { timeoutMs: 120_000 });
  if (r.code !== 0) throw new LabError(`reading /proc/net/xfrm_stat failed: ${r.stderr.trim()}`);
  const out = new Map<string, Record<string, number>>();
  for (const part of r.stdout.split(/^== /m).slice(1)) {
    const nl = part.indexOf('\n');
    out.set(part.slice(0, nl).trim(), parseXfrmStat(part.slice(nl + 1)));
  }
  return out;
}

/** counters that rose between two reads, per node (every xfrm_stat counter is an error counter) */
export function xfrmStatRises(before: Map<string, Record<string, number>>, after: Map<string, Record<string, number>>): Record<string, Record<string, number>> {
  const out: Record<string, Record<string, number>> = {};
  for (const [node, a] of after) {
    const b = before.get(node) ?? {};
    for (const [k, v] of Object.entries(a)) {
      const d = v - (b[k] ?? 0);
      if (d > 0) (out[node] ??= {})[k] = d;
    }
  }
  return out;
}

/** Per-SPI packet/byte counters from `ip -s xfrm state` (the output holds keys: never print it). */
export function parseXfrmStats(text: string): Map<number, { bytes: number; packets: number }> {
  const out = new Map<number, { bytes: number; packets: number }>();
  let spi: number | undefined;
  let inCurrent = false;
  for (const line of text.split('\n')) {
    const m = /\bspi (0x[0-9a-f]+)/.exec(line);
    if (m) {
      spi = Number.parseInt(m[1]!, 16);
      inCurrent = false;
      continue;
    }
    if (/lifetime current:/.test(line)) {
      inCurrent = true;
      continue;
    }
    const c = /(\d+)\(bytes\), (\d+)\(packets\)/.exec(line);
    if (c && inCurrent && spi !== undefined) {
      out.set(spi, { bytes: Number(c[1]), packets: Number(c[2]) });
      inCurrent = false;
    }
  }
  return out;
}

async function nsExec(host: LabHost, ns: string, argv: string[], timeoutMs = 180_000) {
  return host.run(inNs(ns, argv), { timeoutMs });
}

async function xfrmStats(host: LabHost, ns: string) {
  return parseXfrmStats((await nsExec(host, ns, ['ip', '-s', 'xfrm', 'state'])).stdout);
}

async function xfrmStat(host: LabHost, ns: string, counter: string): Promise<number> {
  const r = await nsExec(host, ns, ['cat', '/proc/net/xfrm_stat']);
  const m = new RegExp(`^${counter}\\s+(\\d+)`, 'm').exec(r.stdout);
  return m ? Number(m[1]) : 0;
}

export async function labTest(rec: LabRecord, host: LabHost, log: Log): Promise<LabTestReport> {
  const net = await loadLabNet(rec);
  const statePath = labStatePath(rec);
  let { state } = await loadState(statePath);
  const nodes = new Map(rec.layout.nodes.map((n) => [n.name, n]));
  const capDir = path.join(rec.dir, 'captures');
  await fs.mkdir(capDir, { recursive: true });
  const reports: CircuitReport[] = [];
  // audit's model of what each wire shows, for the same state: the captures must match it
  const model = observe(net, state, buildConfigs(net, state));
  const book = new AddressBook(net, state);
  const nodeByAddr = new Map(rec.layout.nodes.map((n) => [formatIPv4(n.underlay.addr), n.name]));
  if (rec.kernel) log(`kernel ${rec.kernel.release}${rec.kernel.xfrmInterface ? ', xfrm_interface loaded' : ''}, nf_tables for IPv4: ${rec.kernel.nft ? 'yes' : 'no'}`);
  const statBefore = await readXfrmStats(host, rec);

  for (const def of net.circuits) {
    const c = state.circuits[def.name]!;
    const client = nodes.get(c.client)!;
    const exitName = c.hops[c.hops.length - 1]!;
    const exit = nodes.get(exitName)!;
    const entry = c.hops[0]!;
    const server = rec.layout.servers.find((s) => s.circuit === def.name) ?? rec.layout.servers.find((s) => formatIPv4(s.iface.addr) === c.to[0]!.split('/')[0]);
    if (!server) throw new LabError(`no lab server for circuit ${def.name}`);
    const dest = formatIPv4(server.iface.addr);
    const clientReal = formatIPv4(client.underlay.addr);
    const exitOut = formatIPv4(exit.outside!.addr);

    const labels = new Map<string, string>();
    for (const n of rec.layout.nodes) labels.set(formatIPv4(n.underlay.addr), n.kind === 'client' ? `${n.name}(real)` : n.name);
    for (const n of rec.layout.nodes) if (n.outside) labels.set(formatIPv4(n.outside.addr), `${n.name}(outside)`);
    c.addrs.forEach((a, i) => labels.set(a, `A_c${i + 1}`));
    labels.set(dest, `dest(${def.name})`);
    const label = (a: string) => labels.get(a) ?? a;

    // observation points: every router's underlay, the client's underlay, the exit's outside, the server
    const points: { point: string; iface: string }[] = [];
    points.push({ point: `${client.name}:${client.underlay.name}`, iface: client.underlay.hostVeth });
    for (const n of rec.layout.nodes) if (n.kind === 'router') points.push({ point: `${n.name}:${n.underlay.name}`, iface: n.underlay.hostVeth });
    points.push({ point: `${exit.name}:${exit.outside!.name}`, iface: exit.outside!.hostVeth });
    points.push({ point: `server(${def.name})`, iface: server.iface.hostVeth });

    // the anonymity captures cover a ping and a small HTTP fetch; the 10 MiB download runs
    // after them, uncaptured (capturing every packet of it costs minutes in User-Mode Linux)
    const cap = await startCapture(host, capDir, def.name);
    const before = await xfrmStats(host, client.ns);
    const ping = await nsExec(host, client.ns, ['ping', '-n', '-c', '3', '-i', '0.2', '-W', '2', dest]);
    const small = await nsExec(host, client.ns, ['curl', '-sS', '-o', '/dev/null', '--max-time', '60', '-w', '%{size_download}', `http://${dest}/obj8.bin`]);
    const pkts = await cap.stop();
    const recv = Number(/(\d+) (?:packets )?received/.exec(ping.stdout)?.[1] ?? 0);
    const t0 = process.hrtime.bigint();
    const dl = await nsExec(host, client.ns, ['curl', '-sS', '-o', '/dev/null', '--max-time', '300', '-w', '%{size_download}', `http://${dest}/10M.bin`], 330_000);
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    const bytes = Number(dl.stdout.trim()) || 0;
    const after = await xfrmStats(host, client.ns);
    const exitStats = await xfrmStats(host, exit.ns);
    const captured = new Map<string, Packet[]>();
    for (const p of points) captured.set(p.point, pkts.filter((x) => x.iface === p.iface));

    const checks: CheckResult[] = [];
    const check = (name: string, ok: boolean, detail: string) => checks.push({ name, ok, detail });
    check('ping through the circuit', recv >= 2, `${recv}/3 replies`);
    check('HTTP fetch through the circuit', Number(small.stdout.trim()) === 20_000, `${small.stdout.trim() || 0} of 20000 bytes`);
    check('10 MiB TCP download (MTU/MSS)', bytes === 10 * 1024 * 1024, `${bytes} bytes in ${secs.toFixed(2)} s${dl.code !== 0 ? `; curl: ${dl.stderr.trim()}` : ''}`);

    // IPsec: every outbound layer's SA on the client counted packets, and the exit's telescope SA too
    const outSpis = [...c.fwd.map((s) => s.spi), state.links[[client.name, entry].sort().join('~')]![client.name < entry ? 'ab' : 'ba'].spi];
    const grew = outSpis.filter((spi) => (after.get(spi)?.packets ?? 0) > (before.get(spi)?.packets ?? 0));
    const exitT = exitStats.get(c.fwd[c.fwd.length - 1]!.spi)?.packets ?? 0;
    check('traffic used IPsec (xfrm counters)', grew.length === outSpis.length && exitT > 0, `${grew.length}/${outSpis.length} client layers counted packets; exit telescope SA: ${exitT} packets`);

    const seen = (point: string, addr: string) => (captured.get(point) ?? []).some((p) => p.src === addr || p.dst === addr);
    const clientPoint = `${client.name}:${client.underlay.name}`;
    const clientWire = (captured.get(clientPoint) ?? []).filter((p) => (p.src === clientReal || p.dst === clientReal));
    check('client wire carries only ESP', clientWire.length > 0 && clientWire.every((p) => p.proto === 'esp'), `${clientWire.length} packets, ${clientWire.filter((p) => p.proto !== 'esp').length} not ESP`);
    const entryPoint = `${entry}:${nodes.get(entry)!.underlay.name}`;
    check('entry sees the client and not the destination', seen(entryPoint, clientReal) && !seen(entryPoint, dest), `client ${seen(entryPoint, clientReal) ? 'seen' : 'NOT seen'}, destination ${seen(entryPoint, dest) ? 'SEEN' : 'not seen'}`);
    const leaks = [...captured.keys()].filter((p) => p !== `${exit.name}:${exit.outside!.name}` && !p.startsWith('server(') && seen(p, dest));
    check('only the exit sees the destination', leaks.length === 0 && seen(`${exit.name}:${exit.outside!.name}`, dest), leaks.length ? `destination seen at ${leaks.join(', ')}` : 'destination seen only on the exit\'s outside link');
    const exitPoints = [`${exit.name}:${exit.underlay.name}`, `${exit.name}:${exit.outside!.name}`, `server(${def.name})`];
    const saw = exitPoints.filter((p) => seen(p, clientReal));
    check('exit and server never see the client', saw.length === 0, saw.length ? `client address seen at ${saw.join(', ')}` : 'client address absent');
    const srv = captured.get(`server(${def.name})`) ?? [];
    const others = [...new Set(srv.flatMap((p) => [p.src, p.dst]).filter((a) => a !== dest))];
    check('server sees only the exit', others.length === 1 && others[0] === exitOut, `server saw ${others.map(label).join(', ') || 'nothing'}`);

    // the capture as audit rows: a packet on a node's underlay port belongs to the wire between
    // its two underlay end-points; the exit's outside port and the server's port to theirs
    const serverPoint = `server:${formatDest(def.to[0]!)}`;
    const observed: Record<string, ObservedRow[]> = {};
    const expected: Record<string, ObservedRow[]> = {};
    for (const [point, rows] of Object.entries(model.observations)) {
      const mine = rows.filter((r) => r.circuit === def.name);
      if (mine.length > 0) {
        expected[point] = mine;
        observed[point] = [];
      }
    }
    const underlayPorts = new Map(rec.layout.nodes.map((n) => [n.underlay.hostVeth, n.name]));
    const text = (a: string) => {
      const c = book.classifyText(a);
      return { cls: c.cls, name: c.name, addr: c.cls === 'destination' ? c.name : a };
    };
    for (const p of pkts) {
      let point: string | undefined;
      const node = underlayPorts.get(p.iface);
      if (node) {
        const a = nodeByAddr.get(p.src);
        const b = nodeByAddr.get(p.dst);
        point = a && b ? wirePointId(a, b) : `port:${node}`;
      } else if (p.iface === exit.outside!.hostVeth) point = `outside:${exit.name}`;
      else if (p.iface === server.iface.hostVeth) point = serverPoint;
      if (!point) continue;
      const s = text(p.src);
      const d = text(p.dst);
      const row: ObservedRow = {
        circuit: def.name,
        srcClass: s.cls,
        dstClass: d.cls,
        src: s.addr,
        dst: d.addr,
        srcName: s.name,
        dstName: d.name,
        proto: p.proto === 'esp' ? 'esp' : 'clear',
        ...(p.spi ? { spi: p.spi } : {}),
      };
      const list = (observed[point] ??= []);
      if (!list.some((r) => rowKey(r) === rowKey(row))) list.push(row);
    }
    const modelDiff = compareObservations(expected, observed);
    check(
      "captures match audit's prediction",
      modelDiff.length === 0,
      modelDiff.length === 0
        ? `${Object.keys(expected).length} points, ${Object.values(expected).reduce((n, r) => n + r.length, 0)} address pairs as predicted`
        : modelDiff.map((d) => `${d.point}: missing [${d.missing.join('; ')}] unexpected [${d.unexpected.join('; ')}]`).join(' | '),
    );

    const observations: ObservationRow[] = [];
    for (const [point, pkts] of captured) {
      for (const p of pairs(pkts) as Pair[]) observations.push({ point, src: label(p.src), dst: label(p.dst), proto: p.proto, count: p.count });
    }
    for (const ch of checks) log(`${ch.ok ? 'PASS' : 'FAIL'} ${def.name}: ${ch.name} (${ch.detail})`);
    reports.push({ circuit: def.name, path: [c.client, ...c.hops, `dest(${def.name})`], checks, observations, observed, modelDiff, downloadBytes: bytes, downloadMBps: bytes / 1e6 / secs });
  }

  // a clean run raises no xfrm error counter anywhere (the fail-closed check below raises some
  // on purpose, so it comes after this read)
  const statAfter = await readXfrmStats(host, rec);
  for (const [node, c] of statAfter) {
    const nonzero = Object.entries(c).filter(([, v]) => v > 0);
    log(`  xfrm_stat ${node}: ${nonzero.length === 0 ? 'all zero' : nonzero.map(([k, v]) => `${k} ${v}`).join(', ')}`);
  }
  const rises = xfrmStatRises(statBefore, statAfter);
  const riseText = Object.entries(rises).map(([n, c]) => `${n}: ${Object.entries(c).map(([k, v]) => `${k} +${v}`).join(', ')}`);
  const nodeChecks: CheckResult[] = [
    {
      name: 'no xfrm error counter rose during the traffic checks (/proc/net/xfrm_stat, every node)',
      ok: riseText.length === 0,
      detail: riseText.length === 0 ? `${statAfter.size} nodes read before and after` : riseText.join('; '),
    },
  ];
  for (const ch of nodeChecks) log(`${ch.ok ? 'PASS' : 'FAIL'} ${ch.name} (${ch.detail})`);

  const failClosed = net.circuits.length > 0 ? await failClosedCheck(rec, host, state, log) : [];
  for (const ch of failClosed) log(`${ch.ok ? 'PASS' : 'FAIL'} ${ch.name} (${ch.detail})`);
  state = (await loadState(statePath)).state;
  const ok = reports.every((r) => r.checks.every((c) => c.ok)) && nodeChecks.every((c) => c.ok) && failClosed.every((c) => c.ok);
  return { ...(rec.kernel ? { kernel: rec.kernel } : {}), circuits: reports, nodes: nodeChecks, xfrmStatRises: rises, failClosed, ok };
}

/**
 * Deletes the innermost telescope SA of the first circuit on its client, checks that traffic to
 * the destination is dropped and never leaves in clear, then restores the circuit with
 * `onionctl apply`, which must re-create that SA on both ends with a new SPI and a new key
 * (never the old one).
 */
async function failClosedCheck(rec: LabRecord, host: LabHost, state: State, log: Log): Promise<CheckResult[]> {
  const net = await loadLabNet(rec);
  const def = net.circuits[0]!;
  const c = state.circuits[def.name]!;
  const k = c.hops.length;
  const client = rec.layout.nodes.find((n) => n.name === c.client)!;
  const exitName = c.hops[k - 1]!;
  const server = rec.layout.servers.find((s) => s.circuit === def.name)!;
  const dest = formatIPv4(server.iface.addr);
  const sa = c.fwd[k - 1]!;
  const out: CheckResult[] = [];
  const del = await nsExec(host, client.ns, ['ip', 'xfrm', 'state', 'delete', 'src', c.addrs[k - 1]!, 'dst', formatIPv4(net.nodes.get(exitName)!.underlay.addr), 'proto', 'esp', 'spi', `0x${sa.spi.toString(16)}`]);
  if (del.code !== 0) return [{ name: 'fail closed', ok: false, detail: `could not delete the SA: ${del.stderr.trim()}` }];
  const noStates0 = await xfrmStat(host, client.ns, 'XfrmOutNoStates');
  const cap = await startCapture(host, path.join(rec.dir, 'captures'), 'fail-closed');
  const ping = await nsExec(host, client.ns, ['ping', '-n', '-c', '3', '-i', '0.2', '-W', '1', dest]);
  const curl = await nsExec(host, client.ns, ['curl', '-sS', '-o', '/dev/null', '--max-time', '3', `http://${dest}/obj8.bin`]);
  const pkts = (await cap.stop()).filter((p) => p.iface === client.underlay.hostVeth);
  const noStates1 = await xfrmStat(host, client.ns, 'XfrmOutNoStates');
  const recv = Number(/(\d+) (?:packets )?received/.exec(ping.stdout)?.[1] ?? 0);
  const clear = pkts.filter((p) => p.dst === dest || p.src === dest || (p.proto !== 'esp' && p.src === formatIPv4(client.underlay.addr)));
  out.push({
    name: `fail closed (${def.name}, telescope SA hop ${k} deleted on ${client.name})`,
    ok: recv === 0 && curl.code !== 0 && clear.length === 0 && noStates1 > noStates0,
    detail: `${recv}/3 pings answered, download ${curl.code === 0 ? 'SUCCEEDED' : 'failed'}, ${clear.length} packets in clear on the wire, XfrmOutNoStates +${noStates1 - noStates0}`,
  });

  // restore with onionctl apply, as an admin would: the client lost an SA whose key it held, so
  // apply must re-create it on both ends with a new SPI and a new key (never the old one)
  const statePath = labStatePath(rec);
  let restored = '';
  try {
    await applyLab(rec, log, 'restoring the circuit');
  } catch (e) {
    restored = (e as Error).message;
  }
  const now = (await loadState(statePath)).state.circuits[def.name]!.fwd[k - 1]!;
  const old = sa;
  const ping2 = await nsExec(host, client.ns, ['ping', '-n', '-c', '3', '-i', '0.2', '-W', '2', dest]);
  const recv2 = Number(/(\d+) (?:packets )?received/.exec(ping2.stdout)?.[1] ?? 0);
  out.push({
    name: `circuit ${def.name} restored by onionctl apply with a fresh SA (SPI 0x${old.spi.toString(16)} -> 0x${now.spi.toString(16)}, epoch ${old.epoch} -> ${now.epoch})`,
    ok: recv2 >= 2 && now.spi !== old.spi && now.epoch > old.epoch && restored === '',
    detail: `${recv2}/3 pings answered${restored ? `; ${restored}` : ''}`,
  });
  log(`  fail-closed capture: ${pkts.length} packets on ${client.name}'s wire, all ESP: ${pkts.every((p) => p.proto === 'esp')}`);
  return out;
}

export function formatReport(r: LabTestReport): string {
  const out: string[] = [];
  for (const c of r.circuits) {
    out.push(`\nCircuit ${c.circuit}: ${c.path.join(' -> ')}  (10 MiB at ${c.downloadMBps.toFixed(2)} MB/s)`);
    out.push('  Captured on the wire (clear outer headers; same format as onionctl audit):');
    out.push(formatObservations(c.observed, { indent: '    ' }).trimEnd());
    if (c.modelDiff.length > 0) {
      out.push("  Differences from audit's prediction:");
      for (const d of c.modelDiff) out.push(`    ${d.point}: missing ${d.missing.join('; ') || '-'}; unexpected ${d.unexpected.join('; ') || '-'}`);
    }
  }
  if (r.kernel) out.unshift(`Kernel ${r.kernel.release}${r.kernel.xfrmInterface ? ' (xfrm_interface loaded)' : ''}; nf_tables for IPv4: ${r.kernel.nft ? 'yes' : 'no'}`);
  for (const c of r.nodes) out.push(`${c.ok ? 'PASS' : 'FAIL'} ${c.name}: ${c.detail}`);
  const all = [...r.circuits.flatMap((c) => c.checks), ...r.nodes, ...r.failClosed];
  const passed = all.filter((c) => c.ok).length;
  out.push('', `${passed} passed, ${all.length - passed} failed`);
  return out.join('\n') + '\n';
}
