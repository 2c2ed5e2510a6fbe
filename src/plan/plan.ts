/**
 * The pure core end to end: topology -> (state) -> per-node desired configuration -> files.
 * No clock, no randomness but the injected RNG, no I/O.
 */
import { createHash } from 'node:crypto';
import type { KeySource, SaKeyId } from '../keys/kdf.js';
import type { NodeConfig } from '../model/config.js';
import type { RngFactory } from '../pathselect/rng.js';
import { renderNode, type KeyMode, type RenderedFile, type Templates } from '../render/render.js';
import { buildConfigs } from '../spd/build.js';
import { describeEvent, type State, type StateEvent } from '../state/model.js';
import { reconcile } from '../state/reconcile.js';
import type { Net } from '../topology/net.js';

export interface PlanInput {
  net: Net;
  state: State;
  rngFor: RngFactory;
  /** ISO time, recorded for new circuits only */
  now: string;
}

export interface NodeSummary {
  node: string;
  kind: 'router' | 'client';
  firewall: 'iptables' | 'nftables';
  states: number;
  policies: number;
  addresses: number;
  routes: number;
  rules: number;
  sysctls: number;
}

export interface Plan {
  state: State;
  events: StateEvent[];
  configs: Map<string, NodeConfig>;
}

export function computePlan(input: PlanInput): Plan {
  const { state, events } = reconcile(input.net, input.state, input.rngFor, input.now);
  const configs = buildConfigs(input.net, state);
  return { state, events, configs };
}

export function summarize(cfg: NodeConfig): NodeSummary {
  return {
    node: cfg.node,
    kind: cfg.kind,
    firewall: cfg.firewall.backend,
    states: cfg.states.length,
    policies: cfg.policies.length,
    addresses: cfg.addresses.length,
    routes: cfg.routes.length,
    rules: cfg.firewall.snat.length + cfg.firewall.forward.length,
    sysctls: cfg.sysctls.length,
  };
}

export function renderAll(
  plan: Plan,
  opts: { keys: KeySource; mode: KeyMode; templates: Templates; version: string },
): RenderedFile[] {
  const files: RenderedFile[] = [];
  const keys = memoKeys(opts.keys);
  for (const cfg of plan.configs.values()) files.push(...renderNode(cfg, { ...opts, keys }));
  return files;
}

/**
 * Every SA is installed, and so rendered, on both of its ends: derive each key once per render
 * pass instead of twice (HKDF was the largest single cost of rendering a big plan). buildConfigs
 * gives both ends the same SaKeyId object, so the cache is keyed by that object; a hit also
 * needs equal id, epoch, SPI, nonce and length, so a different SA can never get this one's key.
 */
function memoKeys(keys: KeySource): KeySource {
  const cache = new WeakMap<SaKeyId, { id: string; epoch: number; spi: number; nonce: string | undefined; bytes: number; key: Buffer }>();
  return {
    key(sa, bytes) {
      const hit = cache.get(sa);
      if (hit && hit.id === sa.id && hit.epoch === sa.epoch && hit.spi === sa.spi && hit.nonce === sa.nonce && hit.bytes === bytes) return hit.key;
      const key = keys.key(sa, bytes);
      cache.set(sa, { id: sa.id, epoch: sa.epoch, spi: sa.spi, nonce: sa.nonce, bytes, key });
      return key;
    },
  };
}

/** A digest of the redacted files: changes whenever any generated file would change. */
export function filesDigest(files: RenderedFile[]): string {
  const h = createHash('sha256');
  for (const f of files) {
    if (f.secret) continue;
    h.update(f.name).update('\0').update(f.content).update('\0');
  }
  return h.digest('hex');
}

export function planText(plan: Plan, circuits: { name: string; client: string }[]): string {
  const out: string[] = [];
  out.push('Circuits:');
  for (const c of circuits) {
    const s = plan.state.circuits[c.name];
    if (!s) continue;
    out.push(`  ${c.name}: ${c.client} -> ${s.hops.join(' -> ')} -> ${s.to.join(', ')}`);
  }
  out.push('', 'State changes:');
  if (plan.events.length === 0) out.push('  none (paths, addresses and SPIs as before)');
  for (const e of plan.events) out.push(`  ${describeEvent(e)}`);
  out.push('', 'Per node (desired configuration; no router was contacted):');
  const rows = [...plan.configs.values()].map(summarize);
  const w = Math.max(...rows.map((r) => r.node.length), 4);
  for (const r of rows) {
    out.push(
      `  ${r.node.padEnd(w)}  +${r.states} states, +${r.policies} policies, +${r.routes} routes, +${r.addresses} addresses, +${r.rules} rules (${r.firewall})`,
    );
  }
  const tot = rows.reduce(
    (a, r) => ({ states: a.states + r.states, policies: a.policies + r.policies, routes: a.routes + r.routes, rules: a.rules + r.rules }),
    { states: 0, policies: 0, routes: 0, rules: 0 },
  );
  out.push('', `Total: ${rows.length} nodes, ${tot.states} states, ${tot.policies} policies, ${tot.routes} routes, ${tot.rules} rules.`);
  return out.join('\n') + '\n';
}

export function planJson(plan: Plan, digest: string): unknown {
  return {
    format: 'onionctl-plan/v1',
    stateSerial: plan.state.serial,
    filesDigest: digest,
    circuits: Object.entries(plan.state.circuits).map(([name, c]) => ({
      name,
      client: c.client,
      hops: c.hops,
      addrs: c.addrs,
      to: c.to,
      generation: c.generation,
    })),
    events: plan.events,
    nodes: [...plan.configs.values()].map(summarize),
  };
}
