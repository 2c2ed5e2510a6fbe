/**
 * `onionctl lab up|test|down|demo TOPOLOGY`.
 *
 * The outer command (this process, on this machine) creates the lab's controller namespace
 * `oc-<id>-ctl`, decides where the lab kernel is, and runs the inner steps inside that
 * namespace, so that the controller's SSH connections and every lab wire stay inside
 * namespaces the lab created:
 *   - this kernel has ESP: the inner steps build the lab in this kernel; the bridges live in
 *     the ctl namespace;
 *   - it has none (the usual case here): a User-Mode Linux guest boots inside the ctl
 *     namespace with one network device (a tap there); the bridges and nodes live in the
 *     guest, and the controller reaches their sshd through the tap.
 * Either way the controller runs on this machine's fast kernel; only the routers' kernel
 * is emulated.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { formatIPv4 } from '../net/addr.js';
import { kernelHasEsp } from '../lab/esp-probe.js';
import { formatReport, labTest } from '../lab/check.js';
import { DirectHost, GuestHost, type LabHost } from '../lab/host.js';
import { labLayout } from '../lab/layout.js';
import { formatMapping, remapToLab } from '../lab/remap.js';
import { ctlPaths, labDir, readPointer, readRecord, removePointer, writePointer, writeRecord, type LabRecord } from '../lab/record.js';
import { CTL_COMMANDS, ctlArgv, labDownInner, labHasNft, labUpInner, rebootNode } from '../lab/run.js';
import { attachGuest, bootGuest, findGuestProcesses } from '../lab/uml.js';
import { buildNet } from '../topology/net.js';
import { parseBuildableTopology } from '../pathselect/buildable.js';
import { UserError } from '../util/errors.js';

export type LabSub = 'up' | 'test' | 'down' | 'demo' | 'reboot';

export interface LabOpts {
  seed?: string;
  json?: boolean;
  /** internal: run the inner step (inside the ctl namespace) */
  inner?: boolean;
  /** reboot: the node */
  node?: string;
  /** up: false (--no-apply) leaves the nodes unconfigured */
  apply?: boolean;
  /** up/demo: the UML kernel to boot (a path, or "6.12" for the one scripts/uml-kernel.sh built) */
  kernel?: string;
  /** up/demo: load xfrm_interface in the lab kernel, as route-based VPNs do on real routers */
  xfrmInterface?: boolean;
  /** up/demo: the UML guest's memory in MiB (default 512) */
  guestMemory?: number;
}

/** Where scripts/uml-kernel.sh leaves the kernel it built (its cache, see that script). */
export const KERNEL_CACHE = process.env.ONIONCTL_KERNEL_CACHE ?? '/var/cache/onionctl/uml';

/** `--kernel 6.12` names the kernel scripts/uml-kernel.sh built; anything else is a path. */
export function resolveKernelOption(k: string | undefined): string | undefined {
  if (k === undefined) return undefined;
  if (k === '6.12') {
    const p = path.join(KERNEL_CACHE, '6.12', 'linux.uml');
    if (!existsSync(p)) throw new UserError(`no 6.12 UML kernel in ${KERNEL_CACHE}; build it once with scripts/uml-kernel.sh (about 20 minutes on 2 cores)`);
    return p;
  }
  if (!existsSync(k)) throw new UserError(`--kernel ${k}: no such file (a UML kernel binary, or "6.12")`);
  return path.resolve(k);
}

/** Loads xfrm_interface by creating an xfrm device in the lab's switch namespace; true when loaded. */
async function loadXfrmInterface(host: LabHost, rec: LabRecord): Promise<boolean> {
  const dev = 'ocxfrmi0';
  // the module is global to the kernel: one device anywhere makes its ESP handler see every packet
  const add = rec.mode === 'uml' ? ['ip', 'link', 'add', dev, 'type', 'xfrm', 'dev', 'lo', 'if_id', '7'] : ['ip', '-n', rec.ctlNs, 'link', 'add', dev, 'type', 'xfrm', 'dev', 'lo', 'if_id', '7'];
  await host.run(add);
  const mods = await host.run(['cat', '/proc/modules']);
  return /^xfrm_interface /m.test(mods.stdout);
}

const t0 = Number(process.env.ONIONCTL_LAB_T0) || Date.now();
/** progress goes to stderr; stdout carries the report (text or --json) */
const log = (s: string) => process.stderr.write(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${s}\n`);

function binPath(): string {
  return path.join(path.dirname(fileURLToPath(import.meta.url)), 'bin.js');
}

async function sh(argv: string[]): Promise<void> {
  const r = await execa(argv[0]!, argv.slice(1), { reject: false });
  if (r.exitCode !== 0) throw new UserError(`${argv.join(' ')} failed: ${String(r.stderr).trim()}`);
}

async function findRecord(topology: string): Promise<LabRecord | undefined> {
  const id = await readPointer(path.resolve(topology));
  return id ? readRecord(labDir(id)) : undefined;
}

let currentInner: ReturnType<typeof execa> | undefined;
let interrupted: string | undefined;

/** Runs `onionctl lab SUB --inner` inside the lab's controller namespace. */
async function runInner(rec: LabRecord, sub: LabSub, o: LabOpts): Promise<number> {
  const argv = ['netns', 'exec', rec.ctlNs, process.execPath, binPath(), 'lab', sub, rec.topology, ...(o.node !== undefined ? [o.node] : []), '--inner'];
  if (o.json) argv.push('--json');
  if (o.apply === false) argv.push('--no-apply');
  currentInner = execa('ip', argv, { stdio: 'inherit', reject: false, env: { ONIONCTL_LAB_T0: String(t0) } });
  const r = await currentInner;
  currentInner = undefined;
  return r.exitCode ?? 1;
}

/**
 * The cleanup trap: SIGINT/SIGTERM while a lab is being built (or tested by `demo`) stop the
 * inner step and let the caller tear everything down instead of dying half-way.
 */
function trapSignals(): () => void {
  const on = (sig: NodeJS.Signals) => {
    if (interrupted) return;
    interrupted = sig;
    log(`${sig}: stopping and removing what the lab created`);
    currentInner?.kill('SIGTERM');
  };
  process.on('SIGINT', on);
  process.on('SIGTERM', on);
  return () => {
    process.off('SIGINT', on);
    process.off('SIGTERM', on);
  };
}

function checkInterrupted(): void {
  if (interrupted) throw new UserError(`interrupted by ${interrupted}`);
}

async function innerHost(rec: LabRecord): Promise<LabHost> {
  if (rec.mode === 'direct') return new DirectHost();
  return new GuestHost(await attachGuest(rec.guestDir!));
}

async function inner(sub: LabSub, topology: string, o: LabOpts): Promise<number> {
  const rec = await findRecord(topology);
  if (!rec) throw new UserError(`no lab is up for ${topology}`);
  const host = await innerHost(rec);
  if (sub === 'up') {
    await labUpInner(rec, host, log, { apply: o.apply !== false });
    rec.status = 'up';
    await writeRecord(rec);
    return 0;
  }
  if (sub === 'down') {
    await labDownInner(rec, host);
    return 0;
  }
  if (sub === 'reboot') {
    await rebootNode(rec, host, o.node!, log);
    return 0;
  }
  const report = await labTest(rec, host, log);
  if (o.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  else process.stdout.write(formatReport(report));
  return report.ok ? 0 : 1;
}

/** Removes everything: inner namespaces, the guest, the ctl namespace, files. Never throws. */
async function teardown(rec: LabRecord, withInner: boolean): Promise<void> {
  // with User-Mode Linux, powering the guest off removes every namespace and process in it
  if (withInner && rec.mode === 'direct') {
    const guestAlive = rec.mode === 'direct' || (rec.guestDir !== undefined && findGuestProcesses(rec.guestDir).length > 0);
    if (guestAlive) await runInner(rec, 'down', {}).catch(() => 1);
  }
  if (rec.mode === 'uml' && rec.guestDir) {
    try {
      const g = await attachGuest(rec.guestDir, { timeoutMs: 5_000 });
      await g.halt();
    } catch {
      /* not running */
    }
    // wait for the guest's processes to go (halting takes a moment), then kill stragglers
    for (let i = 0; i < 50 && findGuestProcesses(rec.guestDir).length > 0; i++) await new Promise((r) => setTimeout(r, 200));
    for (const pid of findGuestProcesses(rec.guestDir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
  await execa('ip', ['netns', 'del', rec.ctlNs], { reject: false });
  await fs.rm(rec.dir, { recursive: true, force: true });
  await removePointer(rec.topology);
}

async function up(topology: string, opts: LabOpts): Promise<LabRecord> {
  // ONIONCTL_LAB_XFRM_INTERFACE=1 is --xfrm-interface for every lab up (the lab tests' kernel matrix)
  const o: LabOpts = { ...opts, xfrmInterface: opts.xfrmInterface ?? process.env.ONIONCTL_LAB_XFRM_INTERFACE === '1' };
  const topo = path.resolve(topology);
  const existing = await findRecord(topo);
  if (existing) throw new UserError(`a lab for ${topology} is already up (id ${existing.id}); run: onionctl lab down ${topology}`);
  const { topology: parsed } = parseBuildableTopology(await fs.readFile(topo, 'utf8'), topology);
  // real addresses never go on a lab wire: the lab builds a copy moved into lab-safe ranges
  const { topology: t, mapping } = remapToLab(parsed);
  const net = buildNet(t);
  const id = randomBytes(2).toString('hex');
  const layout = labLayout(net, id);
  const esp = await kernelHasEsp();
  // the kernel to boot is checked before anything is created
  if (esp && o.kernel) throw new UserError('--kernel picks a User-Mode Linux kernel, but this kernel has ESP and the lab runs on it directly');
  const binary = esp ? undefined : resolveKernelOption(o.kernel);
  const dir = labDir(id);
  const rec: LabRecord = {
    id,
    topology: topo,
    // written by the inner step once the nodes' host keys exist (run.ts writeLabTopology)
    labTopology: ctlPaths(dir).topology,
    mode: esp ? 'direct' : 'uml',
    dir,
    ctlNs: `oc-${id}-ctl`,
    ...(esp ? {} : { guestDir: path.join(dir, 'guest-uml'), tap: `oc${id}t` }),
    status: 'creating',
    created: new Date().toISOString(),
    layout,
    iptablesRestore: 'iptables-restore',
    nftReplaced: [],
    ...(o.seed ? { seed: o.seed } : {}),
  };
  await writeRecord(rec);
  if (mapping.length > 0) {
    log(`${topology} has addresses that are not lab-safe; the lab uses a copy with them moved (${rec.labTopology})`);
    for (const l of formatMapping(mapping)) log(`lab addresses: ${l}`);
  }
  await writePointer(topo, id);
  const untrap = trapSignals();
  try {
    await sh(['ip', 'netns', 'add', rec.ctlNs]);
    await sh(['ip', '-n', rec.ctlNs, 'link', 'set', 'lo', 'up']);
    let host: LabHost;
    if (rec.mode === 'uml') {
      log(`this kernel has no ESP: the lab's routers run in a User-Mode Linux guest (lab ${id})`);
      await sh(['ip', '-n', rec.ctlNs, 'tuntap', 'add', 'dev', rec.tap!, 'mode', 'tap']);
      await sh(['ip', '-n', rec.ctlNs, 'address', 'add', `${formatIPv4(layout.controllerMgmt)}/${layout.mgmtNet.len}`, 'dev', rec.tap!]);
      await sh(['ip', '-n', rec.ctlNs, 'link', 'set', rec.tap!, 'up']);
      const g = await bootGuest({
        dir: rec.guestDir!,
        netns: rec.ctlNs,
        extraArgs: [`eth0=tuntap,${rec.tap}`],
        ...(binary ? { umlBinary: binary } : {}),
        ...(o.xfrmInterface ? { extraModules: ['xfrm_interface'] } : {}),
        ...(o.guestMemory !== undefined ? { memMB: o.guestMemory } : {}),
      });
      checkInterrupted();
      log(`guest booted (kernel ${g.info.kernel}, ${g.info.modules.length} modules)`);
      const bin = binary ?? process.env.ONIONCTL_UML;
      rec.kernel = { ...(bin ? { binary: bin } : {}), release: g.info.kernel, xfrmInterface: false, nft: false };
      host = new GuestHost(g);
    } else {
      log(`this kernel has ESP: the lab runs in namespaces here (lab ${id})`);
      host = new DirectHost();
      rec.kernel = { release: (await execa('uname', ['-r'])).stdout.trim(), xfrmInterface: false, nft: false };
    }
    if (o.xfrmInterface) {
      if (!(await loadXfrmInterface(host, rec))) throw new UserError(`--xfrm-interface: the lab kernel ${rec.kernel!.release} has no xfrm_interface module (CONFIG_XFRM_INTERFACE); boot one that has, e.g. --kernel 6.12`);
      rec.kernel!.xfrmInterface = true;
      log('xfrm_interface is loaded: every ESP packet that already carries a secpath is checked against dir-in policies');
    }
    const nft = await labHasNft(host);
    rec.kernel!.nft = nft;
    if (!nft) {
      rec.iptablesRestore = 'iptables-legacy-restore';
      rec.nftReplaced = [...net.routers.values()].filter((r) => r.nat === 'nftables').map((r) => r.name);
      for (const r of rec.nftReplaced) log(`note: the lab kernel has no nf_tables for IPv4; router ${r} uses iptables (legacy) in the lab`);
    }
    await writeRecord(rec);
    log(`${layout.nodes.length} nodes, ${layout.servers.length} servers; building`);
    // fault injection for the test that a failed `up` leaves nothing behind
    if (process.env.ONIONCTL_LAB_FAIL === 'after-boot') throw new UserError('failing on purpose (ONIONCTL_LAB_FAIL=after-boot)');
    checkInterrupted();
    const code = await runInner(rec, 'up', o);
    checkInterrupted();
    if (code !== 0) throw new UserError('bringing the lab up failed (see above); everything it created was removed');
    rec.status = 'up';
    log(`lab ${id} is up: onionctl lab test ${topology}; onionctl lab down ${topology}`);
    const p = ctlPaths(rec.dir);
    log(`its nodes take onionctl apply|plan --live|destroy|status like real routers (topology with pinned host keys: ${p.topology}):`);
    log(`  onionctl lab ctl ${topology} apply      (runs, in namespace ${rec.ctlNs}:`);
    log(`  onionctl apply ${p.topology} --state ${p.state} --secret ${p.secret} --identity ${p.identity})`);
    return rec;
  } catch (e) {
    log('removing what was created');
    await teardown(rec, true);
    throw e;
  } finally {
    untrap();
  }
}

export async function labCommand(sub: LabSub, topology: string, o: LabOpts): Promise<number> {
  if (process.getuid && process.getuid() !== 0) throw new UserError('the lab creates network namespaces and needs root');
  if (!existsSync(topology)) throw new UserError(`cannot read topology ${topology}: ENOENT`);
  if (o.inner) return inner(sub, topology, o);

  if (sub === 'up') {
    await up(topology, o);
    return 0;
  }
  if (sub === 'demo') {
    const rec = await up(topology, o);
    const untrap = trapSignals();
    try {
      const code = await runInner(rec, 'test', o);
      checkInterrupted();
      return code;
    } finally {
      untrap();
      await teardown(rec, true);
      log(`lab ${rec.id} removed`);
    }
  }
  const rec = await findRecord(topology);
  if (!rec) {
    if (sub === 'down') {
      log(`no lab is up for ${topology}`);
      return 0;
    }
    throw new UserError(`no lab is up for ${topology}; run: onionctl lab up ${topology}`);
  }
  if (sub === 'test') return runInner(rec, 'test', o);
  if (sub === 'reboot') {
    if (!rec.layout.nodes.some((n) => n.name === o.node)) {
      throw new UserError(`no router or client ${o.node} in the lab of ${topology} (nodes: ${rec.layout.nodes.map((n) => n.name).join(', ')})`);
    }
    return runInner(rec, 'reboot', o);
  }
  await teardown(rec, true);
  log(`lab ${rec.id} removed`);
  return 0;
}

/** The lab of a topology, up and running, for exec and ctl. */
async function upRecord(topology: string): Promise<LabRecord> {
  if (process.getuid && process.getuid() !== 0) throw new UserError('the lab\'s namespaces need root');
  if (!existsSync(topology)) throw new UserError(`cannot read topology ${topology}: ENOENT`);
  const rec = await findRecord(topology);
  if (!rec) throw new UserError(`no lab is up for ${topology}; run: onionctl lab up ${topology}`);
  if (rec.status !== 'up' || !rec.ctl) throw new UserError(`the lab of ${topology} (${rec.id}) is ${rec.status === 'up' ? 'from an older onionctl; run lab down and lab up again' : rec.status}`);
  return rec;
}

/**
 * Runs argv in the lab's controller namespace on this machine, where every node's sshd is
 * reachable on its management address, with ONIONCTL_LAB_DIR (and the paths of lab.json's `ctl`)
 * in the environment. A first word `onionctl` runs this very onionctl. SIGINT and SIGTERM are
 * passed on to the command; its exit code is returned (128+N when signal N ended it).
 */
async function runInCtl(rec: LabRecord, argv: readonly string[]): Promise<number> {
  const cmd = argv[0] === 'onionctl' ? [process.execPath, binPath(), ...argv.slice(1)] : [...argv];
  const p = rec.ctl!;
  const child = execa('ip', ['netns', 'exec', rec.ctlNs, ...cmd], {
    stdio: 'inherit',
    reject: false,
    env: {
      ONIONCTL_LAB_DIR: rec.dir,
      ONIONCTL_LAB_TOPOLOGY: p.topology,
      ONIONCTL_LAB_STATE: p.state,
      ONIONCTL_LAB_SECRET: p.secret,
      ONIONCTL_LAB_IDENTITY: p.identity,
      ONIONCTL_LAB_KNOWN_HOSTS: p.knownHosts,
    },
  });
  const pass = (sig: NodeJS.Signals) => child.kill(sig);
  process.on('SIGINT', pass);
  process.on('SIGTERM', pass);
  try {
    const r = await child;
    if (r.failed && r.exitCode === undefined && !r.signal) throw new UserError(`cannot run ${argv.join(' ')} in ${rec.ctlNs}: ${r.shortMessage}`);
    if (r.exitCode !== undefined) return r.exitCode;
    const signals: Record<string, number> = { SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };
    return 128 + (signals[r.signal ?? ''] ?? 1);
  } finally {
    process.off('SIGINT', pass);
    process.off('SIGTERM', pass);
  }
}

/** `onionctl lab exec TOPOLOGY -- CMD ARGS...` */
export async function labExec(topology: string, argv: string[]): Promise<number> {
  if (argv.length === 0) throw new UserError('lab exec needs a command: onionctl lab exec TOPOLOGY -- CMD ARGS...');
  return runInCtl(await upRecord(topology), argv);
}

/**
 * `onionctl lab ctl TOPOLOGY apply|plan|destroy|status [ARGS...]`: that command on the lab's
 * topology file (pinned host keys, management addresses), with the lab's state, secret and
 * controller key, from the controller namespace: exactly what an admin runs against real routers.
 */
export async function labCtl(topology: string, sub: string, args: string[]): Promise<number> {
  if (!(CTL_COMMANDS as readonly string[]).includes(sub)) throw new UserError(`lab ctl runs ${CTL_COMMANDS.join(', ')}, not "${sub}"`);
  const rec = await upRecord(topology);
  return runInCtl(rec, ctlArgv(rec, sub, args));
}
