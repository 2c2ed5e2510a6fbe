import { describe, expect, test } from '@jest/globals';
import { parseTcpdump, pairs } from '../../src/lab/capture.js';
import { parseXfrmStats } from '../../src/lab/check.js';
import { labLayout, nodeBatch, rootBatch, serverBatch, checkLabSafe } from '../../src/lab/layout.js';
import { compareObservations } from '../../src/audit/observe.js';
import { exampleNet, netFromYaml } from '../helpers/net.js';

describe('tcpdump parsing', () => {
  const text = [
    'oc1a2bu1 In  IP 198.51.100.10 > 198.51.100.11: ESP(spi=0x4f000004,seq=0x1), length 196',
    'oc1a2bx4 Out IP 203.0.113.1.41234 > 203.0.113.80.80: Flags [S], seq 1, win 64240, length 0',
    'oc1a2bs5 In  IP 203.0.113.80 > 203.0.113.1: ICMP echo reply, id 3, seq 1, length 64',
    'oc1a2bu1 B   ARP, Request who-has 198.51.100.11 tell 198.51.100.10, length 28',
    'IP 192.0.2.1.53 > 192.0.2.2.5353: UDP, length 10',
    'garbage',
  ].join('\n');
  test('interface, addresses without ports, protocol and SPI', () => {
    expect(parseTcpdump(text)).toEqual([
      { iface: 'oc1a2bu1', src: '198.51.100.10', dst: '198.51.100.11', proto: 'esp', spi: '0x4f000004' },
      { iface: 'oc1a2bx4', src: '203.0.113.1', dst: '203.0.113.80', proto: 'tcp' },
      { iface: 'oc1a2bs5', src: '203.0.113.80', dst: '203.0.113.1', proto: 'icmp' },
      { iface: '', src: '192.0.2.1', dst: '192.0.2.2', proto: 'udp' },
    ]);
    expect(pairs(parseTcpdump(text + '\n' + text)).map((p) => p.count)).toEqual([2, 2, 2, 2]);
  });
});

describe('xfrm counters', () => {
  test('per-SPI packets and bytes from ip -s xfrm state', () => {
    const out = [
      'src 198.51.100.10 dst 198.51.100.11',
      '\tproto esp spi 0x4f000004(1325400068) reqid 1325400068(0x4f000004) mode tunnel',
      '\tlifetime current:',
      '\t  1234(bytes), 5(packets)',
      'src 198.51.100.11 dst 198.51.100.10',
      '\tproto esp spi 0x4f000005(1325400069) reqid 1325400069(0x4f000005) mode tunnel',
      '\tlifetime current:',
      '\t  0(bytes), 0(packets)',
    ].join('\n');
    const m = parseXfrmStats(out);
    expect(m.get(0x4f000004)).toEqual({ bytes: 1234, packets: 5 });
    expect(m.get(0x4f000005)).toEqual({ bytes: 0, packets: 0 });
  });
});

describe('comparison with the audit model', () => {
  const row = (src: string, dst: string, proto: 'esp' | 'clear', spi?: string) => ({ src, dst, proto, ...(spi ? { spi } : {}) });
  test('equal tables give no difference; a clear packet on a wire is reported', () => {
    const expected = { 'wire:alice~or1': [row('198.51.100.10', '198.51.100.11', 'esp', '0x4f000004')] };
    expect(compareObservations(expected, { 'wire:alice~or1': [row('198.51.100.10', '198.51.100.11', 'esp', '0x4f000004')] })).toEqual([]);
    const leak = compareObservations(expected, {
      'wire:alice~or1': [row('198.51.100.10', '198.51.100.11', 'esp', '0x4f000004'), row('198.51.100.10', '203.0.113.80', 'clear')],
    });
    expect(leak).toEqual([{ point: 'wire:alice~or1', missing: [], unexpected: ['198.51.100.10>203.0.113.80 clear'] }]);
    expect(compareObservations(expected, { 'wire:alice~or1': [] })[0]!.missing).toHaveLength(1);
  });
});

describe('lab layout', () => {
  const net = exampleNet('three-mixes.yaml');
  const l = labLayout(net, 'ab12');
  test('unique names that fit IFNAMSIZ, a management /16 that overlaps nothing', () => {
    const veths = [...l.nodes.flatMap((n) => [n.underlay.hostVeth, n.mgmt.hostVeth, ...(n.outside ? [n.outside.hostVeth] : [])]), ...l.servers.map((s) => s.iface.hostVeth)];
    expect(new Set(veths).size).toBe(veths.length);
    for (const v of [...veths, ...Object.values(l.bridges)]) expect(v.length).toBeLessThanOrEqual(15);
    expect(l.nodes.map((n) => n.ns)).toEqual(['oc-ab12-or1', 'oc-ab12-or2', 'oc-ab12-or3', 'oc-ab12-alice']);
    expect(l.mgmtNet.len).toBe(16);
    expect(l.servers).toHaveLength(1);
  });
  test('batches: the controller address only on a directly run lab; exits route to servers on-link', () => {
    expect(rootBatch(l, { controllerOnBridge: true }).some((x) => x.startsWith('address add'))).toBe(true);
    expect(rootBatch(l, { controllerOnBridge: false }).some((x) => x.startsWith('address add'))).toBe(false);
    const or3 = l.nodes.find((n) => n.name === 'or3')!;
    expect(nodeBatch(or3, true)).toContain('route add 203.0.113.80/32 dev eth1 quickack 1');
    expect(serverBatch(l.servers[0]!)).toContain('route add 203.0.113.1/32 dev eth0 quickack 1');
  });
  test('a topology with non-lab addresses is refused with the offending ones named', () => {
    const yaml = `version: 1
operators: [{ name: a }, { name: b }]
routers:
  - { name: r1, operator: a, underlay: { interface: eth0, address: 10.0.0.1/24 }, pool: 100.64.1.0/24 }
  - { name: r2, operator: b, underlay: { interface: eth0, address: 198.51.100.2/24 }, pool: 100.64.2.0/24,
      exit: { interface: eth1, address: 203.0.113.1/24, allow: [{ to: 203.0.113.0/24 }] } }
clients: [{ name: c, underlay: { interface: eth0, address: 198.51.100.3/24 }, entry: [r1] }]
links: [[r1, r2]]
circuits: [{ name: x, client: c, to: [203.0.113.80/32], hops: 2 }]
`;
    expect(() => checkLabSafe(netFromYaml(yaml))).toThrow(/r1 underlay 10\.0\.0\.1\/32/);
  });
});
