/**
 * What every command needs: the topology loaded and validated, the state, the key source.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { KdfKeySource, StoredKeySource, type KeySource } from '../keys/kdf.js';
import { parseBuildableTopology } from '../pathselect/buildable.js';
import { buildNet, type Net } from '../topology/net.js';
import type { Topology } from '../topology/schema.js';
import type { State } from '../state/model.js';
import { writeFileAtomic } from '../util/files.js';
import { loadHighWater, loadKeyStore, loadOrCreateSecret, loadState, saveHighWater, saveState } from '../store/files.js';
import { UserError } from '../util/errors.js';
import { MAX_SAVED_PLAN_BYTES, openPlan, planMacKey, SavedPlanError, type SavedPlan } from '../plan/planfile.js';
import { behindMark, raiseMark, resumeBehind, type HighWater } from '../state/high-water.js';

/** a topology of 10,000 routers is a few MiB */
export const MAX_TOPOLOGY_BYTES = 64 * 1024 * 1024;

/** what an operating-system error means, in words (with its code for a search) */
export function fsReason(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  const words: Record<string, string> = {
    ENOENT: 'no such file',
    EISDIR: 'it is a directory',
    ENOTDIR: 'a part of the path is not a directory',
    EACCES: 'permission denied',
    EPERM: 'operation not permitted',
    ELOOP: 'too many symbolic links',
    EEXIST: 'it exists already',
    ENAMETOOLONG: 'the name is too long',
  };
  return code && words[code] ? `${words[code]} (${code})` : code ?? (e as Error).message;
}

export interface Paths {
  topology: string;
  state: string;
  secret: string;
  keyStore: string;
  /** the high-water mark of the states saved here (state/high-water.ts), beside the secret */
  highWater: string;
}

export function defaultPaths(topology: string, o: { state?: string; secret?: string }): Paths {
  const dir = path.dirname(topology);
  const base = path.basename(topology).replace(/\.ya?ml$/i, '');
  const state = o.state ?? path.join(dir, `${base}.state.json`);
  const secret = o.secret ?? path.join(dir, `${base}.secret`);
  return {
    topology,
    state,
    secret,
    keyStore: state.replace(/\.json$/, '') + '.keys.json',
    highWater: `${secret}.high-water.json`,
  };
}

/** A topology file's text, bounded and checked to be text (no YAML parsing yet). */
export async function readTopologyText(file: string): Promise<string> {
  let text: string;
  try {
    const st = await fs.stat(file);
    if (st.isDirectory()) throw new UserError(`cannot read topology ${file}: it is a directory (give the YAML file)`);
    if (st.size > MAX_TOPOLOGY_BYTES) throw new UserError(`cannot read topology ${file}: it is ${Math.round(st.size / 1024 / 1024)} MiB, more than any topology (limit ${MAX_TOPOLOGY_BYTES / 1024 / 1024} MiB)`);
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw new UserError(`cannot read topology ${file}: ${fsReason(e)}`, { cause: e });
  }
  if (text.includes('\0')) throw new UserError(`topology ${file} is not a text file (it holds NUL bytes)`);
  return text;
}

export async function readTopology(file: string): Promise<{ topology: Topology; net: Net }> {
  const text = await readTopologyText(file);
  const { topology } = parseBuildableTopology(text, file);
  return { topology, net: buildNet(topology) };
}

/**
 * What to do with a state that is behind its high-water mark: `refuse` (every command that saves
 * the state or pushes), `resume` (the operator passed --accept-restored-state), `warn` (commands
 * that only read).
 */
export type BehindMode = 'refuse' | 'resume' | 'warn';

export async function readState(p: Paths, behind: BehindMode = 'warn', note: (s: string) => void = () => {}): Promise<{ state: State; fresh: boolean; resumed?: boolean }> {
  const loaded = await loadState(p.state);
  if (loaded.fresh) return loaded;
  const hw = await loadHighWater(p.highWater);
  const why = behindMark(hw, loaded.state);
  if (!why) return loaded;
  if (behind === 'resume') {
    note(`the state ${p.state} is behind its high-water mark (${why}); going on from it as asked: SPIs continue past every one handed out before, and every SA a node lacks gets a new key`);
    return { state: resumeBehind(hw, loaded.state), fresh: false, resumed: true };
  }
  const text =
    `the state ${p.state} is behind what was saved before (${why}; the mark is in ${p.highWater}): it was restored from a backup, ` +
    `or copied from another controller. Installing from it could give routers keys they had before`;
  if (behind === 'warn') {
    note(`${text}; shown as it is`);
    return loaded;
  }
  throw new UserError(`${text}; nothing was done. If this is the state to go on from, run again with --accept-restored-state: SPIs then continue past every one handed out before, and every SA that a router lacks gets a new key`);
}

/** Saves the state, then raises the high-water mark to it (in that order: a crash between leaves the mark behind, never ahead). */
export async function saveStateMarked(p: Paths, state: State): Promise<void> {
  await saveState(p.state, state);
  const hw = await loadHighWater(p.highWater);
  const raised = raiseMark(hw, state, new Date().toISOString());
  if (raised !== hw) await saveHighWater(p.highWater, raised);
}

/** The key that authenticates saved plans (plan/saved.ts), from the key secret (created 0600 if missing). */
export async function planKey(p: Paths): Promise<Buffer> {
  return planMacKey((await loadOrCreateSecret(p.secret)).secret);
}

/** The mark, for checks on a saved plan's state. */
export async function highWater(p: Paths): Promise<HighWater> {
  return loadHighWater(p.highWater);
}

export interface LoadedKeys {
  source: KeySource;
  /** persist newly drawn keys (random mode); no-op for the KDF */
  persist(liveIds?: Set<string>): Promise<void>;
  note?: string;
}

export async function openKeys(net: Net, state: State, p: Paths): Promise<LoadedKeys> {
  if (net.keySource === 'random') {
    const store = new StoredKeySource(await loadKeyStore(p.keyStore), (n) => randomBytes(n));
    return {
      source: store,
      async persist(liveIds) {
        if (liveIds) store.retain(liveIds);
        if (store.changed()) await writeFileAtomic(p.keyStore, JSON.stringify(store.entries(), null, 2) + '\n', 0o600);
      },
    };
  }
  const { secret, created } = await loadOrCreateSecret(p.secret);
  return {
    source: new KdfKeySource(secret, state.salt),
    async persist() {},
    ...(created ? { note: `created key secret ${p.secret} (mode 0600); keep it with the state file and out of version control` } : {}),
  };
}

/** A saved plan's text, before anything in it is trusted: a regular file, no bigger than any plan onionctl writes. */
export async function readPlanText(file: string): Promise<string> {
  try {
    const st = await fs.stat(file);
    if (!st.isFile()) throw new UserError(`plan ${file} is not a regular file`);
    if (st.size > MAX_SAVED_PLAN_BYTES) throw new UserError(`plan ${file} is larger than any plan onionctl writes`);
    return await fs.readFile(file, 'utf8');
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw new UserError(`cannot read plan ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** openPlan on a file's text, its refusal reported as the user's error naming the file. */
export function openPlanText(file: string, text: string, key: Buffer, o: { now: Date; maxAgeMs: number }): SavedPlan {
  try {
    return openPlan(text, key, o);
  } catch (e) {
    if (e instanceof SavedPlanError) throw new UserError(`plan ${file} ${e.message}`);
    throw e;
  }
}
