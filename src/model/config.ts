/**
 * The desired configuration of one router or client: the value the planner produces and the
 * renderers print. What a router holds is read back into the observed counterparts of these
 * types (readback/observed.ts: the same fields in the same units, plus what only a kernel can
 * report), and diff/kinds.ts declares once, per kind, how the two are keyed and compared.
 * Addresses are uint32 / Cidr; no key material lives here: an SA refers to its key by identity
 * (SaKeyId) and the key source is consulted only when rendering.
 */
import type { Cidr } from '../net/addr.js';
import type { SaKeyId } from '../keys/kdf.js';
import { REPLAY_WINDOW_TELESCOPE, type SaKind, type SaLifetime } from '../keys/lifetimes.js';
import type { CryptoProfileName, NatBackend } from '../topology/schema.js';

export interface XfrmState {
  src: number;
  dst: number;
  spi: number;
  reqid: number;
  /** overlay link or telescope layer (keys/lifetimes.ts gives each kind its options) */
  kind: SaKind;
  /** anti-replay window in packets (> 0) */
  replayWindow: number;
  /** extended sequence numbers (ip xfrm: flag esn) */
  esn: boolean;
  /** soft and hard limits (ip xfrm: limit time-soft ... packet-hard) */
  lifetime: SaLifetime;
  /** ESP TFC padding: pad packets smaller than this on this layer (ip xfrm: tfcpad) */
  tfcpad?: number;
  profile: CryptoProfileName;
  key: SaKeyId;
  /** why it exists, e.g. "overlay or1->or2" or "circuit web hop 2 forward" */
  comment: string;
}

export interface XfrmTmpl {
  src: number;
  dst: number;
  reqid: number;
}

export type PolicyDir = 'out' | 'in' | 'fwd';

export interface XfrmPolicy {
  src: Cidr;
  dst: Cidr;
  /** upper-layer protocol in the selector; mixes match the inner ESP packets */
  proto?: 'esp';
  dir: PolicyDir;
  priority: number;
  action: 'allow' | 'block';
  /** innermost layer first, as `ip xfrm policy` lists them */
  tmpls: XfrmTmpl[];
  comment: string;
}

export interface Route {
  dst: Cidr;
  via: number;
  dev: string;
  src?: number;
  mtu?: number;
  advmss?: number;
  quickack?: boolean;
  comment: string;
}

export interface LocalAddress {
  addr: number;
  dev: string;
  comment: string;
}

export interface Sysctl {
  key: string;
  value: string;
}

export interface SnatRule {
  src: Cidr;
  outIf: string;
  to: number;
  comment: string;
}

export interface FilterRule {
  src: Cidr;
  dst: Cidr;
  proto: 'tcp' | 'udp' | 'icmp' | 'esp' | 'any';
  ports?: (number | string)[];
  /** match only packets of connections conntrack already knows (ESTABLISHED,RELATED) */
  established?: boolean;
  /** match only packets that arrived through an SA of this reqid (iptables `-m policy --dir in`, nft `ipsec in`) */
  ipsecIn?: number;
  /** match only packets that leave through an SA of this reqid (`-m policy --dir out`, `ipsec out`) */
  ipsecOut?: number;
  action: 'accept' | 'drop';
  comment: string;
}

export interface FirewallConfig {
  backend: NatBackend;
  snat: SnatRule[];
  forward: FilterRule[];
}

export interface NodeConfig {
  node: string;
  kind: 'router' | 'client';
  /** the underlay interface, for the renderers' headers */
  underlay: string;
  states: XfrmState[];
  policies: XfrmPolicy[];
  addresses: LocalAddress[];
  routes: Route[];
  sysctls: Sysctl[];
  firewall: FirewallConfig;
}

/** Policy priorities: onionctl's policies sit in a reserved band so it can tell them apart. */
export const PRIORITY_CIRCUIT = 0x4f01;
/**
 * The `dir in` policies for intermediate packets of nested ESP (docs/kernels.md): ahead of the
 * circuit policies, so that a circuit whose destinations cover a mix's address cannot shadow them.
 */
export const PRIORITY_NESTED = 0x4f00;
/** lower precedence than the circuit policies (larger number) */
export const PRIORITY_BLOCK = 0x4f0f;
export const PRIORITY_BAND = [0x4f00, 0x4f0f] as const;
/** route protocol number marking onionctl's routes (ip route ... proto 79) */
export const ROUTE_PROTO = 79;
/** the telescope SAs' replay window (overlay SAs: keys/lifetimes.ts REPLAY_WINDOW_OVERLAY) */
export const REPLAY_WINDOW = REPLAY_WINDOW_TELESCOPE;
