/**
 * Per-router progress on standard error: on a terminal one live line per router (log-update),
 * otherwise plain lines, one per event, for logs and CI.
 */
import { createLogUpdate } from 'log-update';
import type { Progress } from '../apply/engine.js';
import { settings } from './output.js';

export interface CliProgress extends Progress {
  /** stop redrawing and leave the final lines on screen */
  finish(): void;
}

export function cliProgress(nodes: readonly string[], stream: NodeJS.WriteStream = process.stderr): CliProgress {
  if (settings.quiet) return { step() {}, done() {}, fail() {}, finish() {} };
  const w = Math.max(4, ...nodes.map((n) => n.length));
  if (!stream.isTTY || process.env.ONIONCTL_PLAIN_PROGRESS || settings.verbose) {
    const line = (node: string, s: string) => stream.write(`${node.padEnd(w)}  ${s}\n`);
    return {
      step: (n, what) => line(n, what),
      done: (n, s) => line(n, `done: ${s}`),
      fail: (n, e) => line(n, `FAILED: ${e}`),
      finish() {},
    };
  }
  const state = new Map<string, string>(nodes.map((n) => [n, 'waiting']));
  const update = createLogUpdate(stream);
  let timer: NodeJS.Timeout | undefined;
  const draw = () => {
    timer = undefined;
    update([...state].map(([n, s]) => `${n.padEnd(w)}  ${s}`).join('\n'));
  };
  const set = (n: string, s: string) => {
    state.set(n, s);
    timer ??= setTimeout(draw, 50);
  };
  return {
    step: (n, what) => set(n, `… ${what}`),
    done: (n, s) => set(n, `✓ ${s}`),
    fail: (n, e) => set(n, `✗ ${e}`),
    finish() {
      if (timer) clearTimeout(timer);
      draw();
      update.done();
    },
  };
}
