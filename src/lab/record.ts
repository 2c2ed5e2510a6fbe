/**
 * Where a lab lives on disk and how later commands find it:
 *   /var/tmp/onionctl-lab/<id>/lab.json          what was created (for test and down)
 *   /var/tmp/onionctl-lab/by-topology/<hash>      the id of the lab built from a topology file
 * /var/tmp is used (not /tmp or /run) because a User-Mode Linux guest sees the host's / through
 * hostfs but has its own tmpfs /run.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { LabLayout } from './layout.js';
import { writeFileAtomic } from '../util/files.js';

export const LAB_ROOT = process.env.ONIONCTL_LAB_ROOT ?? '/var/tmp/onionctl-lab';

export interface LabRecord {
  id: string;
  /** the user's topology file (also the key of the by-topology pointer) */
  topology: string;
  /** the copy the lab runs, when the user's has addresses that are not lab-safe (see remap.ts) */
  labTopology?: string;
  mode: 'direct' | 'uml';
  dir: string;
  /** the controller's network namespace on this machine (holds the guest's tap with UML, or
   * the lab's bridges directly); every inner lab step runs in it */
  ctlNs: string;
  /** UML: the guest's control directory and the tap device in ctlNs */
  guestDir?: string;
  tap?: string;
  status: 'creating' | 'up' | 'failed';
  created: string;
  layout: LabLayout;
  /** firewall command used inside the lab (iptables-legacy in UML) */
  iptablesRestore: string;
  /** exits whose nftables backend was replaced by iptables because the kernel lacks it */
  nftReplaced: string[];
  /**
   * The kernel the lab's routers run: the UML binary and its release (or the host's kernel in
   * direct mode), whether xfrm_interface was loaded, and whether it has nf_tables for IPv4.
   */
  kernel?: { binary?: string; release: string; xfrmInterface: boolean; nft: boolean };
  seed?: string;
  /**
   * What `onionctl apply|plan|destroy|status` need to drive the lab like real routers, from
   * the controller namespace: `ip netns exec <ctlNs> onionctl apply <topology> --state <state>
   * --secret <secret> --identity <identity>` (host keys are pinned in the topology; the same
   * keys are in knownHosts). Written by `lab up` once the nodes' sshd keys exist.
   */
  ctl?: LabCtlPaths;
}

export interface LabCtlPaths {
  topology: string;
  state: string;
  secret: string;
  identity: string;
  knownHosts: string;
}

export function ctlPaths(dir: string): LabCtlPaths {
  return {
    topology: path.join(dir, 'topology.yaml'),
    state: path.join(dir, 'state.json'),
    secret: path.join(dir, 'secret'),
    identity: path.join(dir, 'ssh', 'id_ed25519'),
    knownHosts: path.join(dir, 'ssh', 'known_hosts'),
  };
}

export function labDir(id: string): string {
  return path.join(LAB_ROOT, id);
}

export function topologyKey(topology: string): string {
  return createHash('sha256').update(path.resolve(topology)).digest('hex').slice(0, 16);
}

export function pointerPath(topology: string): string {
  return path.join(LAB_ROOT, 'by-topology', topologyKey(topology));
}

export async function writeRecord(r: LabRecord): Promise<void> {
  await fs.mkdir(r.dir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(path.join(r.dir, 'lab.json'), JSON.stringify(r, null, 2) + '\n', 0o600);
}

export async function readRecord(dir: string): Promise<LabRecord | undefined> {
  try {
    return JSON.parse(await fs.readFile(path.join(dir, 'lab.json'), 'utf8')) as LabRecord;
  } catch {
    return undefined;
  }
}

export async function writePointer(topology: string, value: string): Promise<void> {
  const p = pointerPath(topology);
  await fs.mkdir(path.dirname(p), { recursive: true, mode: 0o700 });
  await writeFileAtomic(p, value + '\n', 0o600);
}

export async function readPointer(topology: string): Promise<string | undefined> {
  try {
    return (await fs.readFile(pointerPath(topology), 'utf8')).trim() || undefined;
  } catch {
    return undefined;
  }
}

export async function removePointer(topology: string): Promise<void> {
  await fs.rm(pointerPath(topology), { force: true });
}
