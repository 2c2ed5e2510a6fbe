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
import { note as quietableNote } from './output.js';

export const GRAPH_FORMATS = ['dot', 'mermaid', 'svg', 'png'] as const;
export type GraphFormat = (typeof GRAPH_FORMATS)[number];

export interface GraphOpts {
  state?: string;
  seed?: string;
  /** default: from --out's extension */
  format?: GraphFormat;
  out?: string;
  /** only the circuits' clients, routers and links */
  circuitsOnly?: boolean;
}

const BY_EXTENSION: Record<string, GraphFormat> = { '.dot': 'dot', '.gv': 'dot', '.mmd': 'mermaid', '.mermaid': 'mermaid', '.svg': 'svg', '.png': 'png' };

/** --format, or the one --out's extension names; an error when neither says, or they disagree. */
export function graphFormat(opts: Pick<GraphOpts, 'format' | 'out'>): GraphFormat {
  const ext = opts.out ? BY_EXTENSION[path.extname(opts.out).toLowerCase()] : undefined;
  if (opts.format && ext && opts.format !== ext) throw new UserError(`--format ${opts.format} but --out ${opts.out} names ${ext}; give one of them, or make them agree`);
  const f = opts.format ?? ext;
  if (!f) {
    throw new UserError(
      opts.out
        ? `cannot tell the format from ${opts.out}: give --format (${GRAPH_FORMATS.join(', ')}) or an --out ending in ${Object.keys(BY_EXTENSION).join(', ')}`
        : `give --format (${GRAPH_FORMATS.join(', ')}), or --out FILE with one of the extensions ${Object.keys(BY_EXTENSION).join(', ')}`,
    );
  }
  return f;
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

export async function graphOutput(topology: string, opts: GraphOpts, note: (s: string) => void = quietableNote): Promise<string | Buffer> {
  const format = graphFormat(opts);
  const paths = defaultPaths(topology, opts);
  const { topology: topo, net } = await readTopology(topology);
  const { state, fresh } = await readState(paths, 'warn', note);
  if (fresh) {
    note(`no state file ${paths.state}: the circuits drawn are ${opts.seed !== undefined ? `the paths --seed ${opts.seed} chooses` : 'a fresh random choice'}, not what any router has (run onionctl plan first)`);
  }
  const plan = computePlan({ net, state, rngFor: rngFactory(opts.seed), now: new Date().toISOString() });
  const pathsFrom = fresh
    ? `paths not saved (no state file${opts.seed !== undefined ? `; --seed ${opts.seed}` : ''})`
    : plan.events.length > 0
      ? `state serial ${state.serial} + ${plan.events.length} planned change${plan.events.length === 1 ? '' : 's'}`
      : `state serial ${state.serial}`;
  const input = { net, state: plan.state, title: `onionctl: ${path.basename(topology)}`, operators: topo.operators, pathsFrom, ...(opts.circuitsOnly ? { circuitsOnly: true } : {}) };
  if (format === 'mermaid') return toMermaid(input);
  const dot = toDot(input);
  if (format === 'dot') return dot;
  return renderDot(dot, format);
}

export async function graphCommand(topology: string, opts: GraphOpts): Promise<number> {
  if (graphFormat(opts) === 'png' && !opts.out && process.stdout.isTTY) throw new UserError('--format png writes binary data; give --out FILE.png');
  const data = await graphOutput(topology, opts);
  if (opts.out) await writeFileAtomic(opts.out, data, 0o644);
  else process.stdout.write(data);
  return 0;
}
