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
