/**
 * The order changes are applied in, stated in one place. Each change falls into a phase; phases
 * run in this order and, within a phase, changes run in a fixed order (by kind, then key):
 *
 *   0 settings           sysctls (ip_forward) before anything relies on them
 *   1 fail closed        block policies added or changed first, so a destination whose circuit
 *                        is not (yet) complete is dropped, never sent in the clear
 *   2 SAs                new and re-created SAs, before any policy whose templates use them
 *                        (a policy with a missing SA drops: XfrmOutNoStates)
 *   3 firewall           onionctl's chains, then rules: an exit's "everything else" drop is in
 *                        place before the policy that lets a circuit's packets through
 *   4 policies           allow policies added or changed
 *   5 retired policies   allow policies removed, before the SAs they use
 *   6 retired SAs
 *   7 retired firewall   rules, then the chains that held them
 *   8 addresses          A_ci added before the routes that use them as `src`
 *   9 routes             added or changed
 *  10 retired routes     before the addresses they use
 *  11 retired addresses
 *  12 retired blocks     block policies go last: a destination stays fail-closed until its
 *                        circuit is gone entirely
 */
import type { Change } from './diff.js';

export const PHASES = [
  'settings',
  'fail closed',
  'SAs',
  'firewall',
  'policies',
  'retired policies',
  'retired SAs',
  'retired firewall',
  'addresses',
  'routes',
  'retired routes',
  'retired addresses',
  'retired blocks',
] as const;
export type Phase = (typeof PHASES)[number];

export function phaseOf(c: Change): Phase {
  switch (c.kind) {
    case 'policy': {
      if (c.op === 'remove') return c.observed.action === 'block' ? 'retired blocks' : 'retired policies';
      return c.desired.action === 'block' ? 'fail closed' : 'policies';
    }
    case 'state':
      return c.op === 'remove' ? 'retired SAs' : 'SAs';
    case 'chain':
    case 'snat':
    case 'filter':
    case 'rule-order':
      return c.op === 'remove' ? 'retired firewall' : 'firewall';
    case 'address':
      return c.op === 'remove' ? 'retired addresses' : 'addresses';
    case 'route':
      return c.op === 'remove' ? 'retired routes' : 'routes';
    case 'sysctl':
      return 'settings';
  }
}

/** within the firewall phases: chains exist before rules go in, rules leave before their chain */
function rank(c: Change): number {
  const fw = ['chain', 'snat', 'filter', 'rule-order'];
  const i = fw.indexOf(c.kind);
  if (i < 0) return 0;
  return c.op === 'remove' ? fw.length - i : i;
}

const isRule = (c: Change) => c.kind === 'snat' || c.kind === 'filter';

/**
 * The changes in a safe order (a new array; the input is not modified). Firewall rules keep the
 * order diffNode gives them (the chain's order: an exit's drop follows its accepts); everything
 * else within a phase is sorted by key.
 */
export function orderChanges(changes: readonly Change[]): Change[] {
  // phase and rank worked out once per change, not in every comparison (a router's first apply
  // sorts thousands of changes, once per stage)
  const d = changes.map((c, index) => ({ c, index, phase: PHASES.indexOf(phaseOf(c)), rank: rank(c), rule: isRule(c) }));
  d.sort((a, b) => a.phase - b.phase || a.rank - b.rank || (a.rule && b.rule ? a.index - b.index : a.c.key < b.c.key ? -1 : a.c.key > b.c.key ? 1 : 0));
  return d.map((x) => x.c);
}

/** The ordered changes grouped by phase, empty phases left out. */
export function changesByPhase(changes: readonly Change[]): { phase: Phase; changes: Change[] }[] {
  const ordered = orderChanges(changes);
  return PHASES.map((phase) => ({ phase, changes: ordered.filter((c) => phaseOf(c) === phase) })).filter((g) => g.changes.length > 0);
}
