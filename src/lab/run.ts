/**
 * The lab's inner steps. They run in the controller's network namespace on this machine (the
 * lab's "ctl" namespace, see cli/lab-command.ts), talk to the nodes over SSH exactly as to real
 * routers, and run everything else in the lab kernel through a LabHost: directly, or in a
 * User-Mode Linux guest when this kernel has no ESP.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import path from 'node:path';
import ssh2 from 'ssh2';
import { groupFiles, pushNode } from '../apply/push.js';
import { KdfKeySource } from '../keys/kdf.js';
import { formatIPv4 } from '../net/addr.js';
import { rngFactory } from '../pathselect/rng.js';
import { computePlan, renderAll } from '../plan/plan.js';
import { SshTransport } from '../remote/ssh.js';
import type { Transport } from '../remote/transport.js';
import { emptyState, type State } from '../state/model.js';
import { buildNet, type Net } from '../topology/net.js';
import { parseTopology } from '../topology/load.js';
import { loadOrCreateSecret, loadState, loadTemplates, packageVersion, saveState, writeFileAtomic } from '../util/files.js';
import { inNs, script, type LabHost } from './host.js';
import { LabError, nodeBatch, rootBatch, serverBatch, type LabNode } from './layout.js';
import type { LabRecord } from './record.js';

const sshUtils = ssh2.utils;

/**
 * An ed25519 key pair in OpenSSH format, generated in-process. ssh2 occasionally (about 2% of
 * keys) writes a private key whose ed25519 fields are not 32/64 bytes long, which OpenSSH
 * refuses ("error in libcrypto"); such keys are checked for and drawn again.
 */
export function generateEd25519(comment: string): { private: string; public: string } {
  for (let i = 0; i < 20; i++) {
    const k = sshUtils.generateKeyPairSync('ed25519', { comment });
    if (wellFormedEd25519(k.private)) return k;
  }
  throw new LabError('could not generate a well-formed ed25519 key');
}

export function wellFormedEd25519(pem: string): boolean {
  const b64 = pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
  const buf = Buffer.from(b64, 'base64');
  let off = 'openssh-key-v1\0'.length;
  const str = (): Buffer => {
    const n = buf.readUInt32BE(off);
    const v = buf.subarray(off + 4, off + 4 + n);
    off += 4 + n;
    return v;
  };
  try {
    str(); // cipher
    str(); // kdf
    str(); // kdf options
    off += 4; // number of keys
    str(); // public key blob
    const priv = str();
    // checkint, checkint, key type, public (32), private (64)
    let p = 8;
    const pstr = (): Buffer => {
      const n = priv.readUInt32BE(p);
      const v = priv.subarray(p + 4, p + 4 + n);
      p += 4 + n;
      return v;
    };
    if (priv.readUInt32BE(0) !== priv.readUInt32BE(4)) return false;
    if (pstr().toString() !== 'ssh-ed25519') return false;
    return pstr().length === 32 && pstr().length === 64;
  } catch {
    return false;
  }
}

export type Log = (line: string) => void;

/** Does the lab kernel have nf_tables for IPv4? (The UML kernel does not.) */
export async function labHasNft(host: LabHost): Promise<boolean> {
  const ns = `ocnft${randomBytes(3).toString('hex')}`;
  const r = await host.run([
    'sh',
    '-c',
    `ip netns add ${ns} && echo 'table ip t { chain c { type filter hook forward priority 0; } }' | nsenter --net=/run/netns/${ns} nft -f - 2>/dev/null; rc=$?; ip netns del ${ns}; exit $rc`,
  ]);
  return r.code === 0;
}

/** A file of 10 MiB, one of 20 MiB and nine objects making a 1.5 MB page. */
async function makeWww(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true });
  const chunk = randomBytes(1 << 20);
  for (const [name, mib] of [['10M.bin', 10], ['20M.bin', 20]] as const) {
    const fh = await fs.open(path.join(dir, name), 'w');
    for (let i = 0; i < mib; i++) await fh.write(chunk);
    await fh.close();
  }
  const sizes = [400_000, 300_000, 200_000, 200_000, 150_000, 100_000, 80_000, 50_000, 20_000];
  for (const [i, n] of sizes.entries()) await fs.writeFile(path.join(dir, `obj${i}.bin`), chunk.subarray(0, n));
}

/** sshd config and keys for one node; keys are generated in-process (no ssh-keygen start). */
async function prepareSshd(rec: LabRecord, n: LabNode, sshDir: string, clientPub: string): Promise<{ cfg: string; known: string }> {
  const hostKey = path.join(sshDir, `${n.name}_host_ed25519`);
  const pair = generateEd25519(`onionctl-lab-${rec.id}-${n.name}`);
  await fs.writeFile(hostKey, pair.private, { mode: 0o600 });
  const ak = path.join(sshDir, `${n.name}_authorized_keys`);
  await fs.writeFile(ak, clientPub, { mode: 0o600 });
  const cfg = path.join(sshDir, `${n.name}_sshd_config`);
  await fs.writeFile(
    cfg,
    [
      `ListenAddress ${formatIPv4(n.mgmt.addr)}`,
      'Port 22',
      `HostKey ${hostKey}`,
      `PidFile ${path.join(rec.dir, `sshd-${n.name}.pid`)}`,
      `AuthorizedKeysFile ${ak}`,
      'PermitRootLogin prohibit-password',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UsePAM no',
      'StrictModes no',
      'PrintMotd no',
      'LogLevel ERROR',
      'MaxSessions 20',
      // a clean environment: no start-up files of the machine the lab runs on (bash sources
      // ~/.bashrc for ssh commands) and the standard PATH
      `SetEnv PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=${path.join(sshDir, 'home')}`,
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  const pub = pair.public.trim().split(/\s+/);
  return { cfg, known: `${formatIPv4(n.mgmt.addr)} ${pub[0]} ${pub[1]}` };
}

/** Resolves once something answers with an SSH banner (cheaper than a full handshake). */
function sshBanner(host: string, port: number): Promise<true | undefined> {
  return new Promise((resolve) => {
    const sock = tcpConnect({ host, port });
    const done = (v: true | undefined) => {
      sock.destroy();
      resolve(v);
    };
    sock.setTimeout(5_000, () => done(undefined));
    sock.once('data', (d: Buffer) => done(d.toString('latin1').startsWith('SSH-') ? true : undefined));
    sock.once('error', () => done(undefined));
  });
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new LabError(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

export async function connectNode(rec: LabRecord, n: LabNode): Promise<Transport> {
  const sshDir = path.join(rec.dir, 'ssh');
  return SshTransport.connect(
    { node: n.name, host: formatIPv4(n.mgmt.addr), port: 22, user: 'root' },
    { identityFile: path.join(sshDir, 'id_ed25519'), knownHosts: [path.join(sshDir, 'known_hosts')], connectTimeoutMs: 60_000, commandTimeoutMs: 300_000 },
  );
}

export async function loadLabNet(rec: LabRecord): Promise<Net> {
  const { topology } = parseTopology(await fs.readFile(rec.labTopology ?? rec.topology, 'utf8'), rec.labTopology ?? rec.topology);
  const net = buildNet(topology);
  net.quickack = true; // delayed ACKs on zero-latency veths stall transfers by 40 ms
  if (rec.nftReplaced.length > 0) {
    for (const r of net.routers.values()) {
      if (!rec.nftReplaced.includes(r.name)) continue;
      r.nat = 'iptables';
      if (r.exit) r.exit.nat = 'iptables';
    }
    if (net.nat === 'nftables') net.nat = 'iptables';
  }
  return net;
}

export function labStatePath(rec: LabRecord): string {
  return path.join(rec.dir, 'state.json');
}

/** Plans with the lab's own state and secret (never the user's) and pushes over SSH. */
export async function applyLab(rec: LabRecord, log: Log, mutate?: (s: State) => State): Promise<{ state: State }> {
  const net = await loadLabNet(rec);
  const statePath = labStatePath(rec);
  const { state: prev } = existsSync(statePath) ? await loadState(statePath) : { state: emptyState(randomBytes(32).toString('hex')) };
  const plan = computePlan({ net, state: mutate ? mutate(prev) : prev, rngFor: rngFactory(rec.seed), now: new Date().toISOString() });
  await saveState(statePath, plan.state);
  const { secret } = await loadOrCreateSecret(path.join(rec.dir, 'secret'));
  const files = renderAll(plan, { keys: new KdfKeySource(secret, plan.state.salt), mode: 'secret', templates: await loadTemplates(), version: packageVersion() });
  const byNode = groupFiles(files);
  await Promise.all(
    rec.layout.nodes.map(async (n) => {
      const t = await connectNode(rec, n);
      try {
        await pushNode(t, byNode.get(n.name)!, { iptablesRestore: rec.iptablesRestore });
        log(`  configured ${t.label}`);
      } finally {
        await t.close();
      }
    }),
  );
  return { state: plan.state };
}

/** Creates namespaces, wires, sshd per node and one HTTP server per circuit, then applies. */
export async function labUpInner(rec: LabRecord, host: LabHost, log: Log): Promise<void> {
  const l = rec.layout;
  const setup = path.join(rec.dir, 'setup');
  await fs.mkdir(setup, { recursive: true, mode: 0o700 });
  const file = async (name: string, lines: string[]) => {
    const p = path.join(setup, name);
    await fs.writeFile(p, lines.join('\n') + '\n', { mode: 0o600 });
    return p;
  };
  // keep each capture to its own traffic: no flooding of unknown unicast to other ports
  const ports = [...l.nodes.flatMap((n) => [n.underlay, ...(n.outside ? [n.outside] : [])]), ...l.servers.map((s) => s.iface)];
  const lines = [
    `ip -batch ${await file('root.batch', rootBatch(l, { controllerOnBridge: host.kind === 'direct' }))}`,
    `bridge -batch ${await file('bridge.batch', ports.map((p) => `link set dev ${p.hostVeth} flood off`))}`,
  ];
  if (host.kind === 'uml') lines.push(`ip link set eth0 master ${l.bridges.mgmt}`, 'ip link set eth0 up');
  for (const n of l.nodes) lines.push(`ip -n ${n.ns} -batch ${await file(`${n.name}.batch`, nodeBatch(n, true))}`);
  for (const s of l.servers) lines.push(`ip -n ${s.ns} -batch ${await file(`srv-${s.circuit}.batch`, serverBatch(s))}`);
  await script(host, 'creating namespaces and wires', lines);
  log(`  ${l.nodes.length + l.servers.length} namespaces wired (underlay, outside and management bridges)`);

  const www = path.join(rec.dir, 'www');
  await makeWww(www);
  const sshDir = path.join(rec.dir, 'ssh');
  await fs.mkdir(path.join(sshDir, 'home'), { recursive: true, mode: 0o700 });
  const ctl = generateEd25519(`onionctl-lab-${rec.id}-controller`);
  await fs.writeFile(path.join(sshDir, 'id_ed25519'), ctl.private, { mode: 0o600 });
  const known: string[] = [];
  const start: string[] = ['mkdir -p /run/sshd'];
  for (const n of l.nodes) {
    const { cfg, known: k } = await prepareSshd(rec, n, sshDir, ctl.public + '\n');
    known.push(k);
    // -r: no re-exec per connection (each process start is slow in User-Mode Linux)
    start.push(`nsenter --net=/run/netns/${n.ns} /usr/sbin/sshd -r -f ${cfg}`);
  }
  await writeFileAtomic(path.join(sshDir, 'known_hosts'), known.join('\n') + '\n', 0o600);
  for (const s of l.servers) {
    const a = formatIPv4(s.iface.addr);
    start.push(
      `setsid nsenter --net=/run/netns/${s.ns} python3 -m http.server 80 --bind ${a} --directory ${www} >${path.join(rec.dir, `http-${s.circuit}.log`)} 2>&1 </dev/null &`,
      `echo $! > ${path.join(rec.dir, `http-${s.circuit}.pid`)}`,
    );
  }
  // wait until every server answers (one loop, in the lab kernel)
  for (const s of l.servers) {
    const a = formatIPv4(s.iface.addr);
    start.push(
      `i=0; until nsenter --net=/run/netns/${s.ns} curl -s -o /dev/null http://${a}/obj8.bin; do i=$((i+1)); [ $i -lt 300 ] || { echo "HTTP server ${a} did not start" >&2; exit 1; }; sleep 0.2; done`,
    );
  }
  await script(host, 'starting sshd and the HTTP servers', start, { timeoutMs: 600_000 });
  for (const n of l.nodes) await waitFor(`sshd of ${n.name}`, () => sshBanner(formatIPv4(n.mgmt.addr), 22), 120_000);
  log(`  sshd answers in ${l.nodes.length} namespaces (host keys pinned in ${path.join(sshDir, 'known_hosts')}); ${l.servers.length} HTTP servers up`);
  if (process.env.ONIONCTL_LAB_FAIL === 'before-apply') throw new LabError('failing on purpose (ONIONCTL_LAB_FAIL=before-apply)');
  await applyLab(rec, log);
}

/** Removes every namespace, process and bridge the lab made inside the lab kernel. */
export async function labDownInner(rec: LabRecord, host: LabHost): Promise<void> {
  const l = rec.layout;
  const all = [...l.nodes.map((n) => n.ns), ...l.servers.map((s) => s.ns)];
  const lines = [
    `for f in ${rec.dir}/*.pid; do [ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null; done; true`,
    ...all.map((ns) => `for p in $(ip netns pids ${ns} 2>/dev/null); do kill -KILL $p 2>/dev/null; done; true`),
    ...all.map((ns) => `ip netns del ${ns} 2>/dev/null || true`),
    ...Object.values(l.bridges).map((b) => `ip link del ${b} 2>/dev/null || true`),
  ];
  await script(host, 'removing the lab', lines);
}

export { inNs };
