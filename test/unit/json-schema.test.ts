/**
 * The topology's JSON Schema (src/topology/json-schema.ts, `onionctl schema`): the committed copy
 * is what the command prints, the examples pass it, and what the zod schema refuses for its
 * shape (an unknown key, a wrong type, a value outside an enum or a bound) the JSON Schema refuses
 * too, so that an editor flags it while the file is typed.
 */
import { describe, expect, test } from '@jest/globals';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { topologyJsonSchema } from '../../src/topology/json-schema.js';
import { EXAMPLES, ROOT, run } from '../helpers/cli.js';

const schema = topologyJsonSchema();
const ajv = new Ajv2020({ allErrors: true, strict: false });
const check = ajv.compile(schema);
const example = (n: string) => parse(readFileSync(path.join(EXAMPLES, n), 'utf8')) as Record<string, unknown>;

describe('the topology JSON Schema', () => {
  test('docs/topology.schema.json is what `onionctl schema` prints', async () => {
    const r = await run(['schema']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual(schema);
    expect(readFileSync(path.join(ROOT, 'docs/topology.schema.json'), 'utf8')).toBe(r.stdout);
  });

  test.each(['three-mixes.yaml', 'large.yaml'])('examples/%s passes', (n) => {
    expect(check(example(n)) ? [] : check.errors).toEqual([]);
  });

  test.each([
    ['an unknown key', (t: Record<string, unknown>) => ({ ...t, hopz: 3 })],
    ['a wrong type', (t: Record<string, unknown>) => ({ ...t, hops: 'three' })],
    ['hops out of bounds', (t: Record<string, unknown>) => ({ ...t, hops: 9 })],
    ['an unknown crypto profile', (t: Record<string, unknown>) => ({ ...t, crypto: 'rot13' })],
    ['a router without a pool', (t: Record<string, unknown>) => ({ ...t, routers: (t.routers as Record<string, unknown>[]).map(({ pool: _p, ...r }) => r) })],
    ['a bad name', (t: Record<string, unknown>) => ({ ...t, operators: [{ name: 'Bad Name' }] })],
  ])('%s is refused', (_what, edit) => {
    expect(check(edit(example('three-mixes.yaml')))).toBe(false);
  });
});
