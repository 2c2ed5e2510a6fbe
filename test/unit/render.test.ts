/**
 * Renderers (src/render/render.ts): deterministic bytes, keys only in secret mode, the .ip file's
 * order and syntax, iptables multiport splitting, and nftables files that `nft -c` accepts.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import { KdfKeySource, fingerprint } from '../../src/keys/kdf.js';
import { PROFILES } from '../../src/keys/profiles.js';
import { rngFactory } from '../../src/pathselect/rng.js';
import { computePlan, filesDigest, renderAll, type Plan } from '../../src/plan/plan.js';
import { limitWords, policyLine, renderIptables, renderNft, renderNode, stateLine, type RenderedFile, type Templates } from '../../src/render/render.js';
import { emptyState } from '../../src/state/model.js';
import type { Net } from '../../src/topology/net.js';
import { loadTemplates } from '../../src/store/files.js';
import { desiredFirewall, diffNode } from '../../src/diff/diff.js';
import { observeNode } from '../../src/readback/observed.js';
import { K2_YAML, K4_YAML, examplePath, exampleNet, netFromYaml } from '../helpers/net.js';

const SALT = '3c'.repeat(32);
const SECRET = Buffer.alloc(32, 0x42);

let templates: Templates;
beforeAll(async () => {
  templates = await loadTemplates();
});

function planOf(net: Net, seed = 'render'): Plan {
  return computePlan({ net, state: emptyState(SALT), rngFor: rngFactory(seed), now: '2024-01-01T00:00:00Z' });
}
function render(p: Plan, mode: 'redacted' | 'secret', secret = SECRET): RenderedFile[] {
  return renderAll(p, { keys: new KdfKeySource(secret, p.state.salt), mode, templates, version: '9.9.9-test' });
}
/** every key (and key part, for the two-key CBC profile) of every SA in the plan, as hex */
function keyHexes(p: Plan, secret = SECRET): string[] {
  const keys = new KdfKeySource(secret, p.state.salt);
  const out = new Set<string>();
  for (const cfg of p.configs.values()) {
    for (const st of cfg.states) {
      const k = keys.key(st.key, PROFILES[st.profile].keyBytes);
      out.add(k.toString('hex'));
      out.add(k.subarray(0, 16).toString('hex'));
      out.add(k.subarray(16).toString('hex'));
    }
  }
  return [...out];
}

const NETS: [string, () => Net][] = [
  ['three-mixes', () => exampleNet('three-mixes.yaml')],
  ['k2', () => netFromYaml(K2_YAML)],
  ['k4', () => netFromYaml(K4_YAML)],
  ['three-mixes cbc', () => netFromYaml(readFileSync(examplePath('three-mixes.yaml'), 'utf8').replace('crypto: aes-gcm', 'crypto: aes-cbc-hmac-sha1'))],
];

describe.each(NETS)('rendering %s', (_name, mk) => {
  test('identical inputs give byte-identical files, in both modes', () => {
    const a = planOf(mk());
    const b = planOf(mk());
    expect(render(b, 'redacted')).toEqual(render(a, 'redacted'));
    expect(render(b, 'secret')).toEqual(render(a, 'secret'));
    expect(filesDigest(render(b, 'redacted'))).toBe(filesDigest(render(a, 'redacted')));
  });

  test('redacted files carry no key material; secret .ip files carry every key', () => {
    const p = planOf(mk());
    const hexes = keyHexes(p);
    expect(hexes.length).toBeGreaterThan(0);
    const red = render(p, 'redacted');
    const all = red.map((f) => f.content).join('\n').toLowerCase();
    for (const h of hexes) expect(all.includes(h)).toBe(false);
    expect(red.every((f) => !f.secret)).toBe(true);
    expect(all).toContain('redacted:fp=');
    expect(all).not.toMatch(/0x[0-9a-f]{32,}/);

    const sec = render(p, 'secret');
    const ipFiles = sec.filter((f) => f.name.endsWith('.ip'));
    expect(ipFiles.every((f) => f.secret)).toBe(true);
    expect(sec.filter((f) => !f.name.endsWith('.ip')).every((f) => !f.secret)).toBe(true);
    const secretText = ipFiles.map((f) => f.content).join('\n');
    const keys = new KdfKeySource(SECRET, p.state.salt);
    for (const cfg of p.configs.values()) {
      for (const st of cfg.states) {
        const k = keys.key(st.key, PROFILES[st.profile].keyBytes);
        const shown = st.profile === 'aes-gcm' ? [k] : [k.subarray(0, 16), k.subarray(16)];
        for (const part of shown) {
          expect(secretText).toContain(`0x${part.toString('hex')}`);
          expect(all).toContain(`redacted:fp=${fingerprint(part)}`);
        }
      }
    }
    expect(secretText).not.toContain('redacted:fp=');
    // the non-key files are the same in both modes
    const nonIp = (fs: RenderedFile[]) => fs.filter((f) => !f.name.endsWith('.ip'));
    expect(nonIp(sec)).toEqual(nonIp(red));
    // and the headers say which is which
    expect(ipFiles[0]!.content).toMatch(/CONTAINS KEYS/);
    expect(red.find((f) => f.name.endsWith('.ip'))!.content).toMatch(/Keys are redacted/);
  });

  test('the digest of the redacted files follows the keys (a new secret changes it)', () => {
    const p = planOf(mk());
    const other = Buffer.alloc(32, 0x43);
    expect(filesDigest(render(p, 'redacted', other))).not.toBe(filesDigest(render(p, 'redacted')));
    // secret files are left out of the digest
    expect(filesDigest(render(p, 'secret'))).toBe(filesDigest(render(p, 'secret').filter((f) => !f.secret)));
  });

  test('each node gets NAME.ip, its firewall file and NAME.sysctl', () => {
    const net = mk();
    const p = planOf(net);
    const names = render(p, 'redacted').map((f) => f.name);
    for (const n of net.nodes.keys()) {
      const r = net.routers.get(n);
      const fw = r?.exit?.nat === 'nftables' ? `${n}.nft` : `${n}.iptables`;
      expect(names).toEqual(expect.arrayContaining([`${n}.ip`, fw, `${n}.sysctl`]));
    }
    expect(names).toHaveLength(3 * net.nodes.size);
  });
});

describe('the .ip file', () => {
  const p = () => planOf(exampleNet('three-mixes.yaml'));

  test('sections come in apply order: block, SAs, policies, addresses, routes', () => {
    const alice = render(p(), 'redacted').find((f) => f.name === 'alice.ip')!.content.split('\n');
    const first = (re: RegExp) => alice.findIndex((l) => re.test(l));
    const last = (re: RegExp) => alice.length - 1 - [...alice].reverse().findIndex((l) => re.test(l));
    const block = /^xfrm policy update .* action block/;
    const state = /^xfrm state add /;
    const allow = /^xfrm policy update (?!.*action block)/;
    expect(first(block)).toBeGreaterThan(-1);
    expect(last(block)).toBeLessThan(first(state));
    expect(last(state)).toBeLessThan(first(allow));
    expect(last(allow)).toBeLessThan(first(/^address replace /));
    expect(last(/^address replace /)).toBeLessThan(first(/^route replace /));
    expect(alice[0]).toBe('# onionctl 9.9.9-test: xfrm, addresses and routes for client alice');
  });

  test('every command line has the expected shape', () => {
    for (const f of render(p(), 'redacted').filter((x) => x.name.endsWith('.ip'))) {
      for (const line of f.content.split('\n')) {
        if (line === '' || line.startsWith('#')) continue;
        expect(line).toMatch(
          /^(xfrm state add src [\d.]+ dst [\d.]+ proto esp spi 0x4f[0-9a-f]{6} reqid 0x4f[0-9a-f]{6} mode tunnel (replay-window 32|replay-window 128 flag esn) aead rfc4106\(gcm\(aes\)\) redacted:fp=[0-9a-f]{12} 128( limit (time|byte|packet)-(soft|hard) \d+){6}|xfrm policy update src [\d./]+ dst [\d./]+( proto esp)? dir (out|in|fwd) priority \d+( action block)?( tmpl src [\d.]+ dst [\d.]+ proto esp reqid 0x4f[0-9a-f]{6} mode tunnel level required)*|address replace [\d.]+\/32 dev lo|route replace [\d./]+ via [\d.]+ dev \w+( src [\d.]+)? proto 79( mtu \d+ advmss \d+)?) # .+$/,
        );
      }
    }
  });

  test('stateLine: replay window, ESN, one `limit` per value, tfcpad last; no window is refused', () => {
    const st = p().configs.get('alice')!.states;
    const keys = new KdfKeySource(SECRET, SALT);
    const ov = st.find((x) => x.kind === 'overlay')!;
    const tel = st.find((x) => x.kind === 'telescope')!;
    const tail = (l: string) => l.slice(l.indexOf(' mode tunnel '));
    expect(tail(stateLine(ov, keys, 'redacted'))).toBe(
      ' mode tunnel replay-window 128 flag esn aead rfc4106(gcm(aes)) redacted:fp=' +
        fingerprint(keys.key(ov.key, 36)) +
        ' 128 limit time-soft 3600 limit time-hard 604800 limit byte-soft 68719476736 limit byte-hard 274877906944 limit packet-soft 4294967296 limit packet-hard 17179869184',
    );
    expect(tail(stateLine({ ...tel, tfcpad: 1000 }, keys, 'redacted'))).toMatch(
      /^ mode tunnel replay-window 32 aead \S+ redacted:fp=[0-9a-f]{12} 128 limit time-soft 3600 limit time-hard 604800 limit byte-soft 68719476736 limit byte-hard 274877906944 limit packet-soft 2147483648 limit packet-hard 4026531840 tfcpad 1000$/,
    );
    // only the limits that are set; use-time limits when asked for
    expect(limitWords({ soft: { useSeconds: 60 }, hard: { packets: 10, useSeconds: 120 } })).toBe('limit time-use-soft 60 limit time-use-hard 120 limit packet-hard 10');
    expect(stateLine({ ...tel, lifetime: { soft: {}, hard: {} } }, keys, 'redacted')).toMatch(/ 128$/);
    expect(() => stateLine({ ...ov, replayWindow: 0 }, keys, 'redacted')).toThrow(/no replay window/);
  });

  test('policyLine: outbound templates are level required, block policies have none', () => {
    const cfg = p().configs.get('alice')!;
    const out = cfg.policies.find((x) => x.dir === 'out' && x.action === 'allow')!;
    const line = policyLine(out);
    expect(line.match(/ tmpl /g)).toHaveLength(4);
    expect(line.match(/ level required/g)).toHaveLength(4);
    expect(line).not.toMatch(/level use/);
    const block = cfg.policies.find((x) => x.action === 'block')!;
    expect(policyLine(block)).toBe('xfrm policy update src 0.0.0.0/0 dst 203.0.113.80/32 dir out priority 20239 action block');
  });

  test('route options: quickack only when the topology asks for it', () => {
    const base = readFileSync(examplePath('three-mixes.yaml'), 'utf8');
    const plain = render(planOf(netFromYaml(base)), 'redacted').map((f) => f.content).join('');
    expect(plain).not.toContain('quickack');
    const quick = render(planOf(netFromYaml(base.replace('crypto: aes-gcm', 'crypto: aes-gcm\nrouteOptions: { quickack: true }'))), 'redacted');
    const routes = quick.flatMap((f) => f.content.split('\n')).filter((l) => l.startsWith('route replace'));
    expect(routes.length).toBeGreaterThan(0);
    for (const r of routes) expect(r).toMatch(/ quickack 1 # /);
  });

  test('a template variable without a value is an error, not an empty string', () => {
    const cfg = p().configs.get('alice')!;
    const bad = { ...templates, ip: '# {{nosuch}}\n' };
    expect(() => renderNode(cfg, { keys: new KdfKeySource(SECRET, SALT), mode: 'redacted', templates: bad, version: 'x' })).toThrow(/\{\{nosuch\}\}/);
  });
});

describe('iptables rendering', () => {
  test('own chains, one commented jump each, SNAT in nat and the exit policy in filter', () => {
    const cfg = planOf(exampleNet('three-mixes.yaml')).configs.get('or3')!;
    const text = renderIptables(cfg, { templates, version: 'x' });
    const lines = text.split('\n').filter((l) => l && !l.startsWith('#'));
    expect(lines.slice(0, 4)).toEqual([
      '*nat',
      ':ONIONCTL-POSTROUTING - [0:0]',
      '-A POSTROUTING -m comment --comment onionctl -j ONIONCTL-POSTROUTING',
      '-A ONIONCTL-POSTROUTING -s 100.64.3.1/32 -o eth1 -m comment --comment "circuit web exit SNAT" -j SNAT --to-source 203.0.113.1',
    ]);
    expect(lines.filter((l) => l === 'COMMIT')).toHaveLength(2);
    // rules outside onionctl's chains: only the two jumps
    expect(lines.filter((l) => l.startsWith('-A ') && !l.startsWith('-A ONIONCTL-'))).toEqual([
      '-A POSTROUTING -m comment --comment onionctl -j ONIONCTL-POSTROUTING',
      '-A FORWARD -m comment --comment onionctl -j ONIONCTL-FORWARD',
    ]);
  });

  test('more than 15 ports are split over several multiport rules; ranges count as two', () => {
    const ports = [...Array.from({ length: 14 }, (_, i) => 1000 + i), '2000-2100', 3000, 3001];
    const yaml = readFileSync(examplePath('three-mixes.yaml'), 'utf8').replace('ports: [80, 443]', `ports: [${ports.map((x) => (typeof x === 'string' ? `"${x}"` : x)).join(', ')}]`);
    const cfg = planOf(netFromYaml(yaml)).configs.get('or3')!;
    const rules = renderIptables(cfg, { templates, version: 'x' })
      .split('\n')
      .filter((l) => l.includes('--dports'));
    expect(rules.length).toBeGreaterThan(1);
    const seen: string[] = [];
    for (const r of rules) {
      const list = / --dports (\S+) /.exec(r)![1]!.split(',');
      const weight = list.reduce((a, x) => a + (x.includes(':') ? 2 : 1), 0);
      expect(weight).toBeLessThanOrEqual(15);
      seen.push(...list);
    }
    expect(seen).toEqual(ports.map((x) => String(x).replace('-', ':')));
  });

  test('the diff keys such a rule by the same units (split in model terms, not rendered and parsed back): read back, nothing to change', () => {
    const ports = [...Array.from({ length: 14 }, (_, i) => 1000 + i), '2000-2100', 3000, 3001];
    const yaml = readFileSync(examplePath('three-mixes.yaml'), 'utf8').replace('ports: [80, 443]', `ports: [${ports.map((x) => (typeof x === 'string' ? `"${x}"` : x)).join(', ')}]`);
    const cfg = planOf(netFromYaml(yaml)).configs.get('or3')!;
    const text = renderIptables(cfg, { templates, version: 'x' });
    const units = desiredFirewall(cfg).rules.filter((r) => r.filter?.ports);
    expect(units.map((u) => u.text)).toEqual(text.split('\n').filter((l) => l.includes('--dports')));
    expect(units.flatMap((u) => u.filter!.ports!)).toEqual(ports);
    // what iptables-save would print of that file (the same rules; render's header comments left out)
    const observed = observeNode('or3', { iptablesSave: text.split('\n').filter((l) => !l.startsWith('#')).join('\n') }, { pools: [] });
    expect(diffNode(cfg, observed)).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------

/** Can `nft -c` run here at all? (needs the nft binary and a kernel with nf_tables) */
function nftUsable(dir: string): { ok: true } | { ok: false; why: string } {
  const probe = path.join(dir, 'probe.nft');
  writeFileSync(probe, 'table ip onionctl_probe {\n\tchain c {\n\t\ttype filter hook forward priority filter; policy accept;\n\t}\n}\n');
  const r = spawnSync('nft', ['-c', '-f', probe], { encoding: 'utf8' });
  if (r.error) return { ok: false, why: `nft cannot be started: ${r.error.message}` };
  if (r.status !== 0) return { ok: false, why: `nft -c fails even on a trivial file: ${(r.stderr || r.stdout).trim()}` };
  return { ok: true };
}

describe('nftables rendering', () => {
  let dir: string;
  let usable: { ok: true } | { ok: false; why: string };
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'onionctl-nft-test-'));
    usable = nftUsable(dir);
    if (!usable.ok) console.warn(`SKIPPING nft -c checks: ${usable.why}`);
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const cases: [string, () => { net: Net; seed: string }][] = [
    ['three-mixes with nat: nftables', () => ({ net: netFromYaml(readFileSync(examplePath('three-mixes.yaml'), 'utf8').replace('crypto: aes-gcm', 'crypto: aes-gcm\nnat: nftables')), seed: 'nft' })],
    ['k2 (port ranges, two destinations)', () => ({ net: netFromYaml(K2_YAML.replace('crypto: aes-gcm', 'crypto: aes-gcm\n  nat: nftables')), seed: 'nft' })],
    ['k4 (exit r6 with its own interface)', () => ({ net: netFromYaml(K4_YAML), seed: 'k4-b' })],
  ];

  test.each(cases)('%s: nft -c accepts every .nft file; a broken copy is refused', async (_n, mk) => {
    const { net, seed } = mk();
    const p = planOf(net, seed);
    const files = render(p, 'redacted').filter((f) => f.name.endsWith('.nft'));
    expect(files.length).toBeGreaterThan(0);
    const exits = files.filter((f) => / snat to /.test(f.content));
    expect(exits.length).toBeGreaterThan(0);
    for (const f of files) {
      expect(f.content).toMatch(/^table ip onionctl \{\n\}\ndelete table ip onionctl\ntable ip onionctl \{$/m);
      expect(f.content).toMatch(/type nat hook postrouting priority srcnat; policy accept;/);
      expect(f.content).toMatch(/type filter hook forward priority filter; policy accept;/);
    }
    if (!usable.ok) return;
    for (const f of files) {
      const file = path.join(dir, f.name);
      await writeFile(file, f.content);
      const r = spawnSync('nft', ['-c', '-f', file], { encoding: 'utf8' });
      expect({ file: f.name, status: r.status, stderr: r.stderr }).toEqual({ file: f.name, status: 0, stderr: '' });
    }
    // the check can fail: a typo in a rule is refused
    const broken = path.join(dir, 'broken.nft');
    await writeFile(broken, exits[0]!.content.replace(' snat to ', ' snat too '));
    expect(spawnSync('nft', ['-c', '-f', broken], { encoding: 'utf8' }).status).not.toBe(0);
  });

  test('rules: addresses, ports as a set, ct state and ipsec reqids for the link rules, comments', () => {
    const cfg = planOf(netFromYaml(K2_YAML.replace('crypto: aes-gcm', 'crypto: aes-gcm\n  nat: nftables')), 'nft').configs.get('or2')!;
    expect(cfg.firewall.backend).toBe('nftables');
    const text = renderNft(cfg, { templates, version: 'x' });
    const a = cfg.firewall.snat[0]!;
    const A = `${(a.src.base >>> 24) & 255}.${(a.src.base >>> 16) & 255}.${(a.src.base >>> 8) & 255}.${a.src.base & 255}`;
    expect(text).toContain(`\t\tip saddr ${A} oifname "eth0" snat to 198.51.100.22 comment "circuit two exit SNAT"`);
    expect(text).toContain(`\t\tip saddr ${A} ip daddr 203.0.113.80 tcp dport { 80, 443, 8000-8080 } accept comment "circuit two exit policy"`);
    expect(text).toContain(`\t\tip saddr ${A} ip daddr 192.0.2.0/28 accept comment "circuit two exit policy"`);
    expect(text).toContain(`\t\tip saddr ${A} drop comment "circuit two exit policy: everything else"`);
    // the exit's link rules: replies and later packets first, the drop of everything else last
    const lines = text.split('\n').filter((l) => l.startsWith('\t\t') && !l.includes(' hook '));
    expect(lines.filter((l) => l.includes('ipsec'))).toEqual([
      expect.stringMatching(/^\t\tct state established,related ipsec out reqid \d+ accept comment "exit: replies into the circuits toward or1"$/),
      expect.stringMatching(/^\t\tct state established,related ipsec in reqid \d+ accept comment "exit: connections the circuits from or1 opened"$/),
      expect.stringMatching(/^\t\tipsec out reqid \d+ drop comment "exit: nothing else into the circuits toward or1"$/),
    ]);
    expect(lines[lines.length - 1]).toMatch(/drop comment "exit: nothing else/);
  });
});

describe('per-router firewall backend', () => {
  test('a mix can choose nftables on its own; an exit\'s exit.nat wins; others keep the topology default', async () => {
    const { netFromYaml } = await import('../helpers/net.js');
    const { buildConfigs } = await import('../../src/spd/build.js');
    const { reconcile } = await import('../../src/state/reconcile.js');
    const { emptyState } = await import('../../src/state/model.js');
    const { SeededRng } = await import('../../src/pathselect/rng.js');
    const net = netFromYaml(`version: 1
hops: 2
operators: [{ name: a }, { name: b }]
routers:
  - { name: r1, operator: a, nat: nftables, underlay: { interface: eth0, address: 198.51.100.1/24 }, pool: 100.64.1.0/24 }
  - { name: r2, operator: b, nat: nftables, underlay: { interface: eth0, address: 198.51.100.2/24 }, pool: 100.64.2.0/24,
      exit: { interface: eth1, address: 203.0.113.1/24, nat: iptables, allow: [{ to: 203.0.113.0/24 }] } }
clients: [{ name: c, underlay: { interface: eth0, address: 198.51.100.3/24 }, entry: [r1] }]
links: [[r1, r2]]
circuits: [{ name: x, client: c, to: [203.0.113.80/32] }]
`);
    const { state } = reconcile(net, emptyState('00'.repeat(32)), (l) => new SeededRng('1', l), 'now');
    const cfgs = buildConfigs(net, state);
    expect(cfgs.get('r1')!.firewall.backend).toBe('nftables');
    expect(cfgs.get('r2')!.firewall.backend).toBe('iptables');
    expect(cfgs.get('c')!.firewall.backend).toBe('iptables');
  });
});
