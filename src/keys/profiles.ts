/**
 * Crypto profiles: what goes on an `xfrm state` line, how many key bytes each SA needs, and what
 * one ESP tunnel layer costs in bytes (for the inner MTU and TCP MSS).
 */
import type { CryptoProfileName } from '../topology/schema.js';

export interface CryptoProfile {
  name: CryptoProfileName;
  /** total key bytes for one SA (for GCM: AES key + 4-byte salt) */
  keyBytes: number;
  /** ESP IV length */
  ivLen: number;
  /** ICV (authentication tag) length */
  icvLen: number;
  /** cipher block size (1 for GCM, which the kernel aligns to 4) */
  blockSize: number;
  /** the algorithm part of `ip xfrm state add`, with the key rendered by `key` */
  algo(key: Buffer, show: (bytes: Buffer) => string): string;
}

export const PROFILES: Record<CryptoProfileName, CryptoProfile> = {
  // RFC 4106 AES-GCM: 32-byte AES-256 key + 4-byte salt, 128-bit tag, 8-byte IV
  'aes-gcm': {
    name: 'aes-gcm',
    keyBytes: 36,
    ivLen: 8,
    icvLen: 16,
    blockSize: 1,
    algo: (key, show) => `aead rfc4106(gcm(aes)) ${show(key)} 128`,
  },
  // the paper's profile: AES-CBC-128 with HMAC-SHA1-96
  'aes-cbc-hmac-sha1': {
    name: 'aes-cbc-hmac-sha1',
    keyBytes: 16 + 20,
    ivLen: 16,
    icvLen: 12,
    blockSize: 16,
    algo: (key, show) => `enc cbc(aes) ${show(key.subarray(0, 16))} auth-trunc hmac(sha1) ${show(key.subarray(16))} 96`,
  },
};

const IPV4_HDR = 20;
const ESP_HDR = 8;

/**
 * The largest inner packet that fits one ESP tunnel layer over a path of `mtu` bytes, computed
 * as the kernel does (esp4_get_mtu): ((mtu - header_len - icv) & ~(align - 1)) - 2.
 */
export function innerMtu(p: CryptoProfile, mtu: number): number {
  const align = Math.max(4, p.blockSize);
  const headerLen = ESP_HDR + p.ivLen + IPV4_HDR;
  return ((mtu - headerLen - p.icvLen) & ~(align - 1)) - 2;
}

/** Inner MTU after `layers` nested tunnel layers: 1500 and 4 GCM layers give 1278. */
export function nestedMtu(p: CryptoProfile, mtu: number, layers: number): number {
  let m = mtu;
  for (let i = 0; i < layers; i++) m = innerMtu(p, m);
  return m;
}

/** TCP MSS for an inner MTU: IPv4 header + TCP header without options. */
export function mssFor(mtu: number): number {
  return mtu - 40;
}
