/**
 * Path selection (src/pathselect): eligibility rules checked against an independent brute-force
 * enumerator, exact uniformity (a chi-square goodness-of-fit test that also rejects a biased
 * per-step sampler), the seeded RNG, and diagnose() naming the constraint to blame.
 */
import { describe, expect, test } from '@jest/globals';
import { PathError, PathSpace, constraintsFor, diagnose, selectPath } from '../../src/pathselect/select.js';
import { SeededRng, cryptoRng, rngFactory, type Rng } from '../../src/pathselect/rng.js';
import type { CircuitDef, Net } from '../../src/topology/net.js';
import { netFromYaml, netFromYamlUnchecked } from '../helpers/net.js';

// ---------------------------------------------------------------------------------------------
// A topology described as plain data, so the brute-force checker never looks at Net/PathSpace.

interface RSpec {
  name: string;
  op: string;
  country?: string;
  addr: string; // underlay, "a.b.c.d"
  allow?: string[]; // exit allow prefixes
}
interface Spec {
  routers: RSpec[];
  entries: string[];
  links: [string, string][];
  circuits: { name: string; to: string[]; hops: number; countries?: boolean; subnets16?: boolean }[];
}

function specYaml(s: Spec): string {
  const ops = [...new Set(s.routers.map((r) => r.op))];
  const lines = ['version: 1', 'hops: 3', 'operators:', ...ops.map((o) => `  - name: ${o}`), 'routers:'];
  s.routers.forEach((r, i) => {
    lines.push(`  - name: ${r.name}`, `    operator: ${r.op}`);
    if (r.country) lines.push(`    country: ${r.country}`);
    lines.push(`    underlay: { interface: eth0, address: ${r.addr}/24 }`, `    pool: 100.${64 + Math.floor(i / 200)}.${i % 200}.0/24`);
    if (r.allow) lines.push('    exit:', '      allow:', ...r.allow.map((a) => `        - { to: ${a} }`));
  });
  lines.push('clients:', '  - name: cl', '    underlay: { interface: eth0, address: 192.0.2.250/24 }', `    entry: [${s.entries.join(', ')}]`);
  lines.push('links:', ...s.links.map(([a, b]) => `  - [${a}, ${b}]`));
  lines.push('circuits:');
  for (const c of s.circuits) {
    lines.push(`  - name: ${c.name}`, '    client: cl', `    to: [${c.to.join(', ')}]`, `    hops: ${c.hops}`);
    lines.push(`    distinct: { countries: ${c.countries ?? false}, subnets16: ${c.subnets16 ?? false} }`);
  }
  return lines.join('\n') + '\n';
}

function ipNum(s: string): number {
  return s.split('.').reduce((a, o) => a * 256 + Number(o), 0);
}
/** does prefix `outer` ("a.b.c.d/n") contain prefix `inner`? plain arithmetic, no library */
function contains(outer: string, inner: string): boolean {
  const [oa, ol] = outer.split('/') as [string, string];
  const [ia, il = '32'] = inner.split('/') as [string, string?];
  const olen = Number(ol);
  if (Number(il) < olen) return false;
  const size = 2 ** (32 - olen);
  return Math.floor(ipNum(ia) / size) === Math.floor(ipNum(oa) / size);
}

/** Why `path` breaks a rule of circuit `c` in spec `s`, or undefined when it is eligible. */
function ruleViolation(s: Spec, c: Spec['circuits'][number], path: string[]): string | undefined {
  const by = new Map(s.routers.map((r) => [r.name, r]));
  if (path.length !== c.hops) return 'length';
  if (new Set(path).size !== path.length) return 'repeated router';
  if (!path.every((p) => by.has(p))) return 'unknown router';
  if (!s.entries.includes(path[0]!)) return 'first hop is not an entry';
  const linked = new Set(s.links.flatMap(([a, b]) => [`${a}|${b}`, `${b}|${a}`]));
  for (let i = 1; i < path.length; i++) if (!linked.has(`${path[i - 1]}|${path[i]}`)) return `no link ${path[i - 1]}-${path[i]}`;
  const exit = by.get(path[path.length - 1]!)!;
  if (!exit.allow || !c.to.every((d) => exit.allow!.some((a) => contains(a, d)))) return 'last hop does not admit';
  const rs = path.map((p) => by.get(p)!);
  if (new Set(rs.map((r) => r.op)).size !== rs.length) return 'operator twice';
  if (c.countries && (rs.some((r) => !r.country) || new Set(rs.map((r) => r.country)).size !== rs.length)) return 'country twice';
  if (c.subnets16 && new Set(rs.map((r) => r.addr.split('.').slice(0, 2).join('.'))).size !== rs.length) return '/16 twice';
  return undefined;
}

/** Every eligible path, by trying every ordered tuple of distinct routers. */
function bruteForce(s: Spec, c: Spec['circuits'][number]): string[][] {
  const names = s.routers.map((r) => r.name);
  const out: string[][] = [];
  const rec = (path: string[]) => {
    if (path.length === c.hops) {
      if (ruleViolation(s, c, path) === undefined) out.push([...path]);
      return;
    }
    for (const n of names) if (!path.includes(n)) rec([...path, n]);
  };
  rec([]);
  return out;
}

const key = (p: string[]) => p.join(' ');
const circuitOf = (net: Net, name: string): CircuitDef => net.circuits.find((c) => c.name === name)!;

// ---------------------------------------------------------------------------------------------
// A mesh where entries have out-degree 2, 6 and 5 (counted in completions), an exit that does not
// admit the destinations, a shared operator, countries and /16s that only some paths respect.

const MESH: Spec = {
  routers: [
    { name: 'e1', op: 'op-e1', country: 'DE', addr: '10.1.0.1' },
    { name: 'e2', op: 'op-e2', country: 'NL', addr: '10.2.0.1' },
    { name: 'e3', op: 'op-e3', country: 'FR', addr: '10.3.0.1' },
    { name: 'm1', op: 'op-m1', country: 'DE', addr: '10.4.0.1' },
    { name: 'm2', op: 'op-m2', country: 'BE', addr: '10.5.0.1' },
    { name: 'm3', op: 'op-m3', country: 'AT', addr: '10.3.0.2' },
    { name: 'm4', op: 'op-shared', country: 'CH', addr: '10.6.0.1' },
    { name: 'x1', op: 'op-shared', country: 'SE', addr: '10.7.0.1', allow: ['203.0.113.0/24'] },
    { name: 'x2', op: 'op-x2', country: 'NL', addr: '10.8.0.1', allow: ['203.0.113.0/25', '198.18.0.0/15'] },
    { name: 'x3', op: 'op-x3', country: 'NO', addr: '10.2.0.2', allow: ['0.0.0.0/0'] },
    { name: 'x4', op: 'op-x4', country: 'PL', addr: '10.9.0.1', allow: ['192.0.2.0/24'] },
  ],
  entries: ['e1', 'e2', 'e3'],
  links: [
    ['e1', 'm1'], ['e1', 'e2'], ['e1', 'x1'], ['x1', 'x2'],
    ['e2', 'm1'], ['e2', 'm2'], ['e2', 'm3'],
    ['e3', 'm2'], ['e3', 'm3'], ['e3', 'm4'],
    ['m1', 'x1'], ['m1', 'x4'],
    ['m2', 'x1'], ['m2', 'x2'],
    ['m3', 'x2'], ['m3', 'x3'],
    ['m4', 'x1'], ['m4', 'x3'],
  ],
  circuits: [
    // one client: destinations must not overlap between its circuits
    { name: 'plain', to: ['203.0.113.7/32'], hops: 3 },
    { name: 'countries', to: ['203.0.113.8/32'], hops: 3, countries: true },
    { name: 'nets', to: ['203.0.113.9/32'], hops: 3, subnets16: true },
    { name: 'both', to: ['203.0.113.64/26'], hops: 3, countries: true, subnets16: true },
    { name: 'wide', to: ['203.0.113.128/26', '198.18.5.0/24'], hops: 3 },
    { name: 'four', to: ['203.0.113.10/32'], hops: 4 },
  ],
};

describe('path selection against a brute-force enumerator', () => {
  const net = netFromYaml(specYaml(MESH));

  test('the rule checker itself rejects paths that break each rule', () => {
    const c = MESH.circuits[3]!; // both
    expect(ruleViolation(MESH, c, ['e2', 'm2', 'x1'])).toBeUndefined();
    expect(ruleViolation(MESH, c, ['m2', 'e2', 'x1'])).toBe('first hop is not an entry');
    expect(ruleViolation(MESH, c, ['e2', 'm4', 'x1'])).toBe('no link e2-m4');
    expect(ruleViolation(MESH, c, ['e1', 'm1', 'x4'])).toBe('last hop does not admit');
    expect(ruleViolation(MESH, MESH.circuits[0]!, ['e3', 'm4', 'x1'])).toBe('operator twice');
    expect(ruleViolation(MESH, c, ['e1', 'm1', 'x1'])).toBe('country twice');
    expect(ruleViolation(MESH, MESH.circuits[2]!, ['e3', 'm3', 'x2'])).toBe('/16 twice');
  });

  for (const c of MESH.circuits) {
    test(`circuit "${c.name}": every draw is eligible and every eligible path is drawn`, () => {
      const expected = bruteForce(MESH, c);
      expect(expected.length).toBeGreaterThan(1);
      const def = circuitOf(net, c.name);
      const seen = new Map<string, number>();
      const draws = 60 * expected.length;
      for (let i = 0; i < draws; i++) {
        const p = selectPath(net, def, new SeededRng('rules', `${c.name}/${i}`));
        expect(ruleViolation(MESH, c, p)).toBeUndefined();
        seen.set(key(p), (seen.get(key(p)) ?? 0) + 1);
      }
      expect([...seen.keys()].sort()).toEqual(expected.map(key).sort());
    });

    test(`circuit "${c.name}": PathSpace enumerates exactly the brute-force set, each path once`, () => {
      const expected = bruteForce(MESH, c).map(key).sort();
      const space = new PathSpace(net, constraintsFor(net, circuitOf(net, c.name)));
      expect(space.count()).toBe(expected.length);
      const all = space.all().map(key);
      expect(new Set(all).size).toBe(all.length); // nth is injective, so rng.int uniform => path uniform
      expect([...all].sort()).toEqual(expected);
      for (const p of bruteForce(MESH, c)) expect(space.isEligible(p)).toBeUndefined();
      expect(space.nth(expected.length)).toBeUndefined();
    });

    test(`circuit "${c.name}": nth after count (skipping whole entries by their counts) is nth on a fresh walker`, () => {
      const cons = constraintsFor(net, circuitOf(net, c.name));
      const counted = new PathSpace(net, cons);
      const n = counted.count();
      for (let i = 0; i <= n; i++) expect(counted.nth(i)).toEqual(new PathSpace(net, cons).nth(i));
      // a count cut short by its cap keeps no per-entry counts: nth still walks every path
      const capped = new PathSpace(net, cons);
      capped.count(1);
      for (let i = 0; i <= n; i++) expect(capped.nth(i)).toEqual(new PathSpace(net, cons).nth(i));
    });
  }

  test('the constraints really cut paths (the brute-force counts differ)', () => {
    const n = (name: string) => bruteForce(MESH, MESH.circuits.find((c) => c.name === name)!).length;
    expect(n('plain')).toBe(13);
    expect(n('countries')).toBeLessThan(n('plain'));
    expect(n('nets')).toBeLessThan(n('plain'));
    expect(n('both')).toBeLessThan(Math.min(n('countries'), n('nets')) + 1);
    expect(n('wide')).toBeLessThan(n('plain')); // only x3 admits both 203.0.113.128/26 and 198.18.5.0/24
  });

  test('isEligible explains why a stored path broke', () => {
    const space = new PathSpace(net, constraintsFor(net, circuitOf(net, 'plain')));
    expect(space.isEligible(['e1', 'm1'])).toMatch(/2 hops/);
    expect(space.isEligible(['e1', 'm1', 'gone'])).toMatch(/gone is no longer in the topology/);
    expect(space.isEligible(['m1', 'e1', 'x1'])).toMatch(/entry/);
    expect(space.isEligible(['e2', 'm4', 'x1'])).toMatch(/overlay neighbours/);
    expect(space.isEligible(['e3', 'm4', 'x1'])).toMatch(/distinctness/);
    expect(space.isEligible(['e1', 'm1', 'x4'])).toMatch(/x4 no longer admits/);
  });
});

// ---------------------------------------------------------------------------------------------
// Uniformity: chi-square goodness of fit.

function lnGamma(z: number): number {
  // Lanczos approximation (g=7, n=9)
  const g = [
    0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059,
    12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7,
  ];
  if (z < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * z)) - lnGamma(1 - z);
  z -= 1;
  let x = g[0]!;
  for (let i = 1; i < 9; i++) x += g[i]! / (z + i);
  const t = z + 7.5;
  return 0.5 * Math.log(2 * Math.PI) + (z + 0.5) * Math.log(t) - t + Math.log(x);
}

/** regularized upper incomplete gamma Q(a, x) */
function gammaQ(a: number, x: number): number {
  if (x <= 0) return 1;
  const lead = Math.exp(-x + a * Math.log(x) - lnGamma(a));
  if (x < a + 1) {
    let sum = 1 / a;
    let term = sum;
    for (let n = 1; n < 1000; n++) {
      term *= x / (a + n);
      sum += term;
      if (Math.abs(term) < Math.abs(sum) * 1e-15) break;
    }
    return 1 - sum * lead;
  }
  // Lentz continued fraction
  let b = x + 1 - a;
  let c = 1 / 1e-300;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < 1000; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < 1e-300) d = 1e-300;
    c = b + an / c;
    if (Math.abs(c) < 1e-300) c = 1e-300;
    d = 1 / d;
    const del = d * c;
    h *= del;
    if (Math.abs(del - 1) < 1e-15) break;
  }
  return lead * h;
}

/** x with P(chi2_df > x) = p */
function chiSquareCritical(df: number, p: number): number {
  let lo = 0;
  let hi = 10 * df + 100;
  for (let i = 0; i < 200; i++) {
    const mid = (lo + hi) / 2;
    if (gammaQ(df / 2, mid / 2) > p) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

function chiSquare(counts: number[], total: number): number {
  const e = total / counts.length;
  return counts.reduce((s, o) => s + (o - e) ** 2 / e, 0);
}

describe('uniformity over eligible paths', () => {
  const net = netFromYaml(specYaml(MESH));
  const c = MESH.circuits[0]!; // plain: 13 paths; entries e1, e2, e3 lead to 2, 6 and 5 of them
  const def = circuitOf(net, c.name);
  const paths = bruteForce(MESH, c);
  const index = new Map(paths.map((p, i) => [key(p), i]));
  const N = paths.length;
  const DRAWS = 30_000;

  test('the chi-square critical values match the published table', () => {
    // p = 0.001 upper critical values (NIST/SEMATECH e-Handbook, table 1.3.6.7.4)
    expect(chiSquareCritical(10, 0.001)).toBeCloseTo(29.588, 2);
    expect(chiSquareCritical(12, 0.001)).toBeCloseTo(32.909, 2);
    expect(chiSquareCritical(20, 0.001)).toBeCloseTo(45.315, 2);
    expect(chiSquareCritical(1, 0.05)).toBeCloseTo(3.841, 2);
  });

  test('the topology is one where per-hop uniform choice is not path-uniform', () => {
    expect(N).toBeGreaterThanOrEqual(12);
    expect(N).toBeLessThanOrEqual(30);
    const perEntry = new Map<string, number>();
    for (const p of paths) perEntry.set(p[0]!, (perEntry.get(p[0]!) ?? 0) + 1);
    expect(new Set(perEntry.values()).size).toBeGreaterThan(1);
  });

  /** per-step uniform: at each hop pick uniformly among next routers that still lead somewhere */
  function perStepSampler(rng: Rng): string[] {
    let prefix: string[] = [];
    while (prefix.length < c.hops) {
      const options = [...new Set(paths.filter((p) => prefix.every((h, i) => p[i] === h)).map((p) => p[prefix.length]!))];
      prefix = [...prefix, options[rng.int(options.length)]!];
    }
    return prefix;
  }

  function chiOf(sample: (i: number) => string[]): number {
    const counts = new Array<number>(N).fill(0);
    const strays: string[] = [];
    for (let i = 0; i < DRAWS; i++) {
      const p = sample(i);
      const idx = index.get(key(p));
      if (idx === undefined) strays.push(key(p));
      else counts[idx]!++;
    }
    expect(strays).toEqual([]);
    return chiSquare(counts, DRAWS);
  }

  const critical = chiSquareCritical(N - 1, 0.001);

  test(`selectPath passes a chi-square test at p=0.001 over ${DRAWS} seeded draws`, () => {
    const stat = chiOf((i) => selectPath(net, def, new SeededRng('uniformity-seed-1', `draw/${i}`)));
    if (process.env.ONIONCTL_TEST_VERBOSE) console.log(`selectPath: chi2=${stat.toFixed(2)} df=${N - 1} critical(p=0.001)=${critical.toFixed(2)}`);
    expect(stat).toBeLessThan(critical);
  });

  test('the same test rejects a per-step uniform sampler (so it can fail)', () => {
    const stat = chiOf((i) => perStepSampler(new SeededRng('uniformity-seed-1', `draw/${i}`)));
    if (process.env.ONIONCTL_TEST_VERBOSE) console.log(`per-step sampler: chi2=${stat.toFixed(2)} df=${N - 1} critical(p=0.001)=${critical.toFixed(2)}`);
    expect(stat).toBeGreaterThan(critical);
  });

  test('selection with one shared stream (rngFactory) is uniform too', () => {
    const rng = rngFactory('uniformity-seed-2')('one-stream');
    const stat = chiOf(() => selectPath(net, def, rng));
    expect(stat).toBeLessThan(critical);
  });
});

// ---------------------------------------------------------------------------------------------

describe('seeded RNG', () => {
  const seq = (r: Rng, n: number, len = 40) => Array.from({ length: len }, () => r.int(n));

  test('same seed and label give the same sequence', () => {
    expect(seq(new SeededRng('s', 'a'), 1000)).toEqual(seq(new SeededRng('s', 'a'), 1000));
    expect(seq(rngFactory('s')('a'), 1000)).toEqual(seq(new SeededRng('s', 'a'), 1000));
  });

  test('different labels, or different seeds, give different sequences', () => {
    const base = seq(new SeededRng('s', 'a'), 2 ** 40);
    expect(seq(new SeededRng('s', 'b'), 2 ** 40)).not.toEqual(base);
    expect(seq(new SeededRng('t', 'a'), 2 ** 40)).not.toEqual(base);
    // the separator keeps ("s", "ab") and ("sa", "b") apart
    expect(seq(new SeededRng('sa', 'b'), 2 ** 40)).not.toEqual(seq(new SeededRng('s', 'ab'), 2 ** 40));
  });

  test('int(n) stays in [0, n) and is an integer, for small, odd and huge bounds', () => {
    const r = new SeededRng('range', 'x');
    const bad: [number, number][] = [];
    for (const n of [1, 2, 3, 7, 10, 1000, 2 ** 31 + 11, 2 ** 47 + 3, 2 ** 48]) {
      for (let i = 0; i < 500; i++) {
        const v = r.int(n);
        if (!Number.isInteger(v) || v < 0 || v >= n) bad.push([n, v]);
      }
    }
    expect(bad).toEqual([]);
    expect(r.int(1)).toBe(0);
    const cr = cryptoRng();
    for (let i = 0; i < 200; i++) expect(cr.int(5)).toBeLessThan(5);
  });

  test('int(n) reaches every value of a small range about equally often', () => {
    const r = new SeededRng('spread', 'x');
    const counts = new Array<number>(6).fill(0);
    for (let i = 0; i < 12_000; i++) counts[r.int(6)]!++;
    expect(chiSquare(counts, 12_000)).toBeLessThan(chiSquareCritical(5, 0.001));
  });

  test('bad bounds are refused', () => {
    for (const n of [0, -1, 1.5, Number.NaN, 2 ** 48 + 1]) {
      expect(() => new SeededRng('s', 'a').int(n)).toThrow(RangeError);
      expect(() => cryptoRng().int(n)).toThrow(RangeError);
    }
  });

  test('without a seed the factory hands out the CSPRNG', () => {
    const f = rngFactory(undefined);
    const r = f('x');
    expect(r).not.toBeInstanceOf(SeededRng);
    expect(r.int(10)).toBeLessThan(10);
  });
});

// ---------------------------------------------------------------------------------------------

describe('diagnose() names the constraint to blame', () => {
  /** three routers in a line; each test changes one thing */
  const line = (o: { ops?: [string, string, string]; countries?: [string, string, string]; addrs?: [string, string, string]; allow?: string; links?: string; distinct?: string; k?: number }) => {
    const ops = o.ops ?? ['a', 'b', 'c'];
    const cs = o.countries ?? ['DE', 'NL', 'FR'];
    const ad = o.addrs ?? ['10.1.0.1', '10.2.0.1', '10.3.0.1'];
    return `
      version: 1
      operators: [{ name: a }, { name: b }, { name: c }]
      routers:
        - { name: r1, operator: ${ops[0]}, country: ${cs[0]}, underlay: { interface: eth0, address: ${ad[0]}/24 }, pool: 100.64.1.0/24 }
        - { name: r2, operator: ${ops[1]}, country: ${cs[1]}, underlay: { interface: eth0, address: ${ad[1]}/24 }, pool: 100.64.2.0/24 }
        - name: r3
          operator: ${ops[2]}
          ${cs[2] ? `country: ${cs[2]}` : ''}
          underlay: { interface: eth0, address: ${ad[2]}/24 }
          pool: 100.64.3.0/24
          exit: { allow: [{ to: ${o.allow ?? '203.0.113.0/24'} }] }
      clients:
        - { name: cl, underlay: { interface: eth0, address: 192.0.2.9/24 }, entry: [r1] }
      links: ${o.links ?? '[[r1, r2], [r2, r3]]'}
      circuits:
        - { name: web, client: cl, to: [203.0.113.80/32], hops: ${o.k ?? 3}, distinct: ${o.distinct ?? '{}'} }
    `;
  };
  const diag = (yaml: string) => {
    const net = netFromYamlUnchecked(yaml);
    return diagnose(net, net.circuits[0]!);
  };

  test('a topology with a path: no diagnosis, and selectPath returns it', () => {
    const net = netFromYamlUnchecked(line({ distinct: '{ countries: true, subnets16: true }' }));
    expect(diagnose(net, net.circuits[0]!)).toBeUndefined();
    expect(selectPath(net, net.circuits[0]!, new SeededRng('x', 'y'))).toEqual(['r1', 'r2', 'r3']);
  });

  test('exit: no exit admits the destination', () => {
    const e = diag(line({ allow: '198.51.100.0/24' }));
    expect(e).toBeInstanceOf(PathError);
    expect(e!.constraint).toBe('exit');
    expect(e!.circuit).toBe('web');
    expect(e!.message).toMatch(/exits: r3/);
  });

  test('exit: an allow rule narrower than the destination does not admit it', () => {
    const net = netFromYamlUnchecked(line({ allow: '203.0.113.80/32' }).replace('to: [203.0.113.80/32]', 'to: [203.0.113.0/24]'));
    expect(diagnose(net, net.circuits[0]!)?.constraint).toBe('exit');
  });

  test('structure: the exit is not reachable in k hops over overlay links', () => {
    expect(diag(line({ links: '[[r1, r2]]' }))?.constraint).toBe('structure');
    expect(diag(line({ k: 4 }))?.constraint).toBe('structure');
  });

  test('operators: the only path has two hops of one operator', () => {
    const e = diag(line({ ops: ['a', 'b', 'a'] }));
    expect(e?.constraint).toBe('operators');
    expect(e?.message).toMatch(/operator/);
  });

  test('countries: asked for, and two hops share a country (or one has none)', () => {
    expect(diag(line({ countries: ['DE', 'NL', 'DE'], distinct: '{ countries: true }' }))?.constraint).toBe('countries');
    expect(diag(line({ countries: ['DE', 'NL', ''], distinct: '{ countries: true }' }))?.constraint).toBe('countries');
    expect(diag(line({ countries: ['DE', 'NL', ''] }))).toBeUndefined();
    // not asked: fine
    expect(diag(line({ countries: ['DE', 'NL', 'DE'] }))).toBeUndefined();
  });

  test('subnets16: asked for, and two hops share a /16', () => {
    const e = diag(line({ addrs: ['10.1.0.1', '10.2.0.1', '10.1.200.1'], distinct: '{ subnets16: true }' }));
    expect(e?.constraint).toBe('subnets16');
    expect(diag(line({ addrs: ['10.1.0.1', '10.2.0.1', '10.1.200.1'] }))).toBeUndefined();
    // a /16 boundary: 10.1.255.x and 10.2.0.x differ
    expect(diag(line({ addrs: ['10.1.255.1', '10.2.0.1', '10.3.0.1'], distinct: '{ subnets16: true }' }))).toBeUndefined();
  });

  test('the first broken constraint is named (operators before countries)', () => {
    expect(diag(line({ ops: ['a', 'a', 'c'], countries: ['DE', 'DE', 'FR'], distinct: '{ countries: true }' }))?.constraint).toBe('operators');
  });

  test('selectPath throws the diagnosis', () => {
    const net = netFromYamlUnchecked(line({ ops: ['a', 'b', 'b'] }));
    let err: unknown;
    try {
      selectPath(net, net.circuits[0]!, new SeededRng('x', 'y'));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PathError);
    expect((err as PathError).constraint).toBe('operators');
  });

  test('validation refuses a circuit that cannot be built, quoting the diagnosis', () => {
    expect(() => netFromYaml(line({ ops: ['a', 'b', 'b'] }))).toThrow(/circuit "web" cannot be built: every 3-hop path has two hops run by the same operator/);
  });
});
