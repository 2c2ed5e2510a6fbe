/** Running commands for the kernel tests, and deciding whether they can run here. */
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';

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
