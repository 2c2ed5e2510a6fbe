/**
 * onionctl status (src/status, src/cli/status-command.ts), on recorded router output.
 *
 * Every router read here goes through the real read script: a fake Transport runs the script
 * that status sends (readScript, as readNode sends it) in /bin/sh with PATH set to a directory of fake `ip`, `date`,
 * `cat` and `iptables-legacy-save` that print the recorded fixtures of the UML lab
 * (test/fixtures/readback/uml-6.1, keys zeroed; see test/fixtures/status/README.md), so the
 * section markers, parseReadOutput, the xfrm parser and observeNode are all exercised.
 *
 * Scenarios: a healthy circuit; an SA missing on one end; an SA under another SPI; replay and
 * integrity errors, once and rising between two reads; xfrm_stat counters; ip_forward off; an
 * unreachable node; SA lifetimes; the JSON shape; and the command end to end (in-process with a
 * fake connector, and the built CLI as a child process).
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, promises as fs, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runStatus, storedConfigs } from '../../src/cli/status-command.js';
import type { NodeConfig, XfrmState } from '../../src/model/config.js';
import type { Connector } from '../../src/remote/fleet.js';
import { TransportError, type ExecOptions, type ExecResult, type Transport } from '../../src/remote/transport.js';
import { duration, formatStatus, statusJson, type StatusContext } from '../../src/status/format.js';
import { checkLifetime } from '../../src/status/lifetime.js';
import { sampleOf as sampleOfRead } from '../../src/status/read.js';
import { readNode, readScript } from '../../src/remote/read.js';
import { computeStatus, type NodeReading, type NodeSample, type StatusInput, type StatusReport } from '../../src/status/status.js';
import { packageRoot } from '../../src/util/files.js';
import { fixture, labNet, labPlan, poolsOf, UML_NODES } from '../helpers/readback.js';
import { run, SPAWN_TIMEOUT, STACK_LINE } from '../helpers/cli.js';

const CLOCK = '2026-11-24 07:58:19';
const CLEAN_STAT = fixture('uml-6.1', 'errA', 'proc-net-xfrm_stat');
const ERR_STAT = fixture('uml-6.1', 'errB', 'proc-net-xfrm_stat');

// ------------------------------------------------------------------------------------------
// a fake router: the recorded files, served to the real read script by fake programs

interface RouterFiles {
  /** ip -s xfrm state, ip xfrm policy, ip route show table main, ip -4 addr show dev lo, iptables-save */
  files: Record<string, string>;
  /** sysctl key -> value */
  sysctls: Record<string, string>;
  xfrmStat?: string;
  clock?: string;
}

let work: string;
let fakeBin: string;

const FAKE_IP = `#!/bin/sh
case "$*" in
  "-s xfrm state") f=ip-s-xfrm-state ;;
  "xfrm policy") f=ip-xfrm-policy ;;
  "route show table main") f=ip-route-main ;;
  "-4 addr show dev lo") f=ip-4-addr-lo ;;
  *) echo "fake ip: unexpected: $*" >&2; exit 1 ;;
esac
[ -f "$FIX/$f.txt" ] || { echo "fake ip: no $f" >&2; exit 1; }
exec /bin/cat "$FIX/$f.txt"
`;
const FAKE_CAT = `#!/bin/sh
case "$1" in
  /proc/net/xfrm_stat) [ -f "$FIX/xfrm_stat.txt" ] && exec /bin/cat "$FIX/xfrm_stat.txt"; exit 1 ;;
  *) exec /bin/cat "$@" ;;
esac
`;
const FAKE_DATE = `#!/bin/sh
[ "$1" = '+%Y-%m-%d %H:%M:%S' ] || { echo "fake date: unexpected: $*" >&2; exit 1; }
echo "$FAKE_CLOCK"
`;
const FAKE_IPT = `#!/bin/sh
[ -f "$FIX/iptables-save.txt" ] && exec /bin/cat "$FIX/iptables-save.txt"; exit 1
`;

beforeAll(() => {
  work = mkdtempSync(path.join(os.tmpdir(), 'onionctl-status-'));
  fakeBin = path.join(work, 'bin');
  mkdirSync(fakeBin);
  for (const [name, text] of [
    ['ip', FAKE_IP],
    ['cat', FAKE_CAT],
    ['date', FAKE_DATE],
    ['iptables-legacy-save', FAKE_IPT],
  ] as const) {
    writeFileSync(path.join(fakeBin, name), text, { mode: 0o755 });
  }
});

afterAll(() => rmSync(work, { recursive: true, force: true }));

let dirNo = 0;
function routerDir(r: RouterFiles): string {
  const dir = path.join(work, `r${dirNo++}`);
  mkdirSync(dir);
  for (const [f, text] of Object.entries(r.files)) writeFileSync(path.join(dir, `${f}.txt`), text);
  if (r.xfrmStat !== undefined) writeFileSync(path.join(dir, 'xfrm_stat.txt'), r.xfrmStat);
  for (const [k, v] of Object.entries(r.sysctls)) {
    const p = path.join(dir, 'sys', ...k.split('.'));
    mkdirSync(path.dirname(p), { recursive: true });
    writeFileSync(p, `${v}\n`);
  }
  return dir;
}

/** A Transport that runs what status sends in a local /bin/sh against the fake programs. */
class FakeRouter implements Transport {
  readonly label: string;
  readonly commands: { argv: readonly string[]; stdin: string }[] = [];
  private readonly dir: string;
  constructor(
    readonly node: string,
    r: RouterFiles,
  ) {
    this.label = `${node} (fake)`;
    this.dir = routerDir(r);
    this.clock = r.clock ?? CLOCK;
  }
  private readonly clock: string;
  async exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    this.commands.push({ argv, stdin: opts.stdin ?? '' });
    if (argv.join(' ') !== 'sh -s') throw new Error(`unexpected command ${argv.join(' ')}`);
    try {
      const stdout = execFileSync('/bin/sh', ['-s'], {
        // sysctls are read with the shell's `read` builtin: point it at the fixture's files
        input: (opts.stdin ?? '').replaceAll("'/proc/sys/", `'${this.dir}/sys/`),
        env: { PATH: fakeBin, FIX: this.dir, FAKE_CLOCK: this.clock },
        encoding: 'utf8',
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      return { exitCode: 0, stdout, stderr: '' };
    } catch (e) {
      const x = e as { status?: number; stdout?: string; stderr?: string };
      return { exitCode: x.status ?? 1, stdout: x.stdout ?? '', stderr: x.stderr ?? '' };
    }
  }
  async close(): Promise<void> {}
}

const plan = labPlan();
const net = labNet();
const cfg = (node: string): NodeConfig => plan.configs.get(node)!;

/** The recorded router as the lab left it, with its planned sysctls and a clean xfrm_stat. */
function recorded(node: string): RouterFiles {
  const f = (c: string) => fixture('uml-6.1', node, c);
  return {
    files: {
      'ip-s-xfrm-state': f('ip-s-xfrm-state'),
      'ip-xfrm-policy': f('ip-xfrm-policy'),
      'ip-route-main': f('ip-route-main'),
      'ip-4-addr-lo': f('ip-4-addr-lo'),
      'iptables-save': f('iptables-save'),
    },
    sysctls: Object.fromEntries(cfg(node).sysctls.map((s) => [s.key, s.value])),
    xfrmStat: CLEAN_STAT,
  };
}

// each read spawns a few shells: the same files read again give the same sample (never mutated)
const samples = new Map<string, Promise<NodeSample>>();
function sampleOf(node: string, r: RouterFiles): Promise<NodeSample> {
  const k = JSON.stringify([node, r]);
  let s = samples.get(k);
  if (!s) {
    s = readNode(new FakeRouter(node, r), node, { sysctlKeys: cfg(node).sysctls.map((x) => x.key), xfrmStat: true }, { pools: poolsOf(net) }).then(sampleOfRead);
    samples.set(k, s);
  }
  return s;
}

type Edit = (node: string, r: RouterFiles) => RouterFiles | 'unreachable';

async function readingsOf(edit: Edit = (_n, r) => r): Promise<Map<string, NodeReading>> {
  const out = new Map<string, NodeReading>();
  for (const node of UML_NODES) {
    const r = edit(node, recorded(node));
    if (r === 'unreachable') out.set(node, { node, ok: false, error: `${node} (198.51.100.x:22): connect ECONNREFUSED` });
    else out.set(node, { node, ok: true, sample: await sampleOf(node, r) });
  }
  return out;
}

function statusOf(readings: Map<string, NodeReading>, extra: Partial<StatusInput> = {}): StatusReport {
  return computeStatus({ state: plan.state, configs: plan.configs, readings, ...extra });
}

/** the planned SA with this identity */
function plannedSa(id: string): XfrmState {
  for (const c of plan.configs.values()) for (const s of c.states) if (s.key.id === id) return s;
  throw new Error(`no SA ${id}`);
}
const hex = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;

/** `ip xfrm state` text, one block per SA: apply fn to the block of the SA with this SPI */
function editBlock(text: string, spi: number, fn: (block: string) => string | undefined): string {
  const blocks = text.split(/\n(?=src )/);
  let hit = 0;
  const out = blocks.flatMap((b) => {
    if (!b.includes(`spi ${hex(spi)}(`)) return [b];
    hit++;
    const r = fn(b);
    return r === undefined ? [] : [r];
  });
  if (hit !== 1) throw new Error(`SPI ${hex(spi)} found ${hit} times`);
  return out.join('\n').replace(/\n*$/, '\n');
}

/** what the recorded text says about the SA with this SPI (independent of the parser) */
function recordedCounters(node: string, spi: number): { bytes: number; packets: number; added: string } {
  let found: { bytes: number; packets: number; added: string } | undefined;
  editBlock(fixture('uml-6.1', node, 'ip-s-xfrm-state'), spi, (b) => {
    const m = /(\d+)\(bytes\), (\d+)\(packets\)\n\s+add (\S+ \S+)/.exec(b)!;
    found = { bytes: Number(m[1]), packets: Number(m[2]), added: m[3]! };
    return b;
  });
  return found!;
}

const ctx: StatusContext = { topology: 'three-mixes.yaml', stateFile: 'three-mixes.state.json', stateSerial: plan.state.serial, readAt: '2026-11-24T07:58:19.000Z', notes: [] };

const HOP2_FWD = 'circuit:web:g1:hop2:fwd';

// ------------------------------------------------------------------------------------------

describe('a healthy circuit (the lab as recorded after traffic)', () => {
  let report: StatusReport;
  beforeAll(async () => {
    report = statusOf(await readingsOf());
  });

  test('circuit web is ok: path, every telescope SA present on both ends with the recorded counters', () => {
    expect(report.health).toBe('ok');
    expect(report.exitCode).toBe(0);
    expect(report.problems).toEqual([]);
    const c = report.circuits.find((x) => x.name === 'web')!;
    expect(c.verdict).toBe('ok');
    expect(c.path).toEqual(['alice', ...plan.state.circuits.web!.hops]);
    expect(c.sas.map((s) => s.label)).toEqual(['hop 1 forward', 'hop 1 reverse', 'hop 2 forward', 'hop 2 reverse', 'hop 3 forward', 'hop 3 reverse']);
    for (const s of c.sas) {
      const p = plannedSa(s.id);
      expect(s.spi).toBe(hex(p.spi));
      expect(s.ends).toHaveLength(2);
      for (const e of s.ends) {
        expect(e.state).toBe('ok');
        const rec = recordedCounters(e.node, p.spi);
        expect({ node: e.node, packets: e.packets, bytes: e.bytes }).toEqual({ node: e.node, packets: rec.packets, bytes: rec.bytes });
        expect(e.added).toBe(rec.added);
        expect(e.errors).toEqual({ replayWindow: 0, replay: 0, integrity: 0 });
        // the router's clock came through the read: age = clock - add time
        expect(e.ageSeconds).toBe((Date.parse(CLOCK.replace(' ', 'T') + 'Z') - Date.parse(rec.added.replace(' ', 'T') + 'Z')) / 1000);
      }
      // traffic went through: both ends counted packets
      expect(s.ends.every((e) => (e.packets ?? 0) > 0)).toBe(true);
    }
  });

  test('roles: the client sends forward SAs and receives reverse ones; overlay A>B is sent by A', () => {
    const c = report.circuits[0]!;
    const hop1 = c.hops[0]!;
    expect(c.sas[0]!.ends.map((e) => [e.node, e.role])).toEqual([['alice', 'send'], [hop1, 'receive']]);
    expect(c.sas[1]!.ends.map((e) => [e.node, e.role])).toEqual([[hop1, 'send'], ['alice', 'receive']]);
    const l = report.links.find((x) => x.a === 'alice' || x.b === 'alice')!;
    for (const s of l.sas) {
      const [from] = s.label.replace('overlay ', '').split('->');
      expect(s.ends[0]).toMatchObject({ node: from, role: 'send' });
    }
  });

  test('overlay links along the path and policies on every node are as planned', () => {
    const c = report.circuits[0]!;
    expect(c.overlay.map((o) => o.link)).toHaveLength(c.path.length - 1);
    expect(c.overlay.every((o) => o.verdict === 'ok')).toBe(true);
    expect(report.links.map((l) => l.verdict)).toEqual(Object.keys(plan.state.links).map(() => 'ok'));
    for (const p of c.policies) expect({ node: p.node, present: p.present, missing: p.missing, differs: p.differs }).toEqual({ node: p.node, present: p.planned, missing: [], differs: [] });
    expect(c.policies.map((p) => p.node).sort()).toEqual([...c.path].sort());
  });

  test('nodes: reachable, xfrm_stat all zero, nothing extra', () => {
    expect(report.nodes.map((n) => n.node).sort()).toEqual([...UML_NODES].sort());
    for (const n of report.nodes) expect(n).toMatchObject({ reachable: true, xfrmStat: {}, extraSas: 0, findings: [], clock: CLOCK });
  });

  test('text: the path on one line, one row per SA end, Health: ok', () => {
    const text = formatStatus(report, ctx);
    const c = report.circuits[0]!;
    expect(text).toContain(`Circuit web: ${c.path.join(' -> ')} => ${c.to.join(', ')}   OK`);
    const p = plannedSa(HOP2_FWD);
    const rec = recordedCounters(c.hops[1]!, p.spi);
    expect(text).toMatch(new RegExp(`hop 2 forward\\s+${hex(p.spi)}\\s+alice\\s+send\\s+ok`));
    const age = report.circuits[0]!.sas.find((s) => s.id === HOP2_FWD)!.ends[1]!.ageSeconds;
    expect(age).toBeGreaterThan(60);
    expect(text).toMatch(new RegExp(`\\n\\s+${c.hops[1]}\\s+recv\\s+ok\\s+${rec.packets}\\s+${rec.bytes}\\s+0\\s+${duration(age)}\\n`));
    expect(text).toContain('xfrm_stat all zero');
    expect(text).toMatch(/\nHealth: ok \(circuits: 1 ok\)\n$/);
  });
});

describe('problems', () => {
  const hop2 = () => plan.state.circuits.web!.hops[1]!;

  test('an SA missing on one end: the circuit is down, exit 1, the other end still reports', async () => {
    const p = plannedSa(HOP2_FWD);
    const r = statusOf(
      await readingsOf((node, f) => (node === hop2() ? { ...f, files: { ...f.files, 'ip-s-xfrm-state': editBlock(f.files['ip-s-xfrm-state']!, p.spi, () => undefined) } } : f)),
    );
    const c = r.circuits[0]!;
    expect(c.verdict).toBe('down');
    expect(r.health).toBe('down');
    expect(r.exitCode).toBe(1);
    const s = c.sas.find((x) => x.id === HOP2_FWD)!;
    expect(s.verdict).toBe('down');
    expect(s.ends.map((e) => [e.node, e.state])).toEqual([['alice', 'ok'], [hop2(), 'missing']]);
    expect(s.ends[0]!.packets).toBe(recordedCounters('alice', p.spi).packets);
    expect(c.sas.filter((x) => x.id !== HOP2_FWD).every((x) => x.verdict === 'ok')).toBe(true);
    expect(c.findings).toEqual([expect.objectContaining({ severity: 'down', code: 'sa-missing', node: hop2(), sa: HOP2_FWD })]);
    expect(c.findings[0]!.message).toContain(`hop 2 forward (spi ${hex(p.spi)}) is missing on ${hop2()}`);
    const text = formatStatus(r, ctx);
    expect(text).toMatch(/Circuit web: .*DOWN\n/);
    expect(text).toMatch(new RegExp(`${hop2()}\\s+recv\\s+MISSING`));
    expect(text).toMatch(/\nHealth: down \(circuits: 1 down\)\n$/);
  });

  test('an SA there under another SPI (same reqid) is down too, and shows the SPI found', async () => {
    const p = plannedSa(HOP2_FWD);
    const other = 0x4f0000ee;
    const r = statusOf(
      await readingsOf((node, f) =>
        node === hop2()
          ? { ...f, files: { ...f.files, 'ip-s-xfrm-state': editBlock(f.files['ip-s-xfrm-state']!, p.spi, (b) => b.replace(`spi ${hex(p.spi)}(${p.spi})`, `spi ${hex(other)}(${other})`)) } }
          : f,
      ),
    );
    const e = r.circuits[0]!.sas.find((x) => x.id === HOP2_FWD)!.ends[1]!;
    expect(e).toMatchObject({ node: hop2(), state: 'spi-differs', observedSpi: hex(other) });
    expect(r.circuits[0]!.verdict).toBe('down');
    // the SA under the wrong SPI is not in the plan: counted as extra on that node
    expect(r.nodes.find((n) => n.node === hop2())!.extraSas).toBe(1);
  });

  const withErrors = (replay: number, failed: number, packets?: number) => (node: string, f: RouterFiles): RouterFiles => {
    if (node !== hop2()) return f;
    const p = plannedSa(HOP2_FWD);
    return {
      ...f,
      files: {
        ...f.files,
        'ip-s-xfrm-state': editBlock(f.files['ip-s-xfrm-state']!, p.spi, (b) => {
          let out = b.replace(/replay-window 0 replay 0 failed 0/, `replay-window 0 replay ${replay} failed ${failed}`);
          if (packets !== undefined) out = out.replace(/(\d+)\(bytes\), (\d+)\(packets\)/, (_m, by: string) => `${Number(by) + 1000}(bytes), ${packets}(packets)`);
          return out;
        }),
      },
    };
  };

  test('replay and integrity errors on an SA (errB\'s recorded counts): warning, circuit degraded, exit 0', async () => {
    const r = statusOf(await readingsOf(withErrors(13, 4)));
    const c = r.circuits[0]!;
    expect(c.verdict).toBe('degraded');
    expect(r.health).toBe('degraded');
    expect(r.exitCode).toBe(0);
    const e = c.sas.find((x) => x.id === HOP2_FWD)!.ends[1]!;
    expect(e.errors).toEqual({ replayWindow: 0, replay: 13, integrity: 4 });
    expect(e.findings).toEqual([expect.objectContaining({ severity: 'warn', code: 'sa-errors' })]);
    expect(e.findings[0]!.message).toContain('13 replayed, 4 failed integrity');
    expect(formatStatus(r, ctx)).toMatch(/replay 13 integrity 4/);
  });

  test('two reads: errors that rose are a warning with the increase; errors that stood still are not', async () => {
    const p = plannedSa(HOP2_FWD);
    const before = await readingsOf(withErrors(13, 4));
    const rising = await readingsOf(withErrors(21, 4, recordedCounters(hop2(), p.spi).packets + 50));
    const still = await readingsOf(withErrors(13, 4, recordedCounters(hop2(), p.spi).packets + 50));
    const join = (later: Map<string, NodeReading>) =>
      new Map(
        [...later].map(([n, r]) => {
          const b = before.get(n)!;
          return [n, r.ok && b.ok ? { ...r, earlier: b.sample } : r] as const;
        }),
      );

    const r1 = statusOf(join(rising), { intervalSeconds: 5 });
    const e1 = r1.circuits[0]!.sas.find((x) => x.id === HOP2_FWD)!.ends[1]!;
    expect(e1.delta).toEqual({ packets: 50, bytes: 1000, replayWindow: 0, replay: 8, integrity: 0, seconds: 5 });
    expect(e1.findings).toEqual([expect.objectContaining({ severity: 'warn', code: 'sa-errors-rising' })]);
    expect(e1.findings[0]!.message).toContain('+8 replayed in 5s');
    expect(r1.circuits[0]!.verdict).toBe('degraded');
    expect(r1.intervalSeconds).toBe(5);
    expect(formatStatus(r1, ctx)).toMatch(/replay 21 integrity 4 \(\+8\)/);

    const r2 = statusOf(join(still), { intervalSeconds: 5 });
    const e2 = r2.circuits[0]!.sas.find((x) => x.id === HOP2_FWD)!.ends[1]!;
    expect(e2.delta).toMatchObject({ packets: 50, replay: 0, integrity: 0 });
    expect(e2.findings).toEqual([expect.objectContaining({ severity: 'info', code: 'sa-errors' })]);
    expect(r2.circuits[0]!.verdict).toBe('ok');
    expect(r2.health).toBe('ok');
  });

  test('xfrm_stat counters (errB\'s recorded file): a node warning, health degraded, circuit verdict unchanged', async () => {
    const r = statusOf(await readingsOf((node, f) => (node === hop2() ? { ...f, xfrmStat: ERR_STAT } : f)));
    const n = r.nodes.find((x) => x.node === hop2())!;
    const expected = Object.fromEntries(
      ERR_STAT.split('\n')
        .map((l) => l.trim().split(/\s+/))
        .filter((x) => x.length === 2 && x[1] !== '0')
        .map(([k, v]) => [k!, Number(v)]),
    );
    expect(Object.keys(expected).length).toBeGreaterThan(0);
    expect(n.xfrmStat).toEqual(expected);
    expect(n.findings.map((f) => [f.severity, f.code])).toEqual(Object.keys(expected).map(() => ['warn', 'xfrm-stat']));
    expect(r.circuits[0]!.verdict).toBe('ok');
    expect(r.health).toBe('degraded');
    expect(r.exitCode).toBe(0);
    expect(formatStatus(r, ctx)).toContain(`xfrm_stat ${Object.entries(expected).map(([k, v]) => `${k} ${v}`).join(', ')}`);

    // read twice with the same counters: not moving, so not a warning
    const later = await readingsOf((node, f) => (node === hop2() ? { ...f, xfrmStat: ERR_STAT } : f));
    const first = await readingsOf((node, f) => (node === hop2() ? { ...f, xfrmStat: ERR_STAT.replace(/XfrmInStateSeqError(\s+)13/, 'XfrmInStateSeqError$19') } : f));
    const joined = new Map([...later].map(([k, v]) => [k, v.ok && first.get(k)!.ok ? { ...v, earlier: (first.get(k) as { sample: NodeSample }).sample } : v] as const));
    const r2 = statusOf(joined, { intervalSeconds: 10 });
    const n2 = r2.nodes.find((x) => x.node === hop2())!;
    expect(n2.xfrmStatRising).toEqual({ XfrmInStateSeqError: 4 });
    expect(n2.findings.filter((f) => f.severity === 'warn')).toEqual([expect.objectContaining({ code: 'xfrm-stat-rising' })]);
    expect(n2.findings.find((f) => f.severity === 'info')!.message).toContain('XfrmInStateProtoError 4');
  });

  test('ip_forward off on a mix (a reboot): the circuit through it is down', async () => {
    const r = statusOf(await readingsOf((node, f) => (node === hop2() ? { ...f, sysctls: { ...f.sysctls, 'net.ipv4.ip_forward': '0' } } : f)));
    expect(r.circuits[0]!.verdict).toBe('down');
    expect(r.circuits[0]!.findings).toEqual([expect.objectContaining({ code: 'sysctl', node: hop2(), severity: 'down' })]);
    expect(r.circuits[0]!.findings[0]!.message).toContain('net.ipv4.ip_forward is 0, planned 1');
  });

  test('an unreachable node: its circuit is unknown, the SA ends there are not read, health down, exit 1', async () => {
    const exit = plan.state.circuits.web!.hops[2]!;
    const r = statusOf(await readingsOf((node, f) => (node === exit ? 'unreachable' : f)));
    expect(r.circuits[0]!.verdict).toBe('unknown');
    expect(r.health).toBe('down');
    expect(r.exitCode).toBe(1);
    const n = r.nodes.find((x) => x.node === exit)!;
    expect(n).toMatchObject({ reachable: false, error: expect.stringContaining('ECONNREFUSED') });
    const s = r.circuits[0]!.sas.find((x) => x.hop === 3 && x.direction === 'forward')!;
    expect(s.ends.map((e) => e.state)).toEqual(['ok', 'unknown']);
    // the other hops' SAs were still read
    expect(r.circuits[0]!.sas.filter((x) => x.hop !== 3).every((x) => x.verdict === 'ok')).toBe(true);
    const text = formatStatus(r, ctx);
    expect(text).toMatch(new RegExp(`${exit}\\s+UNREACHABLE: .*ECONNREFUSED`));
    expect(text).toMatch(/\nHealth: down \(circuits: 1 unknown; 1 node unreachable\)\n$/);
  });

  test('a missing policy is down; a missing fail-closed block policy is a warning', async () => {
    const drop = (pred: (blockText: string) => boolean) => (node: string, f: RouterFiles): RouterFiles =>
      node === 'alice' ? { ...f, files: { ...f.files, 'ip-xfrm-policy': f.files['ip-xfrm-policy']!.split(/\n(?=src )/).filter((b) => !pred(b)).join('\n').replace(/\n*$/, '\n') } } : f;
    const r1 = statusOf(await readingsOf(drop((b) => /dir in priority 20225 /.test(b))));
    expect(r1.circuits[0]!.verdict).toBe('down');
    expect(r1.circuits[0]!.findings.map((f) => f.code)).toEqual(['policy-missing']);
    const r2 = statusOf(await readingsOf(drop((b) => /action block/.test(b))));
    expect(r2.circuits[0]!.verdict).toBe('degraded');
    expect(r2.circuits[0]!.findings.map((f) => f.code)).toEqual(['block-policy-missing']);
    // a missing nested in policy: replies die on kernels with xfrm_interface, so the circuit is down
    const r3 = statusOf(await readingsOf(drop((b) => /dir in priority 20224 /.test(b) && /^src 198\.51\.100\.12\/32 /.test(b))));
    expect(r3.circuits[0]!.verdict).toBe('down');
    expect(r3.circuits[0]!.findings.map((f) => [f.code, f.message])).toEqual([
      ['policy-missing', 'circuit web: policy in 198.51.100.12/32 -> 100.64.2.1/32 proto esp is missing on alice'],
    ]);
  });
});

describe('lifetimes', () => {
  test('checkLifetime: below, past soft, past hard; infinite limits are no limits', () => {
    expect(checkLifetime({ soft: { bytes: Infinity } }, { bytes: 5 })).toBeUndefined();
    expect(checkLifetime({ soft: { bytes: 1000, addSeconds: 3600 }, hard: { bytes: 2000 } }, { bytes: 500, ageSeconds: 900 })).toEqual({
      soft: { bytes: 1000, addSeconds: 3600 },
      hard: { bytes: 2000 },
      softUsed: 0.5,
    });
    const past = checkLifetime({ soft: { packets: 100, useSeconds: 60 } }, { packets: 150, usedForSeconds: 61 })!;
    expect(past.pastSoft).toBe('packets 150 >= 100, seconds since first use 61 >= 60');
    expect(past.pastHard).toBeUndefined();
    expect(checkLifetime({ hard: { addSeconds: 10 } }, { ageSeconds: 10 })!.pastHard).toBe('seconds since added 10 >= 10');
  });

  test('limits the router reports ("lifetime config") are checked by default: past soft on one end is a warning there', async () => {
    const p = plannedSa(HOP2_FWD);
    const hop2 = plan.state.circuits.web!.hops[1]!;
    const r = statusOf(
      await readingsOf((node, f) =>
        node === hop2
          ? {
              ...f,
              files: {
                ...f.files,
                'ip-s-xfrm-state': editBlock(f.files['ip-s-xfrm-state']!, p.spi, (b) =>
                  b.replace('limit: soft (INF)(bytes), hard (INF)(bytes)', 'limit: soft 1000(bytes), hard 1000000000(bytes)').replace('expire add: soft 0(sec), hard 0(sec)', 'expire add: soft 60(sec), hard 604800(sec)'),
                ),
              },
            }
          : f,
      ),
    );
    const [alice, there] = r.circuits[0]!.sas.find((x) => x.id === HOP2_FWD)!.ends;
    expect(alice!.lifetime).toBeUndefined(); // the recorded SA has no limits (INF, 0 s)
    expect(there!.lifetime).toMatchObject({ soft: { bytes: 1000, addSeconds: 60 }, hard: { bytes: 1000000000, addSeconds: 604800 } });
    expect(there!.lifetime!.pastSoft).toBe(`bytes ${there!.bytes} >= 1000, seconds since added ${there!.ageSeconds} >= 60`);
    expect(there!.lifetime!.pastHard).toBeUndefined();
    expect(there!.findings).toEqual([expect.objectContaining({ severity: 'warn', code: 'sa-soft-limit', node: hop2 })]);
    expect(r.circuits[0]!.verdict).toBe('degraded');
    expect(r.exitCode).toBe(0);
  });

  test('an SA past its soft limit is a warning (lifetime check injected)', async () => {
    const p = plannedSa(HOP2_FWD);
    const readings = await readingsOf();
    const r = statusOf(readings, {
      lifetime: (o, usage) => (o.spi === p.spi ? checkLifetime({ soft: { packets: 100 } }, usage) : undefined),
    });
    const ends = r.circuits[0]!.sas.find((x) => x.id === HOP2_FWD)!.ends;
    for (const e of ends) {
      expect(e.lifetime?.pastSoft).toBe(`packets ${e.packets} >= 100`);
      expect(e.findings).toEqual([expect.objectContaining({ severity: 'warn', code: 'sa-soft-limit' })]);
    }
    expect(r.circuits[0]!.verdict).toBe('degraded');
    expect(formatStatus(r, ctx)).toContain('past soft limit');
  });
});

describe('--json', () => {
  test('shape "onionctl-status/v1": per-SA counters per end, per-circuit verdict; no key material', async () => {
    const p = plannedSa(HOP2_FWD);
    const r = statusOf(await readingsOf());
    const j = JSON.parse(JSON.stringify(statusJson(r, ctx))) as Record<string, unknown>;
    expect(Object.keys(j)).toEqual(['format', 'topology', 'stateFile', 'stateSerial', 'readAt', 'health', 'exitCode', 'problems', 'notes', 'circuits', 'links', 'nodes']);
    expect(j).toMatchObject({ format: 'onionctl-status/v1', health: 'ok', exitCode: 0, stateSerial: plan.state.serial });
    const c = (j.circuits as { name: string; verdict: string; path: string[]; sas: { id: string; spi: string; ends: Record<string, unknown>[] }[] }[])[0]!;
    expect(c).toMatchObject({ name: 'web', verdict: 'ok', path: ['alice', ...plan.state.circuits.web!.hops] });
    const s = c.sas.find((x) => x.id === HOP2_FWD)!;
    expect(s.spi).toBe(hex(p.spi));
    const hop2 = plan.state.circuits.web!.hops[1]!;
    const rec = recordedCounters(hop2, p.spi);
    expect(s.ends[1]).toMatchObject({ node: hop2, role: 'receive', state: 'ok', packets: rec.packets, bytes: rec.bytes, errors: { replayWindow: 0, replay: 0, integrity: 0 } });
    expect(Object.keys(s.ends[1]!).sort()).toEqual(['added', 'ageSeconds', 'bytes', 'errors', 'findings', 'firstUsed', 'node', 'packets', 'role', 'state', 'usedForSeconds'].sort());
    const links = j.links as { name: string; verdict: string; sas: unknown[] }[];
    expect(links.every((l) => l.verdict === 'ok' && l.sas.length === 2)).toBe(true);
    // no key, no fingerprint: no long hex run anywhere
    expect(JSON.stringify(j)).not.toMatch(/[0-9a-f]{12,}/i);
  });
});

// ------------------------------------------------------------------------------------------
// the command

describe('onionctl status (runStatus with a fake connector)', () => {
  let dir: string;
  let topo: string;
  let stateFile: string;
  beforeAll(async () => {
    dir = path.join(work, 'cli');
    mkdirSync(dir);
    topo = path.join(dir, 'three-mixes.yaml');
    await fs.copyFile(path.join(packageRoot(), 'examples', 'three-mixes.yaml'), topo);
    stateFile = path.join(dir, 'three-mixes.state.json');
    await fs.writeFile(stateFile, JSON.stringify(plan.state, null, 2) + '\n', { mode: 0o600 });
  });

  const connectorWith = (edit: Edit, seen: FakeRouter[] = []) => async (): Promise<Connector> => async (node: string) => {
    const r = edit(node, recorded(node));
    if (r === 'unreachable') throw new TransportError(node, `${node} (198.51.100.x:22): connect ECONNREFUSED`);
    const t = new FakeRouter(node, r);
    seen.push(t);
    return t;
  };

  test('healthy: exit 0, text and JSON; one command per node, the script on stdin; the state file untouched and no secret created', async () => {
    const before = await fs.readFile(stateFile, 'utf8');
    const seen: FakeRouter[] = [];
    const r = await runStatus(topo, {}, { connector: connectorWith((_n, f) => f, seen) });
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^Status of .*three-mixes\.yaml \(state .*three-mixes\.state\.json, serial \d+\): 4 of 4 nodes read\n/);
    expect(r.stdout).toMatch(/\nHealth: ok/);
    expect(seen.map((t) => t.node).sort()).toEqual([...UML_NODES].sort());
    for (const t of seen) {
      expect(t.commands).toHaveLength(1);
      expect(t.commands[0]!.argv).toEqual(['sh', '-s']);
      expect(t.commands[0]!.stdin).toBe(readScript({ sysctlKeys: cfg(t.node).sysctls.map((s) => s.key), xfrmStat: true }));
    }
    const j = await runStatus(topo, { json: true }, { connector: connectorWith((_n, f) => f) });
    const doc = JSON.parse(j.stdout) as { format: string; health: string; circuits: { verdict: string; sas: { ends: { packets: number }[] }[] }[] };
    expect(doc.format).toBe('onionctl-status/v1');
    expect(doc.circuits[0]!.verdict).toBe('ok');
    expect(doc.circuits[0]!.sas.flatMap((s) => s.ends.map((e) => e.packets)).every((n) => n > 0)).toBe(true);
    expect(await fs.readFile(stateFile, 'utf8')).toBe(before);
    expect(existsSync(path.join(dir, 'three-mixes.secret'))).toBe(false);
  });

  test('--interval reads twice over the same connections and reports what moved', async () => {
    let reads = 0;
    const p = plannedSa(HOP2_FWD);
    const hop2 = plan.state.circuits.web!.hops[1]!;
    const bump = (text: string) => editBlock(text, p.spi, (b) => b.replace(/replay-window 0 replay 0 failed 0/, 'replay-window 0 replay 3 failed 0'));
    const slept: number[] = [];
    // one FakeRouter per node (Sessions keeps the connection); the second read sees new files
    const connector = async (): Promise<Connector> => async (node: string) => {
      const base = recorded(node);
      const later = node === hop2 ? { ...base, files: { ...base.files, 'ip-s-xfrm-state': bump(base.files['ip-s-xfrm-state']!) } } : base;
      const first = new FakeRouter(node, base);
      const second = new FakeRouter(node, later);
      return {
        label: node,
        exec: (argv, o) => (reads++ < UML_NODES.length ? first : second).exec(argv, o),
        close: async () => {},
      } satisfies Transport;
    };
    const r = await runStatus(topo, { interval: 7, json: true }, { connector, sleep: async (ms) => void slept.push(ms) });
    expect(slept).toEqual([7000]);
    expect(reads).toBe(2 * UML_NODES.length);
    const doc = JSON.parse(r.stdout) as StatusReport & { intervalSeconds: number };
    expect(doc.intervalSeconds).toBe(7);
    const e = doc.circuits[0]!.sas.find((s) => s.id === HOP2_FWD)!.ends.find((x) => x.node === hop2)!;
    expect(e.delta).toMatchObject({ replay: 3, packets: 0, seconds: 7 });
    expect(e.findings.map((f) => f.code)).toEqual(['sa-errors-rising']);
    expect(r.code).toBe(0);
  });

  test('an unreachable node: exit 1, stderr names it, no stack trace; the others are still read', async () => {
    const r = await runStatus(topo, {}, { connector: connectorWith((n, f) => (n === 'or3' ? 'unreachable' : f)) });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('onionctl: status: or3: or3 (198.51.100.x:22): connect ECONNREFUSED');
    expect(r.stderr).toContain('circuit web is unknown');
    expect(r.stdout).toMatch(/3 of 4 nodes read/);
    expect(r.stdout).toMatch(/\nHealth: down/);
    expect(r.stdout + r.stderr).not.toMatch(STACK_LINE);
  });

  test('a router whose read-back is cut short counts as not read', async () => {
    const connector = async (): Promise<Connector> => async (node: string) => {
      const t = new FakeRouter(node, recorded(node));
      return {
        label: node,
        exec: async (argv, o) => {
          const res = await t.exec(argv, o);
          return node === 'or1' ? { ...res, stdout: res.stdout.slice(0, res.stdout.indexOf('@@onionctl@@ end')) } : res;
        },
        close: async () => {},
      } satisfies Transport;
    };
    const r = await runStatus(topo, { json: true }, { connector });
    const doc = JSON.parse(r.stdout) as StatusReport;
    expect(doc.nodes.find((n) => n.node === 'or1')).toMatchObject({ reachable: false, error: expect.stringContaining('cut short') });
    expect(r.code).toBe(1);
  });

  test('no state file: a clear error (nothing was applied)', async () => {
    await expect(runStatus(topo, { state: path.join(dir, 'none.json') }, { connector: connectorWith((_n, f) => f) })).rejects.toThrow(/no state file .*none\.json: nothing has been applied/);
  });

  test('storedConfigs: a circuit whose stored path names a router that left the topology is noted, not checked', () => {
    const s = structuredClone(plan.state);
    s.circuits.web!.hops = ['or1', 'gone', 'or3'];
    const r = storedConfigs(net, s);
    expect(r.circuits).toEqual([]);
    expect(r.notes.join('\n')).toMatch(/circuit web: the stored path alice -> or1 -> gone -> or3 no longer fits the topology \(gone left\): not checked/);
    expect(storedConfigs(net, plan.state).circuits).toEqual(['web']);
  });
});

describe('the built CLI', () => {
  test(
    'status with an identity that does not exist: every node unreachable, exit 1, "Health: down", no stack',
    async () => {
      const dir = mkdtempSync(path.join(work, 'bin-'));
      const topo = path.join(dir, 'three-mixes.yaml');
      writeFileSync(topo, readFileSync(path.join(packageRoot(), 'examples', 'three-mixes.yaml')));
      writeFileSync(path.join(dir, 'three-mixes.state.json'), JSON.stringify(plan.state), { mode: 0o600 });
      const r = await run(['status', topo, '--identity', path.join(dir, 'no-such-key'), '--connect-timeout', '2']);
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(/0 of 4 nodes read/);
      expect(r.stdout).toMatch(/\nHealth: down/);
      expect(r.stderr).toMatch(/onionctl: status: or1: .*no-such-key/);
      expect(r.stdout + r.stderr).not.toMatch(STACK_LINE);
      const bad = await run(['status', topo, '--interval', '0']);
      expect(bad.code).toBe(1); // a usage error: 1 (2 only means "changes" with --detailed-exitcode)
      expect(bad.stderr).toContain('a whole number of seconds from 1 to 3600');
    },
    SPAWN_TIMEOUT,
  );
});
