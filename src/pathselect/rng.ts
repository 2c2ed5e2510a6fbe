/**
 * Randomness for path selection. The default is the operating system's CSPRNG; `--seed` gives a
 * deterministic stream (SHA-256 in counter mode over the seed and a per-use label), so that a
 * reviewer can reproduce a selection. Keys never come from here (see src/keys).
 */
import { createHash, randomInt } from 'node:crypto';

export interface Rng {
  /** uniform integer in [0, n), n <= 2^48 */
  int(n: number): number;
}

const MAX = 2 ** 48;

function checkN(n: number): void {
  if (!Number.isSafeInteger(n) || n <= 0 || n > MAX) throw new RangeError(`Rng.int: bad bound ${n}`);
}

export function cryptoRng(): Rng {
  return {
    int(n) {
      checkN(n);
      return randomInt(n);
    },
  };
}

export class SeededRng implements Rng {
  private counter = 0;
  private buf = Buffer.alloc(0);
  private off = 0;

  constructor(
    private readonly seed: string,
    private readonly label: string,
  ) {}

  private take6(): number {
    if (this.off + 6 > this.buf.length) {
      this.buf = createHash('sha256').update(`onionctl-rng/v1\0${this.seed}\0${this.label}\0${this.counter++}`).digest();
      this.off = 0;
    }
    const v = this.buf.readUIntBE(this.off, 6);
    this.off += 6;
    return v;
  }

  int(n: number): number {
    checkN(n);
    // rejection sampling: uniform over [0, n) without modulo bias
    const limit = MAX - (MAX % n);
    for (;;) {
      const v = this.take6();
      if (v < limit) return v % n;
    }
  }
}

/** A factory so each circuit draws from its own stream: adding a circuit never shifts another's. */
export type RngFactory = (label: string) => Rng;

export function rngFactory(seed: string | undefined): RngFactory {
  if (seed === undefined) {
    const r = cryptoRng();
    return () => r;
  }
  return (label) => new SeededRng(seed, label);
}

/**
 * An SA epoch's nonce (16 bytes, hex) from `rng`: four uniform 32-bit draws. Drawn from the
 * factory under the label `sa-nonce/...`, so `--seed` makes it reproducible for offline plans.
 */
export function drawNonce(rng: Rng): string {
  let out = '';
  for (let i = 0; i < 4; i++) out += rng.int(2 ** 32).toString(16).padStart(8, '0');
  return out;
}

export const NONCE_LABEL = 'sa-nonce/';

/**
 * For commands that push (apply, rekey, rotate, plan --live): `--seed` still makes the paths
 * reproducible, but every nonce comes from the CSPRNG. A seed is a value people reuse and write
 * into scripts; a nonce derived from it would come back with a state restored from a backup.
 */
export function liveRngFactory(seed: string | undefined): RngFactory {
  const paths = rngFactory(seed);
  const fresh = cryptoRng();
  return (label) => (label.startsWith(NONCE_LABEL) ? fresh : paths(label));
}
