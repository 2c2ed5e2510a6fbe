/**
 * What the read-back parsers produce: one record per object the kernel reports, with addresses
 * as printed (the parsers accept IPv6 and anything else the tools print, because a router holds
 * objects that are not onionctl's). `classify.ts` splits records into onionctl's and foreign
 * ones and turns onionctl's into the planner's model (src/model/config.ts).
 *
 * No record ever holds key material: the xfrm state parser turns each key into a one-way
 * fingerprint (src/keys/kdf.ts) and drops the bytes.
 */
import type { SaLifetime } from '../keys/lifetimes.js';
import type { CryptoProfileName } from '../topology/schema.js';
import { OnionctlError } from '../util/errors.js';

/** caught per router by the readers (remote/read.ts), which leave that router out with the reason */
export class ReadbackError extends OnionctlError {
  readonly kind = 'uncaught' as const;
  constructor(
    message: string,
    /** 1-based line of the command output, when known */
    readonly line?: number,
  ) {
    super(line !== undefined ? `line ${line}: ${message}` : message);
  }
}

// ------------------------------------------------------------------------------------------
// xfrm

export interface XfrmAlgo {
  kind: 'aead' | 'enc' | 'auth' | 'auth-trunc' | 'comp';
  /** kernel algorithm name, e.g. rfc4106(gcm(aes)) */
  name: string;
  keyBits: number;
  /** ICV length (aead) or truncation length (auth-trunc), in bits */
  icvBits?: number;
}

/** Per-SA counters from `ip -s xfrm state` (for `status` and the rekey schedule). */
export interface XfrmStateCounters {
  /** usage so far ("lifetime current"): what the kernel compares with the byte/packet limits */
  bytes: number;
  packets: number;
  /**
   * "add" and "use" times as printed (the router's local time, "YYYY-MM-DD HH:MM:SS"); "use" is
   * the FIRST use (the kernel never updates it), "-" when never used
   */
  added?: string;
  used?: string;
  /** stats: packets dropped as outside the replay window, as replays, and failing integrity */
  replayWindowErrors: number;
  replayErrors: number;
  integrityFailed: number;
}

export interface XfrmStateRecord {
  family: 4 | 6;
  src: string;
  dst: string;
  proto: string;
  spi: number;
  reqid: number;
  mode: string;
  /** the anti-replay window: the legacy field, or the ESN context's when the state uses one */
  replayWindow: number;
  /**
   * true when the state has an ESN replay context ("anti-replay esn context"): with `flag esn`,
   * and also for a window over 32 without it (iproute2 puts such windows there). The ESN flag
   * itself is in `flags` ("esn").
   */
  esn: boolean;
  flags: string[];
  /**
   * soft and hard limits ("lifetime config", printed by `ip -s` only); a limit the kernel has as
   * none ((INF) bytes/packets, 0 seconds) is absent
   */
  lifetime?: SaLifetime;
  /** TFC padding length ("tfcpad N"); absent when the state has none */
  tfcpad?: number;
  mark?: string;
  algos: XfrmAlgo[];
  /** set when the algorithms are exactly one of onionctl's crypto profiles */
  profile?: CryptoProfileName;
  /**
   * fingerprint() of the key bytes laid out as the profile's key source produces them (for
   * aes-cbc-hmac-sha1: encryption key, then authentication key); only for a known profile
   */
  keyFingerprint?: string;
  /** selector; absent when the tool did not print one */
  sel?: { src: string; dst: string; extra: string[] };
  /** anti-replay context: last sequence number received / sent */
  seq?: number;
  oseq?: number;
  /** names of other lines seen (encap, if_id, offload, ...), never their values */
  other: string[];
  /** the SA direction (iproute2 6.11+ with Linux 6.10+: "dir in|out"); absent when it has none */
  saDir?: string;
  /** per-CPU SA (iproute2 6.19+: "pcpu-num N") */
  pcpuNum?: number;
  /** extra flags (`ip -s`: "extra_flag dont-encap-dscp ..."), which onionctl sets none of */
  extraFlags: string[];
  /**
   * the last time the SA carried a packet ("lastused", the router's local time), which newer
   * kernels report for every SA that was used: state, like the counters, never configuration
   */
  lastUsed?: string;
  counters?: XfrmStateCounters;
}

export interface XfrmTmplRecord {
  family: 4 | 6;
  src: string;
  dst: string;
  proto: string;
  spi?: number;
  reqid: number;
  mode: string;
  level: 'required' | 'use';
}

export interface XfrmPolicyRecord {
  family: 4 | 6;
  src: string;
  dst: string;
  /** upper-layer protocol of the selector, as printed (esp, tcp, 50, ...) */
  proto?: string;
  /** the rest of the selector: sport/dport/type/code/dev */
  selExtra: string[];
  dir: string;
  action: 'allow' | 'block';
  priority: number;
  ptype: string;
  index?: number;
  mark?: string;
  ifId?: string;
  flags: string[];
  tmpls: XfrmTmplRecord[];
  /** `socket` policies (per-socket, not in the SPD proper) */
  socket: boolean;
  /** names of lines that carry configuration onionctl never sets (security context, offload) */
  other: string[];
}

// ------------------------------------------------------------------------------------------
// routes and addresses

export interface RouteRecord {
  /** unicast, blackhole, unreachable, prohibit, local, broadcast, ... */
  type: string;
  /** as printed: 203.0.113.80, 203.0.113.0/25, default */
  dst: string;
  table: string;
  via?: string;
  dev?: string;
  /** numeric unless /etc/iproute2/rt_protos names it; `boot` when the text output omits it */
  proto: string;
  scope?: string;
  src?: string;
  metric: number;
  tos?: string;
  mtu?: number;
  mtuLocked?: boolean;
  advmss?: number;
  quickack?: boolean;
  /** multipath next hops */
  nexthops?: { via?: string; dev?: string; weight?: number }[];
  flags: string[];
  /** other metrics and attributes, name and value as printed */
  other: string[];
}

export interface AddressRecord {
  dev: string;
  family: 4 | 6;
  addr: string;
  len: number;
  scope?: string;
  label?: string;
  flags: string[];
  proto?: string;
}

// ------------------------------------------------------------------------------------------
// firewall

export interface IptablesRuleRecord {
  table: string;
  chain: string;
  /** the argument words after `-A CHAIN`, unquoted */
  args: string[];
  /** the line as iptables-save printed it */
  text: string;
  /** the rule's -j/-g target, if any */
  target?: string;
  comment?: string;
}

export interface IptablesChainRecord {
  table: string;
  chain: string;
  /** built-in chains have a policy (ACCEPT, DROP); user chains print "-" */
  policy?: string;
  builtin: boolean;
}

export interface IptablesSave {
  tables: string[];
  chains: IptablesChainRecord[];
  rules: IptablesRuleRecord[];
}

export interface NftRuleRecord {
  /** the statement text as nft printed it, with `counter packets N bytes M` removed */
  text: string;
  comment?: string;
}

export interface NftChainRecord {
  name: string;
  type?: string;
  hook?: string;
  priority?: string;
  policy?: string;
  rules: NftRuleRecord[];
}

export interface NftTableRecord {
  family: string;
  name: string;
  chains: NftChainRecord[];
  /** sets, maps, flowtables...: kind and name only */
  other: string[];
}
