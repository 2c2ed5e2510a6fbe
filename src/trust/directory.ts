/**
 * The mix directory of the distributed-trust mode (issue 14): what a client needs to choose a
 * path and authenticate each mix, and nothing about clients or circuits. Each mix is listed with
 * its Ed25519 identity key, its X25519 onion key (the `B` of ntor3.ts), underlay address, agent
 * port, pool, operator, country, exit policy and overlay neighbours (mixes only). The body is
 * canonical JSON (sorted keys, no spaces: one byte string per content), signed by several
 * independent directory authorities with Ed25519; a client accepts it only inside its validity
 * window and with valid signatures from more than half of the authorities it trusts.
 *
 * Pure: keys and times come from the caller (Ed25519 signing is deterministic). Nothing calls
 * this yet: the `directory` command, the agents and the client are still to be built.
 */
import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { z } from 'zod';
import { formatCidr, formatIPv4 } from '../net/addr.js';
import type { Net } from '../topology/net.js';
import { NAME_RE } from '../topology/schema.js';

const hex32 = z.string().regex(/^[0-9a-f]{64}$/, 'not 32 bytes of lower-case hex');
const name = z.string().regex(NAME_RE, 'not a node name');
const isoTime = z.string().regex(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,3})?Z$/, 'not an ISO time in UTC');
const ipv4 = z.string().regex(/^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/, 'not a dotted-quad address');
const cidr = z.string().regex(/^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\/(?:3[0-2]|[12]?\d)$/, 'not an IPv4 prefix');

const MixSchema = z.strictObject({
  name,
  identity: hex32,
  onionKey: hex32,
  address: ipv4,
  agentPort: z.number().int().min(1).max(65535),
  pool: cidr,
  operator: name,
  country: z.string().regex(/^[A-Z]{2}$/).optional(),
  exit: z
    .strictObject({
      allow: z
        .array(z.strictObject({ to: cidr, proto: z.enum(['tcp', 'udp', 'icmp', 'any']), ports: z.array(z.union([z.number().int().min(0).max(65535), z.string().regex(/^\d{1,5}-\d{1,5}$/)])).max(64).optional() }))
        .max(256),
    })
    .optional(),
  neighbours: z.array(name).max(4096),
});
export type DirectoryMix = z.infer<typeof MixSchema>;

const BodySchema = z.strictObject({
  version: z.literal(1),
  validAfter: isoTime,
  validUntil: isoTime,
  hops: z.number().int().min(2).max(16),
  crypto: z.enum(['aes-gcm', 'aes-cbc-hmac-sha1']),
  mixes: z.array(MixSchema).min(1).max(100_000),
});
export type DirectoryBody = z.infer<typeof BodySchema>;

export interface SignedDirectory {
  /** the canonical JSON text of a DirectoryBody, exactly as signed */
  body: string;
  signatures: { authority: string; signature: string }[];
}

export interface Authority {
  name: string;
  /** raw Ed25519 public key, 32 bytes */
  key: Buffer;
}

/** the most a directory file may hold (read from hostile places: bounded before parsing) */
export const MAX_DIRECTORY_BYTES = 64 * 1024 * 1024;

/** JSON with object keys sorted at every level and no whitespace: one text per content. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

/**
 * The directory body for `net`'s routers: public keys from `keys` (every router must have
 * them), neighbours among routers only. Clients, their entry links and circuits never appear.
 */
export function directoryBody(net: Net, keys: ReadonlyMap<string, { identity: Buffer; onionKey: Buffer }>, o: { validAfter: string; validUntil: string; agentPort: number }): DirectoryBody {
  const mixes: DirectoryMix[] = [...net.routers.values()].map((r) => {
    const k = keys.get(r.name);
    if (!k || k.identity.length !== 32 || k.onionKey.length !== 32) throw new Error(`directory: no identity and onion key for router ${r.name}`);
    const neighbours = [...(net.adj.get(r.name) ?? [])].filter((n) => net.routers.has(n)).sort();
    return {
      name: r.name,
      identity: k.identity.toString('hex'),
      onionKey: k.onionKey.toString('hex'),
      address: formatIPv4(r.underlay.addr),
      agentPort: o.agentPort,
      pool: formatCidr(r.pool),
      operator: r.operator,
      ...(r.country ? { country: r.country } : {}),
      ...(r.exit ? { exit: { allow: r.exit.allow.map((a) => ({ to: formatCidr(a.to), proto: a.proto, ...(a.ports ? { ports: [...a.ports] } : {}) })) } } : {}),
      neighbours,
    };
  });
  const body = { version: 1 as const, validAfter: o.validAfter, validUntil: o.validUntil, hops: net.hops, crypto: net.crypto, mixes };
  return BodySchema.parse(body);
}

const ED_PKCS8 = Buffer.from('302e020100300506032b657004220420', 'hex');
const ED_SPKI = Buffer.from('302a300506032b6570032100', 'hex');
/** an Ed25519 private key from its 32-byte seed */
export const ed25519Private = (seed: Buffer): KeyObject => createPrivateKey({ key: Buffer.concat([ED_PKCS8, seed]), format: 'der', type: 'pkcs8' });
const ed25519Public = (raw: Buffer): KeyObject => createPublicKey({ key: Buffer.concat([ED_SPKI, raw]), format: 'der', type: 'spki' });
/** the raw 32-byte public key of an Ed25519 private key */
export function ed25519PublicRaw(k: KeyObject): Buffer {
  const der = createPublicKey(k).export({ format: 'der', type: 'spki' });
  return Buffer.from(der.subarray(der.length - 32));
}

const SIG_CONTEXT = Buffer.from('onionctl/directory/v1\0');

/** One authority's signature over the canonical body text. */
export function signDirectory(body: DirectoryBody, authority: string, key: KeyObject): { text: string; signature: { authority: string; signature: string } } {
  const text = canonicalJson(body);
  return { text, signature: { authority, signature: sign(null, Buffer.concat([SIG_CONTEXT, Buffer.from(text)]), key).toString('hex') } };
}

export class DirectoryRejected extends Error {
  constructor(why: string) {
    super(`directory rejected: ${why}`);
    this.name = 'DirectoryRejected';
  }
}

/**
 * The directory's body when it is canonical, inside its validity window at `now`, and signed
 * by more than half of `trusted` (each authority counted once; signatures by anyone else are
 * ignored). Anything else is a DirectoryRejected saying why.
 */
export function verifyDirectory(doc: SignedDirectory, trusted: readonly Authority[], now: string): DirectoryBody {
  if (trusted.length === 0) throw new DirectoryRejected('no trusted authorities configured');
  if (Buffer.byteLength(doc.body) > MAX_DIRECTORY_BYTES) throw new DirectoryRejected('larger than 64 MiB');
  let parsed: unknown;
  try {
    parsed = JSON.parse(doc.body);
  } catch {
    throw new DirectoryRejected('the body is not JSON');
  }
  const r = BodySchema.safeParse(parsed);
  if (!r.success) throw new DirectoryRejected(`the body is malformed: ${r.error.issues[0]?.path.join('.') ?? ''} ${r.error.issues[0]?.message ?? ''}`.trim());
  if (canonicalJson(r.data) !== doc.body) throw new DirectoryRejected('the body is not in canonical form');
  const data = Buffer.concat([SIG_CONTEXT, Buffer.from(doc.body)]);
  const good = new Set<string>();
  for (const s of doc.signatures.slice(0, 64)) {
    const a = trusted.find((t) => t.name === s.authority);
    if (!a || good.has(a.name) || !/^[0-9a-f]{128}$/.test(s.signature)) continue;
    if (verify(null, data, ed25519Public(a.key), Buffer.from(s.signature, 'hex'))) good.add(a.name);
  }
  const need = Math.floor(trusted.length / 2) + 1;
  if (good.size < need) throw new DirectoryRejected(`${good.size} valid signature(s) of the ${trusted.length} trusted authorities; ${need} needed`);
  const t = Date.parse(now);
  if (!(t >= Date.parse(r.data.validAfter))) throw new DirectoryRejected(`not valid before ${r.data.validAfter}`);
  if (!(t < Date.parse(r.data.validUntil))) throw new DirectoryRejected(`expired at ${r.data.validUntil}`);
  return r.data;
}
