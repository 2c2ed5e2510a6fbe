/**
 * The error hierarchy (src/util/errors.ts): the CLI reports by an error's kind, never by its
 * class name, so a renamed class or a foreign error that happens to share a name cannot change an
 * exit code.
 */
import { describe, expect, test } from '@jest/globals';
import { reportError } from '../../src/cli/main.js';
import { LabError } from '../../src/lab/errors.js';
import { GuestBootError, UmlNotFoundError } from '../../src/lab/uml.js';
import { AddrError } from '../../src/net/addr.js';
import { PathError } from '../../src/pathselect/select.js';
import { SavedPlanError } from '../../src/plan/planfile.js';
import { ReadbackError } from '../../src/readback/records.js';
import { TransportError } from '../../src/remote/transport.js';
import { PlanError } from '../../src/state/reconcile.js';
import { TopologyError } from '../../src/topology/diagnostics.js';
import { JsonError } from '../../src/util/json.js';
import { OnionctlError, UserError } from '../../src/util/errors.js';

function report(e: unknown): { code: number; text: string } {
  let text = '';
  const code = reportError(e, (s) => (text += s));
  return { code, text };
}

describe('every error onionctl throws on purpose', () => {
  const reported: [string, OnionctlError][] = [
    ['UserError', new UserError('bad option')],
    ['PlanError', new PlanError('SPI space exhausted')],
    ['PathError', new PathError('web', 'exit', 'no exit admits it')],
    ['SavedPlanError', new SavedPlanError('is forged')],
    ['TransportError', new TransportError('or1', 'unreachable')],
    ['LabError', new LabError('no namespace')],
    ['UmlNotFoundError', new UmlNotFoundError('no linux.uml')],
    ['GuestBootError', new GuestBootError('did not boot', 'tail')],
  ];
  test.each(reported)('%s is an OnionctlError reported as an error, exit 1', (name, e) => {
    expect(e).toBeInstanceOf(OnionctlError);
    expect(e).toBeInstanceOf(Error);
    expect(e.name).toBe(name);
    const r = report(e);
    expect(r.code).toBe(1);
    expect(r.text).toBe(`onionctl: error: ${e.message}\n`);
  });

  test('the lab has one LabError: the guest errors are LabErrors', () => {
    expect(new GuestBootError('x', 'y')).toBeInstanceOf(LabError);
    expect(new UmlNotFoundError('x').kind).toBe('lab');
  });

  test('cause is kept', () => {
    const inner = new Error('EACCES');
    expect(new UserError('cannot read', { cause: inner }).cause).toBe(inner);
  });

  const uncaught: [string, OnionctlError][] = [
    ['AddrError', new AddrError('"x" is not an IPv4 address')],
    ['ReadbackError', new ReadbackError('unknown line', 3)],
    ['JsonError', new JsonError('nested too deeply')],
  ];
  test.each(uncaught)('%s, meant to be caught by its caller, is a bug when it reaches the top (exit 70)', (_n, e) => {
    expect(e.kind).toBe('uncaught');
    const r = report(e);
    expect(r.code).toBe(70);
    expect(r.text).toContain('internal error');
  });

  test('a topology error prints its diagnostics and a count', () => {
    const e = new TopologyError([{ file: 't.yaml', line: 3, col: 5, message: 'unknown key "x"' }]);
    const r = report(e);
    expect(r.code).toBe(1);
    expect(r.text).toContain('t.yaml:3:5: unknown key "x"');
    expect(r.text).toContain('1 error in topology');
  });
});

describe('classification is by kind, not by name', () => {
  test('a foreign error named like one of ours is an internal error', () => {
    for (const name of ['LabError', 'TransportError', 'UserError', 'GuestBootError']) {
      const e = new Error('from a library');
      e.name = name;
      expect(report(e).code).toBe(70);
    }
  });
});
