/**
 * SA options in a real kernel with ESP (a User-Mode Linux guest, see docs/lab-uml.md): the lines
 * stateLine renders with onionctl's lifetimes, replay windows, ESN and TFC padding are accepted
 * by `ip xfrm state add`, traffic flows through them, the kernel reports back what was planned
 * (the diff is empty), padding makes small and large packets the same size on the wire, and a
 * hard limit deletes the SA (the flow then fails closed).
 *
 *   nsA  lo 100.64.0.1/32   a0 192.0.2.1/24 ==veth== b0 192.0.2.2/24   lo 100.64.0.2/32  nsB
 *
 * One SA pair per combination: AES-GCM and AES-CBC/HMAC-SHA1, telescope (32-packet window, no
 * ESN) and overlay (ESN, 128), with and without tfcpad. Then every node of the padded lab plan
 * (states and policies) in a namespace of its own, read back and diffed.
 *
 * Keys come from randomBytes and reach the guest only on stdin. Needs root and user-mode-linux;
 * ONIONCTL_SKIP_LAB=1 skips it. With ONIONCTL_RECORD_SA_FIXTURES=DIR the read-back is also
 * written to DIR with every key replaced by zeros (test/fixtures/readback/uml-6.1-sa).
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { diffNode } from '../../src/diff/diff.js';
import { bootGuest, findGuestProcesses, type Guest } from '../../src/lab/uml.js';
import type { NodeConfig } from '../../src/model/config.js';
import { observeNode } from '../../src/readback/observed.js';
import { parseXfrmStates } from '../../src/readback/xfrm.js';
import { policyLine, stateLine } from '../../src/render/render.js';
import { PAD_SIZE, PAIR, PAIR_CASES, RandomKeys, padNet, padPlan, pairConfigs } from '../helpers/sa.js';
import { poolsOf } from '../helpers/readback.js';
import { describeKernels, kernelBoot, type LabKernel } from '../helpers/kernels.js';

const skip = process.env.ONIONCTL_SKIP_LAB === '1';
const d = skip ? describe.skip : describe;
const RECORD = process.env.ONIONCTL_RECORD_SA_FIXTURES;

const KEYLINE = /^(\s*(?:aead|enc|auth|auth-trunc|comp)\s+\S+\s+)0x([0-9a-fA-F]+)/;
/** the recorded text with every key replaced by zeros of the same length; refuses to leave a key-like run */
function zeroKeys(text: string): string {
  const out = text
    .split('\n')
    .map((l) => l.replace(KEYLINE, (_, pre: string, h: string) => `${pre}0x${'0'.repeat(h.length)}`))
    .join('\n');
  for (const m of out.matchAll(/[0-9a-fA-F]{17,}/g)) if (!/^0+$/.test(m[0])) throw new Error('a key-like hex run is left; not writing');
  return out;
}
function record(dir: string, file: string, text: string): void {
  if (!RECORD) return;
  fs.mkdirSync(path.join(RECORD, dir), { recursive: true });
  fs.writeFileSync(path.join(RECORD, dir, `${file}.txt`), zeroKeys(text));
}

describeKernels('sa-options', (k: LabKernel) => {
d('SA options in the UML kernel', () => {
  let dir: string;
  let g: Guest;
  const tag = randomBytes(2).toString('hex');
  const nsA = `sa${tag}A`;
  const nsB = `sa${tag}B`;

  const sh = async (script: string, stdin?: string) => {
    const r = await g.exec(['sh', '-c', script], stdin !== undefined ? { stdin } : {});
    if (r.exitCode !== 0) throw new Error(`${script.slice(0, 80)}: exit ${r.exitCode}: ${r.stderr.trim()}`);
    return r.stdout;
  };
  /** shell commands printing `ip -s xfrm state`, `ip xfrm state` and `ip xfrm policy` of a namespace */
  const readScript = (ns: string) => `ip -n ${ns} -s xfrm state; echo @@; ip -n ${ns} xfrm state; echo @@; ip -n ${ns} xfrm policy; echo @@@`;
  const splitRead = (out: string) => {
    const [stats, plain, policy] = out.split('@@\n') as [string, string, string];
    return { stats, plain, policy };
  };
  /** the read-back of several namespaces in one exec (process starts are slow in UML) */
  const readMany = async (nss: string[]) => (await sh(nss.map(readScript).join('; '))).split('@@@\n').slice(0, nss.length).map(splitRead);
  const batch = (cfg: NodeConfig, keys: RandomKeys) =>
    ['xfrm state flush', 'xfrm policy flush', ...cfg.states.map((s) => stateLine(s, keys, 'secret')), ...cfg.policies.map(policyLine), ''].join('\n');

  beforeAll(async () => {
    fs.mkdirSync('/var/tmp/onionctl-lab', { recursive: true, mode: 0o700 });
    dir = fs.mkdtempSync('/var/tmp/onionctl-lab/sa-');
    g = await bootGuest({ dir, timeoutMs: 90_000, ...kernelBoot(k) });
    // static neighbours and no IPv6, so the veth counters see only the ESP packets of the pings
    await sh(
      [
        `ip netns add ${nsA}`,
        `ip netns add ${nsB}`,
        ...[nsA, nsB].map((n) => `ip netns exec ${n} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1`),
        `ip -n ${nsA} link add a0 address 02:00:00:00:0a:01 type veth peer name b0 address 02:00:00:00:0b:01 netns ${nsB}`,
        `ip -n ${nsA} addr add ${PAIR.a}/24 dev a0`,
        `ip -n ${nsB} addr add ${PAIR.b}/24 dev b0`,
        `ip -n ${nsA} addr add ${PAIR.innerA}/32 dev lo`,
        `ip -n ${nsB} addr add ${PAIR.innerB}/32 dev lo`,
        ...[nsA, nsB].map((n) => `ip -n ${n} link set lo up`),
        `ip -n ${nsA} link set a0 up`,
        `ip -n ${nsB} link set b0 up`,
        `ip -n ${nsA} neigh replace ${PAIR.b} lladdr 02:00:00:00:0b:01 dev a0 nud permanent`,
        `ip -n ${nsB} neigh replace ${PAIR.a} lladdr 02:00:00:00:0a:01 dev b0 nud permanent`,
        `ip -n ${nsA} route add ${PAIR.innerB}/32 via ${PAIR.b} dev a0 src ${PAIR.innerA}`,
        `ip -n ${nsB} route add ${PAIR.innerA}/32 via ${PAIR.a} dev b0 src ${PAIR.innerB}`,
      ].join(' && '),
    );
  }, 150_000);

  afterAll(async () => {
    if (g?.isRunning()) await g.halt();
    if (dir && findGuestProcesses(dir).length === 0) fs.rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  for (const c of PAIR_CASES) {
    test(`${c.name}: accepted, traffic flows, read back as planned${c.tfcpad ? ', small and large packets padded alike' : ''}`, async () => {
      const keys = new RandomKeys();
      const { a, b } = pairConfigs(c);
      for (const [ns, cfg] of [[nsA, a], [nsB, b]] as const) {
        const r = await g.exec(['ip', '-n', ns, '-batch', '-'], { stdin: batch(cfg, keys) });
        expect({ ns, ...r }).toEqual({ ns, exitCode: 0, stdout: '', stderr: '' });
      }
      // 5 small and 5 larger pings; A's veth byte counter around each (requests only: A -> B)
      const tx = `cat /sys/class/net/a0/statistics/tx_bytes`;
      const out = await sh(
        `ip netns exec ${nsA} sh -c 'b0=$(${tx}); ping -c 5 -i 0.2 -W 2 -s 16 ${PAIR.innerB} >/dev/null; r1=$?; b1=$(${tx}); ` +
          `ping -c 5 -i 0.2 -W 2 -s 300 ${PAIR.innerB} >/dev/null; r2=$?; b2=$(${tx}); echo $r1 $r2 $((b1-b0)) $((b2-b1))'; ` +
          readScript(nsA) + '; ' + readScript(nsB),
      );
      const [first, ...rest] = out.split('\n');
      const reads = rest.join('\n').split('@@@\n').slice(0, 2).map(splitRead);
      const [r1, r2, small, large] = first!.trim().split(' ').map(Number) as [number, number, number, number];
      expect({ r1, r2 }).toEqual({ r1: 0, r2: 0 });
      if (c.tfcpad) {
        // every request is padded to the same length: the sizes collapse
        expect(large).toBe(small);
        expect(small).toBeGreaterThanOrEqual(5 * c.tfcpad);
      } else {
        expect(large - small).toBeGreaterThanOrEqual(5 * 284);
      }

      for (const [ns, cfg, node, x] of [[nsA, a, 'A', reads[0]!], [nsB, b, 'B', reads[1]!]] as const) {
        record(`${c.name}-${node.toLowerCase()}`, 'ip-s-xfrm-state', x.stats);
        record(`${c.name}-${node.toLowerCase()}`, 'ip-xfrm-state', x.plain);
        for (const text of [x.stats, x.plain]) {
          const o = observeNode(node, { xfrmState: text, xfrmPolicy: x.policy }, { pools: [] });
          expect({ ns, changes: diffNode(cfg, o, { keys }) }).toEqual({ ns, changes: [] });
        }
        const st = parseXfrmStates(x.stats);
        const fwd = st.find((s) => s.spi === c.spi)!;
        expect(fwd.lifetime).toEqual(cfg.states[0]!.lifetime);
        expect(fwd.flags.includes('esn')).toBe(c.kind === 'overlay');
        expect(fwd.replayWindow).toBe(cfg.states[0]!.replayWindow);
        expect(fwd.tfcpad).toBe(c.tfcpad);
        // 10 requests through A -> B, 10 replies back, no replay or integrity errors
        for (const s of st) {
          expect({ ns, spi: s.spi, packets: s.counters!.packets }).toEqual({ ns, spi: s.spi, packets: 10 });
          expect(s.counters).toMatchObject({ replayErrors: 0, replayWindowErrors: 0, integrityFailed: 0 });
        }
      }
    }, 60_000);
  }

  test('iproute2 refuses the ESN flag without a replay window', async () => {
    const keys = new RandomKeys();
    const s = { ...pairConfigs(PAIR_CASES[1]!).a.states[0]! };
    const line = stateLine({ ...s, replayWindow: 1 }, keys, 'secret').replace(' replay-window 1 ', ' ');
    const r = await g.exec(['ip', '-n', nsA, '-batch', '-'], { stdin: `xfrm state flush\n${line}\n` });
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/esn flag set without replay-window/);
  });

  test('a hard packet limit deletes the SA: the flow then fails closed', async () => {
    const keys = new RandomKeys();
    const { a, b } = pairConfigs(PAIR_CASES[0]!);
    a.states[0] = { ...a.states[0]!, lifetime: { soft: { packets: 2 }, hard: { packets: 3 } } };
    b.states[0] = a.states[0];
    for (const [ns, cfg] of [[nsA, a], [nsB, b]] as const) {
      expect((await g.exec(['ip', '-n', ns, '-batch', '-'], { stdin: batch(cfg, keys) })).exitCode).toBe(0);
    }
    const out = await sh(`ip netns exec ${nsA} ping -c 5 -i 0.2 -W 1 ${PAIR.innerB} || true`);
    expect(out).toMatch(/ 3 received/);
    // A -> B is gone (a larval "acquire" state with SPI 0 may stand in its place), B -> A is still there
    const [xa, xb] = await readMany([nsA, nsB]);
    const after = parseXfrmStates(xa!.stats).map((s) => s.spi);
    expect(after).not.toContain(a.states[0]!.spi);
    expect(after).toContain(a.states[1]!.spi);
    expect(parseXfrmStates(xb!.stats).map((s) => s.spi)).toContain(a.states[0]!.spi);
  }, 30_000);

  test('the padded lab plan, states and policies loaded node by node, reads back as no change', async () => {
    const plan = padPlan();
    const pools = poolsOf(padNet());
    const keys = new RandomKeys();
    const nodes = [...plan.configs.keys()];
    const nss = nodes.map((n) => `sa${tag}${n}`);
    await sh(nss.map((ns) => `ip netns add ${ns}`).join(' && '));
    try {
      for (const [i, node] of nodes.entries()) {
        const r = await g.exec(['ip', '-n', nss[i]!, '-batch', '-'], { stdin: batch(plan.configs.get(node)!, keys) });
        expect({ node, ...r }).toEqual({ node, exitCode: 0, stdout: '', stderr: '' });
      }
      const reads = await readMany(nss);
      for (const [i, node] of nodes.entries()) {
        const cfg = plan.configs.get(node)!;
        const x = reads[i]!;
        record(node, 'ip-s-xfrm-state', x.stats);
        record(node, 'ip-xfrm-state', x.plain);
        record(node, 'ip-xfrm-policy', x.policy);
        for (const text of [x.stats, x.plain]) {
          const o = observeNode(node, { xfrmState: text, xfrmPolicy: x.policy }, { pools });
          expect(o.states!.owned).toHaveLength(cfg.states.length);
          expect({ node, changes: diffNode(cfg, o, { keys }) }).toEqual({ node, changes: [] });
        }
        const padded = parseXfrmStates(x.stats).filter((s) => s.tfcpad !== undefined);
        expect(padded.length).toBe(cfg.states.filter((s) => s.tfcpad !== undefined).length);
        expect(padded.every((s) => s.tfcpad === PAD_SIZE)).toBe(true);
      }
    } finally {
      await g.exec(['sh', '-c', nss.map((ns) => `ip netns del ${ns}`).join('; ')]);
    }
  }, 60_000);
});
});
