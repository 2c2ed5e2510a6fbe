/**
 * Every shell script onionctl ships or runs (the read-back sent to routers, the lab guest's
 * scripts, the install and kernel-build scripts, CI's entry point) passes shellcheck. CI installs
 * shellcheck (scripts/install-deps.sh); without it the test fails under CI and is skipped, loudly,
 * elsewhere.
 */
import { describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { ROOT } from '../helpers/cli.js';

const SCRIPTS = [
  'src/remote/readback.sh',
  ...readdirSync(path.join(ROOT, 'src/lab/guest')).filter((f) => f.endsWith('.sh')).map((f) => `src/lab/guest/${f}`),
  ...readdirSync(path.join(ROOT, 'scripts')).filter((f) => f.endsWith('.sh')).map((f) => `scripts/${f}`),
  '.ci/run',
];

const probe = spawnSync('shellcheck', ['--version'], { encoding: 'utf8' });
const missing = probe.error !== undefined;
if (missing && !process.env.CI) console.warn('SKIPPING shellcheck: not installed (scripts/install-deps.sh installs it)');

describe('shell scripts', () => {
  test('shellcheck is there in CI', () => {
    if (process.env.CI) expect(missing).toBe(false);
  });

  (missing ? test.skip : test).each(SCRIPTS)('%s passes shellcheck', (file) => {
    const r = spawnSync('shellcheck', ['-f', 'gcc', file], { cwd: ROOT, encoding: 'utf8' });
    expect(r.stdout + r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  test('the list holds the read-back and the guest scripts (a check of the check)', () => {
    expect(SCRIPTS).toEqual(expect.arrayContaining(['src/remote/readback.sh', 'src/lab/guest/init.sh', 'scripts/install-deps.sh']));
  });
});
