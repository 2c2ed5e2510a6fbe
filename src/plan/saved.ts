/**
 * The saved plan (`plan --live --out FILE`, then `apply TOPOLOGY FILE`) as a value: its schema,
 * how it is sealed and opened, and what is checked before it may be applied. Pure: the caller
 * reads and writes the file, and passes the MAC key and the clock.
 *
 * A saved plan carries the state apply will install from, so whoever can edit the file could
 * otherwise choose paths and SPIs. It is authenticated with HMAC-SHA256 under a key derived from
 * the key secret in its own domain (never the key of any SA), and its state is checked against
 * the topology as if it had just been planned (checkPlannedState).
 */
import { createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { parseJson } from '../util/json.js';
import { StateSchema, type State, type StateEvent } from '../state/model.js';
import { OnionctlError } from '../util/errors.js';

export const SAVED_PLAN_FORMAT = 'onionctl-saved-plan/v2';

export const SavedPlanSchema = z.strictObject({
  created: z.string().max(64),
  topology: z.strictObject({ path: z.string().max(4096), sha256: z.string().regex(/^[0-9a-f]{64}$/) }),
  stateBefore: z.strictObject({ path: z.string().max(4096), sha256: z.string().regex(/^[0-9a-f]{64}$/).nullable() }),
  state: StateSchema,
  rekeys: z.array(z.string().max(1000)),
  summary: z.strictObject({ add: z.number().int().min(0), change: z.number().int().min(0), destroy: z.number().int().min(0) }),
  nodes: z.array(
    z.strictObject({
      node: z.string().max(256),
      error: z.string().max(10_000).optional(),
      digest: z.string().max(64).optional(),
      changes: z.array(z.string().max(10_000)),
      conflicts: z.array(z.string().max(10_000)),
    }),
  ),
});
export type SavedPlan = z.infer<typeof SavedPlanSchema>;

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
      env.data.format === 'onionctl-plan/v1'
        ? 'was written by an older onionctl, without authentication; make a new one with plan --live --out'
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
