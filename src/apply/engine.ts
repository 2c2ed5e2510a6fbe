/**
 * Plan against live routers and apply: read every router back, diff it against the desired
 * configuration, re-key what can no longer be installed with its old key, then push the changes
 * in three cross-node stages (commands.ts). The orchestration only; SSH, files and the clock are
 * passed in.
 *
 * Key rule (brief: an SA is never re-installed with a key it has used before): the state records,
 * per SA epoch, the nodes its key was pushed to (before the push). An SA that one of those nodes
 * no longer has, or has with other attributes, gets a new SPI and epoch (rekeySa), hence a new
 * key, on both ends.
 */
import { createHash } from 'node:crypto';
import type { KeySource, SaKeyId } from '../keys/kdf.js';
import type { NodeConfig } from '../model/config.js';
import type { Change, Conflict } from '../diff/diff.js';
import { diffNode, findConflicts } from '../diff/diff.js';
import { countChanges, type Counts } from '../diff/summary.js';
import type { ObservedNode } from '../readback/observed.js';
import { buildConfigs } from '../spd/build.js';
import type { State } from '../state/model.js';
import { rekeySaInPlace, saRecord, saRefOfId, type SaRef } from '../state/reconcile.js';
import type { Net } from '../topology/net.js';
import type { RngFactory } from '../pathselect/rng.js';
import type { Templates } from '../render/render.js';
import { forEachSession, type Outcome, type Sessions } from '../remote/fleet.js';
import { readNode, type RemoteRead } from '../remote/read.js';
import { TransportError, type ExecResult } from '../remote/transport.js';
import { combineSteps, ownAddresses, scriptOutcome, STAGES, stageSteps, type Stage, type Step } from './commands.js';

export interface Progress {
  /** a node starts a piece of work ("reading", "install: ip -batch (12)") */
  step(node: string, what: string): void;
  /** a node is done (summary) or failed */
  done(node: string, summary: string): void;
  fail(node: string, error: string): void;
}

export const silentProgress: Progress = { step() {}, done() {}, fail() {} };

export interface NodeRead {
  node: string;
  read?: RemoteRead;
  observed?: ObservedNode;
  error?: string;
}

/** Every node of the topology (routers then clients, in topology order). */

export function sysctlKeys(configs: Map<string, NodeConfig>, node: string): string[] {
  return configs.get(node)?.sysctls.map((s) => s.key) ?? [];
}

/** Reads every node back (in parallel) and splits what it holds into onionctl's and foreign. */
export async function readFleet(
  net: Net,
  nodes: readonly string[],
  sessions: Sessions,
  parallel: number,
  keysOf: (node: string) => string[],
  progress: Progress,
  o: { xfrmStat?: boolean } = {},
): Promise<Map<string, NodeRead>> {
  const pools = [...net.routers.values()].map((r) => r.pool);
  const outcomes = await forEachSession(nodes, sessions, parallel, async (t, node) => {
    progress.step(node, 'reading');
    return readNode(t, node, { sysctlKeys: keysOf(node), ...(o.xfrmStat ? { xfrmStat: true } : {}) }, { pools });
  });
  const out = new Map<string, NodeRead>();
  for (const oc of outcomes) {
    if (oc.ok) out.set(oc.node, { node: oc.node, ...oc.value });
    else {
      progress.fail(oc.node, oc.error.message);
      out.set(oc.node, { node: oc.node, error: oc.error.message });
    }
  }
  return out;
}

/** A digest of what a router holds of onionctl's (counters and kernel indexes left out). */
export function observedDigest(o: ObservedNode): string {
  const strip = {
    states: o.states?.owned.map(({ counters: _c, seq: _s, oseq: _o, ...rest }) => rest),
    policies: o.policies?.owned.map(({ index: _i, ...rest }) => rest),
    routes: o.routes?.owned.map(({ flags: _f, ...rest }) => rest),
    addresses: o.addresses?.owned,
    iptables: o.iptables?.owned,
    nft: o.nft?.owned,
    sysctls: o.sysctls,
  };
  return createHash('sha256').update(JSON.stringify(strip)).digest('hex').slice(0, 16);
}

export interface NodePlan {
  node: string;
  /** why the node could not be read; it is then left out of the apply */
  error?: string;
  changes: Change[];
  conflicts: Conflict[];
  digest?: string;
}

export interface Rekey {
  sa: string;
  reason: string;
  oldSpi: number;
  newSpi: number;
}

export interface LivePlan {
  state: State;
  configs: Map<string, NodeConfig>;
  nodes: NodePlan[];
  rekeys: Rekey[];
}

const hex32 = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;

/** the SAs whose current key cannot be (re)installed on some node, with the reason */
function toRekey(state: State, nodes: NodePlan[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const n of nodes) {
    for (const c of n.changes) {
      if (c.kind !== 'state' || c.op === 'remove') continue;
      const k: SaKeyId = c.desired.key;
      if (out.has(k.id)) continue;
      if (c.op === 'replace') {
        out.set(k.id, `${n.node} holds it with other attributes (${c.fields.map((f) => f.field).join(', ')})`);
        continue;
      }
      const ref = saRefOfId(state, k.id);
      const rec = ref && saRecord(state, ref);
      if (rec && rec.epoch !== k.epoch) continue; // a previous epoch: never re-installed (retireLost)
      if (rec && rec.installed === undefined) out.set(k.id, `the state does not record where its key went (written by an older onionctl)`);
      else if (rec?.installed?.includes(n.node)) out.set(k.id, `${n.node} lost it (its key was installed there before)`);
    }
  }
  return out;
}

/**
 * The live plan: desired configs from `state` (already reconciled with the topology), diffed
 * against what each node holds; SAs that need a new key are rekeyed in the returned state.
 */
/**
 * A previous epoch kept for make-before-break that some node no longer has (rebooted during the
 * grace period), or holds with other attributes, is dropped everywhere rather than installed
 * again with its old key.
 */
function retireLost(state: State, nodes: NodePlan[]): State | undefined {
  let s: State | undefined;
  for (const n of nodes) {
    for (const c of n.changes) {
      // lost (add) or held with other attributes (replace): a replace can never be pushed, and
      // rekeying the current epoch would not make it go away (the plan would never settle)
      if (c.kind !== 'state' || c.op === 'remove') continue;
      const ref = saRefOfId(state, c.desired.key.id);
      const rec = ref && saRecord(s ?? state, ref);
      if (!rec || rec.epoch === c.desired.key.epoch || !rec.retiring) continue;
      s ??= structuredClone(state);
      const r = saRecord(s, ref!)!;
      r.retiring = r.retiring!.filter((x) => x.epoch !== c.desired.key.epoch);
      if (r.retiring.length === 0) delete r.retiring;
    }
  }
  return s;
}

/** `rngFor` gives the nonces of the epochs this rekeys (liveRngFactory: the CSPRNG). */
export function planAgainst(net: Net, state: State, reads: Map<string, NodeRead>, keys: KeySource, rngFor: RngFactory): LivePlan {
  let s = state;
  const rekeys: Rekey[] = [];
  for (let round = 0; ; round++) {
    const configs = buildConfigs(net, s);
    const nodes: NodePlan[] = [...reads.values()].map((r) => {
      if (!r.observed) return { node: r.node, error: r.error ?? 'not read', changes: [], conflicts: [] };
      const cfg = configs.get(r.node);
      if (!cfg) return { node: r.node, error: 'not in the topology', changes: [], conflicts: [] };
      return { node: r.node, changes: diffNode(cfg, r.observed, { keys }), conflicts: findConflicts(cfg, r.observed), digest: observedDigest(r.observed) };
    });
    const dropped = retireLost(s, nodes);
    if (dropped && round < 3) {
      s = dropped;
      continue;
    }
    const due = toRekey(s, nodes);
    if (due.size === 0 || round >= 3) {
      if (due.size > 0) throw new Error('internal: rekeying did not settle');
      return { state: s, configs, nodes, rekeys };
    }
    // one copy of the state for the whole round (not one per SA: that was quadratic)
    const next = structuredClone(s);
    for (const [id, reason] of [...due].sort(([a], [b]) => (a < b ? -1 : 1))) {
      const ref: SaRef | undefined = saRefOfId(next, id);
      if (!ref) continue;
      const r = rekeySaInPlace(next, ref, { rngFor });
      rekeys.push({ sa: id, reason, oldSpi: r.old.spi, newSpi: r.now.spi });
    }
    s = next;
  }
}

/**
 * Records, before anything is pushed, that each added SA's key goes to its node (so that a crash
 * half-way can never lead to installing that key there a second time).
 */
export function markInstalled(state: State, nodes: NodePlan[], now: string): State {
  const s = structuredClone(state);
  for (const n of nodes) {
    for (const c of n.changes) {
      if (c.kind !== 'state' || c.op !== 'add') continue;
      const ref = saRefOfId(s, c.desired.key.id);
      const rec = ref && saRecord(s, ref);
      if (!rec || rec.spi !== c.desired.spi) continue;
      if (!rec.installed?.includes(n.node)) rec.installed = [...(rec.installed ?? []), n.node].sort();
      rec.since ??= now;
    }
  }
  return s;
}

export interface NodeResult {
  node: string;
  ok: boolean;
  counts: Counts;
  /** stage and step that failed, and the router's message */
  error?: string;
  /** stages completed */
  stages: Stage[];
}

export interface PushInput {
  configs: Map<string, NodeConfig>;
  nodes: NodePlan[];
  reads: Map<string, NodeRead>;
  keys: KeySource;
  templates: Templates;
  version: string;
  sessions: Sessions;
  parallel: number;
  progress: Progress;
  /** checked between steps: once aborted, no new step starts */
  signal?: AbortSignal;
  /** each node's interface addresses (underlay, an exit's outside), to tell which end of an SA it is; default none */
  ifaceAddrs?: Map<string, number[]>;
}

/** every node's interface addresses, from the topology */
export function interfaceAddresses(net: Net): Map<string, number[]> {
  const m = new Map<string, number[]>();
  for (const r of net.routers.values()) m.set(r.name, [r.underlay.addr, ...(r.exit ? [r.exit.iface.addr] : [])]);
  for (const c of net.clients.values()) m.set(c.name, [c.underlay.addr]);
  return m;
}

function stepError(node: string, label: string, st: Step, r: { exitCode: number; stderr: string; stdout: string }): TransportError {
  // never the input (it may hold keys); the router's message names the failing line
  const msg = (r.stderr || r.stdout).trim().split('\n').filter(Boolean).slice(0, 4).join('; ');
  return new TransportError(node, `${label}: ${st.what} failed (exit ${r.exitCode})${msg ? `: ${msg}` : ''}`);
}

/** Pushes each node's changes, stage by stage across all nodes; a failed node stops, others go on. */
export async function pushChanges(p: PushInput): Promise<NodeResult[]> {
  const work = p.nodes.filter((n) => !n.error && n.changes.length > 0);
  const results = new Map<string, NodeResult>(
    p.nodes.map((n) => [n.node, { node: n.node, ok: !n.error, counts: countChanges(n.changes), stages: [], ...(n.error ? { error: n.error } : {}) }]),
  );
  const aborted = () => p.signal?.aborted === true;
  // configure runs on routers before clients: a client moves a circuit only when its mixes are ready
  type Wave = { stage: Stage; kinds: ('router' | 'client')[] };
  const waves: Wave[] = STAGES.flatMap((stage): Wave[] =>
    stage === 'configure' ? [{ stage, kinds: ['router'] }, { stage, kinds: ['client'] }] : [{ stage, kinds: ['router', 'client'] }],
  );
  for (const { stage, kinds } of waves) {
    const live = work.filter((n) => results.get(n.node)!.ok && kinds.includes(p.configs.get(n.node)!.kind));
    if (aborted()) break;
    if (live.length === 0) continue;
    // an SA shared with a node that failed (or was not read) stays as that node has it: its peers
    // neither send with a new SPI it may lack nor drop the old SPI it still uses
    const down = p.nodes
      .filter((n) => !results.get(n.node)!.ok && p.configs.has(n.node))
      .map((n) => ownAddresses(p.configs.get(n.node)!, [...(p.ifaceAddrs?.get(n.node) ?? []), ...(p.reads.get(n.node)?.observed?.addresses?.owned.map((a) => a.addr) ?? [])]));
    const isDown = (a: number) => down.some((own) => own(a));
    const heldBack = (c: Change) =>
      c.kind === 'state' &&
      ((stage === 'install' && c.op === 'add' && isDown(c.desired.dst)) ||
        (stage === 'retire' && c.op === 'remove' && isDown(c.observed.dst)) ||
        (stage === 'drain' && c.op === 'remove' && isDown(c.observed.src)));
    const outcomes: Outcome<void>[] = await forEachSession(
      live.map((n) => n.node),
      p.sessions,
      p.parallel,
      async (t, node) => {
        const n = live.find((x) => x.node === node)!;
        const read = p.reads.get(node)?.read;
        const cfg = p.configs.get(node)!;
        const changes = n.changes.filter((c) => !heldBack(c));
        if (changes.length < n.changes.length) p.progress.step(node, `${stage}: ${n.changes.length - changes.length} SA change(s) shared with a failed node left for the next run`);
        const steps = stageSteps(stage, cfg, changes, {
          own: ownAddresses(cfg, p.ifaceAddrs?.get(node) ?? []),
          keys: p.keys,
          templates: p.templates,
          version: p.version,
          ...(read?.iptables ? { iptables: read.iptables } : {}),
          ...(read?.outputs.iptablesSave !== undefined ? { iptablesSave: read.outputs.iptablesSave } : {}),
        });
        const label = `${t.label}: ${stage}`;
        /** runs `st`, or takes `failed` as its result when a stage script already ran it here */
        const runOne = async (st: Step, failed?: ExecResult) => {
          let r = failed ?? (await t.exec(st.argv, { stdin: st.stdin }));
          if (r.exitCode !== 0 && st.fallback && st.fallback.when.test(r.stderr)) {
            p.progress.step(node, `${stage}: ${st.argv[0]} is not usable on this kernel; ${st.fallback.argv[0]}`);
            r = await t.exec(st.fallback.argv, { stdin: st.stdin });
          }
          if (r.exitCode !== 0) throw stepError(node, label, st, r);
        };
        // one channel per stage: a stage of several commands runs as one stage script
        for (const st of combineSteps(steps)) {
          if (aborted()) throw new TransportError(node, `${node}: interrupted before ${stage}: ${st.what}`);
          p.progress.step(node, `${stage}: ${st.what} (${st.changes} change${st.changes === 1 ? '' : 's'})`);
          if (!st.parts) {
            await runOne(st);
            continue;
          }
          const r = await t.exec(st.argv, { stdin: st.stdin });
          const o = scriptOutcome(r.exitCode, r.stderr);
          if (o.ok) continue;
          // the steps the script did not get through run one by one: all of them where sh has
          // no builtin printf (nothing ran); else the failed one, taking the script's result as
          // its own (its fallback runs when it has one for this error, as for iptables-nft on a
          // kernel without nf_tables), then the ones after it
          let from = 0;
          let failedHere: ExecResult | undefined;
          if ('noPrintf' in o) p.progress.step(node, `${stage}: sh has no builtin printf here; one command per channel`);
          else if (o.failed === undefined) throw stepError(node, label, st, { ...r, stderr: o.message });
          else {
            from = o.failed;
            failedHere = { ...r, stderr: o.message };
          }
          for (const part of st.parts.slice(from)) {
            if (aborted()) throw new TransportError(node, `${node}: interrupted before ${stage}: ${part.what}`);
            await runOne(part, failedHere);
            failedHere = undefined;
          }
        }
      },
    );
    for (const oc of outcomes) {
      const res = results.get(oc.node)!;
      if (oc.ok) {
        if (!res.stages.includes(stage)) res.stages.push(stage);
      }
      else {
        res.ok = false;
        res.error = oc.error.message;
        p.progress.fail(oc.node, oc.error.message);
      }
    }
  }
  for (const n of work) {
    const res = results.get(n.node)!;
    if (res.ok && res.stages.length < STAGES.length) {
      res.ok = false;
      res.error = `${n.node}: interrupted after ${res.stages.at(-1) ?? 'no'} stage`;
    }
    if (res.ok) p.progress.done(n.node, `${res.counts.add} added, ${res.counts.change} changed, ${res.counts.destroy} destroyed`);
  }
  return [...results.values()];
}

export const describeRekey = (r: Rekey) => `rekey ${r.sa}: spi ${hex32(r.oldSpi)} -> ${hex32(r.newSpi)} (${r.reason})`;
