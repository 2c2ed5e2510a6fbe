/**
 * YAML text -> validated Topology, with every error located in the file (line:col).
 * Pure: the caller reads the file.
 */
import { isMap, isPair, isScalar, isSeq, parseDocument, visit, type Document, type Node as YNode } from 'yaml';
import type { z } from 'zod';
import { SourceText, TopologyError, type Diagnostic } from './diagnostics.js';
import { TopologySchema, type Topology } from './schema.js';
import { validateSemantics, type SemanticIssue } from './validate.js';

export type Path = readonly (string | number)[];

export function formatPath(path: Path): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += out === '' ? seg : `.${seg}`;
  }
  return out;
}

/**
 * Offset of the node at `path`; if the path runs out (a missing key), the deepest existing
 * node. With `key`, the position of that key inside the map at `path` (for unknown keys).
 */
export function locate(doc: Document, path: Path, key?: string): number {
  let node: unknown = doc.contents;
  let best = rangeStart(node) ?? 0;
  const segs = key === undefined ? path : [...path, key];
  for (let i = 0; i < segs.length; i++) {
    const seg = segs[i]!;
    const last = i === segs.length - 1;
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(seg));
      if (!pair) break;
      if (last && key !== undefined) return rangeStart(pair.key) ?? best;
      node = pair.value;
      best = rangeStart(pair.value) ?? rangeStart(pair.key) ?? best;
    } else if (isSeq(node) && typeof seg === 'number') {
      const item = node.items[seg];
      if (item === undefined) break;
      node = item;
      best = rangeStart(item) ?? best;
    } else break;
  }
  return best;
}

function rangeStart(n: unknown): number | undefined {
  const r = (n as YNode | null | undefined)?.range;
  return r ? r[0] : undefined;
}

export interface LoadedTopology {
  topology: Topology;
  source: SourceText;
}

function zodMessage(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case 'unrecognized_keys':
      return `unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
    case 'invalid_type':
      if (issue.input === undefined) return `missing required key (${issue.expected})`;
      return `expected ${issue.expected}, got ${describe(issue.input)}`;
    case 'invalid_value':
      if (issue.input === undefined) return `missing required key (${issue.values.map((v) => JSON.stringify(v)).join(' or ')})`;
      return `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}, got ${describe(issue.input)}`;
    default:
      return issue.message;
  }
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  if (typeof v === 'string') return JSON.stringify(v);
  return `${typeof v} ${String(v)}`;
}

/**
 * Checks run after the structural and semantic ones pass: issues about a whole, otherwise valid
 * topology (pathselect/buildable.ts: every circuit has a path), located like the others.
 */
export type MoreChecks = (t: Topology) => SemanticIssue[];

export function parseTopology(text: string, file: string, more?: MoreChecks): LoadedTopology {
  const source = new SourceText(file, text);
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: false, strict: true });
  const yamlErrors = [...doc.errors];
  if (yamlErrors.length > 0) {
    throw new TopologyError(yamlErrors.map((e) => source.at(skipBlanks(text, e.pos[0]), `YAML: ${firstLine(e.message)}`)));
  }
  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    // yaml throws (rather than reporting) on an alias to no anchor and on an alias bomb
    throw new TopologyError([source.at(aliasBlame(doc), `YAML: ${firstLine((e as Error).message)}`)]);
  }
  // reportInput: zod 4 leaves `input` out of issues unless asked, and zodMessage() needs it to
  // tell a wrong type from a missing key
  const parsed = TopologySchema.safeParse(raw ?? {}, { reportInput: true });
  if (!parsed.success) {
    const diags: Diagnostic[] = [];
    for (const issue of parsed.error.issues) {
      const path = issue.path.filter((p): p is string | number => typeof p !== 'symbol');
      if (issue.code === 'unrecognized_keys') {
        for (const k of issue.keys) {
          const where = formatPath([...path, k]);
          diags.push(source.at(locate(doc, path, k), `${where}: unknown key "${k}"`));
        }
        continue;
      }
      const where = path.length > 0 ? `${formatPath(path)}: ` : '';
      diags.push(source.at(locate(doc, path), where + zodMessage(issue)));
    }
    throw new TopologyError(sortDiags(diags));
  }
  let issues: SemanticIssue[] = validateSemantics(parsed.data);
  if (issues.length === 0 && more) issues = more(parsed.data);
  if (issues.length > 0) {
    throw new TopologyError(
      sortDiags(
        issues.map((i) => {
          const where = i.path.length > 0 ? `${formatPath(i.path)}: ` : '';
          return source.at(locate(doc, i.path), where + i.message);
        }),
      ),
    );
  }
  return { topology: parsed.data, source };
}

/** The first alias that resolves to nothing, else the first alias: where toJS gave up. */
function aliasBlame(doc: Document): number {
  let first: number | undefined;
  let broken: number | undefined;
  visit(doc, {
    Alias(_, node) {
      const at = node.range?.[0] ?? 0;
      first ??= at;
      if (node.resolve(doc) === undefined) {
        broken = at;
        return visit.BREAK;
      }
      return undefined;
    },
  });
  return broken ?? first ?? 0;
}

/** yaml reports some indentation errors at the start of the line; point at the node instead. */
function skipBlanks(text: string, offset: number): number {
  let o = offset;
  while (text[o] === ' ') o++;
  return o < text.length && text[o] !== '\n' && text[o] !== '\r' ? o : offset;
}

function firstLine(s: string): string {
  return s.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
}

function sortDiags(d: Diagnostic[]): Diagnostic[] {
  return [...d].sort((a, b) => a.line - b.line || a.col - b.col);
}
