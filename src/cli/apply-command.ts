/**
 * `plan --live`, `apply` and `destroy`: the edge around src/apply/engine.ts (files, SSH, lock,
 * signals, terminal).
 */
import { promises as fs } from 'node:fs';
import { createInterface } from 'node:readline/promises';
import { describeRekey, interfaceAddresses, markInstalled, planAgainst, pushChanges, readFleet, sysctlKeys, type LivePlan, type NodePlan, type NodeRead, type NodeResult } from '../apply/engine.js';
import { acquireLock, type Lock } from '../apply/lock.js';
import { removalChanges } from '../diff/diff.js';
import { changeJson, countChanges, countsLine, formatChanges, type Counts } from '../diff/summary.js';
import { PROFILES } from '../keys/profiles.js';
import { liveRngFactory, rngFactory } from '../pathselect/rng.js';
import { keyStoreId } from '../keys/kdf.js';
import { computePlan } from '../plan/plan.js';
import { Sessions, sshConnector, type Connector } from '../remote/fleet.js';
import { describeEvent, emptyState, type State } from '../state/model.js';
import { checkPlannedState } from '../state/check.js';
import { makeSavedPlan, planInputsMoved, sealPlan, staleNodes, stateDelta, type SavedPlan } from '../plan/planfile.js';
import { escapeControl } from '../util/text.js';
import { behindMark, pushedBefore } from '../state/high-water.js';
import { allSas, expireRetiring, rekeySaInPlace, rotateCircuits, type SaRef } from '../state/reconcile.js';
import { scheduleFor } from '../apply/due.js';
import { describeReason } from '../rekey/schedule.js';
import { topologyNodes, type Net } from '../topology/net.js';
import { packageVersion, writeFileAtomic } from '../util/files.js';
import { loadTemplates } from '../store/files.js';
import { UserError } from '../util/errors.js';
import { defaultPaths, highWater, openKeys, planKey, readState, readTopology, saveStateMarked, type BehindMode, type LoadedKeys, type Paths, openPlanText, readPlanText } from './context.js';
import { cliProgress } from './progress.js';
import { colourPlan, note } from './output.js';
import { fleetOptions, type SshCliOptions } from './ssh-options.js';

const out = (s: string) => process.stdout.write(colourPlan(s, process.stdout));

export interface LiveOpts extends SshCliOptions {
  state?: string;
  secret?: string;
  seed?: string;
  json?: boolean;
  out?: string;
  detailedExitcode?: boolean;
  breakLock?: boolean;
  acceptRestoredState?: boolean;
  /** apply PLAN: refuse a plan older than this (a duration, e.g. 2h) */
  maxPlanAge?: string;
  /** apply, destroy: change the routers without asking */
  autoApprove?: boolean;
}

/** Lets tests and the lab swap SSH for another transport, and tests set the clock. */
export interface LiveDeps {
  connector?: (net: Net) => Promise<Connector>;
  /** the controller's clock (default: the system's) */
  now?: () => Date;
  /** asks the user (default: on the terminal; an error when there is none) */
  confirm?: (question: string) => Promise<boolean>;
}

/**
 * Asks before apply or destroy changes routers, as Terraform does: `--auto-approve` skips it;
 * without a terminal to ask on (CI, a pipe) it is an error, never a silent yes.
 */
async function approved(verb: 'apply' | 'destroy', opts: LiveOpts, deps: LiveDeps): Promise<boolean> {
  if (opts.autoApprove) return true;
  const question = `\nDo you want to ${verb} these changes? Only 'yes' is accepted: `;
  if (deps.confirm) return deps.confirm(question);
  if (!process.stdin.isTTY || !process.stdout.isTTY) {
    throw new UserError(`${verb} asks before it changes routers, and there is no terminal to ask on; nothing was changed. Run it on a terminal, or pass --auto-approve (scripts, CI)`);
  }
  const rl = createInterface({ input: process.stdin, output: process.stdout });
  try {
    return (await rl.question(question)).trim() === 'yes';
  } finally {
    rl.close();
  }
}

interface Loaded {
  net: Net;
  paths: Paths;
  topologyText: string;
  stateText: string | undefined;
  state: State;
  fresh: boolean;
  /** the state was behind its high-water mark and resumed (--accept-restored-state): save it even without changes */
  resumed: boolean;
  /** the controller's clock: every time this command records or compares comes from it */
  clock: () => Date;
}


/** `behind`: what a state behind its high-water mark means here (context.ts readState) */
async function load(topology: string, opts: LiveOpts, deps: LiveDeps, behind: BehindMode = opts.acceptRestoredState ? 'resume' : 'refuse'): Promise<Loaded> {
  const paths = defaultPaths(topology, opts);
  const { net } = await readTopology(topology);
  const topologyText = await fs.readFile(topology, 'utf8');
  const stateText = await fs.readFile(paths.state, 'utf8').catch(() => undefined);
  const { state, fresh, resumed } = await readState(paths, behind, note);
  return { net, paths, topologyText, stateText, state, fresh, resumed: resumed === true, clock: deps.now ?? (() => new Date()) };
}

/**
 * The lock first, then the state (a run that waited for another must see what that one wrote),
 * then `body`; the lock is released however `body` ends, whatever it throws.
 */
async function locked<T>(topology: string, opts: LiveOpts, deps: LiveDeps, command: string, body: (l: Loaded, lock: Lock) => Promise<T>, behind?: BehindMode): Promise<T> {
  const paths = defaultPaths(topology, opts);
  const lock = await acquireLock(paths.state, command, { breakLock: opts.breakLock === true, note });
  try {
    return await body(await load(topology, opts, deps, behind), lock);
  } finally {
    await lock.release();
  }
}

async function connect(net: Net, opts: LiveOpts, deps: LiveDeps): Promise<{ sessions: Sessions; parallel: number }> {
  const fo = fleetOptions(opts);
  const connector = deps.connector ? await deps.connector(net) : await sshConnector(net, fo);
  return { sessions: new Sessions(connector), parallel: fo.parallel ?? 10 };
}

function circuitsText(net: Net, state: State): string {
  const lines = ['Circuits:'];
  for (const c of net.circuits) {
    const s = state.circuits[c.name];
    if (s) lines.push(`  ${c.name}: ${c.client} -> ${s.hops.join(' -> ')} -> ${s.to.join(', ')}`);
  }
  return lines.join('\n') + '\n';
}

function readErrors(nodes: NodePlan[]): string[] {
  return nodes.filter((n) => n.error).map((n) => `${n.node}: error: ${n.error}`);
}

function totals(nodes: NodePlan[]): Counts {
  return nodes.reduce((t, n) => {
    const c = countChanges(n.changes);
    return { add: t.add + c.add, change: t.change + c.change, destroy: t.destroy + c.destroy };
  }, { add: 0, change: 0, destroy: 0 } as Counts);
}

// ------------------------------------------------------------------------------------------
// the plan file (plan/planfile.ts)

function planFile(l: Loaded, live: LivePlan, now: Date): SavedPlan {
  return makeSavedPlan({
    topology: { path: l.paths.topology, text: l.topologyText },
    stateBefore: { path: l.paths.state, text: l.stateText },
    state: live.state,
    rekeys: live.rekeys,
    nodes: live.nodes,
    now,
  });
}

/** default --max-plan-age: a day; routers drift, and a plan is a decision made at one time */
export const DEFAULT_MAX_PLAN_AGE_MS = 24 * 3600 * 1000;

async function readPlanFile(file: string, key: Buffer, maxAgeMs: number, now: Date): Promise<SavedPlan> {
  return openPlanText(file, await readPlanText(file), key, { now, maxAgeMs });
}

// ------------------------------------------------------------------------------------------

/**
 * Reads the routers and plans against them. `base` is the saved state; retiring keys whose grace
 * ended are dropped, the topology is reconciled, then `mutate` (rekey, rotate) may change the
 * state with the read-back in hand.
 */
async function livePlan(
  l: Loaded,
  opts: LiveOpts,
  sessions: Sessions,
  parallel: number,
  keys: LoadedKeys,
  base: State,
  mutate?: (s: State, reads: Map<string, NodeRead>) => { state: State; events: string[] },
) {
  const now = l.clock().toISOString();
  const nodes = topologyNodes(l.net);
  const expired = expireRetiring(base, now);
  const rngFor = liveRngFactory(opts.seed);
  const planned = computePlan({ net: l.net, state: expired.state, rngFor, now });
  const progress = cliProgress(nodes);
  let reads: Map<string, NodeRead>;
  try {
    reads = await readFleet(l.net, nodes, sessions, parallel, (n) => sysctlKeys(planned.configs, n), progress, { xfrmStat: true });
  } finally {
    progress.finish();
  }
  const events = planned.events.map(describeEvent);
  if (expired.expired > 0) events.push(`${expired.expired} previous key${expired.expired === 1 ? '' : 's'} past their grace period removed`);
  let state = planned.state;
  if (mutate) {
    const m = mutate(state, reads);
    state = m.state;
    events.push(...m.events);
  }
  const live = planAgainst(l.net, state, reads, keys.source, rngFor);
  return { live, reads, events };
}

/** What could not be read, said before any plan (a plan of nothing is not "no changes"). */
function notReadText(nodes: NodePlan[]): string {
  const errs = readErrors(nodes);
  if (errs.length === 0) return '';
  return `Not read, left out of this plan (${errs.length} of ${nodes.length} node${nodes.length === 1 ? '' : 's'}):\n${errs.join('\n')}\n\n`;
}

function printPlan(l: Loaded, live: LivePlan, events: string[]): void {
  out(notReadText(live.nodes));
  out(circuitsText(l.net, live.state));
  if (events.length > 0) out(['', 'State changes:', ...events.map((e) => `  ${e}`)].join('\n') + '\n');
  if (live.rekeys.length > 0) out(['', 'New keys (new SPI and epoch on both ends):', ...live.rekeys.map((r) => `  ${describeRekey(r)}`)].join('\n') + '\n');
  const read = live.nodes.filter((n) => !n.error);
  out('\n' + formatChanges(read));
  if (read.length < live.nodes.length) out(`This plan covers ${read.length} of ${live.nodes.length} nodes: ${live.nodes.length - read.length} could not be read (listed first).\n`);
}

export async function planLiveCommand(topology: string, opts: LiveOpts, deps: LiveDeps = {}): Promise<number> {
  const l = await load(topology, opts, deps);
  const keys = await openKeys(l.net, l.state, l.paths);
  const { sessions, parallel } = await connect(l.net, opts, deps);
  try {
    const { live, events } = await livePlan(l, opts, sessions, parallel, keys, l.state);
    if (opts.json) {
      out(
        JSON.stringify(
          {
            format: 'onionctl-live-plan/v1',
            summary: totals(live.nodes),
            rekeys: live.rekeys.map(describeRekey),
            events,
            nodes: live.nodes.map((n) => ({ node: n.node, ...(n.error ? { error: n.error } : {}), summary: countChanges(n.changes), changes: n.changes.map(changeJson), conflicts: n.conflicts })),
          },
          null,
          2,
        ) + '\n',
      );
    } else printPlan(l, live, events);
    const unread = live.nodes.filter((n) => n.error).map((n) => n.node);
    if (opts.out && unread.length > 0) {
      note(`the plan was not saved to ${opts.out}: it could not read ${unread.join(', ')}, and a saved plan must cover every node (fix them, or take them out of the topology)`);
    } else if (opts.out) {
      await writeFileAtomic(opts.out, sealPlan(planFile(l, live, l.clock()), await planKey(l.paths)), 0o600);
      if (!opts.json) out(`Saved the plan to ${opts.out}; apply exactly it with: onionctl apply ${topology} ${opts.out}\n`);
    } else if (!opts.json) out('State not saved (plan --live is a dry run; use --out FILE and apply FILE to apply exactly this plan).\n');
    if (live.nodes.some((n) => n.error)) return 1;
    const t = totals(live.nodes);
    return opts.detailedExitcode && t.add + t.change + t.destroy > 0 ? 2 : 0;
  } finally {
    await sessions.closeAll();
  }
}

function interruptible(lock: Lock): { signal: AbortSignal; dispose(): void } {
  const ac = new AbortController();
  const onSig = (sig: NodeJS.Signals) => {
    if (ac.signal.aborted) {
      lock.releaseSync();
      process.exit(130);
    }
    note(`${sig}: finishing the commands already running on routers, starting no new ones (again to quit at once)`);
    ac.abort();
  };
  process.on('SIGINT', onSig);
  process.on('SIGTERM', onSig);
  return {
    signal: ac.signal,
    dispose() {
      process.off('SIGINT', onSig);
      process.off('SIGTERM', onSig);
    },
  };
}

/** the words for a run that did not reach every node: never a success message after a failure */
const INCOMPLETE: Record<string, string> = {
  'Apply complete': 'Apply incomplete',
  'Destroy complete': 'Destroy incomplete',
  'New keys installed': 'New keys not installed everywhere',
  'Rekey complete': 'Rekey incomplete',
  'Rotate complete': 'Rotate incomplete',
};

function report(results: NodeResult[], verb: string, signal: AbortSignal, unread: string[] = []): number {
  const failed = results.filter((r) => !r.ok);
  const t = results.filter((r) => r.ok).reduce((a, r) => ({ add: a.add + r.counts.add, change: a.change + r.counts.change, destroy: a.destroy + r.counts.destroy }), { add: 0, change: 0, destroy: 0 });
  for (const r of failed) out(`${r.node}: error: ${r.error}\n`);
  // pushChanges gives a result for every node, the unread ones failed with their read error:
  // say which failed while pushing and which could not be read
  const unreadSet = new Set(unread);
  const pushFailed = failed.filter((r) => !unreadSet.has(r.node)).map((r) => r.node);
  const notRead = failed.filter((r) => unreadSet.has(r.node)).map((r) => r.node);
  const bad = [...pushFailed, ...notRead];
  const words = bad.length > 0 || signal.aborted ? (INCOMPLETE[verb] ?? `${verb} (with errors)`) : verb;
  out(`\n${words}: ${t.add} added, ${t.change} changed, ${t.destroy} destroyed on ${results.length - failed.length} of ${results.length} nodes.\n`);
  if (bad.length > 0) {
    const parts = [pushFailed.length > 0 ? `${pushFailed.length} failed` : '', notRead.length > 0 ? `${notRead.length} could not be read` : ''].filter(Boolean).join(', ');
    out(`${parts} (${bad.join(', ')}); the others are done. Fix the cause and run apply again: it picks up from what each router holds.\n`);
  }
  if (signal.aborted) {
    out('Interrupted: run apply again to finish.\n');
    return 130;
  }
  return bad.length > 0 ? 1 : 0;
}

async function push(l: Loaded, live: LivePlan, reads: Map<string, NodeRead>, keys: LoadedKeys, sessions: Sessions, parallel: number, lock: Lock, verb: string): Promise<number> {
  // random keys: draw every new SA's key and store it (0600) before anything leaves this machine
  for (const n of live.nodes) for (const c of n.changes) if (c.kind === 'state' && c.op === 'add') keys.source.key(c.desired.key, PROFILES[c.desired.profile].keyBytes);
  const live_ids = new Set<string>();
  for (const cfg of live.configs.values()) for (const s of cfg.states) live_ids.add(keyStoreId(s.key));
  await keys.persist(l.net.keySource === 'random' ? live_ids : undefined);
  // the state (new circuits, new epochs, where each key goes) is saved before the first push
  await saveStateMarked(l.paths, markInstalled(live.state, live.nodes, l.clock().toISOString()));

  const work = live.nodes.filter((n) => !n.error && n.changes.length > 0).map((n) => n.node);
  const progress = cliProgress(work);
  const intr = interruptible(lock);
  let results: NodeResult[];
  try {
    results = await pushChanges({
      configs: live.configs,
      nodes: live.nodes,
      reads,
      keys: keys.source,
      templates: await loadTemplates(),
      version: packageVersion(),
      sessions,
      parallel,
      progress,
      signal: intr.signal,
      ifaceAddrs: interfaceAddresses(l.net),
    });
  } finally {
    progress.finish();
    intr.dispose();
  }
  return report(results, verb, intr.signal, live.nodes.filter((n) => n.error).map((n) => n.node));
}

export async function applyCommand(topology: string, planPath: string | undefined, opts: LiveOpts, deps: LiveDeps = {}): Promise<number> {
  return locked(topology, opts, deps, `apply ${topology}${planPath ? ` ${planPath}` : ''}`, (l, lock) => applyLocked(l, lock, topology, planPath, opts, deps));
}

async function applyLocked(l: Loaded, lock: Lock, topology: string, planPath: string | undefined, opts: LiveOpts, deps: LiveDeps): Promise<number> {
  const saved = planPath ? await readPlanFile(planPath, await planKey(l.paths), opts.maxPlanAge !== undefined ? parseDuration(opts.maxPlanAge) : DEFAULT_MAX_PLAN_AGE_MS, l.clock()) : undefined;
  if (saved) {
    const moved = planInputsMoved(saved, l);
    if (moved.includes('topology')) throw new UserError(`the topology ${topology} changed since the plan ${planPath} was made; run plan --live --out again`);
    if (moved.includes('state')) throw new UserError(`the state ${l.paths.state} changed since the plan ${planPath} was made (another apply?); run plan --live --out again`);
    const skipped = saved.nodes.filter((n) => n.error).map((n) => n.node);
    if (skipped.length > 0) throw new UserError(`refusing to apply ${planPath}: it could not read ${skipped.join(', ')} when it was made; a plan that leaves nodes out is not applied (run plan --live --out again)`);
    const hw = await highWater(l.paths);
    const behind = behindMark(hw, saved.state);
    if (behind || (l.fresh && pushedBefore(hw, saved.state))) {
      throw new UserError(
        `refusing to apply ${planPath}: its state was saved and pushed before (${behind ?? `the state it was planned from is gone, but its high-water mark in ${l.paths.highWater} is there`}); ` +
          `applying it again could give routers keys they had before. Run plan --live --out again`,
      );
    }
    // authentic is not enough: the state must be one the topology allows, planned from this state
    const problems = checkPlannedState(l.net, l.fresh ? undefined : l.state, saved.state);
    if (problems.length > 0) {
      const shown = problems.slice(0, 10).map((x) => escapeControl(x));
      throw new UserError(`refusing to apply ${planPath}: its state is not one onionctl would plan for ${topology}: ${shown.join('; ')}${problems.length > 10 ? `; and ${problems.length - 10} more` : ''}`);
    }
  }
  const keys = await openKeys(l.net, l.state, l.paths);
  const { sessions, parallel } = await connect(l.net, opts, deps);
  try {
    let live: LivePlan;
    let reads: Map<string, NodeRead>;
    let events: string[];
    if (saved) {
      const nodes = saved.nodes.filter((n) => !n.error).map((n) => n.node);
      const progress = cliProgress(nodes);
      try {
        reads = await readFleet(l.net, nodes, sessions, parallel, (n) => l.net.routers.has(n) || l.net.clients.has(n) ? sysctlKeysFor(l.net, saved.state, n) : [], progress);
      } finally {
        progress.finish();
      }
      live = planAgainst(l.net, saved.state, reads, keys.source, liveRngFactory(undefined));
      // recomputed from the two states, never the file's words
      events = stateDelta(l.fresh ? emptyState(saved.state.salt) : l.state, saved.state).map(describeEvent);
      const changed = staleNodes(saved, live.nodes);
      if (live.rekeys.length > 0) changed.push(...live.rekeys.map((r) => `SA ${r.sa} (${r.reason})`));
      if (changed.length > 0) {
        throw new UserError(`refusing to apply ${planPath}: since it was made, ${changed.length === 1 ? 'this router changed' : 'these routers changed'}: ${changed.join(', ')}; run plan --live --out again`);
      }
    } else {
      ({ live, reads, events } = await livePlan(l, opts, sessions, parallel, keys, l.state));
    }
    printPlan(l, live, events);
    const conflicts = live.nodes.filter((n) => n.conflicts.length > 0);
    if (conflicts.length > 0) {
      throw new UserError(`objects that are not onionctl's are in the way on ${conflicts.map((n) => n.node).join(', ')} (marked ! above); nothing was changed`);
    }
    const t = totals(live.nodes);
    const unread = readErrors(live.nodes).length;
    if (t.add + t.change + t.destroy === 0 && live.rekeys.length === 0) {
      if (unread > 0) {
        // nothing pushed: nothing of this plan is committed to the state either
        out(`\nNothing applied: ${unread} of ${live.nodes.length} nodes could not be read (listed first); the ones read match the plan. The state was not changed.\n`);
        return 1;
      }
      if (l.fresh || l.resumed || live.state.serial !== l.state.serial) await saveStateMarked(l.paths, live.state);
      out('\nNo changes: every router matches the plan.\n');
      return 0;
    }
    // a saved plan was approved when it was made (and is applied exactly); anything else is asked
    if (!saved && !(await approved('apply', opts, deps))) {
      out('\nApply cancelled: nothing was changed.\n');
      return 1;
    }
    out('\nApplying:\n');
    return await push(l, live, reads, keys, sessions, parallel, lock, 'Apply complete');
  } finally {
    await sessions.closeAll();
    await lock.release();
  }
}

function sysctlKeysFor(net: Net, state: State, node: string): string[] {
  const planned = computePlan({ net, state, rngFor: rngFactory('unused'), now: '' });
  return sysctlKeys(planned.configs, node);
}

export async function destroyCommand(topology: string, opts: LiveOpts, deps: LiveDeps = {}): Promise<number> {
  // destroy installs no key: a state behind its mark is only reported
  return locked(topology, opts, deps, `destroy ${topology}`, (l, lock) => destroyLocked(l, lock, topology, opts, deps), 'warn');
}

async function destroyLocked(l: Loaded, lock: Lock, topology: string, opts: LiveOpts, deps: LiveDeps): Promise<number> {
  const keys = await openKeys(l.net, l.state, l.paths);
  const { sessions, parallel } = await connect(l.net, opts, deps);
  try {
    const nodes = topologyNodes(l.net);
    const progress = cliProgress(nodes);
    let reads: Map<string, NodeRead>;
    try {
      reads = await readFleet(l.net, nodes, sessions, parallel, () => [], progress);
    } finally {
      progress.finish();
    }
    const planned: NodePlan[] = [...reads.values()].map((r) =>
      r.observed ? { node: r.node, changes: removalChanges(r.observed), conflicts: [] } : { node: r.node, error: r.error ?? 'not read', changes: [], conflicts: [] },
    );
    const live: LivePlan = { state: l.state, configs: emptyConfigs(l.net, nodes), nodes: planned, rekeys: [] };
    out(notReadText(planned));
    out(formatChanges(planned.filter((n) => !n.error)));
    const t = totals(planned);
    const unread = readErrors(planned).length;
    if (t.destroy === 0) {
      if (unread > 0) out(`\nNothing destroyed: ${unread} of ${planned.length} nodes could not be read (listed first); the ones read hold nothing of onionctl's.\n`);
      else out('\nNothing to destroy: no router holds anything of onionctl\'s.\n');
      return unread > 0 ? 1 : 0;
    }
    if (!(await approved('destroy', opts, deps))) {
      out('\nDestroy cancelled: nothing was changed.\n');
      return 1;
    }
    out('\nDestroying:\n');
    return await push(l, live, reads, keys, sessions, parallel, lock, 'Destroy complete');
  } finally {
    await sessions.closeAll();
    await lock.release();
  }
}

function emptyConfigs(net: Net, nodes: string[]): LivePlan['configs'] {
  const m: LivePlan['configs'] = new Map();
  for (const n of nodes) {
    const r = net.routers.get(n);
    const c = net.clients.get(n);
    const underlay = (r ?? c)!.underlay.name;
    m.set(n, {
      node: n,
      kind: r ? 'router' : 'client',
      underlay,
      states: [],
      policies: [],
      addresses: [],
      routes: [],
      sysctls: [],
      firewall: { backend: r ? r.nat : net.nat, snat: [], forward: [] },
    });
  }
  return m;
}

export { countsLine };

// ------------------------------------------------------------------------------------------
// rekey and rotate

export interface RekeyOpts extends LiveOpts {
  circuit?: string[];
  all?: boolean;
  due?: boolean;
  /** seconds the previous keys stay installed after the new ones (make-before-break) */
  grace?: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** the SAs of the named circuits (both directions, every hop) */
function circuitSas(state: State, names: string[]): SaRef[] {
  const out: SaRef[] = [];
  for (const n of names) {
    if (!state.circuits[n]) throw new UserError(`no circuit ${n} (circuits: ${Object.keys(state.circuits).join(', ') || 'none'})`);
    out.push(...allSas(state).map((x) => x.ref).filter((r) => 'circuit' in r && r.circuit === n));
  }
  return out;
}

const refText = (r: SaRef) => ('circuit' in r ? `circuit ${r.circuit} hop ${r.hop} ${r.dir}` : `link ${r.link} ${r.dir}`);

/**
 * New keys for chosen SAs, make-before-break: the new SA goes onto the receiving end, then the
 * sending end, while the old one stays; after `grace` seconds the old one is removed from the
 * senders, then from the receivers. The policies do not change (same reqid).
 */
export async function rekeyCommand(topology: string, opts: RekeyOpts, deps: LiveDeps = {}): Promise<number> {
  const chosen = [opts.all, opts.due, (opts.circuit?.length ?? 0) > 0].filter(Boolean).length;
  if (chosen !== 1) throw new UserError('say which SAs to rekey: --circuit NAME (repeatable), --all, or --due');
  const grace = opts.grace ?? 30;
  return locked(topology, opts, deps, `rekey ${topology}`, (l, lock) => rekeyLocked(l, lock, topology, opts, deps, grace));
}

/** circuits named on the command line: known before any router is contacted */
function checkCircuitNames(l: Loaded, names: string[] | undefined): void {
  const known = new Set(l.net.circuits.map((c) => c.name));
  const bad = (names ?? []).filter((n) => !known.has(n) || !l.state.circuits[n]);
  if (bad.length > 0) {
    const list = Object.keys(l.state.circuits).join(', ') || 'none';
    throw new UserError(`no circuit ${bad.map((b) => escapeControl(b, 64)).join(', ')} (circuits${l.fresh ? ' in the state: none yet; run apply first' : `: ${list}`})`);
  }
}

/** rekey and rotate change both ends of SAs: every node must have been read, else nothing changes */
function requireAllRead(live: LivePlan, what: string): void {
  const unread = live.nodes.filter((n) => n.error);
  if (unread.length === 0) return;
  out(notReadText(live.nodes));
  throw new UserError(`${what} changes SAs on both of their ends, so it needs every node; ${unread.map((n) => n.node).join(', ')} could not be read. Nothing was changed and the state is as it was`);
}

async function rekeyLocked(l: Loaded, lock: Lock, topology: string, opts: RekeyOpts, deps: LiveDeps, grace: number): Promise<number> {
  checkCircuitNames(l, opts.circuit);
  const keys = await openKeys(l.net, l.state, l.paths);
  const { sessions, parallel } = await connect(l.net, opts, deps);
  try {
    let picked: { ref: SaRef; why: string }[] = [];
    const retireUntil = new Date(l.clock().getTime() + grace * 1000).toISOString();
    const first = await livePlan(l, opts, sessions, parallel, keys, l.state, (s, reads) => {
      if (opts.all) picked = allSas(s).map(({ ref }) => ({ ref, why: 'rekey --all' }));
      else if (opts.circuit) picked = circuitSas(s, opts.circuit).map((ref) => ({ ref, why: 'rekey --circuit' }));
      else picked = dueSas(l.net, s, reads, l.clock());
      // one copy of the state, not one per SA (quadratic with rekey --all on a large network)
      const st = structuredClone(s);
      const events: string[] = [];
      const rngFor = liveRngFactory(undefined);
      for (const { ref, why } of picked) {
        const r = rekeySaInPlace(st, ref, { retireUntil, rngFor });
        events.push(`${refText(ref)}: spi 0x${r.old.spi.toString(16)} -> 0x${r.now.spi.toString(16)}, epoch ${r.now.epoch} (${why})`);
      }
      return { state: st, events };
    });
    requireAllRead(first.live, 'rekey');
    if (picked.length === 0) {
      out('Nothing to rekey: no SA is due.\n');
      return 0;
    }
    printPlan(l, first.live, first.events);
    const conflicts = first.live.nodes.filter((n) => n.conflicts.length > 0);
    if (conflicts.length > 0) throw new UserError(`objects that are not onionctl's are in the way on ${conflicts.map((n) => n.node).join(', ')}; nothing was changed`);
    out('\nInstalling the new keys (the previous ones stay until the grace period ends):\n');
    const rc1 = await push(l, first.live, first.reads, keys, sessions, parallel, lock, 'New keys installed');
    if (rc1 !== 0) return rc1;
    if (grace > 0) {
      out(`\nWaiting ${grace} s (--grace) before removing the previous keys.\n`);
      await sleep(grace * 1000);
    }
    // the grace has ended: plan without the previous epochs, against what the routers hold now
    const saved = (await readState(l.paths)).state;
    const l2: Loaded = { ...l, state: saved };
    const second = await livePlan(l2, opts, sessions, parallel, keys, saved, (s) => {
      const soon = new Date(l.clock().getTime() + 1000).toISOString();
      const e = expireRetiring(s, soon > retireUntil ? soon : retireUntil);
      return { state: e.state, events: [`${e.expired} previous key${e.expired === 1 ? '' : 's'} removed`] };
    });
    out('\nRemoving the previous keys:\n');
    return await push(l2, second.live, second.reads, keys, sessions, parallel, lock, 'Rekey complete');
  } finally {
    await sessions.closeAll();
    await lock.release();
  }
}

/** the SAs due for a new key (soft lifetime reached or too old), from the schedule */
function dueSas(net: Net, s: State, reads: Map<string, NodeRead>, now: Date): { ref: SaRef; why: string }[] {
  const sch = scheduleFor(net, s, reads, now);
  for (const u of sch.unknown) note(`${u.label}: usage unknown (${u.unread.join(', ')} not read); left alone`);
  return sch.due.map((d) => ({ ref: d.ref, why: `${d.urgent ? 'urgent: ' : ''}${d.reasons.map(describeReason).join('; ')}` }));
}

export interface RotateOpts extends LiveOpts {
  circuit?: string[];
  /** e.g. "10m", "2h", "1d" */
  maxAge?: string;
}

export function parseDuration(v: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)\s*(s|m|min|h|d)?$/.exec(v.trim());
  if (!m) throw new UserError(`"${v}" is not a duration (e.g. 90s, 10m, 2h, 1d)`);
  const n = Number(m[1]);
  const unit = { s: 1, m: 60, min: 60, h: 3600, d: 86400 }[(m[2] ?? 's') as 's' | 'm' | 'min' | 'h' | 'd'];
  return n * unit * 1000;
}

/**
 * New random paths for circuits older than --max-age (or the named ones), under the same
 * constraints. Make-before-break: the new path's SAs, mix policies and routes are in place before
 * the client's policy moves to it (routers are configured before clients); the old path goes last.
 */
export async function rotateCommand(topology: string, opts: RotateOpts, deps: LiveDeps = {}): Promise<number> {
  if ((opts.maxAge === undefined) === !(opts.circuit && opts.circuit.length > 0)) throw new UserError('say which circuits to rotate: --max-age DURATION or --circuit NAME (repeatable)');
  const maxAgeMs = opts.maxAge !== undefined ? parseDuration(opts.maxAge) : undefined;
  return locked(topology, opts, deps, `rotate ${topology}`, (l, lock) => rotateLocked(l, lock, topology, opts, deps, maxAgeMs));
}

async function rotateLocked(l: Loaded, lock: Lock, topology: string, opts: RotateOpts, deps: LiveDeps, maxAgeMs: number | undefined): Promise<number> {
  checkCircuitNames(l, opts.circuit);
  const keys = await openKeys(l.net, l.state, l.paths);
  const { sessions, parallel } = await connect(l.net, opts, deps);
  try {
    let names: string[] = [];
    const now = l.clock();
    const plan = await livePlan(l, opts, sessions, parallel, keys, l.state, (s) => {
      // --circuit names were checked before connecting (checkCircuitNames); --max-age names come from s
      names = maxAgeMs !== undefined ? scheduleFor(l.net, s, new Map(), now, maxAgeMs / 1000).oldCircuits.map((c) => c.circuit) : opts.circuit!;
      if (names.length === 0) return { state: s, events: [] };
      const r = rotateCircuits(l.net, s, names, liveRngFactory(opts.seed ? `${opts.seed}/rotate/${now.toISOString()}` : undefined), now.toISOString());
      return { state: r.state, events: r.events.map(describeEvent) };
    });
    requireAllRead(plan.live, 'rotate');
    if (names.length === 0) {
      out(`Nothing to rotate: no circuit is older than ${opts.maxAge}.\n`);
      return 0;
    }
    printPlan(l, plan.live, plan.events);
    const conflicts = plan.live.nodes.filter((n) => n.conflicts.length > 0);
    if (conflicts.length > 0) throw new UserError(`objects that are not onionctl's are in the way on ${conflicts.map((n) => n.node).join(', ')}; nothing was changed`);
    out('\nRotating:\n');
    return await push(l, plan.live, plan.reads, keys, sessions, parallel, lock, 'Rotate complete');
  } finally {
    await sessions.closeAll();
    await lock.release();
  }
}
