/**
 * desired NodeConfig vs what the router holds (readback/observed.ts) -> Change[]. Pure.
 *
 * Objects are keyed by the identity the kernel uses:
 *   state    dst + proto + SPI
 *   policy   selector (src, dst, upper protocol and any other selector field) + dir
 *   route    table + dst (+ metric when it is not 0)
 *   address  address + device
 *   firewall chain (backend, table, chain); SNAT rule (chain, source, out interface); filter rule
 *            (chain + everything it matches + verdict, one per iptables line render writes)
 * Only onionctl's observed objects are compared: foreign ones are never in a Change (see
 * findConflicts for foreign objects that an apply would overwrite). A kind that was not read
 * (ObservedNode member missing) is not compared at all.
 *
 * Every "replace" of a state needs a new epoch: re-installing an SA with the same key restarts
 * its sequence number, which for AES-GCM means reusing nonces. The caller rekeys
 * (state/reconcile.ts rekeySa) and plans again; the new SPI then shows as add + remove.
 */
import { fingerprint, type KeySource } from '../keys/kdf.js';
import { lifetimeText } from '../keys/lifetimes.js';
import { PROFILES } from '../keys/profiles.js';
import type { FilterRule, LocalAddress, NodeConfig, Route, SnatRule, Sysctl, XfrmPolicy, XfrmState } from '../model/config.js';
import { formatCidr, formatIPv4, type Cidr } from '../net/addr.js';
import { iptablesFilterRule, shellWords } from '../readback/firewall.js';
import type { Backend, ObservedAddress, ObservedFirewall, ObservedNode, ObservedPolicy, ObservedRoute, ObservedState, OwnedChain, OwnedRule } from '../readback/observed.js';
import { IPT_CHAIN_FORWARD, IPT_CHAIN_POSTROUTING, NFT_TABLE, iptablesRule } from '../render/render.js';

/** One field that differs, as display strings (never key material: keys show as fingerprints). */
export interface FieldChange {
  field: string;
  from: string;
  to: string;
}

/** A firewall rule as both sides see it: the model rule, where it lives, and its identity text. */
export interface FwRule {
  backend: Backend;
  table: string;
  chain: string;
  /** the rule in model terms; undefined for an observed rule of a shape render never writes */
  snat?: SnatRule;
  filter?: FilterRule;
  /** iptables-save line or nft statement (observed), or the matching line render writes (desired) */
  text: string;
}

type Add<K extends string, D> = { op: 'add'; kind: K; key: string; desired: D };
type Remove<K extends string, O> = { op: 'remove'; kind: K; key: string; observed: O };
type Replace<K extends string, D, O> = { op: 'replace'; kind: K; key: string; desired: D; observed: O; fields: FieldChange[] };

export type StateChange =
  | Add<'state', XfrmState>
  | Remove<'state', ObservedState>
  | (Replace<'state', XfrmState, ObservedState> & {
      /** always true: a state cannot be re-installed under the same key and SPI */
      needsNewEpoch: true;
      /** the router's key is not the planned one (or could not be read) */
      keyMismatch: boolean;
    });
export type PolicyChange = Add<'policy', XfrmPolicy> | Remove<'policy', ObservedPolicy> | Replace<'policy', XfrmPolicy, ObservedPolicy>;
export type RouteChange = Add<'route', Route> | Remove<'route', ObservedRoute> | Replace<'route', Route, ObservedRoute>;
export type AddressChange = Add<'address', LocalAddress> | Remove<'address', ObservedAddress> | Replace<'address', LocalAddress, ObservedAddress>;
export type ChainChange = Add<'chain', OwnedChain> | Remove<'chain', OwnedChain> | Replace<'chain', OwnedChain, OwnedChain>;
export type SnatChange = Add<'snat', FwRule> | Remove<'snat', FwRule> | Replace<'snat', FwRule, FwRule>;
export type FilterChange = Add<'filter', FwRule> | Remove<'filter', FwRule> | Replace<'filter', FwRule, FwRule>;
/** the rules both sides have are in another order in one of onionctl's chains (key = the chain) */
export type OrderChange = Replace<'rule-order', string[], string[]>;
/** a kernel setting onionctl needs (ip_forward, rp_filter) has another value; never removed */
export type SysctlChange = Replace<'sysctl', Sysctl, string>;

export type Change = StateChange | PolicyChange | RouteChange | AddressChange | ChainChange | SnatChange | FilterChange | OrderChange | SysctlChange;
export type ChangeKind = Change['kind'];

export interface DiffOptions {
  /** the planned key source; when given, each owned SA's key fingerprint is compared */
  keys?: KeySource;
}

// ------------------------------------------------------------------------------------------
// keys and display forms

const hex32 = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;
const ip = formatIPv4;
const net = (c: Cidr) => formatCidr(c);

export const stateKey = (dst: number, proto: string, spi: number) => `${proto} ${ip(dst)} spi ${hex32(spi)}`;
export function policyKey(p: { src: Cidr; dst: Cidr; proto?: string; dir: string; selExtra?: string[] }): string {
  const extra = p.selExtra && p.selExtra.length > 0 ? ` ${p.selExtra.join(' ')}` : '';
  return `${p.dir} ${net(p.src)} -> ${net(p.dst)}${p.proto ? ` proto ${p.proto}` : ''}${extra}`;
}
export const routeKey = (table: string, dst: Cidr, metric = 0) => `${table} ${net(dst)}${metric !== 0 ? ` metric ${metric}` : ''}`;
export const addressKey = (addr: number, dev: string) => `${ip(addr)} dev ${dev}`;
export const chainKey = (c: { backend: Backend; table: string; chain: string }) => `${c.backend} ${c.table} ${c.chain}`;

/** "80,443,8000-8080", ordered, whatever way the tool printed them */
function portsText(ports: (number | string)[] | undefined): string {
  if (!ports) return '';
  const norm = ports.map((p) => String(p).replace(':', '-'));
  const start = (p: string) => Number(p.split('-')[0]);
  return norm.sort((a, b) => start(a) - start(b) || a.localeCompare(b)).join(',');
}

export function filterMatch(r: FilterRule): string {
  const parts = [`${net(r.src)} -> ${net(r.dst)}`, r.proto];
  if (r.ports) parts.push(`dports ${portsText(r.ports)}`);
  if (r.established) parts.push('established');
  parts.push(r.action);
  return parts.join(' ');
}

export const snatMatch = (s: SnatRule) => `${net(s.src)} -o ${s.outIf}`;

/** render strips quotes and backslashes from comments (render.ts quote()) */
const renderedComment = (c: string) => c.replace(/["\\]/g, '');

// ------------------------------------------------------------------------------------------
// generic keyed comparison

function pairUp<D, O>(
  desired: D[],
  observed: O[],
  dKey: (d: D) => string,
  oKey: (o: O) => string,
): { both: [string, D, O][]; onlyD: [string, D][]; onlyO: [string, O][] } {
  const byKey = new Map<string, O[]>();
  for (const o of observed) {
    const k = oKey(o);
    byKey.set(k, [...(byKey.get(k) ?? []), o]);
  }
  const seen = new Map<string, number>();
  const both: [string, D, O][] = [];
  const onlyD: [string, D][] = [];
  for (const d of desired) {
    const k = dKey(d);
    const n = seen.get(k) ?? 0;
    seen.set(k, n + 1);
    const o = byKey.get(k)?.[n];
    const key = n === 0 ? k : `${k} #${n + 1}`;
    if (o !== undefined) both.push([key, d, o]);
    else onlyD.push([key, d]);
  }
  const onlyO: [string, O][] = [];
  for (const [k, os] of byKey) {
    const used = seen.get(k) ?? 0;
    os.slice(used).forEach((o, i) => onlyO.push([used + i === 0 ? k : `${k} #${used + i + 1}`, o]));
  }
  return { both, onlyD, onlyO };
}

function field(out: FieldChange[], name: string, from: string, to: string): void {
  if (from !== to) out.push({ field: name, from, to });
}

const opt = (v: number | undefined, f: (n: number) => string = String) => (v === undefined ? '-' : f(v));

// ------------------------------------------------------------------------------------------
// per kind

function plannedFingerprint(s: XfrmState, keys: KeySource): string {
  const k = keys.key(s.key, PROFILES[s.profile].keyBytes);
  const fp = fingerprint(k);
  k.fill(0);
  return fp;
}

function diffStates(desired: XfrmState[], observed: ObservedState[], keys: KeySource | undefined): Change[] {
  const out: Change[] = [];
  const { both, onlyD, onlyO } = pairUp(desired, observed, (d) => stateKey(d.dst, 'esp', d.spi), (o) => stateKey(o.dst, o.proto, o.spi));
  for (const [key, d] of onlyD) out.push({ op: 'add', kind: 'state', key, desired: d });
  for (const [key, o] of onlyO) out.push({ op: 'remove', kind: 'state', key, observed: o });
  for (const [key, d, o] of both) {
    const f: FieldChange[] = [];
    field(f, 'src', ip(o.src), ip(d.src));
    field(f, 'reqid', hex32(o.reqid), hex32(d.reqid));
    field(f, 'mode', o.mode, 'tunnel');
    field(f, 'replay-window', String(o.replayWindow), String(d.replayWindow));
    field(f, 'esn', String(o.flags.includes('esn')), String(d.esn));
    field(f, 'profile', o.profile ?? o.algos.join(' + '), d.profile);
    // lifetimes are printed by `ip -s xfrm state` only: without them there is nothing to compare
    if (o.lifetime) field(f, 'lifetime', lifetimeText(o.lifetime), lifetimeText(d.lifetime));
    field(f, 'tfcpad', opt(o.tfcpad), opt(d.tfcpad));
    field(f, 'selector', o.selectorIsWildcard ? 'any' : 'restricted', 'any');
    field(f, 'mark', o.mark ?? '-', '-');
    field(f, 'flags', o.flags.filter((x) => x !== 'esn').join(',') || '-', '-');
    field(f, 'other attributes', o.other.join(',') || '-', '-');
    field(f, 'dir', o.saDir ?? '-', '-');
    field(f, 'pcpu-num', opt(o.pcpuNum), '-');
    field(f, 'extra flags', o.extraFlags.join(',') || '-', '-');
    // lastused, counters and times are state, not configuration: never compared
    let keyMismatch = false;
    if (keys && o.profile === d.profile) {
      const want = plannedFingerprint(d, keys);
      if (o.keyFingerprint !== want) {
        keyMismatch = true;
        f.push({ field: 'key', from: o.keyFingerprint ? `fp=${o.keyFingerprint}` : 'unreadable', to: `fp=${want}` });
      }
    }
    if (f.length > 0) out.push({ op: 'replace', kind: 'state', key, desired: d, observed: o, fields: f, needsNewEpoch: true, keyMismatch });
  }
  return out;
}

const tmplText = (t: { src: number; dst: number; proto: string; reqid: number; mode: string; level: string }) =>
  `${ip(t.src)}>${ip(t.dst)} ${t.proto} reqid ${hex32(t.reqid)} ${t.mode} ${t.level}`;

function diffPolicies(desired: XfrmPolicy[], observed: ObservedPolicy[]): Change[] {
  const out: Change[] = [];
  const { both, onlyD, onlyO } = pairUp(desired, observed, (d) => policyKey(d), (o) => policyKey(o));
  for (const [key, d] of onlyD) out.push({ op: 'add', kind: 'policy', key, desired: d });
  for (const [key, o] of onlyO) out.push({ op: 'remove', kind: 'policy', key, observed: o });
  for (const [key, d, o] of both) {
    const f: FieldChange[] = [];
    field(f, 'priority', String(o.priority), String(d.priority));
    field(f, 'action', o.action, d.action);
    field(f, 'tmpls', o.tmpls.map(tmplText).join(', ') || '-', d.tmpls.map((t) => tmplText({ ...t, proto: 'esp', mode: 'tunnel', level: 'required' })).join(', ') || '-');
    field(f, 'mark', o.mark ?? '-', '-');
    field(f, 'if_id', o.ifId ?? '-', '-');
    field(f, 'other attributes', o.other.join(',') || '-', '-');
    if (f.length > 0) out.push({ op: 'replace', kind: 'policy', key, desired: d, observed: o, fields: f });
  }
  return out;
}

function diffRoutes(desired: Route[], observed: ObservedRoute[]): Change[] {
  const out: Change[] = [];
  const { both, onlyD, onlyO } = pairUp(desired, observed, (d) => routeKey('main', d.dst), (o) => routeKey(o.table, o.dst, o.metric));
  for (const [key, d] of onlyD) out.push({ op: 'add', kind: 'route', key, desired: d });
  for (const [key, o] of onlyO) out.push({ op: 'remove', kind: 'route', key, observed: o });
  for (const [key, d, o] of both) {
    const f: FieldChange[] = [];
    field(f, 'type', o.type, 'unicast');
    field(f, 'via', opt(o.via, ip), ip(d.via));
    field(f, 'dev', o.dev ?? '-', d.dev);
    field(f, 'src', opt(o.src, ip), opt(d.src, ip));
    field(f, 'mtu', `${opt(o.mtu)}${o.mtuLocked ? ' lock' : ''}`, opt(d.mtu));
    field(f, 'advmss', opt(o.advmss), opt(d.advmss));
    field(f, 'quickack', String(o.quickack), String(d.quickack ?? false));
    field(f, 'multipath', String(o.multipath), 'false');
    field(f, 'tos', o.tos ?? '-', '-');
    field(f, 'attributes', o.attrs.join(', ') || '-', '-');
    if (f.length > 0) out.push({ op: 'replace', kind: 'route', key, desired: d, observed: o, fields: f });
  }
  return out;
}

function diffAddresses(desired: LocalAddress[], observed: ObservedAddress[]): Change[] {
  const out: Change[] = [];
  const { both, onlyD, onlyO } = pairUp(desired, observed, (d) => addressKey(d.addr, d.dev), (o) => addressKey(o.addr, o.dev));
  for (const [key, d] of onlyD) out.push({ op: 'add', kind: 'address', key, desired: d });
  for (const [key, o] of onlyO) out.push({ op: 'remove', kind: 'address', key, observed: o });
  for (const [key, d, o] of both) {
    const f: FieldChange[] = [];
    field(f, 'prefix length', String(o.len), '32');
    if (f.length > 0) out.push({ op: 'replace', kind: 'address', key, desired: d, observed: o, fields: f });
  }
  return out;
}

// ------------------------------------------------------------------------------------------
// firewall

const NFT_TNAME = `ip ${NFT_TABLE}`;

/** onionctl's chains and rules as render writes them for the config's backend. */
export function desiredFirewall(cfg: NodeConfig): { chains: OwnedChain[]; rules: FwRule[] } {
  const fw = cfg.firewall;
  if (fw.backend === 'nftables') {
    return {
      chains: [
        { backend: 'nftables', table: NFT_TNAME, chain: 'postrouting', hooks: ['type nat hook postrouting priority srcnat policy accept'] },
        { backend: 'nftables', table: NFT_TNAME, chain: 'forward', hooks: ['type filter hook forward priority filter policy accept'] },
      ],
      rules: [
        ...fw.snat.map((s): FwRule => ({ backend: 'nftables', table: NFT_TNAME, chain: 'postrouting', snat: s, text: snatMatch(s) })),
        ...fw.forward.map((r): FwRule => ({ backend: 'nftables', table: NFT_TNAME, chain: 'forward', filter: r, text: filterMatch(r) })),
      ],
    };
  }
  const rules: FwRule[] = fw.snat.map((s) => ({ backend: 'iptables', table: 'nat', chain: IPT_CHAIN_POSTROUTING, snat: s, text: snatMatch(s) }));
  for (const r of fw.forward) {
    // one unit per line render writes (a long port list becomes several multiport rules)
    for (const line of iptablesRule(IPT_CHAIN_FORWARD, r)) {
      const unit = iptablesFilterRule(shellWords(line).slice(2));
      if (!unit) throw new Error(`internal: cannot read back the rendered rule ${line}`);
      rules.push({ backend: 'iptables', table: 'filter', chain: IPT_CHAIN_FORWARD, filter: unit, text: line });
    }
  }
  return {
    chains: [
      { backend: 'iptables', table: 'nat', chain: IPT_CHAIN_POSTROUTING, hooks: ['POSTROUTING'] },
      { backend: 'iptables', table: 'filter', chain: IPT_CHAIN_FORWARD, hooks: ['FORWARD'] },
    ],
    rules,
  };
}

function ruleKey(r: { backend: Backend; table: string; chain: string; snat?: SnatRule; filter?: FilterRule; text: string }): string {
  const where = chainKey(r);
  if (r.snat) return `${where} ${snatMatch(r.snat)}`;
  if (r.filter) return `${where} ${filterMatch(r.filter)}`;
  return `${where} unrecognised: ${r.text}`;
}

function diffFirewall(desired: { chains: OwnedChain[]; rules: FwRule[] }, observed: ObservedFirewall): Change[] {
  const out: Change[] = [];
  const ch = pairUp(desired.chains, observed.chains, chainKey, chainKey);
  for (const [key, d] of ch.onlyD) out.push({ op: 'add', kind: 'chain', key, desired: d });
  for (const [key, o] of ch.onlyO) out.push({ op: 'remove', kind: 'chain', key, observed: o });
  for (const [key, d, o] of ch.both) {
    const f: FieldChange[] = [];
    field(f, 'hooks', [...o.hooks].sort().join(', ') || 'none', [...d.hooks].sort().join(', '));
    if (f.length > 0) out.push({ op: 'replace', kind: 'chain', key, desired: d, observed: o, fields: f });
  }

  const obsRules: FwRule[] = observed.rules.map((r: OwnedRule) => ({
    backend: r.backend,
    table: r.table,
    chain: r.chain,
    text: r.text,
    ...(r.snat ? { snat: r.snat } : {}),
    ...(r.filter ? { filter: r.filter } : {}),
  }));
  const ru = pairUp(desired.rules, obsRules, ruleKey, ruleKey);
  const kindOf = (r: FwRule): 'snat' | 'filter' => (r.snat ? 'snat' : 'filter');
  for (const [key, d] of ru.onlyD) out.push({ op: 'add', kind: kindOf(d), key, desired: d });
  for (const [key, o] of ru.onlyO) out.push({ op: 'remove', kind: kindOf(o), key, observed: o });
  for (const [key, d, o] of ru.both) {
    const f: FieldChange[] = [];
    if (d.snat && o.snat) field(f, 'to', ip(o.snat.to), ip(d.snat.to));
    const dc = renderedComment((d.snat ?? d.filter)!.comment);
    const oc = (o.snat ?? o.filter)!.comment;
    field(f, 'comment', oc, dc);
    if (f.length > 0) out.push({ op: 'replace', kind: kindOf(d), key, desired: d, observed: o, fields: f });
  }

  // order of the rules both sides have, per chain (the drop of an exit policy must follow its accepts)
  const bothKeys = new Set(ru.both.map(([k]) => k));
  for (const c of ch.both) {
    const [ck, dChain] = c;
    const inChain = (keys: string[]) => keys.filter((k) => bothKeys.has(k) && k.startsWith(`${ck} `));
    const dOrder = inChain(keysInOrder(desired.rules));
    const oOrder = inChain(keysInOrder(obsRules));
    if (dOrder.join('\n') !== oOrder.join('\n')) {
      out.push({ op: 'replace', kind: 'rule-order', key: chainKey(dChain), desired: dOrder, observed: oOrder, fields: [{ field: 'order', from: 'differs', to: 'planned' }] });
    }
  }
  return out;
}

/** rule keys with the same #n numbering pairUp gives duplicates */
function keysInOrder(rules: FwRule[]): string[] {
  const seen = new Map<string, number>();
  return rules.map((r) => {
    const k = ruleKey(r);
    const n = seen.get(k) ?? 0;
    seen.set(k, n + 1);
    return n === 0 ? k : `${k} #${n + 1}`;
  });
}

// ------------------------------------------------------------------------------------------

/**
 * The changes that turn what `observed` shows of onionctl's objects into `desired`. Unordered:
 * pass the result to orderChanges (order.ts) before applying.
 */
export function diffNode(desired: NodeConfig, observed: ObservedNode, opts: DiffOptions = {}): Change[] {
  if (desired.node !== observed.node) throw new Error(`diffNode: desired config is for ${desired.node}, observed for ${observed.node}`);
  const out: Change[] = [];
  if (observed.states) out.push(...diffStates(desired.states, observed.states.owned, opts.keys));
  if (observed.policies) out.push(...diffPolicies(desired.policies, observed.policies.owned));
  if (observed.routes) out.push(...diffRoutes(desired.routes, observed.routes.owned));
  if (observed.addresses) out.push(...diffAddresses(desired.addresses, observed.addresses.owned));
  const want = desiredFirewall(desired);
  const only = (b: Backend) => ({ chains: want.chains.filter((c) => c.backend === b), rules: want.rules.filter((r) => r.backend === b) });
  if (observed.iptables) out.push(...diffFirewall(only('iptables'), observed.iptables.owned));
  if (observed.nft) out.push(...diffFirewall(only('nftables'), observed.nft.owned));
  if (observed.sysctls) {
    for (const sc of desired.sysctls) {
      const have = observed.sysctls[sc.key] ?? '';
      if (have !== sc.value) {
        out.push({ op: 'replace', kind: 'sysctl', key: sc.key, desired: sc, observed: have, fields: [{ field: 'value', from: have || 'unset', to: sc.value }] });
      }
    }
  }
  return out;
}

/** The SAs whose replacement needs a new epoch (rekey them in the state, then plan again). */
export function rekeyNeeded(changes: Change[]): XfrmState[] {
  const out: XfrmState[] = [];
  for (const c of changes) if (c.kind === 'state' && c.op === 'replace' && c.needsNewEpoch) out.push(c.desired);
  return out;
}

// ------------------------------------------------------------------------------------------
// conflicts: foreign objects that applying the desired config would overwrite or trip over

export interface Conflict {
  kind: 'state' | 'policy' | 'route' | 'address' | 'chain';
  key: string;
  reason: string;
}

/**
 * Foreign objects in the way of the desired config. They are never changed by a diff; an apply
 * should refuse (or ask) while any is reported.
 */
export function findConflicts(desired: NodeConfig, observed: ObservedNode): Conflict[] {
  const out: Conflict[] = [];
  if (observed.states) {
    const want = new Set(desired.states.map((s) => stateKey(s.dst, 'esp', s.spi)));
    for (const f of observed.states.foreign) {
      const k = `${f.proto} ${f.dst} spi ${hex32(f.spi)}`;
      if (want.has(k)) out.push({ kind: 'state', key: k, reason: `a foreign SA (reqid ${f.reqid}) uses the SPI of one of onionctl's SAs` });
    }
  }
  if (observed.policies) {
    const want = new Map(desired.policies.map((p) => [policyKey(p), p]));
    for (const f of observed.policies.foreign) {
      if (f.family !== 4 || f.socket || f.ptype !== 'main' || f.mark !== undefined || f.ifId !== undefined || f.selExtra.length > 0) continue;
      const k = `${f.dir} ${f.src} -> ${f.dst}${f.proto ? ` proto ${f.proto}` : ''}`;
      if (want.has(k)) out.push({ kind: 'policy', key: k, reason: `a foreign policy (priority ${f.priority}) has this selector and direction; installing onionctl's would replace it` });
    }
  }
  if (observed.routes) {
    const want = new Set(desired.routes.map((r) => net(r.dst)));
    for (const f of observed.routes.foreign) {
      const dst = f.dst === 'default' ? '0.0.0.0/0' : f.dst.includes('/') ? f.dst : `${f.dst}/32`;
      if (f.table === 'main' && f.metric === 0 && f.tos === undefined && want.has(dst)) {
        out.push({ kind: 'route', key: `main ${dst}`, reason: `a foreign route (proto ${f.proto}) to ${dst} would be replaced` });
      }
    }
  }
  if (observed.addresses) {
    const want = new Set(desired.addresses.map((a) => ip(a.addr)));
    for (const f of observed.addresses.foreign) {
      if (want.has(f.addr)) out.push({ kind: 'address', key: `${f.addr} dev ${f.dev}`, reason: `${f.addr}/${f.len} is already on ${f.dev}, not as onionctl's /32 on lo` });
    }
  }
  if (observed.iptables) {
    for (const r of observed.iptables.foreignRules) {
      if (r.target?.startsWith('ONIONCTL-')) {
        out.push({ kind: 'chain', key: `iptables ${r.table} ${r.target}`, reason: `a rule not marked "onionctl" in ${r.table} ${r.chain} jumps into ${r.target}: ${r.text}` });
      }
    }
  }
  return out;
}
