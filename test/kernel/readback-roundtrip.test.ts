/**
 * Round trip against the running kernel: plan -> render -> load into network namespaces ->
 * read back with the commands apply will run -> parse -> diff against the plan = NO changes,
 * with foreign objects loaded first around onionctl's. Then drift made by hand in the kernel
 * shows up as exactly the changes that would undo it.
 *
 *   one namespace per node (as in policy-load.test.ts: veths whose peers stay inside the same
 *   namespace, so nothing touches the host):
 *     foreign objects  -> ip -batch, iptables-restore --noflush, nft -f
 *     NAME.ip minus its `xfrm state` lines (this kernel has no ESP) -> ip -n NS -batch -
 *     NAME.iptables -> iptables-restore --noflush (or iptables-legacy-restore), NAME.nft -> nft -f
 *     read back: ip xfrm policy, ip route show table main, ip -4 addr show dev lo,
 *                iptables-save (same variant), nft list ruleset
 *
 * Needs root and `ip netns`; skipped (with the reason printed) otherwise. Namespaces are
 * uniquely named per run and always deleted in afterAll.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { diffNode, findConflicts, formatChanges, type Change } from '../../src/diff/index.js';
import { KdfKeySource } from '../../src/keys/kdf.js';
import { formatCidr, formatIPv4 } from '../../src/net/addr.js';
import { rngFactory } from '../../src/pathselect/rng.js';
import { computePlan, renderAll, type Plan } from '../../src/plan/plan.js';
import { READBACK_COMMANDS, observeNode, type ObservedNode, type ReadbackOutputs } from '../../src/readback/observed.js';
import { IPT_CHAIN_FORWARD } from '../../src/render/render.js';
import { emptyState } from '../../src/state/model.js';
import type { Net } from '../../src/topology/net.js';
import { loadTemplates } from '../../src/store/files.js';
import { K2_YAML, K4_YAML, exampleNet, netFromYaml } from '../helpers/net.js';
import { must, nodeNamespace, run, whyNoNetns } from '../helpers/kernel.js';
import { FOREIGN_IP, FOREIGN_IPTABLES, FOREIGN_NFT } from '../helpers/foreign.js';
import { poolsOf } from '../helpers/readback.js';

const unavailable = whyNoNetns();
if (unavailable) console.warn(`SKIPPING kernel read-back round trip: ${unavailable}`);
const describeKernel = unavailable ? describe.skip : describe;
const nftMissing = run('nft', ['--version']).error !== undefined;


const CASES: { name: string; net: () => Net; seed: string }[] = [
  { name: 'examples/three-mixes.yaml', net: () => exampleNet('three-mixes.yaml'), seed: 'kernel' },
  { name: 'k=2, two destinations', net: () => netFromYaml(K2_YAML), seed: 'kernel' },
  { name: 'k=4, two clients, nftables exit', net: () => netFromYaml(K4_YAML), seed: 'k4-b' },
];

let runId = 0;

describeKernel.each(CASES)('read back $name from network namespaces', ({ net: mkNet, seed }) => {
  const net = mkNet();
  const id = `${process.pid.toString(36)}${(runId++).toString(36)}${Math.floor(Math.random() * 36 ** 3).toString(36)}`;
  const nsOf = (node: string) => `ocrb-${id}-${node}`;
  const created: string[] = [];
  const iptVariant = new Map<string, string>();
  let plan: Plan;

  beforeAll(async () => {
    plan = computePlan({ net, state: emptyState('e7'.repeat(32)), rngFor: rngFactory(seed), now: '2024-01-01T00:00:00Z' });
    const files = new Map(
      renderAll(plan, { keys: new KdfKeySource(Buffer.alloc(32, 9), plan.state.salt), mode: 'redacted', templates: await loadTemplates(), version: 'kernel-test' }).map((f) => [f.name, f.content]),
    );
    for (const n of net.nodes.values()) {
      const ns = nsOf(n.name);
      created.push(ns);
      nodeNamespace(ns, n);
      const gw = formatIPv4(((n.underlay.addr & ~0xff) >>> 0) + 254);
      must('ip', ['-n', ns, '-batch', '-'], FOREIGN_IP.replaceAll('GW', gw).replaceAll('UL', n.underlay.name) + '\n');
      let variant: string | undefined;
      for (const v of ['iptables', 'iptables-legacy']) {
        if (run('ip', ['netns', 'exec', ns, `${v}-restore`, '--noflush'], FOREIGN_IPTABLES.replaceAll('UL', n.underlay.name)).status === 0) {
          variant = v;
          break;
        }
      }
      if (!variant) throw new Error('neither iptables-restore nor iptables-legacy-restore works here');
      iptVariant.set(n.name, variant);
      if (!nftMissing) must('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], FOREIGN_NFT);

      must('ip', ['-n', ns, '-batch', '-'], files.get(`${n.name}.ip`)!.split('\n').filter((l) => !l.startsWith('xfrm state ')).join('\n'));
      const cfg = plan.configs.get(n.name)!;
      if (cfg.firewall.backend === 'nftables') {
        if (!nftMissing) must('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], files.get(`${n.name}.nft`)!);
      } else {
        must('ip', ['netns', 'exec', ns, `${variant}-restore`, '--noflush'], files.get(`${n.name}.iptables`)!);
      }
    }
  });

  afterAll(() => {
    const left: string[] = [];
    for (const ns of created) {
      const r = run('ip', ['netns', 'del', ns]);
      if (r.status !== 0) left.push(`${ns}: ${r.stderr.trim()}`);
    }
    const still = run('ip', ['netns', 'list']).stdout;
    expect(created.filter((ns) => still.includes(ns))).toEqual([]);
    expect(left).toEqual([]);
  });

  /** what apply's re-read will run (READBACK_COMMANDS), here through ip -n / ip netns exec */
  function readBack(node: string, withStates = false): ObservedNode {
    const ns = nsOf(node);
    const ipc = (argv: readonly string[]) => must('ip', ['-n', ns, ...argv.slice(1)]);
    const out: ReadbackOutputs = {
      xfrmPolicy: ipc(READBACK_COMMANDS.xfrmPolicy),
      routes: ipc(READBACK_COMMANDS.routes),
      addresses: ipc(READBACK_COMMANDS.addresses),
      iptablesSave: must('ip', ['netns', 'exec', ns, `${iptVariant.get(node)}-save`]),
    };
    if (withStates) out.xfrmState = ipc(READBACK_COMMANDS.xfrmState);
    if (!nftMissing) out.nft = must('ip', ['netns', 'exec', ns, ...READBACK_COMMANDS.nft]);
    return observeNode(node, out, { pools: poolsOf(net) });
  }

  test('every node reads back as planned: no changes, no conflicts, foreign objects seen and left out', () => {
    for (const n of net.nodes.keys()) {
      const o = readBack(n);
      const cfg = plan.configs.get(n)!;
      const changes = diffNode(cfg, o);
      if (changes.length > 0) console.log(formatChanges([{ node: n, changes }]));
      expect({ node: n, changes }).toEqual({ node: n, changes: [] });
      expect(findConflicts(cfg, o)).toEqual([]);
      expect(o.policies!.foreign.map((p) => p.priority).sort()).toEqual([100, 20223, 50].sort());
      expect(o.routes!.foreign.map((r) => r.dst)).toEqual(expect.arrayContaining(['10.20.0.0/16', '10.21.0.0/16', '10.22.0.0/16']));
      expect(o.addresses!.foreign.map((a) => a.addr)).toContain('10.30.0.1');
      expect(o.iptables!.foreignRules.map((r) => r.text)).toEqual(expect.arrayContaining(['-A FORWARD -m comment --comment onionctl -j ACCEPT']));
      if (!nftMissing) expect(o.nft!.foreignTables).toContain('inet admin');
      expect(o.policies!.owned).toHaveLength(cfg.policies.length);
      expect(o.routes!.owned).toHaveLength(cfg.routes.length);
      expect(o.addresses!.owned).toHaveLength(cfg.addresses.length);
    }
  });

  test('ip xfrm state reads back empty here (no ESP), so every planned SA is an add', () => {
    const n = [...net.clients.keys()][0]!;
    const o = readBack(n, true);
    expect(o.states).toEqual({ owned: [], foreign: [] });
    const ch = diffNode(plan.configs.get(n)!, o);
    expect(ch.map((c) => `${c.op} ${c.kind}`)).toEqual(plan.configs.get(n)!.states.map(() => 'add state'));
  });

  test('drift made in the kernel shows up as the changes that undo it', () => {
    const client = [...net.clients.keys()][0]!;
    const cfg = plan.configs.get(client)!;
    const ns = nsOf(client);
    const out = cfg.policies.find((p) => p.dir === 'out' && p.action === 'allow')!;
    const route = cfg.routes[0]!;
    const addr = cfg.addresses[0]!;
    must('ip', ['-n', ns, 'xfrm', 'policy', 'delete', 'src', formatCidr(out.src), 'dst', formatCidr(out.dst), 'dir', 'out']);
    // `route change` replaces every metric: give back all but the mtu
    const keep = [...(route.advmss !== undefined ? ['advmss', String(route.advmss)] : []), ...(route.quickack ? ['quickack', '1'] : [])];
    must('ip', ['-n', ns, 'route', 'change', formatCidr(route.dst), 'via', formatIPv4(route.via), 'dev', route.dev, 'src', formatIPv4(route.src!), 'proto', '79', 'mtu', '1300', ...keep]);
    must('ip', ['-n', ns, 'address', 'del', `${formatIPv4(addr.addr)}/32`, 'dev', 'lo']);
    // a foreign route changed or added does not matter
    must('ip', ['-n', ns, 'route', 'add', '10.40.0.0/16', 'dev', cfg.underlay]);
    const changes: Change[] = diffNode(cfg, readBack(client));
    expect(changes.map((c) => `${c.op} ${c.kind} ${c.key}${c.op === 'replace' ? ': ' + c.fields.map((f) => `${f.field} ${f.from}->${f.to}`).join(', ') : ''}`).sort()).toEqual(
      [
        `add policy out ${formatCidr(out.src)} -> ${formatCidr(out.dst)}`,
        `replace route main ${formatCidr(route.dst)}: mtu 1300->${route.mtu}`,
        `add address ${formatIPv4(addr.addr)} dev lo`,
      ].sort(),
    );

    // an exit loses one rule of its chain
    const exit = [...net.routers.values()].find((r) => r.exit && plan.configs.get(r.name)!.firewall.backend === 'iptables' && plan.configs.get(r.name)!.firewall.forward.length > 0);
    if (exit) {
      const ens = nsOf(exit.name);
      const ecfg = plan.configs.get(exit.name)!;
      must('ip', ['netns', 'exec', ens, iptVariant.get(exit.name)!, '-D', IPT_CHAIN_FORWARD, '1']);
      const ech = diffNode(ecfg, readBack(exit.name));
      expect(ech).toEqual([expect.objectContaining({ op: 'add', kind: 'filter' })]);
    }
  });
});
