/**
 * Path selection, as in the paper: a circuit's k hops are drawn uniformly at random among all
 * eligible paths. A path is eligible when
 *   - its k routers are distinct,
 *   - the first hop is one of the client's entry routers,
 *   - consecutive hops are overlay neighbours,
 *   - the last hop is an exit whose exit policy admits every destination of the circuit,
 *   - no two hops are run by the same operator (decoupling),
 *   - and, when the circuit asks, hops are in distinct countries and distinct /16s.
 *
 * Sampling is exact: count the eligible paths (depth-first, k <= 4 keeps this small for overlay
 * degrees seen in practice), draw r uniformly in [0, count), and walk to the r-th path.
 */
import { slash16, type Cidr } from '../net/addr.js';
import type { CircuitDef, Net, RouterNode, Traffic } from '../topology/net.js';
import { allowAdmits, droppedTraffic, trafficText } from '../topology/exit-policy.js';
import type { Rng } from './rng.js';
import { OnionctlError } from '../util/errors.js';

export interface Constraints {
  k: number;
  entries: string[];
  to: Cidr[];
  /** what the circuit carries, when it says: the exit must let all of it out */
  traffic?: Traffic;
  operators: boolean;
  countries: boolean;
  subnets16: boolean;
}

export function constraintsFor(net: Net, c: CircuitDef): Constraints {
  return {
    k: c.hops,
    entries: net.clients.get(c.client)?.entry ?? [],
    to: c.to,
    ...(c.traffic ? { traffic: c.traffic } : {}),
    operators: true,
    countries: c.distinctCountries,
    subnets16: c.distinct16,
  };
}

export function exitAdmits(r: RouterNode, to: readonly Cidr[], traffic?: Traffic): boolean {
  return r.exit !== undefined && allowAdmits(r.exit.allow, to, traffic);
}

/**
 * The hops of the path walked so far (at most HOPS_MAX). The distinctness checks scan it: for
 * k <= 4 that is cheaper than keeping counting maps up to date at every step of the walk.
 */
interface Walk {
  hops: RouterNode[];
}

/**
 * Sorted neighbour lists per Net. A Net is not changed after buildNet, and planning makes one
 * PathSpace per circuit: sorting each router's neighbours again for every circuit was a fifth of
 * path selection.
 */
const neighbourCache = new WeakMap<Net, Map<string, RouterNode[]>>();

/** A compiled, reusable eligibility walker over one network and one set of constraints. */
export class PathSpace {
  /**
   * exitAdmits per router, memoised. Filled lazily, only for the routers a walk reaches as last
   * hop: computing it for every router up front made each PathSpace O(routers), and planning
   * (one PathSpace per circuit) O(routers x circuits).
   */
  private readonly exitMemo = new Map<string, boolean>();
  /** each router's neighbours in index order, shared by every PathSpace over the same Net */
  private readonly neighbours: Map<string, RouterNode[]>;
  private readonly entryRouters: RouterNode[];

  constructor(
    private readonly net: Net,
    private readonly c: Constraints,
  ) {
    let nb = neighbourCache.get(net);
    if (!nb) neighbourCache.set(net, (nb = new Map()));
    this.neighbours = nb;
    this.entryRouters = [...new Set(c.entries)]
      .map((e) => net.routers.get(e))
      .filter((r): r is RouterNode => r !== undefined)
      .sort((a, b) => a.index - b.index);
  }

  private exitOk(name: string): boolean {
    let ok = this.exitMemo.get(name);
    if (ok === undefined) {
      const r = this.net.routers.get(name);
      ok = r !== undefined && exitAdmits(r, this.c.to, this.c.traffic);
      this.exitMemo.set(name, ok);
    }
    return ok;
  }

  private nbrs(r: string): RouterNode[] {
    let n = this.neighbours.get(r);
    if (!n) {
      n = [...(this.net.adj.get(r) ?? [])]
        .map((x) => this.net.routers.get(x))
        .filter((x): x is RouterNode => x !== undefined)
        .sort((a, b) => a.index - b.index);
      this.neighbours.set(r, n);
    }
    return n;
  }

  private fits(w: Walk, r: RouterNode): boolean {
    if (this.c.countries && r.country === undefined) return false;
    const net16 = slash16(r.underlay.addr);
    for (const h of w.hops) {
      if (h.name === r.name) return false;
      if (this.c.operators && h.operator === r.operator) return false;
      if (this.c.countries && h.country === r.country) return false;
      if (this.c.subnets16 && slash16(h.underlay.addr) === net16) return false;
    }
    return true;
  }

  private push(w: Walk, r: RouterNode): void {
    w.hops.push(r);
  }
  private pop(w: Walk, _r: RouterNode): void {
    w.hops.pop();
  }

  private newWalk(): Walk {
    return { hops: [] };
  }

  /** number of eligible completions of a walk that has `depth` hops, the last being `at` */
  private countFrom(w: Walk, at: RouterNode, depth: number, cap: number): number {
    if (depth === this.c.k) return this.exitOk(at.name) ? 1 : 0;
    let n = 0;
    for (const r of this.nbrs(at.name)) {
      if (!this.fits(w, r)) continue;
      this.push(w, r);
      n += this.countFrom(w, r, depth + 1, cap - n);
      this.pop(w, r);
      if (n >= cap) break;
    }
    return n;
  }

  /** Counts eligible paths, stopping early once `cap` is reached. */
  count(cap = Number.MAX_SAFE_INTEGER): number {
    const w = this.newWalk();
    let n = 0;
    const perEntry: number[] = [];
    for (const e of this.entryRouters) {
      let m = 0;
      if (this.fits(w, e)) {
        this.push(w, e);
        m = this.countFrom(w, e, 1, cap - n);
        this.pop(w, e);
      }
      perEntry.push(m);
      n += m;
      if (n >= cap) break;
    }
    if (n < cap) this.entryCounts = perEntry;
    return n;
  }

  /**
   * The number of eligible paths through each entry router, kept by a count() that was not cut
   * short: nth() then skips whole entries without walking them again, so drawing a path costs
   * one count plus the walk below one entry, not two counts.
   */
  private entryCounts: number[] | undefined;

  /** The r-th eligible path in the walker's canonical order. */
  nth(r: number): string[] | undefined {
    const w = this.newWalk();
    const path: RouterNode[] = [];
    const go = (at: RouterNode | undefined, depth: number): boolean => {
      const candidates = at === undefined ? this.entryRouters : this.nbrs(at.name);
      for (let ci = 0; ci < candidates.length; ci++) {
        const next = candidates[ci]!;
        const known = at === undefined ? this.entryCounts?.[ci] : undefined;
        if (known !== undefined && r >= known) {
          r -= known;
          continue;
        }
        if (!this.fits(w, next)) continue;
        this.push(w, next);
        path.push(next);
        const n = known ?? (depth + 1 === this.c.k ? (this.exitOk(next.name) ? 1 : 0) : this.countFrom(w, next, depth + 1, Number.MAX_SAFE_INTEGER));
        if (r < n) {
          if (depth + 1 === this.c.k || go(next, depth + 1)) return true;
        }
        r -= n;
        path.pop();
        this.pop(w, next);
      }
      return false;
    };
    return go(undefined, 0) ? path.map((p) => p.name) : undefined;
  }

  /** Every eligible path (for tests and small topologies). */
  all(): string[][] {
    const n = this.count();
    const out: string[][] = [];
    for (let i = 0; i < n; i++) out.push(this.nth(i)!);
    return out;
  }

  /** Is this concrete path eligible? (used to decide whether a stored circuit is still valid) */
  isEligible(path: readonly string[]): string | undefined {
    if (path.length !== this.c.k) return `has ${path.length} hops, the circuit wants ${this.c.k}`;
    const w = this.newWalk();
    for (let i = 0; i < path.length; i++) {
      const r = this.net.routers.get(path[i]!);
      if (!r) return `router ${path[i]} is no longer in the topology`;
      if (i === 0 && !this.c.entries.includes(r.name)) return `${r.name} is no longer an entry router of the client`;
      if (i > 0 && !this.net.adj.get(path[i - 1]!)?.has(r.name)) return `${path[i - 1]} and ${r.name} are no longer overlay neighbours`;
      if (!this.fits(w, r)) return `hop ${r.name} breaks a distinctness constraint`;
      this.push(w, r);
    }
    const last = path[path.length - 1]!;
    if (!this.exitOk(last)) {
      const r = this.net.routers.get(last);
      const t = this.c.traffic;
      if (r?.exit && t && exitAdmits(r, this.c.to)) {
        const drops = this.c.to.map((d) => droppedTraffic(r.exit!.allow, d, t)).filter(Boolean);
        return `exit ${last} would drop the circuit's traffic (${trafficText(t)}): its allow list does not let out ${drops[0]}`;
      }
      return `exit ${last} no longer admits the circuit's destinations`;
    }
    return undefined;
  }
}

export class PathError extends OnionctlError {
  readonly kind = 'path' as const;
  constructor(
    readonly circuit: string,
    readonly constraint: 'exit' | 'structure' | 'operators' | 'countries' | 'subnets16',
    message: string,
  ) {
    super(message);
  }
}

/**
 * Names the first constraint that leaves no eligible path, or undefined if a path exists.
 * Constraints are added one at a time so that the message says which one is to blame.
 */
export function diagnose(net: Net, c: CircuitDef): PathError | undefined {
  const full = constraintsFor(net, c);
  // the common case first: a path under all constraints means none of the steps below can fail
  // (each relaxes the full set), and this skips their scan over every router for the exits
  if (new PathSpace(net, full).count(1) > 0) return undefined;
  const exits = [...net.routers.values()].filter((r) => exitAdmits(r, c.to, c.traffic));
  if (exits.length === 0) {
    const all = [...net.routers.values()].filter((r) => r.exit).map((r) => r.name);
    const forDests = [...net.routers.values()].filter((r) => exitAdmits(r, c.to));
    if (c.traffic && forDests.length > 0) {
      return new PathError(
        c.name,
        'exit',
        `no exit lets the circuit's traffic (${trafficText(c.traffic)}) out to all of its destinations (${forDests.map((r) => `${r.name} would drop ${c.to.map((d) => droppedTraffic(r.exit!.allow, d, c.traffic!)).filter(Boolean)[0]}`).join('; ')}); widen an exit's "allow" list or change the circuit's proto/ports`,
      );
    }
    return new PathError(
      c.name,
      'exit',
      `no exit admits all of the circuit's destinations (${all.length > 0 ? `exits: ${all.join(', ')}` : 'the topology has no exit'}); widen an exit's "allow" list`,
    );
  }
  const steps: [PathError['constraint'], Partial<Constraints>, string][] = [
    ['structure', { operators: false, countries: false, subnets16: false }, `no path of ${c.hops} distinct routers starts at an entry router of ${c.client}, follows overlay links and ends at an exit that admits the destinations (${exits.map((e) => e.name).join(', ')}); add links or entry routers`],
    ['operators', { countries: false, subnets16: false }, `every ${c.hops}-hop path has two hops run by the same operator (decoupling); add routers of other operators or links between them`],
    ['countries', { subnets16: false }, `no path has its ${c.hops} hops in distinct countries (every router on a path needs a "country")`],
    ['subnets16', {}, `no path has its ${c.hops} hops in distinct /16 networks`],
  ];
  for (const [name, relax, msg] of steps) {
    const cons = { ...full, ...relax };
    if (new PathSpace(net, cons).count(1) === 0) return new PathError(c.name, name, msg);
  }
  return undefined;
}

/** Draws one eligible path uniformly at random. */
export function selectPath(net: Net, c: CircuitDef, rng: Rng): string[] {
  const space = new PathSpace(net, constraintsFor(net, c));
  const n = space.count();
  if (n === 0) throw diagnose(net, c) ?? new PathError(c.name, 'structure', 'no eligible path');
  return space.nth(rng.int(n))!;
}
