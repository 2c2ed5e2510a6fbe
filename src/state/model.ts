/**
 * The state file: what onionctl decided and must remember so that plans are stable. Paths are
 * state, not re-rolled on each plan; SPIs, reqids and key epochs are allocated once and only move
 * forward. No key material is stored here.
 */
import { z } from 'zod';
import { NAME_RE } from '../topology/schema.js';

/**
 * Every string of a state file is bounded and of a known shape: the file is read back and its
 * names and addresses are printed to terminals and put into router commands.
 */
const name = z.string().regex(NAME_RE, 'not a node or circuit name');
const ipv4 = z.string().regex(/^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/, 'not a dotted-quad address');
const cidr = z.string().regex(/^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\/(?:3[0-2]|[12]?\d)$/, 'not an IPv4 prefix');
const isoTime = z.string().regex(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)$/, 'not an ISO time');
const nodes = z.array(name).max(4096);

/** onionctl's reserved ranges: how it recognises its own xfrm objects on a router. */
export const SPI_BASE = 0x4f000000;
export const SPI_LAST = 0x4fffffff;
export const REQID_BASE = 0x4f000000;
export const REQID_LAST = 0x4fffffff;

const sa = z.strictObject({
  spi: z.number().int().min(SPI_BASE).max(SPI_LAST),
  reqid: z.number().int().min(REQID_BASE).max(REQID_LAST),
  /** incremented each time the SA is (re)created; part of the key derivation */
  epoch: z.number().int().min(1),
  /**
   * 16 random bytes (hex) drawn when this epoch was allocated, part of the key derivation: a
   * state restored from a backup, or a second controller with a copy of the state, that hands
   * out the same SPI and epoch again still derives a different key. Absent in states written
   * before it existed (their keys stay as they were; every new epoch gets one).
   */
  nonce: z.string().regex(/^[0-9a-f]{32}$/).optional(),
  /**
   * nodes this epoch's key has been pushed to (recorded before the push). An SA missing from one
   * of them later (a reboot, a manual delete) is never installed there again with this key: it
   * gets a new epoch and SPI, because its sequence numbers (GCM nonces) would start over.
   * Absent (a state from before this was recorded): unknown, so any install gets a new epoch.
   */
  installed: nodes.optional(),
  /** ISO time this epoch was first pushed (the age used by rekey --due) */
  since: isoTime.optional(),
  /**
   * previous epochs still installed during a make-before-break rekey (same reqid, older SPI),
   * removed once `until` has passed
   */
  retiring: z
    .array(z.strictObject({ spi: z.number().int().min(SPI_BASE).max(SPI_LAST), epoch: z.number().int().min(1), nonce: z.string().regex(/^[0-9a-f]{32}$/).optional(), until: isoTime, installed: nodes.optional() }))
    .max(64)
    .optional(),
});
export type SaRecord = z.infer<typeof sa>;

const link = z.strictObject({
  a: name,
  b: name,
  /** SA carrying a -> b */
  ab: sa,
  /** SA carrying b -> a */
  ba: sa,
});
export type LinkState = z.infer<typeof link>;

const circuit = z.strictObject({
  client: name,
  hops: z.array(name).min(2).max(16),
  /** A_ci: the client's per-hop address, from hop i's pool, dotted quad */
  addrs: z.array(ipv4).max(16),
  to: z.array(cidr).max(1024),
  /** bumps when the circuit is re-pathed; part of SA identities */
  generation: z.number().int().min(1),
  /** ISO time the current path was chosen (from the injected clock) */
  created: isoTime,
  /** telescope SAs A_ci -> OR_ci, index i-1 */
  fwd: z.array(sa).max(16),
  /** telescope SAs OR_ci -> A_ci, index i-1 */
  rev: z.array(sa).max(16),
});
export type CircuitState = z.infer<typeof circuit>;

export const StateSchema = z.strictObject({
  version: z.literal(1),
  /** random, from the CSPRNG when the state is created; salts key derivation */
  salt: z.string().regex(/^[0-9a-f]{64}$/),
  /** incremented on every change */
  serial: z.number().int().min(0),
  next: z.strictObject({
    spi: z.number().int().min(SPI_BASE).max(SPI_LAST + 1),
    reqid: z.number().int().min(REQID_BASE).max(REQID_LAST + 1),
  }),
  links: z.record(z.string().regex(/^[a-z][a-z0-9_-]{0,30}~[a-z][a-z0-9_-]{0,30}$/, 'not a link name (A~B)'), link),
  circuits: z.record(name, circuit),
});
export type State = z.infer<typeof StateSchema>;

export function emptyState(salt: string): State {
  return { version: 1, salt, serial: 0, next: { spi: SPI_BASE, reqid: REQID_BASE }, links: {}, circuits: {} };
}

export type StateEvent =
  | { kind: 'circuit-added'; circuit: string; hops: string[] }
  | { kind: 'circuit-repathed'; circuit: string; hops: string[]; from: string[]; reason: string }
  | { kind: 'circuit-removed'; circuit: string }
  | { kind: 'circuit-updated'; circuit: string; reason: string }
  | { kind: 'link-added'; link: string }
  | { kind: 'link-removed'; link: string };

export function describeEvent(e: StateEvent): string {
  switch (e.kind) {
    case 'circuit-added':
      return `circuit ${e.circuit}: new path ${e.hops.join(' -> ')}`;
    case 'circuit-repathed':
      return `circuit ${e.circuit}: re-pathed ${e.from.join(' -> ')} => ${e.hops.join(' -> ')} (${e.reason})`;
    case 'circuit-removed':
      return `circuit ${e.circuit}: removed`;
    case 'circuit-updated':
      return `circuit ${e.circuit}: ${e.reason}`;
    case 'link-added':
      return `overlay link ${e.link}: new SAs`;
    case 'link-removed':
      return `overlay link ${e.link}: removed`;
  }
}
