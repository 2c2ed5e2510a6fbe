/**
 * `onionctl audit TOPOLOGY`: who sees which addresses, per circuit and observation point, and
 * whether the anonymity invariants hold (src/audit). Read-only.
 *
 * State handling: the state is loaded exactly as `plan` loads it and the plan is computed with
 * computePlan (same --seed handling), but audit NEVER writes the state file (nor the key secret:
 * it needs no keys). So:
 *  - state present and current: the audit is of the stored paths (identical to the plan);
 *  - no state file: the audit is of the paths `plan` would choose now (reproducible with
 *    --seed; run `onionctl plan` to keep them);
 *  - state present but stale or hand-edited (plan would re-path or add circuits): the plan is
 *    audited in full AND the stored circuits are audited as they are, since routers configured
 *    from that state run them; a violation in either exits 1.
 */
import { InvalidArgumentError } from 'commander';
import { computePlan } from '../plan/plan.js';
import { cryptoRng, rngFactory, SeededRng } from '../pathselect/rng.js';
import { adversaryReport, drawCompromised, routerOperators, type AdversaryReport } from '../audit/adversary.js';
import { auditState, type AuditResult } from '../audit/audit.js';
import { auditJson, formatAudit, type AuditTextContext } from '../audit/report.js';
import { describeEvent, type State } from '../state/model.js';
import { UserError } from '../util/errors.js';
import { defaultPaths, readState, readTopology } from './context.js';

export interface AuditOpts {
  state?: string;
  seed?: string;
  json?: boolean;
  compromised?: string[];
  compromisedFraction?: number;
  /** with --compromised(-fraction): exit 1 when the assumed adversary sees a circuit end to end */
  failOnExposure?: boolean;
}

export function operatorListArg(v: string): string[] {
  const xs = v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (xs.length === 0) throw new InvalidArgumentError('name at least one operator, e.g. --compromised north,south');
  return xs;
}

export function fractionArg(v: string): number {
  const f = Number(v);
  if (!/^\d*\.?\d+$/.test(v.trim()) || !(f >= 0 && f <= 1)) throw new InvalidArgumentError('a fraction between 0 and 1, e.g. 0.2');
  return f;
}

export interface AuditOutcome {
  code: number;
  stdout: string;
  stderr: string;
}

/** The whole command without touching process.stdout (for tests). */
export async function runAudit(topology: string, opts: AuditOpts): Promise<AuditOutcome> {
  if (opts.compromised && opts.compromisedFraction !== undefined) throw new UserError('give either --compromised or --compromised-fraction, not both');
  const paths = defaultPaths(topology, opts);
  const { net } = await readTopology(topology);
  const { state: stored, fresh } = await readState(paths, 'warn', (s) => process.stderr.write(`onionctl: ${s}\n`));
  const plan = computePlan({ net, state: stored, rngFor: rngFactory(opts.seed), now: new Date().toISOString() });

  const notes: string[] = [];
  let subject: string;
  let storedResult: AuditResult | undefined;
  if (fresh) {
    subject = `no state file ${paths.state}: the paths plan would choose now`;
    notes.push(
      opts.seed === undefined
        ? 'nothing is saved and the paths are drawn afresh on every run; use --seed, or run `onionctl plan` first'
        : `nothing is saved; \`onionctl plan --seed ${opts.seed}\` would choose the same paths`,
    );
  } else if (plan.events.length === 0) {
    subject = `state ${paths.state}, serial ${stored.serial}`;
  } else {
    subject = `the plan for state ${paths.state} (serial ${stored.serial}), which is out of date`;
    notes.push(`\`onionctl plan\` would make ${plan.events.length} change(s) to the state; both the plan and the stored circuits are audited`);
    for (const e of plan.events) notes.push(`plan would change: ${describeEvent(e)}`);
    const merged: State = { ...plan.state, circuits: {} };
    for (const def of net.circuits) {
      const c = stored.circuits[def.name] ?? plan.state.circuits[def.name];
      if (c) merged.circuits[def.name] = c;
    }
    storedResult = auditState(net, merged);
  }
  const result = auditState(net, plan.state, plan.configs);

  if (opts.failOnExposure && !opts.compromised && opts.compromisedFraction === undefined) {
    throw new UserError('--fail-on-exposure needs --compromised or --compromised-fraction (the adversary it is about)');
  }
  let adversary: AdversaryReport | undefined;
  if (opts.compromised || opts.compromisedFraction !== undefined) {
    const ops = routerOperators(net);
    if (opts.compromised) {
      const unknown = opts.compromised.filter((o) => !ops.includes(o));
      if (unknown.length) throw new UserError(`--compromised: ${unknown.join(', ')} ${unknown.length === 1 ? 'runs' : 'run'} no router (operators: ${ops.join(', ')})`);
      adversary = adversaryReport(net, plan.state, opts.compromised, { by: 'list' });
    } else {
      const f = opts.compromisedFraction!;
      const rng = opts.seed === undefined ? cryptoRng() : new SeededRng(opts.seed, 'audit/compromised');
      const picked = drawCompromised(ops, f, rng);
      adversary = adversaryReport(net, plan.state, picked, { by: 'fraction', fraction: f, count: picked.length, seeded: opts.seed !== undefined });
      if (picked.length === 0) notes.push(`--compromised-fraction ${f} of ${ops.length} operators rounds to none`);
    }
  }

  const ctx: AuditTextContext = { topology, stateFile: paths.state, subject, notes };
  const stdout = opts.json ? JSON.stringify(auditJson(result, ctx, storedResult, adversary), null, 2) + '\n' : formatAudit(result, net, ctx, storedResult, adversary);
  const failures = [
    ...result.invariants.flatMap((i) => i.violations.map((v) => `${v.invariant}: ${v.message} [party: ${v.party}]`)),
    ...(storedResult?.invariants.flatMap((i) => i.violations.map((v) => `${v.invariant} (stored state): ${v.message} [party: ${v.party}]`)) ?? []),
  ];
  if (opts.failOnExposure && adversary) {
    for (const c of adversary.circuits.filter((x) => x.exposed)) {
      failures.push(`exposure: circuit ${c.circuit}: its entry ${c.entry} (operator ${c.entryOperator}) and exit ${c.exit} (operator ${c.exitOperator}) are both compromised`);
    }
  }
  const stderr = failures.length === 0 ? '' : failures.map((f) => `onionctl: audit: ${f}\n`).join('') + `onionctl: audit failed: ${failures.length} violation${failures.length === 1 ? '' : 's'}\n`;
  return { code: failures.length === 0 ? 0 : 1, stdout, stderr };
}

export async function auditCommand(topology: string, opts: AuditOpts): Promise<number> {
  const r = await runAudit(topology, opts);
  process.stdout.write(r.stdout);
  process.stderr.write(r.stderr);
  return r.code;
}
