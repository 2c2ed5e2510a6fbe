/**
 * The layering of src/ (docs/architecture.md), checked on the source's own import statements:
 * every folder sits on a floor and imports only from floors below it or its own; no two files and
 * no two folders import each other, directly or round a loop; the pure core does no I/O and reads
 * no clock or randomness of its own.
 */
import { describe, expect, test } from '@jest/globals';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT } from '../helpers/cli.js';

/** bottom first; a folder may import from its own floor and below */
export const FLOORS: string[][] = [
  ['util'],
  ['net'],
  ['topology'],
  ['keys', 'pathselect', 'trust'],
  ['model', 'state'],
  ['exit-nat', 'render'],
  ['spd'],
  ['readback'],
  ['diff', 'remote', 'rekey', 'store', 'graph', 'audit'],
  ['status', 'apply', 'plan'],
  ['lab'],
  ['cli'],
];
/** folders whose code may not touch files, processes, the network, the clock or randomness */
const PURE = ['net', 'topology', 'keys', 'trust', 'model', 'state', 'exit-nat', 'render', 'spd', 'plan', 'readback', 'diff', 'rekey', 'graph', 'audit', 'status'];

const SRC = path.join(ROOT, 'src');

function sources(dir = SRC): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...sources(p));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

interface Import {
  from: string;
  to: string;
  spec: string;
}

function importsOf(file: string, text: string): Import[] {
  const out: Import[] = [];
  // import/export ... from '...' (multi-line lists included) and bare dynamic import('...')
  for (const m of text.matchAll(/^\s*(?:import|export)\b[^;]*?\bfrom\s+'([^']+)'|\bimport\(\s*'([^']+)'\s*\)/gms)) {
    const spec = (m[1] ?? m[2])!;
    const to = spec.startsWith('.') ? path.relative(ROOT, path.resolve(path.dirname(file), spec.replace(/\.js$/, '.ts'))) : spec;
    out.push({ from: path.relative(ROOT, file), to, spec });
  }
  return out;
}

const files = sources();
const imports = files.flatMap((f) => importsOf(f, readFileSync(f, 'utf8')));
const folderOf = (rel: string) => (rel.startsWith('src/') ? rel.split('/')[1]! : undefined);
const floorOf = new Map(FLOORS.flatMap((fs, i) => fs.map((f) => [f, i] as const)));

function cycles(edges: Map<string, Set<string>>): string[][] {
  const out: string[][] = [];
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (n: string) => {
    state.set(n, 'open');
    stack.push(n);
    for (const m of edges.get(n) ?? []) {
      if (state.get(m) === 'open') out.push([...stack.slice(stack.indexOf(m)), m]);
      else if (!state.has(m)) visit(m);
    }
    stack.pop();
    state.set(n, 'done');
  };
  for (const n of [...edges.keys()].sort()) if (!state.has(n)) visit(n);
  return out;
}

describe('the layers of src/', () => {
  test('the import reader sees the imports (a check of the check)', () => {
    expect(imports.length).toBeGreaterThan(300);
    expect(imports).toContainEqual(expect.objectContaining({ from: 'src/cli/main.ts', to: 'src/cli/plan-command.ts' }));
    // a multi-line import list
    expect(importsOf(path.join(SRC, 'x/a.ts'), "import {\n  a,\n  b,\n} from '../y/b.js';\n")).toEqual([{ from: 'src/x/a.ts', to: 'src/y/b.ts', spec: '../y/b.js' }]);
    expect(cycles(new Map([['a', new Set(['b'])], ['b', new Set(['a'])]]))).toEqual([['a', 'b', 'a']]);
  });

  test('every folder has a floor', () => {
    const folders = [...new Set(files.map((f) => folderOf(path.relative(ROOT, f))!))].filter((f) => !f.endsWith('.ts'));
    expect(folders.filter((f) => !floorOf.has(f))).toEqual([]);
  });

  test('no import runs up a floor', () => {
    const up = imports
      .filter((i) => folderOf(i.to) !== undefined && folderOf(i.from) !== folderOf(i.to))
      .filter((i) => floorOf.get(folderOf(i.to)!)! > floorOf.get(folderOf(i.from)!)!)
      .map((i) => `${i.from} -> ${i.to}`);
    expect(up).toEqual([]);
  });

  test('no circle of imports between folders', () => {
    const edges = new Map<string, Set<string>>();
    for (const i of imports) {
      const a = folderOf(i.from);
      const b = folderOf(i.to);
      if (a && b && a !== b) edges.set(a, (edges.get(a) ?? new Set()).add(b));
    }
    expect(cycles(edges)).toEqual([]);
  });

  test('no circle of imports between files', () => {
    const edges = new Map<string, Set<string>>();
    for (const i of imports) if (i.to.startsWith('src/')) edges.set(i.from, (edges.get(i.from) ?? new Set()).add(i.to));
    expect(cycles(edges)).toEqual([]);
  });

  test('the pure core does no I/O and brings no clock or randomness of its own', () => {
    const bad: string[] = [];
    for (const f of files) {
      const rel = path.relative(ROOT, f);
      if (!PURE.includes(folderOf(rel)!)) continue;
      const text = readFileSync(f, 'utf8');
      for (const i of importsOf(f, text)) {
        if (/^(node:)?(fs|fs\/promises|child_process|net|dgram|http|https|os)$|^(execa|ssh2)$/.test(i.spec)) bad.push(`${rel} imports ${i.spec}`);
      }
      for (const m of text.matchAll(/Math\.random\(|Date\.now\(|new Date\(\)|randomBytes\(|process\.(env|argv|stdout|stderr)/g)) bad.push(`${rel}: ${m[0]}`);
    }
    expect(bad).toEqual([]);
  });
});
