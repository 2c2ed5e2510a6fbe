/**
 * `onionctl status`, the pure core: what the plan says each router holds (NodeConfig, built from
 * the saved state) against what each router holds (ObservedNode from `ip -s xfrm state` and
 * friends, plus /proc/net/xfrm_stat) -> per circuit, per overlay link and per node: the SAs with
 * their counters, the findings, and a verdict. No I/O, no clock: the router's own clock comes in
 * with its sample. The rules are listed in docs/status.md; in short:
 *
 *   down     an SA missing on one of its ends, or there under another SPI / source / crypto
 *            profile; a circuit policy missing or with other templates; ip_forward off on a
 *            router that carries the circuit
 *   unknown  a node the circuit runs through (or an SA end lives on) could not be read
 *   warn     SA error counters (replay window, replay, integrity) non-zero, or rising between
 *            two samples; an SA past its soft lifetime; the fail-closed block policy missing;
 *            /proc/net/xfrm_stat counters non-zero (or rising); other sysctls not as planned
 *   info     shown, no effect on the verdict: SAs in onionctl's range the plan lacks, counters
 *            that are non-zero but did not move during the sampling interval
 *
 * Verdicts: a circuit or link is `down` on any down finding, else `unknown` on any unknown one,
 * else `degraded` on any warning, else `ok`. Overall health is `down` when a circuit is down or
 * unknown or a node could not be read, `degraded` on any other warning or problem, else `ok`.
 */
import { POLICY } from '../diff/kinds.js';
import type { NodeConfig, XfrmPolicy, XfrmState } from '../model/config.js';
import { parseSaId, type SaId } from '../keys/sa-id.js';
import { formatIPv4 } from '../net/addr.js';
import { xfrmTimeSeconds } from '../readback/xfrm.js';
import type { ObservedNode, ObservedPolicy, ObservedState } from '../readback/observed.js';
import type { State } from '../state/model.js';
import { defaultLifetimeCheck, type LifetimeCheck, type LifetimeReport } from './lifetime.js';

export const STATUS_FORMAT = 'onionctl-status/v1';

export type Severity = 'down' | 'unknown' | 'warn' | 'info';
export type Verdict = 'ok' | 'degraded' | 'down' | 'unknown';
export type Health = 'ok' | 'degraded' | 'down';

export type FindingCode =
  | 'node-unreachable'
  | 'sa-missing'
  | 'sa-spi-differs'
  | 'sa-differs'
  | 'sa-errors'
  | 'sa-errors-rising'
  | 'sa-soft-limit'
  | 'sa-hard-limit'
  | 'policy-missing'
  | 'policy-differs'
  | 'block-policy-missing'
  | 'sysctl'
  | 'xfrm-stat'
  | 'xfrm-stat-rising'
  | 'xfrm-stat-unreadable'
  | 'extra-sas';

export interface Finding {
  severity: Severity;
  code: FindingCode;
  message: string;
  node?: string;
  /** the SA's identity (SaKeyId.id), when the finding is about one SA */
  sa?: string;
}

/** What one read of a router gave. */
export interface NodeSample {
  /** observeNode() of the read-back, with `sysctls` filled in */
  observed: ObservedNode;
  /** parsed /proc/net/xfrm_stat; undefined when the router has none (no CONFIG_XFRM_STATISTICS) */
  xfrmStat?: Record<string, number>;
  /** set when /proc/net/xfrm_stat was there but could not be parsed */
  xfrmStatError?: string;
  /** the router's local time, "YYYY-MM-DD HH:MM:SS", as `ip -s xfrm state` prints SA times */
  clock?: string;
}

export type NodeReading =
  | { node: string; ok: true; sample: NodeSample; /** an earlier sample (status --interval) */ earlier?: NodeSample }
  | { node: string; ok: false; error: string };

export interface CircuitRef {
  name: string;
}

export interface StatusInput {
  state: State;
  /** the plan's per-node configuration, built from `state` */
  configs: Map<string, NodeConfig>;
  /** one entry per node that was contacted; a node with nothing planned may be left out */
  readings: Map<string, NodeReading>;
  /** circuits to report, in this order (default: the state's); others are left out */
  circuits?: string[];
  /** seconds between the earlier and the later sample, when there are two */
  intervalSeconds?: number;
  /** soft/hard lifetime check per observed SA (default: defaultLifetimeCheck, see lifetime.ts) */
  lifetime?: LifetimeCheck;
}

export interface SaErrors {
  /** packets outside the replay window */
  replayWindow: number;
  /** replayed packets */
  replay: number;
  /** packets failing the integrity check (ICV) */
  integrity: number;
}

export interface SaCounters extends SaErrors {
  packets: number;
  bytes: number;
}

export interface SaEnd {
  node: string;
  /** send: the end that encrypts (its counters count packets sent); receive: the end that decrypts */
  role: 'send' | 'receive';
  /** ok: there with the planned SPI; unknown: the node was not read */
  state: 'ok' | 'missing' | 'spi-differs' | 'differs' | 'unknown';
  /** the SPI the router has, when it is not the planned one */
  observedSpi?: string;
  packets?: number;
  bytes?: number;
  errors?: SaErrors;
  /** as the router printed them (its local time); firstUsed is "-" when never used */
  added?: string;
  firstUsed?: string;
  /** seconds since the SA was added, by the router's clock */
  ageSeconds?: number;
  /**
   * seconds since the SA's FIRST use (the kernel records the first use only, never the last);
   * undefined when never used
   */
  usedForSeconds?: number;
  /** with two samples: how much each counter moved, and the interval */
  delta?: SaCounters & { seconds: number };
  lifetime?: LifetimeReport;
  findings: Finding[];
}

export interface SaStatus {
  /** SaKeyId.id: circuit:NAME:gN:hopI:fwd|rev or link:A>B */
  id: string;
  kind: 'telescope' | 'overlay';
  /** "hop 2 forward", "overlay or1->or2" */
  label: string;
  circuit?: string;
  hop?: number;
  direction?: 'forward' | 'reverse';
  src: string;
  dst: string;
  spi: string;
  reqid: string;
  verdict: Verdict;
  ends: SaEnd[];
}

export interface PolicyCheck {
  node: string;
  planned: number;
  /** present with the planned templates and action; undefined when the node was not read */
  present?: number;
  missing: string[];
  differs: string[];
}

export interface CircuitStatus {
  name: string;
  client: string;
  hops: string[];
  to: string[];
  /** client, then the hops */
  path: string[];
  generation: number;
  verdict: Verdict;
  findings: Finding[];
  /** the circuit's own (telescope) SAs: per hop, forward then reverse */
  sas: SaStatus[];
  /** the overlay links the circuit rides, in path order */
  overlay: { link: string; verdict: Verdict }[];
  policies: PolicyCheck[];
}

export interface LinkStatus {
  /** "a<->b" */
  name: string;
  a: string;
  b: string;
  verdict: Verdict;
  findings: Finding[];
  sas: SaStatus[];
}

export interface NodeStatus {
  node: string;
  reachable: boolean;
  error?: string;
  clock?: string;
  /** /proc/net/xfrm_stat counters that are not zero (undefined: not available) */
  xfrmStat?: Record<string, number>;
  /** with two samples: the xfrm_stat counters that moved, and by how much */
  xfrmStatRising?: Record<string, number>;
  /** SAs in onionctl's SPI/reqid range that the plan does not have */
  extraSas: number;
  findings: Finding[];
}

export interface StatusReport {
  health: Health;
  /** 1 when a circuit is down or unknown or a node could not be read, else 0 */
  exitCode: 0 | 1;
  intervalSeconds?: number;
  circuits: CircuitStatus[];
  links: LinkStatus[];
  nodes: NodeStatus[];
  /** every down/unknown/warn finding once (circuit, link and node findings together) */
  problems: Finding[];
}

// ------------------------------------------------------------------------------------------

const hex32 = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;
const RANK: Record<Severity, number> = { down: 3, unknown: 2, warn: 1, info: 0 };

export function verdictOf(findings: readonly Finding[]): Verdict {
  let top = -1;
  for (const f of findings) top = Math.max(top, RANK[f.severity]);
  return top === 3 ? 'down' : top === 2 ? 'unknown' : top === 1 ? 'degraded' : 'ok';
}

function dedupe(fs: Finding[]): Finding[] {
  const seen = new Set<string>();
  return fs.filter((f) => {
    const k = `${f.severity}\0${f.code}\0${f.message}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

function since(clock: string | undefined, t: string | undefined): number | undefined {
  // both in the router's local time: compared on one naive clock
  const now = xfrmTimeSeconds(clock);
  const then = xfrmTimeSeconds(t);
  if (now === undefined || then === undefined) return undefined;
  return Math.max(0, now - then);
}

interface PlannedSa {
  st: XfrmState;
  /** nodes holding it, as buildConfigs installed it */
  nodes: string[];
}

/** Which end sends: overlay A>B is sent by A; a forward telescope SA by the client, a reverse one by the hop. */
function roleOf(id: SaId | undefined, node: string, state: State): 'send' | 'receive' {
  if (id?.kind !== 'telescope') return node === id?.from ? 'send' : 'receive';
  const isClient = node === state.circuits[id.circuit]?.client;
  return id.dir === 'fwd' ? (isClient ? 'send' : 'receive') : isClient ? 'receive' : 'send';
}

const DIRECTION = { fwd: 'forward', rev: 'reverse' } as const;

const counterOf = (o: ObservedState): SaCounters | undefined =>
  o.counters
    ? {
        packets: o.counters.packets,
        bytes: o.counters.bytes,
        replayWindow: o.counters.replayWindowErrors,
        replay: o.counters.replayErrors,
        integrity: o.counters.integrityFailed,
      }
    : undefined;

function errorText(e: SaErrors): string {
  const parts: string[] = [];
  if (e.replayWindow) parts.push(`${e.replayWindow} outside the replay window`);
  if (e.replay) parts.push(`${e.replay} replayed`);
  if (e.integrity) parts.push(`${e.integrity} failed integrity`);
  return parts.join(', ');
}

const hasErrors = (e: SaErrors) => e.replayWindow > 0 || e.replay > 0 || e.integrity > 0;

function evalEnd(input: StatusInput, sa: PlannedSa, idp: SaId | undefined, node: string, label: string): SaEnd {
  const st = sa.st;
  const role = roleOf(idp, node, input.state);
  const end: SaEnd = { node, role, state: 'unknown', findings: [] };
  const what = `${label} (spi ${hex32(st.spi)})`;
  const r = input.readings.get(node);
  if (!r || !r.ok) {
    end.findings.push({ severity: 'unknown', code: 'node-unreachable', node, sa: st.key.id, message: `${node} could not be read${r && !r.ok ? `: ${r.error}` : ''}` });
    return end;
  }
  const owned = r.sample.observed.states?.owned;
  if (!owned) {
    end.findings.push({ severity: 'unknown', code: 'node-unreachable', node, sa: st.key.id, message: `${node}: xfrm states were not read` });
    return end;
  }
  const o = owned.find((x) => x.proto === 'esp' && x.dst === st.dst && x.spi === st.spi);
  if (!o) {
    const other = owned.find((x) => x.src === st.src && x.dst === st.dst && x.reqid === st.reqid);
    if (other) {
      end.state = 'spi-differs';
      end.observedSpi = hex32(other.spi);
      end.findings.push({ severity: 'down', code: 'sa-spi-differs', node, sa: st.key.id, message: `${what} on ${node} has spi ${hex32(other.spi)}, not the planned one` });
    } else {
      end.state = 'missing';
      end.findings.push({ severity: 'down', code: 'sa-missing', node, sa: st.key.id, message: `${what} is missing on ${node}` });
    }
    return end;
  }
  const diffs: string[] = [];
  if (o.src !== st.src) diffs.push(`source ${formatIPv4(o.src)} (planned ${formatIPv4(st.src)})`);
  if (o.reqid !== st.reqid) diffs.push(`reqid ${hex32(o.reqid)} (planned ${hex32(st.reqid)})`);
  if (o.mode !== 'tunnel') diffs.push(`mode ${o.mode}`);
  if (o.profile !== st.profile) diffs.push(`crypto ${o.profile ?? o.algos.join(' + ')} (planned ${st.profile})`);
  end.state = diffs.length ? 'differs' : 'ok';
  if (diffs.length) end.findings.push({ severity: 'down', code: 'sa-differs', node, sa: st.key.id, message: `${what} on ${node} differs from the plan: ${diffs.join(', ')}` });

  const c = counterOf(o);
  if (c) {
    end.packets = c.packets;
    end.bytes = c.bytes;
    end.errors = { replayWindow: c.replayWindow, replay: c.replay, integrity: c.integrity };
  }
  if (o.counters?.added !== undefined) end.added = o.counters.added;
  if (o.counters?.used !== undefined) end.firstUsed = o.counters.used;
  const age = since(r.sample.clock, o.counters?.added);
  if (age !== undefined) end.ageSeconds = age;
  const usedFor = since(r.sample.clock, o.counters?.used);
  if (usedFor !== undefined) end.usedForSeconds = usedFor;

  // counters over the interval, when the same SA was there in the earlier sample too
  const before = r.earlier?.observed.states?.owned.find((x) => x.proto === 'esp' && x.dst === st.dst && x.spi === st.spi);
  const cb = before ? counterOf(before) : undefined;
  if (c && cb && input.intervalSeconds !== undefined) {
    end.delta = {
      packets: c.packets - cb.packets,
      bytes: c.bytes - cb.bytes,
      replayWindow: c.replayWindow - cb.replayWindow,
      replay: c.replay - cb.replay,
      integrity: c.integrity - cb.integrity,
      seconds: input.intervalSeconds,
    };
  }
  if (c && hasErrors(end.errors!)) {
    const rising = end.delta && hasErrors(end.delta);
    if (rising) {
      end.findings.push({ severity: 'warn', code: 'sa-errors-rising', node, sa: st.key.id, message: `${what} on ${node}: errors rising: +${errorText(end.delta!)} in ${end.delta!.seconds}s` });
    } else if (end.delta) {
      end.findings.push({ severity: 'info', code: 'sa-errors', node, sa: st.key.id, message: `${what} on ${node}: ${errorText(end.errors!)} since it was added (none during the last ${end.delta.seconds}s)` });
    } else {
      end.findings.push({ severity: 'warn', code: 'sa-errors', node, sa: st.key.id, message: `${what} on ${node}: ${errorText(end.errors!)} since it was added` });
    }
  }
  const lt = (input.lifetime ?? defaultLifetimeCheck)(o, {
    ...(c ? { bytes: c.bytes, packets: c.packets } : {}),
    ...(age !== undefined ? { ageSeconds: age } : {}),
    ...(usedFor !== undefined ? { usedForSeconds: usedFor } : {}),
  });
  if (lt) {
    end.lifetime = lt;
    if (lt.pastHard) end.findings.push({ severity: 'warn', code: 'sa-hard-limit', node, sa: st.key.id, message: `${what} on ${node} is past its hard lifetime (${lt.pastHard}): the kernel drops it; rekey now` });
    else if (lt.pastSoft) end.findings.push({ severity: 'warn', code: 'sa-soft-limit', node, sa: st.key.id, message: `${what} on ${node} is past its soft lifetime (${lt.pastSoft}): rekey it (onionctl rekey --due)` });
  }
  return end;
}

function saStatus(input: StatusInput, sa: PlannedSa): SaStatus {
  const st = sa.st;
  const idp = parseSaId(st.key.id);
  const label = idp?.kind === 'telescope' ? `hop ${idp.hop} ${DIRECTION[idp.dir]}` : idp ? `overlay ${idp.from}->${idp.to}` : st.comment;
  // sender first
  const ends = sa.nodes.map((n) => evalEnd(input, sa, idp, n, idp?.kind === 'telescope' ? `circuit ${idp.circuit} ${label}` : label));
  ends.sort((a, b) => (a.role === b.role ? 0 : a.role === 'send' ? -1 : 1));
  return {
    id: st.key.id,
    kind: idp?.kind ?? 'overlay',
    label,
    ...(idp?.kind === 'telescope' ? { circuit: idp.circuit, hop: idp.hop, direction: DIRECTION[idp.dir] } : {}),
    src: formatIPv4(st.src),
    dst: formatIPv4(st.dst),
    spi: hex32(st.spi),
    reqid: hex32(st.reqid),
    verdict: verdictOf(ends.flatMap((e) => e.findings)),
    ends,
  };
}

const tmplText = (t: { src: number; dst: number; reqid: number }) => `${formatIPv4(t.src)}>${formatIPv4(t.dst)} reqid ${hex32(t.reqid)}`;

function policyMatches(p: XfrmPolicy, o: ObservedPolicy): boolean {
  return (
    o.action === p.action &&
    o.priority === p.priority &&
    o.tmpls.length === p.tmpls.length &&
    o.tmpls.every((t, i) => t.src === p.tmpls[i]!.src && t.dst === p.tmpls[i]!.dst && t.reqid === p.tmpls[i]!.reqid && t.proto === 'esp' && t.mode === 'tunnel')
  );
}

function checkPolicies(input: StatusInput, circuit: string, node: string): { check: PolicyCheck; findings: Finding[] } {
  const planned = (input.configs.get(node)?.policies ?? []).filter((p) => p.comment.startsWith(`circuit ${circuit}:`) || p.comment.startsWith(`circuit ${circuit} `));
  const check: PolicyCheck = { node, planned: planned.length, missing: [], differs: [] };
  const findings: Finding[] = [];
  const r = input.readings.get(node);
  const owned = r?.ok ? r.sample.observed.policies?.owned : undefined;
  if (!owned) return { check, findings };
  const byKey = new Map<string, ObservedPolicy>();
  for (const o of owned) byKey.set(POLICY.observedKey(o), o);
  let present = 0;
  for (const p of planned) {
    const k = POLICY.desiredKey(p);
    const o = byKey.get(k);
    const block = p.action === 'block';
    if (!o) {
      check.missing.push(k);
      findings.push(
        block
          ? { severity: 'warn', code: 'block-policy-missing', node, message: `circuit ${circuit}: the fail-closed block policy ${k} is missing on ${node} (traffic would leave in the clear if the circuit policy went)` }
          : { severity: 'down', code: 'policy-missing', node, message: `circuit ${circuit}: policy ${k} is missing on ${node}` },
      );
    } else if (!policyMatches(p, o)) {
      check.differs.push(k);
      findings.push({
        severity: block ? 'warn' : 'down',
        code: 'policy-differs',
        node,
        message: `circuit ${circuit}: policy ${k} on ${node} differs from the plan (has ${o.action} priority ${o.priority} [${o.tmpls.map(tmplText).join(', ')}], planned ${p.action} priority ${p.priority} [${p.tmpls.map(tmplText).join(', ')}])`,
      });
    } else present++;
  }
  check.present = present;
  return { check, findings };
}

/** Node-level findings: reachability, sysctls, xfrm_stat, SAs the plan lacks. */
function nodeStatus(input: StatusInput, node: string, plannedKeys: Set<string>): NodeStatus {
  const r = input.readings.get(node);
  if (!r || !r.ok) {
    const error = r && !r.ok ? r.error : 'not read';
    return { node, reachable: false, error, extraSas: 0, findings: [{ severity: 'unknown', code: 'node-unreachable', node, message: `${node} could not be read: ${error}` }] };
  }
  const s = r.sample;
  const ns: NodeStatus = { node, reachable: true, extraSas: 0, findings: [], ...(s.clock ? { clock: s.clock } : {}) };
  const cfg = input.configs.get(node);
  const sysctls = s.observed.sysctls;
  if (cfg && sysctls) {
    for (const sc of cfg.sysctls) {
      const have = sysctls[sc.key] ?? '';
      if (have === sc.value) continue;
      const fwd = sc.key === 'net.ipv4.ip_forward';
      ns.findings.push({
        severity: fwd ? 'down' : 'warn',
        code: 'sysctl',
        node,
        message: `${node}: ${sc.key} is ${have === '' ? 'unset' : have}, planned ${sc.value}${fwd ? ': this router forwards nothing' : ''}`,
      });
    }
  }
  if (s.xfrmStatError) ns.findings.push({ severity: 'info', code: 'xfrm-stat-unreadable', node, message: `${node}: /proc/net/xfrm_stat could not be parsed: ${s.xfrmStatError}` });
  if (s.xfrmStat) {
    const nz = Object.fromEntries(Object.entries(s.xfrmStat).filter(([, v]) => v !== 0));
    ns.xfrmStat = nz;
    const before = r.earlier?.xfrmStat;
    if (before && input.intervalSeconds !== undefined) {
      const rising = Object.fromEntries(
        Object.entries(s.xfrmStat)
          .map(([k, v]) => [k, v - (before[k] ?? 0)] as const)
          .filter(([, d]) => d > 0),
      );
      ns.xfrmStatRising = rising;
      for (const [k, d] of Object.entries(rising)) {
        ns.findings.push({ severity: 'warn', code: 'xfrm-stat-rising', node, message: `${node}: ${k} rising: +${d} in ${input.intervalSeconds}s (now ${s.xfrmStat[k]})` });
      }
      const still = Object.entries(nz).filter(([k]) => !(k in rising));
      if (still.length) ns.findings.push({ severity: 'info', code: 'xfrm-stat', node, message: `${node}: ${still.map(([k, v]) => `${k} ${v}`).join(', ')} (not moving)` });
    } else {
      for (const [k, v] of Object.entries(nz)) ns.findings.push({ severity: 'warn', code: 'xfrm-stat', node, message: `${node}: ${k} ${v}` });
    }
  }
  const owned = s.observed.states?.owned ?? [];
  ns.extraSas = owned.filter((o) => !plannedKeys.has(`${o.dst} ${o.spi}`)).length;
  if (ns.extraSas > 0) {
    ns.findings.push({
      severity: 'info',
      code: 'extra-sas',
      node,
      message: `${node}: ${ns.extraSas} SA${ns.extraSas === 1 ? '' : 's'} in onionctl's range that the plan does not have (kept during a rekey, or drift: plan --live shows it)`,
    });
  }
  return ns;
}

export function computeStatus(input: StatusInput): StatusReport {
  // the planned SAs, by identity, with the nodes that hold them
  const planned = new Map<string, PlannedSa>();
  const plannedKeys = new Map<string, Set<string>>();
  for (const [node, cfg] of input.configs) {
    const keys = new Set<string>();
    plannedKeys.set(node, keys);
    for (const st of cfg.states) {
      keys.add(`${st.dst} ${st.spi}`);
      const p = planned.get(st.key.id);
      if (p) p.nodes.push(node);
      else planned.set(st.key.id, { st, nodes: [node] });
    }
  }
  const saCache = new Map<string, SaStatus>();
  const sa = (id: string): SaStatus | undefined => {
    let s = saCache.get(id);
    if (!s) {
      const p = planned.get(id);
      if (!p) return undefined;
      s = saStatus(input, p);
      saCache.set(id, s);
    }
    return s;
  };
  const saFindings = (s: SaStatus) => s.ends.flatMap((e) => e.findings);

  const nodes: NodeStatus[] = [];
  for (const node of input.configs.keys()) {
    if (!input.readings.has(node)) continue;
    nodes.push(nodeStatus(input, node, plannedKeys.get(node) ?? new Set()));
  }
  const nodeOf = new Map(nodes.map((n) => [n.node, n]));

  // overlay links
  const links: LinkStatus[] = [];
  const linkByPair = new Map<string, LinkStatus>();
  for (const l of Object.values(input.state.links)) {
    const sas = [sa(`link:${l.a}>${l.b}`), sa(`link:${l.b}>${l.a}`)].filter((x): x is SaStatus => x !== undefined);
    if (sas.length === 0) continue;
    const findings = dedupe(sas.flatMap(saFindings));
    const ls: LinkStatus = { name: `${l.a}<->${l.b}`, a: l.a, b: l.b, verdict: verdictOf(findings), findings, sas };
    links.push(ls);
    linkByPair.set(`${l.a}\0${l.b}`, ls);
    linkByPair.set(`${l.b}\0${l.a}`, ls);
  }

  // circuits
  const circuits: CircuitStatus[] = [];
  for (const name of input.circuits ?? Object.keys(input.state.circuits)) {
    const c = input.state.circuits[name];
    if (!c) continue;
    const path = [c.client, ...c.hops];
    const sas: SaStatus[] = [];
    for (let i = 1; i <= c.hops.length; i++) {
      for (const dir of ['fwd', 'rev'] as const) {
        const s = sa(`circuit:${name}:g${c.generation}:hop${i}:${dir}`);
        if (s) sas.push(s);
      }
    }
    const findings: Finding[] = sas.flatMap(saFindings);
    const overlay: { link: string; verdict: Verdict }[] = [];
    for (let i = 0; i + 1 < path.length; i++) {
      const l = linkByPair.get(`${path[i]}\0${path[i + 1]}`);
      if (!l) continue;
      // only the overlay SAs this circuit's packets take (both directions along its path)
      overlay.push({ link: l.name, verdict: l.verdict });
      findings.push(...l.findings);
    }
    const policies: PolicyCheck[] = [];
    for (const node of path) {
      const pc = checkPolicies(input, name, node);
      if (pc.check.planned > 0) policies.push(pc.check);
      findings.push(...pc.findings);
      // a node on the path that could not be read, or forwards nothing
      const ns = nodeOf.get(node);
      if (ns && !ns.reachable) findings.push(...ns.findings);
      if (ns && node !== c.client) findings.push(...ns.findings.filter((f) => f.code === 'sysctl' && f.severity === 'down'));
    }
    const all = dedupe(findings);
    circuits.push({ name, client: c.client, hops: [...c.hops], to: [...c.to], path, generation: c.generation, verdict: verdictOf(all), findings: all, sas, overlay, policies });
  }

  // links in the order the circuits ride them, then the others
  const order = new Map<string, number>();
  for (const c of circuits) for (const o of c.overlay) if (!order.has(o.link)) order.set(o.link, order.size);
  links.sort((x, y) => (order.get(x.name) ?? Infinity) - (order.get(y.name) ?? Infinity));

  const problems = dedupe([...circuits.flatMap((c) => c.findings), ...links.flatMap((l) => l.findings), ...nodes.flatMap((n) => n.findings)].filter((f) => f.severity !== 'info'));
  const unreachable = nodes.some((n) => !n.reachable);
  const bad = circuits.some((c) => c.verdict === 'down' || c.verdict === 'unknown');
  const health: Health = bad || unreachable ? 'down' : problems.length > 0 ? 'degraded' : 'ok';
  return {
    health,
    exitCode: health === 'down' ? 1 : 0,
    ...(input.intervalSeconds !== undefined ? { intervalSeconds: input.intervalSeconds } : {}),
    circuits,
    links,
    nodes,
    problems,
  };
}
