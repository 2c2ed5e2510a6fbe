/**
 * `onionctl plan --live`, `apply`, `destroy` and `status` against real routers: the lab's nodes,
 * each with its own sshd and kernel network stack (User-Mode Linux here, this kernel where it has
 * ESP), reached over SSH with pinned host keys exactly like routers on a network (issue 4).
 *
 *   alice ──ov── or1 ──ov── or2 ──ov── or3 ══ outside ══ server      (examples/three-mixes.yaml)
 *
 * One lab, built once without configuration (`lab up --no-apply`), then these steps in order;
 * each asserts what the routers really hold afterwards:
 *   a  foreign xfrm state, xfrm policy and iptables rules (FORWARD, nat POSTROUTING) on or1 and alice
 *   b  plan --live exits 2 with "+" lines; apply while a /proc scanner watches every process of the
 *      routers' kernel: no SA key in any command line or environment; traffic flows
 *   c  a second apply changes nothing, plan --live exits 0; a held lock stops apply, --break-lock
 *   d  plan --out, a router changes, apply PLAN refuses naming it; a fresh plan --out + apply PLAN converge;
 *      a saved plan whose state was edited is refused as not authentic, nothing changes
 *   e  a router unreachable, a node refusing authentication, a router failing a command: the
 *      other router completes, the state stays valid; after repair the next apply converges
 *   f  SIGINT and SIGKILL during an apply: the next apply converges, traffic flows
 *   g  lab reboot or2: plan shows the drift on or2 only; apply restores it with new SPIs and keys
 *   g2 the state backed up, or2 rebooted and re-applied, rebooted again, the backup put back: apply
 *      refuses it (behind its high-water mark); --accept-restored-state installs only new keys
 *   h  status --json: paths, counters that grew with traffic, health ok
 *   i  destroy leaves no onionctl object and the foreign ones verbatim; a second destroy is a no-op
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execa } from 'execa';
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseXfrmStats } from '../../src/lab/check.js';
import { generateEd25519 } from '../../src/lab/run.js';
import { formatIPv4 } from '../../src/net/addr.js';
import { StateSchema } from '../../src/state/model.js';
import { EXAMPLES, STACK_LINE } from '../helpers/cli.js';
import {
  LabHandle,
  ONIONCTL_PRIORITY,
  ONIONCTL_SPI,
  iptablesRules,
  iptablesTables,
  leftovers,
  onionctl,
  parsePolicies,
  parseStates,
  pointerPath,
  start,
  startScanner,
  type Ran,
  type ScanResult,
} from '../helpers/lab.js';
import { describeKernels, type LabKernel } from '../helpers/kernels.js';

const MIN = 60_000;
const STEP = 12 * MIN;
const isRoot = process.getuid?.() === 0;
const skip = !isRoot || process.env.ONIONCTL_SKIP_LAB === '1';
const maybe = skip ? describe.skip : describe;
if (skip) console.warn('apply lab test skipped: it needs root (CI runs as root) and ONIONCTL_SKIP_LAB unset');

/** The foreign objects (not onionctl's) placed on these nodes before the first apply. */
const FOREIGN_NODES = ['or1', 'alice'] as const;
const FOREIGN_SPI = 0x00c0ffee;

/** A command's outcome in a form that shows everything when an expectation fails. */
const show = (r: Ran) => ({ code: r.code, signal: r.signal, stdout: r.stdout, stderr: r.stderr });

interface NodeView {
  states: ReturnType<typeof parseStates>;
  stateText: string;
  policyText: string;
  routes79: string;
  iptables: string;
  forward: string;
}

const viewScript = (lab: LabHandle) =>
  `ip xfrm state; echo @@; ip xfrm policy; echo @@; ip route show table all proto 79; echo @@; ${lab.iptables}-save; echo @@; cat /proc/sys/net/ipv4/ip_forward`;

function parseView(out: string): NodeView {
  const [stateText, policyText, routes79, iptables, forward] = out.split(/^@@$/m).map((s) => s.replace(/^\n/, ''));
  return { states: parseStates(stateText!), stateText: stateText!, policyText: policyText!, routes79: routes79!.trim(), iptables: iptables!, forward: forward!.trim() };
}

async function view(lab: LabHandle, node: string): Promise<NodeView> {
  return parseView(await lab.shOk(node, viewScript(lab)));
}

/** every node's view, in one round trip to the lab kernel */
async function viewAll(lab: LabHandle): Promise<Map<string, NodeView>> {
  const script = lab.nodes.map((n) => `echo '@@@ ${n}'; nsenter --net=/run/netns/${lab.node(n).ns} sh -c '${viewScript(lab)}' || exit 1`).join('\n');
  const r = await lab.root(['sh', '-c', script]);
  if (r.code !== 0) throw new Error(`reading the nodes failed: ${r.stderr}`);
  const m = new Map<string, NodeView>();
  for (const part of r.stdout.split(/^@@@ /m).slice(1)) {
    const nl = part.indexOf('\n');
    m.set(part.slice(0, nl), parseView(part.slice(nl + 1)));
  }
  return m;
}

/** onionctl's SPIs on a node */
const ownSpis = (v: NodeView) => v.states.filter((s) => ONIONCTL_SPI(s.spi)).map((s) => s.spi);

/** the lines of `plan --live` output under one node's heading */
function section(planText: string, node: string): string[] {
  const lines = planText.split('\n');
  const i = lines.findIndex((l) => l.startsWith(`${node}: `));
  if (i < 0) return [];
  const out = [lines[i]!];
  for (const l of lines.slice(i + 1)) {
    if (!/^\s/.test(l) || l.trim() === '') break;
    out.push(l);
  }
  return out;
}

function planCounts(text: string): { add: number; change: number; destroy: number } | undefined {
  const m = /Plan: (\d+) to add, (\d+) to change, (\d+) to destroy/.exec(text);
  return m ? { add: Number(m[1]), change: Number(m[2]), destroy: Number(m[3]) } : undefined;
}

/** traffic flows through the lab's circuit: at least 2 of 3 pings answered and the whole 20,000-byte object fetched */
async function expectTrafficFlows(lab: LabHandle): Promise<void> {
  const t = await lab.traffic();
  expect({ ok: t.replies >= 2 && t.bytes === 20000, detail: t.detail }).toEqual({ ok: true, detail: t.detail });
}

async function stateValid(file: string): Promise<boolean> {
  return StateSchema.safeParse(JSON.parse(await fs.readFile(file, 'utf8'))).success;
}

/** Starts `onionctl apply` and sends `sig` once it is pushing (a progress line after "Applying:"). */
async function interruptedApply(lab: LabHandle, sig: NodeJS.Signals): Promise<{ ran: Ran; sentAfter: string }> {
  const run = start(lab.ctlArgv('apply'));
  let mark = -1;
  let sentAfter = '';
  const end = Date.now() + 8 * MIN;
  for (;;) {
    const exited = await Promise.race([run.done.then(() => true), new Promise<false>((r) => setTimeout(() => r(false), 50))]);
    if (exited) break;
    if (mark < 0 && run.stdout().includes('Applying:')) mark = run.stderr().length;
    if (mark >= 0 && run.stderr().length > mark && run.stderr().slice(mark).includes('\n')) {
      sentAfter = run.stderr().slice(mark).split('\n')[0]!;
      run.child.kill(sig);
      break;
    }
    if (Date.now() > end) {
      run.child.kill('SIGKILL');
      break;
    }
  }
  return { ran: await run.done, sentAfter };
}

describeKernels('apply', (k: LabKernel) => {
maybe('apply, plan --live, destroy and status on the lab routers (one lab, steps in order)', () => {
  let tmp: string;
  let topo: string;
  let lab: LabHandle;
  let upOut = '';
  let p1 = '';
  /** what or1 and alice held before onionctl touched them */
  const before = new Map<string, NodeView>();
  /** every onionctl SA key seen on any node so far (hex) */
  const keysSeen = new Set<string>();

  const remember = (views: Map<string, NodeView>) => {
    for (const v of views.values()) for (const s of v.states) if (ONIONCTL_SPI(s.spi)) for (const k of s.keys) keysSeen.add(k);
  };
  const leaks = (text: string) => [...keysSeen].filter((k) => text.toLowerCase().includes(k) || text.includes(Buffer.from(k, 'hex').toString('base64').slice(0, 20)));

  beforeAll(async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'onionctl-apply-lab-'));
    topo = path.join(tmp, 'three-mixes.yaml');
    p1 = path.join(tmp, 'p1.json');
    await fs.copyFile(path.join(EXAMPLES, 'three-mixes.yaml'), topo);
    const up = await onionctl(['lab', 'up', topo, '--seed', '7', '--no-apply']);
    upOut = up.stderr;
    if (up.code !== 0) throw new Error(`lab up failed (exit ${up.code}):\n${up.stderr}`);
    lab = LabHandle.open(topo);
  }, 15 * MIN);

  afterAll(async () => {
    if (!topo) return;
    if (process.env.ONIONCTL_TEST_KEEP_LAB) {
      // for debugging a failed step: the lab stays up (onionctl lab down TOPOLOGY removes it)
      process.stderr.write(`ONIONCTL_TEST_KEEP_LAB: the lab stays up; remove it with: onionctl lab down ${topo}\n`);
      return;
    }
    const id = existsSync(pointerPath(topo)) ? readFileSync(pointerPath(topo), 'utf8').trim() : undefined;
    const down = await onionctl(['lab', 'down', topo]);
    expect(show(down)).toMatchObject({ code: 0 });
    if (id) expect(await leftovers(id)).toEqual([]);
    await fs.rm(tmp, { recursive: true, force: true });
  }, 5 * MIN);

  test('lab up --no-apply: topology.yaml with pinned host keys, the paths in lab.json and in the output, nodes unconfigured', async () => {
    const c = lab.ctl;
    for (const p of [c.topology, c.state, c.identity]) expect(upOut).toContain(p);
    const text = await fs.readFile(c.topology, 'utf8');
    for (const n of lab.rec.layout.nodes) expect(text).toContain(`host: ${formatIPv4(n.mgmt.addr)}\n`);
    expect(text).toMatch(/routeOptions:\s*\n\s+quickack: true/);
    expect((text.match(/hostKey: ssh-ed25519 AAAA/g) ?? []).length).toBe(lab.nodes.length);
    expect(((await fs.stat(c.topology)).mode & 0o777).toString(8)).toBe('600');
    expect(existsSync(c.state)).toBe(false);
    // lab exec: a command beside the controller, with the lab's paths in its environment
    const ex = await onionctl(['lab', 'exec', topo, '--', 'sh', '-c', 'echo "$ONIONCTL_LAB_DIR $ONIONCTL_LAB_TOPOLOGY"; ip -4 -o addr show']);
    expect(show(ex)).toMatchObject({ code: 0 });
    expect(ex.stdout).toContain(`${lab.rec.dir} ${c.topology}\n`);
    expect(ex.stdout).toContain(` ${formatIPv4(lab.rec.layout.controllerMgmt)}/`);
    for (const v of (await viewAll(lab)).values()) {
      expect(v.states).toEqual([]);
      expect(v.routes79).toBe('');
    }
  }, STEP);

  test('a: foreign xfrm state, xfrm policy and iptables rules placed on a router and a client', async () => {
    const ipt = lab.iptables;
    for (const node of FOREIGN_NODES) {
      const key = Buffer.from(os.hostname() + node).toString('hex').padEnd(40, '0').slice(0, 40); // not a secret: someone else's test SA
      await lab.shOk(
        node,
        [
          'ip -batch - <<EOF',
          `xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x${FOREIGN_SPI.toString(16)} reqid 7 mode tunnel aead 'rfc4106(gcm(aes))' 0x${key} 128`,
          'xfrm policy add src 192.0.2.10/32 dst 192.0.2.20/32 dir out priority 1000 tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 7 mode tunnel',
          'EOF',
          `${ipt} -A FORWARD -s 192.0.2.99/32 -j DROP`,
          `${ipt} -t nat -A POSTROUTING -s 192.0.2.98/32 -o eth0 -j MASQUERADE`,
        ].join('\n'),
      );
      const v = await view(lab, node);
      expect(v.states.map((s) => s.spi)).toEqual([FOREIGN_SPI]);
      expect(parsePolicies(v.policyText).map((p) => p.priority)).toEqual([1000]);
      expect(v.iptables).toContain('-A FORWARD -s 192.0.2.99/32 -j DROP');
      expect(v.iptables).toContain('-A POSTROUTING -s 192.0.2.98/32 -o eth0 -j MASQUERADE');
      before.set(node, v);
    }
  }, STEP);

  test('b: plan --live shows what apply adds (exit 2); apply leaves no key in any command line or environment; traffic flows', async () => {
    const plan = await lab.labCtl('plan', ['--live', '--detailed-exitcode']);
    expect(show(plan)).toMatchObject({ code: 2 });
    expect(plan.stdout).toMatch(/^\s+\+ state esp /m);
    expect(plan.stdout).toMatch(/^\s+\+ policy /m);
    expect(planCounts(plan.stdout)?.add).toBeGreaterThan(0);
    for (const n of lab.nodes) expect(section(plan.stdout, n)[0]).toMatch(new RegExp(`^${n}: \\d+ to add`));
    expect(existsSync(lab.ctl.state)).toBe(false); // plan --live never writes the state

    const scanner = await startScanner(lab);
    let scan: ScanResult;
    let apply: Ran;
    const marker = `scanner-self-test-${process.pid}-${Date.now()}`;
    let markerPid = '';
    try {
      // the scanner's own check: a process with a marker in its environment, alive for the whole
      // apply (a 3-second one was missed once when a scan round of a loaded guest took longer)
      const bg = await lab.root(['sh', '-c', 'sleep 600 >/dev/null 2>&1 </dev/null & echo $!'], { env: { ONIONCTL_SCAN_MARK: marker } });
      markerPid = bg.stdout.trim();
      apply = await lab.labCtl('apply');
    } finally {
      scan = await scanner.stop();
      if (/^\d+$/.test(markerPid)) await lab.root(['kill', markerPid]);
    }
    expect(show(apply)).toMatchObject({ code: 0 });
    expect(apply.stdout).toMatch(/Apply complete: \d+ added, \d+ changed, 0 destroyed on 4 of 4 nodes/);
    expect(apply.stderr).not.toMatch(STACK_LINE);

    const views = await viewAll(lab);
    remember(views);
    // every node got SAs; 12 distinct keys (3 overlay links and 3 hops, both directions), each
    // real key material (AES-GCM key and salt, at least 20 bytes)
    expect([...views].filter(([, v]) => ownSpis(v).length === 0).map(([n]) => n)).toEqual([]);
    expect(keysSeen.size).toBe(12);
    for (const k of keysSeen) expect(k).toMatch(/^[0-9a-f]{40,}$/);

    // the scanner was watching: it saw the ip -batch processes that carried the keys on stdin
    const ipBatch = scan.seen.filter((s) => /^cmdline: (\S*\/)?ip (-n \S+ )?-batch -$/.test(s));
    const selfTest = scan.seen.some((s) => s.startsWith('environ: ') && s.includes(`ONIONCTL_SCAN_MARK=${marker}`));
    expect({ rounds: scan.rounds > 10, ipBatch: ipBatch.length > 0, selfTest }).toEqual({ rounds: true, ipBatch: true, selfTest: true });
    const found = scan.seen.filter((s) => leaks(s).length > 0).map((s) => s.slice(0, 80));
    expect(found).toEqual([]);
    expect(leaks(apply.stdout + apply.stderr + plan.stdout + plan.stderr)).toEqual([]);
    for (const f of [lab.ctl.state, lab.ctl.topology, path.join(lab.rec.dir, 'lab.json')]) expect({ f, leaks: leaks(await fs.readFile(f, 'utf8')) }).toEqual({ f, leaks: [] });
    expect(((await fs.stat(lab.ctl.state)).mode & 0o777).toString(8)).toBe('600');

    // the foreign objects are still there, verbatim
    for (const node of FOREIGN_NODES) {
      const b = before.get(node)!;
      const v = views.get(node)!;
      expect(v.states.find((s) => s.spi === FOREIGN_SPI)?.text).toBe(b.states[0]!.text);
      expect(parsePolicies(v.policyText).find((p) => p.priority === 1000)?.text).toBe(parsePolicies(b.policyText)[0]!.text);
      const rules = iptablesRules(v.iptables);
      for (const r of iptablesRules(b.iptables).filter((l) => l.startsWith('-A '))) expect(rules).toContain(r);
    }
    await expectTrafficFlows(lab);
  }, STEP);

  test('c: a second apply changes nothing; plan --live exits 0; a held lock stops apply, --break-lock takes it', async () => {
    const spis = new Map([...(await viewAll(lab))].map(([n, v]) => [n, ownSpis(v).sort()]));
    // (the plan is saved for step d)
    const plan = await lab.labCtl('plan', ['--live', '--detailed-exitcode', '--out', p1]);
    expect(show(plan)).toMatchObject({ code: 0 });
    expect(planCounts(plan.stdout)).toEqual({ add: 0, change: 0, destroy: 0 });

    // a lock held by a live process (another admin's apply)
    const holder = execa('sleep', ['600']);
    const lockFile = `${lab.ctl.state}.lock`;
    const since = '2025-01-02T03:04:05.000Z';
    try {
      await fs.writeFile(lockFile, JSON.stringify({ user: 'mallory', host: os.hostname(), pid: holder.pid, since, command: 'apply elsewhere' }), { mode: 0o600 });
      const locked = await lab.labCtl('apply');
      expect(show(locked)).toMatchObject({ code: 1 });
      expect(locked.stderr).toContain(`mallory@${os.hostname()}`);
      expect(locked.stderr).toContain(since);
      expect(locked.stderr).toMatch(/--break-lock/);
      expect(locked.stderr).not.toMatch(STACK_LINE);
      expect(existsSync(lockFile)).toBe(true);

      const again = await lab.labCtl('apply', ['--break-lock']);
      expect(show(again)).toMatchObject({ code: 0 });
      expect(again.stderr).toMatch(/breaking the lock held by mallory@/);
      expect(again.stdout).toMatch(/No changes/);
      expect(existsSync(lockFile)).toBe(false);
    } finally {
      holder.kill();
      await holder.catch(() => undefined);
    }
    const after = new Map([...(await viewAll(lab))].map(([n, v]) => [n, ownSpis(v).sort()]));
    expect(after).toEqual(spis);
  }, STEP);

  test('d: apply PLANFILE refuses when a router changed since the plan, naming it; a fresh plan --out + apply PLANFILE converge', async () => {
    // p1: saved by step c's plan, when every router matched it
    expect(((await fs.stat(p1)).mode & 0o777).toString(8)).toBe('600');
    expect(leaks(await fs.readFile(p1, 'utf8'))).toEqual([]);

    const route = (await lab.shOk('or2', 'ip route show proto 79')).trim().split('\n')[0]!;
    const dst = route.split(' ')[0]!;
    expect(dst).toMatch(/^\d+\.\d+\.\d+\.\d+/);
    await lab.shOk('or2', `ip route del ${dst} proto 79`);

    const refused = await lab.labCtl('apply', [p1]);
    expect(show(refused)).toMatchObject({ code: 1 });
    const why = refused.stderr.split('\n').filter((l) => l.startsWith('onionctl: error:'));
    expect(why).toEqual([expect.stringMatching(/refusing to apply .*: since it was made, this router changed: or2\b/)]);
    expect(why[0]).not.toMatch(/\bor1\b|\bor3\b|\balice\b/);
    expect(await lab.shOk('or2', `ip route show ${dst} proto 79`)).toBe('');

    const p2 = path.join(tmp, 'p2.json');
    const plan2 = await lab.labCtl('plan', ['--live', '--out', p2, '--detailed-exitcode']);
    expect(show(plan2)).toMatchObject({ code: 2 });
    expect(section(plan2.stdout, 'or2').join('\n')).toContain(`+ route main ${dst}`);
    const applied = await lab.labCtl('apply', [p2]);
    expect(show(applied)).toMatchObject({ code: 0 });
    expect((await lab.shOk('or2', `ip route show ${dst} proto 79`)).trim()).toBe(route.trim());

    // a saved plan whose state was edited (the entry made the exit: or3 -> or2 -> or3) is not applied
    const p3 = path.join(tmp, 'p3.json');
    expect(show(await lab.labCtl('plan', ['--live', '--out', p3]))).toMatchObject({ code: 0 });
    const sealed = JSON.parse(await fs.readFile(p3, 'utf8')) as { plan: { state: { circuits: Record<string, { hops: string[] }> } } };
    const c = Object.values(sealed.plan.state.circuits)[0]!;
    c.hops = [c.hops[2]!, c.hops[1]!, c.hops[2]!];
    await fs.writeFile(p3, JSON.stringify(sealed, null, 2));
    const stateBefore = await fs.readFile(lab.ctl.state, 'utf8');
    const viewsBefore = await viewAll(lab);
    const forged = await lab.labCtl('apply', [p3]);
    expect(show(forged)).toMatchObject({ code: 1 });
    expect(forged.stderr).toMatch(/plan \S+p3\.json is not authentic: its MAC does not match/);
    expect(forged.stdout).not.toMatch(/Apply complete/);
    expect(await fs.readFile(lab.ctl.state, 'utf8')).toBe(stateBefore);
    const viewsAfter = await viewAll(lab);
    for (const n of lab.nodes) expect({ n, states: viewsAfter.get(n)!.stateText }).toEqual({ n, states: viewsBefore.get(n)!.stateText });
    await expectTrafficFlows(lab);
  }, STEP);

  test('e: unreachable, refusing and failing nodes report their errors while the others complete; after repair apply converges', async () => {
    // work for every node: onionctl's routes gone everywhere
    for (const n of lab.nodes) await lab.shOk(n, 'ip route flush proto 79');
    // or1 unreachable: its sshd stopped
    await lab.root(['sh', '-c', `kill "$(cat ${lab.rec.dir}/sshd-or1.pid)"`]);
    // alice refuses us: another key in its authorized_keys
    const ak = path.join(lab.rec.dir, 'ssh', 'alice_authorized_keys');
    const akSaved = await fs.readFile(ak, 'utf8');
    await fs.writeFile(ak, generateEd25519('someone-else').public + '\n', { mode: 0o600 });
    // or3's commands fail: its underlay interface renamed
    await lab.shOk('or3', 'ip link set eth0 down && ip link set eth0 name eth9 && ip link set eth9 up');
    let failed: Ran;
    try {
      failed = await lab.labCtl('apply');
    } finally {
      // sshd binds its port after it has gone to the background: wait for the listening socket
      await lab.shOk('or1', `/usr/sbin/sshd -r -f ${lab.rec.dir}/ssh/or1_sshd_config; i=0; until grep -q ':0016 00000000:0000 0A' /proc/net/tcp; do i=$((i+1)); [ $i -lt 600 ] || exit 1; sleep 0.1; done`);
      await fs.writeFile(ak, akSaved, { mode: 0o600 });
      await lab.shOk('or3', 'ip link set eth9 down && ip link set eth9 name eth0 && ip link set eth0 up');
    }
    expect(show(failed)).toMatchObject({ code: 1 });
    expect(failed.stdout).toMatch(/^or1: error: .*(refused|ECONNREFUSED|timed out)/m);
    expect(failed.stdout).toMatch(/^alice: error: .*authentication/m);
    expect(failed.stdout).toMatch(/^or3: error: .*eth0/m);
    expect(failed.stdout).not.toMatch(/^or2: error/m);
    expect(failed.stdout).toMatch(/Apply incomplete: .* on 1 of 4 nodes/);
    expect(failed.stdout).not.toMatch(/Apply complete/);
    expect(failed.stdout + failed.stderr).not.toMatch(STACK_LINE);
    expect(await stateValid(lab.ctl.state)).toBe(true);
    expect(existsSync(`${lab.ctl.state}.lock`)).toBe(false);
    // or2 was done, the others were left as they were
    const mid = await viewAll(lab);
    expect([...mid].map(([n, v]) => [n, v.routes79 !== ''])).toEqual([['or1', false], ['or2', true], ['or3', false], ['alice', false]]);

    // repaired: the next apply converges, and a plan after it has nothing to do
    const fixed = await lab.labCtl('apply');
    expect(show(fixed)).toMatchObject({ code: 0 });
    const plan = await lab.labCtl('plan', ['--live', '--detailed-exitcode']);
    expect(show(plan)).toMatchObject({ code: 0 });
    for (const [n, v] of await viewAll(lab)) expect({ n, routes: v.routes79 !== '' }).toEqual({ n, routes: true });
    await expectTrafficFlows(lab);
  }, STEP);

  test('f: an apply interrupted by SIGINT, and one killed by SIGKILL, converge on the next run', async () => {
    // work on every node: or2 and or3 lose all their SAs, policies and routes (so the SAs they
    // share with the others get new keys everywhere)
    for (const n of ['or2', 'or3']) await lab.shOk(n, 'ip xfrm policy flush && ip xfrm state flush && ip route flush proto 79');

    const int = await interruptedApply(lab, 'SIGINT');
    expect({ sentAfter: int.sentAfter !== '', ...show(int.ran) }).toMatchObject({ sentAfter: true, code: 130 });
    expect(int.ran.stdout + int.ran.stderr).toMatch(/Interrupted|SIGINT/);
    expect(int.ran.stderr).not.toMatch(STACK_LINE);
    expect(existsSync(`${lab.ctl.state}.lock`)).toBe(false);
    expect(await stateValid(lab.ctl.state)).toBe(true);
    const afterInt = await lab.labCtl('apply');
    expect(show(afterInt)).toMatchObject({ code: 0 });
    await expectTrafficFlows(lab);

    // a rebooted exit gives the next apply work on three nodes (its SAs get new keys)
    const reboot = await onionctl(['lab', 'reboot', topo, 'or3']);
    expect(show(reboot)).toMatchObject({ code: 0 });
    const kill = await interruptedApply(lab, 'SIGKILL');
    expect({ sentAfter: kill.sentAfter !== '', signal: kill.ran.signal }).toEqual({ sentAfter: true, signal: 'SIGKILL' });
    expect(existsSync(`${lab.ctl.state}.lock`)).toBe(true); // nobody could release it
    expect(await stateValid(lab.ctl.state)).toBe(true);
    const afterKill = await lab.labCtl('apply');
    expect(show(afterKill)).toMatchObject({ code: 0 });
    expect(afterKill.stderr).toMatch(/stale lock/);
    await expectTrafficFlows(lab);
    remember(await viewAll(lab));
  }, STEP);

  test('g: after a reboot of or2, plan shows its drift; apply restores it with new SPIs and keys for every SA it had; traffic flows', async () => {
    const pre = await viewAll(lab);
    remember(pre);
    const or2Spis = ownSpis(pre.get('or2')!);
    const or2Keys = pre.get('or2')!.states.filter((s) => ONIONCTL_SPI(s.spi)).flatMap((s) => s.keys);
    expect(or2Spis.length).toBeGreaterThan(0);

    const reboot = await onionctl(['lab', 'reboot', topo, 'or2']);
    expect(show(reboot)).toMatchObject({ code: 0 });
    const rebooted = await view(lab, 'or2');
    expect({ states: rebooted.states.length, routes: rebooted.routes79, forward: rebooted.forward, onionctlRules: /ONIONCTL/.test(rebooted.iptables) }).toEqual({ states: 0, routes: '', forward: '0', onionctlRules: false });

    const plan = await lab.labCtl('plan', ['--live', '--detailed-exitcode']);
    expect(show(plan)).toMatchObject({ code: 2 });
    const or2 = section(plan.stdout, 'or2');
    expect(or2[0]).toMatch(/^or2: \d+ to add/);
    expect(or2.join('\n')).toMatch(/\+ state esp/);
    expect(or2.join('\n')).toMatch(/sysctl net\.ipv4\.ip_forward: value 0 -> 1/);
    // the neighbours did not drift: what the plan does there is swapping the SAs they share with
    // or2 for new ones (new SPI, new key), nothing else
    for (const n of lab.nodes.filter((x) => x !== 'or2')) {
      const body = section(plan.stdout, n).slice(1);
      expect({ n, other: body.filter((l) => !/^\s+[+-] state esp /.test(l)) }).toEqual({ n, other: [] });
    }

    const apply = await lab.labCtl('apply');
    expect(show(apply)).toMatchObject({ code: 0 });
    const post = await viewAll(lab);
    const everywhere = new Set([...post.values()].flatMap(ownSpis));
    expect(or2Spis.filter((s) => everywhere.has(s))).toEqual([]); // no SA came back with its old SPI
    const or2After = post.get('or2')!.states.filter((s) => ONIONCTL_SPI(s.spi));
    expect(or2After.length).toBe(or2Spis.length);
    const newKeys = or2After.flatMap((s) => s.keys);
    expect(newKeys.filter((k) => keysSeen.has(k) || or2Keys.includes(k))).toEqual([]); // and none with a key used before
    remember(post);
    await expectTrafficFlows(lab);
  }, STEP);

  test('g2: back up the state, or2 reboots, apply, or2 reboots, the backup comes back: apply refuses it; --accept-restored-state installs only keys never seen', async () => {
    const stateFile = lab.ctl.state;
    const backup = await fs.readFile(stateFile, 'utf8');
    remember(await viewAll(lab));
    expect(show(await onionctl(['lab', 'reboot', topo, 'or2']))).toMatchObject({ code: 0 });
    expect(show(await lab.labCtl('apply'))).toMatchObject({ code: 0 });
    remember(await viewAll(lab));

    expect(show(await onionctl(['lab', 'reboot', topo, 'or2']))).toMatchObject({ code: 0 });
    await fs.writeFile(stateFile, backup);
    const refused = await lab.labCtl('apply');
    expect(show(refused)).toMatchObject({ code: 1 });
    expect(refused.stderr).toMatch(/is behind what was saved before \(serial \d+ < \d+/);
    expect(refused.stdout + refused.stderr).not.toMatch(STACK_LINE);
    expect(refused.stdout).not.toMatch(/Apply complete/);
    const pre = await viewAll(lab);
    expect(ownSpis(pre.get('or2')!)).toEqual([]); // nothing was applied
    expect(await fs.readFile(stateFile, 'utf8')).toBe(backup);

    const resumed = await lab.labCtl('apply', ['--accept-restored-state']);
    expect(show(resumed)).toMatchObject({ code: 0 });
    const post = await viewAll(lab);
    const before = new Set([...pre.values()].flatMap((v) => v.states.filter((s) => ONIONCTL_SPI(s.spi)).map((s) => `${s.spi}:${s.keys.join(',')}`)));
    const installed = [...post.values()].flatMap((v) => v.states.filter((s) => ONIONCTL_SPI(s.spi) && !before.has(`${s.spi}:${s.keys.join(',')}`)));
    expect(installed.length).toBeGreaterThanOrEqual(6); // or2's six SAs at least
    // no SA installed by this apply carries a key any node held before, at any step of this run
    expect(installed.flatMap((s) => s.keys).filter((k) => keysSeen.has(k))).toEqual([]);
    remember(post);
    await expectTrafficFlows(lab);
  }, 2 * STEP);

  test('h: status --json: each circuit\'s path, per-SA counters that grew with traffic, health ok', async () => {
    interface Status {
      format: string;
      health: string;
      circuits: { name: string; path: string[]; verdict: string; sas: { id: string; spi: string; ends: { node: string; state: string; packets?: number; bytes?: number }[] }[] }[];
    }
    // the kernel's own counters before the traffic, then status after it
    const script = lab.nodes.map((n) => `echo '@@@ ${n}'; nsenter --net=/run/netns/${lab.node(n).ns} ip -s xfrm state`).join('\n');
    const pre = await lab.root(['sh', '-c', script]);
    expect(pre.code).toBe(0);
    const counters = new Map<string, ReturnType<typeof parseXfrmStats>>();
    for (const part of pre.stdout.split(/^@@@ /m).slice(1)) counters.set(part.slice(0, part.indexOf('\n')), parseXfrmStats(part));
    const t = await lab.traffic();
    expect(t.bytes).toBe(20000);
    const r = await lab.labCtl('status', ['--json']);
    expect(show(r)).toMatchObject({ code: 0 });
    expect(leaks(r.stdout)).toEqual([]);
    const s2 = JSON.parse(r.stdout) as Status;
    expect(s2.format).toBe('onionctl-status/v1');
    expect(s2.health).toBe('ok');
    const state = StateSchema.parse(JSON.parse(await fs.readFile(lab.ctl.state, 'utf8')));
    const web = s2.circuits.find((c) => c.name === 'web')!;
    expect(web.path).toEqual([state.circuits.web!.client, ...state.circuits.web!.hops]);
    expect(web.path).toEqual(['alice', 'or1', 'or2', 'or3']);
    expect(web.verdict).toBe('ok');
    expect(web.sas.length).toBe(6); // 3 hops, forward and reverse
    const grew: string[] = [];
    const flat: string[] = [];
    for (const sa of web.sas) {
      for (const e of sa.ends) {
        expect({ sa: sa.id, node: e.node, state: e.state }).toEqual({ sa: sa.id, node: e.node, state: 'ok' });
        const b = counters.get(e.node)?.get(Number.parseInt(sa.spi, 16)) ?? { packets: -1, bytes: -1 };
        const ok = b.packets >= 0 && (e.packets ?? 0) > b.packets && (e.bytes ?? 0) > b.bytes;
        (ok ? grew : flat).push(`${sa.id}@${e.node}: ${b.packets}->${e.packets} packets, ${b.bytes}->${e.bytes} bytes`);
      }
    }
    expect(flat).toEqual([]);
    expect(grew.length).toBe(12);
  }, STEP);

  test('i: destroy removes every onionctl object and only those; a second destroy is a no-op', async () => {
    const d1 = await lab.labCtl('destroy');
    expect(show(d1)).toMatchObject({ code: 0 });
    expect(d1.stdout).toMatch(/Destroy complete: 0 added, 0 changed, \d+ destroyed on 4 of 4 nodes/);
    const views = await viewAll(lab);
    for (const [n, v] of views) {
      expect({
        n,
        spis: ownSpis(v),
        priorities: parsePolicies(v.policyText).map((p) => p.priority).filter(ONIONCTL_PRIORITY),
        routes: v.routes79,
        onionctl: v.iptables.split('\n').filter((l) => /ONIONCTL|onionctl/.test(l)),
      }).toEqual({ n, spis: [], priorities: [], routes: '', onionctl: [] });
    }
    for (const node of FOREIGN_NODES) {
      const b = before.get(node)!;
      const v = views.get(node)!;
      expect({ node, states: v.stateText }).toEqual({ node, states: b.stateText });
      expect({ node, policies: v.policyText }).toEqual({ node, policies: b.policyText });
      // every table that was there is as it was; a table onionctl brought in is empty again
      const was = iptablesTables(b.iptables);
      const now = iptablesTables(v.iptables);
      for (const [table, lines] of now) {
        if (was.has(table)) expect({ node, table, lines }).toEqual({ node, table, lines: was.get(table) });
        else expect({ node, table, rules: lines.filter((l) => !/^:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) ACCEPT \[\]$/.test(l) && l !== 'COMMIT') }).toEqual({ node, table, rules: [] });
      }
      for (const table of was.keys()) expect(now.has(table)).toBe(true);
    }
    const d2 = await lab.labCtl('destroy');
    expect(show(d2)).toMatchObject({ code: 0 });
    expect(d2.stdout).toMatch(/Nothing to destroy/);
  }, STEP);
});
});
