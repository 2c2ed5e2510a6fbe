/** Running commands for the kernel tests, and deciding whether they can run here. */
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { formatIPv4 } from '../../src/net/addr.js';
import type { NetNode } from '../../src/topology/net.js';

export function run(cmd: string, args: string[], input?: string): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { encoding: 'utf8', ...(input !== undefined ? { input } : {}) });
}

export function must(cmd: string, args: string[], input?: string): string {
  const r = run(cmd, args, input);
  if (r.error || r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.error?.message ?? ''}${r.stderr}`);
  return r.stdout;
}

/** Why network namespaces cannot be used here, or undefined when they can. */
export function whyNoNetns(): string | undefined {
  if (process.platform !== 'linux') return 'not Linux';
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'not root (network namespaces need CAP_SYS_ADMIN)';
  const r = run('ip', ['netns', 'list']);
  if (r.error) return `ip cannot be started: ${r.error.message}`;
  if (r.status !== 0) return `ip netns does not work: ${r.stderr.trim()}`;
  return undefined;
}

/**
 * A fresh namespace for one node: lo up, and its underlay (and an exit's separate outside)
 * interface as a veth whose two ends both stay inside the namespace, so the host is never touched.
 */
export function nodeNamespace(ns: string, n: NetNode): void {
  must('ip', ['netns', 'add', ns]);
  const ifaces = [n.underlay];
  if (n.kind === 'router' && n.exit && n.exit.iface.name !== n.underlay.name) ifaces.push(n.exit.iface);
  must('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  ifaces.forEach((i, k) => {
    must('ip', ['-n', ns, 'link', 'add', i.name, 'mtu', String(i.mtu), 'type', 'veth', 'peer', 'name', `ocpeer${k}`]);
    must('ip', ['-n', ns, 'addr', 'add', `${formatIPv4(i.addr)}/${i.len}`, 'dev', i.name]);
    must('ip', ['-n', ns, 'link', 'set', `ocpeer${k}`, 'up']);
    must('ip', ['-n', ns, 'link', 'set', i.name, 'up']);
  });
}
