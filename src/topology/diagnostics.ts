/**
 * Errors that point into the user's file, netplan style:
 *
 *   topology.yaml:12:15: routers[1].operator: unknown operator "acme2" (known: acme, globex)
 *      12 |     operator: acme2
 *         |               ^
 */
import { escapeControl } from '../util/text.js';
import { OnionctlError } from '../util/errors.js';

export interface Diagnostic {
  file: string;
  /** 1-based */
  line: number;
  /** 1-based */
  col: number;
  message: string;
  /** the source line, without its newline, when known */
  source?: string;
}

export class TopologyError extends OnionctlError {
  readonly kind = 'topology' as const;
  constructor(readonly diagnostics: Diagnostic[]) {
    super(diagnostics.map(formatDiagnosticHeader).join('\n'));
  }
}

/** the message may quote the file (an unknown key): escaped and bounded like the excerpt */
export function formatDiagnosticHeader(d: Diagnostic): string {
  return `${escapeControl(d.file, 300)}:${d.line}:${d.col}: ${escapeControl(d.message, 500)}`;
}

/** how much of a source line is shown: the part around the column */
export const EXCERPT_CHARS = 100;
const BEFORE = 40;

/**
 * The source line around the column, at most EXCERPT_CHARS of it, every control character
 * escaped (a binary file or a one-megabyte line must not flood or drive the terminal), with the
 * caret still under the column.
 */
export function excerpt(source: string, col: number): { text: string; lead: string } {
  const at = Math.max(0, Math.min(col - 1, source.length));
  // a line that fits is shown whole; a longer one from where the column can still be seen
  const i0 = source.length <= EXCERPT_CHARS || at < EXCERPT_CHARS - 20 ? 0 : at - BEFORE;
  const i1 = Math.min(source.length, i0 + EXCERPT_CHARS);
  let text = i0 > 0 ? '...' : '';
  let lead = i0 > 0 ? '   ' : '';
  for (let i = i0; i < i1; i++) {
    const ch = source[i]!;
    // tabs stay tabs, so that the caret line lines up; everything unsafe is shown escaped
    const shown = ch === '\t' ? '\t' : escapeControl(ch);
    text += shown;
    if (i < at) lead += ch === '\t' ? '\t' : ' '.repeat(shown.length);
  }
  if (i1 < source.length) text += ` ... (${source.length - i1} more characters)`;
  return { text, lead };
}

export function formatDiagnostic(d: Diagnostic): string {
  const head = formatDiagnosticHeader(d);
  if (d.source === undefined) return head;
  const num = String(d.line);
  const pad = ' '.repeat(num.length);
  const x = excerpt(d.source, d.col);
  return `${head}\n ${num} | ${x.text}\n ${pad} | ${x.lead}^`;
}

/** Maps offsets in a text to 1-based line and column. */
export class SourceText {
  private readonly starts: number[] = [0];
  constructor(
    readonly file: string,
    readonly text: string,
  ) {
    for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) === 10) this.starts.push(i + 1);
  }

  at(offset: number, message: string): Diagnostic {
    const o = Math.max(0, Math.min(offset, this.text.length));
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid]! <= o) lo = mid;
      else hi = mid - 1;
    }
    const start = this.starts[lo]!;
    const nl = this.text.indexOf('\n', start);
    const source = this.text.slice(start, nl === -1 ? undefined : nl).replace(/\r$/, '');
    return { file: this.file, line: lo + 1, col: o - start + 1, message, source };
  }
}
