/**
 * Helpers for the apply tests: a router that holds nothing, a fake Transport that records what
 * it is asked to run, the keys a plan would install, and the emptied config destroy pushes with.
 */
import type { Progress } from '../../src/apply/engine.js';
import { parseStageScript } from '../../src/apply/commands.js';
import type { KeySource } from '../../src/keys/kdf.js';
import { PROFILES } from '../../src/keys/profiles.js';
import type { NodeConfig } from '../../src/model/config.js';
import type { Cidr } from '../../src/net/addr.js';
import { observeNode, type ObservedNode } from '../../src/readback/observed.js';
import type { ExecOptions, ExecResult, Transport } from '../../src/remote/transport.js';
import type { Plan } from '../../src/plan/plan.js';
import type { Net } from '../../src/topology/net.js';
import { umlObserved } from './readback.js';
import { padNet, padPlan, saObserved } from './sa.js';

/** a node whose every kind was read and holds nothing (a freshly booted router) */
export function emptyObserved(node: string, pools: Cidr[], o: { sysctls?: boolean } = {}): ObservedNode {
  const obs = observeNode(node, { xfrmState: '', xfrmPolicy: '', routes: '', addresses: '', iptablesSave: '' }, { pools });
  if (o.sysctls) obs.sysctls = {};
  return obs;
}

/** the node's config with nothing in it (what destroy pushes against) */
export const emptyConfig = (c: NodeConfig): NodeConfig => ({ ...c, states: [], policies: [], addresses: [], routes: [], sysctls: [], firewall: { ...c.firewall, snat: [], forward: [] } });

/** every key (hex) the configs' SAs would be installed with */
export function plannedKeysHex(configs: Iterable<NodeConfig>, keys: KeySource): string[] {
  const out = new Set<string>();
  for (const c of configs) for (const s of c.states) out.add(keys.key(s.key, PROFILES[s.profile].keyBytes).toString('hex'));
  return [...out];
}

/** the first 16 hex digits of any key: enough to spot a key or a piece of one */
export function containsKey(text: string, keysHex: readonly string[]): string | undefined {
  const t = text.toLowerCase();
  return keysHex.find((k) => t.includes(k.slice(0, 16)) || t.includes(k.slice(-16)));
}

export interface ExecRecord {
  node: string;
  argv: string[];
  stdin: string;
}

export type FakeResponder = (node: string, argv: readonly string[], stdin: string) => ExecResult | undefined;

/**
 * A Transport that records every command in a log shared across nodes, and answers as `respond`
 * says (default: success). A stage script (`sh -s`, src/apply/commands.ts) is run as a shell
 * would: its commands in order, each logged and answered on its own, the first failure ending
 * it with the script's own line on stderr. `channels` logs every exec itself (one SSH channel each).
 */
export class FakeTransport implements Transport {
  readonly label: string;
  closed = false;
  constructor(
    readonly node: string,
    private readonly log: ExecRecord[],
    private readonly respond: FakeResponder = () => undefined,
    private readonly onExec: (r: ExecRecord) => void = () => undefined,
    private readonly channels: ExecRecord[] = [],
    /** scripts: false: a stage script is answered by `respond` as one command (a router whose sh cannot run it) */
    private readonly o: { scripts: boolean } = { scripts: true },
  ) {
    this.label = `${node} (fake)`;
  }
  private async one(argv: readonly string[], stdin: string): Promise<ExecResult> {
    const rec = { node: this.node, argv: [...argv], stdin };
    this.log.push(rec);
    this.onExec(rec);
    // a real router answers later: let the other nodes' work interleave
    await new Promise((r) => setImmediate(r));
    return this.respond(this.node, argv, rec.stdin) ?? { exitCode: 0, stdout: '', stderr: '' };
  }
  async exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    if (this.closed) throw new Error(`${this.node}: exec on a closed transport`);
    const stdin = opts.stdin ?? '';
    this.channels.push({ node: this.node, argv: [...argv], stdin });
    const parts = this.o.scripts && argv.join(' ') === 'sh -s' ? parseStageScript(stdin) : undefined;
    if (!parts) return this.one(argv, stdin);
    let stdout = '';
    for (const [i, x] of parts.entries()) {
      const r = await this.one(x.argv, x.stdin);
      stdout += r.stdout;
      if (r.exitCode !== 0) return { exitCode: r.exitCode, stdout, stderr: `${r.stderr}onionctl: step ${i + 1} of ${parts.length} failed (exit ${r.exitCode})\n` };
    }
    return { exitCode: 0, stdout, stderr: '' };
  }
  async close(): Promise<void> {
    this.closed = true;
  }
}

export interface RecordedProgress extends Progress {
  events: { kind: 'step' | 'done' | 'fail'; node: string; text: string }[];
}

export function recordingProgress(): RecordedProgress {
  const events: RecordedProgress['events'] = [];
  return {
    events,
    step: (node, text) => events.push({ kind: 'step', node, text }),
    done: (node, text) => events.push({ kind: 'done', node, text }),
    fail: (node, text) => events.push({ kind: 'fail', node, text }),
  };
}

// ------------------------------------------------------------------------------------------
// a lab plan every object of which the recorded read-backs hold

/** the net and plan of test/helpers/sa.ts (three-mixes as the lab runs it, SA options recorded in uml-6.1-sa) */
export const heldNet = (): Net => padNet();
export const heldPlan = (): Plan => padPlan();

/**
 * A node that holds the held plan: states and policies as recorded with SA options
 * (uml-6.1-sa), routes, addresses and iptables as recorded in the lab (uml-6.1), and the foreign
 * SAs recorded on or1 (uml-6.1) among them.
 */
export function heldObserved(node: string, variant: '' | '-s' = '-s'): ObservedNode {
  const base = umlObserved(node, padNet(), variant);
  const sa = saObserved(node, variant);
  return { ...base, states: { owned: sa.states!.owned, foreign: base.states!.foreign }, policies: sa.policies! };
}
