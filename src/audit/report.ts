/**
 * The audit as text (for people) and as JSON (for scripts and the lab). Pure.
 */
import type { Net } from '../topology/net.js';
import { formatAdversary, type AdversaryReport } from './adversary.js';
import { pointParty, type AuditResult, type PartyView } from './audit.js';
import { formatLearned, formatObservations } from './observe.js';

function table(rows: string[][], indent: string): string[] {
  const w: number[] = [];
  for (const r of rows) r.forEach((c, i) => (w[i] = Math.max(w[i] ?? 0, c.length)));
  return rows.map((r) => indent + r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(w[i]!))).join('  ').trimEnd());
}

function viewParty(v: PartyView, net: Net): string {
  if (v.kind === 'router') return `router ${v.party} (${net.routers.get(v.party)?.operator ?? '?'})`;
  if (v.kind === 'operator') return `operator ${v.party}`;
  return pointParty(v.party);
}

export function circuitLine(c: AuditResult['circuits'][number]): string {
  const hops = c.hops.map((h) => `${h.router} [${[h.operator, h.country, h.exit ? 'exit' : undefined].filter(Boolean).join(', ')}]`);
  return `${c.client} (${c.clientAddr}) -> ${hops.join(' -> ')} -> ${c.to.join(', ')}`;
}

export function formatInvariants(a: AuditResult, indent = '  '): string {
  const out: string[] = [];
  for (const i of a.invariants) {
    out.push(`${indent}${i.ok ? 'ok  ' : 'FAIL'}  ${i.name}: ${i.description}`);
    for (const v of i.violations) out.push(`${indent}        ${v.message}`);
  }
  return out.join('\n') + '\n';
}

/** Cross-circuit aggregate: for each router / operator, the circuits whose client address or destination it learns. */
export function formatAggregates(a: AuditResult, net: Net, indent = '  '): string {
  const out: string[] = [];
  const list = (xs: string[]) => (xs.length ? xs.join(', ') : '-');
  for (const kind of ['router', 'operator'] as const) {
    const parties = new Map<string, { client: string[]; dest: string[]; circuits: string[] }>();
    if (kind === 'router') for (const r of net.routers.values()) parties.set(r.name, { client: [], dest: [], circuits: [] });
    else for (const r of net.routers.values()) parties.set(r.operator, { client: [], dest: [], circuits: [] });
    for (const v of a.views) {
      if (v.kind !== kind) continue;
      const e = parties.get(v.party)!;
      e.circuits.push(v.circuit);
      if (v.seesClient) e.client.push(v.circuit);
      if (v.seesDestination) e.dest.push(v.circuit);
    }
    out.push(`${indent}By ${kind} (all circuits):`);
    const rows = [[kind, ...(kind === 'router' ? ['operator'] : []), 'on circuits', "learns client's address of", 'learns destination of']];
    for (const [p, e] of parties) {
      rows.push([p, ...(kind === 'router' ? [net.routers.get(p)!.operator] : []), list(e.circuits), list(e.client), list(e.dest)]);
    }
    out.push(...table(rows, indent + '  '));
  }
  return out.join('\n') + '\n';
}

export interface AuditTextContext {
  topology: string;
  stateFile: string;
  subject: string;
  notes: string[];
}

export function formatAudit(a: AuditResult, net: Net, ctx: AuditTextContext, stored?: AuditResult, adversary?: AdversaryReport): string {
  const out: string[] = [];
  out.push(`Audit of ${ctx.topology} (${ctx.subject})`);
  for (const n of ctx.notes) out.push(`  note: ${n}`);
  out.push(
    'Model: one packet per circuit and destination is walked through the planned policies, SAs, routes and SNAT,',
    'both ways. Only outer headers are readable on a wire; inside ESP everything is encrypted.',
    '',
  );
  const opOf = (r: string) => net.routers.get(r)?.operator ?? '?';
  for (const c of a.circuits) {
    out.push(`Circuit ${c.name}: ${circuitLine(c)}`);
    out.push(`  per-hop addresses: ${c.hops.map((h, i) => `A_c${i + 1} ${h.addr} (${h.router})`).join(', ')}`);
    if (!c.walked) {
      out.push('  (the path cannot be built from the state; see the path invariant)', '');
      continue;
    }
    out.push('', '  On the wire (clear outer headers):');
    out.push(formatObservations(a.table.observations, { circuit: c.name, indent: '    ' }).trimEnd());
    out.push('', '  What each router learns (headers it sends or receives, decrypts, adds, or NATs):');
    out.push(formatLearned(a.table.routers, { circuit: c.name, indent: '    ', operatorOf: opOf }).trimEnd());
    out.push('', '  Who learns what:');
    const rows = [['party', "client's address", 'destination', 'address holders it learns of']];
    for (const v of a.views.filter((v) => v.circuit === c.name)) {
      rows.push([viewParty(v, net), v.seesClient ? 'YES' : 'no', v.seesDestination ? 'YES' : 'no', v.names.join(', ')]);
    }
    out.push(...table(rows, '    '), '');
  }
  out.push(formatAggregates(a, net, ''));
  out.push('Invariants:');
  out.push(formatInvariants(a).trimEnd());
  if (a.exitDrops.length > 0) {
    out.push('', 'Exit policies (what a circuit\'s exit lets out of its traffic; the exit drops the rest):');
    for (const x of a.exitDrops) {
      out.push(
        x.traffic === 'unstated'
          ? `  circuit ${x.circuit} to ${x.destination}: states no proto/ports; its exit ${x.exit} drops ${x.drops} (give the circuit proto/ports so that only an exit that lets them out is chosen)`
          : `  circuit ${x.circuit} to ${x.destination} carries ${x.traffic}; its exit ${x.exit} drops ${x.drops}`,
      );
    }
  }
  if (stored) {
    out.push('', 'The stored state differs from the plan; its own invariants (what routers configured from it have):');
    for (const c of stored.circuits) out.push(`  ${c.name}: ${circuitLine(c)}`);
    out.push(formatInvariants(stored).trimEnd());
  }
  if (adversary) {
    out.push('', formatAdversary(adversary).trimEnd());
  }
  const bad = violationCount(a) + (stored ? violationCount(stored) : 0);
  out.push('', bad === 0 ? 'Result: every invariant holds.' : `Result: ${bad} violation${bad === 1 ? '' : 's'}.`);
  return out.join('\n') + '\n';
}

export function violationCount(a: AuditResult): number {
  return a.invariants.reduce((n, i) => n + i.violations.length, 0);
}

export function auditJson(a: AuditResult, ctx: AuditTextContext, stored?: AuditResult, adversary?: AdversaryReport): unknown {
  const body = (r: AuditResult) => ({
    ok: r.ok,
    circuits: r.circuits,
    points: r.table.points,
    observations: r.table.observations,
    routers: r.table.routers,
    views: r.views,
    invariants: r.invariants,
    exitDrops: r.exitDrops,
    walkErrors: r.table.errors,
  });
  return {
    format: 'onionctl-audit/v1',
    topology: ctx.topology,
    stateFile: ctx.stateFile,
    subject: ctx.subject,
    notes: ctx.notes,
    ...body(a),
    ok: a.ok && (stored?.ok ?? true),
    ...(stored ? { stored: body(stored) } : {}),
    ...(adversary ? { adversary } : {}),
  };
}
