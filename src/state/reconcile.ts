/**
 * topology + previous state -> next state. Pure: randomness and time are injected.
 *
 * Stability rules:
 *  - a circuit that is still eligible keeps its path, addresses and SAs;
 *  - a new circuit gets a path and leaves every other circuit alone;
 *  - a circuit whose path broke (a router left, a link went, an exit stopped admitting its
 *    destinations, constraints changed) is re-pathed, and only that circuit;
 *  - SPIs and reqids come from counters that only move forward, so an SPI (and with it a key)
 *    is never handed out twice by the same state.
 */
import { cidrContainsAddr, formatIPv4, parseIPv4, poolHosts } from '../net/addr.js';
import { PathSpace, constraintsFor, selectPath } from '../pathselect/select.js';
import { drawNonce, NONCE_LABEL, type RngFactory } from '../pathselect/rng.js';
import { linkKey, type CircuitDef, type Net } from '../topology/net.js';
import { REQID_LAST, SPI_LAST, type CircuitState, type SaRecord, type State, type StateEvent } from './model.js';
import { OnionctlError } from '../util/errors.js';
import { parseSaId } from '../keys/sa-id.js';

export class PlanError extends OnionctlError {
  readonly kind = 'plan' as const;
}

/** A new epoch's nonce: from the injected randomness (the CSPRNG for every command that pushes). */
export function epochNonce(rngFor: RngFactory, salt: string, spi: number, epoch: number): string {
  return drawNonce(rngFor(`${NONCE_LABEL}${salt}/${spi.toString(16)}/${epoch}`));
}

function allocSa(s: State, rngFor: RngFactory): SaRecord {
  if (s.next.spi > SPI_LAST || s.next.reqid > REQID_LAST) {
    throw new PlanError('the state has used up onionctl\'s SPI range; start a new state file (every SA will be re-created with fresh keys)');
  }
  const spi = s.next.spi++;
  return { spi, reqid: s.next.reqid++, epoch: 1, nonce: epochNonce(rngFor, s.salt, spi, 1), installed: [] };
}


function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export function reconcile(net: Net, prev: State, rngFor: RngFactory, now: string, force: ReadonlySet<string> = new Set()): { state: State; events: StateEvent[] } {
  const s: State = structuredClone(prev);
  const events: StateEvent[] = [];

  // overlay links: one SA per direction for each declared link
  const wanted = new Map(net.links.map(([a, b]) => [linkKey(a, b), [a, b] as const]));
  for (const k of Object.keys(s.links).sort()) {
    if (!wanted.has(k)) {
      delete s.links[k];
      events.push({ kind: 'link-removed', link: k });
    }
  }
  for (const [k, [a, b]] of wanted) {
    if (!s.links[k]) {
      s.links[k] = { a, b, ab: allocSa(s, rngFor), ba: allocSa(s, rngFor) };
      events.push({ kind: 'link-added', link: k });
    }
  }

  // circuits that left the topology
  const defs = new Map(net.circuits.map((c) => [c.name, c]));
  for (const name of Object.keys(s.circuits).sort()) {
    if (!defs.has(name)) {
      delete s.circuits[name];
      events.push({ kind: 'circuit-removed', circuit: name });
    }
  }

  // which stored circuits are still valid?
  const toRepath: { def: CircuitDef; reason: string; old?: CircuitState }[] = [];
  for (const def of net.circuits) {
    const cur = s.circuits[def.name];
    if (!cur) {
      toRepath.push({ def, reason: 'new' });
      continue;
    }
    const why = force.has(def.name) ? `rotated (path age ${age(cur.created, now)})` : invalidReason(net, def, cur);
    if (why) {
      toRepath.push({ def, reason: why, old: cur });
      delete s.circuits[def.name];
      continue;
    }
    const to = def.to.map((c) => `${formatIPv4(c.base)}/${c.len}`);
    if (!sameList(to, cur.to)) {
      cur.to = to;
      events.push({ kind: 'circuit-updated', circuit: def.name, reason: `destinations now ${to.join(', ')}` });
    }
  }

  // addresses in use, per router, by the circuits that stay (and, while rotating, the old paths)
  const used = new Map<string, Set<number>>();
  const rotating = toRepath.filter((r) => r.old && force.has(r.def.name)).map((r) => r.old!);
  for (const c of [...Object.values(s.circuits), ...rotating]) {
    c.hops.forEach((h, i) => {
      let u = used.get(h);
      if (!u) used.set(h, (u = new Set()));
      u.add(parseIPv4(c.addrs[i]!));
    });
  }

  for (const { def, reason, old } of toRepath) {
    const generation = (old?.generation ?? 0) + 1;
    const hops = selectPath(net, def, rngFor(`circuit/${def.name}/g${generation}`));
    const addrs = hops.map((h) => {
      const r = net.routers.get(h)!;
      let u = used.get(h);
      if (!u) used.set(h, (u = new Set()));
      const { first, last } = poolHosts(r.pool);
      for (let a = first; a <= last; a++) {
        if (!u.has(a)) {
          u.add(a);
          return formatIPv4(a);
        }
      }
      throw new PlanError(`router ${h}: pool ${formatIPv4(r.pool.base)}/${r.pool.len} has no free address for circuit ${def.name}; enlarge the pool`);
    });
    const cs: CircuitState = {
      client: def.client,
      hops,
      addrs,
      to: def.to.map((c) => `${formatIPv4(c.base)}/${c.len}`),
      generation,
      created: now,
      fwd: hops.map(() => allocSa(s, rngFor)),
      rev: hops.map(() => allocSa(s, rngFor)),
    };
    s.circuits[def.name] = cs;
    if (old) events.push({ kind: 'circuit-repathed', circuit: def.name, hops, from: old.hops, reason });
    else events.push({ kind: 'circuit-added', circuit: def.name, hops });
  }

  // keep the file's key order stable: circuits in topology order, links in link order
  const circuits: State['circuits'] = {};
  for (const def of net.circuits) if (s.circuits[def.name]) circuits[def.name] = s.circuits[def.name]!;
  s.circuits = circuits;
  const links: State['links'] = {};
  for (const k of wanted.keys()) links[k] = s.links[k]!;
  s.links = links;

  if (events.length > 0) s.serial = prev.serial + 1;
  return { state: s, events };
}

function age(from: string, to: string): string {
  const ms = Date.parse(to) - Date.parse(from);
  if (!Number.isFinite(ms)) return 'unknown';
  const min = Math.round(ms / 60_000);
  return min < 120 ? `${min} min` : `${Math.round(min / 60)} h`;
}

/** Why a stored circuit can no longer run as it is (undefined: it can). */
export function invalidReason(net: Net, def: CircuitDef, cur: CircuitState): string | undefined {
  if (cur.client !== def.client) return `client changed from ${cur.client} to ${def.client}`;
  if (cur.hops.length !== def.hops) return `hop count changed from ${cur.hops.length} to ${def.hops}`;
  const why = new PathSpace(net, constraintsFor(net, def)).isEligible(cur.hops);
  if (why) return why;
  for (let i = 0; i < cur.hops.length; i++) {
    const r = net.routers.get(cur.hops[i]!)!;
    if (!cidrContainsAddr(r.pool, parseIPv4(cur.addrs[i]!))) return `address ${cur.addrs[i]} is no longer in ${r.name}'s pool`;
  }
  return undefined;
}

export type SaRef = { circuit: string; hop: number; dir: 'fwd' | 'rev' } | { link: string; dir: 'ab' | 'ba' };

/**
 * Re-creates one SA: a new SPI from the counter and the next epoch, same reqid (so the policies
 * that point at it stay as they are). The key derivation covers epoch, SPI and a fresh nonce, so
 * the SA never comes back with a key it used before. Both ends must then install the new SA together.
 */
export interface RekeyOpts {
  /** make-before-break: keep the previous epoch installed until this ISO time */
  retireUntil?: string;
  /** where the new epoch's nonce comes from */
  rngFor: RngFactory;
}

export function rekeySa(prev: State, ref: SaRef, opts: RekeyOpts): { state: State; old: SaRecord; now: SaRecord } {
  const s: State = structuredClone(prev);
  return { state: s, ...rekeySaInPlace(s, ref, opts) };
}

/**
 * rekeySa on a state the caller owns (already a copy): rekeying many SAs at once then costs one
 * copy of the state, not one per SA (a copy per SA made planning quadratic: ~40 s for the 2,600
 * SAs of a 4-router, 640-circuit network after a destroy, ~190 s for twice that).
 */
export function rekeySaInPlace(s: State, ref: SaRef, opts: RekeyOpts): { old: SaRecord; now: SaRecord } {
  let rec: SaRecord | undefined;
  if ('circuit' in ref) {
    const c = s.circuits[ref.circuit];
    rec = c?.[ref.dir][ref.hop - 1];
  } else {
    rec = s.links[ref.link]?.[ref.dir];
  }
  if (!rec) throw new PlanError(`no such SA: ${JSON.stringify(ref)}`);
  const old = structuredClone(rec);
  if (s.next.spi > SPI_LAST) throw new PlanError('the state has used up onionctl\'s SPI range');
  if (opts.retireUntil !== undefined) {
    // make-before-break: the old epoch stays installed (where it was) until the grace ends
    rec.retiring = [...(rec.retiring ?? []), { spi: rec.spi, epoch: rec.epoch, ...(rec.nonce !== undefined ? { nonce: rec.nonce } : {}), until: opts.retireUntil, ...(rec.installed ? { installed: rec.installed } : {}) }];
  }
  rec.spi = s.next.spi++;
  rec.epoch += 1;
  rec.nonce = epochNonce(opts.rngFor, s.salt, rec.spi, rec.epoch);
  rec.installed = [];
  delete rec.since;
  s.serial += 1;
  return { old, now: { ...rec } };
}

/** The state record of an SA (undefined when the state has no such SA). */
export function saRecord(s: State, ref: SaRef): SaRecord | undefined {
  if ('circuit' in ref) return s.circuits[ref.circuit]?.[ref.dir][ref.hop - 1];
  return s.links[ref.link]?.[ref.dir];
}

/**
 * The SA an SaKeyId.id names (keys/sa-id.ts), in this state; undefined when the id is
 * of another generation or the SA is gone.
 */
export function saRefOfId(s: State, id: string): SaRef | undefined {
  const sa = parseSaId(id);
  if (sa?.kind === 'telescope') {
    const cs = s.circuits[sa.circuit];
    if (!cs || cs.generation !== sa.generation) return undefined;
    if (sa.hop > cs.hops.length) return undefined;
    return { circuit: sa.circuit, hop: sa.hop, dir: sa.dir };
  }
  if (sa?.kind === 'overlay') {
    // links are kept under linkKey of their ends (reconcile writes them so, buildConfigs reads
    // them so): one lookup, not a scan of every link for every SA (apply of 1,000 routers
    // spent most of its CPU in that scan)
    const k = linkKey(sa.from, sa.to);
    const ls = Object.hasOwn(s.links, k) ? s.links[k] : undefined;
    if (ls?.a === sa.from && ls.b === sa.to) return { link: k, dir: 'ab' };
    if (ls?.b === sa.from && ls.a === sa.to) return { link: k, dir: 'ba' };
  }
  return undefined;
}

/** Every SA record of the state with its reference (links first, then circuits; stable order). */
export function allSas(s: State): { ref: SaRef; rec: SaRecord }[] {
  const out: { ref: SaRef; rec: SaRecord }[] = [];
  for (const [link, l] of Object.entries(s.links)) {
    out.push({ ref: { link, dir: 'ab' }, rec: l.ab }, { ref: { link, dir: 'ba' }, rec: l.ba });
  }
  for (const [circuit, c] of Object.entries(s.circuits)) {
    c.fwd.forEach((rec, i) => out.push({ ref: { circuit, hop: i + 1, dir: 'fwd' }, rec }));
    c.rev.forEach((rec, i) => out.push({ ref: { circuit, hop: i + 1, dir: 'rev' }, rec }));
  }
  return out;
}

/** Drops retiring (previous-epoch) SAs whose grace ended at or before `now`; they are then removed from the routers. */
export function expireRetiring(prev: State, now: string): { state: State; expired: number } {
  const s: State = structuredClone(prev);
  let expired = 0;
  for (const { rec } of allSas(s)) {
    if (!rec.retiring) continue;
    // compared as instants: a hand-edited state may write times in another ISO form
    const keep = rec.retiring.filter((r) => !(Date.parse(r.until) <= Date.parse(now)));
    expired += rec.retiring.length - keep.length;
    if (keep.length > 0) rec.retiring = keep;
    else delete rec.retiring;
  }
  if (expired > 0) s.serial += 1;
  return { state: s, expired };
}

/**
 * Re-paths the named circuits now (rotation): new random path under the same constraints, new
 * generation, addresses and SAs. Their old addresses stay reserved in this step so the new path
 * never takes over an address the old one still uses (make-before-break).
 */
export function rotateCircuits(net: Net, prev: State, names: readonly string[], rngFor: RngFactory, now: string): { state: State; events: StateEvent[] } {
  const force = new Set(names);
  for (const n of names) if (!prev.circuits[n]) throw new PlanError(`no circuit ${n} in the state`);
  return reconcile(net, prev, rngFor, now, force);
}
