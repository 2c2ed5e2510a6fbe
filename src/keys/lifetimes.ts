/**
 * SA lifetimes, replay windows and ESN: the one place the numbers live, so that the planner
 * (spd/build.ts puts them on every XfrmState), `status` (warns past a soft limit) and the rekey
 * scheduler (rekey/schedule.ts: `rekey --due`) agree. The reasoning is in docs/sa-lifetimes.md;
 * in short:
 *
 *  - soft limits are the rekey schedule: the kernel only notes that one was passed (an expire
 *    message nobody listens to, there is no IKE daemon), onionctl reads the counters and rekeys;
 *  - hard limits are the safety net: the kernel DELETES the SA when one is reached and nothing
 *    re-creates it, so the circuit fails closed until the next rekey. They sit far beyond the soft
 *    ones so that a rekey job that runs late, or is down for a few days, breaks nothing;
 *  - without ESN the 32-bit sequence number must never wrap (the kernel then drops every packet,
 *    XfrmOutStateSeqError): the hard packet limit stays below 2^32 with a margin;
 *  - bytes: AES-GCM (rfc4106, seqiv IVs: the nonce is the sequence number, so nonces never repeat
 *    under one key) keeps its confidentiality advantage below 2^-57 for up to 2^36 16-byte blocks;
 *    the hard limit of 2^38 bytes (2^34 blocks) leaves a factor 4 below that. AES-128-CBC with
 *    HMAC-SHA1-96 has the same 128-bit block birthday bound; the same numbers hold for it;
 *  - overlay links carry every circuit between two neighbours for as long as the topology lives:
 *    they use ESN (64-bit sequence numbers, of which only the low 32 bits go on the wire) and a
 *    larger window, so that they are rekeyed by bytes and time, never by the 32-bit counter.
 *
 * Pure data; no clock.
 */
import type { CryptoProfileName } from '../topology/schema.js';

/** One set of limits, as the kernel keeps them. A missing member means "no limit". */
export interface SaLimits {
  bytes?: number;
  packets?: number;
  /** seconds after the SA was added (ip xfrm: time-soft / time-hard) */
  addSeconds?: number;
  /** seconds after the SA was first used (ip xfrm: time-use-soft / time-use-hard) */
  useSeconds?: number;
}

export interface SaLifetime {
  soft: SaLimits;
  hard: SaLimits;
}

/** overlay: T^O(i,j) between neighbours; telescope: T(A,ci) of one circuit */
export type SaKind = 'overlay' | 'telescope';

export interface SaOptions {
  /** anti-replay window in packets; > 0 always (ESN needs one) */
  replayWindow: number;
  /** extended (64-bit) sequence numbers */
  esn: boolean;
  lifetime: SaLifetime;
}

/** The rekey age: an SA is due for rekey after this long (soft time limit). */
export const REKEY_AGE_SECONDS = 3600;
/**
 * The hard time limit: the kernel deletes the SA after this long. 168 rekey ages (a week), so
 * that a rekey job that is down over a long weekend costs nothing; past it circuits fail closed.
 */
export const HARD_AGE_SECONDS = 7 * 24 * 3600;
/** How often the rekey job should run (the example timer unit); see docs/sa-lifetimes.md. */
export const REKEY_TIMER_SECONDS = 300;

/** Soft byte limit: 64 GiB. */
export const BYTES_SOFT = 2 ** 36;
/** Hard byte limit: 256 GiB = 2^34 AES blocks, a factor 4 below the 2^36-block bound. */
export const BYTES_HARD = 2 ** 38;

/** Without ESN: soft at half of the 32-bit sequence space. */
export const PACKETS_SOFT_SEQ32 = 2 ** 31;
/** Without ESN: hard at 2^32 - 2^28 (0xf0000000), 268 million packets before the counter would wrap. */
export const PACKETS_HARD_SEQ32 = 2 ** 32 - 2 ** 28;
/** With ESN the sequence number does not wrap; the packet limits then only bound GCM's block count. */
export const PACKETS_SOFT_ESN = 2 ** 32;
export const PACKETS_HARD_ESN = 2 ** 34;

/** Replay windows: the legacy 32-bit bitmap for telescope SAs, 128 packets for ESN overlay SAs. */
export const REPLAY_WINDOW_TELESCOPE = 32;
export const REPLAY_WINDOW_OVERLAY = 128;

/**
 * An SA is rekeyed with urgency once any usage reaches this fraction of a hard limit (it is past
 * its soft limit long before that with onionctl's own limits; this catches SAs installed with
 * other limits, and rekey jobs that have been behind for a long time).
 */
export const HARD_URGENT_FRACTION = 0.9;

const TELESCOPE: SaOptions = deepFreeze({
  replayWindow: REPLAY_WINDOW_TELESCOPE,
  esn: false,
  lifetime: {
    soft: { bytes: BYTES_SOFT, packets: PACKETS_SOFT_SEQ32, addSeconds: REKEY_AGE_SECONDS },
    hard: { bytes: BYTES_HARD, packets: PACKETS_HARD_SEQ32, addSeconds: HARD_AGE_SECONDS },
  },
});

const OVERLAY: SaOptions = deepFreeze({
  replayWindow: REPLAY_WINDOW_OVERLAY,
  esn: true,
  lifetime: {
    soft: { bytes: BYTES_SOFT, packets: PACKETS_SOFT_ESN, addSeconds: REKEY_AGE_SECONDS },
    hard: { bytes: BYTES_HARD, packets: PACKETS_HARD_ESN, addSeconds: HARD_AGE_SECONDS },
  },
});

/**
 * The options every SA of this kind gets. Both crypto profiles use the same numbers (AES-GCM and
 * AES-CBC share the 128-bit block bound; HMAC-SHA1 as a PRF is not the weaker part); the profile
 * is a parameter so that a profile with other bounds can get its own numbers here.
 */
export function saOptions(kind: SaKind, _profile: CryptoProfileName): Readonly<SaOptions> {
  // one frozen object per kind, shared by every SA of that kind: a plan of 10,000 circuits has
  // 140,000 SAs, and a copy each (structuredClone) was a measurable part of planning
  return kind === 'overlay' ? OVERLAY : TELESCOPE;
}

function deepFreeze<T extends object>(o: T): T {
  for (const v of Object.values(o)) if (typeof v === 'object' && v !== null) deepFreeze(v as object);
  return Object.freeze(o);
}

/** "bytes 2^36, packets 2^31, 3600 s" style, for docs and messages; "none" for no limit. */
export function limitsText(l: SaLimits): string {
  const parts: string[] = [];
  if (l.bytes !== undefined) parts.push(`bytes ${l.bytes}`);
  if (l.packets !== undefined) parts.push(`packets ${l.packets}`);
  if (l.addSeconds !== undefined) parts.push(`${l.addSeconds}s after add`);
  if (l.useSeconds !== undefined) parts.push(`${l.useSeconds}s after first use`);
  return parts.length > 0 ? parts.join(', ') : 'none';
}

/** "soft [...] hard [...]" of a lifetime, the form the diff compares and shows. */
export function lifetimeText(l: SaLifetime): string {
  return `soft [${limitsText(l.soft)}] hard [${limitsText(l.hard)}]`;
}

/** The smaller of two limits, where undefined means "no limit". */
export function minLimit(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return Math.min(a, b);
}
