/**
 * The SSH transport against real SSH servers (ssh2's Server, in this process, on 127.0.0.1):
 * only modern algorithms are negotiated (no ssh-rsa SHA-1 signatures, no hmac-sha1, no SHA-1
 * key exchange, no CBC), a key marked @revoked in known_hosts is refused even when the topology
 * pins it, and a pinned key that is not a key is a clear error, not a crash inside the handshake.
 */
import { afterEach, describe, expect, test } from '@jest/globals';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import ssh2 from 'ssh2';
import { readFleet, silentProgress } from '../../src/apply/engine.js';
import { Sessions, type Connector } from '../../src/remote/fleet.js';
import { parseKnownHosts } from '../../src/remote/known-hosts.js';
import { ROOT } from '../helpers/cli.js';
import { exampleNet } from '../helpers/net.js';
import { SSH_ALGORITHMS, SshTransport, keepaliveCountMax } from '../../src/remote/ssh.js';
import { TransportError } from '../../src/remote/transport.js';
import { escapeControl, isTerminalSafe } from '../../src/util/text.js';
import { generateEd25519 } from '../../src/lab/run.js';

const { Server } = ssh2;
type ServerT = InstanceType<typeof Server>;

const servers: ServerT[] = [];
const dirs: string[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

type ExecStream = ssh2.ServerChannel;
const answerOk = (stream: ExecStream) => {
  stream.write('ok\n');
  stream.exit(0);
  stream.end();
};

/** A router that prints 64 MiB of "A" as fast as the channel takes it (far past any cap under test). */
const printWithoutEnd = (st: ExecStream) => {
  const chunk = Buffer.alloc(64 * 1024, 0x41);
  let sent = 0;
  const pump = () => {
    while (sent < 64 * 1024 * 1024 && st.write(chunk)) sent += chunk.length;
    if (sent < 64 * 1024 * 1024) st.once('drain', pump);
  };
  st.on('error', () => {});
  pump();
};

/** An SSH server that accepts any public key and answers every command with `answer` ("ok" by default). */
async function server(hostKey: string | Buffer, algorithms?: ssh2.ServerConfig['algorithms'], answer: (s: ExecStream) => void = answerOk): Promise<number> {
  const srv = new Server({ hostKeys: [hostKey], ...(algorithms ? { algorithms } : {}) }, (client) => {
    client.on('error', () => {});
    client.on('authentication', (ctx) => (ctx.method === 'publickey' ? ctx.accept() : ctx.reject(['publickey'])));
    client.on('session', (accept) => {
      accept().once('exec', (acc) => answer(acc()));
    });
  });
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  return (srv.address() as AddressInfo).port;
}

/** ssh2's own generator writes a malformed key about one time in 280 (a 31-byte public key); generateEd25519 draws again */
function ed25519(): { priv: string; pubLine: string; blob: Buffer } {
  const k = generateEd25519('test');
  const blob = Buffer.from(k.public.split(/\s+/)[1]!, 'base64');
  return { priv: k.private, pubLine: k.public.split(/\s+/).slice(0, 2).join(' '), blob };
}

function rsaPem(): string {
  return generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();
}

/** a client identity file and a known_hosts file holding `lines` */
function clientFiles(known: string[]): { identityFile: string; knownHosts: string } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'onionctl-ssh-'));
  dirs.push(dir);
  const id = ed25519();
  writeFileSync(path.join(dir, 'id'), id.priv, { mode: 0o600 });
  writeFileSync(path.join(dir, 'known_hosts'), known.map((l) => `${l}\n`).join(''));
  return { identityFile: path.join(dir, 'id'), knownHosts: path.join(dir, 'known_hosts') };
}

const target = (port: number, hostKey?: string) => ({ node: 'r1', host: '127.0.0.1', port, user: 'root', ...(hostKey ? { hostKey } : {}) });

async function connectError(t: ReturnType<typeof target>, f: { identityFile: string; knownHosts: string }): Promise<TransportError> {
  const r = await SshTransport.connect(t, { identityFile: f.identityFile, knownHosts: [f.knownHosts], connectTimeoutMs: 10_000 }).then(
    async (x) => {
      await x.close();
      return undefined;
    },
    (e: unknown) => e,
  );
  expect(r).toBeInstanceOf(TransportError);
  return r as TransportError;
}

describe('SSH algorithms', () => {
  test('the list names no SHA-1, CBC, DSA or compression', () => {
    const all: string[] = Object.values(SSH_ALGORITHMS).flat();
    expect(all.filter((a) => /sha1|cbc|dss|md5|zlib/.test(a) || a === 'ssh-rsa')).toEqual([]);
  });

  test('a server with a modern ed25519 host key: connects, runs a command', async () => {
    const hk = ed25519();
    const port = await server(hk.priv);
    const f = clientFiles([`[127.0.0.1]:${port} ${hk.pubLine}`]);
    const t = await SshTransport.connect(target(port), { identityFile: f.identityFile, knownHosts: [f.knownHosts] });
    try {
      expect(await t.exec(['echo'])).toMatchObject({ exitCode: 0, stdout: 'ok\n' });
    } finally {
      await t.close();
    }
  });

  test('a server that signs its host key only with ssh-rsa (SHA-1): refused', async () => {
    const port = await server(rsaPem(), { serverHostKey: ['ssh-rsa'] });
    const e = await connectError(target(port), clientFiles([]));
    expect(e.message).toMatch(/no modern SSH algorithm in common .*: .*(host key|no matching)/i);
  });

  test('a server that offers only hmac-sha1: refused', async () => {
    const hk = ed25519();
    const port = await server(hk.priv, { hmac: ['hmac-sha1'], cipher: ['aes128-ctr'] });
    const e = await connectError(target(port), clientFiles([`[127.0.0.1]:${port} ${hk.pubLine}`]));
    expect(e.message).toMatch(/no modern SSH algorithm in common/);
  });

  test('a server that offers only a SHA-1 key exchange: refused', async () => {
    const hk = ed25519();
    const port = await server(hk.priv, { kex: ['diffie-hellman-group14-sha1'] });
    const e = await connectError(target(port), clientFiles([`[127.0.0.1]:${port} ${hk.pubLine}`]));
    expect(e.message).toMatch(/no modern SSH algorithm in common/);
  });
});

describe('host keys: revocation wins over pinning', () => {
  test('the pinned key is the server\'s, but known_hosts marks it @revoked: refused, naming the revocation', async () => {
    const hk = ed25519();
    const port = await server(hk.priv);
    const f = clientFiles([`@revoked * ${hk.pubLine}`]);
    expect(parseKnownHosts(`@revoked * ${hk.pubLine}\n`)[0]!.key.equals(hk.blob)).toBe(true);
    const e = await connectError(target(port, hk.pubLine), f);
    expect(e.message).toMatch(/is marked @revoked in known_hosts \(offered ssh-ed25519 SHA256:/);
  });

  test('the same pinned key without a revocation connects', async () => {
    const hk = ed25519();
    const port = await server(hk.priv);
    const t = await SshTransport.connect(target(port, hk.pubLine), { ...(() => { const f = clientFiles([]); return { identityFile: f.identityFile, knownHosts: [f.knownHosts] }; })() });
    await t.close();
  });

  test('a pinned key that is not a key ("garbage"): a clear error before any connection, no crash', async () => {
    const e = await connectError(target(1, 'garbage'), clientFiles([]));
    expect(e.message).toMatch(/r1 \(127\.0\.0\.1:1\): pinned host key "garbage" is not an OpenSSH public key/);
  });
});

describe('what a hostile router prints', () => {
  async function connected(answer: (s: ExecStream) => void, maxOutputBytes?: number) {
    const hk = ed25519();
    const port = await server(hk.priv, undefined, answer);
    const f = clientFiles([`[127.0.0.1]:${port} ${hk.pubLine}`]);
    return SshTransport.connect(target(port), { identityFile: f.identityFile, knownHosts: [f.knownHosts], ...(maxOutputBytes ? { maxOutputBytes } : {}) });
  }

  test('terminal escapes on stderr (clear screen, a fake "Apply complete", OSC 52 clipboard) come back escaped', async () => {
    const evil = '\x1b[2J\x1b[HApply complete!\x1b]52;c;cm0gLXJmIH4=\x07\u202eevil\n';
    const t = await connected((st) => {
      st.stderr.write(evil);
      st.exit(1);
      st.end();
    });
    try {
      const r = await t.exec(['ip', '-batch', '-']);
      expect(r.exitCode).toBe(1);
      expect(isTerminalSafe(r.stderr)).toBe(true);
      expect(r.stderr).toBe('\\x1b[2J\\x1b[HApply complete!\\x1b]52;c;cm0gLXJmIH4=\\x07\\u{202e}evil\n');
    } finally {
      await t.close();
    }
  });

  test('a command killed by a signal (the OOM killer) says so; exit status 255 alone said nothing', async () => {
    const t = await connected((st) => {
      st.exit('KILL', false, '');
      st.end();
    });
    try {
      const r = await t.exec(['ip', '-batch', '-']);
      expect(r.exitCode).toBe(255);
      expect(r.stderr).toMatch(/^killed by signal SIGKILL on the router/);
    } finally {
      await t.close();
    }
  });

  test('a router that prints without end: that command fails once past the cap, and the controller stops reading', async () => {
    const t = await connected(printWithoutEnd, 1024 * 1024);
    try {
      const e = await t.exec(['ip', 'xfrm', 'state']).then(() => undefined, (x: unknown) => x);
      expect(e).toBeInstanceOf(TransportError);
      expect((e as Error).message).toMatch(/"ip xfrm state" printed more than 1048576 bytes; stopped reading it/);
    } finally {
      await t.close();
    }
  });

  test('escapeControl: C0 (but newline and tab), DEL, C1 and bidi overrides escaped; long text bounded', () => {
    expect(escapeControl('a\tb\nc\x00\x1b\x7f\x9b\u2066d')).toBe('a\tb\nc\\x00\\x1b\\x7f\\x9b\\u{2066}d');
    expect(escapeControl('x'.repeat(50), 10)).toBe(`${'x'.repeat(10)}... (40 more characters)`);
    expect(isTerminalSafe('plain text, tabs\tand\nlines')).toBe(true);
  });
});


describe('one bad router does not stop the fleet (issue 11, defect 4)', () => {
  test('readFleet over real SSH: a router that prints without end and one that answers escapes fail alone; the genuine one is read', async () => {
    const genuine = readFileSync(path.join(ROOT, 'test/fixtures/hostile/router/genuine.txt'), 'utf8');
    const escaped = readFileSync(path.join(ROOT, 'test/fixtures/hostile/router/state-escapes.txt'), 'utf8');
    const answers: Record<string, (s: ExecStream) => void> = {
      or1: printWithoutEnd,
      or2: (st) => {
        st.write(genuine);
        st.exit(0);
        st.end();
      },
      or3: (st) => {
        st.write(escaped);
        st.exit(0);
        st.end();
      },
    };
    const ports = new Map<string, { port: number; pubLine: string }>();
    for (const [node, answer] of Object.entries(answers)) {
      const hk = ed25519();
      ports.set(node, { port: await server(hk.priv, undefined, (st) => {
        st.on('data', () => {}); // the read-back script on stdin
        answer(st);
      }), pubLine: hk.pubLine });
    }
    const f = clientFiles([...ports.values()].map((p) => `[127.0.0.1]:${p.port} ${p.pubLine}`));
    const connector: Connector = (node) => {
      const p = ports.get(node)!;
      return SshTransport.connect({ ...target(p.port), node }, { identityFile: f.identityFile, knownHosts: [f.knownHosts], maxOutputBytes: 1024 * 1024 });
    };
    const net = exampleNet('three-mixes.yaml');
    const sessions = new Sessions(connector);
    try {
      const reads = await readFleet(net, ['or1', 'or2', 'or3'], sessions, 3, () => [], silentProgress);
      expect(reads.get('or1')!.error).toMatch(/printed more than 1048576 bytes; stopped reading it/);
      expect(reads.get('or3')!.error).toMatch(/or3: read-back line \d+ holds a control character \(U\+001B\)/);
      expect(isTerminalSafe(reads.get('or3')!.error!)).toBe(true);
      expect(reads.get('or2')!.error).toBeUndefined();
      expect(reads.get('or2')!.observed!.states!.owned.length + reads.get('or2')!.observed!.states!.foreign.length).toBeGreaterThan(0);
    } finally {
      await sessions.closeAll();
    }
  });
});

describe('a router too busy to answer keepalives while a command runs', () => {
  /**
   * A TCP proxy in front of the SSH server that holds back every byte from the server while
   * `hold` is on: the client's keepalives then go unanswered, as with a router whose CPU is
   * taken by a large ip -batch.
   */
  async function holdingProxy(port: number): Promise<{ port: number; hold(ms: number): void }> {
    let until = 0;
    const srv = createServer((c) => {
      const up = connect(port, '127.0.0.1');
      c.on('error', () => {});
      up.on('error', () => {});
      c.pipe(up);
      const queue: Buffer[] = [];
      const flush = () => {
        if (Date.now() < until) return void setTimeout(flush, until - Date.now());
        for (const b of queue.splice(0)) c.write(b);
      };
      up.on('data', (d: Buffer) => {
        queue.push(d);
        flush();
      });
      up.on('close', () => setTimeout(() => c.destroy(), Math.max(0, until - Date.now()) + 50));
    });
    proxies.push(srv);
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    return { port: (srv.address() as AddressInfo).port, hold: (ms) => void (until = Date.now() + ms) };
  }
  const proxies: ReturnType<typeof createServer>[] = [];
  afterEach(() => {
    for (const p of proxies.splice(0)) p.close();
  });

  async function busyRouter(holdMs: number, commandTimeoutMs: number) {
    const hk = ed25519();
    let proxy: { port: number; hold(ms: number): void } | undefined;
    const port = await server(hk.priv, undefined, (st) => {
      // the command starts (its confirmation gets through), then runs for holdMs while nothing
      // comes back
      setTimeout(() => proxy!.hold(holdMs), 100);
      setTimeout(() => {
        st.write('done\n');
        st.exit(0);
        st.end();
      }, holdMs);
    });
    proxy = await holdingProxy(port);
    const f = clientFiles([`[127.0.0.1]:${proxy.port} ${hk.pubLine}`]);
    return SshTransport.connect(target(proxy.port), { identityFile: f.identityFile, knownHosts: [f.knownHosts], commandTimeoutMs, keepaliveIntervalMs: 200 });
  }

  test('keepalives are tolerated for as long as the command timeout: silent for 2 s of a 6 s timeout, the command still ends well', async () => {
    // before: 3 unanswered keepalives (here 0.6 s) dropped the connection, whatever the timeout
    const t = await busyRouter(2000, 6000);
    try {
      const r = await t.exec(['ip', '-batch', '-'], { timeoutMs: 6000 });
      expect({ code: r.exitCode, out: r.stdout }).toEqual({ code: 0, out: 'done\n' });
    } finally {
      await t.close();
    }
  });

  test('a connection that does die mid-command says why, instead of "closed the channel"', async () => {
    // a 0.6 s command timeout allows 3 keepalives of 0.2 s; the router is silent for 3 s
    const t = await busyRouter(3000, 600);
    try {
      const r = await t.exec(['ip', '-batch', '-'], { timeoutMs: 10_000 }).catch((e: unknown) => e);
      const text = r instanceof Error ? r.message : (r as { stderr: string }).stderr;
      expect(text).toMatch(/the connection was lost \(.*[Kk]eepalive.*\) before the command ended/);
    } finally {
      await t.close().catch(() => {});
    }
  });

  test('keepaliveCountMax: the command timeout over the interval, at least 3', () => {
    expect(keepaliveCountMax(120_000, 10_000)).toBe(12);
    expect(keepaliveCountMax(1_200_000, 10_000)).toBe(120);
    expect(keepaliveCountMax(1_000, 10_000)).toBe(3);
  });
});
