/**
 * desired NodeConfig vs what the router holds (readback/observed.ts) -> Change[]. Pure.
 *
 * Objects are keyed, and their fields compared, as kinds.ts declares for each kind (the
 * identity the kernel uses: a state by dst + proto + SPI, a policy by selector + dir, ...). Only onionctl's observed objects are compared: foreign ones are never in a Change (see
 * findConflicts for foreign objects that an apply would overwrite). A kind that was not read
 * (ObservedNode member missing) is not compared at all.
 *
 * Every "replace" of a state needs a new epoch: re-installing an SA with the same key restarts
 * its sequence number, which for AES-GCM means reusing nonces. The caller rekeys
 * (state/reconcile.ts rekeySa) and plans again; the new SPI then shows as add + remove.
 */
import { fingerprint, type KeySource } from '../keys/kdf.js';
import { PROFILES } from '../keys/profiles.js';
import type { LocalAddress, NodeConfig, Route, Sysctl, XfrmPolicy, XfrmState } from '../model/config.js';
import { formatCidr } from '../net/addr.js';
import { recordCidr, recordIPv4, type Backend, type ObservedAddress, type ObservedFirewall, type ObservedNode, type ObservedPolicy, type ObservedRoute, type ObservedState, type OwnedChain, type OwnedRule } from '../readback/observed.js';
import { IPT_CHAIN_FORWARD, IPT_CHAIN_POSTROUTING, NFT_TABLE, iptablesRule, iptablesUnits } from '../render/render.js';
import { ADDRESS, CHAIN, POLICY, ROUTE, RULE, STATE, SYSCTL, addressKey, chainKey, filterMatch, policyKey, routeKey, ruleKey, snatMatch, stateKey, type FwRule, type KindSpec } from './kinds.js';

/** One field that differs, as display strings (never key material: keys show as fingerprints). */
export interface FieldChange {
  field: string;
  from: string;
  to: string;
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

/** The fields of `spec` that differ between a paired desired and observed object. */
function fieldChanges<D, O>(spec: KindSpec<D, O>, d: D, o: O): FieldChange[] {
  const out: FieldChange[] = [];
  for (const x of spec.fields) {
    if (x.when && !x.when(o)) continue;
    const from = x.observed(o);
    const to = x.desired(d);
    if (from !== to) out.push({ field: x.name, from, to });
  }
  return out;
}

/** add / remove / replace of one kind, keyed and compared as its spec says */
function diffKind<D, O, K extends Change['kind']>(
  spec: KindSpec<D, O>,
  kindOf: (x: D | O) => K,
  desired: D[],
  observed: O[],
): { changes: Change[]; both: [string, D, O, FieldChange[]][] } {
  const changes: Change[] = [];
  const { both, onlyD, onlyO } = pairUp(desired, observed, spec.desiredKey, spec.observedKey);
  for (const [key, d] of onlyD) changes.push({ op: 'add', kind: kindOf(d), key, desired: d } as Change);
  for (const [key, o] of onlyO) changes.push({ op: 'remove', kind: kindOf(o), key, observed: o } as Change);
  const paired: [string, D, O, FieldChange[]][] = [];
  for (const [key, d, o] of both) {
    const fields = fieldChanges(spec, d, o);
    paired.push([key, d, o, fields]);
  }
  return { changes, both: paired };
}

/** the usual case: a replace for every paired object with a field that differs */
function diffSimple<D, O>(spec: KindSpec<D, O>, kind: 'policy' | 'route' | 'address' | 'chain', desired: D[], observed: O[]): Change[] {
  const { changes, both } = diffKind(spec, () => kind, desired, observed);
  for (const [key, d, o, fields] of both) if (fields.length > 0) changes.push({ op: 'replace', kind, key, desired: d, observed: o, fields } as Change);
  return changes;
}

// ------------------------------------------------------------------------------------------
// per kind

function plannedFingerprint(s: XfrmState, keys: KeySource): string {
  const k = keys.key(s.key, PROFILES[s.profile].keyBytes);
  const fp = fingerprint(k);
  k.fill(0);
  return fp;
}

function diffStates(desired: XfrmState[], observed: ObservedState[], keys: KeySource | undefined): Change[] {
  const { changes, both } = diffKind(STATE, () => 'state' as const, desired, observed);
  for (const [key, d, o, f] of both) {
    let keyMismatch = false;
    if (keys && o.profile === d.profile) {
      const want = plannedFingerprint(d, keys);
      if (o.keyFingerprint !== want) {
        keyMismatch = true;
        f.push({ field: 'key', from: o.keyFingerprint ? `fp=${o.keyFingerprint}` : 'unreadable', to: `fp=${want}` });
      }
    }
    if (f.length > 0) changes.push({ op: 'replace', kind: 'state', key, desired: d, observed: o, fields: f, needsNewEpoch: true, keyMismatch });
  }
  return changes;
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
  // one unit per iptables rule (multiport takes at most 15 ports: a long list is several rules),
  // split in model terms, as render splits it
  for (const r of fw.forward) {
    for (const unit of iptablesUnits(r)) rules.push({ backend: 'iptables', table: 'filter', chain: IPT_CHAIN_FORWARD, filter: unit, text: iptablesRule(IPT_CHAIN_FORWARD, unit)[0]! });
  }
  return {
    chains: [
      { backend: 'iptables', table: 'nat', chain: IPT_CHAIN_POSTROUTING, hooks: ['POSTROUTING'] },
      { backend: 'iptables', table: 'filter', chain: IPT_CHAIN_FORWARD, hooks: ['FORWARD'] },
    ],
    rules,
  };
}

/** An observed rule in the terms both sides share. */
export const fwRuleOf = (r: OwnedRule): FwRule => ({
  backend: r.backend,
  table: r.table,
  chain: r.chain,
  text: r.text,
  ...(r.snat ? { snat: r.snat } : {}),
  ...(r.filter ? { filter: r.filter } : {}),
});

const ruleKind = (r: FwRule): 'snat' | 'filter' => (r.snat ? 'snat' : 'filter');

function diffFirewall(desired: { chains: OwnedChain[]; rules: FwRule[] }, observed: ObservedFirewall): Change[] {
  const out: Change[] = [];
  const ch = diffKind(CHAIN, () => 'chain' as const, desired.chains, observed.chains);
  out.push(...ch.changes);
  for (const [key, d, o, fields] of ch.both) if (fields.length > 0) out.push({ op: 'replace', kind: 'chain', key, desired: d, observed: o, fields });

  const obsRules = observed.rules.map(fwRuleOf);
  const ru = diffKind(RULE, ruleKind, desired.rules, obsRules);
  out.push(...ru.changes);
  for (const [key, d, o, fields] of ru.both) if (fields.length > 0) out.push({ op: 'replace', kind: ruleKind(d), key, desired: d, observed: o, fields });

  // order of the rules both sides have, per chain (the drop of an exit policy must follow its accepts)
  const bothKeys = new Set(ru.both.map(([k]) => k));
  for (const [ck, dChain] of ch.both) {
    const inChain = (keys: string[]) => keys.filter((k) => bothKeys.has(k) && k.startsWith(`${ck} `));
    const dOrder = inChain(keysInOrder(desired.rules));
    const oOrder = inChain(keysInOrder(obsRules));
    if (dOrder.join('\n') !== oOrder.join('\n')) {
      out.push({ op: 'replace', kind: 'rule-order', key: CHAIN.desiredKey(dChain), desired: dOrder, observed: oOrder, fields: [{ field: 'order', from: 'differs', to: 'planned' }] });
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
  if (observed.policies) out.push(...diffSimple(POLICY, 'policy', desired.policies, observed.policies.owned));
  if (observed.routes) out.push(...diffSimple(ROUTE, 'route', desired.routes, observed.routes.owned));
  if (observed.addresses) out.push(...diffSimple(ADDRESS, 'address', desired.addresses, observed.addresses.owned));
  const want = desiredFirewall(desired);
  const only = (b: Backend) => ({ chains: want.chains.filter((c) => c.backend === b), rules: want.rules.filter((r) => r.backend === b) });
  if (observed.iptables) out.push(...diffFirewall(only('iptables'), observed.iptables.owned));
  if (observed.nft) out.push(...diffFirewall(only('nftables'), observed.nft.owned));
  if (observed.sysctls) {
    for (const sc of desired.sysctls) {
      const have = observed.sysctls[SYSCTL.key(sc)] ?? '';
      if (have !== sc.value) {
        out.push({ op: 'replace', kind: 'sysctl', key: SYSCTL.key(sc), desired: sc, observed: have, fields: [{ field: SYSCTL.field.name, from: SYSCTL.field.observed(have), to: SYSCTL.field.desired(sc) }] });
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
    const want = new Set(desired.states.map(STATE.desiredKey));
    for (const f of observed.states.foreign) {
      const dst = recordIPv4(f.dst);
      const k = dst === undefined ? undefined : stateKey(dst, f.proto, f.spi);
      if (k !== undefined && want.has(k)) out.push({ kind: 'state', key: k, reason: `a foreign SA (reqid ${f.reqid}) uses the SPI of one of onionctl's SAs` });
    }
  }
  if (observed.policies) {
    const want = new Set(desired.policies.map(POLICY.desiredKey));
    for (const f of observed.policies.foreign) {
      if (f.family !== 4 || f.socket || f.ptype !== 'main' || f.mark !== undefined || f.ifId !== undefined || f.selExtra.length > 0) continue;
      const src = recordCidr(f.src);
      const dst = recordCidr(f.dst);
      const k = src && dst ? policyKey({ src, dst, dir: f.dir, ...(f.proto !== undefined ? { proto: f.proto } : {}) }) : undefined;
      if (k !== undefined && want.has(k)) out.push({ kind: 'policy', key: k, reason: `a foreign policy (priority ${f.priority}) has this selector and direction; installing onionctl's would replace it` });
    }
  }
  if (observed.routes) {
    const want = new Set(desired.routes.map(ROUTE.desiredKey));
    for (const f of observed.routes.foreign) {
      const dst = recordCidr(f.dst);
      // another metric or tos is another route: only one that an install would replace
      const k = dst && f.metric === 0 && f.tos === undefined ? routeKey(f.table, dst) : undefined;
      if (k !== undefined && want.has(k)) out.push({ kind: 'route', key: k, reason: `a foreign route (proto ${f.proto}) to ${formatCidr(dst!)} would be replaced` });
    }
  }
  if (observed.addresses) {
    // the address anywhere, on any device, is in the way of onionctl's /32 on lo
    const want = new Set(desired.addresses.map((a) => a.addr));
    for (const f of observed.addresses.foreign) {
      const a = f.family === 4 ? recordIPv4(f.addr) : undefined;
      if (a !== undefined && want.has(a)) out.push({ kind: 'address', key: addressKey(a, f.dev), reason: `${f.addr}/${f.len} is already on ${f.dev}, not as onionctl's /32 on lo` });
    }
  }
  if (observed.iptables) {
    for (const r of observed.iptables.foreignRules) {
      if (r.target?.startsWith('ONIONCTL-')) {
        out.push({ kind: 'chain', key: chainKey({ backend: 'iptables', table: r.table, chain: r.target }), reason: `a rule not marked "onionctl" in ${r.table} ${r.chain} jumps into ${r.target}: ${r.text}` });
      }
    }
  }
  return out;
}

/** Every one of onionctl's objects the router holds, as a removal (destroy). */
export function removalChanges(o: ObservedNode): Change[] {
  const out: Change[] = [];
  for (const s of o.states?.owned ?? []) out.push({ op: 'remove', kind: 'state', key: STATE.observedKey(s), observed: s });
  for (const p of o.policies?.owned ?? []) out.push({ op: 'remove', kind: 'policy', key: POLICY.observedKey(p), observed: p });
  for (const r of o.routes?.owned ?? []) out.push({ op: 'remove', kind: 'route', key: ROUTE.observedKey(r), observed: r });
  for (const a of o.addresses?.owned ?? []) out.push({ op: 'remove', kind: 'address', key: ADDRESS.observedKey(a), observed: a });
  for (const fw of [o.iptables?.owned, o.nft?.owned]) {
    if (!fw) continue;
    for (const c of fw.chains) out.push({ op: 'remove', kind: 'chain', key: CHAIN.observedKey(c), observed: c });
    for (const r of fw.rules.map(fwRuleOf)) out.push({ op: 'remove', kind: ruleKind(r), key: RULE.observedKey(r), observed: r });
  }
  return out;
}
