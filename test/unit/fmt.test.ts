/** onionctl fmt (src/topology/format.ts, src/cli/fmt-command.ts): one layout, nothing else changed. */
import { describe, expect, jest, test } from '@jest/globals';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { formatTopologyText } from '../../src/topology/format.js';
import { TopologyError } from '../../src/topology/diagnostics.js';
import { EXAMPLES, modeOf, run, SPAWN_TIMEOUT, tempDir } from '../helpers/cli.js';

jest.setTimeout(SPAWN_TIMEOUT);

const MESSY = [
  '# my overlay',
  'version:    1',
  'routers:',
  '    - name: or1   # the entry',
  '      pool: "100.64.1.0/24"',
  '      underlay: {interface: eth0,   address: 198.51.100.11/24}',
  'links:',
  '    -   [or1,or2]',
  '',
].join('\n');

describe('formatTopologyText', () => {
  test('re-indents and re-spaces, keeps comments, quotes and values; formatting twice changes nothing', () => {
    const out = formatTopologyText(MESSY, 't.yaml');
    expect(out).toBe(
      [
        '# my overlay',
        'version: 1',
        'routers:',
        '  - name: or1 # the entry',
        '    pool: "100.64.1.0/24"',
        '    underlay: { interface: eth0, address: 198.51.100.11/24 }',
        'links:',
        '  - [ or1, or2 ]',
        '',
      ].join('\n'),
    );
    expect(parse(out)).toEqual(parse(MESSY));
    expect(formatTopologyText(out, 't.yaml')).toBe(out);
  });

  test.each(['three-mixes.yaml', 'large.yaml'])('examples/%s keeps its meaning and every comment', async (n) => {
    const text = await fs.readFile(path.join(EXAMPLES, n), 'utf8');
    const out = formatTopologyText(text, n);
    expect(parse(out)).toEqual(parse(text));
    const comments = (t: string) => t.split('\n').filter((l) => l.includes('#')).map((l) => l.slice(l.indexOf('#')).trim());
    expect(comments(out)).toEqual(comments(text));
  });

  test('not YAML: a located error', () => {
    try {
      formatTopologyText('version: 1\nrouters:\n  - name: [\n', 'bad.yaml');
      throw new Error('no error');
    } catch (e) {
      expect(e).toBeInstanceOf(TopologyError);
      expect((e as TopologyError).diagnostics[0]).toMatchObject({ file: 'bad.yaml', line: expect.any(Number), col: expect.any(Number) });
    }
  });
});

describe('onionctl fmt', () => {
  test('in place, keeping the mode; --check lists what would change and exits 1, then 0; a bad file among several changes none', async () => {
    const dir = await tempDir();
    const a = path.join(dir, 'a.yaml');
    const b = path.join(dir, 'b.yaml');
    await fs.writeFile(a, MESSY, { mode: 0o640 });
    await fs.writeFile(b, 'version: 1\n');
    const check = await run(['fmt', '--check', a, b]);
    expect(check.code).toBe(1);
    expect(check.stdout).toBe(`${a}\n`);
    expect(check.stderr).toMatch(/1 of 2 files not formatted/);
    expect(await fs.readFile(a, 'utf8')).toBe(MESSY);

    const bad = path.join(dir, 'bad.yaml');
    await fs.writeFile(bad, 'version: 1\nversion: 2\n');
    const refused = await run(['fmt', a, bad]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/bad\.yaml:2:1: YAML: Map keys must be unique/);
    expect(await fs.readFile(a, 'utf8')).toBe(MESSY);

    const done = await run(['fmt', a, b]);
    expect(done.code).toBe(0);
    expect(done.stdout).toBe(`${a}\n`);
    expect(await fs.readFile(a, 'utf8')).toBe(formatTopologyText(MESSY, a));
    expect(await modeOf(a)).toBe(0o640);
    expect((await run(['fmt', '--check', a, b])).code).toBe(0);
  });
});
