/**
 * Which SAs are due for a rekey, and which circuits are due for a rotation: the pure core of
 * `onionctl rekey --due` and `onionctl rotate --max-age`. No clock and no I/O: the caller passes
 * the state, what each router reported (`ip -s xfrm state`, parsed) with the router's own clock,
 * and the controller's `now`.
 *
 * An SA is due when, on EITHER of its two ends (the sender counts what it sent, the receiver what
 * it accepted; with TFC padding the receiver counts the padding too):
 *   - a usage reached its soft limit (bytes, packets, seconds since added, seconds since first
 *     use). The limit is the smaller of the planned one (keys/lifetimes.ts) and the one the
 *     router reports, so an SA installed with other limits is judged by the stricter;
 *   - a usage reached HARD_URGENT_FRACTION of a hard limit (urgent: the kernel deletes the SA at
 *     the hard limit and the circuit fails closed);
 *   - it is missing on a node it was installed on (the kernel deleted it at a hard limit, or the
 *     router rebooted): urgent, and the key must not come back, so only a rekey restores it;
 * or when its epoch is older than the maximum SA age by the controller's clock (the state's
 * `since`, the time the epoch was first pushed).
 *
 * Boundaries: a limit is reached at usage >= limit (the kernel expires an SA at packets >= limit
 * and at add_time + seconds <= now), an age at age >= maximum.
 *
 * An end that was not read, or read without counters, is reported in `unknown` (when nothing
 * else makes the SA due): rekey --due leaves such SAs alone and says so. An end the SA was never
 * pushed to (no `installed` entry) is in `notInstalled`: that is apply's business, not rekey's.
 */
import { HARD_URGENT_FRACTION, REKEY_AGE_SECONDS, minLimit, saOptions, type SaKind, type SaLimits } from '../keys/lifetimes.js';
import type { ObservedState } from '../readback/observed.js';
import { xfrmTimeSeconds } from '../readback/xfrm.js';
import type { SaRef } from '../state/reconcile.js';
import { formatSaId } from '../keys/sa-id.js';
import type { SaRecord, State } from '../state/model.js';
import type { CryptoProfileName } from '../topology/schema.js';

/** What one router reported. */
export interface NodeReading {
  /** onionctl's SAs on the router (ObservedNode.states.owned), read with `ip -s xfrm state` */
  states: ObservedState[];
  /**
   * the router's clock when it was read, "YYYY-MM-DD HH:MM:SS" in the same zone as the SA times
   * `ip -s xfrm state` prints (e.g. `date '+%F %T'` in the same session); without it the ages
   * the router reports are not used
   */
  clock?: string;
}

export interface ScheduleInput {
  state: State;
  /** the topology's crypto profile (the planned limits can depend on it) */
  crypto: CryptoProfileName;
  /** per node; a node that is missing was not read */
  readings: ReadonlyMap<string, NodeReading>;
  /** the controller's time, ISO 8601 */
  now: string;
  /** an epoch at least this old (state `since`) is due; default REKEY_AGE_SECONDS */
  maxSaAgeSeconds?: number;
  /** report circuits whose path (state `created`) is at least this old; default: none reported */
  maxCircuitAgeSeconds?: number;
}

export type LimitMeasure = 'bytes' | 'packets' | 'seconds since added' | 'seconds since first use';

export type DueReason =
  /** a usage on `node` reached the soft limit, or HARD_URGENT_FRACTION of the hard one */
  | { code: 'limit'; level: 'soft' | 'hard'; measure: LimitMeasure; node: string; used: number; limit: number }
  /** the epoch is older than the maximum SA age (controller clock) */
  | { code: 'age'; since: string; ageSeconds: number; maxSeconds: number }
  /** the SA was installed on `node` and is not there any more */
  | { code: 'missing'; node: string };

/** One SA, with where it lives. */
export interface SaInfo {
  ref: SaRef;
  /** the SA's identity (SaKeyId.id, keys/sa-id.ts formatSaId) */
  id: string;
  kind: SaKind;
  spi: number;
  epoch: number;
  /** its two ends, in a fixed order (link: a, b; circuit: client, hop) */
  nodes: [string, string];
  /** "overlay or1->or2", "circuit web hop 2 forward" */
  label: string;
}

export interface DueSa extends SaInfo {
  reasons: DueReason[];
  /** a hard limit is near, or the SA is gone already */
  urgent: boolean;
}

export interface UnknownSa extends SaInfo {
  /** ends whose usage is not known: not read, or read without counters */
  nodes: [string, string];
  unread: string[];
}

export interface OldCircuit {
  circuit: string;
  created: string;
  ageSeconds: number;
}

export interface Schedule {
  due: DueSa[];
  unknown: UnknownSa[];
  notInstalled: { sa: SaInfo; nodes: string[] }[];
  /** circuits at least maxCircuitAgeSeconds old (empty when no maximum was given) */
  oldCircuits: OldCircuit[];
}

const isoSeconds = (t: string | undefined): number | undefined => {
  if (t === undefined) return undefined;
  const ms = Date.parse(t);
  return Number.isFinite(ms) ? ms / 1000 : undefined;
};

/** Every SA of the state, in a stable order: links by key (a->b, b->a), then circuits by name (hop 1..k, forward then reverse). */
export function allSas(state: State): { info: SaInfo; rec: SaRecord }[] {
  const out: { info: SaInfo; rec: SaRecord }[] = [];
  const byName = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  for (const key of Object.keys(state.links).sort(byName)) {
    const l = state.links[key]!;
    for (const dir of ['ab', 'ba'] as const) {
      const rec = l[dir];
      const [from, to] = dir === 'ab' ? [l.a, l.b] : [l.b, l.a];
      out.push({
        info: { ref: { link: key, dir }, id: formatSaId({ kind: 'overlay', from, to }), kind: 'overlay', spi: rec.spi, epoch: rec.epoch, nodes: [l.a, l.b], label: `overlay ${from}->${to}` },
        rec,
      });
    }
  }
  for (const name of Object.keys(state.circuits).sort(byName)) {
    const c = state.circuits[name]!;
    c.hops.forEach((hop, i) => {
      for (const dir of ['fwd', 'rev'] as const) {
        const rec = c[dir][i];
        if (!rec) continue;
        out.push({
          info: {
            ref: { circuit: name, hop: i + 1, dir },
            id: formatSaId({ kind: 'telescope', circuit: name, generation: c.generation, hop: i + 1, dir }),
            kind: 'telescope',
            spi: rec.spi,
            epoch: rec.epoch,
            nodes: [c.client, hop],
            label: `circuit ${name} hop ${i + 1} ${dir === 'fwd' ? 'forward' : 'reverse'}`,
          },
          rec,
        });
      }
    });
  }
  return out;
}

/** the stricter of the planned and the observed limits, member by member */
function effective(planned: SaLimits, observed: SaLimits | undefined): SaLimits {
  const out: SaLimits = {};
  for (const k of ['bytes', 'packets', 'addSeconds', 'useSeconds'] as const) {
    const v = minLimit(planned[k], observed?.[k]);
    if (v !== undefined) out[k] = v;
  }
  return out;
}

function wasInstalled(rec: SaRecord, node: string): boolean {
  if (rec.installed) return rec.installed.includes(node);
  // states written before `installed` existed: an epoch with a push time was pushed to both ends
  return rec.since !== undefined;
}

/** The reasons one end gives, or 'unread' when its usage is unknown. */
function endReasons(info: SaInfo, rec: SaRecord, node: string, reading: NodeReading | undefined, planned: { soft: SaLimits; hard: SaLimits }): DueReason[] | 'unread' | 'not-installed' {
  if (!reading) return 'unread';
  const o = reading.states.find((s) => s.spi === info.spi && s.proto === 'esp');
  if (!o) return wasInstalled(rec, node) ? [{ code: 'missing', node }] : 'not-installed';
  if (!o.counters) return 'unread';
  const soft = effective(planned.soft, o.lifetime?.soft);
  const hard = effective(planned.hard, o.lifetime?.hard);
  const clock = xfrmTimeSeconds(reading.clock);
  const since = (t: string | undefined) => {
    const s = xfrmTimeSeconds(t);
    return clock !== undefined && s !== undefined ? Math.max(0, clock - s) : undefined;
  };
  const usage: [LimitMeasure, keyof SaLimits, number | undefined][] = [
    ['bytes', 'bytes', o.counters.bytes],
    ['packets', 'packets', o.counters.packets],
    ['seconds since added', 'addSeconds', since(o.counters.added)],
    ['seconds since first use', 'useSeconds', since(o.counters.used)],
  ];
  const out: DueReason[] = [];
  for (const [measure, k, used] of usage) {
    if (used === undefined) continue;
    const h = hard[k];
    const s = soft[k];
    if (h !== undefined && used >= h * HARD_URGENT_FRACTION) out.push({ code: 'limit', level: 'hard', measure, node, used, limit: h });
    else if (s !== undefined && used >= s) out.push({ code: 'limit', level: 'soft', measure, node, used, limit: s });
  }
  return out;
}

/** The SAs due for a rekey (and why), the ones that could not be judged, and the circuits due for a rotation. */
export function schedule(input: ScheduleInput): Schedule {
  const now = isoSeconds(input.now);
  if (now === undefined) throw new Error(`schedule: "now" is not an ISO time: ${input.now}`);
  const maxSaAge = input.maxSaAgeSeconds ?? REKEY_AGE_SECONDS;
  const out: Schedule = { due: [], unknown: [], notInstalled: [], oldCircuits: [] };

  for (const { info, rec } of allSas(input.state)) {
    const planned = saOptions(info.kind, input.crypto).lifetime;
    const reasons: DueReason[] = [];
    const unread: string[] = [];
    const notInstalled: string[] = [];
    for (const node of info.nodes) {
      const r = endReasons(info, rec, node, input.readings.get(node), planned);
      if (r === 'unread') unread.push(node);
      else if (r === 'not-installed') notInstalled.push(node);
      else reasons.push(...r);
    }
    const since = isoSeconds(rec.since);
    if (since !== undefined && now - since >= maxSaAge) {
      reasons.push({ code: 'age', since: rec.since!, ageSeconds: Math.floor(now - since), maxSeconds: maxSaAge });
    }
    if (reasons.length > 0) {
      out.due.push({ ...info, reasons, urgent: reasons.some((r) => r.code === 'missing' || (r.code === 'limit' && r.level === 'hard')) });
    } else if (unread.length > 0) {
      out.unknown.push({ ...info, unread });
    }
    if (notInstalled.length > 0) out.notInstalled.push({ sa: info, nodes: notInstalled });
  }

  if (input.maxCircuitAgeSeconds !== undefined) {
    for (const name of Object.keys(input.state.circuits).sort()) {
      const c = input.state.circuits[name]!;
      const created = isoSeconds(c.created);
      if (created === undefined) continue;
      const age = Math.floor(now - created);
      if (now - created >= input.maxCircuitAgeSeconds) out.oldCircuits.push({ circuit: name, created: c.created, ageSeconds: age });
    }
  }
  return out;
}

const hex32 = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;

/** One reason as a sentence fragment: "bytes on or1 68719476736 >= soft limit 68719476736". */
export function describeReason(r: DueReason): string {
  switch (r.code) {
    case 'limit':
      return r.level === 'soft'
        ? `${r.measure} on ${r.node}: ${r.used} >= soft limit ${r.limit}`
        : `${r.measure} on ${r.node}: ${r.used} is near the hard limit ${r.limit} (the kernel deletes the SA there)`;
    case 'age':
      return `epoch ${r.ageSeconds}s old (since ${r.since}) >= ${r.maxSeconds}s`;
    case 'missing':
      return `gone from ${r.node} (deleted at a hard limit, or the router restarted)`;
  }
}

/** "overlay or1->or2 spi 0x4f000009 epoch 1 [urgent]: reason; reason" */
export function describeDue(d: DueSa): string {
  return `${d.label} spi ${hex32(d.spi)} epoch ${d.epoch}${d.urgent ? ' [urgent]' : ''}: ${d.reasons.map(describeReason).join('; ')}`;
}
