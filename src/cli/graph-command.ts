/**
 * `onionctl graph TOPOLOGY --format dot|mermaid|svg|png [--out FILE]`: the overlay and the
 * circuits as a picture (src/graph). svg and png are rendered by Graphviz `dot`, fed the DOT
 * source on stdin. The state is handled as by `audit`: loaded like `plan`, computed with
 * computePlan, never written.
 */
import path from 'node:path';
import { InvalidArgumentError } from 'commander';
import { execa } from 'execa';
import { computePlan } from '../plan/plan.js';
import { rngFactory } from '../pathselect/rng.js';
import { toDot, toMermaid } from '../graph/graph.js';
import { writeFileAtomic } from '../util/files.js';
import { UserError } from '../util/errors.js';
import { defaultPaths, readState, readTopology } from './context.js';

export const GRAPH_FORMATS = ['dot', 'mermaid', 'svg', 'png'] as const;
export type GraphFormat = (typeof GRAPH_FORMATS)[number];

export interface GraphOpts {
  state?: string;
  seed?: string;
  format: GraphFormat;
  out?: string;
}

export function formatArg(v: string): GraphFormat {
  if (!(GRAPH_FORMATS as readonly string[]).includes(v)) throw new InvalidArgumentError(`one of ${GRAPH_FORMATS.join(', ')}`);
  return v as GraphFormat;
}

export const INSTALL_GRAPHVIZ = 'install Graphviz: apt-get install graphviz';

/** Renders DOT source with Graphviz `dot` (ONIONCTL_DOT overrides the binary). */
export async function renderDot(dot: string, format: 'svg' | 'png', bin = process.env.ONIONCTL_DOT ?? 'dot'): Promise<Buffer> {
  try {
    const r = await execa(bin, [`-T${format}`], { input: dot, encoding: 'buffer', stripFinalNewline: false });
    return Buffer.from(r.stdout);
  } catch (e) {
    const err = e as { code?: string; stderr?: Uint8Array | string; exitCode?: number };
    if (err.code === 'ENOENT') throw new UserError(`cannot run Graphviz "${bin}" to render ${format}; ${INSTALL_GRAPHVIZ}`, { cause: e });
    const msg = err.stderr ? Buffer.from(err.stderr).toString('utf8').trim() : (e as Error).message;
    throw new UserError(`Graphviz "${bin}" failed (exit ${err.exitCode ?? '?'}): ${msg}`, { cause: e });
  }
}

export async function graphOutput(topology: string, opts: GraphOpts): Promise<string | Buffer> {
  const paths = defaultPaths(topology, opts);
  const { topology: topo, net } = await readTopology(topology);
  const { state, fresh } = await readState(paths, 'warn', (s) => process.stderr.write(`onionctl: ${s}\n`));
  const plan = computePlan({ net, state, rngFor: rngFactory(opts.seed), now: new Date().toISOString() });
  const pathsFrom = fresh
    ? `paths not saved (no state file${opts.seed !== undefined ? `; --seed ${opts.seed}` : ''})`
    : plan.events.length > 0
      ? `state serial ${state.serial} + ${plan.events.length} planned change${plan.events.length === 1 ? '' : 's'}`
      : `state serial ${state.serial}`;
  const input = { net, state: plan.state, title: `onionctl: ${path.basename(topology)}`, operators: topo.operators, pathsFrom };
  if (opts.format === 'mermaid') return toMermaid(input);
  const dot = toDot(input);
  if (opts.format === 'dot') return dot;
  return renderDot(dot, opts.format);
}

export async function graphCommand(topology: string, opts: GraphOpts): Promise<number> {
  if (opts.format === 'png' && !opts.out && process.stdout.isTTY) throw new UserError('--format png writes binary data; give --out FILE.png');
  const data = await graphOutput(topology, opts);
  if (opts.out) await writeFileAtomic(opts.out, data, 0o644);
  else process.stdout.write(data);
  return 0;
}
