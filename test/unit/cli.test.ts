/**
 * The built CLI (dist/src/cli/bin.js) as a user runs it: exit codes, what goes to stdout and
 * stderr, the files `plan` writes and their modes, that keys never leak into redacted output,
 * and that plans are stable and reproducible. Every run happens in its own temporary directory.
 * Independent runs are started together: each node start costs about 0.2 s.
 */
import { beforeAll, describe, expect, jest, test } from '@jest/globals';
import { createHash } from 'node:crypto';
import { existsSync, promises as fs, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fingerprint } from '../../src/keys/kdf.js';
import { isTerminalSafe } from '../../src/util/text.js';
import { parseBuildableTopology } from '../../src/pathselect/buildable.js';
import { BAD_CASES } from '../helpers/bad-fixtures.js';
import {
  BAD_FIXTURES,
  EXAMPLES,
  ROOT,
  SPAWN_TIMEOUT,
  STACK_LINE,
  exists,
  modeOf,
  readTree,
  run,
  runAll,
  tempDir,
  type RunResult,
} from '../helpers/cli.js';

jest.setTimeout(SPAWN_TIMEOUT);

const THREE = readFileSync(path.join(EXAMPLES, 'three-mixes.yaml'), 'utf8');

/** Inserts text after an anchor that must occur exactly once (so a changed example fails loudly). */
function insertAfter(text: string, edits: [anchor: string, insert: string][]): string {
  for (const [anchor, insert] of edits) {
    const at = text.indexOf(anchor);
    if (at < 0 || text.indexOf(anchor, at + 1) >= 0) throw new Error(`anchor ${JSON.stringify(anchor)} must occur exactly once`);
    text = text.slice(0, at + anchor.length) + insert + text.slice(at + anchor.length);
  }
  return text;
}

/** three-mixes plus or4 (operator west), a mix linked to or2 only, so no circuit can use it. */
const WITH_OR4 = insertAfter(THREE, [
  ['  - name: south\n', '  - name: west\n'],
  ['          proto: icmp\n', '  - name: or4\n    operator: west\n    underlay: { interface: eth0, address: 198.51.100.14/24 }\n    pool: 100.64.4.0/24\n'],
  ['  - [or2, or3]\n', '  - [or2, or4]\n'],
]);

/** three-mixes plus a second exit or4 behind or2 and a circuit "mail" that either exit can carry. */
const TWO_EXITS = insertAfter(WITH_OR4, [['    pool: 100.64.4.0/24\n', '    exit:\n      allow:\n        - to: 203.0.113.0/24\n']]) + '  - name: mail\n    client: alice\n    to: [203.0.113.25/32]\n';

async function dirWith(files: Record<string, string>): Promise<string> {
  const dir = await tempDir();
  for (const [name, content] of Object.entries(files)) await fs.writeFile(path.join(dir, name), content);
  return dir;
}

function expectClean(r: RunResult): void {
  expect(r.stderr).not.toMatch(STACK_LINE);
  expect(r.stdout).not.toMatch(STACK_LINE);
}

function expectOk(r: RunResult): void {
  if (r.code !== 0) throw new Error(`onionctl ${r.args.join(' ')} exited ${r.code}:\n${r.stderr}`);
  expectClean(r);
}

/** Every key in a --with-keys tree: the long hex strings after 0x (SPIs and reqids are 8 digits). */
function keysIn(tree: Map<string, Buffer>): string[] {
  const keys = new Set<string>();
  for (const content of tree.values()) for (const m of content.toString('utf8').matchAll(/\b0x([0-9a-f]{32,})\b/g)) keys.add(m[1]!);
  return [...keys].sort();
}

const nodeFiles = (nodes: string[], fw: (n: string) => string = () => 'iptables') =>
  [...nodes.flatMap((n) => [`${n}.ip`, `${n}.${fw(n)}`, `${n}.sysctl`]), '.onionctl-files'].sort();

// ---------------------------------------------------------------------------------------------

describe('validate: each bad fixture through the built CLI', () => {
  const names = Object.keys(BAD_CASES).sort();
  const results = new Map<string, RunResult>();
  let dir = '';

  beforeAll(async () => {
    dir = await tempDir();
    for (const n of names) await fs.copyFile(path.join(BAD_FIXTURES, `${n}.yaml`), path.join(dir, `${n}.yaml`));
    const rs = await runAll(names.map((n) => ({ args: ['validate', `${n}.yaml`], cwd: dir })));
    rs.forEach((r, i) => results.set(names[i]!, r));
  });

  test.each(names)('%s: exit 1, exact file:line:col headers, source line and caret, no stack', (name) => {
    const r = results.get(name)!;
    const file = `${name}.yaml`;
    const lines = readFileSync(path.join(BAD_FIXTURES, file), 'utf8').split('\n');
    const expected: string[] = [];
    for (const h of BAD_CASES[name]!) {
      const m = /^(\d+):(\d+): /.exec(h)!;
      const line = Number(m[1]);
      const col = Number(m[2]);
      const src = lines[line - 1]!;
      const num = String(line);
      expected.push(`${file}:${h}`, ` ${num} | ${src}`, ` ${' '.repeat(num.length)} | ${src.slice(0, col - 1).replace(/[^\t]/g, ' ')}^`);
    }
    const n = BAD_CASES[name]!.length;
    expected.push(`onionctl: ${n} error${n === 1 ? '' : 's'} in topology`, '');
    expect(r.stderr.split('\n')).toEqual(expected);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expectClean(r);
  });
});

describe('validate: the examples', () => {
  test('examples/three-mixes.yaml is ok, with a one-line summary', async () => {
    const r = await run(['validate', 'examples/three-mixes.yaml'], { cwd: ROOT });
    expectOk(r);
    expect(r.stdout).toBe('examples/three-mixes.yaml: ok (3 routers of which 1 exits, 1 clients, 3 overlay links, 1 circuits; k=3, aes-gcm)\n');
    expect(r.stderr).toBe('');
  });

  // examples/large.yaml is written by another change; test it whenever it is there
  const large = existsSync(path.join(EXAMPLES, 'large.yaml'));
  (large ? test : test.skip)('examples/large.yaml is ok', async () => {
    const t = parseBuildableTopology(readFileSync(path.join(EXAMPLES, 'large.yaml'), 'utf8'), 'large.yaml').topology;
    const r = await run(['validate', 'examples/large.yaml'], { cwd: ROOT });
    expectOk(r);
    expect(r.stdout).toMatch(new RegExp(`^examples/large\\.yaml: ok \\(${t.routers.length} routers of which \\d+ exits, ${t.clients.length} clients, \\d+ overlay links, ${t.circuits.length} circuits; k=\\d, [a-z0-9-]+\\)\\n$`));
    expect(r.stderr).toBe('');
  });
});

describe('plan: files, modes, stability', () => {
  test('first plan writes NAME.ip, NAME.iptables, NAME.sysctl per node and 0600 state and secret; a second plan changes nothing', async () => {
    const dir = await dirWith({ 't.yaml': THREE });
    const r1 = await run(['plan', 't.yaml', '--seed', '1', '--out-dir', 'out'], { cwd: dir });
    expectOk(r1);
    expect(r1.stdout).toContain('  web: alice -> or1 -> or2 -> or3 -> 203.0.113.80/32\n');
    expect(r1.stdout).toContain('  circuit web: new path or1 -> or2 -> or3\n');
    expect(r1.stdout).toContain('Wrote redacted files to out.\n');
    // the only stderr line says where the new secret is
    expect(r1.stderr).toBe(`onionctl: created key secret t.secret (mode 0600); keep it with the state file and out of version control\n`);

    const out = path.join(dir, 'out');
    expect(readdirSync(out).sort()).toEqual(nodeFiles(['alice', 'or1', 'or2', 'or3']));
    expect(await modeOf(path.join(dir, 't.state.json'))).toBe(0o600);
    expect(await modeOf(path.join(dir, 't.secret'))).toBe(0o600);
    for (const f of readdirSync(out)) expect([f, await modeOf(path.join(out, f))]).toEqual([f, 0o644]);
    expect(readdirSync(dir).sort()).toEqual(['out', 't.secret', 't.secret.high-water.json', 't.state.json', 't.yaml']);
    expect(await modeOf(path.join(dir, 't.secret.high-water.json'))).toBe(0o600);

    const tree1 = await readTree(out);
    const state1 = await fs.readFile(path.join(dir, 't.state.json'));
    // no seed this time: nothing is drawn because nothing changes
    const r2 = await run(['plan', 't.yaml', '--out-dir', 'out'], { cwd: dir });
    expectOk(r2);
    expect(r2.stdout).toContain('State changes:\n  none (paths, addresses and SPIs as before)\n');
    expect(r2.stderr).toBe('');
    expect(await readTree(out)).toEqual(tree1);
    expect(await fs.readFile(path.join(dir, 't.state.json'))).toEqual(state1);
  });

  test('`nat: nftables` on an exit gives that router NAME.nft; file-wide, every node gets NAME.nft', async () => {
    const perExit = insertAfter(THREE, [['      address: 203.0.113.1/24\n', '      nat: nftables\n']]);
    const fileWide = insertAfter(THREE, [['crypto: aes-gcm\n', 'nat: nftables\n']]);
    const [a, b] = await Promise.all([dirWith({ 't.yaml': perExit }), dirWith({ 't.yaml': fileWide })]);
    const rs = await runAll([a, b].map((cwd) => ({ args: ['plan', 't.yaml', '--seed', '1', '--out-dir', 'out'], cwd })));
    for (const r of rs) expectOk(r);
    const nodes = ['alice', 'or1', 'or2', 'or3'];
    expect(readdirSync(path.join(a, 'out')).sort()).toEqual(nodeFiles(nodes, (n) => (n === 'or3' ? 'nft' : 'iptables')));
    expect(readdirSync(path.join(b, 'out')).sort()).toEqual(nodeFiles(nodes, () => 'nft'));
    for (const d of [a, b]) {
      const nft = readFileSync(path.join(d, 'out', 'or3.nft'), 'utf8');
      expect(nft).toContain('table ip onionctl {');
      expect(nft).toContain('ip saddr 100.64.3.1 oifname "eth1" snat to 203.0.113.1');
    }
  });


  test('a removed router\'s files leave --out-dir on the next plan; files onionctl did not write stay', async () => {
    const dir = await dirWith({ 't.yaml': WITH_OR4 });
    const r1 = await run(['plan', 't.yaml', '--seed', '1', '--out-dir', 'out'], { cwd: dir });
    expectOk(r1);
    const out = path.join(dir, 'out');
    expect(readdirSync(out).sort()).toEqual(nodeFiles(['alice', 'or1', 'or2', 'or3', 'or4']));
    await fs.writeFile(path.join(out, 'NOTES.txt'), 'mine\n');

    await fs.writeFile(path.join(dir, 't.yaml'), THREE);
    const r2 = await run(['plan', 't.yaml', '--out-dir', 'out'], { cwd: dir });
    expectOk(r2);
    expect(r2.stdout).toContain('  overlay link or2~or4: removed\n');
    expect(readdirSync(out).sort()).toEqual([...nodeFiles(['alice', 'or1', 'or2', 'or3']), 'NOTES.txt'].sort());
    expect(readFileSync(path.join(out, '.onionctl-files'), 'utf8')).not.toContain('or4');
  });

  test('--no-save-state writes no state, and leaves an existing state as it was', async () => {
    const [fresh, kept] = await Promise.all([dirWith({ 't.yaml': THREE }), dirWith({ 't.yaml': THREE })]);
    const [r1, r0] = await runAll([
      { args: ['plan', 't.yaml', '--seed', '1', '--no-save-state'], cwd: fresh },
      { args: ['plan', 't.yaml', '--seed', '1'], cwd: kept },
    ]);
    expectOk(r1!);
    expect(r1!.stdout).toContain('State not saved (--no-save-state).\n');
    expect(await exists(path.join(fresh, 't.state.json'))).toBe(false);

    expectOk(r0!);
    const before = await fs.readFile(path.join(kept, 't.state.json'));
    await fs.writeFile(path.join(kept, 't.yaml'), TWO_EXITS);
    const r2 = await run(['plan', 't.yaml', '--seed', '1', '--no-save-state'], { cwd: kept });
    expectOk(r2);
    expect(r2.stdout).toMatch(/  circuit mail: new path or1 -> or2 -> or[34]\n/);
    expect(r2.stdout).toContain('State not saved (--no-save-state).\n');
    expect(await fs.readFile(path.join(kept, 't.state.json'))).toEqual(before);
  });

  // examples/large.yaml is written by another change; test it whenever it is there
  const large = existsSync(path.join(EXAMPLES, 'large.yaml'));
  (large ? test : test.skip)('examples/large.yaml: one file set per node, .nft exactly where nftables is chosen', async () => {
    const t = parseBuildableTopology(readFileSync(path.join(EXAMPLES, 'large.yaml'), 'utf8'), 'large.yaml').topology;
    const dir = await dirWith({ 'large.yaml': readFileSync(path.join(EXAMPLES, 'large.yaml'), 'utf8') });
    const r = await run(['plan', 'large.yaml', '--seed', '1', '--out-dir', 'out'], { cwd: dir });
    expectOk(r);
    // an exit's own `nat` wins over the file-wide one, which every other node follows
    const nft = new Set([
      ...t.routers.filter((x) => (x.exit?.nat ?? t.nat) === 'nftables').map((x) => x.name),
      ...t.clients.filter(() => t.nat === 'nftables').map((x) => x.name),
    ]);
    const nodes = [...t.routers.map((x) => x.name), ...t.clients.map((x) => x.name)];
    expect(readdirSync(path.join(dir, 'out')).sort()).toEqual(nodeFiles(nodes, (n) => (nft.has(n) ? 'nft' : 'iptables')));
  });
});

describe('plan: keys stay out of everything that is not --with-keys', () => {
  const dir = { path: '' };
  let first: RunResult;
  let json: RunResult;
  let withKeys: RunResult;
  let both: RunResult;

  beforeAll(async () => {
    dir.path = await dirWith({ 't.yaml': THREE });
    first = await run(['plan', 't.yaml', '--seed', '1', '--out-dir', 'red'], { cwd: dir.path });
    // 'keys' exists (0755) before: --with-keys must tighten it to 0700
    await fs.mkdir(path.join(dir.path, 'keys'), { mode: 0o755 });
    await fs.chmod(path.join(dir.path, 'keys'), 0o755);
    [json, withKeys, both] = (await runAll([
      { args: ['plan', 't.yaml', '--json'], cwd: dir.path },
      { args: ['plan', 't.yaml', '--with-keys', '--out-dir', 'keys'], cwd: dir.path },
      { args: ['plan', 't.yaml', '--json', '--out-dir', 'red2'], cwd: dir.path },
    ])) as [RunResult, RunResult, RunResult];
  });

  test('all runs succeed without a stack trace', () => {
    for (const r of [first, json, withKeys, both]) expectOk(r);
    expect(withKeys.stdout).toContain('Wrote key-bearing (0600) files to keys.\n');
  });

  test('--with-keys writes 0600 files into a 0700 directory, and the .ip files carry the keys', async () => {
    const keys = path.join(dir.path, 'keys');
    expect(await modeOf(keys)).toBe(0o700);
    for (const f of readdirSync(keys)) expect([f, await modeOf(path.join(keys, f))]).toEqual([f, 0o600]);
    const tree = await readTree(keys);
    const found = keysIn(tree);
    // 3 overlay links and 3 hops, an SA each way: 12 keys of 36 bytes (AES-256 + GCM salt)
    expect(found).toHaveLength(12);
    for (const k of found) expect(k).toMatch(/^[0-9a-f]{72}$/);
    for (const [name, content] of tree) {
      if (name.endsWith('.ip')) expect([name, /\b0x[0-9a-f]{72}\b/.test(content.toString())]).toEqual([name, true]);
    }
  });

  test('the redacted files are the key files with each key replaced by its fingerprint', async () => {
    const red = await readTree(path.join(dir.path, 'red'));
    const keyed = await readTree(path.join(dir.path, 'keys'));
    expect([...red.keys()]).toEqual([...keyed.keys()]);
    for (const [name, content] of keyed) {
      let expected = content.toString('utf8').replace(/\b0x([0-9a-f]{32,})\b/g, (_, hex: string) => `redacted:fp=${fingerprint(Buffer.from(hex, 'hex'))}`);
      expected = expected.replace(
        '# CONTAINS KEYS: keep this file 0600 and delete it after apply.',
        '# Keys are redacted (fp = fingerprint); this file is safe to review and diff.',
      );
      expect([name, red.get(name)!.toString('utf8')]).toEqual([name, expected]);
    }
  });

  test('no key and no secret appears in redacted files, the state file, JSON, stdout or stderr', async () => {
    const keys = keysIn(await readTree(path.join(dir.path, 'keys')));
    const secret = readFileSync(path.join(dir.path, 't.secret'), 'utf8').trim();
    expect(keys.length).toBeGreaterThan(0);
    const places: [string, string][] = [
      ...[...(await readTree(path.join(dir.path, 'red')))].map(([n, c]): [string, string] => [`red/${n}`, c.toString('utf8')]),
      ...[...(await readTree(path.join(dir.path, 'red2')))].map(([n, c]): [string, string] => [`red2/${n}`, c.toString('utf8')]),
      ['t.state.json', readFileSync(path.join(dir.path, 't.state.json'), 'utf8')],
      ...[first, json, withKeys, both].flatMap((r): [string, string][] => [
        [`stdout of ${r.args.join(' ')}`, r.stdout],
        [`stderr of ${r.args.join(' ')}`, r.stderr],
      ]),
    ];
    for (const [where, text] of places) {
      for (const k of [...keys, secret]) {
        // a leak of any 16 hex digits of a key counts
        for (let i = 0; i + 16 <= k.length; i += 16) expect([where, text.includes(k.slice(i, i + 16))]).toEqual([where, false]);
      }
      expect([where, /\b0x[0-9a-f]{32,}\b/.test(text)]).toEqual([where, false]);
    }
  });

  test('--json is valid JSON that describes the plan, and its digest covers the redacted files', async () => {
    const plan = JSON.parse(json.stdout) as {
      format: string;
      stateSerial: number;
      filesDigest: string;
      circuits: { name: string; client: string; hops: string[]; addrs: string[]; to: string[] }[];
      events: unknown[];
      nodes: { node: string }[];
    };
    expect(plan.format).toBe('onionctl-plan/v1');
    expect(plan.stateSerial).toBe(1);
    expect(plan.events).toEqual([]);
    expect(plan.circuits).toEqual([
      { name: 'web', client: 'alice', hops: ['or1', 'or2', 'or3'], addrs: ['100.64.1.1', '100.64.2.1', '100.64.3.1'], to: ['203.0.113.80/32'], generation: 1 },
    ]);
    expect(plan.nodes.map((n) => n.node)).toEqual(['or1', 'or2', 'or3', 'alice']);
    // the digest is over the redacted files in the order the manifest lists them
    const red = path.join(dir.path, 'red');
    const names = readFileSync(path.join(red, '.onionctl-files'), 'utf8').split('\n').filter((l) => l && !l.startsWith('#'));
    const h = createHash('sha256');
    for (const n of names) h.update(n).update('\0').update(readFileSync(path.join(red, n))).update('\0');
    expect(plan.filesDigest).toBe(h.digest('hex'));
    // --json with --out-dir prints the same JSON and writes the same files
    expect(both.stdout).toBe(json.stdout);
    expect(await readTree(path.join(dir.path, 'red2'))).toEqual(await readTree(red));
  });
});

describe('determinism', () => {
  test('same topology, state file and seed: byte-identical --out-dir trees, --json and state', async () => {
    // a state from three-mixes; then both copies add or4 (a second exit) and circuit "mail",
    // so the seed decides mail's path and the state allocates new SPIs
    const seedDir = await dirWith({ 't.yaml': THREE });
    expectOk(await run(['plan', 't.yaml', '--seed', '1'], { cwd: seedDir }));
    // dirs[2] takes another seed, to show that the seed decides (seeds 7 and 1 differ here)
    const dirs = await Promise.all([0, 1, 2].map(() => dirWith({ 't.yaml': TWO_EXITS })));
    for (const d of dirs) {
      for (const f of ['t.state.json', 't.secret']) await fs.copyFile(path.join(seedDir, f), path.join(d, f));
      await fs.chmod(path.join(d, 't.secret'), 0o600);
    }
    const rs = await runAll(dirs.map((cwd, i) => ({ args: ['plan', 't.yaml', '--seed', i < 2 ? '7' : '1', '--json', '--out-dir', 'out'], cwd })));
    for (const r of rs) expectOk(r);
    const mail = rs.map((r) => (JSON.parse(r.stdout) as { circuits: { name: string; hops: string[] }[] }).circuits.find((c) => c.name === 'mail')!.hops.join(' -> '));
    expect(mail).toEqual(['or1 -> or2 -> or4', 'or1 -> or2 -> or4', 'or1 -> or2 -> or3']);
    expect(JSON.parse(rs[0]!.stdout).events.length).toBeGreaterThan(0);
    expect(rs[1]!.stdout).toBe(rs[0]!.stdout);
    const [t0, t1] = await Promise.all(dirs.slice(0, 2).map((d) => readTree(path.join(d, 'out'))));
    expect(t0!.size).toBe(16);
    expect(t1).toEqual(t0);
    // the states agree except for the clock ("created" of the new circuit)
    const [s0, s1] = dirs.slice(0, 2).map((d) => JSON.parse(readFileSync(path.join(d, 't.state.json'), 'utf8').replace(/"created": "[^"]*"/g, '"created": ""')) as unknown);
    expect(s1).toEqual(s0);
  });
});

describe('errors at the command line', () => {
  let dir = '';
  let results: RunResult[] = [];
  const usage: string[][] = [
    [],
    ['bogus'],
    ['validate'],
    ['validate', 'a.yaml', 'b.yaml'],
    ['plan', 't.yaml', '--bogus'],
    ['plan', 't.yaml', '--seed', 'two words'],
  ];
  const oneLine: string[][] = [
    ['validate', 'missing.yaml'],
    ['plan', 'missing.yaml'],
    ['validate', 'adir'],
    ['plan', 't.yaml', '--with-keys'],
  ];

  beforeAll(async () => {
    dir = await dirWith({ 't.yaml': THREE });
    await fs.mkdir(path.join(dir, 'adir'));
    results = await runAll([...usage, ...oneLine].map((args) => ({ args, cwd: dir })));
  });

  test.each(usage.map((u, i) => [u.join(' ') || '(no arguments)', i] as const))('usage error: %s exits 1 (never 2, which means "changes") without a stack trace', (_, i) => {
    const r = results[i]!;
    expect(r.code).toBe(1);
    expectClean(r);
    expect(r.stderr).toMatch(/Usage: onionctl/);
    if (usage[i]!.length > 0) expect(r.stderr).toMatch(/^error: /m);
  });

  test('a missing topology file: one clear line, exit 1, for validate and plan', () => {
    for (const [i, cmd] of [[0, 'validate'], [1, 'plan']] as const) {
      const r = results[usage.length + i]!;
      expect([cmd, r.code]).toEqual([cmd, 1]);
      expect(r.stdout).toBe('');
      expect(r.stderr).toBe('onionctl: error: cannot read topology missing.yaml: no such file (ENOENT)\n');
    }
  });

  test('a directory instead of a file: one line, exit 1', () => {
    const r = results[usage.length + 2]!;
    expect(r.code).toBe(1);
    expect(r.stderr).toBe('onionctl: error: cannot read topology adir: it is a directory (give the YAML file)\n');
  });

  test('--with-keys without --out-dir is refused before anything is written', async () => {
    const r = results[usage.length + 3]!;
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe('onionctl: error: --with-keys writes key files and needs --out-dir\n');
    expect(readdirSync(dir).sort()).toEqual(['adir', 't.yaml']);
  });
});

describe('the state lock is released however a command fails', () => {
  test.each(['apply', 'destroy', 'rekey', 'rotate'])('%s whose key secret cannot be opened (a directory): an error, and no lock left behind', async (cmd) => {
    const dir = await fs.mkdtemp(path.join((await import('node:os')).tmpdir(), 'onionctl-lock-'));
    try {
      const state = path.join(dir, 'state.json');
      const secretDir = path.join(dir, 'secret.d');
      await fs.mkdir(secretDir);
      const extra = cmd === 'rekey' ? ['--all'] : cmd === 'rotate' ? ['--max-age', '1h'] : [];
      const r = await run([cmd, 'examples/three-mixes.yaml', ...extra, '--state', state, '--secret', secretDir, '--identity', path.join(dir, 'none')], { cwd: ROOT });
      expect(r.code).not.toBe(0);
      expect(r.stderr).not.toMatch(/\n\s+at /);
      expect(existsSync(`${state}.lock`)).toBe(false);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

describe('exit codes are documented where admins look', () => {
  test('--help lists them; the README has the same table', async () => {
    const r = await run(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/Exit codes:\n {2}0 {3}success.*\n {2}1 {3}an error.*\n {2}2 {3}only with plan --live --detailed-exitcode/);
    const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    expect(readme).toMatch(/## Exit codes[\s\S]*\| 1 \| an error[\s\S]*\| 2 \| only with `plan --live --detailed-exitcode`/);
  });
});


describe('help where admins ask for it', () => {
  test('lab ctl --help prints its usage and exits 0', async () => {
    const r = await run(['lab', 'ctl', '--help']);
    expect({ code: r.code, err: r.stderr }).toEqual({ code: 0, err: '' });
    expect(r.stdout).toMatch(/^Usage: onionctl lab ctl <topology> <command> \[args\.\.\.\]/);
  });

  test('an unknown command followed by --help is an error, not the top-level help with exit 0', async () => {
    const r = await run(['agent', '--help']);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^error: unknown command 'agent'/);
  });

  test.each([
    ['down', [], ['--seed', '--json', '--no-apply', '--kernel', '--xfrm-interface']],
    ['test', ['--json'], ['--seed', '--no-apply', '--kernel', '--xfrm-interface']],
    ['up', ['--seed', '--no-apply', '--kernel', '--xfrm-interface'], ['--json']],
    ['demo', ['--seed', '--json', '--kernel', '--xfrm-interface'], ['--no-apply']],
  ] as const)('lab %s --help lists the options it takes and no others', async (sub, has, hasNot) => {
    const r = await run(['lab', sub, '--help']);
    expect(r.code).toBe(0);
    for (const o of has) expect(r.stdout).toContain(`  ${o}`);
    for (const o of hasNot) expect(r.stdout).not.toContain(`  ${o}`);
  });
});

describe('a state file put back behind its high-water mark (issue 11, defect 1)', () => {
  test('plan refuses it (exit 1, the file unchanged), a dry run warns, --accept-restored-state goes on with SPIs past every one handed out', async () => {
    const dir = await dirWith({ 't.yaml': THREE });
    const topo = path.join(dir, 't.yaml');
    const stateFile = path.join(dir, 't.state.json');
    expectOk(await run(['plan', topo, '--seed', 's1']));
    const backup = await fs.readFile(stateFile, 'utf8');
    // the topology grows a circuit: a new state with more SPIs handed out
    await fs.writeFile(topo, THREE + '  - name: mail\n    client: alice\n    to: [203.0.113.25/32]\n');
    expectOk(await run(['plan', topo, '--seed', 's1']));
    const later = JSON.parse(await fs.readFile(stateFile, 'utf8')) as { serial: number; next: { spi: number }; circuits: Record<string, { fwd: { spi: number }[] }> };
    const mark = JSON.parse(await fs.readFile(path.join(dir, 't.secret.high-water.json'), 'utf8')) as { states: Record<string, { serial: number; spi: number }> };
    expect(Object.values(mark.states)).toEqual([expect.objectContaining({ serial: later.serial, spi: later.next.spi })]);

    await fs.writeFile(stateFile, backup, { mode: 0o600 });
    const refused = await run(['plan', topo, '--seed', 's1']);
    expect(refused.code).toBe(1);
    expectClean(refused);
    expect(refused.stderr).toMatch(/the state \S+t\.state\.json is behind what was saved before \(serial 1 < 2, next SPI 0x[0-9a-f]+ < 0x[0-9a-f]+/);
    expect(refused.stderr).toContain('--accept-restored-state');
    expect(await fs.readFile(stateFile, 'utf8')).toBe(backup);
    const withKeys = await run(['plan', topo, '--seed', 's1', '--no-save-state', '--with-keys', '--out-dir', path.join(dir, 'k')]);
    expect(withKeys.code).toBe(1);
    expect(await exists(path.join(dir, 'k'))).toBe(false);

    const dry = await run(['plan', topo, '--seed', 's1', '--no-save-state']);
    expectOk(dry);
    expect(dry.stderr).toMatch(/is behind what was saved before .*shown as it is/);

    expectOk(await run(['plan', topo, '--seed', 's1', '--accept-restored-state']));
    const resumed = JSON.parse(await fs.readFile(stateFile, 'utf8')) as typeof later;
    expect(resumed.serial).toBeGreaterThan(later.serial);
    const spisBefore = new Set(later.circuits.mail!.fwd.map((x) => x.spi));
    for (const x of resumed.circuits.mail!.fwd) {
      expect(x.spi).toBeGreaterThanOrEqual(later.next.spi);
      expect(spisBefore.has(x.spi)).toBe(false);
    }
    // and it is no longer behind
    expectOk(await run(['plan', topo, '--seed', 's1']));
  });
});

describe('filesystem mistakes and files that are not topologies (issue 15, defect 7)', () => {
  test('--out-dir that is a file, or a link to nothing: exit 1 with what is wrong, no "bug in onionctl", the state not saved', async () => {
    const dir = await dirWith({ 't.yaml': THREE, afile: '' });
    await fs.symlink(path.join(dir, 'nowhere', 'x'), path.join(dir, 'dangling'));
    for (const [arg, re] of [['afile', /--out-dir \S*afile is a file, not a directory/], ['dangling', /--out-dir \S*dangling is a symbolic link to nothing/]] as const) {
      const r = await run(['plan', path.join(dir, 't.yaml'), '--out-dir', path.join(dir, arg)]);
      expect({ arg, code: r.code }).toEqual({ arg, code: 1 });
      expect(r.stderr).toMatch(re);
      expect(r.stderr).not.toMatch(/bug in onionctl/);
      expectClean(r);
    }
    expect(await exists(path.join(dir, 't.state.json'))).toBe(false);
  });

  test('a binary file, a one-megabyte line and escapes in a topology: short, escaped diagnostics', async () => {
    const bin = Buffer.alloc(4096);
    for (let i = 0; i < bin.length; i++) bin[i] = (i * 73 + 11) % 256;
    const long = 'a: ' + 'x'.repeat(1_000_000) + '\n';
    const esc = 'version: 1\n\u001b[2Jevil\u001b]52;c;ZXZpbA==\u0007: 1\n';
    const dir = await dirWith({ 'bin.yaml': '', 'long.yaml': long, 'esc.yaml': esc });
    await fs.writeFile(path.join(dir, 'bin.yaml'), bin);
    const b = await run(['validate', path.join(dir, 'bin.yaml')]);
    expect(b.code).toBe(1);
    expect(b.stderr).toMatch(/bin\.yaml is not a text file \(it holds NUL bytes\)/);
    const l = await run(['validate', path.join(dir, 'long.yaml')]);
    expect(l.code).toBe(1);
    expect(l.stderr.length).toBeLessThan(5000);
    expect(l.stderr).toMatch(/x{50,100} \.\.\. \(\d+ more characters\)/);
    const e = await run(['validate', path.join(dir, 'esc.yaml')]);
    expect(e.code).toBe(1);
    expect(isTerminalSafe(e.stderr)).toBe(true);
    expect(e.stderr).toContain('\\x1b[2J');
    for (const r of [b, l, e]) expectClean(r);
  });
});

describe('JSON for machines: validate --json, and errors as JSON in every --json mode', () => {
  test('validate --json: ok with a summary; a bad file gives ok false and each diagnostic with file, line, col, message; exit 1', async () => {
    const [good, bad, several] = await runAll([
      { args: ['validate', '--json', path.join(EXAMPLES, 'three-mixes.yaml')] },
      { args: ['validate', '--json', path.join(BAD_FIXTURES, 'port-range-backwards.yaml')] },
      { args: ['validate', '--json', path.join(BAD_FIXTURES, 'several-errors.yaml')] },
    ]);
    expect(good!.code).toBe(0);
    expect(JSON.parse(good!.stdout)).toEqual({
      format: 'onionctl-validate/v1',
      ok: true,
      file: path.join(EXAMPLES, 'three-mixes.yaml'),
      summary: { routers: 3, exits: 1, clients: 1, links: 3, circuits: 1, hops: 3, crypto: 'aes-gcm' },
      diagnostics: [],
    });
    expect(bad!.code).toBe(1);
    expect(JSON.parse(bad!.stdout)).toEqual({
      format: 'onionctl-validate/v1',
      ok: false,
      diagnostics: [{ file: path.join(BAD_FIXTURES, 'port-range-backwards.yaml'), line: 39, col: 23, message: 'routers[2].exit.allow[0].ports[1]: port range "500-400" runs backwards; write "400-500"' }],
    });
    // the human form still goes to stderr
    expect(bad!.stderr).toContain('port-range-backwards.yaml:39:23:');
    const s = JSON.parse(several!.stdout) as { diagnostics: { line: number; col: number; message: string }[] };
    expect(s.diagnostics.map((d) => `${d.line}:${d.col}: ${d.message}`)).toEqual(BAD_CASES['several-errors']);
  });

  test('plan --json on a missing topology: an onionctl-error/v1 document on stdout, exit 1, no stack', async () => {
    const r = await run(['plan', '--json', '/nonexistent/topo.yaml']);
    expect(r.code).toBe(1);
    const j = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(j).toMatchObject({ format: 'onionctl-error/v1', command: 'plan', exitCode: 1, kind: 'input' });
    expect(String(j.message)).toMatch(/nonexistent\/topo\.yaml/);
    expect(r.stderr).not.toMatch(STACK_LINE);
  });
});
