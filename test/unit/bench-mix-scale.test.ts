/**
 * The pure helpers of bench/mix-scale.ts: the topology it loads into the lab must be one onionctl
 * accepts and plans, with the measured circuit's per-circuit rules after every background one.
 */
import { describe, expect, test } from '@jest/globals';
import { readFileSync } from 'node:fs';
import { parseArgs, spdSummary, widenTopology, withBackground } from '../../bench/mix-scale.js';
import { computePlan } from '../../src/plan/plan.js';
import { rngFactory } from '../../src/pathselect/rng.js';
import { emptyState } from '../../src/state/model.js';
import { examplePath, netFromYaml } from '../helpers/net.js';

describe('bench/mix-scale helpers', () => {
  const wide = widenTopology(readFileSync(examplePath('three-mixes.yaml'), 'utf8'));

  test('the widened topology with 5 background circuits plans; the background circuits come first', () => {
    const net = netFromYaml(withBackground(wide, 'alice', 5));
    expect(net.circuits.map((c) => c.name)).toEqual(['bg00000', 'bg00001', 'bg00002', 'bg00003', 'bg00004', 'web']);
    const p = computePlan({ net, state: emptyState('5a'.repeat(32)), rngFor: rngFactory('ms'), now: '2024-01-01T00:00:00Z' });
    const exitRules = p.configs.get('or3')!.firewall.forward.map((r) => r.comment);
    expect(exitRules.findIndex((c) => c.startsWith('circuit web'))).toBeGreaterThan(exitRules.findIndex((c) => c.startsWith('circuit bg00004')));
    expect(p.state.circuits.bg00004!.to).toEqual(['198.18.0.4/32']);
  });

  test('pools are one /16 per router; the exit allows UDP to 198.18.0.0/15', () => {
    expect(wide).toContain('pool: 100.100.0.0/16');
    expect(wide).toContain('pool: 100.102.0.0/16');
    expect(wide).toMatch(/to: 198\.18\.0\.0\/15\n\s+proto: udp/);
  });

  test('spdSummary keeps the SPD lines of ip -s -s xfrm policy count', () => {
    const text = 'SPD IN  1 OUT 2 FWD 2 (Sock: IN 0 OUT 0 FWD 0)\nSPD buckets: count 7 Max 1048576\nSPD IPv4 thresholds: local 32 remote 32\nother\n';
    expect(spdSummary(text)).toBe('SPD IN 1 OUT 2 FWD 2 (Sock: IN 0 OUT 0 FWD 0); SPD buckets: count 7 Max 1048576; SPD IPv4 thresholds: local 32 remote 32');
  });

  test('arguments: defaults, lists, and a clear error for a bad value', () => {
    expect(parseArgs([])).toMatchObject({ counts: [0, 100, 1000, 10000], reps: 3, pings: 20, guestMemory: 4096, xfrmInterface: false });
    expect(parseArgs(['--counts', '0,50', '--kernel', '6.12', '--xfrm-interface'])).toMatchObject({ counts: [0, 50], kernel: '6.12', xfrmInterface: true });
    expect(() => parseArgs(['--reps', 'many'])).toThrow('--reps: not a whole number: many');
    expect(() => parseArgs(['--nope'])).toThrow();
  });
});
