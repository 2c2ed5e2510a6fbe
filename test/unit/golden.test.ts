/**
 * Golden files: `onionctl plan examples/three-mixes.yaml` with a committed state and a committed
 * test secret must write exactly the files under test/golden/three-mixes/expected/ (redacted; the
 * directory listing includes the .onionctl-files manifest), print exactly plan.txt and, with
 * --json, exactly plan.json.
 *
 *   test/golden/three-mixes/state.json   fixed state: paths, addresses, SPIs, reqids, salt
 *   test/golden/three-mixes/secret       fixed KDF secret (hex; a test value, not a real key).
 *                                        Git keeps it 0644; the test copies it and makes it 0600,
 *                                        as onionctl refuses a secret others can read.
 *
 * When a change to the output is intended, regenerate the expected files and review the diff:
 *
 *   npm run build && UPDATE_GOLDEN=1 node --experimental-vm-modules node_modules/jest/bin/jest.js dist/test/unit/golden.test.js
 *   git diff test/golden
 *
 * UPDATE_GOLDEN=1 rewrites expected/, plan.txt and plan.json only; it never touches state.json or
 * secret. If examples/three-mixes.yaml changes so that the committed state no longer fits it
 * (the test then fails on "State changes: none"), make a new state with
 *   node dist/src/cli/bin.js plan examples/three-mixes.yaml --seed 1 --state /tmp/s.json --secret test/golden/three-mixes/secret
 * (after a chmod 600 of the secret), replace the "created" times by 2026-01-01T00:00:00.000Z and
 * copy it to test/golden/three-mixes/state.json.
 *
 * Whatever the expected files say, the last group of tests checks the generated files against
 * the kernel facts in shared/XFRM-FACTS.md ("One working circuit"), so that an update cannot
 * bless a broken circuit.
 */
import { beforeAll, describe, expect, jest, test } from '@jest/globals';
import { promises as fs, readFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT, SPAWN_TIMEOUT, STACK_LINE, readTree, runAll, tempDir, type RunResult } from '../helpers/cli.js';

jest.setTimeout(SPAWN_TIMEOUT);

const GOLDEN = path.join(ROOT, 'test/golden/three-mixes');
const EXPECTED = path.join(GOLDEN, 'expected');
const TOPOLOGY = path.join(ROOT, 'examples/three-mixes.yaml');
const UPDATE = process.env.UPDATE_GOLDEN === '1';

let dir = '';
let text: RunResult;
let json: RunResult;
let out = new Map<string, Buffer>();

beforeAll(async () => {
  dir = await tempDir('onionctl-golden-');
  await fs.copyFile(path.join(GOLDEN, 'state.json'), path.join(dir, 'state.json'));
  await fs.copyFile(path.join(GOLDEN, 'secret'), path.join(dir, 'secret'));
  await fs.chmod(path.join(dir, 'state.json'), 0o600);
  await fs.chmod(path.join(dir, 'secret'), 0o600);
  const common = ['plan', TOPOLOGY, '--state', 'state.json', '--secret', 'secret'];
  // neither run changes the state (it fits the topology), so they can run together
  [text, json] = (await runAll([
    { args: [...common, '--out-dir', 'out'], cwd: dir },
    { args: [...common, '--json'], cwd: dir },
  ])) as [RunResult, RunResult];
  out = await readTree(path.join(dir, 'out'));

  if (UPDATE && text.code === 0 && json.code === 0) {
    await fs.rm(EXPECTED, { recursive: true, force: true });
    await fs.mkdir(EXPECTED, { recursive: true });
    for (const [name, content] of out) await fs.writeFile(path.join(EXPECTED, name), content);
    await fs.writeFile(path.join(GOLDEN, 'plan.txt'), text.stdout);
    await fs.writeFile(path.join(GOLDEN, 'plan.json'), json.stdout);
  }
});

describe('golden: three-mixes with a fixed state and secret', () => {
  test('both runs succeed quietly and leave the state as it was', async () => {
    for (const r of [text, json]) {
      expect([r.args.join(' '), r.code, r.stderr]).toEqual([r.args.join(' '), 0, '']);
      expect(r.stdout).not.toMatch(STACK_LINE);
    }
    expect(text.stdout).toContain('State changes:\n  none (paths, addresses and SPIs as before)\n');
    expect(await fs.readFile(path.join(dir, 'state.json'))).toEqual(await fs.readFile(path.join(GOLDEN, 'state.json')));
  });

  test('--out-dir writes exactly the expected files, byte for byte', async () => {
    const expected = await readTree(EXPECTED);
    expect([...out.keys()]).toEqual([...expected.keys()]);
    for (const [name, content] of expected) {
      // compare as text so that a failure shows a readable diff; then the bytes
      expect([name, out.get(name)!.toString('utf8')]).toEqual([name, content.toString('utf8')]);
      expect(out.get(name)!.equals(content)).toBe(true);
    }
  });

  test('stdout of plan and of plan --json', () => {
    expect(text.stdout).toBe(readFileSync(path.join(GOLDEN, 'plan.txt'), 'utf8'));
    expect(json.stdout).toBe(readFileSync(path.join(GOLDEN, 'plan.json'), 'utf8'));
  });
});

// ---------------------------------------------------------------------------------------------
// The generated files against shared/XFRM-FACTS.md, "One working circuit" (first template listed
// = innermost layer).

interface Policy {
  dir: string;
  src: string;
  dst: string;
  proto?: string;
  priority: number;
  block: boolean;
  tmpls: string[];
}
interface SaLine {
  src: string;
  dst: string;
  spi: string;
  reqid: string;
  rest: string;
}

function lines(node: string, ext: string): string[] {
  return out.get(`${node}.${ext}`)!.toString('utf8').split('\n');
}

function policies(node: string): Policy[] {
  return lines(node, 'ip')
    .filter((l) => l.startsWith('xfrm policy '))
    .map((l) => {
      const m = /^xfrm policy update src (\S+) dst (\S+)(?: proto (\S+))? dir (\S+) priority (\d+)( action block)?/.exec(l);
      if (!m) throw new Error(`unparsed policy line: ${l}`);
      const tmpls = [...l.matchAll(/ tmpl src (\S+) dst (\S+) proto esp reqid (\S+) mode tunnel level required/g)].map((t) => `${t[1]}>${t[2]}`);
      return { src: m[1]!, dst: m[2]!, ...(m[3] ? { proto: m[3] } : {}), dir: m[4]!, priority: Number(m[5]), block: m[6] !== undefined, tmpls };
    });
}

/** "dir src dst [proto p]: innermost>..., outer" for the allow policies of a node, sorted */
function allowPolicies(node: string): string[] {
  return policies(node)
    .filter((p) => !p.block)
    .map((p) => `${p.dir} ${p.src} ${p.dst}${p.proto ? ` proto ${p.proto}` : ''}: ${p.tmpls.join(', ')}`)
    .sort();
}

function states(node: string): SaLine[] {
  return lines(node, 'ip')
    .filter((l) => l.startsWith('xfrm state '))
    .map((l) => {
      const m = /^xfrm state add src (\S+) dst (\S+) proto esp spi (\S+) reqid (\S+) mode tunnel (.*) # /.exec(l);
      if (!m) throw new Error(`unparsed state line: ${l}`);
      return { src: m[1]!, dst: m[2]!, spi: m[3]!, reqid: m[4]!, rest: m[5]! };
    });
}

function routes(node: string): string[] {
  return lines(node, 'ip')
    .filter((l) => l.startsWith('route '))
    .map((l) => {
      const m = /^route replace (\S+) via (\S+) dev (\S+)(?: src (\S+))?/.exec(l)!;
      return `${m[1]} via ${m[2]}${m[4] ? ` src ${m[4]}` : ''}`;
    })
    .sort();
}

describe('golden files agree with XFRM-FACTS "One working circuit"', () => {
  const A = '198.51.100.10';
  const OR1 = '198.51.100.11';
  const OR2 = '198.51.100.12';
  const OR3 = '198.51.100.13';
  const B = '203.0.113.80/32';
  const st = JSON.parse(readFileSync(path.join(GOLDEN, 'state.json'), 'utf8')) as { circuits: { web: { hops: string[]; addrs: string[] } } };
  const [c1, c2, c3] = st.circuits.web.addrs as [string, string, string];

  test('the fixed state routes circuit web through or1, or2, or3', () => {
    expect(st.circuits.web.hops).toEqual(['or1', 'or2', 'or3']);
  });

  test('A: one out policy with t3, t2, t1, ovA1; one in policy with t3r, t2r, t1r, ov1A; a block policy of lower precedence', () => {
    expect(allowPolicies('alice')).toEqual(
      [
        `out ${c3}/32 ${B}: ${c3}>${OR3}, ${c2}>${OR2}, ${c1}>${OR1}, ${A}>${OR1}`,
        `in ${B} ${c3}/32: ${OR3}>${c3}, ${OR2}>${c2}, ${OR1}>${c1}, ${OR1}>${A}`,
        // XFRM-FACTS "Newer kernels": one in policy per reverse layer, for the ESP packet from
        // OR_i to A_ci; onionctl lists every layer removed so far (docs/kernels.md says why)
        `in ${OR1}/32 ${c1}/32 proto esp: ${OR1}>${A}`,
        `in ${OR2}/32 ${c2}/32 proto esp: ${OR1}>${c1}, ${OR1}>${A}`,
        `in ${OR3}/32 ${c3}/32 proto esp: ${OR2}>${c2}, ${OR1}>${c1}, ${OR1}>${A}`,
      ].sort(),
    );
    const all = policies('alice');
    const block = all.filter((p) => p.block);
    expect(block.map((p) => `${p.dir} ${p.src} ${p.dst}`)).toEqual([`out 0.0.0.0/0 ${B}`]);
    const circuit = all.find((p) => p.dir === 'out' && !p.block)!;
    // in xfrm a larger priority number is a lower precedence
    expect(block[0]!.priority).toBeGreaterThan(circuit.priority);
  });

  test('A: route to B via OR1 with src A_c3; A_c1..A_c3 on lo', () => {
    expect(routes('alice')).toEqual([`${B} via ${OR1} src ${c3}`]);
    expect(lines('alice', 'ip').filter((l) => l.startsWith('address '))).toEqual(
      [c1, c2, c3].map((a, i) => `address replace ${a}/32 dev lo # circuit web: A_c${i + 1}`),
    );
  });

  test('OR1: fwd with t1 + ovA1, out with ov12; reverse fwd with ov21, out with t1r + ov1A; routes to A_c1, A_c2 via A', () => {
    expect(allowPolicies('or1')).toEqual(
      [
        `fwd ${c2}/32 ${OR2}/32 proto esp: ${c1}>${OR1}, ${A}>${OR1}`,
        `out ${c2}/32 ${OR2}/32 proto esp: ${OR1}>${OR2}`,
        `fwd ${OR2}/32 ${c2}/32 proto esp: ${OR2}>${OR1}`,
        `out ${OR2}/32 ${c2}/32 proto esp: ${OR1}>${c1}, ${OR1}>${A}`,
        // XFRM-FACTS "Newer kernels": the telescope packet inside the overlay, with the overlay SA
        `in ${c1}/32 ${OR1}/32 proto esp: ${A}>${OR1}`,
      ].sort(),
    );
    expect(routes('or1')).toEqual([`${c1}/32 via ${A}`, `${c2}/32 via ${A}`]);
  });

  test('OR2: the same one hop on, for A_c3 and OR3; routes to A_c2, A_c3 via OR1', () => {
    expect(allowPolicies('or2')).toEqual(
      [
        `fwd ${c3}/32 ${OR3}/32 proto esp: ${c2}>${OR2}, ${OR1}>${OR2}`,
        `out ${c3}/32 ${OR3}/32 proto esp: ${OR2}>${OR3}`,
        `fwd ${OR3}/32 ${c3}/32 proto esp: ${OR3}>${OR2}`,
        `out ${OR3}/32 ${c3}/32 proto esp: ${OR2}>${c2}, ${OR2}>${OR1}`,
        `in ${c2}/32 ${OR2}/32 proto esp: ${OR1}>${OR2}`,
      ].sort(),
    );
    expect(routes('or2')).toEqual([`${c2}/32 via ${OR1}`, `${c3}/32 via ${OR1}`]);
  });

  test('OR3 (exit): fwd with t3 + ov23, out with t3r + ov32 (for B rather than any), route to A_c3 via OR2, SNAT of A_c3', () => {
    expect(allowPolicies('or3')).toEqual(
      [
        `fwd ${c3}/32 ${B}: ${c3}>${OR3}, ${OR2}>${OR3}`,
        `out ${B} ${c3}/32: ${OR3}>${c3}, ${OR3}>${OR2}`,
        `in ${c3}/32 ${OR3}/32 proto esp: ${OR2}>${OR3}`,
      ].sort(),
    );
    expect(routes('or3')).toEqual([`${c3}/32 via ${OR2}`]);
    expect(lines('or3', 'iptables').filter((l) => / -j SNAT /.test(l))).toEqual([
      `-A ONIONCTL-POSTROUTING -s ${c3}/32 -o eth1 -m comment --comment "circuit web exit SNAT" -j SNAT --to-source 203.0.113.1`,
    ]);
    expect(lines('or3', 'sysctl')).toContain('net.ipv4.ip_forward = 1');
  });

  test('every SA is on both of its ends, with the same SPI, reqid and (fingerprinted) key, tunnel mode, replay window, ESN on overlays, lifetimes', () => {
    const owner = new Map<string, string>([
      [A, 'alice'],
      [c1, 'alice'],
      [c2, 'alice'],
      [c3, 'alice'],
      [OR1, 'or1'],
      [OR2, 'or2'],
      [OR3, 'or3'],
    ]);
    const seen = new Map<string, { nodes: string[]; line: string }>();
    for (const node of ['alice', 'or1', 'or2', 'or3']) {
      for (const s of states(node)) {
        const overlay = [A, OR1, OR2, OR3].includes(s.src) && [A, OR1, OR2, OR3].includes(s.dst);
        expect(s.rest).toMatch(
          overlay
            ? /^replay-window 128 flag esn aead rfc4106\(gcm\(aes\)\) redacted:fp=[0-9a-f]{12} 128 limit time-soft 3600 limit time-hard 604800 limit byte-soft 68719476736 limit byte-hard 274877906944 limit packet-soft 4294967296 limit packet-hard 17179869184$/
            : /^replay-window 32 aead rfc4106\(gcm\(aes\)\) redacted:fp=[0-9a-f]{12} 128 limit time-soft 3600 limit time-hard 604800 limit byte-soft 68719476736 limit byte-hard 274877906944 limit packet-soft 2147483648 limit packet-hard 4026531840$/,
        );
        const line = `${s.src} ${s.dst} ${s.spi} ${s.reqid} ${s.rest}`;
        const prev = seen.get(s.spi);
        if (prev) {
          expect(line).toBe(prev.line);
          prev.nodes.push(node);
        } else seen.set(s.spi, { nodes: [node], line });
      }
    }
    // 3 overlay links and 3 telescope hops, both directions
    expect(seen.size).toBe(12);
    for (const [spi, { nodes, line }] of seen) {
      const [src, dst] = line.split(' ') as [string, string];
      expect([spi, nodes.sort()]).toEqual([spi, [owner.get(src)!, owner.get(dst)!].sort()]);
    }
  });

  test('every template refers to an SA installed on that node (same src, dst and reqid)', () => {
    for (const node of ['alice', 'or1', 'or2', 'or3']) {
      const have = new Set(states(node).map((s) => `${s.src}>${s.dst}#${s.reqid}`));
      for (const l of lines(node, 'ip').filter((x) => x.startsWith('xfrm policy '))) {
        for (const t of l.matchAll(/ tmpl src (\S+) dst (\S+) proto esp reqid (\S+)/g)) {
          expect([node, `${t[1]}>${t[2]}#${t[3]}`, have.has(`${t[1]}>${t[2]}#${t[3]}`)]).toEqual([node, `${t[1]}>${t[2]}#${t[3]}`, true]);
        }
      }
    }
  });
});
