/**
 * What one router holds, read back and split by ownership (DESIGN.md, "Ownership"): onionctl's
 * objects in the planner's terms, everything else as the parsers' records, to be left alone.
 *
 *   xfrm state    onionctl's: IPv4, ESP, SPI and reqid both in the reserved range (state/model.ts)
 *   xfrm policy   onionctl's: IPv4, type main, not a socket policy, priority in PRIORITY_BAND
 *   route         onionctl's: proto ROUTE_PROTO (79)
 *   address       onionctl's: an IPv4 /32 on the address device (lo) inside a router pool of the
 *                 topology (the kernel keeps no owner mark on addresses)
 *   iptables      onionctl's: the ONIONCTL-* chains and their rules, and a jump into one of them
 *                 commented "onionctl" in a built-in chain
 *   nftables      onionctl's: the whole table ip onionctl
 *
 * Pure: the caller runs the commands (one SSH session per router) and passes their output.
 */
import type { SaLifetime } from '../keys/lifetimes.js';
import { cidrContainsAddr, parseCidr, parseIPv4, type Cidr } from '../net/addr.js';
import { PRIORITY_BAND, ROUTE_PROTO, type FilterRule, type PolicyDir, type SnatRule } from '../model/config.js';
import { IPT_CHAIN_FORWARD, IPT_CHAIN_POSTROUTING, NFT_TABLE, OWNER_COMMENT } from '../render/render.js';
import { REQID_BASE, REQID_LAST, SPI_BASE, SPI_LAST } from '../state/model.js';
import type { CryptoProfileName } from '../topology/schema.js';
import { iptablesFilterRule, iptablesSnatRule, nftFilterRule, nftSnatRule, parseIptablesSave, parseNftRuleset } from './firewall.js';
import type { AddressRecord, IptablesChainRecord, IptablesRuleRecord, RouteRecord, XfrmAlgo, XfrmPolicyRecord, XfrmStateCounters, XfrmStateRecord } from './records.js';
import { parseAddresses, parseRoutes } from './route.js';
import { parseXfrmPolicies, parseXfrmStates } from './xfrm.js';

export interface ObservedState {
  src: number;
  dst: number;
  proto: string;
  spi: number;
  reqid: number;
  mode: string;
  replayWindow: number;
  profile?: CryptoProfileName;
  /** algorithms as `kind name keybits[/icvbits]`, for display when no profile matched */
  algos: string[];
  keyFingerprint?: string;
  /** has an ESN replay context (see XfrmStateRecord.esn); the ESN flag is flags "esn" */
  esn: boolean;
  /** state flags as printed, e.g. "esn", "af-unspec" */
  flags: string[];
  mark?: string;
  /** false when the selector is not the wildcard onionctl installs */
  selectorIsWildcard: boolean;
  other: string[];
  /** SA direction (iproute2 6.11+), per-CPU number (6.19+), extra flags: onionctl sets none */
  saDir?: string;
  pcpuNum?: number;
  extraFlags: string[];
  /** when the SA last carried a packet (newer kernels print it): state, never compared */
  lastUsed?: string;
  seq?: number;
  oseq?: number;
  /** soft/hard limits the kernel enforces; undefined when not read (`ip xfrm state` without -s) */
  lifetime?: SaLifetime;
  /** TFC padding length; undefined when none */
  tfcpad?: number;
  /**
   * usage so far (`ip -s`: "lifetime current" bytes/packets, add and first-use times as the
   * router prints them; use xfrmTimeSeconds and the router's clock for ages) and error counters
   */
  counters?: XfrmStateCounters;
}

export interface ObservedTmpl {
  src: number;
  dst: number;
  proto: string;
  reqid: number;
  mode: string;
  level: 'required' | 'use';
}

export interface ObservedPolicy {
  src: Cidr;
  dst: Cidr;
  proto?: string;
  selExtra: string[];
  dir: PolicyDir;
  priority: number;
  action: 'allow' | 'block';
  tmpls: ObservedTmpl[];
  mark?: string;
  ifId?: string;
  index?: number;
  /** security context, offload: configuration onionctl never sets */
  other: string[];
}

export interface ObservedRoute {
  dst: Cidr;
  table: string;
  type: string;
  via?: number;
  dev?: string;
  src?: number;
  metric: number;
  tos?: string;
  mtu?: number;
  mtuLocked: boolean;
  advmss?: number;
  quickack: boolean;
  multipath: boolean;
  /** other attributes and metrics as printed, e.g. "hoplimit 5" (onionctl sets none) */
  attrs: string[];
  /** flags as printed: onlink, linkdown, ... (some report state, not configuration) */
  flags: string[];
}

export interface ObservedAddress {
  addr: number;
  len: number;
  dev: string;
}

export type Backend = 'iptables' | 'nftables';

/** One of onionctl's chains: iptables ONIONCTL-*, or a chain of table ip onionctl. */
export interface OwnedChain {
  backend: Backend;
  /** iptables table (filter, nat), or "ip onionctl" */
  table: string;
  chain: string;
  /**
   * how packets reach it. iptables: the built-in chains whose "onionctl" jump rules lead here,
   * one entry per jump ("FORWARD", or "FORWARD <extra matches>" for a jump with more matches);
   * nft: "type T hook H priority P policy X" of the base chain
   */
  hooks: string[];
}

/** A rule in one of onionctl's chains. `snat` / `filter` are set when it has a shape render writes. */
export interface OwnedRule {
  backend: Backend;
  table: string;
  chain: string;
  /** as printed (iptables-save line, or nft statement) */
  text: string;
  snat?: SnatRule;
  filter?: FilterRule;
}

export interface ObservedFirewall {
  chains: OwnedChain[];
  rules: OwnedRule[];
}

export interface Split<O, F> {
  owned: O[];
  foreign: F[];
}

/**
 * A router's objects. A missing member means "not read" (the diff then leaves that kind alone);
 * an empty one means "read, and there is nothing".
 */
export interface ObservedNode {
  node: string;
  states?: Split<ObservedState, XfrmStateRecord>;
  policies?: Split<ObservedPolicy, XfrmPolicyRecord>;
  routes?: Split<ObservedRoute, RouteRecord>;
  addresses?: Split<ObservedAddress, AddressRecord>;
  iptables?: { owned: ObservedFirewall; foreignRules: IptablesRuleRecord[]; foreignChains: IptablesChainRecord[] };
  nft?: { owned: ObservedFirewall; present: boolean; foreignTables: string[] };
  /** values of the sysctls onionctl sets, as read (the caller fills this in) */
  sysctls?: Record<string, string>;
}

/** Command output from one router; leave out what was not read. */
export interface ReadbackOutputs {
  /** `ip -s xfrm state` (or `ip xfrm state`); holds keys: pass it straight in, never store it */
  xfrmState?: string;
  /** `ip xfrm policy` (or with -s) */
  xfrmPolicy?: string;
  /** `ip route show table main` (or with -d) */
  routes?: string;
  /** `ip -4 addr show dev lo` (or `ip addr show`) */
  addresses?: string;
  /** `iptables-save` (or iptables-legacy-save) */
  iptablesSave?: string;
  /** `nft list ruleset`, or `nft list table ip onionctl` ("" when that table does not exist) */
  nft?: string;
}

export interface OwnershipContext {
  /** router pools of the topology: A_ci addresses come from them */
  pools: Cidr[];
  /** device onionctl puts A_ci on; default lo */
  addressDev?: string;
}

const inRange = (n: number, lo: number, hi: number) => n >= lo && n <= hi;

/** An IPv4 address as the tools print it; undefined if it is not one. */
export function recordIPv4(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  try {
    return parseIPv4(text);
  } catch {
    return undefined;
  }
}

/** A prefix as the tools print it ("default", "203.0.113.80", "100.64.0.0/10"); undefined if not IPv4. */
export function recordCidr(text: string): Cidr | undefined {
  try {
    if (text === 'default') return { base: 0, len: 0 };
    return parseCidr(text.includes('/') ? text : `${text}/32`);
  } catch {
    return undefined;
  }
}

const algoText = (a: XfrmAlgo) => `${a.kind} ${a.name} ${a.keyBits}${a.icvBits !== undefined ? `/${a.icvBits}` : ''}`;

export function isOwnedState(r: XfrmStateRecord): boolean {
  return r.family === 4 && r.proto === 'esp' && inRange(r.spi, SPI_BASE, SPI_LAST) && inRange(r.reqid, REQID_BASE, REQID_LAST);
}

function toState(r: XfrmStateRecord): ObservedState | undefined {
  const src = recordIPv4(r.src);
  const dst = recordIPv4(r.dst);
  if (src === undefined || dst === undefined) return undefined;
  const wild = !r.sel || (r.sel.src === '0.0.0.0/0' && r.sel.dst === '0.0.0.0/0' && r.sel.extra.length === 0);
  return {
    src,
    dst,
    proto: r.proto,
    spi: r.spi,
    reqid: r.reqid,
    mode: r.mode,
    replayWindow: r.replayWindow,
    ...(r.profile ? { profile: r.profile } : {}),
    algos: r.algos.map(algoText),
    ...(r.keyFingerprint ? { keyFingerprint: r.keyFingerprint } : {}),
    esn: r.esn,
    flags: r.flags,
    ...(r.mark !== undefined ? { mark: r.mark } : {}),
    selectorIsWildcard: wild,
    other: r.other,
    ...(r.saDir !== undefined ? { saDir: r.saDir } : {}),
    ...(r.pcpuNum !== undefined ? { pcpuNum: r.pcpuNum } : {}),
    extraFlags: r.extraFlags,
    ...(r.lastUsed !== undefined ? { lastUsed: r.lastUsed } : {}),
    ...(r.seq !== undefined ? { seq: r.seq } : {}),
    ...(r.oseq !== undefined ? { oseq: r.oseq } : {}),
    ...(r.lifetime ? { lifetime: r.lifetime } : {}),
    ...(r.tfcpad !== undefined ? { tfcpad: r.tfcpad } : {}),
    ...(r.counters ? { counters: r.counters } : {}),
  };
}

export function isOwnedPolicy(r: XfrmPolicyRecord): boolean {
  return r.family === 4 && !r.socket && r.ptype === 'main' && inRange(r.priority, PRIORITY_BAND[0], PRIORITY_BAND[1]);
}

const POLICY_DIRS: readonly string[] = ['in', 'out', 'fwd'] satisfies PolicyDir[];

function toPolicy(r: XfrmPolicyRecord): ObservedPolicy | undefined {
  const src = recordCidr(r.src);
  const dst = recordCidr(r.dst);
  if (!src || !dst || !POLICY_DIRS.includes(r.dir)) return undefined;
  const tmpls: ObservedTmpl[] = [];
  for (const t of r.tmpls) {
    const ts = recordIPv4(t.src);
    const td = recordIPv4(t.dst);
    if (ts === undefined || td === undefined) return undefined;
    tmpls.push({ src: ts, dst: td, proto: t.proto, reqid: t.reqid, mode: t.mode, level: t.level });
  }
  return {
    src,
    dst,
    ...(r.proto !== undefined ? { proto: r.proto } : {}),
    selExtra: r.selExtra,
    dir: r.dir as PolicyDir,
    priority: r.priority,
    action: r.action,
    tmpls,
    ...(r.mark !== undefined ? { mark: r.mark } : {}),
    ...(r.ifId !== undefined ? { ifId: r.ifId } : {}),
    other: r.other,
    ...(r.index !== undefined ? { index: r.index } : {}),
  };
}

export function isOwnedRoute(r: RouteRecord): boolean {
  return r.proto === String(ROUTE_PROTO);
}

function toRoute(r: RouteRecord): ObservedRoute | undefined {
  const dst = recordCidr(r.dst);
  if (!dst) return undefined;
  const via = recordIPv4(r.via);
  const src = recordIPv4(r.src);
  return {
    dst,
    table: r.table,
    type: r.type,
    ...(via !== undefined ? { via } : {}),
    ...(r.dev !== undefined ? { dev: r.dev } : {}),
    ...(src !== undefined ? { src } : {}),
    metric: r.metric,
    ...(r.tos !== undefined ? { tos: r.tos } : {}),
    ...(r.mtu !== undefined ? { mtu: r.mtu } : {}),
    mtuLocked: r.mtuLocked ?? false,
    ...(r.advmss !== undefined ? { advmss: r.advmss } : {}),
    quickack: r.quickack ?? false,
    multipath: (r.nexthops?.length ?? 0) > 0,
    attrs: r.other,
    flags: r.flags,
  };
}

export function isOwnedAddress(r: AddressRecord, ctx: OwnershipContext): boolean {
  const a = r.family === 4 ? recordIPv4(r.addr) : undefined;
  return a !== undefined && r.len === 32 && r.dev === (ctx.addressDev ?? 'lo') && ctx.pools.some((p) => cidrContainsAddr(p, a));
}

function split<R, O>(records: R[], owned: (r: R) => boolean, convert: (r: R) => O | undefined): Split<O, R> {
  const out: Split<O, R> = { owned: [], foreign: [] };
  for (const r of records) {
    const o = owned(r) ? convert(r) : undefined;
    if (o !== undefined) out.owned.push(o);
    else out.foreign.push(r);
  }
  return out;
}

export const isOwnedChainName = (chain: string) => chain.startsWith('ONIONCTL-');

/** A jump rule in a built-in chain that leads into one of onionctl's chains and says it is onionctl's. */
function jumpInto(r: IptablesRuleRecord): string | undefined {
  if (r.target === undefined || !isOwnedChainName(r.target) || r.comment !== OWNER_COMMENT) return undefined;
  return r.target;
}

/** a jump rule's arguments other than its "onionctl" comment and its target */
function jumpExtra(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if ((args[i] === '-m' && args[i + 1] === 'comment') || args[i] === '--comment' || args[i] === '-j' || args[i] === '-g') i++;
    else out.push(args[i]!);
  }
  return out;
}

function iptablesObserved(text: string): NonNullable<ObservedNode['iptables']> {
  const save = parseIptablesSave(text);
  const owned: ObservedFirewall = { chains: [], rules: [] };
  const foreignRules: IptablesRuleRecord[] = [];
  for (const c of save.chains) if (!c.builtin && isOwnedChainName(c.chain)) owned.chains.push({ backend: 'iptables', table: c.table, chain: c.chain, hooks: [] });
  const chainOf = (table: string, chain: string) => owned.chains.find((c) => c.table === table && c.chain === chain);
  for (const r of save.rules) {
    const own = chainOf(r.table, r.chain);
    if (own) {
      const rule: OwnedRule = { backend: 'iptables', table: r.table, chain: r.chain, text: r.text };
      if (r.table === 'nat' && r.chain === IPT_CHAIN_POSTROUTING) {
        const s = iptablesSnatRule(r.args);
        if (s) rule.snat = s;
      } else if (r.table === 'filter' && r.chain === IPT_CHAIN_FORWARD) {
        const f = iptablesFilterRule(r.args);
        if (f) rule.filter = f;
      }
      owned.rules.push(rule);
      continue;
    }
    const to = jumpInto(r);
    const target = to !== undefined ? chainOf(r.table, to) : undefined;
    if (target) {
      const rest = jumpExtra(r.args);
      target.hooks.push(rest.length > 0 ? `${r.chain} ${rest.join(' ')}` : r.chain);
      continue;
    }
    foreignRules.push(r);
  }
  return { owned, foreignRules, foreignChains: save.chains.filter((c) => c.builtin || !isOwnedChainName(c.chain)) };
}

function nftObserved(text: string): NonNullable<ObservedNode['nft']> {
  const tables = parseNftRuleset(text);
  const owned: ObservedFirewall = { chains: [], rules: [] };
  const mine = tables.find((t) => t.family === 'ip' && t.name === NFT_TABLE);
  const tname = `ip ${NFT_TABLE}`;
  if (mine) {
    for (const c of mine.chains) {
      owned.chains.push({
        backend: 'nftables',
        table: tname,
        chain: c.name,
        hooks: c.hook ? [`type ${c.type} hook ${c.hook} priority ${c.priority} policy ${c.policy ?? 'accept'}`] : [],
      });
      for (const r of c.rules) {
        const rule: OwnedRule = { backend: 'nftables', table: tname, chain: c.name, text: r.text };
        if (c.name === 'postrouting') {
          const s = nftSnatRule(r.text);
          if (s) rule.snat = s;
        } else if (c.name === 'forward') {
          const f = nftFilterRule(r.text);
          if (f) rule.filter = f;
        }
        owned.rules.push(rule);
      }
    }
  }
  return { owned, present: mine !== undefined, foreignTables: tables.filter((t) => t !== mine).map((t) => `${t.family} ${t.name}`) };
}

/** Parses whatever was read from one router and splits it into onionctl's objects and foreign ones. */
export function observeNode(node: string, out: ReadbackOutputs, ctx: OwnershipContext): ObservedNode {
  const o: ObservedNode = { node };
  if (out.xfrmState !== undefined) o.states = split(parseXfrmStates(out.xfrmState), isOwnedState, toState);
  if (out.xfrmPolicy !== undefined) o.policies = split(parseXfrmPolicies(out.xfrmPolicy), isOwnedPolicy, toPolicy);
  if (out.routes !== undefined) o.routes = split(parseRoutes(out.routes), isOwnedRoute, toRoute);
  if (out.addresses !== undefined) {
    o.addresses = split(parseAddresses(out.addresses), (r) => isOwnedAddress(r, ctx), (r) => ({ addr: parseIPv4(r.addr), len: r.len, dev: r.dev }));
  }
  if (out.iptablesSave !== undefined) o.iptables = iptablesObserved(out.iptablesSave);
  if (out.nft !== undefined) o.nft = nftObserved(out.nft);
  return o;
}

/** The commands whose output observeNode takes, as argv (run each on the router, e.g. over SSH). */
export const READBACK_COMMANDS = {
  xfrmState: ['ip', '-s', 'xfrm', 'state'],
  xfrmPolicy: ['ip', 'xfrm', 'policy'],
  routes: ['ip', 'route', 'show', 'table', 'main'],
  addresses: ['ip', '-4', 'addr', 'show', 'dev', 'lo'],
  iptablesSave: ['iptables-save'],
  nft: ['nft', 'list', 'ruleset'],
} as const satisfies Record<keyof ReadbackOutputs, readonly string[]>;
