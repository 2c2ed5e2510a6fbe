/**
 * onionctl command line. Errors the user can act on are printed without a stack trace and exit
 * non-zero; ONIONCTL_DEBUG=1 shows stacks for bug reports.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { TopologyError, formatDiagnostic } from '../topology/diagnostics.js';
import { packageVersion } from '../util/files.js';
import { OnionctlError, UserError } from '../util/errors.js';
import { planCommand, validateCommand, VALIDATE_FORMAT, type PlanOpts } from './plan-command.js';
import { fractionArg, operatorListArg, type AuditOpts } from './audit-command.js';
import { formatArg, type GraphOpts } from './graph-command.js';
import type { LabSub } from './lab-command.js';
import type { LiveOpts } from './apply-command.js';
import { addSshOptions } from './ssh-options.js';
import { colourError, configureOutput, settings } from './output.js';

// Subcommands beyond validate/plan load their modules when they run: start-up stays quick and a
// problem in one subcommand's module cannot break the others.

/** every command that reads a state file takes it the same way */
const STATE_OPTION = ['--state <file>', 'state file (default: TOPOLOGY.state.json beside the topology)'] as const;

function seedArg(v: string): string {
  if (!/^[0-9A-Za-z_.:-]{1,64}$/.test(v)) throw new InvalidArgumentError('a seed is 1-64 characters of letters, digits and _.:-');
  return v;
}

function guestMemoryArg(v: string): number {
  if (!/^\d{2,6}$/.test(v) || Number(v) < 64 || Number(v) > 65536) throw new InvalidArgumentError('memory in MiB, 64 to 65536');
  return Number(v);
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('onionctl')
    .description('Plan and push IPsec onion circuits (nested ESP tunnels through k mixes, SNAT at the exit) to Linux routers')
    .version(packageVersion())
    .showHelpAfterError()
    .option('-q, --quiet', 'no per-router progress and no notes (results, errors and JSON are still printed); anywhere on the line')
    .option('--verbose', 'every progress event on its own line, and the stack of an internal error')
    .option('--no-color', 'no colour (also: NO_COLOR set, or output not a terminal)')
    .addHelpText('after', `\n${EXIT_CODES_HELP}\n`)
    .exitOverride();

  addOfflineCommands(program);
  addLiveCommands(program);
  addLabCommands(program);
  addReportCommands(program);

  for (const c of program.commands) {
    const ex = EXAMPLES[c.name()];
    if (ex) c.addHelpText('after', `\nExamples:\n${ex.map((l) => `  ${l}`).join('\n')}\n`);
  }
  return program;
}

/** commands that read files only: validate, show, schema, plan (plan --live reads routers too) */
function addOfflineCommands(program: Command): void {
  program
    .command('validate')
    .description('check a topology file; errors are reported as file:line:col')
    .argument('<topology>', 'topology YAML file')
    .option('--json', `print the result as JSON (format ${VALIDATE_FORMAT}: ok, summary, diagnostics with file, line, col, message)`)
    .action(async (topology: string, opts: { json?: boolean }) => {
      process.exitCode = await validateCommand(topology, opts);
    });

  program
    .command('show')
    .description('show what a plan saved with plan --live --out would do (checked to be authentic first; changes nothing)')
    .argument('<planfile>', 'the saved plan')
    .option('--secret <file>', 'the key secret to check it with (default: TOPOLOGY.secret beside the topology the plan names)')
    .option('--json', `print the plan itself as JSON (format ${'onionctl-saved-plan/v3'}, docs/formats.md)`)
    .action(async (planfile: string, opts: { secret?: string; json?: boolean }) => {
      const r = await (await import('./show-command.js')).showCommand(planfile, opts);
      process.stdout.write(r.stdout);
      process.exitCode = 0;
    });

  program
    .command('fmt')
    .description('rewrite topology files in the canonical layout (comments and values kept); --check only says which would change (exit 1)')
    .argument('<files...>', 'topology YAML files')
    .option('--check', 'change nothing; list the files that are not formatted and exit 1 if there is one')
    .action(async (files: string[], opts: { check?: boolean }) => {
      process.exitCode = await (await import('./fmt-command.js')).fmtCommand(files, opts);
    });

  program
    .command('schema')
    .description('print the JSON Schema of the topology file (for editors; docs/topology.schema.json is this output)')
    .action(async () => {
      const { topologyJsonSchema } = await import('../topology/json-schema.js');
      process.stdout.write(JSON.stringify(topologyJsonSchema(), null, 2) + '\n');
    });

  const plan = program
    .command('plan')
    .description('choose circuits (kept in the state file) and compute every router\'s configuration')
    .argument('<topology>', 'topology YAML file')
    .option(...STATE_OPTION)
    .option('--secret <file>', 'key secret for the KDF (default: TOPOLOGY.secret; created 0600 on first use)')
    .option('--seed <seed>', 'make path selection reproducible (default: the CSPRNG)', seedArg)
    .option('--out-dir <dir>', 'write per-router files (NAME.ip, NAME.iptables or NAME.nft, NAME.sysctl)')
    .option('--with-keys', 'write the real keys into --out-dir (files 0600, for apply); never commit these')
    .option('--json', 'print the plan as JSON')
    .option('--no-save-state', 'do not write the state file (dry run)')
    .option('--live', 'read every router over SSH and show what apply would change (+ add, ~ change, - destroy); never writes the state')
    .option('--out <file>', 'with --live: save the plan; `apply TOPOLOGY FILE` applies exactly it')
    .option('--detailed-exitcode', 'with --live: exit 2 when there are changes, 0 when there are none')
    .option('--accept-restored-state', 'go on from a state file that is behind its high-water mark (restored from a backup, copied from another controller): SPIs continue past every one handed out before and every SA a router lacks gets a new key');
  addSshOptions(plan).action(async (topology: string, opts: PlanOpts & LiveOpts & { live?: boolean }) => {
    if (opts.live || opts.out || opts.detailedExitcode) {
      if (!opts.live) throw new UserError('--out and --detailed-exitcode need --live (they describe changes on the routers)');
      if (opts.outDir || opts.withKeys) throw new UserError('--live reads the routers; --out-dir/--with-keys write files: run them separately');
      process.exitCode = await (await import('./apply-command.js')).planLiveCommand(topology, opts);
      return;
    }
    process.exitCode = await planCommand(topology, opts);
  });
}

/** commands that read or change the routers over SSH */
function addLiveCommands(program: Command): void {
  const apply = program
    .command('apply')
    .description('read every router over SSH, then push only the changes (new SAs before the policies that use them, old policies out before their SAs); with PLAN, apply exactly that saved plan')
    .argument('<topology>', 'topology YAML file')
    .argument('[plan]', 'a plan saved with plan --live --out; refused if a router changed since')
    .option(...STATE_OPTION)
    .option('--secret <file>', 'key secret for the KDF (default: TOPOLOGY.secret)')
    .option('--seed <seed>', 'reproducible path selection for new circuits', seedArg)
    .option('--max-plan-age <duration>', 'with PLAN: refuse a plan older than this (90s, 10m, 2h, 1d; default 1d)')
    .option('--accept-restored-state', 'go on from a state file that is behind its high-water mark (restored from a backup, copied from another controller): SPIs continue past every one handed out before and every SA a router lacks gets a new key')
    .option('--break-lock', 'take the state lock even though another run holds it')
    .option('--auto-approve', 'change the routers without asking (scripts, CI); without it apply shows the plan and asks on the terminal, and fails where there is none (a saved PLAN is applied without asking)');
  addSshOptions(apply).action(async (topology: string, planFile: string | undefined, opts: LiveOpts) => {
    process.exitCode = await (await import('./apply-command.js')).applyCommand(topology, planFile, opts);
  });

  const collect = (v: string, prev: string[] | undefined) => [...(prev ?? []), v];
  const rekey = program
    .command('rekey')
    .description('new keys (new SPIs) for chosen SAs without IKE, make-before-break: new SA on the receiver, then the sender, old one removed after --grace')
    .argument('<topology>', 'topology YAML file')
    .option('--circuit <name>', 'every SA of this circuit (repeatable)', collect)
    .option('--all', 'every SA, overlay links included')
    .option('--due', 'the SAs past their rekey age or soft byte/packet limit (for a cron job or systemd timer)')
    .option('--grace <seconds>', 'how long the previous keys stay installed after the new ones', (v: string) => {
      if (!/^[0-9]+$/.test(v) || Number(v) > 86_400) throw new InvalidArgumentError('seconds, 0 to 86400');
      return Number(v);
    }, 30)
    .option(...STATE_OPTION)
    .option('--secret <file>', 'key secret for the KDF (default: TOPOLOGY.secret)')
    .option('--seed <seed>', 'reproducible path selection for new circuits', seedArg)
    .option('--accept-restored-state', 'go on from a state file that is behind its high-water mark (restored from a backup, copied from another controller): SPIs continue past every one handed out before and every SA a router lacks gets a new key')
    .option('--break-lock', 'take the state lock even though another run holds it');
  addSshOptions(rekey).action(async (topology: string, opts: LiveOpts & { circuit?: string[]; all?: boolean; due?: boolean; grace?: number }) => {
    process.exitCode = await (await import('./apply-command.js')).rekeyCommand(topology, opts);
  });

  const rotate = program
    .command('rotate')
    .description('new random paths (same constraints) for circuits older than --max-age or named with --circuit; the new path is ready before the client moves to it')
    .argument('<topology>', 'topology YAML file')
    .option('--max-age <duration>', 'rotate circuits whose path is at least this old (90s, 10m, 2h, 1d)')
    .option('--circuit <name>', 'rotate this circuit (repeatable)', collect)
    .option(...STATE_OPTION)
    .option('--secret <file>', 'key secret for the KDF (default: TOPOLOGY.secret)')
    .option('--seed <seed>', 'reproducible path selection', seedArg)
    .option('--accept-restored-state', 'go on from a state file that is behind its high-water mark (restored from a backup, copied from another controller): SPIs continue past every one handed out before and every SA a router lacks gets a new key')
    .option('--break-lock', 'take the state lock even though another run holds it');
  addSshOptions(rotate).action(async (topology: string, opts: LiveOpts & { circuit?: string[]; maxAge?: string }) => {
    process.exitCode = await (await import('./apply-command.js')).rotateCommand(topology, opts);
  });

  const destroy = program
    .command('destroy')
    .description('remove everything onionctl installed on every router (and nothing else); sysctls are left as they are')
    .argument('<topology>', 'topology YAML file')
    .option(...STATE_OPTION)
    .option('--secret <file>', 'key secret for the KDF (default: TOPOLOGY.secret)')
    .option('--break-lock', 'take the state lock even though another run holds it')
    .option('--auto-approve', 'remove without asking (scripts, CI); without it destroy shows what it removes and asks on the terminal, and fails where there is none');
  addSshOptions(destroy).action(async (topology: string, opts: LiveOpts) => {
    process.exitCode = await (await import('./apply-command.js')).destroyCommand(topology, opts);
  });

  const status = program
    .command('status')
    .description('read every router over SSH: each circuit\'s path, per SA its packet, byte and error counters, /proc/net/xfrm_stat problems, and a health verdict (exit 1 when a circuit is down or a router unreachable); never writes the state')
    .argument('<topology>', 'topology YAML file')
    .option(...STATE_OPTION)
    .option('--secret <file>', 'accepted like apply\'s; status needs no keys and never opens it')
    .option('--seed <seed>', 'accepted like plan\'s; status never chooses paths', seedArg)
    .option('--interval <seconds>', 'read twice, this many seconds apart: show what the counters did in between, and warn only on error counters that rose', (v: string) => {
      if (!/^[0-9]+$/.test(v) || Number(v) < 1 || Number(v) > 3600) throw new InvalidArgumentError('a whole number of seconds from 1 to 3600');
      return Number(v);
    })
    .option('--json', 'print the status as JSON (format onionctl-status/v1, docs/status.md)');
  addSshOptions(status).action(async (topology: string, opts: import('./status-command.js').StatusOpts) => {
    process.exitCode = await (await import('./status-command.js')).statusCommand(topology, opts);
  });
}

/** the lab: namespaces, UML guests, lab ctl */
function addLabCommands(program: Command): void {
  const lab = program.command('lab').description('build the topology in network namespaces (inside User-Mode Linux when this kernel has no ESP) and prove it works');
  for (const [sub, desc] of [
    ['up', 'create namespaces, wires, sshd per node and a server per circuit, then configure every node over SSH'],
    ['test', 'send traffic through every circuit, prove it used IPsec, and check what each hop saw'],
    ['down', 'remove everything the lab created'],
    ['demo', 'up, test, down in one go'],
  ] as const) {
    const c = lab.command(sub).description(desc).argument('<topology>', 'topology YAML file');
    // each subcommand lists the options it takes, and only those
    const builds = sub === 'up' || sub === 'demo';
    if (builds) c.option('--seed <seed>', 'reproducible path selection', seedArg);
    if (sub === 'test' || sub === 'demo') c.option('--json', 'machine-readable report');
    if (sub === 'up') c.option('--no-apply', 'build the lab but leave the nodes unconfigured (then: onionctl lab ctl TOPOLOGY apply)');
    if (builds) {
      c.option('--kernel <path>', 'the User-Mode Linux kernel to boot, or "6.12" for the one scripts/uml-kernel.sh built (default: $ONIONCTL_UML, else linux.uml)');
      c.option('--xfrm-interface', 'load xfrm_interface in the lab kernel (as route-based VPNs do on real routers), which makes newer kernels check nested ESP against dir-in policies');
      c.option('--guest-memory <MiB>', 'memory of the User-Mode Linux guest that holds every node (default 512; each SA takes a few KiB of kernel memory, so tens of thousands of circuits need more)', guestMemoryArg);
    }
    c.addOption(new Option('--inner', 'internal: the step that runs inside the lab\'s controller namespace').hideHelp())
      .action(async (topology: string, opts: { seed?: string; json?: boolean; inner?: boolean; kernel?: string; xfrmInterface?: boolean; guestMemory?: number }) => {
        process.exitCode = await (await import('./lab-command.js')).labCommand(sub as LabSub, topology, opts);
      });
  }
  lab
    .command('reboot')
    .description('simulate a reboot of one node: its namespace is rebuilt from scratch (no onionctl configuration, ip_forward 0) and its sshd restarted with the same host key')
    .argument('<topology>', 'topology YAML file')
    .argument('<node>', 'router or client')
    .addOption(new Option('--inner', 'internal').hideHelp())
    .action(async (topology: string, node: string, opts: { inner?: boolean }) => {
      process.exitCode = await (await import('./lab-command.js')).labCommand('reboot', topology, { ...opts, node });
    });
  lab
    .command('exec')
    .description('run a command in the lab\'s controller namespace (every node\'s sshd reachable), with ONIONCTL_LAB_DIR set; "onionctl" runs this onionctl')
    .usage('<topology> -- <command> [args...]')
    .argument('<topology>', 'topology YAML file')
    .argument('[command...]', 'the command and its arguments, after --')
    .allowUnknownOption()
    .action(async (topology: string, command: string[]) => {
      process.exitCode = await (await import('./lab-command.js')).labExec(topology, command);
    });
  lab
    .command('ctl')
    .description('run onionctl apply|plan|destroy|status|rekey|rotate on the lab\'s nodes like on real routers (lab topology, state, secret and SSH key filled in)')
    .argument('<topology>', 'topology YAML file')
    .argument('<command>', 'apply, plan, destroy, status, rekey or rotate')
    .argument('[args...]', 'more arguments for that command, e.g. --live, --json, --break-lock')
    .allowUnknownOption()
    .helpOption(false)
    .action(async (topology: string, command: string, args: string[]) => {
      process.exitCode = await (await import('./lab-command.js')).labCtl(topology, command, args);
    });
}

/** audit, graph and shell completion */
function addReportCommands(program: Command): void {
  program
    .command('audit')
    .description('who sees which addresses on every wire and router, per circuit; checks the anonymity invariants (exit 1 on a violation); never writes the state')
    .argument('<topology>', 'topology YAML file')
    .option(...STATE_OPTION)
    .option('--seed <seed>', 'path selection for circuits the state lacks, as for plan', seedArg)
    .option('--json', 'print the audit as JSON')
    .option('--compromised <ops>', 'adversary view: comma-separated operators assumed compromised', operatorListArg)
    .option('--compromised-fraction <f>', 'adversary view: this fraction of the operators, drawn at random (reproducible with --seed)', fractionArg)
    .option('--fail-on-exposure', 'with --compromised or --compromised-fraction: exit 1 when the adversary runs both the entry and the exit of a circuit (for CI gates)')
    .action(async (topology: string, opts: AuditOpts) => {
      process.exitCode = await (await import('./audit-command.js')).auditCommand(topology, opts);
    });

  program
    .command('graph')
    .description('draw the overlay and the circuits: routers coloured by operator, circuits as coloured paths; never writes the state')
    .argument('<topology>', 'topology YAML file')
    .option(...STATE_OPTION)
    .option('--seed <seed>', 'path selection for circuits the state lacks, as for plan', seedArg)
    .option('--format <format>', 'dot, mermaid, svg or png (svg and png need Graphviz `dot`); default: from --out\'s extension (.dot/.gv, .mmd, .svg, .png)', formatArg)
    .option('--out <file>', 'write to this file instead of standard output')
    .option('--circuits-only', 'draw only the clients, routers and links the circuits use (for large overlays)')
    .action(async (topology: string, opts: GraphOpts) => {
      process.exitCode = await (await import('./graph-command.js')).graphCommand(topology, opts);
    });

  program
    .command('completion')
    .description('print a shell completion script: bash (source it, or put it in /etc/bash_completion.d/onionctl) or zsh')
    .argument('<shell>', 'bash or zsh')
    .action((shell: string) => {
      if (shell !== 'bash' && shell !== 'zsh') throw new UserError(`completion for ${shell.slice(0, 20)} is not offered: bash or zsh`);
      process.stdout.write(completionScript(program, shell));
    });
}

/** --help examples per command */
const EXAMPLES: Record<string, string[]> = {
  validate: ['onionctl validate topo.yaml', 'onionctl validate --json topo.yaml     # diagnostics as JSON, for CI'],
  plan: [
    'onionctl plan topo.yaml --out-dir out/              # choose paths, write per-router scripts (keys redacted)',
    'onionctl plan topo.yaml --seed 1 --no-save-state --json',
    'onionctl plan topo.yaml --live                      # what apply would change on the routers',
    'onionctl plan topo.yaml --live --out plan.json --detailed-exitcode',
  ],
  apply: ['onionctl apply topo.yaml                            # shows the plan, asks, pushes', 'onionctl apply topo.yaml plan.json                  # exactly a saved plan', 'onionctl apply topo.yaml --auto-approve             # scripts, CI'],
  show: ['onionctl show plan.json', 'onionctl show plan.json --json'],
  destroy: ['onionctl destroy topo.yaml', 'onionctl destroy topo.yaml --auto-approve'],
  status: ['onionctl status topo.yaml', 'onionctl status topo.yaml --json --interval 10'],
  rekey: ['onionctl rekey topo.yaml --due                      # what is past its soft limits (systemd timer)', 'onionctl rekey topo.yaml --circuit web --grace 30'],
  rotate: ['onionctl rotate topo.yaml --max-age 1d', 'onionctl rotate topo.yaml --circuit web'],
  audit: ['onionctl audit topo.yaml', 'onionctl audit topo.yaml --compromised north,south --fail-on-exposure'],
  graph: ['onionctl graph topo.yaml --out net.svg', 'onionctl graph topo.yaml --format mermaid', 'onionctl graph large.yaml --circuits-only --out circuits.png'],
  lab: ['onionctl lab demo examples/three-mixes.yaml', 'onionctl lab up topo.yaml && onionctl lab test topo.yaml && onionctl lab down topo.yaml'],
  schema: ['onionctl schema > topology.schema.json'],
  fmt: ['onionctl fmt topo.yaml', 'onionctl fmt --check *.yaml            # CI: exit 1 when a file is not formatted'],
  completion: ['onionctl completion bash > /etc/bash_completion.d/onionctl', 'onionctl completion zsh > "${fpath[1]}/_onionctl"'],
};

/** A completion script from the program's own commands and options (so it never lists one that does not exist). */
export function completionScript(program: Command, shell: 'bash' | 'zsh'): string {
  const longs = (c: Command) => c.options.map((o) => o.long).filter((x): x is string => x !== undefined);
  const global = longs(program);
  const cases: string[] = [];
  for (const c of program.commands) {
    const subs = c.commands.map((s) => s.name());
    cases.push(`    ${c.name()}) words=${JSON.stringify([...subs, ...longs(c), ...global, '--help'].join(' '))} ;;`);
  }
  const top = program.commands.map((c) => c.name()).join(' ');
  const body = [
    '_onionctl() {',
    '  local cur words',
    '  cur=${COMP_WORDS[COMP_CWORD]}',
    '  if [ "$COMP_CWORD" -eq 1 ]; then',
    `    COMPREPLY=($(compgen -W ${JSON.stringify(`${top} ${global.join(' ')} --help --version`)} -- "$cur"))`,
    '    return',
    '  fi',
    '  case "${COMP_WORDS[1]}" in',
    ...cases,
    '    *) words= ;;',
    '  esac',
    '  case "$cur" in',
    '    -*) COMPREPLY=($(compgen -W "$words" -- "$cur")) ;;',
    '    *) if [ "${COMP_WORDS[1]}" = lab ] && [ "$COMP_CWORD" -eq 2 ]; then COMPREPLY=($(compgen -W "$words" -- "$cur")); else COMPREPLY=($(compgen -f -- "$cur")); fi ;;',
    '  esac',
    '}',
    'complete -o filenames -F _onionctl onionctl',
  ];
  const head = shell === 'zsh' ? ['#compdef onionctl', '# onionctl completion for zsh (uses bash completion through bashcompinit)', 'autoload -U +X bashcompinit && bashcompinit'] : ['# onionctl completion for bash: source it, or put it in /etc/bash_completion.d/onionctl'];
  return [...head, ...body, ''].join('\n');
}

/** Exit codes, as Terraform has them (README "Exit codes"). */
export const EXIT_CODES_HELP = [
  'Exit codes:',
  '  0   success (with --detailed-exitcode: success and no changes)',
  '  1   an error: bad input or usage, a router that could not be read or changed, a failed check',
  '  2   only with plan --live --detailed-exitcode: success, and there are changes',
  '  70  a bug in onionctl (an internal error)',
].join('\n');

export function reportError(e: unknown, err: (s: string) => void): number {
  if (e instanceof TopologyError) {
    for (const d of e.diagnostics) err(formatDiagnostic(d) + '\n');
    err(`onionctl: ${e.diagnostics.length} error${e.diagnostics.length === 1 ? '' : 's'} in topology\n`);
    return 1;
  }
  if (e instanceof OnionctlError && e.exitCode !== 70) {
    err(colourError(`onionctl: error: ${e.message}`, process.stderr) + '\n');
    return e.exitCode;
  }
  // a usage error is an error (1): 2 means "changes" to CI pipelines using --detailed-exitcode
  if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 1;
  const msg = e instanceof Error ? e.message : String(e);
  err(`onionctl: internal error: ${msg}\n`);
  if ((process.env.ONIONCTL_DEBUG || settings.verbose) && e instanceof Error && e.stack) err(e.stack + '\n');
  else err('(this is a bug in onionctl; rerun with ONIONCTL_DEBUG=1 for details)\n');
  return 70;
}

/**
 * An error as JSON, for the --json modes: CI that parses stdout gets a document whatever
 * happened. `validate --json` keeps its own format (ok false, the diagnostics); every other
 * command prints onionctl-error/v1. The human message still goes to stderr.
 */
export function errorJson(e: unknown, command: string | undefined, exitCode: number): unknown {
  const diagnostics = e instanceof TopologyError ? e.diagnostics.map((d) => ({ file: d.file, line: d.line, col: d.col, message: d.message })) : [];
  const message = e instanceof Error ? e.message : String(e);
  if (command === 'validate') return { format: VALIDATE_FORMAT, ok: false, diagnostics: diagnostics.length > 0 ? diagnostics : [{ message }] };
  const kind = e instanceof OnionctlError ? (e.exitCode === 70 ? 'internal' : e.kind) : e instanceof CommanderError ? 'usage' : 'internal';
  return { format: 'onionctl-error/v1', command: command ?? null, exitCode, kind, message, ...(diagnostics.length > 0 ? { diagnostics } : {}) };
}

export async function main(argvIn: string[]): Promise<number> {
  const argv = configureOutput(argvIn);
  const program = buildProgram();
  // commander answers `UNKNOWN --help` with the top-level help and exit 0: an unknown command is
  // an error whatever follows it
  const first = argv[0];
  const known = (n: string) => n === 'help' || program.commands.some((c) => c.name() === n || c.aliases().includes(n));
  if (first !== undefined && !first.startsWith('-') && !known(first) && argv.some((a) => a === '--help' || a === '-h')) {
    process.stderr.write(`error: unknown command '${first.slice(0, 60).replace(/[^\x20-\x7e]/g, '?')}'\n\n${program.helpInformation()}`);
    return 1;
  }
  // `lab ctl` passes everything after the command on (--live, --json ...), so commander's help
  // option is off there; its own help is still asked for with `lab ctl --help`
  if (first === 'lab' && argv[1] === 'ctl' && (argv[2] === '--help' || argv[2] === '-h')) {
    const ctl = program.commands.find((c) => c.name() === 'lab')!.commands.find((c) => c.name() === 'ctl')!;
    process.stdout.write(ctl.helpInformation());
    return 0;
  }
  try {
    await program.parseAsync(argv, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    const code = reportError(e, (s) => process.stderr.write(s));
    if (argv.includes('--json') && code !== 0) process.stdout.write(JSON.stringify(errorJson(e, first, code), null, 2) + '\n');
    return code;
  }
}
