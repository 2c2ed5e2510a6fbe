/**
 * Pushes one node's rendered files through a Transport: sysctls, then `ip -batch -`, then the
 * firewall (iptables-restore --noflush, or nft -f -). Everything goes on stdin, so keys never
 * appear on a command line (a process listing shows only `ip -batch -`).
 */
import type { RenderedFile } from '../render/render.js';
import { TransportError, type Transport } from '../remote/transport.js';

export interface NodeFiles {
  node: string;
  ip: string;
  firewall: { backend: 'iptables' | 'nftables'; content: string };
  sysctl: string;
}

export interface PushOptions {
  /** command that reads iptables-restore input; the lab uses iptables-legacy-restore */
  iptablesRestore?: string;
}

export function groupFiles(files: RenderedFile[]): Map<string, NodeFiles> {
  const by = new Map<string, Partial<NodeFiles> & { node: string }>();
  for (const f of files) {
    const m = /^(.*)\.(ip|iptables|nft|sysctl)$/.exec(f.name);
    if (!m) continue;
    const node = m[1]!;
    const e = by.get(node) ?? { node };
    if (m[2] === 'ip') e.ip = f.content;
    else if (m[2] === 'sysctl') e.sysctl = f.content;
    else e.firewall = { backend: m[2] === 'nft' ? 'nftables' : 'iptables', content: f.content };
    by.set(node, e);
  }
  const out = new Map<string, NodeFiles>();
  for (const [k, v] of by) {
    if (v.ip === undefined || v.firewall === undefined || v.sysctl === undefined) throw new Error(`incomplete files for ${k}`);
    out.set(k, v as NodeFiles);
  }
  return out;
}

async function run(t: Transport, node: string, argv: string[], stdin: string, what: string): Promise<void> {
  const r = await t.exec(argv, { stdin });
  if (r.exitCode !== 0) {
    const msg = (r.stderr || r.stdout).trim().split('\n').slice(0, 5).join('; ');
    throw new TransportError(node, `${t.label}: ${what} failed (exit ${r.exitCode}): ${msg}`);
  }
}

export async function pushNode(t: Transport, f: NodeFiles, o: PushOptions = {}): Promise<void> {
  if (/^[a-z]/m.test(f.sysctl.replace(/^#.*$/gm, ''))) {
    await run(t, f.node, ['sysctl', '-q', '--load=-'], f.sysctl, 'sysctl');
  }
  await run(t, f.node, ['ip', '-batch', '-'], f.ip, 'ip -batch');
  if (f.firewall.backend === 'nftables') {
    await run(t, f.node, ['nft', '-f', '-'], f.firewall.content, 'nft -f');
    return;
  }
  const restore = o.iptablesRestore ?? 'iptables-restore';
  const saved = await t.exec([restore.replace(/-restore$/, '-save')]);
  if (saved.exitCode !== 0) throw new TransportError(f.node, `${t.label}: iptables-save failed: ${saved.stderr.trim()}`);
  await run(t, f.node, [restore, '--noflush'], withoutExistingJumps(f.firewall.content, saved.stdout), 'iptables-restore');
}

const JUMP = /^-A (\S+) -m comment --comment "?onionctl"? -j (ONIONCTL-\S+)$/;

/**
 * iptables-restore --noflush flushes onionctl's own chains when it declares them, but cannot
 * "add a rule unless present" in a built-in chain: drop the jump lines that the router already
 * has, so that applying twice leaves exactly one jump.
 */
export function withoutExistingJumps(input: string, iptablesSave: string): string {
  const have = new Set<string>();
  let table = '';
  for (const line of iptablesSave.split('\n')) {
    if (line.startsWith('*')) table = line.slice(1).trim();
    const m = JUMP.exec(line.trim());
    if (m) have.add(`${table} ${m[1]} ${m[2]}`);
  }
  table = '';
  return input
    .split('\n')
    .filter((line) => {
      if (line.startsWith('*')) table = line.slice(1).trim();
      const m = JUMP.exec(line.trim());
      return !(m && have.has(`${table} ${m[1]} ${m[2]}`));
    })
    .join('\n');
}
