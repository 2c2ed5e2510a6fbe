/**
 * A topology is usable only when every circuit has at least one path under its constraints. The
 * check lives here, above topology/, because it is path selection's own question (select.ts
 * diagnose); parseBuildableTopology is what every command loads a topology with.
 */
import { formatCidr, poolHosts } from '../net/addr.js';
import { parseTopology, type LoadedTopology } from '../topology/load.js';
import { buildNet, type Net } from '../topology/net.js';
import type { Topology } from '../topology/schema.js';
import type { SemanticIssue } from '../topology/validate.js';
import { diagnose, exitAdmits } from './select.js';

/** One issue per circuit that cannot be built, at the circuit's entry in the file. */
export function unbuildableCircuits(t: Topology): SemanticIssue[] {
  const net = buildNet(t);
  const issues: SemanticIssue[] = [];
  for (const c of net.circuits) {
    const err = diagnose(net, c);
    if (err) issues.push({ path: ['circuits', c.index], message: `circuit "${c.name}" cannot be built: ${err.message}` });
  }
  if (issues.length === 0) issues.push(...smallPools(net));
  return issues;
}

/** above this many router x circuit pairs, only sole entries are counted (the exit scan would be slow) */
const EXIT_SCAN_LIMIT = 1_000_000;

/**
 * A router needs one address of its pool (A_ci) for each circuit through it. Every path of a
 * circuit goes through its client's entry when the client has only one, and through its exit
 * when only one exit admits it: when those circuits alone need more addresses than the pool
 * has, planning would fail (the pool's line is blamed here, at validate time).
 */
function smallPools(net: Net): SemanticIssue[] {
  const need = new Map<string, string[]>();
  const scanExits = net.routers.size * net.circuits.length <= EXIT_SCAN_LIMIT;
  for (const c of net.circuits) {
    const forced = new Set<string>();
    const entries = net.clients.get(c.client)?.entry ?? [];
    if (entries.length === 1) forced.add(entries[0]!);
    if (scanExits) {
      const exits = [...net.routers.values()].filter((r) => exitAdmits(r, c.to, c.traffic));
      if (exits.length === 1) forced.add(exits[0]!.name);
    }
    for (const r of forced) {
      const list = need.get(r);
      if (list) list.push(c.name);
      else need.set(r, [c.name]);
    }
  }
  const issues: SemanticIssue[] = [];
  for (const [name, circuits] of need) {
    const r = net.routers.get(name);
    if (!r) continue;
    const { first, last } = poolHosts(r.pool);
    const hosts = last - first + 1;
    if (circuits.length > hosts) {
      issues.push({
        path: ['routers', r.index, 'pool'],
        message: `pool ${formatCidr(r.pool)} has ${hosts} address${hosts === 1 ? '' : 'es'}, but ${circuits.length} circuits must pass through ${name} (${circuits.slice(0, 5).join(', ')}${circuits.length > 5 ? ', ...' : ''}), each needing one; enlarge the pool`,
      });
    }
  }
  return issues;
}

/** parseTopology, then every circuit must have a path (errors located at file:line:col). */
export function parseBuildableTopology(text: string, file: string): LoadedTopology {
  return parseTopology(text, file, unbuildableCircuits);
}
