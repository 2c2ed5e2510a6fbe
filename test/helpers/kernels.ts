/**
 * The kernel matrix of the lab tests (docs/kernels.md): every lab test file runs its tests once
 * per kernel listed here.
 *
 *   6.1   Debian 12's user-mode-linux (6.1.176): no xfrm_interface, no nf_tables for IPv4
 *   6.12  the UML kernel scripts/uml-kernel.sh builds from linux-source-6.12, booted with
 *         xfrm_interface loaded (so nested ESP is checked against dir-in policies) and with
 *         nf_tables for IPv4
 *
 * ONIONCTL_LAB_KERNELS picks a part of the matrix ("6.1", "6.12", "6.1,6.12"; default both). A
 * kernel of the matrix that is missing is a failing test, not a skipped one: the README's test
 * command builds the 6.12 kernel first (scripts/install-deps.sh).
 */
import { afterAll, beforeAll, describe } from '@jest/globals';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { KERNEL_CACHE } from '../../src/cli/lab-command.js';

export interface LabKernel {
  name: '6.1' | '6.12';
  /** the UML binary; undefined where it is missing (the tests then fail saying how to get it) */
  uml: string | undefined;
  /** boot with xfrm_interface loaded */
  xfrmInterface: boolean;
  /** the kernel has nf_tables for IPv4 */
  nft: boolean;
  /** how to get the kernel when it is missing */
  hint: string;
}

const ALL: Record<LabKernel['name'], () => LabKernel> = {
  '6.1': () => {
    const p = ['/usr/bin/linux.uml', '/usr/local/bin/linux.uml'].find((x) => existsSync(x));
    return { name: '6.1', uml: p, xfrmInterface: false, nft: false, hint: 'apt-get install user-mode-linux (scripts/install-deps.sh)' };
  },
  '6.12': () => {
    const p = path.join(KERNEL_CACHE, '6.12', 'linux.uml');
    return { name: '6.12', uml: existsSync(p) ? p : undefined, xfrmInterface: true, nft: true, hint: 'scripts/uml-kernel.sh (run by scripts/install-deps.sh)' };
  },
};

export function labKernels(): LabKernel[] {
  const wanted = (process.env.ONIONCTL_LAB_KERNELS ?? '6.1,6.12').split(',').map((s) => s.trim()).filter(Boolean);
  return wanted.map((w) => {
    const f = ALL[w as LabKernel['name']];
    if (!f) throw new Error(`ONIONCTL_LAB_KERNELS: unknown kernel ${JSON.stringify(w)} (known: ${Object.keys(ALL).join(', ')})`);
    return f();
  });
}

/** The environment that makes `onionctl lab up|demo` (and bootGuest) use this kernel. */
export function kernelEnv(k: LabKernel): Record<string, string> {
  if (!k.uml) throw new Error(`the lab kernel ${k.name} is missing: ${k.hint}`);
  return { ONIONCTL_UML: k.uml, ONIONCTL_LAB_XFRM_INTERFACE: k.xfrmInterface ? '1' : '0' };
}

/** bootGuest options for this kernel (tests that boot a guest themselves). */
export function kernelBoot(k: LabKernel): { umlBinary: string; extraModules: string[] } {
  if (!k.uml) throw new Error(`the lab kernel ${k.name} is missing: ${k.hint}`);
  return { umlBinary: k.uml, extraModules: k.xfrmInterface ? ['xfrm_interface'] : [] };
}

/**
 * describe() once per kernel of the matrix, with ONIONCTL_UML and ONIONCTL_LAB_XFRM_INTERFACE set
 * in this process while its tests run (children inherit them). A missing kernel fails its block.
 */
export function describeKernels(title: string, fn: (k: LabKernel) => void): void {
  for (const k of labKernels()) {
    describe(`[kernel ${k.name}${k.xfrmInterface ? ' + xfrm_interface' : ''}] ${title}`, () => {
      const saved: Record<string, string | undefined> = {};
      beforeAllSetEnv(k, saved);
      fn(k);
    });
  }
}

function beforeAllSetEnv(k: LabKernel, saved: Record<string, string | undefined>): void {
  beforeAll(() => {
    const env = kernelEnv(k);
    for (const [key, v] of Object.entries(env)) {
      saved[key] = process.env[key];
      process.env[key] = v;
    }
  });
  afterAll(() => {
    for (const [key, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[key];
      else process.env[key] = v;
    }
  });
}
