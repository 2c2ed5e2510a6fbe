/**
 * The topology file, in process: parsing, the zod schema (strict everywhere), the semantic
 * checks, and where each error points (file:line:col plus the source line and a caret).
 * The same fixtures go through the built CLI in cli.test.ts.
 */
import { describe, expect, test } from '@jest/globals';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parseDocument } from 'yaml';
import { SourceText, TopologyError, formatDiagnostic, formatDiagnosticHeader, type Diagnostic } from '../../src/topology/diagnostics.js';
import { formatPath, locate } from '../../src/topology/load.js';
import { parseBuildableTopology } from '../../src/pathselect/buildable.js';
import { BAD_CASES } from '../helpers/bad-fixtures.js';
import { BAD_FIXTURES, EXAMPLES } from '../helpers/cli.js';

/** The diagnostics parseTopology throws for `text`; fails the test if it does not throw one. */
function diagnosticsOf(text: string, file = 't.yaml'): Diagnostic[] {
  try {
    parseBuildableTopology(text, file);
  } catch (e) {
    if (e instanceof TopologyError) return e.diagnostics;
    throw e;
  }
  throw new Error('expected a TopologyError, but the topology was accepted');
}

const short = (d: Diagnostic) => `${d.line}:${d.col}: ${d.message}`;

/** A valid topology (the same as test/fixtures/bad's base); line numbers below refer to it. */
const BASE = `version: 1
hops: 3
operators:
  - name: north
  - name: middle
  - name: south
routers:
  - name: or1
    operator: north
    underlay: { interface: eth0, address: 198.51.100.11/24 }
    pool: 100.64.1.0/24
  - name: or2
    operator: middle
    underlay: { interface: eth0, address: 198.51.100.12/24 }
    pool: 100.64.2.0/24
  - name: or3
    operator: south
    underlay: { interface: eth0, address: 198.51.100.13/24 }
    pool: 100.64.3.0/24
    exit:
      allow:
        - to: 203.0.113.0/24
clients:
  - name: alice
    underlay: { interface: eth0, address: 198.51.100.10/24 }
    entry: [or1]
links:
  - [or1, or2]
  - [or2, or3]
circuits:
  - name: web
    client: alice
    to: [203.0.113.80/32]
`;

/** BASE with whole lines replaced (1-based line -> new text; '' deletes nothing, use null to delete). */
function edit(lines: Record<number, string | null>, append = ''): string {
  const src = BASE.split('\n');
  for (const [n, v] of Object.entries(lines)) {
    if (src[Number(n) - 1] === undefined) throw new Error(`BASE has no line ${n}`);
    src[Number(n) - 1] = v === null ? '\u0000' : v;
  }
  return src.filter((l) => l !== '\u0000').join('\n') + append;
}

describe('valid topologies', () => {
  test('BASE is valid, and defaults are filled in', () => {
    const { topology } = parseBuildableTopology(BASE, 'base.yaml');
    expect(topology.hops).toBe(3);
    expect(topology.crypto).toBe('aes-gcm');
    expect(topology.keys).toEqual({ source: 'kdf' });
    expect(topology.nat).toBe('iptables');
    expect(topology.routers.map((r) => r.name)).toEqual(['or1', 'or2', 'or3']);
    expect(topology.routers[2]!.exit!.allow[0]).toEqual({ to: '203.0.113.0/24', proto: 'any' });
  });

  const examples = ['three-mixes.yaml', 'large.yaml'].filter((f) => existsSync(path.join(EXAMPLES, f)));
  test.each(examples)('examples/%s is valid', (f) => {
    const text = readFileSync(path.join(EXAMPLES, f), 'utf8');
    const { topology } = parseBuildableTopology(text, f);
    expect(topology.routers.length).toBeGreaterThanOrEqual(3);
    expect(topology.circuits.length).toBeGreaterThanOrEqual(1);
  });

  test('CRLF line endings are accepted', () => {
    expect(() => parseBuildableTopology(BASE.replace(/\n/g, '\r\n'), 'crlf.yaml')).not.toThrow();
  });
});

describe('test/fixtures/bad: every fixture fails with exactly the expected located errors', () => {
  const files = readdirSync(BAD_FIXTURES)
    .filter((f) => f.endsWith('.yaml'))
    .map((f) => f.replace(/\.yaml$/, ''))
    .sort();

  test('every fixture has an expectation, and every expectation a fixture', () => {
    expect(files).toEqual(Object.keys(BAD_CASES).sort());
    expect(files.length).toBeGreaterThanOrEqual(25);
  });

  test.each(files)('%s', (name) => {
    const file = `${name}.yaml`;
    const text = readFileSync(path.join(BAD_FIXTURES, file), 'utf8');
    const diags = diagnosticsOf(text, file);
    expect(diags.map(short)).toEqual(BAD_CASES[name]);
    const lines = text.split('\n');
    for (const d of diags) {
      expect(d.file).toBe(file);
      // the quoted source line is the file's line, and the column lies inside it
      expect(d.source).toBe(lines[d.line - 1]);
      expect(d.col).toBeGreaterThanOrEqual(1);
      expect(d.col).toBeLessThanOrEqual(Math.max(1, d.source!.length));
    }
  });
});

describe('what the messages say', () => {
  test('hops 5 explains the kernel depth limit; the same check applies to a circuit', () => {
    const d = diagnosticsOf(edit({}, '    hops: 5\n'));
    expect(d.map(short)).toEqual([expect.stringMatching(/^34:11: circuits\[0\]\.hops: hops must be at most 4: .*5 nested tunnel layers/)]);
  });

  test('a repeated operator names the decoupling constraint', () => {
    // or3 joins operator north: the only path or1 -> or2 -> or3 has two hops run by north
    const d = diagnosticsOf(edit({ 17: '    operator: north' }));
    expect(d.map((x) => x.message)).toEqual([expect.stringContaining('(decoupling)')]);
  });

  test('distinct constraints can be set for the whole file and are blamed on each circuit', () => {
    const d = diagnosticsOf(edit({ 2: 'hops: 3\ndistinct: { subnets16: true }' }));
    expect(d.map(short)).toEqual(['32:5: circuits[0]: circuit "web" cannot be built: no path has its 3 hops in distinct /16 networks']);
  });

  test('a router without a country fails distinct countries, and the message says why', () => {
    const d = diagnosticsOf(edit({}, '    distinct: { countries: true }\n'));
    expect(d[0]!.message).toContain('every router on a path needs a "country"');
  });

  test('a wrong type is not called a missing key, and null is named', () => {
    const d = diagnosticsOf(edit({ 15: '    pool:', 26: '    entry: or1', 2: 'hops: "3"' }));
    expect(d.map(short)).toEqual([
      '2:7: hops: expected number, got "3"',
      '15:10: routers[1].pool: expected string, got null',
      '26:12: clients[0].entry: expected array, got "or1"',
    ]);
  });

  test('a bad enum value lists the allowed ones', () => {
    const d = diagnosticsOf(edit({ 2: 'hops: 3\ncrypto: aes-ccm' }));
    expect(d.map(short)).toEqual(['3:9: crypto: expected one of "aes-gcm", "aes-cbc-hmac-sha1", got "aes-ccm"']);
  });

  test('an empty file lists the required keys, without "undefined"', () => {
    const d = diagnosticsOf('');
    expect(d.map(short)).toEqual([
      '1:1: version: missing required key (1)',
      '1:1: operators: missing required key (array)',
      '1:1: routers: missing required key (array)',
    ]);
    for (const x of d) expect(x.message).not.toContain('undefined');
  });

  test('a file that is not a mapping', () => {
    expect(diagnosticsOf('- a\n- b\n').map(short)).toEqual(['1:1: expected object, got a list']);
  });
});

describe('several errors are all reported, sorted by line', () => {
  test('schema errors in a file whose sections are in another order than the schema', () => {
    // circuits before routers in the file; zod reports routers first
    const text = [
      'version: 1',
      'circuits:',
      '  - name: web',
      '    client: alice',
      '    to: [203.0.113.80/24]',
      '    colour: red',
      'operators: [{ name: north }]',
      'routers:',
      '  - name: Or1',
      '    operator: north',
      '    underlay: { interface: eth0, address: 198.51.100.11/24, speed: 10 }',
      '    pool: 100.64.1.0/24',
      '',
    ].join('\n');
    expect(diagnosticsOf(text).map(short)).toEqual([
      '5:10: circuits[0].to[0]: "203.0.113.80/24" has host bits set; did you mean 203.0.113.0/24?',
      '6:5: circuits[0].colour: unknown key "colour"',
      '9:11: routers[0].name: names must start with a lower-case letter and contain only a-z, 0-9, "_" and "-" (at most 31 characters)',
      '11:61: routers[0].underlay.speed: unknown key "speed"',
    ]);
  });

  test('unknown keys are refused at every level', () => {
    const text = edit(
      {
        1: 'version: 1\nkeys: { source: kdf, rotate: daily }',
        2: 'hops: 3\ndistinct: { country: true }\nrouteOptions: { quickack: true, fastopen: true }',
        4: '  - name: north\n    url: https://example.org',
        10: '    underlay: { interface: eth0, address: 198.51.100.11/24, vlan: 7 }\n    ssh: { host: or1.example, user: root, password: x }',
        20: '    exit:\n      nat: iptables\n      masquerade: true',
        25: '    underlay: { interface: eth0, address: 198.51.100.10/24 }\n    gateway: true',
      },
      '    priority: 1\n',
    );
    expect(diagnosticsOf(text).map(short)).toEqual([
      '2:22: keys.rotate: unknown key "rotate"',
      '4:13: distinct.country: unknown key "country"',
      '5:33: routeOptions.fastopen: unknown key "fastopen"',
      '8:5: operators[0].url: unknown key "url"',
      '14:61: routers[0].underlay.vlan: unknown key "vlan"',
      '15:43: routers[0].ssh.password: unknown key "password"',
      '27:7: routers[2].exit.masquerade: unknown key "masquerade"',
      '33:5: clients[0].gateway: unknown key "gateway"',
      '42:5: circuits[0].priority: unknown key "priority"',
    ]);
  });

  test('semantic errors of different kinds in one file', () => {
    const text = edit(
      {
        6: '  - name: south\n  - name: north', // duplicate operator
        14: '    underlay: { interface: eth0, address: 198.51.100.11/24 }', // address of or1 again
        20: '    exit:\n      interface: eth1', // an exit interface without an address
        29: '  - [or2, or3]\n  - [or3, or2]\n  - [or1, or1]', // duplicate link, self link
      },
      '    to: [100.64.2.0/28]\n  - name: web\n    client: bob\n    to: [192.0.2.0/24]\n',
    ).replace('    to: [203.0.113.80/32]\n', '');
    expect(diagnosticsOf(text).map(short)).toEqual([
      '7:11: operators[3].name: duplicate operator name "north" (first at operators[0])',
      '15:43: routers[1].underlay.address: address 198.51.100.11 is already used at routers.0.underlay.address',
      '22:7: routers[2].exit: exit interface "eth1" differs from the underlay interface, so the exit needs its own "address"',
      '32:5: links[2]: duplicate link or3 - or2 (first at links[1])',
      '33:5: links[3]: a link needs two different nodes, got "or1" twice',
      '37:10: circuits[0].to[0]: destination 100.64.2.0/28 overlaps the pool of or2 (100.64.2.0/24)',
      '38:11: circuits[1].name: duplicate circuit name "web" (first at circuits[0])',
      '39:13: circuits[1].client: unknown client "bob" (known: alice)',
    ]);
  });

  test('path eligibility is checked for every circuit', () => {
    const text = edit({}, '  - name: far\n    client: alice\n    to: [192.0.2.0/24]\n  - name: long\n    client: alice\n    hops: 4\n    to: [203.0.113.96/27]\n');
    expect(diagnosticsOf(text).map(short)).toEqual([
      '34:5: circuits[1]: circuit "far" cannot be built: no exit admits all of the circuit\'s destinations (exits: or3); widen an exit\'s "allow" list',
      '37:5: circuits[2]: circuit "long" cannot be built: no path of 4 distinct routers starts at an entry router of alice, follows overlay links and ends at an exit that admits the destinations (or3); add links or entry routers',
    ]);
  });

  test('path eligibility is not checked (no follow-on noise) while references are broken', () => {
    const text = edit({ 13: '    operator: midle' }, '  - name: far\n    client: alice\n    to: [192.0.2.0/24]\n');
    expect(diagnosticsOf(text).map(short)).toEqual(['13:15: routers[1].operator: unknown operator "midle" (known: north, middle, south)']);
  });
});

describe('diagnostics formatting', () => {
  test('header, source line and caret', () => {
    const src = new SourceText('topo.yaml', 'version: 1\nrouters:\n  - name: or1\n');
    const d = src.at(src.text.indexOf('or1'), 'routers[0].name: bad');
    expect(d).toMatchObject({ file: 'topo.yaml', line: 3, col: 11, source: '  - name: or1' });
    expect(formatDiagnosticHeader(d)).toBe('topo.yaml:3:11: routers[0].name: bad');
    expect(formatDiagnostic(d)).toBe(['topo.yaml:3:11: routers[0].name: bad', ' 3 |   - name: or1', '   |           ^'].join('\n'));
  });

  test('the caret stays under the column when the line has tabs, and the gutter fits wide line numbers', () => {
    const text = 'x\n'.repeat(99) + '\tkey:\tvalue\n';
    const src = new SourceText('t.yaml', text);
    const d = src.at(text.indexOf('value'), 'm');
    expect(d.line).toBe(100);
    expect(d.col).toBe(7);
    expect(formatDiagnostic(d).split('\n')).toEqual(['t.yaml:100:7: m', ' 100 | \tkey:\tvalue', '     | \t    \t^']);
  });

  test('CRLF sources: the quoted line has no carriage return', () => {
    const src = new SourceText('t.yaml', 'a: 1\r\nb: 2\r\n');
    const d = src.at(8, 'm');
    expect(d).toMatchObject({ line: 2, col: 3, source: 'b: 2' });
  });

  test('offsets past the end land on the last line', () => {
    const src = new SourceText('t.yaml', 'a: 1\nb: 2');
    expect(src.at(999, 'm')).toMatchObject({ line: 2, col: 5, source: 'b: 2' });
  });

  test('a TopologyError message is the list of headers', () => {
    const e = new TopologyError([
      { file: 'a.yaml', line: 1, col: 2, message: 'one' },
      { file: 'a.yaml', line: 3, col: 4, message: 'two' },
    ]);
    expect(e.message).toBe('a.yaml:1:2: one\na.yaml:3:4: two');
  });
});

describe('locate and formatPath', () => {
  const text = 'version: 1\nrouters:\n  - name: or1\n    underlay: { interface: eth0, address: 1.2.3.4/24 }\nlinks:\n  - [or1, or2]\n';
  const doc = parseDocument(text);
  const at = (off: number) => new SourceText('t', text).at(off, '');

  test('a node inside a flow mapping and inside a flow sequence', () => {
    expect(at(locate(doc, ['routers', 0, 'underlay', 'address']))).toMatchObject({ line: 4, col: 43 });
    expect(at(locate(doc, ['links', 0, 1]))).toMatchObject({ line: 6, col: 11 });
  });

  test('an unknown key is located at the key itself', () => {
    expect(at(locate(doc, ['routers', 0], 'underlay'))).toMatchObject({ line: 4, col: 5 });
  });

  test('a missing key is located at the deepest node that exists', () => {
    expect(at(locate(doc, ['routers', 0, 'pool']))).toMatchObject({ line: 3, col: 5 });
    expect(at(locate(doc, ['routers', 7, 'pool']))).toMatchObject({ line: 3, col: 3 });
  });

  test('formatPath', () => {
    expect(formatPath(['routers', 1, 'underlay', 'address'])).toBe('routers[1].underlay.address');
    expect(formatPath(['links', 2, 0])).toBe('links[2][0]');
    expect(formatPath([])).toBe('');
  });
});

describe('ssh.hostKey is checked at validate time (a key that is not a key never reaches the SSH handshake)', () => {
  const withKey = (key: string) => edit({ 11: `    pool: 100.64.1.0/24\n    ssh: { hostKey: ${JSON.stringify(key)} }` });
  const good = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl';

  test('an ed25519 key (with or without a comment) is accepted', () => {
    expect(() => parseBuildableTopology(withKey(good), 'k.yaml')).not.toThrow();
    expect(() => parseBuildableTopology(withKey(`${good} root@or1`), 'k.yaml')).not.toThrow();
  });

  test.each([
    ['garbage', /a host key is "TYPE BASE64"/],
    ['ssh-dss AAAAB3NzaC1kc3MAAACBAP', /host key type "ssh-dss" is not one of ssh-ed25519/],
    ['ssh-ed25519 not*base64', /is not base64/],
    // a valid ecdsa blob under the ed25519 name
    ['ssh-ed25519 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY=', /is not a ssh-ed25519 key/],
    ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0d', /wrong length/],
  ])('%s: an error at the hostKey value, with line and column', (key, msg) => {
    const d = diagnosticsOf(withKey(key));
    expect(d).toHaveLength(1);
    expect(short(d[0]!)).toMatch(new RegExp(`^12:\\d+: .*${msg.source}`));
  });
});
