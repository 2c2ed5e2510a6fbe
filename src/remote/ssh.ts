/**
 * SSH transport over ssh2: one connection per router, host key verified against a pinned key or
 * known_hosts before authentication, connect and command timeouts, commands fed on stdin.
 */
import { promises as fs } from 'node:fs';
import ssh2, { type ConnectConfig } from 'ssh2';
const { Client } = ssh2;
type Client = InstanceType<typeof Client>;
import { fingerprintSha256, hostField, keyTypeOf, parseKnownHosts, parsePinnedKey, verifyHostKey, type KnownHostEntry } from './known-hosts.js';
import { shellJoin, TransportError, type ExecOptions, type ExecResult, type Transport } from './transport.js';
import { escapeControl } from '../util/text.js';

export interface SshTarget {
  node: string;
  host: string;
  port: number;
  user: string;
  /** pinned key from the topology ("ssh-ed25519 AAAA...") */
  hostKey?: string;
}

/**
 * The most a router's command may print, stdout and stderr together (a router with 10,000 SAs
 * prints a few MiB): past it that command fails and only that router with it.
 */
export const MAX_COMMAND_OUTPUT = 64 * 1024 * 1024;
/** The most of a router's stderr kept (it is only ever shown, escaped). */
export const MAX_STDERR = 64 * 1024;

export interface SshAuth {
  /** private key file; otherwise the agent at SSH_AUTH_SOCK */
  identityFile?: string;
  agent?: string;
  /** known_hosts files to consult (a pinned key, when present, wins) */
  knownHosts: string[];
  connectTimeoutMs?: number;
  commandTimeoutMs?: number;
  /** see MAX_COMMAND_OUTPUT */
  maxOutputBytes?: number;
  /** SSH keepalive period (default 10 s); tests shorten it */
  keepaliveIntervalMs?: number;
}

/**
 * The only algorithms onionctl negotiates: no SHA-1 (ssh-rsa signatures, hmac-sha1, sha1 key
 * exchanges), no CBC ciphers, no DSA, no compression. ssh2's defaults still allow ssh-rsa and
 * hmac-sha1. Every router OpenSSH has shipped since 7.x (2016) offers several of these.
 */
export const SSH_ALGORITHMS = {
  kex: [
    'curve25519-sha256',
    'curve25519-sha256@libssh.org',
    'ecdh-sha2-nistp256',
    'ecdh-sha2-nistp384',
    'ecdh-sha2-nistp521',
    'diffie-hellman-group16-sha512',
    'diffie-hellman-group18-sha512',
    'diffie-hellman-group14-sha256',
  ],
  serverHostKey: ['ssh-ed25519', 'ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384', 'ecdsa-sha2-nistp521', 'rsa-sha2-512', 'rsa-sha2-256'],
  cipher: ['chacha20-poly1305@openssh.com', 'aes256-gcm@openssh.com', 'aes128-gcm@openssh.com', 'aes256-ctr', 'aes192-ctr', 'aes128-ctr'],
  hmac: ['hmac-sha2-256-etm@openssh.com', 'hmac-sha2-512-etm@openssh.com', 'hmac-sha2-256', 'hmac-sha2-512'],
  compress: ['none'],
} satisfies NonNullable<ConnectConfig['algorithms']>;

export async function loadKnownHosts(files: string[]): Promise<KnownHostEntry[]> {
  const all: KnownHostEntry[] = [];
  for (const f of files) {
    try {
      all.push(...parseKnownHosts(await fs.readFile(f, 'utf8')));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
  return all;
}

/**
 * Unanswered keepalives before the connection counts as dead: as many as fit in the command
 * timeout. A router busy with a large `ip -batch` (tens of thousands of SAs) may not answer for
 * a while; it was given 15 s (5 s x 3) and apply failed on every router of a 10,000-circuit lab
 * with "closed the channel". A router that is really gone is still stopped by the command timeout.
 */
export function keepaliveCountMax(commandTimeoutMs: number, intervalMs: number): number {
  return Math.max(3, Math.ceil(commandTimeoutMs / intervalMs));
}

export class SshTransport implements Transport {
  readonly label: string;
  /** why the connection went away (keepalive timeout, reset), for the commands it ended */
  private lost: string | undefined;
  private constructor(
    private readonly target: SshTarget,
    private readonly client: Client,
    private readonly commandTimeoutMs: number,
    private readonly maxOutput: number = MAX_COMMAND_OUTPUT,
  ) {
    this.label = `${target.node} (ssh ${target.user}@${target.host}:${target.port})`;
  }

  static async connect(target: SshTarget, auth: SshAuth, known?: KnownHostEntry[]): Promise<SshTransport> {
    const entries = known ?? (await loadKnownHosts(auth.knownHosts));
    const label = `${target.node} (${target.host}:${target.port})`;
    let refusal: string | undefined;
    // parsed here, not in the verifier: a throw inside ssh2's handshake would not reach us
    let pinned: Buffer | undefined;
    if (target.hostKey) {
      try {
        pinned = parsePinnedKey(target.hostKey);
      } catch (e) {
        throw new TransportError(target.node, `${label}: ${(e as Error).message}`, { cause: e });
      }
    }
    const hostVerifier = (key: Buffer): boolean => {
      // a key marked @revoked in known_hosts is refused for every host, pinned or not
      if (entries.some((e) => e.marker === 'revoked' && e.key.equals(key))) {
        refusal = `host key for ${label} is marked @revoked in known_hosts (offered ${keyTypeOf(key)} ${fingerprintSha256(key)})`;
        return false;
      }
      if (pinned) {
        if (pinned.equals(key)) return true;
        const v = verifyHostKey([{ hosts: '*', keyType: '', key: pinned, line: 0 }], ['*'], key, label);
        refusal = v.ok ? undefined : `${v.message.replace('known_hosts line 0', 'the pinned ssh.hostKey')}`;
        return false;
      }
      const v = verifyHostKey(entries, [hostField(target.host, target.port)], key, label);
      if (!v.ok) refusal = v.message;
      return v.ok;
    };
    const cfg: ConnectConfig = {
      host: target.host,
      port: target.port,
      username: target.user,
      readyTimeout: auth.connectTimeoutMs ?? 10_000,
      hostVerifier,
      algorithms: SSH_ALGORITHMS,
      keepaliveInterval: auth.keepaliveIntervalMs ?? 10_000,
      keepaliveCountMax: keepaliveCountMax(auth.commandTimeoutMs ?? 120_000, auth.keepaliveIntervalMs ?? 10_000),
    };
    if (auth.identityFile) cfg.privateKey = await fs.readFile(auth.identityFile);
    else if (auth.agent ?? process.env.SSH_AUTH_SOCK) cfg.agent = auth.agent ?? process.env.SSH_AUTH_SOCK!;
    else throw new TransportError(target.node, `${label}: no SSH identity: pass --identity FILE or run an ssh-agent`);

    const client = new Client();
    await new Promise<void>((resolve, reject) => {
      client.once('ready', () => resolve());
      client.once('error', (err: Error & { level?: string }) => {
        if (refusal) reject(new TransportError(target.node, refusal, { cause: err }));
        else if (/no matching|handshake failed/i.test(err.message)) {
          reject(new TransportError(target.node, `${label}: no modern SSH algorithm in common (onionctl refuses SHA-1, CBC and DSA): ${err.message}`, { cause: err }));
        }
        else if (err.level === 'client-authentication') reject(new TransportError(target.node, `${label}: authentication refused for user ${target.user}`, { cause: err }));
        else if (err.level === 'client-timeout') reject(new TransportError(target.node, `${label}: connection timed out`, { cause: err }));
        else reject(new TransportError(target.node, `${label}: ${err.message}`, { cause: err }));
      });
      client.connect(cfg);
    });
    // every error the client reports after the handshake (a reset, a protocol error) fails
    // only this router's commands, never the whole run
    const t = new SshTransport(target, client, auth.commandTimeoutMs ?? 120_000, auth.maxOutputBytes ?? MAX_COMMAND_OUTPUT);
    client.on('error', (e: Error) => {
      t.lost ??= escapeControl(e.message, 200);
    });
    return t;
  }

  exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const command = shellJoin(argv);
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    return new Promise((resolve, reject) => {
      this.client.exec(command, (err, stream) => {
        if (err) {
          reject(new TransportError(this.target.node, `${this.label}: cannot start "${argv.join(' ')}": ${err.message}`, { cause: err }));
          return;
        }
        const out: Buffer[] = [];
        const errb: Buffer[] = [];
        let size = 0;
        let errSize = 0;
        let code: number | undefined;
        /** the signal that ended the command (sshd's exit-signal), e.g. KILL from the OOM killer */
        let signal: string | undefined;
        let failed = false;
        const fail = (e: TransportError) => {
          if (failed) return;
          failed = true;
          clearTimeout(timer);
          out.length = 0;
          errb.length = 0;
          stream.close();
          reject(e);
        };
        const timer = setTimeout(() => fail(new TransportError(this.target.node, `${this.label}: "${argv.join(' ')}" timed out after ${timeoutMs} ms`)), timeoutMs);
        const count = (n: number) => {
          size += n;
          if (size > this.maxOutput) fail(new TransportError(this.target.node, `${this.label}: "${argv.join(' ')}" printed more than ${this.maxOutput} bytes; stopped reading it`));
        };
        stream.on('data', (d: Buffer) => {
          count(d.length);
          if (!failed) out.push(d);
        });
        stream.stderr.on('data', (d: Buffer) => {
          count(d.length);
          if (!failed && errSize < MAX_STDERR) {
            errb.push(d.subarray(0, MAX_STDERR - errSize));
            errSize += d.length;
          }
        });
        stream.on('exit', (c: number | null, sig?: string) => {
          code = c ?? 255;
          if (c === null && typeof sig === 'string') signal = sig.slice(0, 32);
        });
        stream.on('error', (e: Error) => fail(new TransportError(this.target.node, `${this.label}: ${escapeControl(e.message)}`, { cause: e })));
        stream.on('close', () => {
          if (failed) return;
          clearTimeout(timer);
          // stderr is only shown to the operator: escaped once, here, for every caller
          // a command that died of a signal prints nothing: the signal is the only message there is
          const died =
            signal !== undefined
              ? `killed by signal ${signal} on the router (SIGKILL without a message is usually its out-of-memory killer)\n`
              : code === undefined
                ? this.lost
                  ? `the connection was lost (${this.lost}) before the command ended\n`
                  : 'the router closed the channel without an exit status\n'
                : '';
          resolve({ exitCode: code ?? 255, stdout: Buffer.concat(out).toString('utf8'), stderr: escapeControl(died + Buffer.concat(errb).toString('utf8'), MAX_STDERR) });
        });
        stream.end(opts.stdin ?? '');
      });
    });
  }

  async close(): Promise<void> {
    this.client.end();
  }
}
