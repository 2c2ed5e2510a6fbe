/**
 * Human and JSON views of a diff, Terraform style: `+` add, `~` change, `-` destroy, and a
 * closing "N to add, M to change, K to destroy". Keys never appear (an SA shows its key
 * fingerprint at most). Pure.
 */
import type { SaKeyId } from '../keys/kdf.js';
import { formatIPv4 } from '../net/addr.js';
import type { Change, Conflict, FieldChange } from './diff.js';
import { orderChanges, phaseOf, type Phase } from './order.js';
import { escapeControl } from '../util/text.js';

export interface NodeChanges {
  node: string;
  changes: Change[];
  conflicts?: Conflict[];
}

export interface Counts {
  add: number;
  change: number;
  destroy: number;
}

export function countChanges(changes: readonly Change[]): Counts {
  const c: Counts = { add: 0, change: 0, destroy: 0 };
  for (const x of changes) {
    if (x.op === 'add') c.add++;
    else if (x.op === 'replace') c.change++;
    else c.destroy++;
  }
  return c;
}

export const countsLine = (c: Counts) => `${c.add} to add, ${c.change} to change, ${c.destroy} to destroy`;

const SYMBOL = { add: '+', replace: '~', remove: '-' } as const;

function commentOf(c: Change): string | undefined {
  if (c.op === 'remove' || c.kind === 'rule-order') return undefined;
  const d = c.desired;
  if ('comment' in d && typeof d.comment === 'string') return d.comment;
  if ('snat' in d || 'filter' in d) return (d.snat ?? d.filter)?.comment;
  return undefined;
}

const fieldsText = (f: FieldChange[]) => f.map((x) => `${x.field} ${x.from} -> ${x.to}`).join('; ');

const hex32 = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;

/** what an added object looks like beyond its key */
function addDetail(c: Change): string | undefined {
  if (c.op !== 'add') return undefined;
  switch (c.kind) {
    case 'state':
      return `${formatIPv4(c.desired.src)} -> ${formatIPv4(c.desired.dst)} reqid ${hex32(c.desired.reqid)} ${c.desired.profile}`;
    case 'policy':
      return c.desired.action === 'block' ? `priority ${c.desired.priority} block` : `priority ${c.desired.priority}, ${c.desired.tmpls.length} template${c.desired.tmpls.length === 1 ? '' : 's'}`;
    case 'route': {
      const r = c.desired;
      let d = `via ${formatIPv4(r.via)} dev ${r.dev}`;
      if (r.src !== undefined) d += ` src ${formatIPv4(r.src)}`;
      if (r.mtu !== undefined) d += ` mtu ${r.mtu}`;
      if (r.advmss !== undefined) d += ` advmss ${r.advmss}`;
      if (r.quickack) d += ' quickack';
      return d;
    }
    case 'snat':
      return c.desired.snat ? `to ${formatIPv4(c.desired.snat.to)}` : undefined;
    default:
      return undefined;
  }
}

/** One line for a change, without indentation: "+ state esp 198.51.100.11 spi 0x4f000000: ...  # overlay or1->or2". */
export function describeChange(c: Change): string {
  let line = `${SYMBOL[c.op]} ${c.kind} ${c.key}`;
  const detail = addDetail(c);
  if (detail) line += `: ${detail}`;
  if (c.op === 'replace') line += `: ${fieldsText(c.fields)}`;
  if (c.kind === 'state' && c.op === 'replace') line += c.keyMismatch ? ' (key differs: needs a new epoch)' : ' (needs a new epoch)';
  const comment = commentOf(c);
  if (comment) line += `  # ${comment}`;
  // keys, fields and comments of observed objects are the router's text: one line, no escapes
  return escapeControl(line).replace(/\n/g, '\\n');
}

/** The plan for several routers as text, changes in apply order. */
export function formatChanges(nodes: readonly NodeChanges[]): string {
  const lines: string[] = [];
  const total: Counts = { add: 0, change: 0, destroy: 0 };
  for (const n of nodes) {
    const c = countChanges(n.changes);
    total.add += c.add;
    total.change += c.change;
    total.destroy += c.destroy;
    const conflicts = n.conflicts ?? [];
    if (n.changes.length === 0 && conflicts.length === 0) {
      lines.push(`${n.node}: no changes`);
      continue;
    }
    lines.push(`${n.node}: ${countsLine(c)}`);
    for (const x of conflicts) lines.push(escapeControl(`  ! ${x.kind} ${x.key}: ${x.reason}`).replace(/\n/g, '\\n'));
    for (const x of orderChanges(n.changes)) lines.push(`  ${describeChange(x)}`);
  }
  const conflicts = nodes.reduce((s, n) => s + (n.conflicts?.length ?? 0), 0);
  lines.push('', `Plan: ${countsLine(total)}.`);
  if (conflicts > 0) lines.push(`${conflicts} conflict${conflicts === 1 ? '' : 's'} with objects that are not onionctl's (marked !): resolve them before applying.`);
  return lines.join('\n') + '\n';
}

export interface ChangeJson {
  op: Change['op'];
  kind: Change['kind'];
  key: string;
  phase: Phase;
  comment?: string;
  fields?: FieldChange[];
  needsNewEpoch?: boolean;
  keyMismatch?: boolean;
  /** the SA to rekey, for state changes that need a new epoch */
  sa?: SaKeyId;
}

export interface PlanJson {
  summary: Counts;
  nodes: { node: string; summary: Counts; changes: ChangeJson[]; conflicts: Conflict[] }[];
}

export function changeJson(c: Change): ChangeJson {
  const j: ChangeJson = { op: c.op, kind: c.kind, key: c.key, phase: phaseOf(c) };
  const comment = commentOf(c);
  if (comment) j.comment = comment;
  if (c.op === 'replace') j.fields = c.fields;
  if (c.kind === 'state' && c.op === 'replace') {
    j.needsNewEpoch = c.needsNewEpoch;
    j.keyMismatch = c.keyMismatch;
    j.sa = { id: c.desired.key.id, epoch: c.desired.key.epoch, spi: c.desired.key.spi };
  }
  return j;
}

export function changesJson(nodes: readonly NodeChanges[]): PlanJson {
  const out: PlanJson = { summary: { add: 0, change: 0, destroy: 0 }, nodes: [] };
  for (const n of nodes) {
    const s = countChanges(n.changes);
    out.summary.add += s.add;
    out.summary.change += s.change;
    out.summary.destroy += s.destroy;
    out.nodes.push({ node: n.node, summary: s, changes: orderChanges(n.changes).map(changeJson), conflicts: n.conflicts ?? [] });
  }
  return out;
}
