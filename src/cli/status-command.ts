/**
 * `onionctl status TOPOLOGY`: read every router over SSH (one command each: `ip -s xfrm state`,
 * policies, sysctls, /proc/net/xfrm_stat and the router's clock) and show, per circuit, its path
 * and each SA's counters and errors, per overlay link the same, per node the xfrm_stat problems,
 * and a health verdict (src/status, docs/status.md).
 *
 * Read-only: the state file is loaded, never written, and the key secret is never opened (status
 * needs no keys). What is checked is what the SAVED state says is installed; when the topology has
 * moved on (plan would re-path or add circuits), a note says so and the stored circuits are shown.
 *
 * Exit code: 0 when health is ok or degraded, 1 when a circuit is down or unknown or a node could
 * not be read (health down), 2 on a usage error.
 */
import type { NodeConfig } from '../model/config.js';
import { rngFactory } from '../pathselect/rng.js';
import { computePlan } from '../plan/plan.js';
import { forEachNode, forEachSession, Sessions, sshConnector, type Connector, type Outcome } from '../remote/fleet.js';
import { buildConfigs } from '../spd/build.js';
import { describeEvent, type State } from '../state/model.js';
import type { Transport } from '../remote/transport.js';
import type { Net } from '../topology/net.js';
import { linkKey, topologyNodes } from '../topology/net.js';
import { UserError } from '../util/errors.js';
import { formatStatus, statusJson } from '../status/format.js';
import { sampleOf } from '../status/read.js';
import { readNode } from '../remote/read.js';
import { computeStatus, type NodeReading, type NodeSample } from '../status/status.js';
import { defaultPaths, readState, readTopology } from './context.js';
import { fleetOptions, type SshCliOptions } from './ssh-options.js';

export interface StatusOpts extends SshCliOptions {
  state?: string;
  /** accepted (lab ctl passes it); status needs no keys and never opens the secret */
  secret?: string;
  /** accepted for symmetry with plan; status never chooses paths */
  seed?: string;
  json?: boolean;
  /** read twice, this many seconds apart, to see which counters move */
  interval?: number;
}

/** Lets tests and the lab swap SSH for another transport, and the wait between two reads. */
export interface StatusDeps {
  connector?: (net: Net) => Promise<Connector>;
  sleep?: (ms: number) => Promise<void>;
  now?: () => Date;
}

export interface StatusOutcome {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * The configuration the saved state puts on each node: the stored circuits and links, limited to
 * what the topology can still build (a circuit whose node left the topology cannot be checked).
 */
export function storedConfigs(net: Net, stored: State): { configs: Map<string, NodeConfig>; state: State; circuits: string[]; notes: string[] } {
  const notes: string[] = [];
  const links: State['links'] = {};
  for (const [k, l] of Object.entries(stored.links)) {
    if (net.nodes.has(l.a) && net.nodes.has(l.b)) links[k] = l;
    else notes.push(`overlay link ${l.a}<->${l.b} in the state names a node that is no longer in the topology: not checked`);
  }
  const circuits: State['circuits'] = {};
  const defs = [];
  for (const def of net.circuits) {
    const c = stored.circuits[def.name];
    if (!c) {
      notes.push(`circuit ${def.name} is not in the state (nothing applied for it yet): not checked`);
      continue;
    }
    const path = [c.client, ...c.hops];
    const gone = path.filter((n) => !net.nodes.has(n));
    const noLink = path.slice(1).some((h, i) => !links[linkKey(path[i]!, h)]);
    if (gone.length || noLink || c.client !== def.client || c.hops.some((h) => !net.routers.has(h))) {
      notes.push(`circuit ${def.name}: the stored path ${path.join(' -> ')} no longer fits the topology${gone.length ? ` (${gone.join(', ')} left)` : ''}: not checked`);
      continue;
    }
    circuits[def.name] = c;
    defs.push(def);
  }
  for (const name of Object.keys(stored.circuits)) {
    if (!net.circuits.some((d) => d.name === name)) notes.push(`circuit ${name} is in the state but no longer in the topology: not checked`);
  }
  const state: State = { ...stored, links, circuits };
  const configs = buildConfigs({ ...net, circuits: defs }, state);
  return { configs, state, circuits: defs.map((d) => d.name), notes };
}

const hasWork = (c: NodeConfig) => c.states.length + c.policies.length + c.routes.length + c.addresses.length > 0;

function toReading(o: Outcome<NodeSample>, earlier?: Outcome<NodeSample>): NodeReading {
  if (!o.ok) return { node: o.node, ok: false, error: o.error.message };
  return { node: o.node, ok: true, sample: o.value, ...(earlier?.ok ? { earlier: earlier.value } : {}) };
}

export async function runStatus(topology: string, opts: StatusOpts, deps: StatusDeps = {}): Promise<StatusOutcome> {
  const now = deps.now ?? (() => new Date());
  const paths = defaultPaths(topology, opts);
  const { net } = await readTopology(topology);
  const { state: stored, fresh } = await readState(paths, 'warn', (s) => process.stderr.write(`onionctl: ${s}\n`));
  if (fresh) throw new UserError(`no state file ${paths.state}: nothing has been applied from it (run \`onionctl apply ${topology}\` first, or give --state)`);

  const { configs, state, circuits, notes } = storedConfigs(net, stored);
  try {
    const p = computePlan({ net, state: stored, rngFor: rngFactory(opts.seed), now: now().toISOString() });
    if (p.events.length > 0) {
      notes.unshift(`the state is behind the topology: \`onionctl plan\` would make ${p.events.length} change(s) (${p.events.map(describeEvent).join('; ')}); shown is what the state says is installed`);
    }
  } catch (e) {
    notes.unshift(`the topology can no longer be planned from this state (${(e as Error).message}); shown is what the state says is installed`);
  }

  const nodes = topologyNodes(net).filter((n) => {
    const c = configs.get(n);
    return c !== undefined && hasWork(c);
  });
  const pools = [...net.routers.values()].map((r) => r.pool);
  const fo = fleetOptions(opts);
  const parallel = fo.parallel ?? 10;
  const connect = deps.connector ? await deps.connector(net) : await sshConnector(net, fo);
  const read = async (t: Transport, node: string) =>
    sampleOf(await readNode(t, node, { sysctlKeys: configs.get(node)?.sysctls.map((s) => s.key) ?? [], xfrmStat: true }, { pools }));

  const readings = new Map<string, NodeReading>();
  let readAt: Date;
  if (opts.interval !== undefined) {
    const sessions = new Sessions(connect);
    try {
      const first = await forEachSession(nodes, sessions, parallel, read);
      await (deps.sleep ?? ((ms) => new Promise<void>((r) => setTimeout(r, ms))))(opts.interval * 1000);
      const second = await forEachSession(nodes, sessions, parallel, read);
      readAt = now();
      second.forEach((o, i) => readings.set(o.node, toReading(o, first[i])));
    } finally {
      await sessions.closeAll();
    }
  } else {
    const outcomes = await forEachNode(nodes, connect, parallel, read);
    readAt = now();
    for (const o of outcomes) readings.set(o.node, toReading(o));
  }

  const report = computeStatus({ state, configs, readings, circuits, ...(opts.interval !== undefined ? { intervalSeconds: opts.interval } : {}) });
  const ctx = { topology, stateFile: paths.state, stateSerial: stored.serial, readAt: readAt.toISOString(), notes };
  const stdout = opts.json ? JSON.stringify(statusJson(report, ctx), null, 2) + '\n' : formatStatus(report, ctx);
  const unreachable = report.nodes.filter((n) => !n.reachable);
  const stderr =
    report.exitCode === 0
      ? ''
      : [
          ...unreachable.map((n) => `onionctl: status: ${n.node}: ${n.error}\n`),
          ...report.circuits.filter((c) => c.verdict === 'down' || c.verdict === 'unknown').map((c) => `onionctl: status: circuit ${c.name} is ${c.verdict}\n`),
        ].join('');
  return { code: report.exitCode, stdout, stderr };
}

export async function statusCommand(topology: string, opts: StatusOpts, deps: StatusDeps = {}): Promise<number> {
  const r = await runStatus(topology, opts, deps);
  process.stdout.write(r.stdout);
  process.stderr.write(r.stderr);
  return r.code;
}
