/**
 * The lab, in the kernel this process runs on (directly on a host whose kernel has ESP, or
 * inside the User-Mode Linux guest): namespaces, wires, sshd per node, an HTTP server per
 * circuit; configuration pushed over SSH through the same push code as real routers.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { connect as tcpConnect } from 'node:net';
import { execa } from 'execa';
import ssh2 from 'ssh2';
const sshUtils = ssh2.utils;
import { groupFiles, pushNode } from '../apply/push.js';
import { KdfKeySource } from '../keys/kdf.js';
import { formatIPv4 } from '../net/addr.js';
import { rngFactory } from '../pathselect/rng.js';
import { computePlan, renderAll } from '../plan/plan.js';
import { SshTransport, type SshAuth } from '../remote/ssh.js';
import type { Transport } from '../remote/transport.js';
import { emptyState, type State } from '../state/model.js';
import { buildNet, type Net } from '../topology/net.js';
import { parseTopology } from '../topology/load.js';
import { loadOrCreateSecret, loadState, loadTemplates, packageVersion, saveState, writeFileAtomic } from '../util/files.js';
import { LabError, labLayout, nodeBatch, rootBatch, serverBatch, type LabLayout, type LabNode } from './layout.js';
import { labDir, readPointer, readRecord, removePointer, writePointer, writeRecord, type LabRecord } from './record.js';

export type Log = (line: string) => void;

export interface LabUpOptions {
  seed?: string;
  log: Log;
  /** set inside the UML guest */
  mode: 'direct' | 'uml';
}

async function sh(argv: string[], input?: string): Promise<void> {
  const r = await execa(argv[0]!, argv.slice(1), { input: input ?? '', reject: false });
  if (r.exitCode !== 0) throw new LabError(`${argv.join(' ')} failed (${r.exitCode}): ${String(r.stderr).trim().split('\n').slice(0, 4).join('; ')}`);
}

async function kernelHasNftIpv4(): Promise<boolean> {
  const ns = `ocnft${randomBytes(3).toString('hex')}`;
  try {
    await sh(['ip', 'netns', 'add', ns]);
    const r = await execa('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], { input: 'table ip t { chain c { type filter hook forward priority 0; } }\n', reject: false });
    return r.exitCode === 0;
  } catch {
    return false;
  } finally {
    await execa('ip', ['netns', 'del', ns], { reject: false });
  }
}

function ipTablesRestoreCommand(): string {
  // The UML kernel has no nf_tables for IPv4: use the legacy backend when it exists.
  for (const d of ['/usr/sbin', '/sbin', '/usr/bin']) if (existsSync(path.join(d, 'iptables-legacy-restore'))) return 'iptables-legacy-restore';
  return 'iptables-restore';
}

/** A file of 10 MiB and nine objects making a 1.5 MB page, for downloads and the benchmark. */
async function makeWww(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true });
  const chunk = randomBytes(1 << 20);
  const big = await fs.open(path.join(dir, '10M.bin'), 'w');
  for (let i = 0; i < 10; i++) await big.write(chunk);
  await big.close();
  const big20 = await fs.open(path.join(dir, '20M.bin'), 'w');
  for (let i = 0; i < 20; i++) await big20.write(chunk);
  await big20.close();
  const sizes = [400_000, 300_000, 200_000, 200_000, 150_000, 100_000, 80_000, 50_000, 20_000];
  for (const [i, n] of sizes.entries()) await fs.writeFile(path.join(dir, `obj${i}.bin`), chunk.subarray(0, n));
}

export interface SshSetup {
  auth: SshAuth;
  knownHosts: string;
}

async function startSshd(rec: LabRecord, n: LabNode, sshDir: string, clientPub: string): Promise<string> {
  await fs.mkdir(path.join(sshDir, 'home'), { recursive: true, mode: 0o700 });
  const hostKey = path.join(sshDir, `${n.name}_host_ed25519`);
  // generated in-process: each process start costs a lot inside User-Mode Linux
  const pair = sshUtils.generateKeyPairSync('ed25519', { comment: `onionctl-lab-${rec.id}-${n.name}` });
  await fs.writeFile(hostKey, pair.private, { mode: 0o600 });
  await fs.writeFile(`${hostKey}.pub`, pair.public + '\n', { mode: 0o644 });
  const ak = path.join(sshDir, `${n.name}_authorized_keys`);
  await fs.writeFile(ak, clientPub, { mode: 0o600 });
  const pid = path.join(sshDir, `${n.name}_sshd.pid`);
  const cfg = path.join(sshDir, `${n.name}_sshd_config`);
  await fs.writeFile(
    cfg,
    [
      `ListenAddress ${formatIPv4(n.mgmt.addr)}`,
      'Port 22',
      `HostKey ${hostKey}`,
      `PidFile ${pid}`,
      `AuthorizedKeysFile ${ak}`,
      'PermitRootLogin prohibit-password',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UsePAM no',
      'StrictModes no',
      'PrintMotd no',
      'LogLevel ERROR',
      'MaxSessions 20',
      // a clean environment: no login-shell start-up files of the machine the lab runs on
      // (bash sources ~/.bashrc for ssh commands), and the standard PATH
      `SetEnv PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=${path.join(sshDir, 'home')}`,
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  await fs.mkdir('/run/sshd', { recursive: true, mode: 0o755 });
  // -r: no re-exec per connection (a process start per handshake is slow in User-Mode Linux)
  await sh(['ip', 'netns', 'exec', n.ns, '/usr/sbin/sshd', '-r', '-f', cfg]);
  const pub = (await fs.readFile(`${hostKey}.pub`, 'utf8')).trim().split(/\s+/);
  return `${formatIPv4(n.mgmt.addr)} ${pub[0]} ${pub[1]}`;
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new LabError(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
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

export async function connectNode(rec: LabRecord, n: LabNode): Promise<Transport> {
  const sshDir = path.join(rec.dir, 'ssh');
  return SshTransport.connect(
    { node: n.name, host: formatIPv4(n.mgmt.addr), port: 22, user: 'root' },
    { identityFile: path.join(sshDir, 'id_ed25519'), knownHosts: [path.join(sshDir, 'known_hosts')], connectTimeoutMs: 60_000, commandTimeoutMs: 300_000 },
  );
}

export async function loadLabNet(rec: LabRecord): Promise<Net> {
  const { topology } = parseTopology(await fs.readFile(rec.topology, 'utf8'), rec.topology);
  const net = buildNet(topology);
  net.quickack = true; // delayed ACKs on zero-latency veths stall transfers by 40 ms
  for (const r of net.routers.values()) if (r.exit && rec.nftReplaced.includes(r.name)) r.exit.nat = 'iptables';
  return net;
}

/** Plans with the lab's own state and secret (never the user's) and pushes over SSH. */
export async function applyLab(rec: LabRecord, log: Log, mutate?: (s: State) => State): Promise<{ state: State }> {
  const net = await loadLabNet(rec);
  const statePath = path.join(rec.dir, 'state.json');
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

export async function labUp(topology: string, o: LabUpOptions): Promise<LabRecord> {
  const topo = path.resolve(topology);
  const existing = await readPointer(topo);
  if (existing && (await readRecord(labDir(existing)))) {
    throw new LabError(`a lab for ${topology} is already up (id ${existing}); run: onionctl lab down ${topology}`);
  }
  const { topology: t } = parseTopology(await fs.readFile(topo, 'utf8'), topology);
  const net = buildNet(t);
  const id = randomBytes(2).toString('hex');
  const layout = labLayout(net, id);
  const nft = await kernelHasNftIpv4();
  const nftReplaced = nft ? [] : [...net.routers.values()].filter((r) => r.exit?.nat === 'nftables').map((r) => r.name);
  const rec: LabRecord = {
    id,
    topology: topo,
    mode: o.mode,
    dir: labDir(id),
    status: 'creating',
    created: new Date().toISOString(),
    layout,
    iptablesRestore: ipTablesRestoreCommand(),
    nftReplaced,
    ...(o.seed ? { seed: o.seed } : {}),
  };
  await writeRecord(rec);
  await writePointer(topo, id);
  try {
    o.log(`lab ${id}: ${layout.nodes.length} nodes, ${layout.servers.length} servers (${o.mode === 'uml' ? 'inside User-Mode Linux' : 'this kernel'})`);
    for (const r of nftReplaced) o.log(`  note: this kernel has no nf_tables for IPv4; exit ${r} uses iptables in the lab`);
    await sh(['ip', '-batch', '-'], rootBatch(layout).join('\n') + '\n');
    // keep each capture to its own traffic: no flooding of unknown unicast to other ports
    const ports = [...layout.nodes.flatMap((n) => [n.underlay, ...(n.outside ? [n.outside] : [])]), ...layout.servers.map((s) => s.iface)];
    await sh(['bridge', '-batch', '-'], ports.map((p) => `link set dev ${p.hostVeth} flood off`).join('\n') + '\n');
    for (const n of layout.nodes) await sh(['ip', '-n', n.ns, '-batch', '-'], nodeBatch(n, true).join('\n') + '\n');
    for (const s of layout.servers) await sh(['ip', '-n', s.ns, '-batch', '-'], serverBatch(s).join('\n') + '\n');

    o.log('  namespaces and wires ready');
    const www = path.join(rec.dir, 'www');
    await makeWww(www);
    for (const s of layout.servers) {
      const child = execa('ip', ['netns', 'exec', s.ns, 'python3', '-m', 'http.server', '80', '--bind', formatIPv4(s.iface.addr), '--directory', www], {
        detached: true,
        stdio: 'ignore',
        reject: false,
      });
      child.unref();
      await fs.writeFile(path.join(rec.dir, `http-${s.circuit}.pid`), String(child.pid));
    }

    o.log('  servers started');
    const sshDir = path.join(rec.dir, 'ssh');
    await fs.mkdir(sshDir, { recursive: true, mode: 0o700 });
    const ctl = sshUtils.generateKeyPairSync('ed25519', { comment: `onionctl-lab-${id}-controller` });
    await fs.writeFile(path.join(sshDir, 'id_ed25519'), ctl.private, { mode: 0o600 });
    const clientPub = ctl.public + '\n';
    const known: string[] = [];
    for (const n of layout.nodes) known.push(await startSshd(rec, n, sshDir, clientPub));
    await writeFileAtomic(path.join(sshDir, 'known_hosts'), known.join('\n') + '\n', 0o600);
    o.log(`  sshd running in ${layout.nodes.length} namespaces; host keys in ${path.join(sshDir, 'known_hosts')}`);

    for (const n of layout.nodes) {
      await waitFor(`sshd of ${n.name}`, () => sshBanner(formatIPv4(n.mgmt.addr), 22), 60_000);
    }
    for (const s of layout.servers) {
      await waitFor(`HTTP server for ${s.circuit}`, async () => {
        const r = await execa('ip', ['netns', 'exec', s.ns, 'curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', `http://${formatIPv4(s.iface.addr)}/obj8.bin`], { reject: false });
        return String(r.stdout) === '200' ? true : undefined;
      });
    }
    o.log('  sshd and servers answer');
    await applyLab(rec, o.log);
    rec.status = 'up';
    await writeRecord(rec);
    o.log(`lab ${id} is up`);
    return rec;
  } catch (e) {
    o.log(`lab ${id}: bringing up failed, removing what was created`);
    rec.status = 'failed';
    await labDownRecord(rec, () => {}).catch(() => undefined);
    await removePointer(topo);
    throw e;
  }
}

async function killPidFile(file: string): Promise<void> {
  try {
    const pid = Number((await fs.readFile(file, 'utf8')).trim());
    if (pid > 1) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        /* gone */
      }
    }
  } catch {
    /* no file */
  }
}

/** Kills every process still running inside a namespace (sshd children, servers, ...). */
async function killNamespaceProcs(ns: string): Promise<void> {
  const r = await execa('ip', ['netns', 'pids', ns], { reject: false });
  for (const p of String(r.stdout).split(/\s+/).filter(Boolean)) {
    try {
      process.kill(Number(p), 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

export async function labDownRecord(rec: LabRecord, log: Log): Promise<void> {
  const l: LabLayout = rec.layout;
  const files = await fs.readdir(rec.dir).catch(() => [] as string[]);
  for (const f of files) if (f.endsWith('.pid')) await killPidFile(path.join(rec.dir, f));
  const sshFiles = await fs.readdir(path.join(rec.dir, 'ssh')).catch(() => [] as string[]);
  for (const f of sshFiles) if (f.endsWith('.pid')) await killPidFile(path.join(rec.dir, 'ssh', f));
  const all = [...l.nodes.map((n) => n.ns), ...l.servers.map((s) => s.ns)];
  for (const ns of all) await killNamespaceProcs(ns);
  for (const ns of all) await execa('ip', ['netns', 'del', ns], { reject: false });
  for (const b of Object.values(l.bridges)) await execa('ip', ['link', 'del', b], { reject: false });
  await fs.rm(rec.dir, { recursive: true, force: true });
  log(`lab ${rec.id} removed (${all.length} namespaces, ${Object.keys(l.bridges).length} bridges)`);
}

export async function findLab(topology: string): Promise<LabRecord> {
  const topo = path.resolve(topology);
  const id = await readPointer(topo);
  const rec = id ? await readRecord(labDir(id)) : undefined;
  if (!rec) throw new LabError(`no lab is up for ${topology}; run: onionctl lab up ${topology}`);
  return rec;
}

export async function labDown(topology: string, log: Log): Promise<void> {
  const topo = path.resolve(topology);
  const id = await readPointer(topo);
  const rec = id ? await readRecord(labDir(id)) : undefined;
  if (rec) await labDownRecord(rec, log);
  else log(`no lab is up for ${topology}`);
  await removePointer(topo);
}
