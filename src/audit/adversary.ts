/**
 * The adversary view: a set of compromised operators sees a circuit end to end (and can
 * correlate its traffic) when it runs both the circuit's entry and its exit. Pure.
 *
 * For each circuit this gives the actual exposure (from the state's path) and the exposure
 * expected under the paper's selection, uniform over the eligible paths: the exact share of
 * eligible paths whose entry and exit are both compromised. Both counts come from
 * src/pathselect's PathSpace, so "eligible" means exactly what the selector means: the share is
 * (paths with a compromised entry and a compromised exit) / (all eligible paths), where the
 * numerator is counted by a PathSpace whose entries are narrowed to compromised entry routers and
 * whose exits are narrowed to compromised exit routers. No sampling.
 */
import { PathSpace, constraintsFor } from '../pathselect/select.js';
import type { Rng } from '../pathselect/rng.js';
import type { State } from '../state/model.js';
import type { Net, RouterNode } from '../topology/net.js';

export interface CircuitExposure {
  circuit: string;
  client: string;
  entry: string;
  exit: string;
  entryOperator: string;
  exitOperator: string;
  /** the state's path has a compromised entry and a compromised exit */
  exposed: boolean;
  /** eligible paths for this circuit (uniform selection draws one of these) */
  eligible: number;
  /** of which: entry and exit both compromised */
  eligibleExposed: number;
  /** eligibleExposed / eligible (0 when there is no eligible path) */
  expected: number;
}

export interface AdversaryReport {
  /** operators that run at least one router, in router order */
  operators: string[];
  compromised: string[];
  /** how the set was chosen */
  chosen: { by: 'list' } | { by: 'fraction'; fraction: number; count: number; seeded: boolean };
  circuits: CircuitExposure[];
  /** share of circuits (of those with a path) that are exposed in the state */
  exposedShare: number;
  /** mean over circuits of the exact per-circuit probability under uniform eligible-path selection */
  expectedShare: number;
  method: 'exact enumeration of eligible paths (PathSpace.count)';
}

/** Operators that run routers, in the order of their first router. */
export function routerOperators(net: Net): string[] {
  const out: string[] = [];
  for (const r of net.routers.values()) if (!out.includes(r.operator)) out.push(r.operator);
  return out;
}

/**
 * round(fraction * operators) operators, drawn uniformly without replacement (partial
 * Fisher-Yates) from `rng`; returned in router order.
 */
export function drawCompromised(operators: readonly string[], fraction: number, rng: Rng): string[] {
  if (!(fraction >= 0 && fraction <= 1)) throw new RangeError(`fraction ${fraction} is not in [0, 1]`);
  const n = Math.round(fraction * operators.length);
  const pool = [...operators];
  for (let i = 0; i < n; i++) {
    const j = i + rng.int(pool.length - i);
    [pool[i], pool[j]] = [pool[j]!, pool[i]!];
  }
  const picked = new Set(pool.slice(0, n));
  return operators.filter((o) => picked.has(o));
}

export function adversaryReport(net: Net, state: State, compromised: readonly string[], chosen: AdversaryReport['chosen']): AdversaryReport {
  const bad = new Set(compromised);
  // the same network, with only compromised exits left as exits
  const routers = new Map<string, RouterNode>();
  for (const [name, r] of net.routers) {
    if (bad.has(r.operator) || !r.exit) routers.set(name, r);
    else {
      const { exit: _dropped, ...rest } = r;
      void _dropped;
      routers.set(name, rest);
    }
  }
  const badExits: Net = { ...net, routers };

  const circuits: CircuitExposure[] = [];
  for (const def of net.circuits) {
    const c = state.circuits[def.name];
    if (!c || c.hops.length === 0) continue;
    const entry = c.hops[0]!;
    const exit = c.hops[c.hops.length - 1]!;
    const entryOperator = net.routers.get(entry)?.operator ?? '?';
    const exitOperator = net.routers.get(exit)?.operator ?? '?';
    const cons = constraintsFor(net, def);
    const eligible = new PathSpace(net, cons).count();
    const eligibleExposed = new PathSpace(badExits, { ...cons, entries: cons.entries.filter((e) => bad.has(net.routers.get(e)?.operator ?? '')) }).count();
    circuits.push({
      circuit: def.name,
      client: c.client,
      entry,
      exit,
      entryOperator,
      exitOperator,
      exposed: bad.has(entryOperator) && bad.has(exitOperator),
      eligible,
      eligibleExposed,
      expected: eligible === 0 ? 0 : eligibleExposed / eligible,
    });
  }
  const n = circuits.length;
  return {
    operators: routerOperators(net),
    compromised: [...compromised],
    chosen,
    circuits,
    exposedShare: n === 0 ? 0 : circuits.filter((c) => c.exposed).length / n,
    expectedShare: n === 0 ? 0 : circuits.reduce((s, c) => s + c.expected, 0) / n,
    method: 'exact enumeration of eligible paths (PathSpace.count)',
  };
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

export function formatAdversary(a: AdversaryReport): string {
  const out: string[] = [];
  const how =
    a.chosen.by === 'list'
      ? 'as given'
      : `${a.chosen.count} of ${a.operators.length} operators (fraction ${a.chosen.fraction}, rounded), drawn ${a.chosen.seeded ? 'with the seed' : 'at random'}`;
  out.push(`Adversary: compromised operators ${a.compromised.length ? a.compromised.join(', ') : '(none)'} (${how}; operators: ${a.operators.join(', ')})`);
  const exposed = a.circuits.filter((c) => c.exposed);
  out.push(`  circuits with entry and exit both compromised (end-to-end correlation): ${exposed.length} of ${a.circuits.length} (${pct(a.exposedShare)})`);
  out.push(`  expected under uniform selection of eligible paths: ${pct(a.expectedShare)} (exact: every eligible path of every circuit counted)`);
  const rows = a.circuits.map((c) => [
    c.circuit,
    `${c.entry} (${c.entryOperator})`,
    `${c.exit} (${c.exitOperator})`,
    c.exposed ? 'EXPOSED' : '-',
    `${c.eligibleExposed}/${c.eligible} = ${pct(c.expected)}`,
  ]);
  const head = ['circuit', 'entry', 'exit', 'state', 'eligible paths exposed'];
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  for (const r of [head, ...rows]) out.push('    ' + r.map((x, i) => x.padEnd(w[i]!)).join('  ').trimEnd());
  if (exposed.length) out.push(`  exposed: ${exposed.map((c) => `${c.circuit} (entry ${c.entry}/${c.entryOperator}, exit ${c.exit}/${c.exitOperator})`).join('; ')}`);
  return out.join('\n') + '\n';
}
