/**
 * `onionctl lab up|test|down|demo TOPOLOGY`. When this kernel cannot do ESP, the whole lab runs
 * inside a User-Mode Linux guest without being asked: this process boots (or re-attaches to) the
 * guest and runs the same command there with --here.
 */
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { kernelHasEsp } from '../lab/esp-probe.js';
import { formatReport, labTest } from '../lab/check.js';
import { LAB_ROOT, topologyKey } from '../lab/record.js';
import { findLab, labDown, labUp } from '../lab/run.js';
import { attachGuest, bootGuest, findGuestProcesses, type Guest } from '../lab/uml.js';
import { UserError } from '../util/files.js';

export type LabSub = 'up' | 'test' | 'down' | 'demo';

export interface LabOpts {
  here?: boolean;
  seed?: string;
  json?: boolean;
}

const t0 = Date.now();
const log = (s: string) => process.stdout.write(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${s}\n`);

function inGuest(): boolean {
  return process.env.ONIONCTL_LAB_GUEST === '1';
}

async function runHere(sub: LabSub, topology: string, o: LabOpts): Promise<number> {
  const mode = inGuest() ? 'uml' : 'direct';
  if (sub === 'up') {
    await labUp(topology, { log, mode, ...(o.seed ? { seed: o.seed } : {}) });
    return 0;
  }
  if (sub === 'down') {
    await labDown(topology, log);
    return 0;
  }
  if (sub === 'test') {
    const rec = await findLab(topology);
    const report = await labTest(rec, log);
    if (o.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
    else process.stdout.write(formatReport(report));
    return report.ok ? 0 : 1;
  }
  // demo: up, test, down, always down
  await labUp(topology, { log, mode, ...(o.seed ? { seed: o.seed } : {}) });
  try {
    const report = await labTest(await findLab(topology), log);
    process.stdout.write(formatReport(report));
    return report.ok ? 0 : 1;
  } finally {
    await labDown(topology, log);
  }
}

function umlDir(topology: string): string {
  return path.join(LAB_ROOT, `uml-${topologyKey(topology)}`);
}

function binPath(): string {
  return path.join(path.dirname(fileURLToPath(import.meta.url)), 'bin.js');
}

async function inGuestRun(g: Guest, sub: LabSub, topology: string, o: LabOpts): Promise<number> {
  const argv = [process.execPath, binPath(), 'lab', sub, path.resolve(topology), '--here'];
  if (o.seed) argv.push('--seed', o.seed);
  if (o.json) argv.push('--json');
  const r = await g.exec(argv, { env: { ONIONCTL_LAB_GUEST: '1' }, timeoutMs: 20 * 60_000 });
  process.stdout.write(r.stdout);
  process.stderr.write(r.stderr);
  return r.exitCode;
}

async function killLeftovers(dir: string): Promise<void> {
  for (const pid of findGuestProcesses(dir)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  await fs.rm(dir, { recursive: true, force: true });
}

export async function labCommand(sub: LabSub, topology: string, o: LabOpts): Promise<number> {
  if (process.getuid && process.getuid() !== 0) throw new UserError('the lab creates network namespaces and needs root');
  if (!existsSync(topology)) throw new UserError(`cannot read topology ${topology}: ENOENT`);
  if (o.here || inGuest()) return runHere(sub, topology, o);
  if (await kernelHasEsp()) return runHere(sub, topology, o);

  const dir = umlDir(topology);
  if (sub === 'up' || sub === 'demo') {
    if (existsSync(dir)) {
      const alive = findGuestProcesses(dir).length > 0;
      if (alive && sub === 'up') throw new UserError(`a lab for ${topology} is already up; run: onionctl lab down ${topology}`);
      await killLeftovers(dir);
    }
    log('this kernel has no ESP: running the lab inside User-Mode Linux');
    const g = await bootGuest({ dir });
    let code = 1;
    try {
      code = await inGuestRun(g, sub, topology, o);
      return code;
    } finally {
      if (sub === 'demo' || code !== 0) {
        await g.halt().catch(() => undefined);
        await killLeftovers(dir);
      }
    }
  }
  if (!existsSync(dir)) throw new UserError(`no lab is up for ${topology}; run: onionctl lab up ${topology}`);
  let g: Guest;
  try {
    g = await attachGuest(dir);
  } catch (e) {
    if (sub === 'down') {
      await killLeftovers(dir);
      log(`lab guest for ${topology} was not running; removed its leftovers`);
      return 0;
    }
    throw new UserError(`the lab guest for ${topology} is not answering (${(e as Error).message}); run: onionctl lab down ${topology}`);
  }
  if (sub === 'test') return inGuestRun(g, sub, topology, o);
  // down
  let code = 1;
  try {
    code = await inGuestRun(g, 'down', topology, o);
  } finally {
    await g.halt().catch(() => undefined);
    await killLeftovers(dir);
  }
  return code;
}
