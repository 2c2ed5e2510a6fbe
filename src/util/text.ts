/**
 * Text that came from a router or a file, made safe for a terminal: control characters (C0 but
 * newline and tab, DEL, C1) and the Unicode bidirectional overrides are written as visible
 * escapes, so a router cannot clear the screen, move the cursor, set the clipboard (OSC 52) or
 * reorder what the operator reads; and the length is bounded. Pure.
 */

// C0 except \t and \n, DEL, C1, and U+202A-U+202E / U+2066-U+2069 (bidi embeddings, isolates)
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;

/** Default bound for text quoted in a message (a line or a few). */
export const QUOTE_MAX = 2_000;

export function escapeControl(text: string, max = QUOTE_MAX): string {
  const cut = text.length > max ? text.slice(0, max) : text;
  const safe = cut.replace(UNSAFE, (c) => {
    const n = c.codePointAt(0)!;
    return n <= 0xff ? `\\x${n.toString(16).padStart(2, '0')}` : `\\u{${n.toString(16)}}`;
  });
  return text.length > max ? `${safe}... (${text.length - max} more characters)` : safe;
}

/** true when the text holds nothing escapeControl would change (apart from its length) */
export function isTerminalSafe(text: string): boolean {
  UNSAFE.lastIndex = 0;
  return !UNSAFE.test(text);
}
