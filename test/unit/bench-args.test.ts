/**
 * The lab benchmarks take the lab kernel (issue 13: every benchmark runs on both kernels of the
 * lab matrix): --kernel and --xfrm-interface reach `onionctl lab up`, other options keep their
 * defaults and checks.
 */
import { describe, expect, test } from '@jest/globals';
import { kernelUpArgs } from '../../bench/common.js';
import { parseArgs as dataplaneArgs } from '../../bench/dataplane.js';
import { parseArgs as tfcArgs } from '../../bench/tfc.js';

describe('lab benchmark arguments', () => {
  test('kernelUpArgs: nothing by default, then --kernel and --xfrm-interface for lab up', () => {
    expect(kernelUpArgs({})).toEqual([]);
    expect(kernelUpArgs({ kernel: '6.12', 'xfrm-interface': true })).toEqual(['--kernel', '6.12', '--xfrm-interface']);
  });

  test('dataplane: defaults, the kernel, and clear errors', () => {
    expect(dataplaneArgs([])).toEqual({ topology: 'examples/three-mixes.yaml', reps: 10, pings: 20, connections: 'keep-alive', offloads: 'off', json: false, upArgs: [] });
    expect(dataplaneArgs(['--kernel', '6.12', '--xfrm-interface', '--reps', '3', '--connections', 'close']).upArgs).toEqual(['--kernel', '6.12', '--xfrm-interface']);
    expect(() => dataplaneArgs(['--connections', 'sometimes'])).toThrow('--connections is keep-alive or close');
    expect(() => dataplaneArgs(['--reps', '0'])).toThrow('--reps and --pings must be >= 1');
    expect(() => dataplaneArgs(['--bogus'])).toThrow();
  });

  test('tfc: defaults, the kernel, and clear errors', () => {
    expect(tfcArgs([])).toEqual({ size: 512, layers: '[3]', reps: 5, pings: 500, pingSizes: [56, 400], json: false, upArgs: [] });
    expect(tfcArgs(['--layers', '1,2', '--kernel', '/boot/linux'])).toMatchObject({ layers: '[1,2]', upArgs: ['--kernel', '/boot/linux'] });
    expect(() => tfcArgs(['--size', '10'])).toThrow('bad --reps, --pings, --size or --ping-sizes');
  });
});

describe('bench/apply arguments', () => {
  test('defaults, the kernel, and clear errors', async () => {
    const { parseArgs } = await import('../../bench/apply.js');
    expect(parseArgs([])).toEqual({ sizes: [1, 4, 8], reps: 3, circuitsPerRouter: 160, seed: '1', json: false, upArgs: [] });
    expect(parseArgs(['--kernel', '6.12', '--xfrm-interface', '--sizes', '4']).upArgs).toEqual(['--kernel', '6.12', '--xfrm-interface']);
    expect(() => parseArgs(['--sizes', '9'])).toThrow('--sizes: 1..8 routers');
  });
});
