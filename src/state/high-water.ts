/**
 * The high-water mark: how far each state (by its salt) has gone, kept in a file apart from the
 * state (beside the key secret), so that a state file put back from a backup, or copied from
 * another controller, is seen to be behind what this controller already saved and pushed.
 *
 * Why: SPIs, epochs and serials come from counters in the state. A state restored behind the
 * routers would hand the same counters out again. Every epoch's key also covers a random nonce
 * (state/model.ts), so even then the key differs; the mark makes the restore visible and refuses
 * it instead of relying on that alone. Pure: the file I/O is in store/files.ts.
 */
import { z } from 'zod';
import { SPI_BASE, SPI_LAST, REQID_BASE, REQID_LAST, type State } from './model.js';

const Mark = z.strictObject({
  serial: z.number().int().min(0),
  spi: z.number().int().min(SPI_BASE).max(SPI_LAST + 1),
  reqid: z.number().int().min(REQID_BASE).max(REQID_LAST + 1),
  /** ISO time of the save that set this mark */
  updated: z.string().max(64),
});
export type Mark = z.infer<typeof Mark>;

export const HighWaterSchema = z.strictObject({
  format: z.literal('onionctl-high-water/v1'),
  /** per state salt (a state file's identity) */
  states: z.record(z.string().regex(/^[0-9a-f]{64}$/), Mark),
});
export type HighWater = z.infer<typeof HighWaterSchema>;

export const emptyHighWater = (): HighWater => ({ format: 'onionctl-high-water/v1', states: {} });

/** Why `state` is behind the mark of its salt, or undefined when it is not. */
export function behindMark(hw: HighWater, state: State): string | undefined {
  const m = hw.states[state.salt];
  if (!m) return undefined;
  const why: string[] = [];
  if (state.serial < m.serial) why.push(`serial ${state.serial} < ${m.serial}`);
  if (state.next.spi < m.spi) why.push(`next SPI 0x${state.next.spi.toString(16)} < 0x${m.spi.toString(16)}`);
  if (state.next.reqid < m.reqid) why.push(`next reqid 0x${state.next.reqid.toString(16)} < 0x${m.reqid.toString(16)}`);
  return why.length > 0 ? `${why.join(', ')}, saved ${m.updated}` : undefined;
}

/** The mark raised to `state` (never lowered). */
export function raiseMark(hw: HighWater, state: State, now: string): HighWater {
  const m = hw.states[state.salt];
  const next: Mark = {
    serial: Math.max(m?.serial ?? 0, state.serial),
    spi: Math.max(m?.spi ?? SPI_BASE, state.next.spi),
    reqid: Math.max(m?.reqid ?? REQID_BASE, state.next.reqid),
    updated: now,
  };
  if (m && m.serial === next.serial && m.spi === next.spi && m.reqid === next.reqid) return hw;
  return { ...hw, states: { ...hw.states, [state.salt]: next } };
}

/**
 * Continue from a state that is behind its mark (the operator said so): the counters move past
 * everything handed out before, and no SA of the state is taken to be where the state says its
 * key went, so every SA that any node lacks, or holds otherwise, gets a new epoch, SPI and nonce.
 */
export function resumeBehind(hw: HighWater, state: State): State {
  const m = hw.states[state.salt];
  if (!m) return state;
  const s = structuredClone(state);
  s.serial = Math.max(s.serial, m.serial) + 1;
  s.next.spi = Math.max(s.next.spi, m.spi);
  s.next.reqid = Math.max(s.next.reqid, m.reqid);
  const forget = (r: { installed?: string[] }) => {
    delete r.installed;
  };
  for (const l of Object.values(s.links)) for (const r of [l.ab, l.ba]) {
    forget(r);
    for (const o of r.retiring ?? []) forget(o);
  }
  for (const c of Object.values(s.circuits)) for (const r of [...c.fwd, ...c.rev]) {
    forget(r);
    for (const o of r.retiring ?? []) forget(o);
  }
  return s;
}

/** A plan's state whose salt has a mark but whose base state is gone: it was pushed before. */
export function pushedBefore(hw: HighWater, state: State): boolean {
  return hw.states[state.salt] !== undefined;
}
