/**
 * The one module that understands IP addresses. Parsing is delegated to ipaddr.js (maintained;
 * the `ip` package has open advisories, see docs/decisions.md); everything else works on plain
 * uint32 values so that the planner can do arithmetic on pools without allocations.
 *
 * onionctl is IPv4-only for now: the kernel facts it was built on were measured with IPv4 and the
 * inner path MTU of a k=3 circuit (1278) is below the IPv6 minimum of 1280 anyway.
 */
import ipaddr from 'ipaddr.js';
import { OnionctlError } from '../util/errors.js';

export interface Cidr {
  /** network address as uint32 */
  readonly base: number;
  readonly len: number;
}

/** An interface address: host address plus prefix length (e.g. 198.51.100.11/24). */
export interface IfAddr {
  readonly addr: number;
  readonly len: number;
}

/** caught by the schema (topology/schema.ts), which reports it at the value's file:line:col */
export class AddrError extends OnionctlError {
  readonly kind = 'uncaught' as const;
}

export function parseIPv4(text: string): number {
  if (!ipaddr.IPv4.isValidFourPartDecimal(text)) {
    throw new AddrError(`"${text}" is not an IPv4 address in dotted-quad form`);
  }
  const o = ipaddr.IPv4.parse(text).octets;
  return (((o[0]! << 24) >>> 0) + (o[1]! << 16) + (o[2]! << 8) + o[3]!) >>> 0;
}

export function formatIPv4(n: number): string {
  return `${(n >>> 24) & 255}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

export function maskOf(len: number): number {
  return len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
}

function splitCidr(text: string): [string, number] {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(text);
  if (!m) throw new AddrError(`"${text}" is not in address/prefix-length form`);
  const len = Number(m[2]);
  if (len > 32) throw new AddrError(`"${text}": prefix length ${len} is larger than 32`);
  return [m[1]!, len];
}

/** A network prefix; host bits must be zero (203.0.113.0/24, not 203.0.113.7/24). */
export function parseCidr(text: string): Cidr {
  const [a, len] = text.includes('/') ? splitCidr(text) : [text, 32];
  const addr = parseIPv4(a);
  const base = (addr & maskOf(len)) >>> 0;
  if (base !== addr) {
    throw new AddrError(`"${text}" has host bits set; did you mean ${formatIPv4(base)}/${len}?`);
  }
  return { base, len };
}

/** An interface address such as 198.51.100.11/24; host bits are the point. */
export function parseIfAddr(text: string): IfAddr {
  const [a, len] = splitCidr(text);
  return { addr: parseIPv4(a), len };
}

export function formatCidr(c: Cidr): string {
  return `${formatIPv4(c.base)}/${c.len}`;
}

/** A destination as people write it: a /32 as the bare address, anything wider as a CIDR. */
export function formatDest(d: Cidr): string {
  return d.len === 32 ? formatIPv4(d.base) : formatCidr(d);
}

export function hostCidr(addr: number): Cidr {
  return { base: addr >>> 0, len: 32 };
}

export function cidrSize(c: Cidr): number {
  return 2 ** (32 - c.len);
}

export function cidrLast(c: Cidr): number {
  return (c.base + cidrSize(c) - 1) >>> 0;
}

export function cidrContains(outer: Cidr, inner: Cidr): boolean {
  return inner.len >= outer.len && ((inner.base & maskOf(outer.len)) >>> 0) === outer.base;
}

export function cidrContainsAddr(c: Cidr, addr: number): boolean {
  return ((addr & maskOf(c.len)) >>> 0) === c.base;
}

export function cidrOverlaps(a: Cidr, b: Cidr): boolean {
  return cidrContains(a, b) || cidrContains(b, a);
}

/** The /16 an address lies in, as its upper 16 bits (used for the distinct-/16 constraint). */
export function slash16(addr: number): number {
  return addr >>> 16;
}

/**
 * Hosts usable for per-hop client addresses in a pool: network and broadcast addresses are left
 * out for pools of /30 and wider, as a router's admin would expect.
 */
export function poolHosts(c: Cidr): { first: number; last: number } {
  if (c.len >= 31) return { first: c.base, last: cidrLast(c) };
  return { first: (c.base + 1) >>> 0, last: (cidrLast(c) - 1) >>> 0 };
}

/** Documentation and benchmark ranges the lab may use on its wires. */
export const LAB_SAFE: readonly Cidr[] = [
  '192.0.2.0/24',
  '198.51.100.0/24',
  '203.0.113.0/24',
  '198.18.0.0/15',
  '100.64.0.0/10',
].map(parseCidr);

export function isLabSafe(c: Cidr): boolean {
  return LAB_SAFE.some((r) => cidrContains(r, c));
}

export const ANY: Cidr = { base: 0, len: 0 };
