/**
 * apply, destroy, plan --live, rekey and rotate when routers cannot be read (issue 15, defects 1,
 * 3 and 4), in process with fake transports: what cannot be read is said first; a plan that left
 * nodes out is not saved; nothing is called "complete" or "no changes" when nodes were left out;
 * rekey and rotate change nothing, state included, unless every node was read; a circuit name is
 * checked before any router is contacted.
 */
import { afterEach, beforeEach, describe, expect, jest, test } from '@jest/globals';
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { applyCommand, destroyCommand, planLiveCommand, rekeyCommand, rotateCommand, type LiveDeps } from '../../src/cli/apply-command.js';
import type { Connector } from '../../src/remote/fleet.js';
import { TransportError } from '../../src/remote/transport.js';
import { UserError } from '../../src/util/errors.js';
import { FakeTransport, type ExecRecord } from '../helpers/apply.js';
import { EXAMPLES, run, tempDir } from '../helpers/cli.js';

/** what a router that holds nothing answers to the read-back script */
const EMPTY_READBACK = [
  '@@onionctl@@ clock', '2026-01-01 00:00:00',
  '@@onionctl@@ xfrmState', '@@onionctl@@ xfrmPolicy', '@@onionctl@@ routes', '@@onionctl@@ addresses',
  '@@onionctl@@ iptables', '@@variant iptables', '*filter', ':INPUT ACCEPT [0:0]', ':FORWARD ACCEPT [0:0]', ':OUTPUT ACCEPT [0:0]', 'COMMIT',
  '*nat', ':PREROUTING ACCEPT [0:0]', ':INPUT ACCEPT [0:0]', ':OUTPUT ACCEPT [0:0]', ':POSTROUTING ACCEPT [0:0]', 'COMMIT',
  '@@onionctl@@ nft', '@@nft none', '@@onionctl@@ sysctls', 'net.ipv4.ip_forward=0', '@@onionctl@@ end', '',
].join('\n');

let stdout = '';
let stderr = '';
beforeEach(() => {
  stdout = '';
  stderr = '';
  jest.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => ((stdout += String(s)), true));
  jest.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => ((stderr += String(s)), true));
});
afterEach(() => {
  jest.restoreAllMocks();
});

/** a fleet where only `up` can be reached; each of those holds nothing and accepts every command */
function fleet(up: string[]): { deps: LiveDeps; log: ExecRecord[]; contacted: string[] } {
  const log: ExecRecord[] = [];
  const contacted: string[] = [];
  const connector: Connector = async (node) => {
    contacted.push(node);
    if (!up.includes(node)) throw new TransportError(node, `${node} (fake): connect ECONNREFUSED`);
    return new FakeTransport(node, log, (_n, argv) => (argv.join(' ') === 'sh -s' ? { exitCode: 0, stdout: EMPTY_READBACK, stderr: '' } : undefined));
  };
  return { deps: { connector: async () => connector }, log, contacted };
}

async function topo(): Promise<{ dir: string; topology: string; state: string }> {
  const dir = await tempDir();
  const topology = path.join(dir, 't.yaml');
  await fs.writeFile(topology, await fs.readFile(path.join(EXAMPLES, 'three-mixes.yaml'), 'utf8'));
  return { dir, topology, state: path.join(dir, 't.state.json') };
}

describe('every router unreachable', () => {
  test('plan --live --out: the unread nodes come first, the plan is not saved, exit 1', async () => {
    const t = await topo();
    const out = path.join(t.dir, 'p.json');
    const rc = await planLiveCommand(t.topology, { out }, fleet([]).deps);
    expect(rc).toBe(1);
    expect(stdout).toMatch(/^Not read, left out of this plan \(4 of 4 nodes\):\nor1: error: .*ECONNREFUSED/);
    expect(stdout).toMatch(/This plan covers 0 of 4 nodes: 4 could not be read/);
    expect(stderr).toMatch(/the plan was not saved to \S+p\.json: it could not read or1, or2, or3, alice/);
    expect(existsSync(out)).toBe(false);
  });

  test('apply: "Nothing applied", never "No changes"; exit 1; no state written', async () => {
    const t = await topo();
    const rc = await applyCommand(t.topology, undefined, {}, fleet([]).deps);
    expect(rc).toBe(1);
    expect(stdout).not.toMatch(/No changes/);
    expect(stdout).toMatch(/Nothing applied: 4 of 4 nodes could not be read/);
    expect(existsSync(t.state)).toBe(false);
  });

  test('destroy: "Nothing destroyed", never "Nothing to destroy"; exit 1', async () => {
    const t = await topo();
    const rc = await destroyCommand(t.topology, {}, fleet([]).deps);
    expect(rc).toBe(1);
    expect(stdout).not.toMatch(/Nothing to destroy/);
    expect(stdout).toMatch(/Nothing destroyed: 4 of 4 nodes could not be read/);
  });

  test('rekey --all and rotate: an error, and the state file is byte for byte as it was', async () => {
    const t = await topo();
    expect((await run(['plan', t.topology])).code).toBe(0);
    const before = await fs.readFile(t.state, 'utf8');
    await expect(rekeyCommand(t.topology, { all: true, grace: 0 }, fleet([]).deps)).rejects.toThrow(/rekey changes SAs on both of their ends, so it needs every node; or1, or2, or3, alice could not be read. Nothing was changed/);
    expect(await fs.readFile(t.state, 'utf8')).toBe(before);
    await expect(rotateCommand(t.topology, { circuit: ['web'] }, fleet([]).deps)).rejects.toThrow(/rotate changes SAs .* could not be read/);
    expect(await fs.readFile(t.state, 'utf8')).toBe(before);
  });

  test('rekey --circuit bogus says so before contacting any router', async () => {
    const t = await topo();
    expect((await run(['plan', t.topology])).code).toBe(0);
    const f = fleet(['or1', 'or2', 'or3', 'alice']);
    await expect(rekeyCommand(t.topology, { circuit: ['bogus'] }, f.deps)).rejects.toThrow(UserError);
    await expect(rekeyCommand(t.topology, { circuit: ['bogus'] }, f.deps)).rejects.toThrow(/no circuit bogus \(circuits: web\)/);
    await expect(rotateCommand(t.topology, { circuit: ['bogus'] }, f.deps)).rejects.toThrow(/no circuit bogus/);
    expect(f.contacted).toEqual([]);
  });
});

describe('some routers unreachable', () => {
  test('apply pushes to the one it read, then says "Apply incomplete", names the others, exits 1', async () => {
    const t = await topo();
    const f = fleet(['or2']);
    const rc = await applyCommand(t.topology, undefined, { autoApprove: true }, f.deps);
    expect(rc).toBe(1);
    expect(stdout).toMatch(/^Not read, left out of this plan \(3 of 4 nodes\):/);
    expect(stdout).not.toMatch(/Apply complete/);
    expect(stdout).toMatch(/Apply incomplete: \d+ added, \d+ changed, 0 destroyed on 1 of 4 nodes\./);
    expect(stdout).toMatch(/3 could not be read \(or1, or3, alice\); the others are done/);
    expect(f.log.some((r) => r.node === 'or2' && r.argv.join(' ') !== 'sh -s')).toBe(true);
  });
});

describe('apply and destroy ask first (Terraform style)', () => {
  test('without --auto-approve and without a terminal: an error after the plan is shown, and nothing is pushed or saved', async () => {
    const t = await topo();
    const f = fleet(['or1', 'or2', 'or3', 'alice']);
    // jest's stdin is not a terminal
    await expect(applyCommand(t.topology, undefined, {}, f.deps)).rejects.toThrow(/apply asks before it changes routers, and there is no terminal to ask on; nothing was changed\. Run it on a terminal, or pass --auto-approve/);
    expect(stdout).toMatch(/Plan: \d+ to add/);
    expect(f.log.filter((r) => r.argv.join(' ') !== 'sh -s')).toEqual([]);
    expect(existsSync(t.state)).toBe(false);
  });

  test('answered anything but "yes": cancelled, exit 1, nothing pushed; "yes": applied', async () => {
    const t = await topo();
    const asked: string[] = [];
    const no = fleet(['or1', 'or2', 'or3', 'alice']);
    const rc = await applyCommand(t.topology, undefined, {}, { ...no.deps, confirm: async (q) => (asked.push(q), false) });
    expect(rc).toBe(1);
    expect(asked).toEqual(["\nDo you want to apply these changes? Only 'yes' is accepted: "]);
    expect(stdout).toMatch(/Apply cancelled: nothing was changed\.\n$/);
    expect(no.log.filter((r) => r.argv.join(' ') !== 'sh -s')).toEqual([]);
    expect(existsSync(t.state)).toBe(false);
    const yes = fleet(['or1', 'or2', 'or3', 'alice']);
    expect(await applyCommand(t.topology, undefined, {}, { ...yes.deps, confirm: async () => true })).toBe(0);
    expect(yes.log.some((r) => r.argv.join(' ') !== 'sh -s')).toBe(true);
    expect(stdout).toMatch(/Apply complete/);
  });

  test('--auto-approve does not ask', async () => {
    const t = await topo();
    const f = fleet(['or1', 'or2', 'or3', 'alice']);
    expect(await applyCommand(t.topology, undefined, { autoApprove: true }, { ...f.deps, confirm: async () => { throw new Error('asked'); } })).toBe(0);
  });
});

