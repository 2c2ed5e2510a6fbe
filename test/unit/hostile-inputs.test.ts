/**
 * The hostile-input corpus (test/fixtures/hostile, written by make.py there; cases.json says what
 * each file must give). What a router answers to the read-back, and what someone who can edit a
 * file puts in a saved plan, a state file or a key store:
 *   - the outcome is the one the case names (refused with its reason, or accepted);
 *   - nothing but onionctl's own errors comes out (no TypeError, RangeError, stack overflow);
 *   - every message, change line and conflict is terminal-safe (no escape, bidi or control
 *     character reaches the operator's terminal) and bounded.
 */
import { describe, expect, test } from '@jest/globals';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { diffNode, findConflicts } from '../../src/diff/diff.js';
import { describeChange } from '../../src/diff/summary.js';
import { KdfKeySource } from '../../src/keys/kdf.js';
import { computePlan } from '../../src/plan/plan.js';
import { openPlan, planMacKey, SavedPlanError } from '../../src/plan/planfile.js';
import { rngFactory } from '../../src/pathselect/rng.js';
import { observeNode } from '../../src/readback/observed.js';
import { ReadbackError } from '../../src/readback/records.js';
import { parseReadOutput } from '../../src/remote/read.js';
import { TransportError } from '../../src/remote/transport.js';
import { emptyState } from '../../src/state/model.js';
import { loadKeyStore, loadState } from '../../src/store/files.js';
import { UserError } from '../../src/util/errors.js';
import { isTerminalSafe } from '../../src/util/text.js';
import { ROOT } from '../helpers/cli.js';
import { exampleNet } from '../helpers/net.js';
import { poolsOf } from '../helpers/readback.js';

interface Case {
  kind: 'router' | 'plan' | 'state' | 'keystore';
  file: string;
  expect: 'refused' | 'accepted';
  match?: string;
  note: string;
}

const DIR = path.join(ROOT, 'test/fixtures/hostile');
const CASES = JSON.parse(readFileSync(path.join(DIR, 'cases.json'), 'utf8')) as Case[];
const OURS = [UserError, SavedPlanError, ReadbackError, TransportError];
const MAX_MESSAGE = 4000;

const net = exampleNet('three-mixes.yaml');
const plan = computePlan({ net, state: emptyState('c3'.repeat(32)), rngFor: rngFactory('hostile'), now: '2026-01-01T00:00:00Z' });
const keys = new KdfKeySource(Buffer.alloc(32, 7), plan.state.salt);
const macKey = planMacKey(Buffer.alloc(32, 7));
const work = mkdtempSync(path.join(tmpdir(), 'onionctl-hostile-'));

/** runs one case; returns the texts it would show the operator */
async function runCase(c: Case): Promise<string[]> {
  const bytes = readFileSync(path.join(DIR, c.file));
  const text = bytes.toString('utf8');
  switch (c.kind) {
    case 'router': {
      const read = parseReadOutput(text, 'or1');
      const observed = observeNode('or1', read.outputs, { pools: poolsOf(net) });
      observed.sysctls = Object.fromEntries(read.sysctls);
      const cfg = plan.configs.get('or1')!;
      return [...diffNode(cfg, observed, { keys }).map(describeChange), ...findConflicts(cfg, observed).map((x) => `${x.kind} ${x.key}: ${x.reason}`)];
    }
    case 'plan':
      openPlan(text, macKey, { now: new Date(), maxAgeMs: 3600_000 });
      return [];
    case 'state':
    case 'keystore': {
      const f = path.join(work, path.basename(c.file));
      writeFileSync(f, bytes, { mode: 0o600 });
      if (c.kind === 'state') await loadState(f);
      else await loadKeyStore(f);
      return [];
    }
  }
}

describe('the hostile-input corpus', () => {
  test('has cases of every kind, each file present', () => {
    expect(new Set(CASES.map((c) => c.kind))).toEqual(new Set(['router', 'plan', 'state', 'keystore']));
    expect(CASES.length).toBeGreaterThanOrEqual(40);
  });

  test.each(CASES.map((c) => [c.file, c] as const))('%s', async (_f, c) => {
    let shown: string[] = [];
    let error: unknown;
    try {
      shown = await runCase(c);
    } catch (e) {
      error = e;
    }
    if (error !== undefined) {
      const ours = OURS.some((k) => error instanceof k);
      const msg = (error as Error).message ?? String(error);
      expect({ file: c.file, ours, name: (error as Error).name }).toEqual({ file: c.file, ours: true, name: expect.any(String) });
      expect({ file: c.file, safe: isTerminalSafe(msg), short: msg.length <= MAX_MESSAGE }).toEqual({ file: c.file, safe: true, short: true });
      expect({ file: c.file, outcome: 'refused' }).toEqual({ file: c.file, outcome: c.expect });
      if (c.match) expect(msg).toMatch(new RegExp(c.match));
    } else {
      expect({ file: c.file, outcome: 'accepted' }).toEqual({ file: c.file, outcome: c.expect });
    }
    for (const line of shown) expect({ file: c.file, line: line.slice(0, 200), safe: isTerminalSafe(line) }).toEqual({ file: c.file, line: line.slice(0, 200), safe: true });
  });
});
