/**
 * Errors that point into the user's file, netplan style:
 *
 *   topology.yaml:12:15: routers[1].operator: unknown operator "acme2" (known: acme, globex)
 *      12 |     operator: acme2
 *         |               ^
 */
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

export class TopologyError extends Error {
  constructor(readonly diagnostics: Diagnostic[]) {
    super(diagnostics.map(formatDiagnosticHeader).join('\n'));
    this.name = 'TopologyError';
  }
}

export function formatDiagnosticHeader(d: Diagnostic): string {
  return `${d.file}:${d.line}:${d.col}: ${d.message}`;
}

export function formatDiagnostic(d: Diagnostic): string {
  const head = formatDiagnosticHeader(d);
  if (d.source === undefined) return head;
  const num = String(d.line);
  const pad = ' '.repeat(num.length);
  // Tabs in the source would shift the caret; keep them as tabs under the caret too.
  const lead = d.source.slice(0, d.col - 1).replace(/[^\t]/g, ' ');
  return `${head}\n ${num} | ${d.source}\n ${pad} | ${lead}^`;
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
