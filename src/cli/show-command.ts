/**
 * `onionctl show PLANFILE [--secret FILE] [--json]`: what a saved plan (plan --live --out) would
 * do, read back from the file, as Terraform's `show` does. The plan is shown only once it is
 * authentic (its MAC checks out under the key secret: by default the one beside the topology the
 * plan names); its age is shown, never a reason to refuse: show changes nothing.
 */
import { countsLine } from '../diff/summary.js';
import { planMacKey, SAVED_PLAN_FORMAT, type SavedPlan } from '../plan/planfile.js';
import { loadSecret } from '../store/files.js';
import { UserError } from '../util/errors.js';
import { parseJson } from '../util/json.js';
import { escapeControl } from '../util/text.js';
import { defaultPaths, openPlanText, readPlanText } from './context.js';

export interface ShowOpts {
  secret?: string;
  json?: boolean;
}

const SYMBOL = { add: '+', replace: '~', remove: '-' } as const;
const hex32 = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;

/** The human view of a saved plan (every string from the file escaped: it is authentic, but its text came from routers). */
export function formatSavedPlan(file: string, p: SavedPlan, now: Date): string {
  const e = (s: string) => escapeControl(s).replace(/\n/g, '\\n');
  const ageMin = Math.round((now.getTime() - Date.parse(p.created)) / 60_000);
  const out = [
    `Saved plan ${e(file)} (${SAVED_PLAN_FORMAT}, authentic), made ${e(p.created)} (${ageMin} min ago)`,
    `  topology: ${e(p.topology.path)} (sha256 ${p.topology.sha256.slice(0, 16)})`,
    `  state: serial ${p.state.serial}, planned from ${e(p.stateBefore.path)}${p.stateBefore.sha256 === null ? ' (none yet)' : ` (sha256 ${p.stateBefore.sha256.slice(0, 16)})`}`,
    '',
    'Circuits:',
    ...Object.entries(p.state.circuits).map(([n, c]) => `  ${e(n)}: ${e(c.client)} -> ${c.hops.map(e).join(' -> ')} -> ${c.to.map(e).join(', ')}`),
  ];
  if (p.rekeys.length > 0) out.push('', 'New keys (new SPI and epoch on both ends):', ...p.rekeys.map((r) => `  rekey ${e(r.sa)}: spi ${hex32(r.oldSpi)} -> ${hex32(r.newSpi)} (${e(r.reason)})`));
  out.push('');
  for (const n of p.nodes) {
    if (n.changes.length === 0 && n.conflicts.length === 0) {
      out.push(`${e(n.node)}: no changes`);
      continue;
    }
    const c = { add: 0, change: 0, destroy: 0 };
    for (const x of n.changes) (x.op === 'add' ? c.add++ : x.op === 'replace' ? c.change++ : c.destroy++);
    out.push(`${e(n.node)}: ${countsLine(c)}`);
    for (const x of n.conflicts) out.push(`  ! ${x.kind} ${e(x.key)}: ${e(x.reason)}`);
    for (const x of n.changes) {
      let line = `  ${SYMBOL[x.op]} ${x.kind} ${e(x.key)}`;
      if (x.fields && x.fields.length > 0) line += `: ${x.fields.map((f) => `${e(f.field)} ${e(f.from)} -> ${e(f.to)}`).join('; ')}`;
      if (x.needsNewEpoch) line += x.keyMismatch ? ' (key differs: needs a new epoch)' : ' (needs a new epoch)';
      if (x.comment) line += `  # ${e(x.comment)}`;
      out.push(line);
    }
  }
  out.push('', `Plan: ${countsLine(p.summary)}.`, `Apply exactly this plan with: onionctl apply ${e(p.topology.path)} ${e(file)}`);
  return out.join('\n') + '\n';
}

export async function showCommand(file: string, opts: ShowOpts, now: Date = new Date()): Promise<{ stdout: string }> {
  const text = await readPlanText(file);
  // where the key secret is, by default: beside the topology the plan names (a hint only: the MAC decides)
  let secretPath = opts.secret;
  if (secretPath === undefined) {
    let named: unknown;
    try {
      named = (parseJson(text) as { plan?: { topology?: { path?: unknown } } })?.plan?.topology?.path;
    } catch {
      named = undefined;
    }
    if (typeof named !== 'string' || named.length > 4096) throw new UserError(`plan ${file} is not a plan written by onionctl plan --live --out (give --secret to check it anyway)`);
    secretPath = defaultPaths(named, {}).secret;
  }
  const secret = await loadSecret(secretPath);
  if (!secret) throw new UserError(`cannot check plan ${file}: no key secret ${secretPath} (give --secret FILE, the secret of the topology it was made for)`);
  const plan = openPlanText(file, text, planMacKey(secret), { now, maxAgeMs: Number.POSITIVE_INFINITY });
  if (opts.json) return { stdout: JSON.stringify({ format: SAVED_PLAN_FORMAT, authentic: true, plan }, null, 2) + '\n' };
  return { stdout: formatSavedPlan(file, plan, now) };
}
