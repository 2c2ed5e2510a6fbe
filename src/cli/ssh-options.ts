/** The options every command that talks to routers shares, and their translation to FleetOptions. */
import { InvalidArgumentError, type Command } from 'commander';
import type { FleetOptions } from '../remote/fleet.js';

export interface SshCliOptions {
  identity?: string;
  knownHosts?: string[];
  parallel?: number;
  connectTimeout?: number;
  commandTimeout?: number;
}

function positiveInt(max: number) {
  return (v: string): number => {
    if (!/^[0-9]+$/.test(v) || Number(v) < 1 || Number(v) > max) throw new InvalidArgumentError(`a whole number from 1 to ${max}`);
    return Number(v);
  };
}

const collect = (v: string, prev: string[] | undefined) => [...(prev ?? []), v];

export function addSshOptions(cmd: Command): Command {
  return cmd
    .option('--identity <file>', 'SSH private key (default: the ssh-agent at SSH_AUTH_SOCK, else ~/.ssh/id_ed25519, id_ecdsa or id_rsa)')
    .option('--known-hosts <file>', 'known_hosts file to verify host keys against (repeatable; default ~/.ssh/known_hosts); a key pinned in the topology (ssh.hostKey) wins, but a key marked @revoked there is always refused', collect)
    .option('--parallel <n>', 'routers handled at the same time', positiveInt(1000), 10)
    .option('--connect-timeout <seconds>', 'SSH connect timeout', positiveInt(3600), 10)
    .option('--command-timeout <seconds>', 'timeout of each remote command', positiveInt(86_400), 120);
}

export function fleetOptions(o: SshCliOptions): FleetOptions {
  return {
    ...(o.identity ? { identityFile: o.identity } : {}),
    ...(o.knownHosts ? { knownHosts: o.knownHosts } : {}),
    parallel: o.parallel ?? 10,
    connectTimeoutMs: (o.connectTimeout ?? 10) * 1000,
    commandTimeoutMs: (o.commandTimeout ?? 120) * 1000,
  };
}
