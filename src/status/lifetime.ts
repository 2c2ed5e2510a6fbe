/**
 * SA lifetimes for `status` (issue 6: "status warns when an SA is past its soft limit"). Pure.
 *
 * The kernel keeps, per SA, soft and hard limits on bytes, packets, seconds since the SA was
 * added and seconds since its first use (`ip -s xfrm state`: "lifetime config"), and the usage
 * so far ("lifetime current": bytes, packets, add time, first-use time). `checkLifetime` compares
 * the two. Where the limits come from is the one hook below, `limitsOf`. The kernel itself only
 * notes a soft limit (an expire message nobody listens to) and deletes the SA at a hard one.
 */
import type { ObservedState } from '../readback/observed.js';

/** One set of limits; a missing or infinite member means "no limit". */
export interface LifetimeLimits {
  bytes?: number;
  packets?: number;
  /** seconds after the SA was added */
  addSeconds?: number;
  /** seconds after the SA was first used */
  useSeconds?: number;
}

export interface LifetimeUsage {
  bytes?: number;
  packets?: number;
  /** seconds since the SA was added (router clock) */
  ageSeconds?: number;
  /** seconds since its first use; undefined when never used */
  usedForSeconds?: number;
}

export interface LifetimeReport {
  soft?: LifetimeLimits;
  hard?: LifetimeLimits;
  /** the largest fraction of a soft limit used (1 = at the limit); undefined with no soft limit */
  softUsed?: number;
  /** which soft limits are reached, e.g. "bytes 1100 >= 1000"; undefined when none */
  pastSoft?: string;
  pastHard?: string;
}

export type LifetimeCheck = (o: ObservedState, usage: LifetimeUsage) => LifetimeReport | undefined;

const finite = (n: number | undefined): n is number => n !== undefined && Number.isFinite(n) && n > 0;

function reached(l: LifetimeLimits | undefined, u: LifetimeUsage): { used?: number; past: string[] } {
  const past: string[] = [];
  let used: number | undefined;
  if (!l) return { past };
  const one = (name: string, have: number | undefined, limit: number | undefined) => {
    if (!finite(limit) || have === undefined) return;
    used = Math.max(used ?? 0, have / limit);
    if (have >= limit) past.push(`${name} ${have} >= ${limit}`);
  };
  one('bytes', u.bytes, l.bytes);
  one('packets', u.packets, l.packets);
  one('seconds since added', u.ageSeconds, l.addSeconds);
  one('seconds since first use', u.usedForSeconds, l.useSeconds);
  return { ...(used !== undefined ? { used } : {}), past };
}

/** Compares usage against soft and hard limits; undefined when neither sets any finite limit. */
export function checkLifetime(limits: { soft?: LifetimeLimits; hard?: LifetimeLimits }, usage: LifetimeUsage): LifetimeReport | undefined {
  const any = (l?: LifetimeLimits) => !!l && (finite(l.bytes) || finite(l.packets) || finite(l.addSeconds) || finite(l.useSeconds));
  if (!any(limits.soft) && !any(limits.hard)) return undefined;
  const s = reached(limits.soft, usage);
  const h = reached(limits.hard, usage);
  return {
    ...(limits.soft ? { soft: limits.soft } : {}),
    ...(limits.hard ? { hard: limits.hard } : {}),
    ...(s.used !== undefined ? { softUsed: Math.round(s.used * 1000) / 1000 } : {}),
    ...(s.past.length ? { pastSoft: s.past.join(', ') } : {}),
    ...(h.past.length ? { pastHard: h.past.join(', ') } : {}),
  };
}

/**
 * The soft and hard limits the router reports for this SA: ObservedState.lifetime, which the
 * read-back fills in from "lifetime config" (issue 6, src/keys/lifetimes.ts SaLifetime; limits
 * the kernel has as none are absent). Read structurally, so that this file does not depend on
 * more than the field's shape. This is the one place to change if the limits ever come from
 * elsewhere (e.g. the plan's XfrmState).
 */
export function limitsOf(o: ObservedState): { soft?: LifetimeLimits; hard?: LifetimeLimits } | undefined {
  const l = (o as ObservedState & { lifetime?: { soft?: LifetimeLimits; hard?: LifetimeLimits } }).lifetime;
  return l && (l.soft || l.hard) ? l : undefined;
}

export const defaultLifetimeCheck: LifetimeCheck = (o, usage) => {
  const l = limitsOf(o);
  return l ? checkLifetime(l, usage) : undefined;
};
