/** Per-router progress: plain lines off a terminal, one redrawn line per router on one. */
import { Writable } from 'node:stream';
import { cliProgress } from '../../src/cli/progress.js';

function stream(isTTY: boolean): { s: NodeJS.WriteStream; text: () => string } {
  const chunks: string[] = [];
  const w = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      cb();
    },
  }) as unknown as NodeJS.WriteStream;
  Object.assign(w, { isTTY, columns: 100, rows: 40 });
  return { s: w, text: () => chunks.join('') };
}

const strip = (s: string) => s.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');

describe('cliProgress', () => {
  const saved = process.env.ONIONCTL_PLAIN_PROGRESS;
  beforeEach(() => delete process.env.ONIONCTL_PLAIN_PROGRESS);
  afterAll(() => {
    if (saved !== undefined) process.env.ONIONCTL_PLAIN_PROGRESS = saved;
  });

  test('not a terminal: one plain line per event, node names aligned, no escape codes', () => {
    const { s, text } = stream(false);
    const p = cliProgress(['or1', 'alice'], s);
    p.step('or1', 'reading');
    p.done('or1', '3 added, 0 changed, 0 destroyed');
    p.fail('alice', 'connection timed out');
    p.finish();
    expect(text()).toBe('or1    reading\nor1    done: 3 added, 0 changed, 0 destroyed\nalice  FAILED: connection timed out\n');
  });

  test('a terminal: one line per router, redrawn; the final screen shows each router\'s last state', async () => {
    const { s, text } = stream(true);
    const p = cliProgress(['or1', 'or2'], s);
    p.step('or1', 'reading');
    p.step('or2', 'install: ip -batch (4 changes)');
    await new Promise((r) => setTimeout(r, 80));
    p.done('or1', '1 added');
    p.fail('or2', 'exit 2');
    p.finish();
    const out = text();
    expect(out).toMatch(/\x1b\[/); // redrawn in place
    const final = strip(out).split('\n').filter(Boolean).slice(-2);
    expect(final).toEqual(['or1   ✓ 1 added', 'or2   ✗ exit 2']);
    // the intermediate state was drawn too
    expect(strip(out)).toContain('or2   … install: ip -batch (4 changes)');
  });

  test('ONIONCTL_PLAIN_PROGRESS forces plain lines on a terminal', () => {
    process.env.ONIONCTL_PLAIN_PROGRESS = '1';
    const { s, text } = stream(true);
    const p = cliProgress(['or1'], s);
    p.step('or1', 'reading');
    p.finish();
    expect(text()).toBe('or1   reading\n');
  });
});
