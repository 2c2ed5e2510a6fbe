/**
 * The apply engine against this machine's kernel, one network namespace per node:
 *
 *   foreign objects first (an xfrm policy outside onionctl's priority band, one just below it,
 *   routes of other protocols, an address on lo, iptables rules in FORWARD and POSTROUTING,
 *   one of them commented "onionctl" without jumping to an ONIONCTL chain, an nft table)
 *   -> readFleet (readRouter: one `sh -s` per node through NetnsTransport)
 *   -> planAgainst -> pushChanges (receive ... drain) -> read back: only the SAs are
 *      missing (this kernel has no ESP, so the `xfrm state add` lines are taken out of the
 *      `ip -batch` input on the way; everything else is loaded as apply sends it)
 *   -> drift on an exit's firewall is repaired by a second rewrite that adds no second jump
 *   -> destroy (removalChanges) -> every onionctl object gone, the foreign objects byte for byte
 *      as they were, and a second destroy has nothing to do.
 *
 * Needs root and `ip netns`; skipped (with the reason printed) otherwise. Namespaces are
 * uniquely named per run and deleted in afterAll.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { parseStageScript, STAGES, stageScript, type Step } from '../../src/apply/commands.js';
import { interfaceAddresses, markInstalled, planAgainst, pushChanges, readFleet, silentProgress, sysctlKeys, type LivePlan, type NodePlan, type NodeRead } from '../../src/apply/engine.js';
import { formatChanges, removalChanges } from '../../src/diff/index.js';
import { KdfKeySource } from '../../src/keys/kdf.js';
import { formatIPv4 } from '../../src/net/addr.js';
import { rngFactory } from '../../src/pathselect/rng.js';
import { computePlan, type Plan } from '../../src/plan/plan.js';
import type { Templates } from '../../src/render/render.js';
import { Sessions } from '../../src/remote/fleet.js';
import { NetnsTransport, type ExecOptions, type ExecResult, type Transport } from '../../src/remote/transport.js';
import { emptyState } from '../../src/state/model.js';
import type { Net } from '../../src/topology/net.js';
import { loadTemplates } from '../../src/store/files.js';
import { containsKey, emptyConfig, plannedKeysHex } from '../helpers/apply.js';
import { must, nodeNamespace, run, whyNoNetns } from '../helpers/kernel.js';
import { FOREIGN_IP, FOREIGN_IPTABLES, FOREIGN_NFT } from '../helpers/foreign.js';
import { K4_YAML, exampleNet, netFromYaml } from '../helpers/net.js';

/** nonces for the epochs planAgainst/rekeySa allocate (reproducible in tests) */
const NONCES = rngFactory('test-nonces');

const unavailable = whyNoNetns();
if (unavailable) console.warn(`SKIPPING kernel apply test: ${unavailable}`);
const describeKernel = unavailable ? describe.skip : describe;
const nftMissing = run('nft', ['--version']).error !== undefined;


const JUMPS = ['-A FORWARD -m comment --comment onionctl -j ONIONCTL-FORWARD', '-A POSTROUTING -m comment --comment onionctl -j ONIONCTL-POSTROUTING'];

/**
 * NetnsTransport, but `xfrm state add` lines are taken out of `ip -batch` input (this kernel has
 * no ESP), inside stage scripts too; records every command line (a stage script's commands one
 * by one) and what it took out.
 */
class NoEspTransport implements Transport {
  readonly label: string;
  readonly argvs: string[][] = [];
  readonly stripped: string[] = [];
  constructor(private readonly inner: Transport) {
    this.label = inner.label;
  }
  /** an `ip -batch -` input without its SA lines (undefined: nothing left to send) */
  private strip(stdin: string): string | undefined {
    const lines = stdin.split('\n');
    this.stripped.push(...lines.filter((l) => l.startsWith('xfrm state add ')));
    const rest = lines.filter((l) => !l.startsWith('xfrm state add ') && l.trim() !== '');
    return rest.length === 0 ? undefined : rest.join('\n') + '\n';
  }
  async exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    let stdin = opts.stdin;
    // a stage script: its commands are recorded, its ip -batch inputs stripped, and the script
    // rebuilt and run by the namespace's own sh, as a router would
    const parts = argv.join(' ') === 'sh -s' && stdin !== undefined ? parseStageScript(stdin) : undefined;
    if (parts) {
      const keep: Step[] = [];
      for (const x of parts) {
        this.argvs.push(x.argv);
        const input = x.argv.join(' ') === 'ip -batch -' ? this.strip(x.stdin) : x.stdin;
        if (input !== undefined) keep.push({ what: x.argv[0]!, argv: x.argv, stdin: input, secret: false, changes: 1 });
      }
      if (keep.length === 0) return { exitCode: 0, stdout: '', stderr: '' };
      return this.inner.exec(argv, { ...opts, stdin: stageScript(keep) });
    }
    this.argvs.push([...argv]);
    if (argv.join(' ') === 'ip -batch -' && stdin !== undefined) {
      stdin = this.strip(stdin);
      if (stdin === undefined) return { exitCode: 0, stdout: '', stderr: '' };
    }
    return this.inner.exec(argv, { ...opts, ...(stdin !== undefined ? { stdin } : {}) });
  }
  async close(): Promise<void> {
    await this.inner.close();
  }
}

const CASES: { name: string; net: () => Net; seed: string }[] = [
  { name: 'examples/three-mixes.yaml', net: () => exampleNet('three-mixes.yaml'), seed: 'kernel' },
  { name: 'k=4, two clients, nftables exit', net: () => netFromYaml(K4_YAML), seed: 'k4-b' },
];

let runId = 0;

describeKernel.each(CASES)('apply and destroy $name in network namespaces', ({ net: mkNet, seed }) => {
  const net = mkNet();
  const id = `${process.pid.toString(36)}${(runId++).toString(36)}${Math.floor(Math.random() * 36 ** 3).toString(36)}`;
  const nsOf = (node: string) => `ocap-${id}-${node}`;
  const created: string[] = [];
  const variant = new Map<string, string>();
  const transports = new Map<string, NoEspTransport>();
  const before = new Map<string, Record<string, string>>();
  const nodes = [...net.nodes.keys()];
  let plan: Plan;
  let keys: KdfKeySource;
  let templates: Templates;
  let sessions: Sessions;

  /** what a node holds, as text, everything (onionctl's objects included) */
  function view(node: string): Record<string, string> {
    const ns = nsOf(node);
    const v: Record<string, string> = {
      policies: must('ip', ['-n', ns, 'xfrm', 'policy']),
      routes: must('ip', ['-n', ns, 'route', 'show', 'table', 'main']),
      addresses: must('ip', ['-n', ns, '-4', 'addr', 'show', 'dev', 'lo']),
      // without the "# Generated ... on <date>" lines
      iptables: must('ip', ['netns', 'exec', ns, `${variant.get(node)}-save`]).split('\n').filter((l) => !l.startsWith('#')).join('\n'),
    };
    if (!nftMissing) v.nft = must('ip', ['netns', 'exec', ns, 'nft', 'list', 'ruleset']);
    return v;
  }

  async function read(): Promise<Map<string, NodeRead>> {
    const reads = await readFleet(net, nodes, sessions, 4, (n) => sysctlKeys(plan.configs, n), silentProgress);
    for (const r of reads.values()) expect({ node: r.node, error: r.error }).toEqual({ node: r.node, error: undefined });
    return reads;
  }

  async function push(live: LivePlan, reads: Map<string, NodeRead>, planned: NodePlan[] = live.nodes) {
    const results = await pushChanges({ configs: live.configs, nodes: planned, reads, keys, templates, version: 'kernel-test', sessions, parallel: 4, progress: silentProgress, ifaceAddrs: interfaceAddresses(net) });
    expect(results.filter((r) => !r.ok).map((r) => `${r.node}: ${r.error}`)).toEqual([]);
    return results;
  }

  /** after apply: the only changes left are the SAs this kernel cannot hold */
  function onlySasMissing(live: LivePlan): void {
    expect(live.rekeys).toEqual([]);
    for (const n of live.nodes) {
      const cfg = live.configs.get(n.node)!;
      const other = n.changes.filter((c) => !(c.kind === 'state' && c.op === 'add'));
      if (other.length > 0) console.log(formatChanges([{ node: n.node, changes: other }]));
      expect({ node: n.node, other: other.length, sas: n.changes.length - other.length, conflicts: n.conflicts }).toEqual({ node: n.node, other: 0, sas: cfg.states.length, conflicts: [] });
    }
  }

  beforeAll(async () => {
    templates = await loadTemplates();
    plan = computePlan({ net, state: emptyState('e7'.repeat(32)), rngFor: rngFactory(seed), now: '2024-01-01T00:00:00Z' });
    keys = new KdfKeySource(Buffer.alloc(32, 0x2b), plan.state.salt);
    for (const n of net.nodes.values()) {
      const ns = nsOf(n.name);
      created.push(ns);
      nodeNamespace(ns, n);
      const gw = formatIPv4(((n.underlay.addr & ~0xff) >>> 0) + 254);
      must('ip', ['-n', ns, '-batch', '-'], FOREIGN_IP.replaceAll('GW', gw).replaceAll('UL', n.underlay.name) + '\n');
      let v: string | undefined;
      for (const cand of ['iptables', 'iptables-legacy']) {
        if (run('ip', ['netns', 'exec', ns, `${cand}-restore`, '--noflush'], FOREIGN_IPTABLES.replaceAll('UL', n.underlay.name)).status === 0) {
          v = cand;
          break;
        }
      }
      if (!v) throw new Error('neither iptables-restore nor iptables-legacy-restore works here');
      variant.set(n.name, v);
      if (!nftMissing) must('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], FOREIGN_NFT);
      before.set(n.name, view(n.name));
      transports.set(n.name, new NoEspTransport(new NetnsTransport(n.name, ns)));
    }
    sessions = new Sessions(async (node) => transports.get(node)!);
  });

  afterAll(async () => {
    await sessions?.closeAll();
    const left: string[] = [];
    for (const ns of created) {
      const r = run('ip', ['netns', 'del', ns]);
      if (r.status !== 0) left.push(`${ns}: ${r.stderr.trim()}`);
    }
    const still = run('ip', ['netns', 'list']).stdout;
    expect(created.filter((ns) => still.includes(ns))).toEqual([]);
    expect(left).toEqual([]);
  });

  test('apply: everything but the SAs loads; read back, only the SAs are missing; foreign objects untouched', async () => {
    const reads = await read();
    for (const r of reads.values()) {
      // the namespaces start without forwarding: the plan sets it
      const sc = plan.configs.get(r.node)!.sysctls;
      expect([...r.read!.sysctls.keys()]).toEqual(sc.map((x) => x.key));
      if (sc.some((x) => x.key === 'net.ipv4.ip_forward')) expect(r.read!.sysctls.get('net.ipv4.ip_forward')).toBe('0');
      expect(r.read!.iptables?.save).toBe(`${variant.get(r.node)}-save`);
      expect(r.observed!.policies!.owned).toEqual([]);
      expect(r.observed!.policies!.foreign.map((p) => p.priority).sort()).toEqual([100, 20223, 50].sort());
    }
    const live = planAgainst(net, plan.state, reads, keys, NONCES);
    expect(live.rekeys).toEqual([]);
    expect(live.nodes.every((n) => n.conflicts.length === 0 && n.changes.length > 0)).toBe(true);
    const results = await push(live, reads);
    expect(results.map((r) => r.stages)).toEqual(results.map(() => [...STAGES]));

    // what was kept from this kernel: exactly the planned SAs, keys on stdin only
    const keysHex = plannedKeysHex(plan.configs.values(), keys);
    for (const [node, t] of transports) {
      expect({ node, sas: t.stripped.length }).toEqual({ node, sas: plan.configs.get(node)!.states.length });
      expect(t.stripped.every((l) => containsKey(l, keysHex) !== undefined)).toBe(true);
      expect(t.argvs.filter((a) => containsKey(a.join(' '), keysHex))).toEqual([]);
      // nothing ran with a key-sized hex argument, and every write went through stdin
      expect(t.argvs.filter((a) => a.some((x) => /[0-9a-f]{32}/i.test(x)))).toEqual([]);
    }

    const again = planAgainst(net, plan.state, await read(), keys, NONCES);
    onlySasMissing(again);

    for (const node of nodes) {
      const now = view(node);
      const was = before.get(node)!;
      // every foreign line is still there
      for (const k of Object.keys(was)) {
        const missing = was[k]!.split('\n').filter((l) => l.trim() !== '' && !/^\s*(# |\[|:)/.test(l) && !now[k]!.includes(l));
        expect({ node, k, missing }).toEqual({ node, k, missing: [] });
      }
      for (const j of JUMPS) {
        if (plan.configs.get(node)!.firewall.backend === 'iptables') expect({ node, j, n: now.iptables!.split('\n').filter((l) => l === j).length }).toEqual({ node, j, n: 1 });
      }
    }
  });

  test('firewall drift on a node is repaired by a rewrite that adds no second jump; a rewrite with nothing changed is not sent', async () => {
    const target = [...net.routers.values()].find((r) => r.exit && plan.configs.get(r.name)!.firewall.backend === 'iptables' && plan.configs.get(r.name)!.firewall.forward.length > 0)!;
    expect(target).toBeDefined();
    const ns = nsOf(target.name);
    const v = variant.get(target.name)!;
    must('ip', ['netns', 'exec', ns, v, '-D', 'ONIONCTL-FORWARD', '1']);
    const reads = await read();
    const live = planAgainst(net, plan.state, reads, keys, NONCES);
    const fw = live.nodes.find((n) => n.node === target.name)!.changes.filter((c) => c.kind !== 'state');
    expect(fw.map((c) => `${c.op} ${c.kind}`)).toEqual(['add filter']);
    const sent = new Map(nodes.map((n) => [n, transports.get(n)!.argvs.length]));
    await push(live, reads);
    // the rewrite went out once, on the drifted node only
    const firewallCmds = (n: string) => transports.get(n)!.argvs.slice(sent.get(n)).filter((a) => /iptables|nft/.test(a[0]!)).map((a) => a.join(' '));
    for (const node of nodes) expect({ node, cmds: firewallCmds(node) }).toEqual({ node, cmds: node === target.name ? [`${v}-restore --noflush`] : [] });
    const save = view(target.name).iptables!;
    for (const j of JUMPS) expect({ j, n: save.split('\n').filter((l) => l === j).length }).toEqual({ j, n: 1 });
    onlySasMissing(planAgainst(net, plan.state, await read(), keys, NONCES));
  });

  test('destroy removes every onionctl object and leaves the foreign ones byte for byte; a second destroy has nothing to do', async () => {
    const reads = await read();
    const planned: NodePlan[] = [...reads.values()].map((r) => ({ node: r.node, changes: removalChanges(r.observed!), conflicts: [] }));
    for (const p of planned) expect({ node: p.node, any: p.changes.length > 0, allRemove: p.changes.every((c) => c.op === 'remove') }).toEqual({ node: p.node, any: true, allRemove: true });
    const live: LivePlan = { state: plan.state, configs: new Map([...plan.configs].map(([n, c]) => [n, emptyConfig(c)])), nodes: planned, rekeys: [] };
    // destroy marks nothing as installed
    expect(markInstalled(plan.state, planned, 'now')).toEqual(plan.state);
    await push(live, reads, planned);

    const after = await read();
    for (const r of after.values()) {
      const o = r.observed!;
      expect({
        node: r.node,
        policies: o.policies!.owned,
        routes: o.routes!.owned,
        addresses: o.addresses!.owned,
        ipt: o.iptables!.owned,
        nft: o.nft?.owned ?? { chains: [], rules: [] },
      }).toEqual({ node: r.node, policies: [], routes: [], addresses: [], ipt: { chains: [], rules: [] }, nft: { chains: [], rules: [] } });
      expect(removalChanges(o)).toEqual([]);
    }
    for (const node of nodes) {
      const now = view(node);
      const was = before.get(node)!;
      for (const k of Object.keys(was)) expect({ node, k, text: now[k] }).toEqual({ node, k, text: was[k] });
    }
  });
});
