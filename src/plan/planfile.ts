/**
 * The saved plan (`plan --live --out FILE`, then `apply TOPOLOGY FILE`) as a value: how it is
 * made from a live plan, its schema (format SAVED_PLAN_FORMAT, docs/formats.md), how it is sealed
 * and opened, and what is checked before it may be applied (its age, whether the routers still
 * need exactly its changes). Changes are stored typed (diff/summary.ts ChangeJson), not as the
 * lines a terminal shows. Pure: the caller reads and writes the file, and passes the MAC key and
 * the clock.
 *
 * A saved plan carries the state apply will install from, so whoever can edit the file could
 * otherwise choose paths and SPIs. It is authenticated with HMAC-SHA256 under a key derived from
 * the key secret in its own domain (never the key of any SA), and its state is checked against
 * the topology as if it had just been planned (checkPlannedState).
 */
import { createHash, createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import type { Change, Conflict } from '../diff/diff.js';
import { orderChanges, PHASES } from '../diff/order.js';
import { changeJson, countChanges, type ChangeJson, type Counts } from '../diff/summary.js';
import { parseJson } from '../util/json.js';
import { StateSchema, type State, type StateEvent } from '../state/model.js';
import { OnionctlError } from '../util/errors.js';

export const SAVED_PLAN_FORMAT = 'onionctl-saved-plan/v3';
/** formats of saved plans older onionctl versions wrote: refused with a clear message */
const OLDER_FORMATS = ['onionctl-plan/v1', 'onionctl-saved-plan/v2'];

const text = (max: number) => z.string().max(max);
const KINDS = ['state', 'policy', 'route', 'address', 'chain', 'snat', 'filter', 'rule-order', 'sysctl'] as const satisfies readonly Change['kind'][];
const Uint32 = z.number().int().min(0).max(0xffffffff);

const ChangeSchema = z.strictObject({
  op: z.enum(['add', 'remove', 'replace']),
  kind: z.enum(KINDS),
  key: text(10_000),
  phase: z.enum(PHASES),
  comment: text(10_000).optional(),
  fields: z.array(z.strictObject({ field: text(200), from: text(10_000), to: text(10_000) })).max(100).optional(),
  needsNewEpoch: z.boolean().optional(),
  keyMismatch: z.boolean().optional(),
  sa: z.strictObject({ id: text(400), epoch: z.number().int().min(1), spi: Uint32 }).optional(),
}) satisfies z.ZodType<ChangeJson>;

const ConflictSchema = z.strictObject({ kind: z.enum(['state', 'policy', 'route', 'address', 'chain']), key: text(10_000), reason: text(10_000) }) satisfies z.ZodType<Conflict>;

/** a new key for an SA that the router holds in another form (apply/engine.ts Rekey) */
const RekeySchema = z.strictObject({ sa: text(400), reason: text(1000), oldSpi: Uint32, newSpi: Uint32 });
export type SavedRekey = z.infer<typeof RekeySchema>;

const CountsSchema = z.strictObject({ add: z.number().int().min(0), change: z.number().int().min(0), destroy: z.number().int().min(0) }) satisfies z.ZodType<Counts>;

export const SavedPlanSchema = z.strictObject({
  created: text(64),
  topology: z.strictObject({ path: text(4096), sha256: z.string().regex(/^[0-9a-f]{64}$/) }),
  stateBefore: z.strictObject({ path: text(4096), sha256: z.string().regex(/^[0-9a-f]{64}$/).nullable() }),
  state: StateSchema,
  rekeys: z.array(RekeySchema),
  summary: CountsSchema,
  nodes: z.array(
    z.strictObject({
      node: text(256),
      error: text(10_000).optional(),
      digest: text(64).optional(),
      /** in apply order */
      changes: z.array(ChangeSchema),
      conflicts: z.array(ConflictSchema),
    }),
  ),
});
export type SavedPlan = z.infer<typeof SavedPlanSchema>;

/** One node of a live plan, as apply/engine.ts plans it. */
export interface PlannedNode {
  node: string;
  error?: string;
  digest?: string;
  changes: Change[];
  conflicts: Conflict[];
}

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** A node's changes as the plan file stores them: typed, in apply order. */
export const savedChanges = (changes: Change[]): ChangeJson[] => orderChanges(changes).map(changeJson);

/**
 * The saved plan of a live plan: the topology and the state it was made from (their hashes, so
 * apply can tell that neither moved), the state it would install, and per node what the router
 * held (its digest) and the changes it needs.
 */
export function makeSavedPlan(p: {
  topology: { path: string; text: string };
  stateBefore: { path: string; text: string | undefined };
  state: State;
  rekeys: SavedRekey[];
  nodes: PlannedNode[];
  now: Date;
}): SavedPlan {
  const summary = p.nodes.reduce<Counts>((t, n) => {
    const c = countChanges(n.changes);
    return { add: t.add + c.add, change: t.change + c.change, destroy: t.destroy + c.destroy };
  }, { add: 0, change: 0, destroy: 0 });
  return {
    created: p.now.toISOString(),
    topology: { path: p.topology.path, sha256: sha256(p.topology.text) },
    stateBefore: { path: p.stateBefore.path, sha256: p.stateBefore.text === undefined ? null : sha256(p.stateBefore.text) },
    state: p.state,
    rekeys: p.rekeys.map((r) => ({ sa: r.sa, reason: r.reason, oldSpi: r.oldSpi, newSpi: r.newSpi })),
    summary,
    nodes: p.nodes.map((n) => ({
      node: n.node,
      ...(n.error !== undefined ? { error: n.error } : {}),
      ...(n.digest !== undefined ? { digest: n.digest } : {}),
      changes: savedChanges(n.changes),
      conflicts: n.conflicts.map((c) => ({ kind: c.kind, key: c.key, reason: c.reason })),
    })),
  };
}

/** Whether the topology and the state file are still the ones the plan was made from. */
export function planInputsMoved(saved: SavedPlan, now: { topologyText: string; stateText: string | undefined }): ('topology' | 'state')[] {
  const moved: ('topology' | 'state')[] = [];
  if (saved.topology.sha256 !== sha256(now.topologyText)) moved.push('topology');
  if (saved.stateBefore.sha256 !== (now.stateText === undefined ? null : sha256(now.stateText))) moved.push('state');
  return moved;
}

/**
 * The nodes whose read-back no longer gives the saved plan's changes (the router changed since),
 * planned again from the plan's own state: what apply must refuse. Nodes the plan could not read
 * are not compared (a plan with such nodes is refused before this).
 */
export function staleNodes(saved: SavedPlan, now: PlannedNode[]): string[] {
  const out: string[] = [];
  for (const n of saved.nodes) {
    if (n.error !== undefined) continue;
    const cur = now.find((x) => x.node === n.node);
    if (!cur) out.push(`${n.node} (not planned now)`);
    else if (cur.error !== undefined) out.push(`${n.node} (cannot be read now: ${cur.error})`);
    else if (cur.digest !== n.digest || JSON.stringify(savedChanges(cur.changes)) !== JSON.stringify(n.changes)) out.push(n.node);
  }
  return out;
}

const Envelope = z.strictObject({
  format: z.string().max(64),
  /** HMAC-SHA256 (hex) of JSON.stringify(plan) under planMacKey */
  mac: z.string().max(128),
  plan: z.unknown(),
});

/** A saved plan bigger than this is not one of ours (a 1,000-router plan is a few MiB). */
export const MAX_SAVED_PLAN_BYTES = 256 * 1024 * 1024;

/** The plan MAC key: HKDF of the key secret with a label no SA key uses. */
export function planMacKey(secret: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), 'onionctl/saved-plan-mac/v1', 32));
}

const macOf = (key: Buffer, body: string) => createHmac('sha256', key).update('onionctl/saved-plan/v2\0').update(body).digest();

export function sealPlan(plan: SavedPlan, key: Buffer): string {
  const body = JSON.stringify(plan);
  return JSON.stringify({ format: SAVED_PLAN_FORMAT, mac: macOf(key, body).toString('hex'), plan }, null, 2) + '\n';
}

export class SavedPlanError extends OnionctlError {
  readonly kind = 'saved-plan' as const;
}

/**
 * Opens a sealed plan: the MAC first (over the plan exactly as parsed, before any schema
 * processing), then the schema, then its age. Throws SavedPlanError saying why.
 */
export function openPlan(text: string, key: Buffer, o: { now: Date; maxAgeMs: number }): SavedPlan {
  if (text.length > MAX_SAVED_PLAN_BYTES) throw new SavedPlanError('is larger than any plan onionctl writes');
  let j: unknown;
  try {
    j = parseJson(text);
  } catch (e) {
    throw new SavedPlanError(`is not a plan written by onionctl plan --live --out (not JSON: ${(e as Error).message.slice(0, 200)})`);
  }
  const env = Envelope.safeParse(j);
  if (!env.success) throw new SavedPlanError('is not a plan written by onionctl plan --live --out');
  if (env.data.format !== SAVED_PLAN_FORMAT) {
    throw new SavedPlanError(
      OLDER_FORMATS.includes(env.data.format)
        ? `was written by an older onionctl (format ${env.data.format}${env.data.format === 'onionctl-plan/v1' ? ', without authentication' : ''}); make a new one with plan --live --out`
        : `has format ${JSON.stringify(env.data.format.slice(0, 64))}, not ${SAVED_PLAN_FORMAT}`,
    );
  }
  let body: string;
  try {
    body = JSON.stringify(env.data.plan);
  } catch {
    throw new SavedPlanError('is not a plan written by onionctl plan --live --out (nested too deeply)');
  }
  const want = macOf(key, body);
  const got = /^[0-9a-f]{64}$/.test(env.data.mac) ? Buffer.from(env.data.mac, 'hex') : Buffer.alloc(0);
  if (got.length !== want.length || !timingSafeEqual(got, want)) {
    throw new SavedPlanError('is not authentic: its MAC does not match (it was changed after it was saved, or made with another key secret)');
  }
  const p = SavedPlanSchema.safeParse(env.data.plan);
  if (!p.success) throw new SavedPlanError(`is damaged at ${p.error.issues[0]?.path.join('.')}: ${p.error.issues[0]?.message}`);
  const created = Date.parse(p.data.created);
  if (!Number.isFinite(created)) throw new SavedPlanError('has no valid creation time');
  const age = o.now.getTime() - created;
  if (age < -5 * 60_000) throw new SavedPlanError(`was made in the future (${p.data.created}); check the clock`);
  if (age > o.maxAgeMs) throw new SavedPlanError(`is too old (made ${p.data.created}, limit ${Math.round(o.maxAgeMs / 60_000)} min; --max-plan-age); make a new one`);
  return p.data;
}

/**
 * What changed between two states, as events: for a saved plan, recomputed from the state it
 * was made from and the state it carries, never taken from the file.
 */
export function stateDelta(before: State, after: State): StateEvent[] {
  const events: StateEvent[] = [];
  for (const k of Object.keys(before.links)) if (!after.links[k]) events.push({ kind: 'link-removed', link: k });
  for (const k of Object.keys(after.links)) if (!before.links[k]) events.push({ kind: 'link-added', link: k });
  for (const n of Object.keys(before.circuits)) if (!after.circuits[n]) events.push({ kind: 'circuit-removed', circuit: n });
  for (const [n, c] of Object.entries(after.circuits)) {
    const b = before.circuits[n];
    if (!b) events.push({ kind: 'circuit-added', circuit: n, hops: c.hops });
    else if (b.generation !== c.generation || b.hops.join('>') !== c.hops.join('>')) {
      events.push({ kind: 'circuit-repathed', circuit: n, hops: c.hops, from: b.hops, reason: `generation ${b.generation} -> ${c.generation}` });
    } else if (b.to.join(',') !== c.to.join(',')) events.push({ kind: 'circuit-updated', circuit: n, reason: `destinations now ${c.to.join(', ')}` });
  }
  return events;
}
