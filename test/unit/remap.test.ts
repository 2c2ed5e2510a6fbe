import { describe, expect, test } from '@jest/globals';
import { readFileSync } from 'node:fs';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { labLayout } from '../../src/lab/layout.js';
import { formatMapping, remapToLab } from '../../src/lab/remap.js';
import { cidrContains, cidrContainsAddr, cidrOverlaps, isLabSafe, parseCidr, parseIPv4, parseIfAddr, slash16, type Cidr } from '../../src/net/addr.js';
import { parseBuildableTopology } from '../../src/pathselect/buildable.js';
import { buildNet } from '../../src/topology/net.js';
import { TopologySchema, type Topology } from '../../src/topology/schema.js';
import { validateSemantics } from '../../src/topology/validate.js';
import { dedent, examplePath, topologyFromYaml } from '../helpers/net.js';

// Real-looking addresses, only as text here: the point of remap is that none of them reaches a wire.
const REAL = `
  version: 1
  hops: 3
  operators: [{ name: a }, { name: b }, { name: c }, { name: d }, { name: e }]
  routers:
    - name: or1
      operator: a
      underlay: { interface: eth0, address: 10.1.2.11/24 }
      pool: 172.16.1.0/24
      ssh: { host: 10.1.2.11, user: root }
    - name: or2
      operator: b
      underlay: { interface: eth0, address: 10.2.7.12/24 }
      pool: 172.16.2.0/24
      ssh: { host: mix2.example.net }
    - name: or3
      operator: c
      underlay: { interface: eth0, address: 10.3.0.13/24 }
      pool: 172.17.0.0/26
      exit:
        interface: eth1
        address: 8.8.8.1/24
        allow:
          - { to: 8.8.8.0/24, proto: tcp, ports: [80, 443] }
          - { to: 0.0.0.0/0, proto: icmp }
    - name: or4
      operator: d
      underlay: { interface: eth0, address: 10.1.2.14/24 }
      pool: 100.64.9.0/24
    - name: or5
      operator: e
      underlay: { interface: eth0, address: 10.4.9.15/24 }
      pool: 172.17.0.64/26
      exit:
        interface: eth1
        address: 8.8.4.1/24
        allow:
          - { to: 8.8.0.0/16 }
  clients:
    - { name: alice, underlay: { interface: eth0, address: 10.1.2.10/24 }, entry: [or1] }
    - { name: bob, underlay: { interface: eth0, address: 192.168.5.2/24 }, entry: [or4] }
  links:
    - [or1, or2]
    - [or2, or3]
    - [or2, or5]
    - [or1, or5]
    - [or4, or2]
    - [or4, or5]
  circuits:
    - { name: web, client: alice, to: [8.8.8.8/32], distinct: { subnets16: true } }
    - { name: dns, client: bob, to: [8.8.4.4, 8.8.4.0/30], hops: 2 }
`;

function example(name: string): Topology {
  const file = examplePath(name);
  return parseBuildableTopology(readFileSync(file, 'utf8'), file).topology;
}

/** Every address field of a topology, in a fixed order, with the prefix it stands for. */
function addressFields(t: Topology): { where: string; text: string; cidr: Cidr; addr: number }[] {
  const out: { where: string; text: string; cidr: Cidr; addr: number }[] = [];
  const ifa = (where: string, text: string) => {
    const a = parseIfAddr(text);
    out.push({ where, text, cidr: { base: (a.addr & (a.len === 0 ? 0 : (0xffffffff << (32 - a.len)) >>> 0)) >>> 0, len: a.len }, addr: a.addr });
  };
  const pfx = (where: string, text: string) => {
    const c = parseCidr(text);
    out.push({ where, text, cidr: c, addr: c.base });
  };
  for (const r of t.routers) {
    ifa(`${r.name} underlay`, r.underlay.address);
    pfx(`${r.name} pool`, r.pool);
    if (r.exit?.address) ifa(`${r.name} exit`, r.exit.address);
    r.exit?.allow.forEach((a, i) => pfx(`${r.name} allow ${i}`, a.to));
    if (r.ssh?.host && /^[0-9.]+$/.test(r.ssh.host)) pfx(`${r.name} ssh`, r.ssh.host);
  }
  for (const c of t.clients) ifa(`${c.name} underlay`, c.underlay.address);
  for (const c of t.circuits) c.to.forEach((d, i) => pfx(`${c.name} to ${i}`, d));
  return out;
}

describe('remapToLab: lab-safe topologies are left alone', () => {
  test.each(['three-mixes.yaml', 'large.yaml'])('%s comes back unchanged with an empty mapping', (name) => {
    const t = example(name);
    const before = structuredClone(t);
    const r = remapToLab(t);
    expect(r.mapping).toEqual([]);
    expect(r.topology).toEqual(before);
    expect(t).toEqual(before); // the input is not touched
  });
});

describe('remapToLab: a topology with real addresses', () => {
  const t = topologyFromYaml(REAL);
  const before = structuredClone(t);
  const r = remapToLab(t);
  const src = addressFields(t);
  const dst = addressFields(r.topology);

  test('the input is not modified and the structure (names, links, options) is the same', () => {
    expect(t).toEqual(before);
    expect(r.topology.links).toEqual(t.links);
    expect(r.topology.routers.map((x) => x.name)).toEqual(t.routers.map((x) => x.name));
    expect(r.topology.circuits.map((c) => [c.name, c.hops, c.distinct])).toEqual(t.circuits.map((c) => [c.name, c.hops, c.distinct]));
    expect(dst.map((d) => d.where)).toEqual(src.map((s) => s.where));
  });

  test('every address lands in lab-safe ranges, except the 0.0.0.0/0 allow rule, which is kept', () => {
    for (const d of dst) {
      if (d.cidr.len === 0) continue;
      expect([d.where, isLabSafe(d.cidr) && isLabSafe({ base: d.addr, len: 32 })]).toEqual([d.where, true]);
    }
    expect(r.topology.routers[2]!.exit!.allow[1]!.to).toBe('0.0.0.0/0');
    // a host name is not an address; the IP address of or1's ssh host moves with its underlay
    expect(r.topology.routers[1]!.ssh!.host).toBe('mix2.example.net');
    expect(r.topology.routers[0]!.ssh!.host).toBe(r.topology.routers[0]!.underlay.address.split('/')[0]);
  });

  test('what was lab-safe already stays (or4 pool), and nothing moved overlaps it', () => {
    expect(r.topology.routers[3]!.pool).toBe('100.64.9.0/24');
    const kept = parseCidr('100.64.9.0/24');
    for (const m of r.mapping) expect([m.to, cidrOverlaps(parseCidr(m.to), kept)]).toEqual([m.to, false]);
  });

  test('prefix lengths are kept; bare addresses stay bare', () => {
    for (const [i, s] of src.entries()) expect(dst[i]!.cidr.len).toBe(s.cidr.len);
    expect(r.topology.circuits[1]!.to[0]).toMatch(/^[0-9.]+$/);
  });

  test('/16 membership of every pair of addresses is kept (distinct /16s stay distinct)', () => {
    const under = (x: typeof src) => x.filter((a) => a.where.endsWith('underlay'));
    const s = under(src);
    const d = under(dst);
    for (let i = 0; i < s.length; i++) {
      for (let j = i + 1; j < s.length; j++) {
        expect([s[i]!.where, s[j]!.where, slash16(d[i]!.addr) === slash16(d[j]!.addr)]).toEqual([s[i]!.where, s[j]!.where, slash16(s[i]!.addr) === slash16(s[j]!.addr)]);
      }
    }
    expect(new Set(d.map((a) => slash16(a.addr))).size).toBe(new Set(s.map((a) => slash16(a.addr))).size);
  });

  test('same subnet, same host part: or1, or4 and alice share one /24 with hosts .11, .14, .10', () => {
    const ul = (n: string) => dst.find((a) => a.where === `${n} underlay`)!;
    expect(ul('or1').cidr).toEqual(ul('alice').cidr);
    expect(ul('or4').cidr).toEqual(ul('alice').cidr);
    expect([ul('or1').addr & 255, ul('or4').addr & 255, ul('alice').addr & 255]).toEqual([11, 14, 10]);
  });

  test('containment and overlap between every pair of prefixes and addresses are kept', () => {
    for (let i = 0; i < src.length; i++) {
      for (let j = 0; j < src.length; j++) {
        if (i === j) continue;
        const key = [src[i]!.where, src[j]!.where];
        expect([...key, cidrContains(dst[i]!.cidr, dst[j]!.cidr)]).toEqual([...key, cidrContains(src[i]!.cidr, src[j]!.cidr)]);
        expect([...key, cidrContainsAddr(dst[i]!.cidr, dst[j]!.addr)]).toEqual([...key, cidrContainsAddr(src[i]!.cidr, src[j]!.addr)]);
        expect([...key, dst[i]!.addr === dst[j]!.addr]).toEqual([...key, src[i]!.addr === src[j]!.addr]);
      }
    }
    // spelled out: web's destination inside or3's allow prefix and exit subnet, dns's inside or5's /16
    const x = r.topology;
    expect(cidrContains(parseCidr(x.routers[2]!.exit!.allow[0]!.to), parseCidr(x.circuits[0]!.to[0]!))).toBe(true);
    expect(cidrContains(parseCidr(x.routers[4]!.exit!.allow[0]!.to), parseCidr(x.circuits[1]!.to[1]!))).toBe(true);
    expect(cidrContains(parseCidr(x.routers[4]!.exit!.allow[0]!.to), parseCidr(x.routers[2]!.exit!.allow[0]!.to))).toBe(true);
  });

  test('the result passes semantic validation, round-trips through YAML and labLayout accepts it', () => {
    expect(validateSemantics(r.topology)).toEqual([]);
    const again = parseBuildableTopology(stringifyYaml(r.topology), 'lab-topology.yaml').topology;
    expect(again).toEqual(r.topology);
    const l = labLayout(buildNet(r.topology), 'ab12');
    for (const d of dst) if (d.cidr.len > 0) expect([d.where, cidrOverlaps(l.mgmtNet, d.cidr)]).toEqual([d.where, false]);
    expect(l.servers.map((s) => s.iface.addr)).toHaveLength(2);
  });

  test('the mapping lists every moved block once, lab-safe, same length, with what is in it', () => {
    expect(r.mapping.length).toBeGreaterThan(0);
    for (const m of r.mapping) {
      expect(isLabSafe(parseCidr(m.to))).toBe(true);
      expect(parseCidr(m.to).len).toBe(parseCidr(m.from).len);
    }
    const tos = r.mapping.map((m) => parseCidr(m.to));
    for (let i = 0; i < tos.length; i++) for (let j = i + 1; j < tos.length; j++) expect(cidrOverlaps(tos[i]!, tos[j]!)).toBe(false);
    const byFrom = new Map(r.mapping.map((m) => [m.from, m]));
    expect(byFrom.get('10.1.0.0/16')?.what).toBe('underlay: or1, or4, alice; ssh host: or1');
    expect(byFrom.get('8.8.0.0/16')?.what).toBe('exit address: or3, or5; allow: or3, or5; destination: web, dns');
    expect(byFrom.get('192.168.0.0/16')?.what).toBe('underlay: bob');
    expect(formatMapping(r.mapping).join('\n')).toContain('10.1.0.0/16    -> ');
  });

  test('deterministic: same input, same output; the output maps onto itself', () => {
    const again = remapToLab(topologyFromYaml(REAL));
    expect(again).toEqual(r);
    expect(remapToLab(r.topology)).toEqual({ topology: r.topology, mapping: [] });
    expect(r.mapping.map((m) => `${m.from} -> ${m.to}`)).toEqual([
      '8.8.0.0/16 -> 100.65.0.0/16',
      '10.1.0.0/16 -> 100.66.0.0/16',
      '10.2.0.0/16 -> 100.67.0.0/16',
      '10.3.0.0/16 -> 100.68.0.0/16',
      '10.4.0.0/16 -> 100.69.0.0/16',
      // the small pools are packed into what or4's lab-safe pool (100.64.9.0/24) leaves of 100.64.0.0/16
      '172.16.1.0/24 -> 100.64.0.0/24',
      '172.16.2.0/24 -> 100.64.1.0/24',
      '172.17.0.0/26 -> 100.64.2.0/26',
      '172.17.0.64/26 -> 100.64.2.64/26',
      '192.168.0.0/16 -> 100.70.0.0/16',
    ]);
  });
});

describe('remapToLab: mixed and impossible topologies', () => {
  const schemaOnly = (yaml: string): Topology => TopologySchema.parse(parseYaml(dedent(yaml)));

  test('a real /16 that holds a lab-safe /24 moves as a whole (192.0.3.x and 192.0.2.x stay in one /16)', () => {
    const t = schemaOnly(`
      version: 1
      operators: [{ name: a }]
      routers:
        - { name: r1, operator: a, underlay: { interface: eth0, address: 192.0.2.1/24 }, pool: 100.64.1.0/24 }
        - { name: r2, operator: a, underlay: { interface: eth0, address: 192.0.3.1/24 }, pool: 100.64.2.0/24 }
    `);
    const r = remapToLab(t);
    expect(r.mapping.map((m) => m.from)).toEqual(['192.0.0.0/16']);
    const [a, b] = r.topology.routers.map((x) => parseIfAddr(x.underlay.address).addr);
    expect(slash16(a!)).toBe(slash16(b!));
    expect(isLabSafe({ base: a!, len: 32 }) && isLabSafe({ base: b!, len: 32 })).toBe(true);
    expect(r.topology.routers.map((x) => x.pool)).toEqual(['100.64.1.0/24', '100.64.2.0/24']);
  });

  test('a prefix wider than any lab-safe block is refused, naming it', () => {
    const t = schemaOnly(`
      version: 1
      operators: [{ name: a }]
      routers:
        - { name: r1, operator: a, underlay: { interface: eth0, address: 10.1.0.1/24 }, pool: 172.0.0.0/8 }
    `);
    expect(() => remapToLab(t)).toThrow(/172\.0\.0\.0\/8 \(pool: r1\) is too large for the lab.*at most \/11/);
  });

  test('more distinct /16s than the lab holds: a clear error', () => {
    const routers = Array.from({ length: 70 }, (_, i) => `  - { name: r${i}, operator: a, underlay: { interface: eth0, address: 10.${i}.0.1/24 }, pool: 100.64.${i}.0/24 }`);
    const t = schemaOnly(['version: 1', 'operators: [{ name: a }]', 'routers:', ...routers].join('\n'));
    expect(() => remapToLab(t)).toThrow(/no free lab-safe \/16 left for 10\.\d+\.0\.0\/16 \(underlay: r\d+\)/);
  });

  test('the lab management /16 stays free even when the lab-safe part already uses the top of 100.64.0.0/10', () => {
    const t = schemaOnly(`
      version: 1
      operators: [{ name: a }]
      routers:
        - { name: r1, operator: a, underlay: { interface: eth0, address: 100.127.0.1/16 }, pool: 100.126.0.0/16 }
        - { name: r2, operator: a, underlay: { interface: eth0, address: 10.9.0.1/16 }, pool: 172.16.0.0/12 }
    `);
    const r = remapToLab(t);
    const l = labLayout(buildNet(r.topology), '00ff');
    expect(l.mgmtNet).toEqual(parseCidr('100.125.0.0/16'));
    for (const m of r.mapping) expect(cidrOverlaps(parseCidr(m.to), l.mgmtNet)).toBe(false);
    expect(parseIPv4(r.topology.routers[1]!.underlay.address.split('/')[0]!) >>> 16).not.toBe(parseIPv4('100.127.0.1') >>> 16);
  });
});
