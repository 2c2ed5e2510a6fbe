/** SA identities (src/keys/sa-id.ts): one text form, written and read in one place. */
import { describe, expect, test } from '@jest/globals';
import { formatSaId, parseSaId, type SaId } from '../../src/keys/sa-id.js';

describe('SA identities', () => {
  // key derivation hashes this text: it must never change for an existing SA
  const CASES: [SaId, string][] = [
    [{ kind: 'overlay', from: 'or1', to: 'or2' }, 'link:or1>or2'],
    [{ kind: 'telescope', circuit: 'web', generation: 1, hop: 2, dir: 'fwd' }, 'circuit:web:g1:hop2:fwd'],
    [{ kind: 'telescope', circuit: 'dns_v-2', generation: 12, hop: 3, dir: 'rev' }, 'circuit:dns_v-2:g12:hop3:rev'],
  ];
  test.each(CASES)('%j is written as %s and read back', (id, text) => {
    expect(formatSaId(id)).toBe(text);
    expect(parseSaId(text)).toEqual(id);
  });

  test.each([
    'link:or1',
    'link:or1>',
    'link:>or2',
    'link:or1>or2>or3',
    'circuit:web:g0:hop1:fwd',
    'circuit:web:g1:hop0:fwd',
    'circuit:web:g1:hop1:up',
    'circuit:web:hop1:fwd',
    'circuit:Web:g1:hop1:fwd',
    ' link:or1>or2',
    'link:or1>or2\n',
    '',
  ])('%j is no SA identity', (text) => {
    expect(parseSaId(text)).toBeUndefined();
  });
});
