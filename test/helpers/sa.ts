/**
 * SA options (lifetimes, ESN, TFC padding): the padded lab plan the uml-6.1-sa fixtures were
 * recorded from (test/fixtures/readback/README.md), and a random key source for kernel tests.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { keyStoreId, type KeySource, type SaKeyId } from '../../src/keys/kdf.js';
import { saOptions, type SaKind } from '../../src/keys/lifetimes.js';
import { PRIORITY_CIRCUIT, type NodeConfig, type XfrmPolicy, type XfrmState } from '../../src/model/config.js';
import { hostCidr, parseIPv4, type Cidr } from '../../src/net/addr.js';
import { rngFactory } from '../../src/pathselect/rng.js';
import { computePlan, type Plan } from '../../src/plan/plan.js';
import { emptyState } from '../../src/state/model.js';
import type { Net } from '../../src/topology/net.js';
import type { CryptoProfileName } from '../../src/topology/schema.js';
import { observeNode, type ObservedNode } from '../../src/readback/observed.js';
import { FIXTURES, labNet, poolsOf } from './readback.js';

/** examples/three-mixes.yaml as the lab plans it, with TFC padding to 600 bytes on telescope layers 1 and 3 of circuit web */
export const PAD_SIZE = 600;
export function padNet(): Net {
  return labNet((y) => {
    const out = y.replace(/^(\s*)to: \[203\.0\.113\.80\/32\]$/m, `$1to: [203.0.113.80/32]\n$1tfcpad: { size: ${PAD_SIZE}, layers: [1, 3] }`);
    if (out === y) throw new Error('three-mixes.yaml changed: cannot add tfcpad to circuit web');
    return out;
  });
}

export function padPlan(): Plan {
  return computePlan({ net: padNet(), state: emptyState('00'.repeat(32)), rngFor: rngFactory('lab'), now: '2024-01-01T00:00:00Z' });
}

/** Fresh CSPRNG keys, the same for one SA every time it is asked (both ends get the same key); hands out copies. */
export class RandomKeys implements KeySource {
  private readonly keys = new Map<string, Buffer>();
  key(sa: SaKeyId, bytes: number): Buffer {
    const id = `${keyStoreId(sa)}/${bytes}`;
    let k = this.keys.get(id);
    if (!k) this.keys.set(id, (k = randomBytes(bytes)));
    return Buffer.from(k);
  }
}

// ------------------------------------------------------------------------------------------
// one SA pair between two namespaces, per combination of options (test/lab/sa-options.test.ts)

/**
 *   nsA  lo 100.64.0.1/32   a0 192.0.2.1/24 ==veth== b0 192.0.2.2/24   lo 100.64.0.2/32  nsB
 */
export const PAIR = { a: '192.0.2.1', b: '192.0.2.2', innerA: '100.64.0.1', innerB: '100.64.0.2' } as const;

export interface PairCase {
  name: string;
  kind: SaKind;
  profile: CryptoProfileName;
  tfcpad?: number;
  /** SPI (and reqid) of A -> B; B -> A is the next one */
  spi: number;
}

export const PAIR_CASES: PairCase[] = [
  { name: 'gcm-telescope', kind: 'telescope', profile: 'aes-gcm', spi: 0x4f0001c0 },
  { name: 'gcm-overlay-esn-pad', kind: 'overlay', profile: 'aes-gcm', tfcpad: PAD_SIZE, spi: 0x4f0001c2 },
  { name: 'cbc-telescope-pad', kind: 'telescope', profile: 'aes-cbc-hmac-sha1', tfcpad: PAD_SIZE, spi: 0x4f0001c4 },
  { name: 'cbc-overlay-esn', kind: 'overlay', profile: 'aes-cbc-hmac-sha1', spi: 0x4f0001c6 },
];

function pairState(c: PairCase, dir: 'fwd' | 'rev'): XfrmState {
  const o = saOptions(c.kind, c.profile);
  const spi = dir === 'fwd' ? c.spi : c.spi + 1;
  return {
    src: parseIPv4(dir === 'fwd' ? PAIR.a : PAIR.b),
    dst: parseIPv4(dir === 'fwd' ? PAIR.b : PAIR.a),
    spi,
    reqid: spi,
    kind: c.kind,
    replayWindow: o.replayWindow,
    esn: o.esn,
    lifetime: o.lifetime,
    ...(c.tfcpad !== undefined ? { tfcpad: c.tfcpad } : {}),
    profile: c.profile,
    key: { id: `pair:${c.name}:${dir}`, epoch: 1, spi },
    comment: `${c.name} ${dir}`,
  };
}

function bare(node: string, states: XfrmState[], policies: XfrmPolicy[]): NodeConfig {
  return { node, kind: 'router', underlay: node === 'A' ? 'a0' : 'b0', states, policies, addresses: [], routes: [], sysctls: [], firewall: { backend: 'iptables', snat: [], forward: [] } };
}

/** Node A's and node B's configuration for one case: the SA pair on both, policies for the inner /32s. */
export function pairConfigs(c: PairCase): { a: NodeConfig; b: NodeConfig } {
  const fwd = pairState(c, 'fwd');
  const rev = pairState(c, 'rev');
  const A = hostCidr(parseIPv4(PAIR.innerA));
  const B = hostCidr(parseIPv4(PAIR.innerB));
  const t = (s: XfrmState) => [{ src: s.src, dst: s.dst, reqid: s.reqid }];
  const pol = (src: Cidr, dst: Cidr, dir: XfrmPolicy['dir'], s: XfrmState): XfrmPolicy => ({ src, dst, dir, priority: PRIORITY_CIRCUIT, action: 'allow', tmpls: t(s), comment: `${c.name} ${dir}` });
  return {
    a: bare('A', [fwd, rev], [pol(A, B, 'out', fwd), pol(B, A, 'in', rev)]),
    b: bare('B', [fwd, rev], [pol(A, B, 'in', fwd), pol(B, A, 'out', rev)]),
  };
}

// ------------------------------------------------------------------------------------------
// the recorded fixtures (test/fixtures/readback/uml-6.1-sa, see its README)

export const SA_FIXTURES = path.join(FIXTURES, 'uml-6.1-sa');
/** the same recording made in the 6.12 lab kernel (test/fixtures/readback/README.md) */
export const SA_SETS = ['uml-6.1-sa', 'uml-6.12-sa'] as const;
export type SaSet = (typeof SA_SETS)[number];
export const SA_PLAN_NODES = ['alice', 'or1', 'or2', 'or3'] as const;

export function saFixture(dir: string, file: string, set: SaSet = 'uml-6.1-sa'): string {
  return readFileSync(path.join(FIXTURES, set, dir, `${file}.txt`), 'utf8');
}

/** a node of the padded lab plan as recorded: its states and policies */
export function saObserved(node: string, variant: '' | '-s' = '-s', set: SaSet = 'uml-6.1-sa'): ObservedNode {
  return observeNode(
    node,
    { xfrmState: saFixture(node, variant === '-s' ? 'ip-s-xfrm-state' : 'ip-xfrm-state', set), xfrmPolicy: saFixture(node, 'ip-xfrm-policy', set) },
    { pools: poolsOf(padNet()) },
  );
}
