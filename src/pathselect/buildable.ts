/**
 * A topology is usable only when every circuit has at least one path under its constraints. The
 * check lives here, above topology/, because it is path selection's own question (select.ts
 * diagnose); parseBuildableTopology is what every command loads a topology with.
 */
import { parseTopology, type LoadedTopology } from '../topology/load.js';
import { buildNet } from '../topology/net.js';
import type { Topology } from '../topology/schema.js';
import type { SemanticIssue } from '../topology/validate.js';
import { diagnose } from './select.js';

/** One issue per circuit that cannot be built, at the circuit's entry in the file. */
export function unbuildableCircuits(t: Topology): SemanticIssue[] {
  const net = buildNet(t);
  const issues: SemanticIssue[] = [];
  for (const c of net.circuits) {
    const err = diagnose(net, c);
    if (err) issues.push({ path: ['circuits', c.index], message: `circuit "${c.name}" cannot be built: ${err.message}` });
  }
  return issues;
}

/** parseTopology, then every circuit must have a path (errors located at file:line:col). */
export function parseBuildableTopology(text: string, file: string): LoadedTopology {
  return parseTopology(text, file, unbuildableCircuits);
}
