/**
 * A private Tor network on the routers of a lab, for bench/vs-tor.ts: every mix of the measured
 * circuit runs one Tor relay that is also a directory authority (three relays, three
 * authorities, no outside network), the last one an exit that allows only the benchmark's
 * destination; the circuit's client runs a Tor client with a SOCKS port, its path pinned to the
 * same routers in the same order (EntryNodes, ExitNodes; with three relays the middle one is
 * the remaining relay).
 *
 * The option set follows the one Tor's own test-network tool (chutney) uses for a fast
 * bootstrap (TestingTorNetwork, AssumeReachable, forced Guard and Exit flags), with its slower
 * voting schedule, because one emulated CPU runs every relay. Keys are made on this machine
 * with Debian's tor and tor-gencert (authority identity, signing key and certificate; relay
 * keys through `tor --list-fingerprint`) and copied into the guest.
 *
 * The torrc builders and parsers are pure (test/unit/bench-vs-tor.test.ts); setUpTor does the I/O.
 */
import { execa } from 'execa';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { LabHost } from '../src/lab/host.js';
import { log, nsx } from './common.js';

/** How to run Tor here and in the guest (which sees this machine's files at the same paths). */
export interface TorBin {
  tor: string;
  gencert: string;
  /** LD_LIBRARY_PATH for both (Debian's package unpacked, not installed), or undefined */
  libDir?: string;
}

/** Tor from scripts/bench-tor.sh: the system's, or Debian's package unpacked into a cache. */
export async function findTor(): Promise<TorBin> {
  const script = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../scripts/bench-tor.sh');
  const r = await execa('sh', [script], { stdin: 'ignore', stderr: 'inherit', reject: false, timeout: 600_000 });
  const [root, lib] = String(r.stdout).trim().split(/\s+/);
  if (r.exitCode !== 0 || !root || !lib) throw new Error(`scripts/bench-tor.sh failed (exit ${r.exitCode}): no Tor to run`);
  return { tor: path.join(root, 'usr/sbin/tor'), gencert: path.join(root, 'usr/bin/tor-gencert'), ...(lib !== '-' ? { libDir: lib } : {}) };
}

/** the command prefix that runs a Tor binary in the guest's shell */
const shRun = (b: TorBin, prog: string) => (b.libDir ? `env LD_LIBRARY_PATH=${b.libDir} ${prog}` : prog);

export const OR_PORT = 5000;
export const DIR_PORT = 7000;
export const SOCKS_PORT = 9050;

export interface RelaySpec {
  nick: string;
  /** the lab namespace the relay runs in */
  ns: string;
  /** its underlay address: ORPort, DirPort and the address in its descriptor */
  addr: string;
  /** an exit: the destination (its port is the only one the exit allows) */
  exitTo?: { addr: string; port: number };
}

export interface RelayKeys {
  /** the relay identity fingerprint, 40 hex digits */
  fingerprint: string;
  /** the authority's v3 identity (fingerprint of its authority identity key), 40 hex digits */
  v3ident: string;
}

const HEX40 = /^[0-9A-F]{40}$/;

/** "fingerprint ABCD..." of an authority_certificate (tor-gencert's output) */
export function parseCertV3Ident(cert: string): string {
  const m = /^fingerprint ([0-9A-Fa-f]{40})$/m.exec(cert);
  if (!m) throw new Error('no fingerprint line in the authority certificate');
  return m[1]!.toUpperCase();
}

/** "NICK ABCD EF01 ..." or "NICK ABCDEF01..." (the `fingerprint` file `tor --list-fingerprint` writes) */
export function parseFingerprintFile(text: string, nick: string): string {
  const line = text.split('\n').find((l) => l.startsWith(`${nick} `));
  if (!line) throw new Error(`no fingerprint line for ${nick}`);
  const fp = line.slice(nick.length + 1).replace(/\s+/g, '').toUpperCase();
  if (!HEX40.test(fp)) throw new Error(`not a relay fingerprint: ${fp.slice(0, 60)}`);
  return fp;
}

export function dirAuthorityLine(r: RelaySpec, k: RelayKeys): string {
  return `DirAuthority ${r.nick} orport=${OR_PORT} no-v2 v3ident=${k.v3ident} ${r.addr}:${DIR_PORT} ${k.fingerprint}`;
}

function common(nick: string, dataDir: string, auths: readonly string[]): string[] {
  return [
    'TestingTorNetwork 1',
    'AssumeReachable 1',
    'PathsNeededToBuildCircuits 0.25',
    'TestingDirAuthVoteExit *',
    'TestingDirAuthVoteGuard *',
    'TestingMinExitFlagThreshold 0',
    `DataDirectory ${dataDir}`,
    'RunAsDaemon 0',
    `Nickname ${nick}`,
    'ShutdownWaitLength 0',
    `Log notice file ${dataDir}/notice.log`,
    'SafeLogging 0',
    'ClientUseIPv6 0',
    ...auths,
  ];
}

/** The torrc of a relay that is also a v3 directory authority (and, with exitTo, the exit). */
export function relayTorrc(r: RelaySpec, dataDir: string, auths: readonly string[]): string {
  const lines = [
    ...common(r.nick, dataDir, auths),
    `Address ${r.addr}`,
    `ORPort ${r.addr}:${OR_PORT}`,
    `DirPort ${r.addr}:${DIR_PORT}`,
    'AuthoritativeDirectory 1',
    'V3AuthoritativeDirectory 1',
    `ContactInfo ${r.nick}@bench.invalid`,
    'SocksPort 0',
    // the first consensus on chutney's slower schedule (20 s: one emulated CPU runs every relay);
    // after it, a vote every 5 minutes and a consensus valid for 15 (3 intervals). On a 20 s
    // schedule throughout, the authorities voted all the time on the CPU the measured transfers
    // need, and a round that came late (the guest busy with a transfer) let the 40-second
    // consensus expire: the client then found "no available nodes" and its stream crawled
    'TestingV3AuthInitialVotingInterval 20',
    'TestingV3AuthInitialVoteDelay 4',
    'TestingV3AuthInitialDistDelay 4',
    'V3AuthVotingInterval 300',
    'V3AuthVoteDelay 20',
    'V3AuthDistDelay 20',
    'IPv6Exit 0',
  ];
  if (r.exitTo) {
    lines.push(
      'ExitRelay 1',
      // the port for every address, not the one destination: clients read exit policies from
      // microdescriptor summaries, which only keep ports open to all addresses, and a relay
      // that allows one address summarises as "reject all" (no exit in the consensus). Only the
      // lab's own networks are reachable from the exit's namespace.
      `ExitPolicy accept *:${r.exitTo.port}`,
      'ExitPolicy reject *:*',
    );
  } else lines.push('ExitRelay 0', 'ExitPolicy reject *:*');
  return lines.join('\n') + '\n';
}

/** The client's torrc: SOCKS on loopback, its path pinned to entry ... exit. */
export function clientTorrc(dataDir: string, auths: readonly string[], entry: RelayKeys, exit: RelayKeys): string {
  return (
    [
      ...common('benchclient', dataDir, auths),
      `SocksPort 127.0.0.1:${SOCKS_PORT}`,
      `EntryNodes $${entry.fingerprint}`,
      `ExitNodes $${exit.fingerprint}`,
      'StrictNodes 1',
      // the emulated CPU is slow: a fixed, generous circuit build timeout rather than a learnt one
      'LearnCircuitBuildTimeout 0',
      'CircuitBuildTimeout 60',
      // one circuit for the whole run (the benchmark measures streams, not circuit builds)
      'MaxCircuitDirtiness 3600',
    ].join('\n') + '\n'
  );
}

/** Creates a relay's keys in `dir` on this machine: authority keys and certificate, relay keys. */
async function makeKeys(bin: TorBin, r: RelaySpec, dir: string): Promise<RelayKeys> {
  const env = bin.libDir ? { LD_LIBRARY_PATH: bin.libDir } : {};
  await fs.mkdir(path.join(dir, 'keys'), { recursive: true, mode: 0o700 });
  await fs.chmod(dir, 0o700);
  const k = (f: string) => path.join(dir, 'keys', f);
  // an empty passphrase on stdin: the key stays unencrypted on the lab's disk, as chutney does
  await execa(
    bin.gencert,
    ['--create-identity-key', '--passphrase-fd', '0', '-m', '12', '-a', `${r.addr}:${DIR_PORT}`, '-i', k('authority_identity_key'), '-s', k('authority_signing_key'), '-c', k('authority_certificate')],
    { input: '', timeout: 120_000, env },
  );
  await execa(bin.tor, ['--ignore-missing-torrc', '-f', '/dev/null', '--quiet', '--list-fingerprint', '--orport', '1', '--nickname', r.nick, '--datadirectory', dir], {
    timeout: 120_000,
    stdin: 'ignore',
    env,
  });
  return {
    v3ident: parseCertV3Ident(await fs.readFile(k('authority_certificate'), 'utf8')),
    fingerprint: parseFingerprintFile(await fs.readFile(path.join(dir, 'fingerprint'), 'utf8'), r.nick),
  };
}

export interface TorNet {
  relays: (RelaySpec & RelayKeys)[];
  clientDir: string;
  clientNs: string;
  /** curl's option for the client's SOCKS port */
  socks: string;
  /** the last lines of every Tor process's log (for an error message) */
  logs(): Promise<string>;
}

async function torLogs(host: LabHost, runDir: string, keysDir: string, nicks: readonly string[]): Promise<string> {
  const r = await host.run(['sh', '-c', nicks.map((n) => `echo "== ${n}"; tail -n 8 ${path.join(runDir, n)}/notice.log ${path.join(keysDir, `${n}.out`)} 2>&1`).join('; ')]);
  return r.stdout.slice(-6000);
}

/**
 * Makes the keys, writes every torrc, starts the relays and the client in their namespaces
 * (pid files in `pidDir`, which `onionctl lab down` kills), and waits until the client has
 * bootstrapped. `work` is on this machine and seen by the guest at the same path; `runDir` is
 * where the data directories live while Tor runs (the guest's tmpfs in a UML lab).
 */
export async function setUpTor(
  host: LabHost,
  o: { bin: TorBin; work: string; runDir: string; pidDir: string; relays: RelaySpec[]; clientNs: string; bootTimeoutS: number },
): Promise<TorNet> {
  const keysDir = path.join(o.work, 'tor');
  const keys: (RelaySpec & RelayKeys)[] = [];
  for (const r of o.relays) keys.push({ ...r, ...(await makeKeys(o.bin, r, path.join(keysDir, r.nick))) });
  const auths = keys.map((r) => dirAuthorityLine(r, r));
  const clientDir = path.join(o.runDir, 'benchclient');
  const lines: string[] = [`rm -rf ${o.runDir}`, `mkdir -p -m 700 ${o.runDir}`];
  for (const r of keys) {
    const run = path.join(o.runDir, r.nick);
    const rc = path.join(keysDir, `${r.nick}.torrc`);
    await fs.writeFile(rc, relayTorrc(r, run, auths), { mode: 0o600 });
    lines.push(`cp -a ${path.join(keysDir, r.nick)} ${run}`, `chmod 700 ${run}`);
    lines.push(`setsid ${nsx(r.ns, `${shRun(o.bin, o.bin.tor)} -f ${rc}`)} >${path.join(keysDir, `${r.nick}.out`)} 2>&1 </dev/null &`, `echo $! > ${path.join(o.pidDir, `vstor-${r.nick}.pid`)}`);
  }
  const crc = path.join(keysDir, 'benchclient.torrc');
  await fs.writeFile(crc, clientTorrc(clientDir, auths, keys[0]!, keys[keys.length - 1]!), { mode: 0o600 });
  lines.push(`mkdir -p -m 700 ${clientDir}`);
  lines.push(`setsid ${nsx(o.clientNs, `${shRun(o.bin, o.bin.tor)} -f ${crc}`)} >${path.join(keysDir, 'benchclient.out')} 2>&1 </dev/null &`, `echo $! > ${path.join(o.pidDir, 'vstor-benchclient.pid')}`);
  const r = await host.run(['sh', '-c', lines.join('\n')], { timeoutMs: 120_000 });
  if (r.code !== 0) throw new Error(`starting Tor failed (exit ${r.code}): ${r.stderr.trim().slice(-400)}`);
  log(`Tor: ${keys.length} relays (also the directory authorities) and a client started; waiting for the client to bootstrap`);

  const logs = () => torLogs(host, o.runDir, keysDir, [...keys.map((k) => k.nick), 'benchclient']);
  const t0 = Date.now();
  let last = '';
  for (;;) {
    const st = await host.run(['sh', '-c', `grep 'Bootstrapped [0-9]*%' ${clientDir}/notice.log 2>/dev/null | tail -n 1 | sed 's/.*Bootstrapped/Bootstrapped/'`]);
    const now = st.stdout.trim();
    if (now !== last && now) log(`  client: ${now.slice(0, 120)}`);
    last = now;
    if (/Bootstrapped 100%/.test(now)) break;
    if (Date.now() - t0 > o.bootTimeoutS * 1000) {
      const tails = await logs();
      throw new Error(`the Tor client did not bootstrap in ${o.bootTimeoutS} s; last: ${last || 'nothing'}\n${tails}`);
    }
    await new Promise((res) => setTimeout(res, 3000));
  }
  log(`Tor: the client bootstrapped in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  return { relays: keys, clientDir, clientNs: o.clientNs, socks: `--socks5 127.0.0.1:${SOCKS_PORT}`, logs };
}
