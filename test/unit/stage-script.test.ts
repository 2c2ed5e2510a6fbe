/**
 * src/apply/commands.ts stageScript: the script a router's `sh -s` runs for a stage of several
 * commands, run here by real shells (dash as Debian's sh, and bash, which is sh elsewhere):
 * every command gets exactly its input, in order; the first failure stops the script and names
 * the step; the input never reaches a command line or a temporary file; parseStageScript
 * reads back what stageScript wrote.
 */
import { describe, expect, test } from '@jest/globals';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { combineSteps, NO_BUILTIN_PRINTF, NO_BUILTIN_PRINTF_EXIT, parseStageScript, scriptOutcome, stageScript, STAGE_SCRIPT_HEADER, type Step } from '../../src/apply/commands.js';

const shells = ['/bin/sh', '/bin/dash', '/bin/bash'].filter((s) => existsSync(s));

/** inputs that a careless quoting would break: quotes, backslashes, $, `, %, newlines, no final newline */
const AWKWARD = [
  "xfrm state add src 1.2.3.4 dst 5.6.7.8 proto esp spi 0x4f000001 aead 'rfc4106(gcm(aes))' 0xdeadbeef 128\n",
  `-A ONIONCTL-FORWARD -m comment --comment "it's \\"quoted\\" \\\\ 100% $HOME \`id\`" -j ACCEPT\nCOMMIT\n`,
  "net.ipv4.ip_forward = 1\n\n\nlast line without newline ''' \\' %s %%",
];

function step(what: string, argv: string[], stdin: string, secret = false): Step {
  return { what, argv, stdin, secret, changes: 1 };
}

function runScript(shell: string, script: string, env: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(shell, ['-s'], { input: script, encoding: 'utf8', env: { PATH: process.env.PATH, ...env } });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

describe.each(shells)('stage scripts in %s', (shell) => {
  test('every command gets exactly its input, in order', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'stage-'));
    try {
      const steps = AWKWARD.map((input, i) => step(`step ${i}`, ['sh', '-c', `cat > ${dir}/in${i}; echo ran ${i} >> ${dir}/order`], input));
      const r = runScript(shell, stageScript(steps));
      expect(r).toMatchObject({ code: 0, stderr: '' });
      AWKWARD.forEach((input, i) => expect(readFileSync(path.join(dir, `in${i}`), 'utf8')).toBe(input));
      expect(readFileSync(path.join(dir, 'order'), 'utf8')).toBe('ran 0\nran 1\nran 2\n');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the first failing command stops the script, which names it and exits with its code', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'stage-'));
    try {
      const steps = [
        step('one', ['sh', '-c', `cat > ${dir}/one`], 'a\n'),
        step('two', ['sh', '-c', 'cat >/dev/null; echo "RTNETLINK answers: File exists" >&2; exit 2'], 'b\n'),
        step('three', ['sh', '-c', `cat > ${dir}/three`], 'c\n'),
      ];
      const r = runScript(shell, stageScript(steps));
      expect(r.code).toBe(2);
      expect(r.stderr).toBe('RTNETLINK answers: File exists\nonionctl: step 2 of 3 failed (exit 2)\n');
      expect(existsSync(path.join(dir, 'one'))).toBe(true);
      expect(existsSync(path.join(dir, 'three'))).toBe(false);
      expect(scriptOutcome(r.code, r.stderr)).toEqual({ ok: false, failed: 1, message: 'RTNETLINK answers: File exists' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the input is on no command line and in no temporary file', () => {
    // a secret big enough that a shell would spill a here-document to a file (bash: over a pipe's 64 KiB)
    const secret = `0x${'5e'.repeat(36)}`;
    const big = `${secret}\n${'x'.repeat(200_000)}\n`;
    const dir = mkdtempSync(path.join(tmpdir(), 'stage-'));
    try {
      // the command lists every process's command line and TMPDIR while it reads its input
      const spy = `cat > ${dir}/got; for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done > ${dir}/cmdlines; ls -A ${dir}/tmp > ${dir}/tmpfiles`;
      execFileSync('mkdir', [path.join(dir, 'tmp')]);
      const r = runScript(shell, stageScript([step('spy', ['sh', '-c', spy], big, true), step('noop', ['true'], '')]), { TMPDIR: path.join(dir, 'tmp') });
      expect(r.code).toBe(0);
      expect(readFileSync(path.join(dir, 'got'), 'utf8')).toBe(big);
      expect(readFileSync(path.join(dir, 'cmdlines'), 'utf8')).not.toContain(secret.slice(0, 20));
      expect(readFileSync(path.join(dir, 'tmpfiles'), 'utf8')).toBe('');
      expect(readdirSync(path.join(dir, 'tmp'))).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('where printf is not a builtin, nothing runs and the script says so', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'stage-'));
    try {
      // `command -V printf` answers as the shell sees it; a function shadows the builtin here
      const script = stageScript([step('one', ['sh', '-c', `cat > ${dir}/one`], 'a\n'), step('two', ['true'], '')]).replace('\n', '\nprintf() { :; }\n');
      const r = runScript(shell, script);
      expect(r.code).toBe(NO_BUILTIN_PRINTF_EXIT);
      expect(r.stderr).toContain(NO_BUILTIN_PRINTF);
      expect(existsSync(path.join(dir, 'one'))).toBe(false);
      expect(scriptOutcome(r.code, r.stderr)).toEqual({ ok: false, noPrintf: true });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('stage script helpers', () => {
  test('parseStageScript gives back the commands and inputs stageScript was given', () => {
    const steps = [...AWKWARD.map((input, i) => step(`s${i}`, ['ip', '-batch', '-'], input)), step('odd argv', ["it's", 'a b', ''], '')];
    const back = parseStageScript(stageScript(steps));
    expect(back).toEqual(steps.map((s) => ({ argv: s.argv, stdin: s.stdin })));
    expect(parseStageScript('#!/bin/sh\necho read-back\n')).toBeUndefined();
  });

  test('combineSteps: a single step stays as it is; several become one sh -s step carrying them', () => {
    const a = step('sysctl', ['sysctl', '-q', '--load=-'], 'x = 1\n');
    const b = step('ip -batch', ['ip', '-batch', '-'], 'xfrm state add ...\n', true);
    expect(combineSteps([a])).toEqual([a]);
    expect(combineSteps([])).toEqual([]);
    const [c] = combineSteps([a, b]);
    expect(c).toMatchObject({ what: 'sysctl, ip -batch', argv: ['sh', '-s'], secret: true, changes: 2, parts: [a, b] });
    expect(c!.stdin.startsWith(`${STAGE_SCRIPT_HEADER} sysctl ip\n`)).toBe(true);
    // no here-document anywhere (bash writes those to temporary files)
    expect(c!.stdin).not.toMatch(/<</);
  });

  test('scriptOutcome: success, a failed step, and a script that died without saying which step', () => {
    expect(scriptOutcome(0, '')).toEqual({ ok: true });
    expect(scriptOutcome(1, 'iptables-restore: line 3 failed\nonionctl: step 1 of 2 failed (exit 1)\n')).toEqual({ ok: false, failed: 0, message: 'iptables-restore: line 3 failed' });
    expect(scriptOutcome(255, 'Connection closed\n')).toEqual({ ok: false, failed: undefined, message: 'Connection closed' });
  });
});
