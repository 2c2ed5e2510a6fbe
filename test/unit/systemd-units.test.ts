/**
 * The example systemd units (examples/systemd/onionctl-rekey.service and .timer, docs/rekey.md):
 * they parse (`systemd-analyze verify` where it exists, with no warning about either file), the
 * service runs onionctl commands with options those commands have, and the timer's period is
 * REKEY_TIMER_SECONDS.
 */
import { describe, expect, test } from '@jest/globals';
import { execFile } from 'node:child_process';
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { REKEY_TIMER_SECONDS } from '../../src/keys/lifetimes.js';
import { BIN, EXAMPLES, SPAWN_TIMEOUT, run, tempDir } from '../helpers/cli.js';

const DIR = path.join(EXAMPLES, 'systemd');
const SERVICE = path.join(DIR, 'onionctl-rekey.service');
const TIMER = path.join(DIR, 'onionctl-rekey.timer');

type Unit = Map<string, [string, string][]>;

/** systemd's unit file syntax: [Section], Key=Value, # and ; comments, backslash continuation */
function parseUnit(text: string): Unit {
  const out: Unit = new Map();
  let section: [string, string][] | undefined;
  const lines = text.replace(/\\\n/g, ' ').split('\n');
  lines.forEach((raw, i) => {
    const l = raw.trim();
    if (l === '' || l.startsWith('#') || l.startsWith(';')) return;
    const s = /^\[([A-Za-z]+)\]$/.exec(l);
    if (s) {
      if (out.has(s[1]!)) throw new Error(`line ${i + 1}: section [${s[1]}] twice`);
      out.set(s[1]!, (section = []));
      return;
    }
    const kv = /^([A-Za-z][A-Za-z0-9]*)=(.*)$/.exec(l);
    if (!kv) throw new Error(`line ${i + 1}: not Key=Value: ${l}`);
    if (!section) throw new Error(`line ${i + 1}: ${kv[1]} outside a section`);
    section.push([kv[1]!, kv[2]!.trim()]);
  });
  return out;
}

const values = (u: Unit, section: string, key: string) => (u.get(section) ?? []).filter(([k]) => k === key).map(([, v]) => v);

/** "300s", "5min", "2min 30s", "300" -> seconds (the systemd.time(7) spans the units use) */
function seconds(span: string): number {
  const units: Record<string, number> = { s: 1, sec: 1, m: 60, min: 60, h: 3600, hr: 3600 };
  let total = 0;
  for (const part of span.trim().split(/\s+/)) {
    const m = /^(\d+)(s|sec|m|min|h|hr)?$/.exec(part);
    if (!m) throw new Error(`not a time span: ${span}`);
    total += Number(m[1]) * units[m[2] ?? 's']!;
  }
  return total;
}

/** ExecStart lines, commented-out ones included (the optional rotate), as argv without systemd's prefixes */
function execStarts(text: string): { argv: string[]; enabled: boolean }[] {
  return text
    .split('\n')
    .map((l) => /^(#?)ExecStart=[-@:+!]*(.*)$/.exec(l.trim()))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ argv: m[2]!.trim().split(/\s+/), enabled: m[1] === '' }));
}

const hasSystemdAnalyze = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].some((p) => existsSync(p));

describe('examples/systemd: the rekey service and timer', () => {
  const serviceText = readFileSync(SERVICE, 'utf8');
  const timerText = readFileSync(TIMER, 'utf8');

  test('both files are unit files with the sections and keys a oneshot service and its timer need', () => {
    const s = parseUnit(serviceText);
    const t = parseUnit(timerText);
    expect([...s.keys()]).toEqual(['Unit', 'Service']);
    expect([...t.keys()]).toEqual(['Unit', 'Timer', 'Install']);
    expect(values(s, 'Service', 'Type')).toEqual(['oneshot']);
    expect(values(s, 'Service', 'ExecStart').length).toBeGreaterThan(0);
    expect(values(t, 'Install', 'WantedBy')).toEqual(['timers.target']);
    // the timer starts the service of its own name (no Unit= pointing elsewhere)
    expect(values(t, 'Timer', 'Unit')).toEqual([]);
    expect(path.basename(TIMER, '.timer')).toBe(path.basename(SERVICE, '.service'));
  });

  test('the timer runs the service every REKEY_TIMER_SECONDS (src/keys/lifetimes.ts)', () => {
    const t = parseUnit(timerText);
    const period = [...values(t, 'Timer', 'OnUnitActiveSec'), ...values(t, 'Timer', 'OnUnitInactiveSec')];
    expect(period.map(seconds)).toEqual([REKEY_TIMER_SECONDS]);
    expect(values(t, 'Timer', 'OnBootSec').length).toBe(1);
  });

  test('the service runs `onionctl rekey TOPOLOGY --due` (and, commented out, `rotate --max-age`) with options those commands have', async () => {
    const cmds = execStarts(serviceText);
    const enabled = cmds.filter((c) => c.enabled);
    expect(enabled.map((c) => c.argv.slice(1, 4))).toEqual([['rekey', '/etc/onionctl/topology.yaml', '--due']]);
    expect(cmds.some((c) => !c.enabled && c.argv[1] === 'rotate' && c.argv.includes('--max-age'))).toBe(true);
    for (const c of cmds) {
      expect(path.isAbsolute(c.argv[0]!)).toBe(true);
      expect(path.basename(c.argv[0]!)).toBe('onionctl');
      const help = await run([c.argv[1]!, '--help']);
      expect(help.code).toBe(0);
      for (const opt of c.argv.filter((a) => a.startsWith('--'))) expect({ command: c.argv[1], opt, listed: help.stdout.includes(`${opt} `) || help.stdout.includes(`${opt}\n`) }).toEqual({ command: c.argv[1], opt, listed: true });
      // a duration onionctl accepts
      const i = c.argv.indexOf('--max-age');
      if (i >= 0) expect(c.argv[i + 1]).toMatch(/^\d+(s|m|min|h|d)$/);
    }
  }, SPAWN_TIMEOUT);

  (hasSystemdAnalyze ? test : test.skip)('systemd-analyze verify accepts both files without a warning', async () => {
    // verify checks that ExecStart's program exists: point it at the onionctl built with these tests
    const dir = await tempDir('onionctl-units-');
    try {
      await fs.writeFile(path.join(dir, 'onionctl-rekey.service'), serviceText.replaceAll('/usr/local/bin/onionctl', BIN));
      await fs.writeFile(path.join(dir, 'onionctl-rekey.timer'), timerText);
      const r = await promisify(execFile)('systemd-analyze', ['verify', path.join(dir, 'onionctl-rekey.service'), path.join(dir, 'onionctl-rekey.timer')]).then(
        (x) => ({ code: 0, ...x }),
        (e: { code?: number; stdout?: string; stderr?: string }) => ({ code: e.code ?? 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' }),
      );
      // only what it says about these two files counts (a host without a running systemd adds its own notes)
      const ours = `${r.stdout}\n${r.stderr}`.split('\n').filter((l) => l.includes('onionctl-rekey'));
      expect({ code: r.code, ours }).toEqual({ code: 0, ours: [] });
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  }, SPAWN_TIMEOUT);
});
