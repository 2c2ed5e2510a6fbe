/**
 * onionctl command line. Errors the user can act on are printed without a stack trace and exit
 * non-zero; ONIONCTL_DEBUG=1 shows stacks for bug reports.
 */
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { TopologyError, formatDiagnostic } from '../topology/diagnostics.js';
import { PathError } from '../pathselect/select.js';
import { PlanError } from '../state/reconcile.js';
import { UserError, packageVersion } from '../util/files.js';
import { planCommand, validateCommand } from './plan-command.js';

function seedArg(v: string): string {
  if (!/^[0-9A-Za-z_.:-]{1,64}$/.test(v)) throw new InvalidArgumentError('a seed is 1-64 characters of letters, digits and _.:-');
  return v;
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('onionctl')
    .description('Plan and push IPsec onion circuits (nested ESP tunnels through k mixes, SNAT at the exit) to Linux routers')
    .version(packageVersion())
    .showHelpAfterError()
    .exitOverride();

  program
    .command('validate')
    .description('check a topology file; errors are reported as file:line:col')
    .argument('<topology>', 'topology YAML file')
    .action(async (topology: string) => {
      process.exitCode = await validateCommand(topology);
    });

  program
    .command('plan')
    .description('choose circuits (kept in the state file) and compute every router\'s configuration')
    .argument('<topology>', 'topology YAML file')
    .option('--state <file>', 'state file (default: TOPOLOGY.state.json beside the topology)')
    .option('--secret <file>', 'key secret for the KDF (default: TOPOLOGY.secret; created 0600 on first use)')
    .option('--seed <seed>', 'make path selection reproducible (default: the CSPRNG)', seedArg)
    .option('--out-dir <dir>', 'write per-router files (NAME.ip, NAME.iptables or NAME.nft, NAME.sysctl)')
    .option('--with-keys', 'write the real keys into --out-dir (files 0600, for apply); never commit these')
    .option('--json', 'print the plan as JSON')
    .option('--no-save-state', 'do not write the state file (dry run)')
    .action(async (topology: string, opts: PlanOpts) => {
      process.exitCode = await planCommand(topology, opts);
    });

  return program;
}

export interface PlanOpts {
  state?: string;
  secret?: string;
  seed?: string;
  outDir?: string;
  withKeys?: boolean;
  json?: boolean;
  saveState: boolean;
}

export function reportError(e: unknown, err: (s: string) => void): number {
  if (e instanceof TopologyError) {
    for (const d of e.diagnostics) err(formatDiagnostic(d) + '\n');
    err(`onionctl: ${e.diagnostics.length} error${e.diagnostics.length === 1 ? '' : 's'} in topology\n`);
    return 1;
  }
  if (e instanceof UserError || e instanceof PlanError || e instanceof PathError) {
    err(`onionctl: error: ${e.message}\n`);
    return 1;
  }
  if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
  const msg = e instanceof Error ? e.message : String(e);
  err(`onionctl: internal error: ${msg}\n`);
  if (process.env.ONIONCTL_DEBUG && e instanceof Error && e.stack) err(e.stack + '\n');
  else err('(this is a bug in onionctl; rerun with ONIONCTL_DEBUG=1 for details)\n');
  return 70;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    return reportError(e, (s) => process.stderr.write(s));
  }
}
