/**
 * The lab's inner steps. They run in the controller's network namespace on this machine (the
 * lab's "ctl" namespace, see cli/lab-command.ts), talk to the nodes over SSH exactly as to real
 * routers, and run everything else in the lab kernel through a LabHost: directly, or in a
 * User-Mode Linux guest when this kernel has no ESP.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import ssh2 from 'ssh2';
import { formatIPv4 } from '../net/addr.js';
import { buildNet, type Net } from '../topology/net.js';
import { parseBuildableTopology } from '../pathselect/buildable.js';
import { writeFileAtomic } from '../util/files.js';
import { inNs, script, type LabHost } from './host.js';
import { LabError } from './errors.js';
import { nodeBatch, nodeIfaces, nodeRootBatch, quietPorts, rootBatch, serverBatch, type LabNode, type VethMacs } from './layout.js';
import { ctlPaths, type LabRecord } from './record.js';
import { formatMapping, remapToLab } from './remap.js';
import { labTopology, labTopologyText } from './topology-file.js';

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

/**
 * The ruleset labHasNft loads: an IPv4 NAT chain, what an nftables exit needs. nft 1.0.6 wants a
 * newline or ";" after a chain's closing brace; the one-line form without it is a syntax error on
 * every kernel, which once made this probe answer "no" everywhere.
 */
export const NFT_PROBE_RULESET = 'table ip onionctl_probe {\n  chain post {\n    type nat hook postrouting priority 100;\n  }\n}\n';

/** Does the lab kernel have nf_tables for IPv4 with NAT? (Debian 12's UML kernel does not.) */
export async function labHasNft(host: LabHost): Promise<boolean> {
  const ns = `ocnft${randomBytes(3).toString('hex')}`;
  const r = await host.run(['sh', '-c', `ip netns add ${ns} && nsenter --net=/run/netns/${ns} nft -f - 2>/dev/null; rc=$?; ip netns del ${ns}; exit $rc`], {
    stdin: NFT_PROBE_RULESET,
  });
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
  const cfg = sshdConfigPath(rec, n);
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

function sshdConfigPath(rec: LabRecord, n: LabNode): string {
  return path.join(rec.dir, 'ssh', `${n.name}_sshd_config`);
}

/** -r: no re-exec per connection (each process start is slow in User-Mode Linux) */
function sshdCommand(n: LabNode, cfg: string): string {
  return `nsenter --net=/run/netns/${n.ns} /usr/sbin/sshd -r -f ${cfg}`;
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

/**
 * The network the lab runs: `<lab dir>/topology.yaml`, which already carries what the lab needs
 * (routeOptions.quickack, `nat: iptables` where the lab kernel has no nf_tables, ssh blocks), so
 * that `onionctl apply` on that file plans exactly what the lab plans.
 */
export async function loadLabNet(rec: LabRecord): Promise<Net> {
  const file = rec.labTopology ?? rec.topology;
  const { topology } = parseBuildableTopology(await fs.readFile(file, 'utf8'), file);
  return buildNet(topology);
}

/**
 * Writes `<lab dir>/topology.yaml` (0600): the user's topology (moved into lab-safe ranges when
 * needed, see remap.ts) with an ssh block per node pinning its host key, and records the paths
 * `onionctl apply` needs in the lab record (rec.ctl).
 */
export async function writeLabTopology(rec: LabRecord, hostKeys: ReadonlyMap<string, string>): Promise<void> {
  const { topology: parsed } = parseBuildableTopology(await fs.readFile(rec.topology, 'utf8'), rec.topology);
  const { topology: t, mapping } = remapToLab(parsed);
  const paths = ctlPaths(rec.dir);
  const mgmt = new Map(rec.layout.nodes.map((n) => [n.name, formatIPv4(n.mgmt.addr)]));
  const header = [
    `The topology lab ${rec.id} runs, made by onionctl lab up from ${rec.topology}.`,
    ...(mapping.length > 0 ? ['Its addresses were moved into lab-safe ranges:', ...formatMapping(mapping).map((l) => `  ${l}`)] : []),
    'Every node is reached over SSH on its management address with its pinned host key, like a real router:',
    `  ip netns exec ${rec.ctlNs} onionctl apply --auto-approve ${paths.topology} --state ${paths.state} --secret ${paths.secret} --identity ${paths.identity}`,
    `  (or: onionctl lab ctl ${rec.topology} apply|plan|destroy|status ...)`,
  ];
  await writeFileAtomic(paths.topology, labTopologyText(labTopology(t, { mgmt, hostKeys, nftReplaced: rec.nftReplaced }), header), 0o600);
  rec.labTopology = paths.topology;
  rec.ctl = paths;
}

export function labStatePath(rec: LabRecord): string {
  return ctlPaths(rec.dir).state;
}

/** The CLI this module belongs to. */
export function cliBin(): string {
  return path.join(path.dirname(fileURLToPath(import.meta.url)), '../cli/bin.js');
}

export const CTL_COMMANDS = ['apply', 'plan', 'destroy', 'status', 'rekey', 'rotate'] as const;

/**
 * argv for `onionctl SUB` on the lab's topology file with the lab's state, secret and SSH key
 * (options already in `args` win), to run in the lab's controller namespace.
 */
export function ctlArgv(rec: LabRecord, sub: string, args: readonly string[]): string[] {
  const p = rec.ctl ?? ctlPaths(rec.dir);
  const has = (opt: string) => args.some((a) => a === opt || a.startsWith(`${opt}=`));
  const argv = [process.execPath, cliBin(), sub, p.topology];
  if (!has('--state')) argv.push('--state', p.state);
  if (!has('--secret')) argv.push('--secret', p.secret);
  if (!has('--identity')) argv.push('--identity', p.identity);
  if (rec.seed && sub !== 'destroy' && !has('--seed')) argv.push('--seed', rec.seed);
  // the lab is the user's own testbed: apply and destroy there do not ask
  if ((sub === 'apply' || sub === 'destroy') && !has('--auto-approve')) argv.push('--auto-approve');
  // the lab's kernel may be emulated (User-Mode Linux), and slow on a busy machine
  if (!has('--connect-timeout')) argv.push('--connect-timeout', '60');
  if (!has('--command-timeout')) argv.push('--command-timeout', '600');
  return [...argv, ...args];
}

/**
 * Configures the lab's nodes exactly as an admin configures real routers: `onionctl apply` on
 * the lab's topology (run from the controller namespace, where this inner step already runs).
 * Its per-node summary lines go to the log.
 */
export async function applyLab(rec: LabRecord, log: Log, what = 'configuring the nodes'): Promise<void> {
  const [cmd, ...args] = ctlArgv(rec, 'apply', []);
  const r = await execa(cmd!, args, { reject: false, all: true, timeout: 900_000 });
  const lines = String(r.all ?? '').split('\n');
  for (const l of lines) if (/^(\S.*: (error|no changes|\d+ to add)|Plan:|Apply complete|No changes|Interrupted|\d+ nodes? failed)/.test(l)) log(`  apply: ${l}`);
  if (r.exitCode !== 0) {
    const errs = lines.filter((l) => /error/.test(l)).slice(0, 6);
    throw new LabError(`${what} with onionctl apply failed (exit ${r.exitCode ?? r.signal}): ${errs.join('; ') || lines.slice(-4).join('; ')}`);
  }
}

/** Creates namespaces, wires, sshd per node and one HTTP server per circuit, then applies (unless told not to). */
export async function labUpInner(rec: LabRecord, host: LabHost, log: Log, o: { apply?: boolean } = {}): Promise<void> {
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
  const hostKeys = new Map<string, string>();
  const start: string[] = ['mkdir -p /run/sshd'];
  for (const n of l.nodes) {
    const { cfg, known: k } = await prepareSshd(rec, n, sshDir, ctl.public + '\n');
    known.push(k);
    hostKeys.set(n.name, k.split(' ').slice(1).join(' '));
    start.push(sshdCommand(n, cfg));
  }
  await writeFileAtomic(path.join(sshDir, 'known_hosts'), known.join('\n') + '\n', 0o600);
  await writeLabTopology(rec, hostKeys);
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
  if (o.apply === false) {
    log('  nodes left unconfigured (--no-apply)');
    return;
  }
  await applyLab(rec, log);
}

/**
 * `lab reboot`: what a router looks like after a reboot. Stops the node's sshd and every process
 * in its namespace, deletes the namespace (with it every xfrm state and policy, route, firewall
 * rule and sysctl), and builds it again from the lab's layout alone: interfaces, addresses and
 * the lab's own on-link routes, default sysctls (ip_forward 0), no onionctl configuration; then
 * starts its sshd again with the same host key.
 */
export async function rebootNode(rec: LabRecord, host: LabHost, name: string, log: Log): Promise<void> {
  const n = rec.layout.nodes.find((x) => x.name === name);
  if (!n) throw new LabError(`no node ${name} in lab ${rec.id} (nodes: ${rec.layout.nodes.map((x) => x.name).join(', ')})`);
  const setup = path.join(rec.dir, 'setup');
  await fs.mkdir(setup, { recursive: true, mode: 0o700 });
  // a rebooted router keeps its NICs' MAC addresses (its neighbours' ARP entries stay valid)
  const ifs = nodeIfaces(n);
  const macText = await script(host, `reading ${n.name}'s MAC addresses`, [
    ...ifs.map((i) => `echo "${i.hostVeth} $(cat /sys/class/net/${i.hostVeth}/address 2>/dev/null) $(ip -n ${n.ns} -o link show dev ${i.name} 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "link/ether") print $(i + 1) }')"`),
  ]).catch((e: Error) => {
    throw new LabError(e.message);
  });
  const macs = new Map<string, VethMacs>();
  for (const line of macText.trim().split('\n')) {
    const [veth, h, m] = line.trim().split(/\s+/);
    if (veth && h && m) macs.set(veth, { host: h, ns: m });
  }
  const rootFile = path.join(setup, `reboot-${n.name}-root.batch`);
  const nodeFile = path.join(setup, `reboot-${n.name}.batch`);
  await fs.writeFile(rootFile, nodeRootBatch(n, macs).join('\n') + '\n', { mode: 0o600 });
  await fs.writeFile(nodeFile, nodeBatch(n, true).join('\n') + '\n', { mode: 0o600 });
  const pidFile = path.join(rec.dir, `sshd-${n.name}.pid`);
  const veths = ifs.map((i) => i.hostVeth);
  await script(host, `rebooting ${n.name}`, [
    `if [ -f ${pidFile} ]; then kill -TERM "$(cat ${pidFile})" 2>/dev/null || true; rm -f ${pidFile}; fi`,
    `for p in $(ip netns pids ${n.ns} 2>/dev/null); do kill -KILL $p 2>/dev/null; done; true`,
    // (a namespace already gone is simply built again)
    `[ ! -e /run/netns/${n.ns} ] || ip netns del ${n.ns}`,
    // the namespace goes away asynchronously, and its veth pairs with it
    `i=0; while ${veths.map((v) => `[ -e /sys/class/net/${v} ]`).join(' || ')}; do i=$((i+1)); [ $i -lt 600 ] || { echo "the old wires of ${n.name} did not go away" >&2; exit 1; }; sleep 0.1; done`,
    `ip -batch ${rootFile}`,
    ...quietPorts(n).map((p) => `bridge link set dev ${p} flood off`),
    `ip -n ${n.ns} -batch ${nodeFile}`,
    'mkdir -p /run/sshd',
    sshdCommand(n, sshdConfigPath(rec, n)),
  ]).catch((e: Error) => {
    throw new LabError(e.message);
  });
  await waitFor(`sshd of ${n.name}`, () => sshBanner(formatIPv4(n.mgmt.addr), 22), 120_000);
  log(`  ${n.name} rebooted: namespace ${n.ns} rebuilt without onionctl's configuration; sshd answers with the same host key`);
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
