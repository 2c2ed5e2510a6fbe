/**
 * What every command needs: the topology loaded and validated, the state, the key source.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { KdfKeySource, StoredKeySource, type KeySource } from '../keys/kdf.js';
import { parseTopology } from '../topology/load.js';
import { buildNet, type Net } from '../topology/net.js';
import type { Topology } from '../topology/schema.js';
import type { State } from '../state/model.js';
import { loadKeyStore, loadOrCreateSecret, loadState, UserError, writeFileAtomic } from '../util/files.js';

export interface Paths {
  topology: string;
  state: string;
  secret: string;
  keyStore: string;
}

export function defaultPaths(topology: string, o: { state?: string; secret?: string }): Paths {
  const dir = path.dirname(topology);
  const base = path.basename(topology).replace(/\.ya?ml$/i, '');
  const state = o.state ?? path.join(dir, `${base}.state.json`);
  return {
    topology,
    state,
    secret: o.secret ?? path.join(dir, `${base}.secret`),
    keyStore: state.replace(/\.json$/, '') + '.keys.json',
  };
}

export async function readTopology(file: string): Promise<{ topology: Topology; net: Net }> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    throw new UserError(`cannot read topology ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { cause: e });
  }
  const { topology } = parseTopology(text, file);
  return { topology, net: buildNet(topology) };
}

export async function readState(p: Paths): Promise<{ state: State; fresh: boolean }> {
  return loadState(p.state);
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
