/**
 * src/trust/directory.ts: the directory lists the mixes' public part and nothing of clients or
 * circuits; a client accepts it only with valid signatures from a majority of the authorities
 * it trusts, each counted once, in canonical form and inside its validity window.
 */
import { describe, expect, test } from '@jest/globals';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { canonicalJson, directoryBody, DirectoryRejected, ed25519Private, ed25519PublicRaw, signDirectory, verifyDirectory, type SignedDirectory } from '../../src/trust/directory.js';
import { keyPairFromSecret } from '../../src/trust/ntor3.js';
import { examplePath, netFromYaml } from '../helpers/net.js';

/** deterministic test keys (never keys of anything real) */
const seed = (label: string) => createHash('sha256').update(`onionctl test key ${label}`).digest();
const auth = (n: string) => ({ name: n, priv: ed25519Private(seed(`auth ${n}`)) });
const AUTHS = ['north', 'middle', 'south'].map(auth);
const TRUSTED = AUTHS.map((a) => ({ name: a.name, key: ed25519PublicRaw(a.priv) }));
const NOW = '2026-12-08T00:00:00Z';

const net = netFromYaml(readFileSync(examplePath('three-mixes.yaml'), 'utf8'));
const keys = new Map([...net.routers.keys()].map((r) => [r, { identity: ed25519PublicRaw(ed25519Private(seed(`id ${r}`))), onionKey: keyPairFromSecret(seed(`onion ${r}`)).public }]));
const body = directoryBody(net, keys, { validAfter: '2026-12-07T00:00:00Z', validUntil: '2026-12-09T00:00:00Z', agentPort: 4711 });

function signedBy(names: string[], b = body): SignedDirectory {
  const sigs = names.map((n) => signDirectory(b, n, AUTHS.find((a) => a.name === n)!.priv));
  return { body: sigs[0]?.text ?? canonicalJson(b), signatures: sigs.map((s) => s.signature) };
}

describe('the directory body', () => {
  test('lists every mix with its keys, address, pool, operator, exit policy and mix neighbours', () => {
    expect(body.mixes.map((m) => m.name)).toEqual(['or1', 'or2', 'or3']);
    const or1 = body.mixes[0]!;
    expect(or1).toMatchObject({ address: '198.51.100.11', pool: '100.64.1.0/24', operator: 'north', country: 'DE', agentPort: 4711, neighbours: ['or2'] });
    expect(or1.identity).toBe(keys.get('or1')!.identity.toString('hex'));
    expect(body.mixes[2]!.exit!.allow).toContainEqual({ to: '203.0.113.0/24', proto: 'tcp', ports: [80, 443] });
    expect(body.mixes[1]!.exit).toBeUndefined();
  });

  test('holds nothing of clients or circuits', () => {
    const text = canonicalJson(body);
    for (const secretish of ['alice', '198.51.100.10', 'web', '203.0.113.80']) expect(text).not.toContain(secretish);
  });

  test('is deterministic and canonical: the same input gives the same bytes, keys sorted', () => {
    const again = directoryBody(net, keys, { validAfter: '2026-12-07T00:00:00Z', validUntil: '2026-12-09T00:00:00Z', agentPort: 4711 });
    expect(canonicalJson(again)).toBe(canonicalJson(body));
    expect(canonicalJson({ b: 1, a: [{ d: 2, c: 'x' }] })).toBe('{"a":[{"c":"x","d":2}],"b":1}');
  });

  test('a router without keys is an error, not a directory without it', () => {
    const partial = new Map([...keys].filter(([n]) => n !== 'or2'));
    expect(() => directoryBody(net, partial, { validAfter: NOW, validUntil: NOW, agentPort: 1 })).toThrow('no identity and onion key for router or2');
  });
});

describe('verifying a directory', () => {
  test('two of three trusted authorities: accepted, the body as signed', () => {
    expect(verifyDirectory(signedBy(['north', 'south']), TRUSTED, NOW)).toEqual(body);
    expect(verifyDirectory(signedBy(['north', 'middle', 'south']), TRUSTED, NOW).mixes).toHaveLength(3);
  });

  test('one of three, or one signature repeated, is not a majority', () => {
    expect(() => verifyDirectory(signedBy(['north']), TRUSTED, NOW)).toThrow('1 valid signature(s) of the 3 trusted authorities; 2 needed');
    const twice = signedBy(['north']);
    twice.signatures.push({ ...twice.signatures[0]! });
    expect(() => verifyDirectory(twice, TRUSTED, NOW)).toThrow(DirectoryRejected);
  });

  test('a signature by a key the client does not trust is not counted, even under a trusted name', () => {
    const rogue = ed25519Private(seed('rogue'));
    const d = signedBy(['north']);
    d.signatures.push(signDirectory(body, 'south', rogue).signature);
    d.signatures.push(signDirectory(body, 'east', rogue).signature);
    expect(() => verifyDirectory(d, TRUSTED, NOW)).toThrow('1 valid signature(s)');
  });

  test('a changed byte of the body, or the same content in another encoding, is refused', () => {
    const d = signedBy(['north', 'south']);
    const tampered = { ...d, body: d.body.replace('198.51.100.12', '198.51.100.99') };
    expect(() => verifyDirectory(tampered, TRUSTED, NOW)).toThrow('0 valid signature(s)');
    const spaced = { ...d, body: JSON.stringify(JSON.parse(d.body), null, 1) };
    expect(() => verifyDirectory(spaced, TRUSTED, NOW)).toThrow('not in canonical form');
    expect(() => verifyDirectory({ ...d, body: '{"version":1' }, TRUSTED, NOW)).toThrow('not JSON');
    expect(() => verifyDirectory({ ...d, body: '{"version":2}' }, TRUSTED, NOW)).toThrow('malformed');
  });

  test('outside its validity window it is refused', () => {
    const d = signedBy(['north', 'south']);
    expect(() => verifyDirectory(d, TRUSTED, '2026-12-06T23:59:59Z')).toThrow('not valid before 2026-12-07T00:00:00Z');
    expect(() => verifyDirectory(d, TRUSTED, '2026-12-09T00:00:00Z')).toThrow('expired at 2026-12-09T00:00:00Z');
    expect(() => verifyDirectory(d, [], NOW)).toThrow('no trusted authorities');
  });
});
