/**
 * Acceptance test against the running kernel: every node's generated files load into a fresh
 * network namespace, and what the kernel reports back is what the planner meant.
 *
 *   one namespace per node, each with its underlay interface (a veth whose peer stays inside
 *   the same namespace, so nothing touches the host), and for exits the outside interface:
 *
 *     [ns alice] eth0 198.51.100.10/24     [ns or1] eth0 .11     [ns or2] eth0 .12
 *     [ns or3]   eth0 198.51.100.13/24 + eth1 203.0.113.1/24 (outside)
 *
 *   NAME.ip       minus its `xfrm state` lines -> ip -n NS -batch -   (exit 0, twice: idempotent)
 *   NAME.iptables -> iptables-restore --noflush (falls back to iptables-legacy-restore)
 *   NAME.nft      -> nft -f (exits using the nftables backend)
 *   NAME.sysctl   -> sysctl -p
 *
 * The host kernel has xfrm policies but no ESP ("Requested AEAD algorithm not found"), so SAs
 * are left out here; the UML lab (test/lab) proves the states and the traffic.
 *
 * Needs root and `ip netns`; skipped (with the reason printed) otherwise. Namespaces are
 * uniquely named per run and always deleted in afterAll.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { KdfKeySource } from '../../src/keys/kdf.js';
import type { NodeConfig } from '../../src/model/config.js';
import { formatCidr, formatIPv4 } from '../../src/net/addr.js';
import { rngFactory } from '../../src/pathselect/rng.js';
import { computePlan, renderAll, type Plan } from '../../src/plan/plan.js';
import { IPT_CHAIN_FORWARD, IPT_CHAIN_POSTROUTING, type RenderedFile } from '../../src/render/render.js';
import { emptyState } from '../../src/state/model.js';
import type { Net } from '../../src/topology/net.js';
import { loadTemplates } from '../../src/store/files.js';
import { K2_YAML, K4_YAML, exampleNet, netFromYaml } from '../helpers/net.js';
import { must, nodeNamespace, run, whyNoNetns } from '../helpers/kernel.js';

const unavailable = whyNoNetns();
if (unavailable) console.warn(`SKIPPING kernel policy-load tests: ${unavailable}`);
const describeKernel = unavailable ? describe.skip : describe;

// ---------------------------------------------------------------------------------------------
// read-back parsers

interface RbTmpl {
  src: string;
  dst: string;
  proto?: string;
  reqid?: number;
  mode?: string;
}
interface RbPolicy {
  src: string;
  dst: string;
  proto?: string;
  dir?: string;
  action: string;
  priority?: number;
  tmpls: RbTmpl[];
}

/** parses `ip xfrm policy` (text; iproute2 has no JSON for xfrm) */
function parseXfrmPolicies(text: string): RbPolicy[] {
  const out: RbPolicy[] = [];
  let cur: RbPolicy | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '') continue;
    let m: RegExpExecArray | null;
    if (!/^\s/.test(raw) && (m = /^src (\S+) dst (\S+)(?: proto (\S+))?/.exec(line))) {
      cur = { src: m[1]!, dst: m[2]!, ...(m[3] ? { proto: m[3] } : {}), action: 'allow', tmpls: [] };
      out.push(cur);
    } else if (cur && (m = /^dir (\w+)(?: action (\w+))? priority (\d+)/.exec(line))) {
      cur.dir = m[1]!;
      if (m[2]) cur.action = m[2];
      cur.priority = Number(m[3]);
    } else if (cur && (m = /^tmpl src (\S+) dst (\S+)/.exec(line))) {
      cur.tmpls.push({ src: m[1]!, dst: m[2]! });
    } else if (cur && cur.tmpls.length > 0 && (m = /^proto (\S+) reqid (\d+) mode (\w+)/.exec(line))) {
      Object.assign(cur.tmpls[cur.tmpls.length - 1]!, { proto: m[1], reqid: Number(m[2]), mode: m[3] });
    }
  }
  return out;
}

interface RbRoute {
  dst: string;
  gateway?: string;
  dev: string;
  protocol?: string;
  prefsrc?: string;
  metrics?: { mtu?: number; advmss?: number }[];
}

// ---------------------------------------------------------------------------------------------

const CASES: { name: string; net: () => Net; seed: string }[] = [
  { name: 'examples/three-mixes.yaml', net: () => exampleNet('three-mixes.yaml'), seed: 'kernel' },
  { name: 'k=2, two destinations', net: () => netFromYaml(K2_YAML), seed: 'kernel' },
  // seed k4-b: a1 ends at r6 (own outside interface, nftables), b1 at r5 (iptables)
  { name: 'k=4, two clients, nftables exit', net: () => netFromYaml(K4_YAML), seed: 'k4-b' },
];

/** which iptables-restore worked, for the report at the end */
const iptablesVariants = new Set<string>();

let runId = 0;

describeKernel.each(CASES)('loading $name into network namespaces', ({ net: mkNet, seed }) => {
  const net = mkNet();
  const id = `${process.pid.toString(36)}${(runId++).toString(36)}${Math.floor(Math.random() * 36 ** 3).toString(36)}`;
  const nsOf = (node: string) => `ocpl-${id}-${node}`;
  const created: string[] = [];
  let dir = '';
  let plan: Plan;
  let files: Map<string, RenderedFile>;

  beforeAll(async () => {
    plan = computePlan({ net, state: emptyState('e7'.repeat(32)), rngFor: rngFactory(seed), now: '2024-01-01T00:00:00Z' });
    const rendered = renderAll(plan, {
      keys: new KdfKeySource(Buffer.alloc(32, 9), plan.state.salt),
      mode: 'redacted',
      templates: await loadTemplates(),
      version: 'kernel-test',
    });
    files = new Map(rendered.map((f) => [f.name, f]));
    dir = await mkdtemp(path.join(tmpdir(), 'onionctl-kernel-test-'));
    for (const f of rendered) await writeFile(path.join(dir, f.name), f.content, { mode: 0o600 });

    for (const n of net.nodes.values()) {
      const ns = nsOf(n.name);
      created.push(ns);
      nodeNamespace(ns, n);
    }
  });

  afterAll(async () => {
    const left: string[] = [];
    for (const ns of created) {
      const r = run('ip', ['netns', 'del', ns]);
      if (r.status !== 0) left.push(`${ns}: ${r.stderr.trim()}`);
    }
    if (dir) await rm(dir, { recursive: true, force: true });
    const still = run('ip', ['netns', 'list']).stdout;
    expect(created.filter((ns) => still.includes(ns))).toEqual([]);
    expect(left).toEqual([]);
  });

  const cfgOf = (n: string): NodeConfig => plan.configs.get(n)!;
  const ipLines = (n: string) =>
    files
      .get(`${n}.ip`)!
      .content.split('\n')
      .filter((l) => !l.startsWith('xfrm state '))
      .join('\n');

  test('ip -batch accepts every node\'s file (without the SAs), and accepts it again', () => {
    for (const n of net.nodes.keys()) {
      const input = ipLines(n);
      expect(files.get(`${n}.ip`)!.content).toContain('xfrm state add'); // there were SAs to drop
      for (const round of [1, 2]) {
        const r = run('ip', ['-n', nsOf(n), '-batch', '-'], input);
        expect({ node: n, round, status: r.status, stderr: r.stderr }).toEqual({ node: n, round, status: 0, stderr: '' });
      }
    }
  });

  test('the kernel holds exactly the planned policies: selectors, priorities, actions, templates in order', () => {
    for (const n of net.nodes.keys()) {
      const rb = parseXfrmPolicies(must('ip', ['-n', nsOf(n), 'xfrm', 'policy']));
      const want = cfgOf(n).policies;
      expect({ node: n, count: rb.length }).toEqual({ node: n, count: want.length });
      for (const p of want) {
        const hits = rb.filter((x) => x.src === formatCidr(p.src) && x.dst === formatCidr(p.dst) && x.dir === p.dir && (x.proto ?? null) === (p.proto ?? null));
        expect({ node: n, policy: p.comment, hits: hits.length }).toEqual({ node: n, policy: p.comment, hits: 1 });
        const h = hits[0]!;
        expect(h.priority).toBe(p.priority);
        expect(h.action).toBe(p.action);
        expect(h.tmpls.map((x) => `${x.src}>${x.dst} ${x.proto} ${x.reqid} ${x.mode}`)).toEqual(
          p.tmpls.map((x) => `${formatIPv4(x.src)}>${formatIPv4(x.dst)} esp ${x.reqid} tunnel`),
        );
      }
    }
  });

  test('clients: one out policy per destination with k+1 templates, and a block policy behind it', () => {
    for (const c of net.clients.values()) {
      const rb = parseXfrmPolicies(must('ip', ['-n', nsOf(c.name), 'xfrm', 'policy']));
      const circuits = Object.values(plan.state.circuits).filter((x) => x.client === c.name);
      const dests = circuits.flatMap((x) => x.to);
      expect(rb.filter((x) => x.dir === 'out' && x.action === 'allow').map((x) => x.dst).sort()).toEqual([...dests].sort());
      const blocks = rb.filter((x) => x.action === 'block');
      expect(blocks.map((x) => x.dst).sort()).toEqual([...dests].sort());
      for (const circuit of circuits) {
        const out = rb.find((x) => x.dir === 'out' && x.action === 'allow' && x.dst === circuit.to[0]);
        expect(out!.tmpls).toHaveLength(circuit.hops.length + 1);
        // innermost first: the exit's telescope layer; outermost last: the overlay to the entry
        expect(out!.tmpls[0]!.src).toBe(circuit.addrs[circuit.addrs.length - 1]);
        expect(out!.tmpls[circuit.hops.length]!.dst).toBe(formatIPv4(net.routers.get(circuit.hops[0]!)!.underlay.addr));
        for (const b of blocks) expect(b.priority!).toBeGreaterThan(out!.priority!);
        expect(blocks.every((b) => b.tmpls.length === 0 && b.src === '0.0.0.0/0')).toBe(true);
      }
    }
  });

  test('routes: proto 79, via the right neighbour, client routes with src, mtu and advmss', () => {
    for (const n of net.nodes.keys()) {
      const all = JSON.parse(must('ip', ['-n', nsOf(n), '-j', 'route', 'show', 'table', 'main'])) as RbRoute[];
      const ours = all.filter((r) => r.protocol === '79');
      const want = cfgOf(n).routes;
      expect({ node: n, count: ours.length }).toEqual({ node: n, count: want.length });
      for (const w of want) {
        const dst = w.dst.len === 32 ? formatIPv4(w.dst.base) : formatCidr(w.dst);
        const r = ours.find((x) => x.dst === dst);
        expect(r).toBeDefined();
        expect(r).toMatchObject({ gateway: formatIPv4(w.via), dev: w.dev });
        if (w.src !== undefined) expect(r!.prefsrc).toBe(formatIPv4(w.src));
        if (w.mtu !== undefined) {
          expect(r!.metrics).toEqual([expect.objectContaining({ mtu: w.mtu, advmss: w.advmss })]);
        } else expect(r!.metrics).toBeUndefined();
      }
      if (net.clients.has(n)) {
        expect(ours.length).toBeGreaterThan(0);
        for (const r of ours) {
          expect(r.prefsrc).toBeDefined();
          expect(r.metrics?.[0]?.mtu).toBeLessThan(net.clients.get(n)!.underlay.mtu);
        }
      }
    }
  });

  test('clients: every A_ci sits on lo', () => {
    for (const c of net.clients.values()) {
      const lo = JSON.parse(must('ip', ['-n', nsOf(c.name), '-j', 'addr', 'show', 'dev', 'lo'])) as { addr_info: { local: string; prefixlen: number }[] }[];
      const have = lo[0]!.addr_info.filter((a) => a.prefixlen === 32).map((a) => a.local).sort();
      const want = Object.values(plan.state.circuits)
        .filter((x) => x.client === c.name)
        .flatMap((x) => x.addrs)
        .sort();
      expect(have).toEqual(want);
    }
  });

  test('firewall files load: iptables-restore --noflush (or the legacy one), nft -f; onionctl chains exist', () => {
    for (const n of net.nodes.keys()) {
      const ns = nsOf(n);
      const cfg = cfgOf(n);
      if (cfg.firewall.backend === 'nftables') {
        const file = path.join(dir, `${n}.nft`);
        const probe = run('nft', ['--version']);
        if (probe.error) {
          console.warn(`SKIPPING nft -f for ${n}: nft cannot be started (${probe.error.message})`);
          continue;
        }
        for (const round of [1, 2]) {
          const r = run('ip', ['netns', 'exec', ns, 'nft', '-f', file]);
          expect({ node: n, round, status: r.status, stderr: r.stderr }).toEqual({ node: n, round, status: 0, stderr: '' });
        }
        const listed = must('ip', ['netns', 'exec', ns, 'nft', 'list', 'table', 'ip', 'onionctl']);
        expect(listed).toMatch(/chain postrouting \{/);
        expect(listed).toMatch(/chain forward \{/);
        for (const s of cfg.firewall.snat) expect(listed).toContain(`snat to ${formatIPv4(s.to)}`);
        // loaded twice, yet each rule once: the file replaces the table
        expect((listed.match(/ snat to /g) ?? []).length).toBe(cfg.firewall.snat.length);
        expect((listed.match(/comment "/g) ?? []).length).toBe(cfg.firewall.snat.length + cfg.firewall.forward.length);
        continue;
      }
      const content = files.get(`${n}.iptables`)!.content;
      let used: string | undefined;
      const errors: string[] = [];
      for (const variant of ['iptables', 'iptables-legacy']) {
        const r = run('ip', ['netns', 'exec', ns, `${variant}-restore`, '--noflush'], content);
        if (r.status === 0 && !r.error) {
          used = variant;
          break;
        }
        errors.push(`${variant}-restore: ${r.error?.message ?? r.stderr.trim()}`);
      }
      expect({ node: n, used: used ?? errors.join('; ') }).toEqual({ node: n, used: expect.stringMatching(/^iptables(-legacy)?$/) });
      iptablesVariants.add(used!);
      const nat = must('ip', ['netns', 'exec', ns, used!, '-t', 'nat', '-S']);
      const filter = must('ip', ['netns', 'exec', ns, used!, '-t', 'filter', '-S']);
      expect(nat).toContain(`-N ${IPT_CHAIN_POSTROUTING}`);
      expect(filter).toContain(`-N ${IPT_CHAIN_FORWARD}`);
      expect(nat).toContain(`-A POSTROUTING -m comment --comment onionctl -j ${IPT_CHAIN_POSTROUTING}`);
      expect(filter).toContain(`-A FORWARD -m comment --comment onionctl -j ${IPT_CHAIN_FORWARD}`);
      const snat = nat.split('\n').filter((l) => l.startsWith(`-A ${IPT_CHAIN_POSTROUTING} `));
      expect(snat).toHaveLength(cfg.firewall.snat.length);
      for (const s of cfg.firewall.snat) expect(nat).toContain(`-s ${formatCidr(s.src)} -o ${s.outIf} `);
      for (const s of cfg.firewall.snat) expect(nat).toContain(`-j SNAT --to-source ${formatIPv4(s.to)}`);
      const fwdRules = filter.split('\n').filter((l) => l.startsWith(`-A ${IPT_CHAIN_FORWARD} `));
      const wantRules = content.split('\n').filter((l) => l.startsWith(`-A ${IPT_CHAIN_FORWARD} `));
      expect(fwdRules).toHaveLength(wantRules.length);
    }
  });

  test('sysctl files load, and the routers on circuits forward', () => {
    for (const n of net.nodes.keys()) {
      const ns = nsOf(n);
      const cfg = cfgOf(n);
      const r = run('ip', ['netns', 'exec', ns, 'sysctl', '-p', path.join(dir, `${n}.sysctl`)]);
      expect({ node: n, status: r.status, stderr: r.stderr }).toEqual({ node: n, status: 0, stderr: '' });
      for (const s of cfg.sysctls) {
        expect({ node: n, key: s.key, value: must('ip', ['netns', 'exec', ns, 'sysctl', '-n', s.key]).trim() }).toEqual({ node: n, key: s.key, value: s.value });
      }
      if (net.routers.has(n) && Object.values(plan.state.circuits).some((c) => c.hops.includes(n))) {
        expect(cfg.sysctls.map((s) => s.key)).toContain('net.ipv4.ip_forward');
      }
    }
  });
});

describeKernel('read-back parser', () => {
  test('parses the text iproute2 prints, including block policies and proto esp selectors', () => {
    const sample = [
      'src 100.64.3.1/32 dst 198.51.100.13/32 proto esp ',
      '\tdir fwd priority 20225 ptype main ',
      '\ttmpl src 100.64.2.1 dst 198.51.100.12',
      '\t\tproto esp reqid 1325400071 mode tunnel',
      '\ttmpl src 198.51.100.11 dst 198.51.100.12',
      '\t\tproto esp reqid 1325400064 mode tunnel',
      'src 0.0.0.0/0 dst 203.0.113.80/32 ',
      '\tdir out action block priority 20239 ptype main ',
    ].join('\n');
    expect(parseXfrmPolicies(sample)).toEqual([
      {
        src: '100.64.3.1/32',
        dst: '198.51.100.13/32',
        proto: 'esp',
        dir: 'fwd',
        action: 'allow',
        priority: 20225,
        tmpls: [
          { src: '100.64.2.1', dst: '198.51.100.12', proto: 'esp', reqid: 1325400071, mode: 'tunnel' },
          { src: '198.51.100.11', dst: '198.51.100.12', proto: 'esp', reqid: 1325400064, mode: 'tunnel' },
        ],
      },
      { src: '0.0.0.0/0', dst: '203.0.113.80/32', dir: 'out', action: 'block', priority: 20239, tmpls: [] },
    ]);
  });

  afterAll(() => {
    if (iptablesVariants.size > 0 && process.env.ONIONCTL_TEST_VERBOSE) console.log(`iptables-restore variants that worked: ${[...iptablesVariants].join(', ')}`);
  });
});
