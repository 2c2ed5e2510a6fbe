/**
 * Files that hold or lead to keys (issue 11, defect 3): the secret, the key store, the state and
 * the high-water mark are trusted only when nobody else could have written them. Each case is
 * what another local user could plant: a file of theirs, a symbolic link, a directory they can
 * write to. A dangling link at the secret's path used to make `plan` retry forever.
 *
 * The owner cases need root (chown to another uid); CI runs as root.
 */
import { afterAll, beforeAll, describe, expect, jest, test } from '@jest/globals';
import { chmod, chown, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { emptyState } from '../../src/state/model.js';
import { unsafeDirectory } from '../../src/util/files.js';
import { loadHighWater, loadKeyStore, loadOrCreateSecret, loadState, saveState } from '../../src/store/files.js';
import { UserError } from '../../src/util/errors.js';
import { EXAMPLES, run, SPAWN_TIMEOUT, STACK_LINE } from '../helpers/cli.js';

jest.setTimeout(SPAWN_TIMEOUT);

const isRoot = process.getuid?.() === 0;
const asRoot = isRoot ? test : test.skip;
const OTHER_UID = 65534; // nobody
const HEX = 'ab'.repeat(32) + '\n';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'onionctl-secret-files-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});
const sub = async (name: string, mode = 0o700) => {
  const d = path.join(dir, name);
  await mkdir(d, { mode });
  await chmod(d, mode);
  return d;
};

describe('the key secret', () => {
  asRoot('a secret that another user wrote (mode 0600, a valid secret) is refused, naming its owner', async () => {
    const d = await sub('planted');
    const file = path.join(d, 'net.secret');
    await writeFile(file, HEX, { mode: 0o600 });
    await chown(file, OTHER_UID, OTHER_UID);
    await expect(loadOrCreateSecret(file)).rejects.toThrow(new RegExp(`key secret .*net\\.secret belongs to uid ${OTHER_UID}, not to you \\(uid 0\\)`));
  });

  test('a symbolic link to a good secret is refused, not followed', async () => {
    const d = await sub('link');
    const real = path.join(d, 'real.secret');
    await writeFile(real, HEX, { mode: 0o600 });
    const file = path.join(d, 'net.secret');
    await symlink(real, file);
    await expect(loadOrCreateSecret(file)).rejects.toThrow(/key secret .*net\.secret is a symbolic link; onionctl does not follow links/);
  });

  test('a dangling symbolic link is an error at once, not an endless retry, and nothing is created at its target', async () => {
    const d = await sub('dangling');
    const target = path.join(d, 'elsewhere.secret');
    const file = path.join(d, 'net.secret');
    await symlink(target, file);
    await expect(loadOrCreateSecret(file)).rejects.toThrow(UserError);
    await expect(stat(target)).rejects.toThrow(/ENOENT/);
  });

  test('a directory that everyone (or its group) can write to is refused, with the chmod to run; a sticky one like /tmp is not', async () => {
    const open = await sub('open', 0o777);
    await expect(loadOrCreateSecret(path.join(open, 'net.secret'))).rejects.toThrow(/directory .*open can be written by everyone \(mode 777\); run: chmod go-w/);
    const group = await sub('group', 0o770);
    await expect(loadOrCreateSecret(path.join(group, 'net.secret'))).rejects.toThrow(/can be written by its group/);
    const sticky = await sub('sticky', 0o1777);
    expect(await unsafeDirectory(sticky)).toBeUndefined();
    // and an ancestor counts too
    const inner = path.join(open, 'inner');
    await mkdir(inner, { mode: 0o700 });
    await expect(loadOrCreateSecret(path.join(inner, 'net.secret'))).rejects.toThrow(/directory .*open can be written by everyone/);
  });

  asRoot('a directory of another user is refused', async () => {
    const d = await sub('theirs');
    await chown(d, OTHER_UID, OTHER_UID);
    await expect(loadOrCreateSecret(path.join(d, 'net.secret'))).rejects.toThrow(new RegExp(`directory .*theirs belongs to uid ${OTHER_UID}`));
  });

  test('a secret that is not a regular file (a FIFO would block the read) is refused', async () => {
    const d = await sub('dirsecret');
    await mkdir(path.join(d, 'net.secret'), { mode: 0o700 });
    await expect(loadOrCreateSecret(path.join(d, 'net.secret'))).rejects.toThrow(/is not a regular file/);
  });
});

describe('the state, the key store and the high-water mark', () => {
  asRoot('each is refused when another user owns it', async () => {
    const d = await sub('owned');
    const state = path.join(d, 't.state.json');
    await saveState(state, emptyState('cd'.repeat(32)));
    await chown(state, OTHER_UID, OTHER_UID);
    await expect(loadState(state)).rejects.toThrow(/state file .* belongs to uid 65534/);
    const store = path.join(d, 't.keys.json');
    await writeFile(store, '{}', { mode: 0o600 });
    await chown(store, OTHER_UID, OTHER_UID);
    await expect(loadKeyStore(store)).rejects.toThrow(/key store .* belongs to uid 65534/);
    const hw = path.join(d, 'hw.json');
    await writeFile(hw, JSON.stringify({ format: 'onionctl-high-water/v1', states: {} }), { mode: 0o600 });
    await chown(hw, OTHER_UID, OTHER_UID);
    await expect(loadHighWater(hw)).rejects.toThrow(/high-water mark .* belongs to uid 65534/);
  });

  test('a state file that is a symbolic link, or readable by others, is refused', async () => {
    const d = await sub('statelink');
    const real = path.join(d, 'real.json');
    await saveState(real, emptyState('cd'.repeat(32)));
    const state = path.join(d, 't.state.json');
    await symlink(real, state);
    await expect(loadState(state)).rejects.toThrow(/state file .* is a symbolic link/);
    await chmod(real, 0o644);
    await expect(loadState(real)).rejects.toThrow(/state file .* is readable by others \(mode 644\)/);
  });

  test('a key store that is not a map of key ids to hex keys is refused as damaged', async () => {
    const d = await sub('store');
    const file = path.join(d, 'k.json');
    for (const bad of ['[]', '{"a": 5}', '{"a": "xyz"}', '{"a": "ab"}', '"text"']) {
      await writeFile(file, bad, { mode: 0o600 });
      await expect(loadKeyStore(file)).rejects.toThrow(/key store .* is damaged/);
    }
    await writeFile(file, '{nope', { mode: 0o600 });
    await expect(loadKeyStore(file)).rejects.toThrow(/key store .* is not valid JSON/);
  });
});

describe('plan --out-dir DIR --with-keys', () => {
  test('a DIR that is a symbolic link is refused: no key file is written, the link\'s target keeps its mode', async () => {
    const d = await sub('outdir');
    const topo = path.join(d, 't.yaml');
    await writeFile(topo, await readFile(path.join(EXAMPLES, 'three-mixes.yaml'), 'utf8'));
    const target = await sub('someone-elses', 0o755);
    const link = path.join(d, 'out');
    await symlink(target, link);
    const r = await run(['plan', topo, '--out-dir', link, '--with-keys']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--out-dir .*out is a symbolic link/);
    expect(r.stderr + r.stdout).not.toMatch(STACK_LINE);
    expect((await stat(target)).mode & 0o7777).toBe(0o755);
    expect(await readdirNames(target)).toEqual([]);
  });

  test('through the CLI: a secret in a world-writable directory stops plan with exit 1 and no stack', async () => {
    const open = await sub('cli-open', 0o777);
    const topo = path.join(open, 't.yaml');
    await writeFile(topo, await readFile(path.join(EXAMPLES, 'three-mixes.yaml'), 'utf8'));
    const r = await run(['plan', topo, '--no-save-state']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/onionctl: error: .*can be written by everyone/);
    expect(r.stderr + r.stdout).not.toMatch(STACK_LINE);
  });
});

async function readdirNames(d: string): Promise<string[]> {
  const { readdir } = await import('node:fs/promises');
  return (await readdir(d)).sort();
}
