/**
 * src/remote/read.ts: the one-shell read-back of a router.
 *   - parseReadOutput on output built with the real section markers (recorded command output
 *     from test/fixtures/readback), and readRouter through a fake transport;
 *   - readScript run for real by sh on this machine, with stand-ins for ip, iptables-save,
 *     iptables-legacy-save and nft on PATH that print the recorded output (or fail, or are
 *     absent): which iptables it picks, nft absent, sysctls read from /proc;
 *   - output cut short, a command that failed on the router, a failed shell: errors.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { observeNode } from '../../src/readback/observed.js';
import { parseReadOutput, readbackScriptFile, readNode, readScript, type ReadOptions } from '../../src/remote/read.js';
import { TransportError, type ExecOptions, type ExecResult, type Transport } from '../../src/remote/transport.js';
import { fixture, labNet, poolsOf } from '../helpers/readback.js';

/** readNode's raw read (what these tests look at); its objects are checked by readback.test.ts */
const readRouter = async (t: Transport, node: string, o: ReadOptions = {}) => (await readNode(t, node, o, { pools: [] })).read;

/** the marker line read.ts writes between sections (spelled out here on purpose) */
const sec = (name: string) => `@@onionctl@@ ${name}`;

const OR1 = {
  xfrmState: fixture('uml-6.1', 'or1', 'ip-s-xfrm-state'),
  xfrmPolicy: fixture('uml-6.1', 'or1', 'ip-xfrm-policy'),
  routes: fixture('uml-6.1', 'or1', 'ip-route-main'),
  addresses: fixture('uml-6.1', 'or1', 'ip-4-addr-lo'),
  iptablesLegacy: fixture('uml-6.1', 'or1', 'iptables-save'),
};
const HOST = { iptablesNft: fixture('host-6.18', 'r5', 'iptables-save'), nft: fixture('host-6.18', 'r6', 'nft-list-ruleset') };
const XFRM_STAT = fixture('uml-6.1', 'errB', 'proc-net-xfrm_stat');

/** what the remote shell prints for or1 (iptables-legacy, no nft), as read.ts's script prints it */
function or1Output(o: { end?: boolean; banner?: string } = {}): string {
  return [
    o.banner ?? '',
    `${sec('xfrmState')}\n${OR1.xfrmState}`,
    `${sec('xfrmPolicy')}\n${OR1.xfrmPolicy}`,
    `${sec('routes')}\n${OR1.routes}`,
    `${sec('addresses')}\n${OR1.addresses}`,
    `${sec('iptables')}\n@@variant iptables-legacy\n${OR1.iptablesLegacy}`,
    `${sec('nft')}\n@@nft none\n`,
    `${sec('sysctls')}\nnet.ipv4.ip_forward=1\nnet.ipv4.conf.all.rp_filter=2\nnet.ipv4.conf.eth9.rp_filter=\n`,
    `${sec('xfrmStat')}\n${XFRM_STAT}`,
    o.end === false ? '' : `${sec('end')}\n`,
  ].join('');
}

class ScriptedTransport implements Transport {
  readonly label = 'or1 (scripted)';
  calls: { argv: string[]; stdin: string }[] = [];
  constructor(private readonly answer: ExecResult) {}
  async exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    this.calls.push({ argv: [...argv], stdin: opts.stdin ?? '' });
    return this.answer;
  }
  async close(): Promise<void> {}
}

describe('parseReadOutput and readRouter on recorded output', () => {
  test('every section comes back as the command printed it; legacy iptables; no nft; sysctls; xfrm_stat', () => {
    const r = parseReadOutput(or1Output(), 'or1');
    expect(r.outputs.xfrmState).toBe(OR1.xfrmState);
    expect(r.outputs.xfrmPolicy).toBe(OR1.xfrmPolicy);
    expect(r.outputs.routes).toBe(OR1.routes);
    expect(r.outputs.addresses).toBe(OR1.addresses);
    expect(r.iptables).toEqual({ save: 'iptables-legacy-save', restore: 'iptables-legacy-restore' });
    expect(r.outputs.iptablesSave!.trimEnd()).toBe(OR1.iptablesLegacy.trimEnd());
    expect(r.nft).toBe(false);
    expect(r.outputs.nft).toBeUndefined();
    expect([...r.sysctls]).toEqual([
      ['net.ipv4.ip_forward', '1'],
      ['net.ipv4.conf.all.rp_filter', '2'],
      ['net.ipv4.conf.eth9.rp_filter', ''],
    ]);
    expect(r.xfrmStat!.trimEnd()).toBe(XFRM_STAT.trimEnd());
    // and it reads back into the same objects as the recorded files
    const net = labNet();
    const direct = observeNode('or1', { xfrmState: OR1.xfrmState, xfrmPolicy: OR1.xfrmPolicy, routes: OR1.routes, addresses: OR1.addresses, iptablesSave: OR1.iptablesLegacy }, { pools: poolsOf(net) });
    expect(observeNode('or1', r.outputs, { pools: poolsOf(net) })).toEqual(direct);
    expect(direct.states!.owned.length).toBeGreaterThan(0);
  });

  test('a banner or motd before the first marker is ignored', () => {
    const r = parseReadOutput(or1Output({ banner: 'Welcome to or1\n@@variant iptables\n' }), 'or1');
    expect(r.outputs.xfrmState).toBe(OR1.xfrmState);
    expect(r.iptables?.save).toBe('iptables-legacy-save');
  });

  test('readRouter runs one `sh -s` with the script on stdin (no key, no secret on the command line)', async () => {
    const t = new ScriptedTransport({ exitCode: 0, stdout: or1Output(), stderr: '' });
    const r = await readRouter(t, 'or1', { sysctlKeys: ['net.ipv4.ip_forward'], xfrmStat: true });
    expect(t.calls).toEqual([{ argv: ['sh', '-s'], stdin: readScript({ sysctlKeys: ['net.ipv4.ip_forward'], xfrmStat: true }) }]);
    expect(r.outputs.routes).toBe(OR1.routes);
    expect(t.calls[0]!.stdin).toContain('ip -s xfrm state');
    // the shipped script, after a header with this read's parameters
    expect(t.calls[0]!.stdin.startsWith("set -- 'net.ipv4.ip_forward' '/proc/sys/net/ipv4/ip_forward'\nONIONCTL_XFRM_STAT=1\n")).toBe(true);
    expect(t.calls[0]!.stdin.endsWith(readbackScriptFile())).toBe(true);
    expect(readScript().split('\n').slice(0, 2)).toEqual(['set --', 'ONIONCTL_XFRM_STAT=0']);
  });

  test('output cut short (no end marker) is an error, not a router that holds nothing', async () => {
    expect(() => parseReadOutput(or1Output({ end: false }), 'or1')).toThrow(/or1: reading the router back was cut short/);
    const cut = or1Output();
    expect(() => parseReadOutput(cut.slice(0, cut.indexOf(sec('routes'))), 'or1')).toThrow(TransportError);
    expect(() => parseReadOutput('', 'or1')).toThrow(/cut short/);
    await expect(readRouter(new ScriptedTransport({ exitCode: 0, stdout: or1Output({ end: false }), stderr: '' }), 'or1')).rejects.toThrow(/cut short/);
  });

  test('a section missing, or a command that failed on the router, is an error naming it', () => {
    const noRoutes = or1Output().replace(`${sec('routes')}\n${OR1.routes}`, '');
    expect(() => parseReadOutput(noRoutes, 'or1')).toThrow(/or1: read-back lacks routes/);
    const failed = or1Output().replace(`${sec('xfrmPolicy')}\n${OR1.xfrmPolicy}`, `${sec('xfrmPolicy')}\n@@onionctl-fail@@\n`);
    expect(() => parseReadOutput(failed, 'or1')).toThrow(/or1: reading xfrmPolicy failed on the router/);
  });

  test('a shell that fails reports the exit code and stderr', async () => {
    const t = new ScriptedTransport({ exitCode: 127, stdout: '', stderr: 'sh: 1: ip: not found\n' });
    await expect(readRouter(t, 'or1')).rejects.toThrow(/or1 \(scripted\): reading the router back failed \(exit 127\): sh: 1: ip: not found/);
  });

  test('a sysctl key that is not a plain name is refused (it is put in the script)', () => {
    expect(() => readScript({ sysctlKeys: ["net.ipv4.ip_forward'; rm -rf /; '"] })).toThrow(/bad sysctl key/);
    expect(() => readScript({ sysctlKeys: ['net/../../etc'] })).toThrow(/bad sysctl key/);
  });
});

// ------------------------------------------------------------------------------------------
// the script itself, run by sh with stand-in commands

interface Tools {
  /** ip's xfrm state / policy / route / addr output, or a failing ip */
  ip?: 'ok' | 'fail-state';
  /** iptables-save: absent, output (exit 0), or failing (exit code, stderr) */
  iptablesSave?: string | { exit: number; stderr: string };
  iptablesLegacySave?: string | { exit: number; stderr: string };
  nft?: string | { exit: number; stderr: string };
}

let root: string;
beforeAll(() => {
  root = mkdtempSync(path.join(os.tmpdir(), 'onionctl-read-'));
});
afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

let caseNo = 0;
/** a PATH directory with the stand-ins, then /usr/bin:/bin for sh's helpers (cat, grep): no real iptables or nft there */
function toolDir(t: Tools): string {
  const dir = path.join(root, `case${caseNo++}`);
  const data = path.join(dir, 'data');
  mkdirSync(data, { recursive: true });
  const tool = (name: string, body: string) => {
    // every stand-in notes its start in dir/calls (to count the processes the script starts)
    writeFileSync(path.join(dir, name), `#!/bin/sh\necho ${name} >> ${path.join(dir, 'calls')}\n${body}\n`);
    chmodSync(path.join(dir, name), 0o755);
  };
  const file = (name: string, text: string) => {
    writeFileSync(path.join(data, name), text);
    return path.join(data, name);
  };
  const xs = file('xfrm-state', OR1.xfrmState);
  const xp = file('xfrm-policy', OR1.xfrmPolicy);
  const rt = file('routes', OR1.routes);
  const ad = file('addr', OR1.addresses);
  tool(
    'ip',
    [
      'case "$*" in',
      `  "-s xfrm state") ${t.ip === 'fail-state' ? 'echo "RTNETLINK answers: Operation not permitted" >&2; exit 2' : `/bin/cat ${xs}`} ;;`,
      `  "xfrm policy") /bin/cat ${xp} ;;`,
      `  "route show table main") /bin/cat ${rt} ;;`,
      `  "-4 addr show dev lo") /bin/cat ${ad} ;;`,
      '  *) echo "unexpected ip $*" >&2; exit 9 ;;',
      'esac',
    ].join('\n'),
  );
  const standIn = (name: string, spec: Tools['nft'], check?: string) => {
    if (spec === undefined) return;
    if (typeof spec === 'string') tool(name, `${check ?? ''}/bin/cat ${file(name, spec)}`);
    else tool(name, `echo ${JSON.stringify(spec.stderr)} >&2; exit ${spec.exit}`);
  };
  standIn('iptables-save', t.iptablesSave);
  standIn('iptables-legacy-save', t.iptablesLegacySave);
  standIn('nft', t.nft, '[ "$*" = "list ruleset" ] || exit 9\n');
  tool('date', 'echo "2026-11-24 12:00:00"');
  return dir;
}

/**
 * runs commands with this machine's sh, PATH limited to the stand-ins and /usr/bin:/bin (sh's
 * helpers), or, with `standInsOnly`, to the stand-ins alone
 */
class LocalShTransport implements Transport {
  readonly label = 'local sh';
  constructor(
    private readonly pathDir: string,
    private readonly standInsOnly = false,
  ) {}
  async exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const PATH = this.standInsOnly ? this.pathDir : `${this.pathDir}:/usr/bin:/bin`;
    const cmd = argv[0] === 'sh' ? '/bin/sh' : argv[0]!;
    const r = await execa(cmd, argv.slice(1), { input: opts.stdin ?? '', reject: false, env: { PATH, LANG: 'C' }, extendEnv: false });
    return { exitCode: r.exitCode ?? 1, stdout: String(r.stdout), stderr: String(r.stderr) };
  }
  async close(): Promise<void> {}
}

const LEGACY_WARNING = '# Warning: iptables-legacy tables present, use iptables-legacy-save to see them\n';
const PLAIN_IPT = '*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n';

describe('readScript run by sh: which iptables, nft or not', () => {
  const read = (t: Tools, o: ReadOptions = {}) => readRouter(new LocalShTransport(toolDir(t)), 'or1', o);

  test('the stand-ins see exactly the commands the script is meant to run; sections round-trip', async () => {
    const r = await read({ iptablesLegacySave: OR1.iptablesLegacy });
    expect(r.outputs.xfrmState).toBe(OR1.xfrmState);
    expect(r.outputs.xfrmPolicy).toBe(OR1.xfrmPolicy);
    expect(r.outputs.routes).toBe(OR1.routes);
    expect(r.outputs.addresses).toBe(OR1.addresses);
  });

  test('only iptables-legacy-save (the UML guest): the legacy variant, its output', async () => {
    const r = await read({ iptablesLegacySave: OR1.iptablesLegacy });
    expect(r.iptables).toEqual({ save: 'iptables-legacy-save', restore: 'iptables-legacy-restore' });
    expect(r.outputs.iptablesSave!.trimEnd()).toBe(OR1.iptablesLegacy.trimEnd());
  });

  test('iptables-save holds onionctl\'s chains: the plain variant, even when legacy also works', async () => {
    const r = await read({ iptablesSave: HOST.iptablesNft, iptablesLegacySave: PLAIN_IPT });
    expect(HOST.iptablesNft).toMatch(/^:ONIONCTL-/m);
    expect(r.iptables).toEqual({ save: 'iptables-save', restore: 'iptables-restore' });
    expect(r.outputs.iptablesSave!.trimEnd()).toBe(HOST.iptablesNft.trimEnd());
  });

  test('onionctl\'s chains are in the legacy tables: legacy, even though iptables-save works', async () => {
    const r = await read({ iptablesSave: LEGACY_WARNING + PLAIN_IPT, iptablesLegacySave: OR1.iptablesLegacy });
    expect(r.iptables?.save).toBe('iptables-legacy-save');
    expect(r.outputs.iptablesSave!.trimEnd()).toBe(OR1.iptablesLegacy.trimEnd());
  });

  test('no chains of onionctl\'s yet: iptables-save, unless it warns that legacy tables are in use', async () => {
    expect((await read({ iptablesSave: PLAIN_IPT, iptablesLegacySave: PLAIN_IPT })).iptables?.save).toBe('iptables-save');
    expect((await read({ iptablesSave: LEGACY_WARNING + PLAIN_IPT, iptablesLegacySave: PLAIN_IPT })).iptables?.save).toBe('iptables-legacy-save');
  });

  test('iptables-save fails (kernel without nf_tables): legacy', async () => {
    const r = await read({ iptablesSave: { exit: 1, stderr: 'iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Invalid argument' }, iptablesLegacySave: PLAIN_IPT });
    expect(r.iptables?.save).toBe('iptables-legacy-save');
    expect(r.outputs.iptablesSave!.trimEnd()).toBe(PLAIN_IPT.trimEnd());
  });

  test('no iptables at all: none, and nothing to compare', async () => {
    const r = await read({});
    expect(r.iptables).toBeUndefined();
    expect(r.outputs.iptablesSave).toBeUndefined();
    // only iptables-save, failing
    const f = await read({ iptablesSave: { exit: 1, stderr: 'nope' } });
    expect(f.iptables).toBeUndefined();
  });

  test('nft absent, failing, present', async () => {
    const absent = await read({ iptablesLegacySave: PLAIN_IPT });
    expect(absent.nft).toBe(false);
    expect(absent.outputs.nft).toBeUndefined();
    const failing = await read({ iptablesLegacySave: PLAIN_IPT, nft: { exit: 1, stderr: 'Error: Could not process rule: Operation not supported' } });
    expect(failing.nft).toBe(false);
    expect(failing.outputs.nft).toBeUndefined();
    const present = await read({ iptablesSave: HOST.iptablesNft, nft: HOST.nft });
    expect(present.nft).toBe(true);
    expect(present.outputs.nft!.trimEnd()).toBe(HOST.nft.trimEnd());
    const net = labNet();
    expect(observeNode('r6', present.outputs, { pools: poolsOf(net) }).nft!.owned.chains.length).toBeGreaterThan(0);
  });

  test('sysctls are read from /proc/sys; a key this kernel lacks reads as empty', async () => {
    const keys = ['net.ipv4.ip_forward', 'net.ipv4.conf.all.rp_filter', 'net.ipv4.conf.nosuchif0.rp_filter'];
    const r = await read({ iptablesLegacySave: PLAIN_IPT }, { sysctlKeys: keys });
    expect([...r.sysctls.keys()]).toEqual(keys);
    expect(r.sysctls.get('net.ipv4.ip_forward')).toBe(readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8').trim());
    expect(r.sysctls.get('net.ipv4.conf.all.rp_filter')).toBe(readFileSync('/proc/sys/net/ipv4/conf/all/rp_filter', 'utf8').trim());
    expect(r.sysctls.get('net.ipv4.conf.nosuchif0.rp_filter')).toBe('');
  });

  test('the script starts only the commands that read: no grep, cat or pipeline; the legacy tables only when needed', async () => {
    // PATH holds the stand-ins and nothing else: a helper process (cat, grep, tr) would fail the read
    const only = async (t: Tools) => {
      const dir = toolDir(t);
      const r = await readRouter(new LocalShTransport(dir, true), 'or1', { sysctlKeys: ['net.ipv4.ip_forward', 'net.ipv4.conf.nosuchif0.rp_filter'] });
      return { r, calls: readFileSync(path.join(dir, 'calls'), 'utf8').trim().split('\n') };
    };
    const ip4 = ['ip', 'ip', 'ip', 'ip'];
    // onionctl's chains in iptables-save: iptables-legacy-save is not started
    const plain = await only({ iptablesSave: HOST.iptablesNft, iptablesLegacySave: PLAIN_IPT, nft: HOST.nft });
    expect(plain.calls).toEqual(['date', ...ip4, 'iptables-save', 'nft']);
    expect(plain.r.iptables?.save).toBe('iptables-save');
    expect(plain.r.clock).toBe('2026-11-24 12:00:00');
    expect(plain.r.sysctls.get('net.ipv4.ip_forward')).toBe(readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8').trim());
    expect(plain.r.sysctls.get('net.ipv4.conf.nosuchif0.rp_filter')).toBe('');
    // the UML guest: iptables-save fails, the legacy tables are read
    const legacy = await only({ iptablesSave: { exit: 1, stderr: 'no nf_tables' }, iptablesLegacySave: OR1.iptablesLegacy });
    expect(legacy.calls).toEqual(['date', ...ip4, 'iptables-save', 'iptables-legacy-save']);
    expect(legacy.r.iptables?.save).toBe('iptables-legacy-save');
    // a chain name that only appears inside a line is not a chain declaration
    const inside = await only({ iptablesSave: PLAIN_IPT.replace('COMMIT', '-A INPUT -m comment --comment "x:ONIONCTL-Y" -j ACCEPT\nCOMMIT'), iptablesLegacySave: OR1.iptablesLegacy });
    expect(inside.r.iptables?.save).toBe('iptables-legacy-save');
  });

  test('/proc/net/xfrm_stat on request', async () => {
    const r = await read({ iptablesLegacySave: PLAIN_IPT }, { xfrmStat: true });
    if (existsSync('/proc/net/xfrm_stat')) expect(r.xfrmStat!.trimEnd()).toBe(readFileSync('/proc/net/xfrm_stat', 'utf8').trimEnd());
    else expect(r.xfrmStat).toBe('');
    expect((await read({ iptablesLegacySave: PLAIN_IPT })).xfrmStat).toBeUndefined();
  });

  test('ip failing on the router is an error naming the section', async () => {
    await expect(read({ ip: 'fail-state', iptablesLegacySave: PLAIN_IPT })).rejects.toThrow(/reading xfrmState failed on the router/);
  });
});
