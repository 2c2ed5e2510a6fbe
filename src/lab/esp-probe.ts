/**
 * Does the running kernel implement ESP (IPsec Encapsulating Security Payload)?
 *
 * Some kernels have xfrm but no ESP: `ip xfrm state add ... proto esp` then
 * fails with "Requested AEAD algorithm not found" (the missing esp4 module or
 * crypto templates). The only reliable test is to try: this module adds one
 * rfc4106(gcm(aes)) tunnel-mode state in a scratch network namespace with a
 * unique name, and deletes the namespace again whatever happens.
 *
 * The (random, throw-away) key goes to `ip -n NS -batch -` on stdin, never on
 * the command line, like every key in onionctl.
 *
 * Needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN) to create the namespace.
 */
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';
import { OnionctlError } from '../util/errors.js';

/** The probe itself could not run (no `ip`, no permission, ...). Not "no ESP". */
export class EspProbeError extends OnionctlError {
  readonly kind = 'uncaught' as const;
}

export interface EspProbeOptions {
  /** The `ip` binary (iproute2). Default: `ip` from PATH. */
  ipBinary?: string;
}

/**
 * Messages with which `ip xfrm state add` reports that the kernel cannot do
 * ESP with AES-GCM: missing algorithm, crypto template or ESP protocol
 * handler, or no xfrm netlink family at all.
 */
const NO_ESP_PATTERNS: readonly RegExp[] = [
  /algorithm not found/i,
  /unable to initialize cryptographic operations/i,
  /protocol not supported/i,
  /address family not supported/i,
  /function not implemented/i,
];

/** Scratch namespace names are unique per call: onionctl-espprobe-<pid>-<random>. */
function scratchNamespaceName(): string {
  return `onionctl-espprobe-${process.pid}-${randomBytes(4).toString('hex')}`;
}

/**
 * Returns true when an ESP state with `aead rfc4106(gcm(aes))` (the AEAD
 * onionctl uses) can be added, false when the kernel lacks ESP or the cipher.
 * Throws {@link EspProbeError} when the probe could not be carried out.
 */
export async function kernelHasEsp(opts: EspProbeOptions = {}): Promise<boolean> {
  const ip = opts.ipBinary ?? 'ip';
  const ns = scratchNamespaceName();
  try {
    await execa(ip, ['netns', 'add', ns]);
  } catch (err) {
    throw new EspProbeError(
      `cannot create the scratch network namespace ${ns} for the ESP probe (needs root and iproute2)`,
      { cause: err },
    );
  }
  try {
    // 160 bits = 128-bit AES key + 32-bit salt; documentation addresses only.
    const key = randomBytes(20).toString('hex');
    const spi = (0x1000 + randomBytes(2).readUInt16BE(0)).toString(16);
    const batch =
      `xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x${spi} reqid 1 mode tunnel ` +
      `aead rfc4106(gcm(aes)) 0x${key} 128\n`;
    const r = await execa(ip, ['-n', ns, '-batch', '-'], { input: batch, reject: false });
    if (r.exitCode === 0) return true;
    const msg = `${r.stderr}\n${r.stdout}`;
    if (NO_ESP_PATTERNS.some((re) => re.test(msg))) return false;
    throw new EspProbeError(`ESP probe failed for an unexpected reason (exit ${r.exitCode}): ${r.stderr.trim()}`, {
      cause: r,
    });
  } finally {
    // Always remove the namespace; its states go with it.
    const del = await execa(ip, ['netns', 'delete', ns], { reject: false });
    if (del.exitCode !== 0) {
      // Do not mask the probe's own result/error; leave a hint on stderr.
      process.stderr.write(`onionctl: could not delete scratch namespace ${ns}: ${del.stderr}\n`);
    }
  }
}
