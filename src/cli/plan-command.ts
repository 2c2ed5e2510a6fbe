import { constants, promises as fs } from 'node:fs';
import path from 'node:path';
import { rngFactory } from '../pathselect/rng.js';
import { keyStoreId } from '../keys/kdf.js';
import { computePlan, filesDigest, planJson, planText, renderAll } from '../plan/plan.js';
import type { RenderedFile } from '../render/render.js';
import { packageVersion, unsafeDirectory, writeFileAtomic } from '../util/files.js';
import { loadTemplates } from '../store/files.js';
import { UserError } from '../util/errors.js';
import { defaultPaths, fsReason, openKeys, readState, readTopology, saveStateMarked } from './context.js';
import { note } from './output.js';

const out = (s: string) => process.stdout.write(s);


export const VALIDATE_FORMAT = 'onionctl-validate/v1';

export async function validateCommand(topology: string, opts: { json?: boolean } = {}): Promise<number> {
  const { net } = await readTopology(topology);
  const exits = [...net.routers.values()].filter((r) => r.exit).length;
  if (opts.json) {
    // errors: the same document with ok false and the diagnostics (cli/main.ts errorJson)
    const summary = { routers: net.routers.size, exits, clients: net.clients.size, links: net.links.length, circuits: net.circuits.length, hops: net.hops, crypto: net.crypto };
    out(JSON.stringify({ format: VALIDATE_FORMAT, ok: true, file: topology, summary, diagnostics: [] }, null, 2) + '\n');
    return 0;
  }
  out(
    `${topology}: ok (${net.routers.size} routers of which ${exits} exits, ${net.clients.size} clients, ` +
      `${net.links.length} overlay links, ${net.circuits.length} circuits; k=${net.hops}, ${net.crypto})\n`,
  );
  return 0;
}

const MANIFEST = '.onionctl-files';

/**
 * Writes the files and removes the ones a previous run wrote that this run did not (a router
 * that left the topology), so that a diff of the directory shows the removal too.
 */
/** --out-dir must be (or become) a directory: checked before the state is saved or anything is written */
export async function prepareOutDir(dir: string, secret: boolean): Promise<void> {
  const st = await fs.lstat(dir).catch(() => undefined);
  if (st?.isSymbolicLink()) {
    const target = await fs.stat(dir).catch(() => undefined);
    if (!target) throw new UserError(`--out-dir ${dir} is a symbolic link to nothing; give a directory`);
    if (secret) throw new UserError(`--out-dir ${dir} is a symbolic link; onionctl writes key files only into the directory itself (give its real path)`);
    if (!target.isDirectory()) throw new UserError(`--out-dir ${dir} is not a directory`);
    return;
  }
  if (st && !st.isDirectory()) throw new UserError(`--out-dir ${dir} is a file, not a directory`);
  if (!st) {
    try {
      await fs.mkdir(dir, { recursive: true, mode: secret ? 0o700 : 0o755 });
    } catch (e) {
      throw new UserError(`cannot create --out-dir ${dir}: ${fsReason(e)}`);
    }
  }
}

export async function writeOutDir(dir: string, files: RenderedFile[], secret: boolean): Promise<void> {
  await prepareOutDir(dir, secret);
  const st = await fs.lstat(dir);
  if (st.isSymbolicLink()) throw new UserError(`--out-dir ${dir} is a symbolic link; onionctl writes only into the directory itself (give its real path)`);
  if (!st.isDirectory()) throw new UserError(`--out-dir ${dir} is not a directory`);
  if (secret) {
    // key files: a directory of ours that nobody else can write to, its mode set on the directory
    // opened without following links
    const me = process.geteuid?.();
    if (me !== undefined && st.uid !== me) throw new UserError(`--out-dir ${dir} belongs to uid ${st.uid}, not to you (uid ${me}); key files go only into a directory of yours`);
    const dh = await fs.open(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
    try {
      await dh.chmod(0o700);
    } finally {
      await dh.close();
    }
    const why = await unsafeDirectory(dir);
    if (why) throw new UserError(`--out-dir ${dir} is refused for key files: ${why}`);
  }
  const manifest = path.join(dir, MANIFEST);
  let previous: string[] = [];
  try {
    // never through a link: its lines name files to remove
    if (!(await fs.lstat(manifest)).isSymbolicLink()) previous = (await fs.readFile(manifest, 'utf8')).split('\n').filter((l) => l && !l.startsWith('#'));
  } catch {
    /* first run */
  }
  const names = new Set(files.map((f) => f.name));
  for (const f of files) await writeFileAtomic(path.join(dir, f.name), f.content, secret ? 0o600 : 0o644);
  for (const old of previous) {
    if (!names.has(old) && !old.includes('/')) await fs.rm(path.join(dir, old), { force: true });
  }
  await writeFileAtomic(manifest, `# files written by onionctl plan\n${[...names].join('\n')}\n`, secret ? 0o600 : 0o644);
}

export interface PlanOpts {
  state?: string;
  secret?: string;
  seed?: string;
  outDir?: string;
  withKeys?: boolean;
  json?: boolean;
  saveState: boolean;
  acceptRestoredState?: boolean;
}

export async function planCommand(topology: string, opts: PlanOpts): Promise<number> {
  if (opts.withKeys && !opts.outDir) throw new UserError('--with-keys writes key files and needs --out-dir');
  const paths = defaultPaths(topology, opts);
  const { net } = await readTopology(topology);
  // a state behind its high-water mark may not be saved nor give keys; a dry run only says so
  const writes = opts.saveState || opts.withKeys === true;
  const { state, fresh, resumed } = await readState(paths, writes ? (opts.acceptRestoredState ? 'resume' : 'refuse') : 'warn', note);
  const plan = computePlan({ net, state, rngFor: rngFactory(opts.seed), now: new Date().toISOString() });

  // Allocations are decisions: persist them before any key derived from them is written out,
  // so SPI counters only ever move forward.
  if (opts.withKeys && !opts.saveState && (fresh || plan.events.length > 0)) {
    throw new UserError('--with-keys with --no-save-state would write keys of SAs the state does not keep (a later plan could hand their SPIs out again); save the state, or leave out --with-keys');
  }
  // a bad --out-dir is found before the state is saved: nothing half done
  if (opts.outDir) await prepareOutDir(opts.outDir, opts.withKeys === true);
  if (opts.saveState && (fresh || resumed || plan.events.length > 0)) {
    await saveStateMarked(paths, plan.state);
  }
  const keys = await openKeys(net, plan.state, paths);
  if (keys.note) note(keys.note);
  const common = { keys: keys.source, templates: await loadTemplates(), version: packageVersion() };
  const redacted = renderAll(plan, { ...common, mode: 'redacted' });
  const digest = filesDigest(redacted);
  if (opts.outDir) {
    const files = opts.withKeys ? renderAll(plan, { ...common, mode: 'secret' }) : redacted;
    await writeOutDir(opts.outDir, files, opts.withKeys === true);
  }
  if (net.keySource === 'random') {
    const live = new Set<string>();
    for (const cfg of plan.configs.values()) for (const s of cfg.states) live.add(keyStoreId(s.key));
    await keys.persist(live);
  }

  if (opts.json) out(JSON.stringify(planJson(plan, digest), null, 2) + '\n');
  else {
    out(planText(plan, net.circuits));
    if (opts.outDir) out(`Wrote ${opts.withKeys ? 'key-bearing (0600) ' : 'redacted '}files to ${opts.outDir}.\n`);
    if (!opts.saveState && plan.events.length > 0) out('State not saved (--no-save-state).\n');
  }
  return 0;
}
