/**
 * `rekey --due` and `rotate --max-age` on live read-backs: the edge around the pure schedule
 * (rekey/schedule.ts), which decides from the state, each router's counters and limits (with the
 * router's own clock) and the controller's time.
 */
import { describeReason, schedule, type NodeReading, type Schedule } from '../rekey/schedule.js';
import type { State } from '../state/model.js';
import type { SaRef } from '../state/reconcile.js';
import type { Net } from '../topology/net.js';
import type { NodeRead } from './engine.js';

export function readings(reads: Map<string, NodeRead>): Map<string, NodeReading> {
  const m = new Map<string, NodeReading>();
  for (const r of reads.values()) {
    if (!r.observed?.states) continue;
    m.set(r.node, { states: r.observed.states.owned, ...(r.read?.clock ? { clock: r.read.clock } : {}) });
  }
  return m;
}

export function scheduleFor(net: Net, s: State, reads: Map<string, NodeRead>, now: Date, maxCircuitAgeSeconds?: number): Schedule {
  return schedule({ state: s, crypto: net.crypto, readings: readings(reads), now: now.toISOString(), ...(maxCircuitAgeSeconds !== undefined ? { maxCircuitAgeSeconds } : {}) });
}

/** the SAs due for a new key, with the reasons as one line each */
export function dueForRekey(net: Net, s: State, reads: Map<string, NodeRead>, now: Date): { ref: SaRef; why: string; urgent: boolean }[] {
  return scheduleFor(net, s, reads, now).due.map((d) => ({ ref: d.ref, why: d.reasons.map(describeReason).join('; '), urgent: d.urgent }));
}
