/**
 * onionctl graph (src/graph, src/cli/graph-command.ts): DOT and Mermaid name every node and
 * draw every circuit hop; the SVG from Graphviz renders to a real PNG; a missing Graphviz gives
 * the install hint.
 */
import { describe, expect, test } from '@jest/globals';
import { execa } from 'execa';
import { promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { graphFormat, graphOutput, INSTALL_GRAPHVIZ, renderDot } from '../../src/cli/graph-command.js';
import { graphModel, toDot, toMermaid, type GraphInput } from '../../src/graph/graph.js';
import { rngFactory } from '../../src/pathselect/rng.js';
import { computePlan } from '../../src/plan/plan.js';
import { emptyState } from '../../src/state/model.js';
import { parseBuildableTopology } from '../../src/pathselect/buildable.js';
import { buildNet } from '../../src/topology/net.js';
import { packageRoot } from '../../src/util/files.js';

const example = (name: string) => path.join(packageRoot(), 'examples', name);

function inputOf(file: string, seed = '1'): GraphInput {
  const { topology } = parseBuildableTopology(readFileSync(file, 'utf8'), file);
  const net = buildNet(topology);
  const plan = computePlan({ net, state: emptyState('cd'.repeat(32)), rngFor: rngFactory(seed), now: '2024-01-01T00:00:00Z' });
  return { net, state: plan.state, title: `onionctl: ${path.basename(file)}`, operators: topology.operators };
}

/** PNG: signature, then IHDR (length 13) with width and height as big-endian uint32. */
function pngInfo(b: Buffer): { width: number; height: number } {
  expect(b.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
  expect(b.readUInt32BE(8)).toBe(13);
  expect(b.subarray(12, 16).toString('latin1')).toBe('IHDR');
  return { width: b.readUInt32BE(16), height: b.readUInt32BE(20) };
}

async function has(cmd: string): Promise<boolean> {
  const r = await execa('sh', ['-c', `command -v ${cmd}`], { reject: false });
  return r.exitCode === 0;
}

describe.each(['three-mixes.yaml', 'large.yaml'])('%s', (name) => {
  const input = inputOf(example(name));
  const m = graphModel(input);
  const dot = toDot(input);
  const mermaid = toMermaid(input);

  test('DOT: every router, client and destination is a node; every circuit hop an edge in its colour', () => {
    for (const r of input.net.routers.values()) expect(dot).toContain(`  "${r.name}" [fillcolor=`);
    for (const c of input.net.clients.values()) expect(dot).toContain(`  "${c.name}" [shape=ellipse`);
    for (const d of m.destinations) expect(dot).toContain(`  "${d.id}" [shape=note`);
    expect(m.circuits).toHaveLength(input.net.circuits.length);
    for (const c of m.circuits) {
      const seq = [...c.path];
      for (let i = 0; i + 1 < seq.length; i++) expect(dot).toContain(`  "${seq[i]}" -> "${seq[i + 1]}" [color="${c.colour}"`);
      const dst = m.destinations.find((d) => d.label === c.to[0])!.id;
      expect(dot).toContain(`  "${seq[seq.length - 1]}" -> "${dst}" [color="${c.colour}"`);
    }
    // exits are marked, operators are in the key, the overlay links are drawn
    for (const r of input.net.routers.values()) if (r.exit) expect(dot).toMatch(new RegExp(`"${r.name}" \\[[^\\n]*peripheries=2[^\\n]*EXIT`));
    for (const o of m.operators) expect(dot).toContain(`BGCOLOR="${o.colour}"`);
    expect(dot.match(/dir=none/g)).toHaveLength(input.net.links.length);
    expect(dot).toContain('rankdir=LR');
  });

  test('Mermaid: every node and every circuit edge', () => {
    expect(mermaid).toMatch(/^---\ntitle: .*\n---\nflowchart LR\n/);
    const id = new Map<string, string>();
    m.clients.forEach((c, i) => id.set(c.id, `c${i}`));
    m.routers.forEach((r, i) => id.set(r.id, `r${i}`));
    m.destinations.forEach((d, i) => id.set(d.id, `d${i}`));
    for (const r of m.routers) expect(mermaid).toContain(`<b>${r.name}</b><br/>${r.operator}`);
    for (const c of m.clients) expect(mermaid).toContain(`${id.get(c.id)}(["<b>${c.name}</b>`);
    for (const d of m.destinations) expect(mermaid).toContain(`${id.get(d.id)}[("destination<br/>${d.label}")]`);
    for (const c of m.circuits) {
      const seq = c.path.map((n) => id.get(n)!);
      expect(mermaid).toContain(`  ${seq[0]} ==>|${c.name}| ${seq[1]}\n`);
      for (let i = 1; i + 1 < seq.length; i++) expect(mermaid).toContain(`  ${seq[i]} ==> ${seq[i + 1]}\n`);
      expect(mermaid).toContain(`  ${seq[seq.length - 1]} ==> ${id.get(m.destinations.find((d) => d.label === c.to[0])!.id)}\n`);
    }
    // one linkStyle per edge, numbered from 0
    const edges = mermaid.split('\n').filter((l) => / (---|==>)/.test(l)).length;
    const styles = [...mermaid.matchAll(/linkStyle (\d+) /g)].map((x) => Number(x[1]));
    expect(styles).toEqual([...Array(edges).keys()]);
  });
});

describe('rendering with Graphviz', () => {
  test('the example SVG renders to a real PNG', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'onionctl-graph-'));
    const noState = path.join(dir, 'absent.state.json');
    const svg = (await graphOutput(example('three-mixes.yaml'), { format: 'svg', seed: '1', state: noState })) as Buffer;
    const text = svg.toString('utf8');
    expect(text).toMatch(/paths not saved \(no state file; (--|&#45;&#45;)seed 1\)/);
    expect(text).toContain('<svg');
    expect(text).toMatch(/onionctl: three(-|&#45;)mixes\.yaml/);
    for (const n of ['alice', 'or1', 'or2', 'or3', '203.0.113.80']) expect(text).toContain(`>${n}<`);

    let png: Buffer;
    try {
      if (await has('rsvg-convert')) {
        // the SVG itself, rasterised by librsvg
        await fs.writeFile(path.join(dir, 'g.svg'), svg);
        await execa('rsvg-convert', ['-f', 'png', '-o', path.join(dir, 'g.png'), path.join(dir, 'g.svg')]);
        png = await fs.readFile(path.join(dir, 'g.png'));
      } else {
        // no librsvg: let Graphviz rasterise the same DOT source
        png = (await graphOutput(example('three-mixes.yaml'), { format: 'png', seed: '1', state: noState })) as Buffer;
      }
      expect(await fs.readdir(dir)).not.toContain('absent.state.json');
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
    expect(png.length).toBeGreaterThan(10_000);
    const { width, height } = pngInfo(png);
    expect(width).toBeGreaterThan(600);
    expect(height).toBeGreaterThan(200);
    expect(width).toBeLessThan(10_000);
  });

  test('graph --format png is a PNG straight from dot', async () => {
    const png = await renderDot(toDot(inputOf(example('large.yaml'))), 'png');
    const { width, height } = pngInfo(png);
    expect(png.length).toBeGreaterThan(50_000);
    expect(width).toBeGreaterThan(1000);
    expect(height).toBeGreaterThan(800);
  });

  test('a missing Graphviz says how to install it', async () => {
    await expect(renderDot('digraph {}', 'svg', '/nonexistent/dot')).rejects.toThrow(INSTALL_GRAPHVIZ);
    expect(INSTALL_GRAPHVIZ).toBe('install Graphviz: apt-get install graphviz');
  });
});

describe('graph: the format from --out, and a note when the paths are not saved ones', () => {
  test('the extension of --out names the format; --format and --out must agree; neither is an error saying what to give', () => {
    expect(graphFormat({ out: 'net.svg' })).toBe('svg');
    expect(graphFormat({ out: 'NET.PNG' })).toBe('png');
    expect(graphFormat({ out: 'x/net.gv' })).toBe('dot');
    expect(graphFormat({ out: 'net.mmd' })).toBe('mermaid');
    expect(graphFormat({ format: 'dot', out: 'net.txt' })).toBe('dot');
    expect(graphFormat({ format: 'dot' })).toBe('dot');
    expect(() => graphFormat({ format: 'dot', out: 'net.svg' })).toThrow(/--format dot but --out net.svg names svg/);
    expect(() => graphFormat({ out: 'net.txt' })).toThrow(/cannot tell the format from net.txt: give --format/);
    expect(() => graphFormat({})).toThrow(/give --format/);
  });

  test('without a state file the picture says its paths are not what any router has', async () => {
    const notes: string[] = [];
    const noState = path.join(os.tmpdir(), `onionctl-graph-none-${process.pid}.json`);
    const out = await graphOutput(example('three-mixes.yaml'), { out: 'x.mmd', seed: '1', state: noState }, (s) => notes.push(s));
    expect(String(out)).toMatch(/^(graph|flowchart)/m);
    expect(notes).toEqual([expect.stringMatching(/^no state file .*: the circuits drawn are the paths --seed 1 chooses, not what any router has/)]);
  });
});

describe('graph --circuits-only', () => {
  test('large.yaml: only the circuits\' clients, routers and links; each circuit keeps its own edges where paths share a link', async () => {
    const input = inputOf(example('large.yaml'));
    const all = graphModel(input);
    const only = graphModel({ ...input, circuitsOnly: true });
    const onPath = new Set(Object.values(input.state.circuits).flatMap((c) => [c.client, ...c.hops]));
    expect(only.routers.map((r) => r.name).sort()).toEqual(all.routers.map((r) => r.name).filter((n) => onPath.has(n)).sort());
    expect(only.routers.length).toBeLessThan(all.routers.length);
    expect(only.links.every((l) => l.used)).toBe(true);
    expect(only.links.length).toBe(all.links.filter((l) => l.used).length);
    expect(only.circuits).toEqual(all.circuits);
    expect(only.subtitle).toMatch(/only the circuits' nodes and links \(\d+ of 12 routers\)/);
    for (const col of only.columns) for (const n of col) expect(n.startsWith('dst:') || onPath.has(n)).toBe(true);
    // a link two circuits share is drawn once per circuit, each in its circuit's colour
    const dot = toDot({ ...input, circuitsOnly: true });
    const pairs = new Map<string, Set<string>>();
    for (const c of only.circuits) for (let i = 0; i + 1 < c.path.length; i++) {
      const k = `${c.path[i]}>${c.path[i + 1]}`;
      pairs.set(k, (pairs.get(k) ?? new Set()).add(c.colour));
    }
    for (const [k, colours] of pairs) {
      const [a, b] = k.split('>');
      const drawn = dot.split('\n').filter((l) => l.trim().startsWith(`"${a}" -> "${b}" [color=`));
      expect(new Set(drawn.map((l) => /color="([^"]+)"/.exec(l)![1]))).toEqual(colours);
    }
    // and Graphviz draws it
    const svg = await renderDot(dot, 'svg');
    expect(svg.toString('utf8')).toMatch(/^<\?xml|<svg/);
  });
});
