/**
 * Many routers at once: one SSH connection per node, at most `parallel` nodes in flight, every
 * node's outcome reported separately (one unreachable router never stops the others).
 */
import os from 'node:os';
import path from 'node:path';
import { existsSync } from 'node:fs';
import pLimit from 'p-limit';
import { formatIPv4 } from '../net/addr.js';
import type { Net } from '../topology/net.js';
import { loadKnownHosts, SshTransport, type SshAuth, type SshTarget } from './ssh.js';
import type { KnownHostEntry } from './known-hosts.js';
import type { Transport } from './transport.js';

export interface FleetOptions {
  /** private key file; otherwise the SSH agent, otherwise ~/.ssh/id_ed25519 or id_rsa */
  identityFile?: string;
  /** known_hosts files (default ~/.ssh/known_hosts); a key pinned in the topology wins */
  knownHosts?: string[];
  /** nodes handled at the same time (default 10) */
  parallel?: number;
  connectTimeoutMs?: number;
  commandTimeoutMs?: number;
}

export type Outcome<T> = { node: string; ok: true; value: T } | { node: string; ok: false; error: Error };

/** Opens a Transport to a node; the lab and tests substitute their own. */
export type Connector = (node: string) => Promise<Transport>;

export function sshTargetFor(net: Net, node: string): SshTarget {
  const n = net.routers.get(node) ?? net.clients.get(node);
  if (!n) throw new Error(`internal: no node ${node}`);
  const s = n.ssh ?? {};
  return {
    node,
    host: s.host ?? formatIPv4(n.underlay.addr),
    port: s.port ?? 22,
    user: s.user ?? 'root',
    ...(s.hostKey ? { hostKey: s.hostKey } : {}),
  };
}

export function defaultIdentity(): string | undefined {
  if (process.env.SSH_AUTH_SOCK) return undefined;
  for (const f of ['id_ed25519', 'id_ecdsa', 'id_rsa']) {
    const p = path.join(os.homedir(), '.ssh', f);
    if (existsSync(p)) return p;
  }
  return undefined;
}

/** A connector that opens ssh2 connections with verified host keys. */
export async function sshConnector(net: Net, o: FleetOptions): Promise<Connector> {
  const knownFiles = o.knownHosts && o.knownHosts.length > 0 ? o.knownHosts : [path.join(os.homedir(), '.ssh', 'known_hosts')];
  const known: KnownHostEntry[] = await loadKnownHosts(knownFiles);
  const identityFile = o.identityFile ?? defaultIdentity();
  const auth: SshAuth = {
    ...(identityFile ? { identityFile } : {}),
    knownHosts: knownFiles,
    connectTimeoutMs: o.connectTimeoutMs ?? 10_000,
    commandTimeoutMs: o.commandTimeoutMs ?? 120_000,
  };
  return (node) => SshTransport.connect(sshTargetFor(net, node), auth, known);
}

/**
 * Runs `fn` for every node with its own connection, `parallel` at a time. Never throws for a
 * node's failure: each outcome says ok or the error. The connection is closed afterwards.
 */
export async function forEachNode<T>(
  nodes: readonly string[],
  connect: Connector,
  parallel: number,
  fn: (t: Transport, node: string) => Promise<T>,
): Promise<Outcome<T>[]> {
  const limit = pLimit(Math.max(1, parallel));
  return Promise.all(
    nodes.map((node) =>
      limit(async (): Promise<Outcome<T>> => {
        let t: Transport | undefined;
        try {
          t = await connect(node);
          return { node, ok: true, value: await fn(t, node) };
        } catch (e) {
          return { node, ok: false, error: e instanceof Error ? e : new Error(String(e)) };
        } finally {
          await t?.close().catch(() => undefined);
        }
      }),
    ),
  );
}

/** Keeps one connection per node open across several rounds (apply runs in stages). */
export class Sessions {
  private readonly open = new Map<string, Promise<Transport>>();
  constructor(private readonly connect: Connector) {}
  get(node: string): Promise<Transport> {
    let t = this.open.get(node);
    if (!t) {
      t = this.connect(node);
      // a failed connection is not cached: a later round may try again
      t.catch(() => this.open.delete(node));
      this.open.set(node, t);
    }
    return t;
  }
  async closeAll(): Promise<void> {
    const all = [...this.open.values()];
    this.open.clear();
    await Promise.all(all.map((p) => p.then((t) => t.close()).catch(() => undefined)));
  }
}

/** Like forEachNode, over kept-open sessions. */
export async function forEachSession<T>(
  nodes: readonly string[],
  sessions: Sessions,
  parallel: number,
  fn: (t: Transport, node: string) => Promise<T>,
): Promise<Outcome<T>[]> {
  const limit = pLimit(Math.max(1, parallel));
  return Promise.all(
    nodes.map((node) =>
      limit(async (): Promise<Outcome<T>> => {
        try {
          const t = await sessions.get(node);
          return { node, ok: true, value: await fn(t, node) };
        } catch (e) {
          return { node, ok: false, error: e instanceof Error ? e : new Error(String(e)) };
        }
      }),
    ),
  );
}
