/**
 * Which SAs `rekey --due` renews: those whose current epoch was first pushed longer ago than
 * the rekey age (the state's `since`), or whose usage on either end has reached its soft byte or
 * packet limit as the router reports it. (An SA's time limits run on the router's clock from its
 * add time; the kernel marks it dying at the soft limit, and `status` reports that.)
 */
import { REKEY_AGE_SECONDS } from '../keys/lifetimes.js';
import type { ObservedState } from '../readback/observed.js';
import { allSas, type SaRef } from '../state/reconcile.js';
import type { State } from '../state/model.js';
import type { Net } from '../topology/net.js';
import type { NodeRead } from './engine.js';

export function dueForRekey(_net: Net, s: State, reads: Map<string, NodeRead>, now: Date): { ref: SaRef; why: string }[] {
  const bySpi = new Map<number, { node: string; st: ObservedState }[]>();
  for (const r of reads.values()) {
    for (const st of r.observed?.states?.owned ?? []) bySpi.set(st.spi, [...(bySpi.get(st.spi) ?? []), { node: r.node, st }]);
  }
  const out: { ref: SaRef; why: string }[] = [];
  for (const { ref, rec } of allSas(s)) {
    const why: string[] = [];
    if (rec.since) {
      const age = (now.getTime() - Date.parse(rec.since)) / 1000;
      if (age >= REKEY_AGE_SECONDS) why.push(`key in use for ${Math.floor(age / 60)} min (rekey age ${REKEY_AGE_SECONDS / 60} min)`);
    }
    for (const { node, st } of bySpi.get(rec.spi) ?? []) {
      const soft = st.lifetime?.soft;
      const c = st.counters;
      if (!soft || !c) continue;
      if (soft.bytes !== undefined && c.bytes >= soft.bytes) why.push(`${node}: ${c.bytes} bytes >= soft limit ${soft.bytes}`);
      if (soft.packets !== undefined && c.packets >= soft.packets) why.push(`${node}: ${c.packets} packets >= soft limit ${soft.packets}`);
    }
    if (why.length > 0) out.push({ ref, why: why.join('; ') });
  }
  return out;
}
