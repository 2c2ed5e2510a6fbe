/**
 * What admins reach for (issue 15): colour on a terminal only (NO_COLOR, --no-color), --quiet and
 * --verbose, shell completion generated from the commands themselves, and --help examples.
 */
import { describe, expect, jest, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { buildProgram, completionScript } from '../../src/cli/main.js';
import { colourError, colourPlan, configureOutput, settings } from '../../src/cli/output.js';
import { EXAMPLES, run, runAll, SPAWN_TIMEOUT, tempDir } from '../helpers/cli.js';

jest.setTimeout(SPAWN_TIMEOUT);

const TTY = { isTTY: true };
const PIPE = { isTTY: false };
const PLAN = 'or1: 2 to add, 1 to change, 1 to destroy\n  + state esp 198.51.100.12 spi 0x4f000000\n  ~ route main 203.0.113.0/24: via 1 -> 2\n  - policy out x\n  ! route main y: foreign\n\nPlan: 2 to add, 1 to change, 1 to destroy.\n';

describe('colour, quiet and verbose', () => {
  test('the flags are taken out of argv wherever they stand (not after --), and into the environment for child runs', () => {
    const env: NodeJS.ProcessEnv = {};
    expect(configureOutput(['plan', '-q', 'topo.yaml', '--no-color', '--', 'x', '--quiet'], env)).toEqual(['plan', 'topo.yaml', '--', 'x', '--quiet']);
    expect(env).toEqual({ ONIONCTL_QUIET: '1', NO_COLOR: '1' });
    expect(settings).toMatchObject({ quiet: true, verbose: false, colour: false });
    configureOutput(['status', '--verbose'], {});
    expect(settings).toMatchObject({ quiet: false, verbose: true, colour: true });
    configureOutput([], {});
  });

  test('plan lines are coloured on a terminal only, and not with NO_COLOR', () => {
    configureOutput([], {});
    const c = colourPlan(PLAN, TTY);
    expect(c).toContain('  \u001b[32m+ state esp 198.51.100.12 spi 0x4f000000\u001b[0m');
    expect(c).toContain('  \u001b[33m~ route main');
    expect(c).toContain('  \u001b[31m- policy out x\u001b[0m');
    expect(c).toContain('  \u001b[31m! route main y');
    expect(c).toContain('\nPlan: 2 to add'); // the summary is left alone
    expect(colourPlan(PLAN, PIPE)).toBe(PLAN);
    expect(colourError('onionctl: error: x', TTY)).toBe('\u001b[31monionctl: error: x\u001b[0m');
    configureOutput([], { NO_COLOR: '1' });
    expect(colourPlan(PLAN, TTY)).toBe(PLAN);
    expect(colourError('onionctl: error: x', TTY)).toBe('onionctl: error: x');
    configureOutput([], {});
  });

  test('--quiet leaves out notes, not results; the built CLI, not on a terminal, prints no colour', async () => {
    const dir = await tempDir();
    const topo = path.join(dir, 't.yaml');
    await fs.copyFile(path.join(EXAMPLES, 'three-mixes.yaml'), topo);
    const loud = await run(['plan', topo, '--seed', '1', '--no-save-state']);
    expect(loud.stderr).toMatch(/onionctl: created key secret/);
    await fs.rm(path.join(dir, 't.secret'));
    const quiet = await run(['plan', topo, '--seed', '1', '--no-save-state', '--quiet']);
    expect(quiet.code).toBe(0);
    expect(quiet.stderr).toBe('');
    expect(quiet.stdout).toBe(loud.stdout);
    expect(loud.stdout).not.toContain('\u001b[');
  });
});

describe('shell completion', () => {
  const program = buildProgram();
  const bash = completionScript(program, 'bash');
  const complete = (words: string[]) => {
    const r = spawnSync('bash', ['-c', `${bash}\nCOMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _onionctl; printf '%s\\n' "\${COMPREPLY[@]}"`], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    return r.stdout.split('\n').filter(Boolean).sort();
  };

  test('commands, each command\'s own options and lab\'s subcommands complete; everything offered exists', () => {
    expect(complete(['onionctl', 'pl'])).toEqual(['plan']);
    expect(complete(['onionctl', 'apply', 'topo.yaml', '--auto'])).toEqual(['--auto-approve']);
    expect(complete(['onionctl', 'plan', 't.yaml', '--det'])).toEqual(['--detailed-exitcode']);
    expect(complete(['onionctl', 'lab', 'd'])).toEqual(['demo', 'down']);
    // nothing that is not an option of that command
    for (const c of program.commands) {
      const offered = complete(['onionctl', c.name(), '--']).filter((w) => w.startsWith('--'));
      const real = new Set([...c.options, ...program.options].map((o) => o.long).concat(['--help']));
      expect(offered.filter((w) => !real.has(w))).toEqual([]);
    }
  });

  test('the bash and zsh scripts come from the CLI and pass shellcheck (bash)', async () => {
    const [b, z, bad] = await runAll([{ args: ['completion', 'bash'] }, { args: ['completion', 'zsh'] }, { args: ['completion', 'fish'] }]);
    expect(b!.stdout).toBe(bash);
    expect(z!.stdout).toMatch(/^#compdef onionctl\n.*bashcompinit/s);
    expect(bad!.code).toBe(1);
    expect(bad!.stderr).toMatch(/completion for fish is not offered: bash or zsh/);
    const sc = spawnSync('shellcheck', ['-s', 'bash', '-e', 'SC2207', '-'], { input: bash, encoding: 'utf8' });
    if (sc.error === undefined) expect(sc.stdout).toBe('');
  });
});

describe('--help', () => {
  test('every command shows examples and the exit codes are on the top-level help', async () => {
    const names = ['validate', 'plan', 'apply', 'show', 'destroy', 'status', 'rekey', 'rotate', 'audit', 'graph', 'lab', 'schema', 'completion'];
    const rs = await runAll(names.map((n) => ({ args: [n, '--help'] })));
    rs.forEach((r, i) => {
      expect({ cmd: names[i], code: r.code }).toEqual({ cmd: names[i], code: 0 });
      expect(r.stdout).toMatch(new RegExp(`\\nExamples:\\n  onionctl ${names[i]} `));
    });
    expect((await run(['--help'])).stdout).toMatch(/Exit codes:/);
  });
});
