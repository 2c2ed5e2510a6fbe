/**
 * The kinds of object onionctl manages on a router, each declared once: how an object of the kind
 * is keyed (the identity the kernel uses, so that a desired and an observed object with the same
 * key are the same object) and which of its fields are compared, each as a display value of both
 * sides. The diff (diff.ts), the conflict check, destroy's removals (apply/engine.ts), status and
 * the saved plan's changes all go through these specs, so that changing how a kind is keyed or
 * compared is one edit here.
 *
 *   kind     desired (model/config.ts)   observed (readback/observed.ts)   key
 *   state    XfrmState                   ObservedState                     dst + proto + SPI
 *   policy   XfrmPolicy                  ObservedPolicy                    selector + dir
 *   route    Route                       ObservedRoute                     table + dst (+ metric)
 *   address  LocalAddress                ObservedAddress                   address + device
 *   chain    OwnedChain                  OwnedChain                        backend, table, chain
 *   rule     FwRule (snat or filter)     FwRule                            chain + what it matches
 *   sysctl   Sysctl                      the value read                    the sysctl's name
 *
 * To add a kind: its model type (model/config.ts), its parser and owner test
 * (readback/observed.ts), a spec here, a Change variant (diff.ts), its phase (order.ts) and the
 * commands that make it (apply/commands.ts); docs/architecture.md walks through it.
 */
import { lifetimeText } from '../keys/lifetimes.js';
import type { FilterRule, LocalAddress, Route, SnatRule, Sysctl, XfrmPolicy, XfrmState } from '../model/config.js';
import { formatCidr, formatIPv4, type Cidr } from '../net/addr.js';
import type { Backend, ObservedAddress, ObservedPolicy, ObservedRoute, ObservedState, OwnedChain } from '../readback/observed.js';

// ------------------------------------------------------------------------------------------
// display forms

export const hex32 = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;
const ip = formatIPv4;
const net = (c: Cidr) => formatCidr(c);
const opt = (v: number | undefined, f: (n: number) => string = String) => (v === undefined ? '-' : f(v));
const list = (xs: readonly string[]) => xs.join(',') || '-';

// ------------------------------------------------------------------------------------------
// keys

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
  if (r.ipsecIn !== undefined) parts.push(`ipsec-in ${hex32(r.ipsecIn)}`);
  if (r.ipsecOut !== undefined) parts.push(`ipsec-out ${hex32(r.ipsecOut)}`);
  parts.push(r.action);
  return parts.join(' ');
}

export const snatMatch = (s: SnatRule) => `${net(s.src)} -o ${s.outIf}`;

/** A firewall rule as both sides see it: the model rule, where it lives, and its identity text. */
export interface FwRule {
  backend: Backend;
  table: string;
  chain: string;
  /** the rule in model terms; undefined for an observed rule of a shape render never writes */
  snat?: SnatRule;
  filter?: FilterRule;
  /** iptables-save line or nft statement (observed), or the line render writes (desired) */
  text: string;
}

export function ruleKey(r: FwRule): string {
  const where = chainKey(r);
  if (r.snat) return `${where} ${snatMatch(r.snat)}`;
  if (r.filter) return `${where} ${filterMatch(r.filter)}`;
  return `${where} unrecognised: ${r.text}`;
}

// ------------------------------------------------------------------------------------------
// the specs

/** One compared field: its name and its display value on each side (equal values: no change). */
export interface FieldSpec<D, O> {
  name: string;
  observed(o: O): string;
  desired(d: D): string;
  /** compared only when this holds of the observed object (e.g. a field only `ip -s` prints) */
  when?(o: O): boolean;
}

export interface KindSpec<D, O> {
  kind: 'state' | 'policy' | 'route' | 'address' | 'chain' | 'rule';
  desiredKey(d: D): string;
  observedKey(o: O): string;
  fields: readonly FieldSpec<D, O>[];
}

const f = <D, O>(name: string, observed: (o: O) => string, desired: (d: D) => string, when?: (o: O) => boolean): FieldSpec<D, O> => ({ name, observed, desired, ...(when ? { when } : {}) });

/**
 * An xfrm state. Not compared: counters, times, lastused and sequence numbers (state, not
 * configuration), and the key, which diff.ts compares by fingerprint when it is given the key source.
 */
export const STATE: KindSpec<XfrmState, ObservedState> = {
  kind: 'state',
  desiredKey: (d) => stateKey(d.dst, 'esp', d.spi),
  observedKey: (o) => stateKey(o.dst, o.proto, o.spi),
  fields: [
    f('src', (o) => ip(o.src), (d) => ip(d.src)),
    f('reqid', (o) => hex32(o.reqid), (d) => hex32(d.reqid)),
    f('mode', (o) => o.mode, () => 'tunnel'),
    f('replay-window', (o) => String(o.replayWindow), (d) => String(d.replayWindow)),
    f('esn', (o) => String(o.flags.includes('esn')), (d) => String(d.esn)),
    f('profile', (o) => o.profile ?? o.algos.join(' + '), (d) => d.profile),
    // printed by `ip -s xfrm state` only: without them there is nothing to compare
    f('lifetime', (o) => lifetimeText(o.lifetime!), (d) => lifetimeText(d.lifetime), (o) => o.lifetime !== undefined),
    f('tfcpad', (o) => opt(o.tfcpad), (d) => opt(d.tfcpad)),
    f('selector', (o) => (o.selectorIsWildcard ? 'any' : 'restricted'), () => 'any'),
    f('mark', (o) => o.mark ?? '-', () => '-'),
    f('flags', (o) => o.flags.filter((x) => x !== 'esn').join(',') || '-', () => '-'),
    f('other attributes', (o) => list(o.other), () => '-'),
    f('dir', (o) => o.saDir ?? '-', () => '-'),
    f('pcpu-num', (o) => opt(o.pcpuNum), () => '-'),
    f('extra flags', (o) => list(o.extraFlags), () => '-'),
  ],
};

const tmplText = (t: { src: number; dst: number; proto: string; reqid: number; mode: string; level: string }) =>
  `${ip(t.src)}>${ip(t.dst)} ${t.proto} reqid ${hex32(t.reqid)} ${t.mode} ${t.level}`;

export const POLICY: KindSpec<XfrmPolicy, ObservedPolicy> = {
  kind: 'policy',
  desiredKey: (d) => policyKey(d),
  observedKey: (o) => policyKey(o),
  fields: [
    f('priority', (o) => String(o.priority), (d) => String(d.priority)),
    f('action', (o) => o.action, (d) => d.action),
    f('tmpls', (o) => o.tmpls.map(tmplText).join(', ') || '-', (d) => d.tmpls.map((t) => tmplText({ ...t, proto: 'esp', mode: 'tunnel', level: 'required' })).join(', ') || '-'),
    f('mark', (o) => o.mark ?? '-', () => '-'),
    f('if_id', (o) => o.ifId ?? '-', () => '-'),
    f('other attributes', (o) => list(o.other), () => '-'),
  ],
};

export const ROUTE: KindSpec<Route, ObservedRoute> = {
  kind: 'route',
  desiredKey: (d) => routeKey('main', d.dst),
  observedKey: (o) => routeKey(o.table, o.dst, o.metric),
  fields: [
    f('type', (o) => o.type, () => 'unicast'),
    f('via', (o) => opt(o.via, ip), (d) => ip(d.via)),
    f('dev', (o) => o.dev ?? '-', (d) => d.dev),
    f('src', (o) => opt(o.src, ip), (d) => opt(d.src, ip)),
    f('mtu', (o) => `${opt(o.mtu)}${o.mtuLocked ? ' lock' : ''}`, (d) => opt(d.mtu)),
    f('advmss', (o) => opt(o.advmss), (d) => opt(d.advmss)),
    f('quickack', (o) => String(o.quickack), (d) => String(d.quickack ?? false)),
    f('multipath', (o) => String(o.multipath), () => 'false'),
    f('tos', (o) => o.tos ?? '-', () => '-'),
    f('attributes', (o) => o.attrs.join(', ') || '-', () => '-'),
  ],
};

export const ADDRESS: KindSpec<LocalAddress, ObservedAddress> = {
  kind: 'address',
  desiredKey: (d) => addressKey(d.addr, d.dev),
  observedKey: (o) => addressKey(o.addr, o.dev),
  fields: [f('prefix length', (o) => String(o.len), () => '32')],
};

export const CHAIN: KindSpec<OwnedChain, OwnedChain> = {
  kind: 'chain',
  desiredKey: chainKey,
  observedKey: chainKey,
  fields: [f('hooks', (o) => [...o.hooks].sort().join(', ') || 'none', (d) => [...d.hooks].sort().join(', '))],
};

/** render strips quotes and backslashes from comments (render.ts quote()) */
const renderedComment = (c: string) => c.replace(/["\\]/g, '');

export const RULE: KindSpec<FwRule, FwRule> = {
  kind: 'rule',
  desiredKey: ruleKey,
  observedKey: ruleKey,
  fields: [
    f('to', (o) => (o.snat ? ip(o.snat.to) : '-'), (d) => (d.snat ? ip(d.snat.to) : '-')),
    f('comment', (o) => (o.snat ?? o.filter)?.comment ?? '', (d) => renderedComment((d.snat ?? d.filter)?.comment ?? '')),
  ],
};

/** A sysctl onionctl needs: keyed by name, its value compared; never removed. */
export const SYSCTL = {
  key: (s: Sysctl) => s.key,
  field: f<Sysctl, string>('value', (have) => have || 'unset', (d) => d.value),
};
