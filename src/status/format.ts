/**
 * `status` output: a table per circuit and per overlay link, the nodes' xfrm_stat problems, the
 * problems list and a final "Health:" line; or the JSON document "onionctl-status/v1"
 * (docs/status.md describes both). No key material is ever in a report (SAs are named by SPI and
 * identity only).
 */
import { STATUS_FORMAT, type CircuitStatus, type Finding, type LinkStatus, type NodeStatus, type SaEnd, type SaStatus, type StatusReport, type Verdict } from './status.js';

export interface StatusContext {
  topology: string;
  stateFile: string;
  stateSerial: number;
  /** controller time of the (last) read, ISO */
  readAt: string;
  notes: string[];
}

export function statusJson(r: StatusReport, ctx: StatusContext): unknown {
  return {
    format: STATUS_FORMAT,
    topology: ctx.topology,
    stateFile: ctx.stateFile,
    stateSerial: ctx.stateSerial,
    readAt: ctx.readAt,
    ...(r.intervalSeconds !== undefined ? { intervalSeconds: r.intervalSeconds } : {}),
    health: r.health,
    exitCode: r.exitCode,
    problems: r.problems,
    notes: ctx.notes,
    circuits: r.circuits,
    links: r.links,
    nodes: r.nodes,
  };
}

const VERDICT: Record<Verdict, string> = { ok: 'OK', degraded: 'DEGRADED', down: 'DOWN', unknown: 'UNKNOWN' };

export function duration(s: number | undefined): string {
  if (s === undefined) return '-';
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor((s % 86400) / 3600)).padStart(2, '0')}h`;
}

function table(rows: string[][], right: Set<number>, indent: string): string[] {
  const w: number[] = [];
  for (const r of rows) r.forEach((c, i) => (w[i] = Math.max(w[i] ?? 0, c.length)));
  return rows.map((r) => (indent + r.map((c, i) => (i === r.length - 1 && !right.has(i) ? c : right.has(i) ? c.padStart(w[i]!) : c.padEnd(w[i]!))).join('  ')).trimEnd());
}

function endState(e: SaEnd): string {
  switch (e.state) {
    case 'ok':
      return 'ok';
    case 'missing':
      return 'MISSING';
    case 'spi-differs':
      return `SPI ${e.observedSpi}`;
    case 'differs':
      return 'DIFFERS';
    case 'unknown':
      return 'not read';
  }
}

function withDelta(v: number | undefined, d: number | undefined): string {
  if (v === undefined) return '-';
  return d === undefined ? String(v) : `${v} (+${d})`;
}

function errorsCell(e: SaEnd): string {
  if (!e.errors) return '-';
  const parts: string[] = [];
  if (e.errors.replayWindow) parts.push(`window ${e.errors.replayWindow}`);
  if (e.errors.replay) parts.push(`replay ${e.errors.replay}`);
  if (e.errors.integrity) parts.push(`integrity ${e.errors.integrity}`);
  if (parts.length === 0) return '0';
  const d = e.delta;
  const rising = d ? d.replayWindow + d.replay + d.integrity : 0;
  return parts.join(' ') + (rising > 0 ? ` (+${rising})` : '');
}

function lifetimeCell(e: SaEnd): string {
  const l = e.lifetime;
  if (!l) return '';
  if (l.pastHard) return 'PAST HARD LIMIT';
  if (l.pastSoft) return 'past soft limit';
  return l.softUsed !== undefined ? `${Math.round(l.softUsed * 100)}% of soft` : '';
}

function saRows(sas: SaStatus[]): string[][] {
  const anyLifetime = sas.some((s) => s.ends.some((e) => e.lifetime));
  const head = ['SA', 'spi', 'node', 'role', 'state', 'packets', 'bytes', 'errors', 'age'];
  if (anyLifetime) head.push('lifetime');
  const rows: string[][] = [head];
  for (const s of sas) {
    s.ends.forEach((e, i) => {
      const row = [
        i === 0 ? s.label : '',
        i === 0 ? s.spi : '',
        e.node,
        e.role === 'send' ? 'send' : 'recv',
        endState(e),
        withDelta(e.packets, e.delta?.packets),
        withDelta(e.bytes, e.delta?.bytes),
        errorsCell(e),
        duration(e.ageSeconds),
      ];
      if (anyLifetime) row.push(lifetimeCell(e));
      rows.push(row);
    });
  }
  return rows;
}

const NUMERIC = new Set([5, 6]);

function findingLines(fs: readonly Finding[], indent: string): string[] {
  return fs.filter((f) => f.severity !== 'info').map((f) => `${indent}${f.severity === 'warn' ? 'warning' : f.severity}: ${f.message}`);
}

function circuitText(c: CircuitStatus): string[] {
  const out = [`Circuit ${c.name}: ${c.path.join(' -> ')} => ${c.to.join(', ')}   ${VERDICT[c.verdict]}`];
  if (c.sas.length) out.push(...table(saRows(c.sas), NUMERIC, '  '));
  if (c.overlay.length) out.push(`  overlay: ${c.overlay.map((o) => `${o.link} ${o.verdict}`).join(', ')}`);
  const planned = c.policies.reduce((a, p) => a + p.planned, 0);
  const read = c.policies.filter((p) => p.present !== undefined);
  const present = read.reduce((a, p) => a + (p.present ?? 0), 0);
  const readPlanned = read.reduce((a, p) => a + p.planned, 0);
  out.push(
    `  policies: ${present}/${readPlanned} as planned` + (readPlanned < planned ? ` (${planned - readPlanned} on nodes not read)` : ''),
  );
  out.push(...findingLines(c.findings, '  '));
  return out;
}

function linkText(l: LinkStatus): string[] {
  return [`  ${l.name}   ${VERDICT[l.verdict]}`, ...table(saRows(l.sas), NUMERIC, '    ')];
}

function nodeLine(n: NodeStatus, w: number): string {
  const name = n.node.padEnd(w);
  if (!n.reachable) return `  ${name}  UNREACHABLE: ${n.error}`;
  const parts: string[] = [];
  if (n.xfrmStat === undefined) parts.push('xfrm_stat not available');
  else {
    const nz = Object.entries(n.xfrmStat);
    parts.push(nz.length === 0 ? 'xfrm_stat all zero' : `xfrm_stat ${nz.map(([k, v]) => `${k} ${v}${n.xfrmStatRising?.[k] ? ` (+${n.xfrmStatRising[k]})` : ''}`).join(', ')}`);
  }
  if (n.extraSas) parts.push(`${n.extraSas} SA${n.extraSas === 1 ? '' : 's'} not in the plan`);
  const other = n.findings.filter((f) => f.code === 'sysctl').map((f) => f.message.replace(`${n.node}: `, ''));
  parts.push(...other);
  if (n.clock) parts.push(`clock ${n.clock}`);
  return `  ${name}  ${parts.join('; ')}`;
}

export function formatStatus(r: StatusReport, ctx: StatusContext): string {
  const out: string[] = [];
  const unreachable = r.nodes.filter((n) => !n.reachable).length;
  out.push(
    `Status of ${ctx.topology} (state ${ctx.stateFile}, serial ${ctx.stateSerial}): ${r.nodes.length - unreachable} of ${r.nodes.length} nodes read` +
      (r.intervalSeconds !== undefined ? `, twice, ${r.intervalSeconds}s apart (+N: change between the reads)` : ''),
  );
  for (const n of ctx.notes) out.push(`note: ${n}`);
  for (const c of r.circuits) out.push('', ...circuitText(c));
  if (r.circuits.length === 0) out.push('', 'No circuits.');
  if (r.links.length) {
    out.push('', 'Overlay links:');
    for (const l of r.links) out.push(...linkText(l));
  }
  if (r.nodes.length) {
    out.push('', 'Nodes:');
    const w = Math.max(...r.nodes.map((n) => n.node.length));
    for (const n of r.nodes) out.push(nodeLine(n, w));
  }
  if (r.problems.length) {
    out.push('', `Problems (${r.problems.length}):`);
    out.push(...findingLines(r.problems, '  '));
  }
  const counts = (['down', 'unknown', 'degraded', 'ok'] as const)
    .map((v) => [v, r.circuits.filter((c) => c.verdict === v).length] as const)
    .filter(([, n]) => n > 0)
    .map(([v, n]) => `${n} ${v}`);
  out.push('', `Health: ${r.health}` + (r.circuits.length ? ` (circuits: ${counts.join(', ')}${unreachable ? `; ${unreachable} node${unreachable === 1 ? '' : 's'} unreachable` : ''})` : ''));
  return out.join('\n') + '\n';
}
