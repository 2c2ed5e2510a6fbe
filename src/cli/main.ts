/**
 * onionctl command line. Errors the user can act on are printed without a stack trace and exit
 * non-zero; ONIONCTL_DEBUG=1 shows stacks for bug reports.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { TopologyError, formatDiagnostic } from '../topology/diagnostics.js';
import { PathError } from '../pathselect/select.js';
import { PlanError } from '../state/reconcile.js';
import { UserError, packageVersion } from '../util/files.js';
import { planCommand, validateCommand } from './plan-command.js';
import { fractionArg, operatorListArg, type AuditOpts } from './audit-command.js';
import { formatArg, type GraphOpts } from './graph-command.js';
import type { LabSub } from './lab-command.js';

// Subcommands beyond validate/plan load their modules when they run: start-up stays quick and a
// problem in one subcommand's module cannot break the others.

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

  const lab = program.command('lab').description('build the topology in network namespaces (inside User-Mode Linux when this kernel has no ESP) and prove it works');
  for (const [sub, desc] of [
    ['up', 'create namespaces, wires, sshd per node and a server per circuit, then configure every node over SSH'],
    ['test', 'send traffic through every circuit, prove it used IPsec, and check what each hop saw'],
    ['down', 'remove everything the lab created'],
    ['demo', 'up, test, down in one go'],
  ] as const) {
    lab
      .command(sub)
      .description(desc)
      .argument('<topology>', 'topology YAML file')
      .option('--seed <seed>', 'reproducible path selection', seedArg)
      .option('--json', 'machine-readable report (test)')
      .addOption(new Option('--inner', 'internal: the step that runs inside the lab\'s controller namespace').hideHelp())
      .action(async (topology: string, opts: { seed?: string; json?: boolean; inner?: boolean }) => {
        process.exitCode = await (await import('./lab-command.js')).labCommand(sub as LabSub, topology, opts);
      });
  }

  program
    .command('audit')
    .description('who sees which addresses on every wire and router, per circuit; checks the anonymity invariants (exit 1 on a violation); never writes the state')
    .argument('<topology>', 'topology YAML file')
    .option('--state <file>', 'state file (default: TOPOLOGY.state.json beside the topology)')
    .option('--seed <seed>', 'path selection for circuits the state lacks, as for plan', seedArg)
    .option('--json', 'print the audit as JSON')
    .option('--compromised <ops>', 'adversary view: comma-separated operators assumed compromised', operatorListArg)
    .option('--compromised-fraction <f>', 'adversary view: this fraction of the operators, drawn at random (reproducible with --seed)', fractionArg)
    .action(async (topology: string, opts: AuditOpts) => {
      process.exitCode = await (await import('./audit-command.js')).auditCommand(topology, opts);
    });

  program
    .command('graph')
    .description('draw the overlay and the circuits: routers coloured by operator, circuits as coloured paths; never writes the state')
    .argument('<topology>', 'topology YAML file')
    .option('--state <file>', 'state file (default: TOPOLOGY.state.json beside the topology)')
    .option('--seed <seed>', 'path selection for circuits the state lacks, as for plan', seedArg)
    .requiredOption('--format <format>', 'dot, mermaid, svg or png (svg and png need Graphviz `dot`)', formatArg)
    .option('--out <file>', 'write to this file instead of standard output')
    .action(async (topology: string, opts: GraphOpts) => {
      process.exitCode = await (await import('./graph-command.js')).graphCommand(topology, opts);
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
  if (e instanceof UserError || e instanceof PlanError || e instanceof PathError || (e instanceof Error && /^(LabError|TransportError|UmlNotFoundError|GuestBootError|GuestNotRunningError|GuestAgentError|GuestExecTimeoutError)$/.test(e.name))) {
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
