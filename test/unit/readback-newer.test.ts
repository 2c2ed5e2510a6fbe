/**
 * What newer kernels and iproute2 print in `ip xfrm state` / `ip xfrm policy` (docs/kernels.md):
 * lastused (Linux 6.12 prints it for every SA that carried traffic), `dir in|out` (iproute2
 * 6.11+), `pcpu-num` (6.19+), `extra_flag` (with -s), `crypto offload parameters:`, numeric
 * modes, `invalid-time`. The inputs are the recorded or2 state of test/fixtures/readback/uml-6.1-sa
 * with lines added where iproute2's ip/ipxfrm.c prints them (xfrm_xfrma_print: algorithms,
 * lastused, anti-replay context, offload, if_id, tfcpad, dir, pcpu-num; then sel, lifetimes,
 * stats). Counters and timestamps are state: a router whose SAs carried traffic holds the plan.
 */
import { describe, expect, test } from '@jest/globals';
import { diffNode } from '../../src/diff/diff.js';
import { observeNode } from '../../src/readback/observed.js';
import { ReadbackError } from '../../src/readback/records.js';
import { parseXfrmPolicies, parseXfrmStates } from '../../src/readback/xfrm.js';
import { ZERO_KEYS, poolsOf } from '../helpers/readback.js';
import { PAIR_CASES, pairConfigs, padNet, padPlan, saFixture } from '../helpers/sa.js';

const NODE = 'or2';
const recorded = () => saFixture(NODE, 'ip-s-xfrm-state');
const policies = () => saFixture(NODE, 'ip-xfrm-policy');

/** inserts `line` (without its tab) after each line matching `after`, or before it with `before` */
function withLine(text: string, at: RegExp, line: string, where: 'after' | 'before' = 'after'): string {
  return text
    .split('\n')
    .flatMap((l) => (at.test(l) ? (where === 'after' ? [l, `\t${line}`] : [`\t${line}`, l]) : [l]))
    .join('\n');
}
const afterAlgo = /^\taead /;
/** the end of xfrm_xfrma_print (after the replay context and its bitmap): the line before "sel" */
const endOfAttrs = (text: string, line: string) => withLine(text, /^\tsel /, line, 'before');

function diffOf(stateText: string) {
  const plan = padPlan();
  const o = observeNode(NODE, { xfrmState: stateText, xfrmPolicy: policies() }, { pools: poolsOf(padNet()) });
  return diffNode(plan.configs.get(NODE)!, o, { keys: ZERO_KEYS });
}

describe('state items that are state, not configuration', () => {
  test('the recording as it is holds the plan (the baseline of the cases below)', () => {
    expect(diffOf(recorded())).toEqual([]);
  });

  test('lastused on every SA (Linux 6.12 after traffic): parsed, kept, never a change or a rekey', () => {
    const text = withLine(recorded(), afterAlgo, 'lastused 2026-12-07 05:10:11');
    const recs = parseXfrmStates(text);
    expect(recs.map((r) => r.lastUsed)).toEqual(recs.map(() => '2026-12-07 05:10:11'));
    expect(recs.every((r) => r.other.length === 0)).toBe(true);
    expect(diffOf(text)).toEqual([]);
  });

  test('invalid-time (iproute2 when localtime() fails) in lastused and in the add/use times', () => {
    let text = withLine(recorded(), afterAlgo, 'lastused invalid-time');
    text = text.replace(/add (\S+ \S+) use -/g, 'add invalid-time use invalid-time');
    const recs = parseXfrmStates(text);
    expect(recs[0]!.lastUsed).toBe('invalid-time');
    expect(recs[0]!.counters?.added).toBe('invalid-time');
    expect(diffOf(text)).toEqual([]);
  });
});

describe('state items that are configuration onionctl never sets: a replace naming the field', () => {
  const fieldsOf = (text: string) => {
    const ch = diffOf(text);
    expect(ch.length).toBeGreaterThan(0);
    return [...new Set(ch.flatMap((c) => (c.op === 'replace' ? c.fields.map((f) => `${f.field}: ${f.from}`) : [`${c.op} ${c.kind}`])))];
  };

  test('dir in / dir out (iproute2 6.11+, SA direction)', () => {
    const text = endOfAttrs(recorded(), 'dir in');
    expect(parseXfrmStates(text)[0]!.saDir).toBe('in');
    expect(fieldsOf(text)).toEqual(['dir: in']);
    expect(parseXfrmStates(endOfAttrs(recorded(), 'dir other (7)'))[0]!.saDir).toBe('other (7)');
  });

  test('pcpu-num (iproute2 6.19+)', () => {
    const text = endOfAttrs(recorded(), 'pcpu-num 3');
    expect(parseXfrmStates(text)[0]!.pcpuNum).toBe(3);
    expect(fieldsOf(text)).toEqual(['pcpu-num: 3']);
  });

  test('extra_flag on the replay-window line (ip -s): not taken for state flags', () => {
    const text = recorded().replace(/flag {2}\(0x00000000\)/g, 'flag  extra_flag oseq-may-wrap (0x00000000)');
    const r = parseXfrmStates(text)[0]!;
    expect(r.flags).toEqual([]);
    expect(r.extraFlags).toEqual(['oseq-may-wrap']);
    expect(fieldsOf(text)).toEqual(['extra flags: oseq-may-wrap']);
  });

  test('crypto offload parameters (iproute2 6.2+ wording)', () => {
    const text = endOfAttrs(recorded(), 'crypto offload parameters: dev eth0 dir out mode packet');
    expect(parseXfrmStates(text)[0]!.other).toEqual(['offload']);
    expect(fieldsOf(text)).toEqual(['other attributes: offload']);
  });

  test('a mode iproute2 cannot name is printed as a number (IP-TFS is 5): a mode change', () => {
    const text = recorded().replace(/mode tunnel/g, 'mode 5');
    expect(parseXfrmStates(text)[0]!.mode).toBe('5');
    expect(fieldsOf(text)).toEqual(['mode: 5']);
  });
});

describe('a line the parser does not know is an error, never a guess', () => {
  test('state: the error names the line and its first words, and no key material', () => {
    const text = withLine(recorded(), afterAlgo, 'frobnicate 0x0123456789abcdef0123 on');
    let err: unknown;
    try {
      parseXfrmStates(text);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ReadbackError);
    expect((err as ReadbackError).line).toBe(5);
    expect((err as Error).message).toMatch(/^line 5: unknown line in state 198\.51\.100\.12 -> 100\.64\.2\.1: "frobnicate <hex> on"/);
    expect((err as Error).message).not.toMatch(/0123456789/);
  });

  test('policy: an unknown line is an error; security context and offload are recorded by name', () => {
    const p = policies();
    expect(() => parseXfrmPolicies(withLine(p, /^\tdir /, 'frobnicate 1'))).toThrow(/line \d+: unknown line in policy .*"frobnicate 1"/);
    const ok = parseXfrmPolicies(withLine(p, /^\tdir /, 'crypto offload parameters: dev eth0 mode packet'));
    expect(ok.every((x) => x.other.join() === 'offload')).toBe(true);
  });
});

describe('the 6.12 lab kernel, recorded (test/fixtures/readback/uml-6.12-sa): SAs that carried traffic', () => {
  test.each(PAIR_CASES.map((c) => c.name))('%s: every used SA prints lastused; both ends hold their SAs as planned (no change, no rekey)', (name) => {
    const c = PAIR_CASES.find((x) => x.name === name)!;
    const cfgs = pairConfigs(c);
    for (const [end, cfg] of [['a', cfgs.a], ['b', cfgs.b]] as const) {
      for (const file of ['ip-s-xfrm-state', 'ip-xfrm-state']) {
        const text = saFixture(`${name}-${end}`, file, 'uml-6.12-sa');
        const recs = parseXfrmStates(text);
        expect(recs).toHaveLength(2);
        // the kernel's own output: a lastused time on each SA (both carried the pings)
        for (const r of recs) expect({ spi: r.spi, lastUsed: r.lastUsed }).toEqual({ spi: r.spi, lastUsed: expect.stringMatching(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/) });
        const o = observeNode(cfg.node, { xfrmState: text }, { pools: [] });
        const states = diffNode({ ...cfg, policies: [] }, { ...o, policies: { owned: [], foreign: [] } }, { keys: ZERO_KEYS }).filter((x) => x.kind === 'state');
        expect({ end, file, states }).toEqual({ end, file, states: [] });
      }
    }
  });
});
