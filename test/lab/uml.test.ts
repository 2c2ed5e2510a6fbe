// Real test of the UML lab runtime: boots a User-Mode Linux guest (needs root,
// the Debian packages user-mode-linux and kmod). Set ONIONCTL_SKIP_LAB=1 to skip.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { kernelHasEsp } from '../../src/lab/esp-probe.js';
import {
  attachGuest,
  bootGuest,
  findGuestProcesses,
  Guest,
  GuestAgentError,
  GuestBootError,
  GuestExecTimeoutError,
  GuestNotRunningError,
  haltGuest,
  UmlNotFoundError,
} from '../../src/lab/uml.js';
import { describeKernels, kernelBoot, type LabKernel } from '../helpers/kernels.js';
import { NFT_PROBE_RULESET } from '../../src/lab/run.js';

const skip = process.env.ONIONCTL_SKIP_LAB === '1';
const d = skip ? describe.skip : describe;

/** Every host process whose command line mentions `needle` (independent of uml.ts). */
function hostProcessesMentioning(needle: string): number[] {
  const pids: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      if (state === 'Z') continue;
      if (fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(needle)) pids.push(Number(name));
    } catch {
      /* raced with exit */
    }
  }
  return pids;
}

/** One ESP GCM state, tunnel mode, documentation addresses; the key is only ever on stdin. */
function espStateBatch(spi: number, keyHex: string): string {
  return (
    `xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x${spi.toString(16)} reqid 1 mode tunnel ` +
    `replay-window 32 aead rfc4106(gcm(aes)) 0x${keyHex} 128\n`
  );
}

describeKernels('uml guest', (k: LabKernel) => {
d('UML lab guest', () => {
  let dir: string;
  let guest: Guest | undefined;

  beforeAll(async () => {
    fs.mkdirSync('/var/tmp/onionctl-lab', { recursive: true, mode: 0o700 });
    dir = fs.mkdtempSync('/var/tmp/onionctl-lab/test-');
    guest = await bootGuest({ dir, timeoutMs: 90_000, ...kernelBoot(k) });
  }, 120_000);

  afterAll(async () => {
    // Only reached with a live guest if a test failed before the halt test.
    if (guest?.isRunning()) await guest.halt();
    if (dir && findGuestProcesses(dir).length === 0) fs.rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  test('the kernel of the matrix: its release, xfrm_interface loaded or not, nf_tables for IPv4 or not', async () => {
    const g = guest!;
    expect(g.info.kernel.startsWith(`${k.name}.`)).toBe(true);
    expect(g.info.modules.includes('xfrm_interface')).toBe(k.xfrmInterface);
    const nft = await g.exec(['sh', '-c', 'ip netns add nftprobe && ip netns exec nftprobe nft -f -; rc=$?; ip netns del nftprobe; exit $rc'], { stdin: NFT_PROBE_RULESET });
    expect({ nft: nft.exitCode === 0 }).toEqual({ nft: k.nft });
  }, 120_000);

  test('boots a UML kernel and runs uname -r', async () => {
    const g = guest!;
    expect(g.info.kernel).toMatch(/^\d+\.\d+/);
    expect(fs.readFileSync(path.join(dir, 'uml.pid'), 'utf8').trim()).toBe(String(g.pid));
    const r = await g.exec(['uname', '-r']);
    expect(r).toEqual({ exitCode: 0, stdout: `${g.info.kernel}\n`, stderr: '' });
    // A different kernel from the host's (UML).
    expect(r.stdout.trim()).not.toBe(os.release());
  });

  test('adds an ESP AES-GCM state inside the guest, key via ip -batch - on stdin', async () => {
    const g = guest!;
    const ns = `esp${randomBytes(3).toString('hex')}`;
    const key = randomBytes(20).toString('hex');
    expect((await g.exec(['ip', 'netns', 'add', ns])).exitCode).toBe(0);
    try {
      const add = await g.exec(['ip', '-n', ns, '-batch', '-'], { stdin: espStateBatch(0x4242, key) });
      expect(add).toEqual({ exitCode: 0, stdout: '', stderr: '' });
      const show = await g.exec(['ip', '-n', ns, 'xfrm', 'state', 'list']);
      expect(show.exitCode).toBe(0);
      expect(show.stdout).toContain('spi 0x00004242');
      expect(show.stdout).toContain('rfc4106(gcm(aes))');
    } finally {
      await g.exec(['ip', 'netns', 'delete', ns]);
    }
    // The key never reached a command line: no spool file is left either.
    expect(fs.readdirSync(path.join(dir, 'spool'))).toEqual([]);
  });

  test('kernelHasEsp() run inside the guest says yes', async () => {
    const probe = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/lab/esp-probe.js');
    const r = await guest!.exec([
      'node',
      '--input-type=module',
      '-e',
      `import { kernelHasEsp } from ${JSON.stringify(probe)}; console.log(await kernelHasEsp());`,
    ]);
    expect(r).toEqual({ exitCode: 0, stdout: 'true\n', stderr: '' });
    expect((await guest!.exec(['ip', 'netns', 'list'])).stdout).toBe('');
  }, 150_000);

  test('argv with spaces, quotes and shell metacharacters round-trips exactly', async () => {
    const args = ['a b', "it's", 'say "hi"', '$HOME', '`id`', '*', '\\n', ' lead', 'trail ', '', 'ünï', 'x;y|z&&w'];
    const r = await guest!.exec(['printf', '%s\\0', ...args]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout.split('\0').slice(0, -1)).toEqual(args);
  });

  test('stdin round-trips byte for byte and its spool file is gone afterwards', async () => {
    const input = `line 1\n"quoted" 'single' \\ back\n${'x'.repeat(100_000)}\nno final newline`;
    const r = await guest!.exec(['cat'], { stdin: input });
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toBe(input);
    expect(fs.readdirSync(path.join(dir, 'spool'))).toEqual([]);
  });

  test('env, cwd, exit codes and stderr come back', async () => {
    const r = await guest!.exec(['sh', '-c', 'echo "$FOO" "$(pwd)"; echo oops >&2; exit 3'], {
      env: { FOO: 'bar baz' },
      cwd: '/usr',
    });
    expect(r).toEqual({ exitCode: 3, stdout: 'bar baz /usr\n', stderr: 'oops\n' });
    const missing = await guest!.exec(['/nonexistent/program']);
    expect(missing.exitCode).toBe(127);
  });

  test('concurrent requests and a re-attached handle work', async () => {
    const other = await attachGuest(dir);
    expect(other.pid).toBe(guest!.pid);
    const rs = await Promise.all([1, 2, 3].map((i) => other.exec(['sh', '-c', `echo ${i}`])));
    expect(rs.map((r) => r.stdout)).toEqual(['1\n', '2\n', '3\n']);
  });

  test('a command over its timeout is killed', async () => {
    await expect(guest!.exec(['sleep', '30'], { timeoutMs: 300 })).rejects.toBeInstanceOf(GuestExecTimeoutError);
  });

  test('halt stops the guest and leaves no UML process behind', async () => {
    const g = guest!;
    const marker = path.join(dir, 'guest', 'init.sh');
    expect(hostProcessesMentioning(marker).length).toBeGreaterThan(0);
    await g.halt();
    expect(g.isRunning()).toBe(false);
    expect(hostProcessesMentioning(marker)).toEqual([]);
    const pgrep = await execa('pgrep', ['-f', marker.replace(/[.+]/g, '\\$&')], { reject: false });
    expect(pgrep.stdout).toBe('');
    expect(fs.existsSync(path.join(dir, 'spool'))).toBe(false);
    expect(fs.existsSync(path.join(dir, 'uml.pid'))).toBe(false);
    await expect(attachGuest(dir)).rejects.toBeInstanceOf(GuestNotRunningError);
  }, 60_000);
});
});

describeKernels('uml failures', (k: LabKernel) => {
d('UML lab failures', () => {
  let dir: string;
  beforeAll(() => {
    fs.mkdirSync('/var/tmp/onionctl-lab', { recursive: true, mode: 0o700 });
    dir = fs.mkdtempSync('/var/tmp/onionctl-lab/test-fail-');
  });
  afterAll(async () => {
    await haltGuest(dir);
    if (findGuestProcesses(dir).length === 0) fs.rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  test('a boot timeout is reported with the console tail and kills the half-booted guest', async () => {
    const err = await bootGuest({ dir, timeoutMs: 300, ...kernelBoot(k) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GuestBootError);
    expect((err as Error).message).toContain('did not become ready within 300 ms');
    expect((err as GuestBootError).consoleTail.length).toBeGreaterThan(0);
    expect(findGuestProcesses(dir)).toEqual([]);
  }, 60_000);

  test('a dead agent is reported as such, and haltGuest cleans up', async () => {
    const g = await bootGuest({ dir, timeoutMs: 90_000, ...kernelBoot(k) });
    const err = await g.exec(['sh', '-c', `kill -9 ${g.info.agentPid}; sleep 60`]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GuestAgentError);
    expect((err as Error).message).toMatch(/agent .* died|exited/);
    await haltGuest(dir);
    expect(findGuestProcesses(dir)).toEqual([]);
    await expect(g.exec(['true'])).rejects.toBeInstanceOf(GuestNotRunningError);
  }, 150_000);
});
});

d('UML lab prerequisites', () => {
  test('a missing linux.uml gives a clear error', async () => {
    const err = await bootGuest({ dir: '/var/tmp/onionctl-lab/never-booted', umlBinary: '/nonexistent/linux.uml' }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(UmlNotFoundError);
    expect((err as Error).message).toContain('apt-get install user-mode-linux');
    expect((err as Error).cause).toBeDefined();
  });
});

describe('kernelHasEsp (host)', () => {
  test('agrees with a direct probe in a throw-away network namespace', async () => {
    // Independent probe: unshare(1) instead of ip netns, same rfc4106(gcm(aes)) state.
    const direct = await execa('unshare', ['--net', 'ip', '-batch', '-'], {
      input: espStateBatch(0x777, randomBytes(20).toString('hex')),
      reject: false,
    });
    const expected = direct.exitCode === 0;
    if (!expected) expect(direct.stderr).toMatch(/algorithm not found|cryptographic|not supported/i);
    const before = (await execa('ip', ['netns', 'list'])).stdout;
    expect(await kernelHasEsp()).toBe(expected);
    // The scratch namespace is gone again.
    expect((await execa('ip', ['netns', 'list'])).stdout).toBe(before);
  });
});
