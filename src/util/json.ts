/**
 * JSON from files (state, key store, high-water mark, saved plans): parsed without letting a key
 * named `__proto__` through (schema libraries and object spreads treat it unlike any other key)
 * and with a clear error for nesting too deep to walk.
 */
import { escapeControl } from './text.js';
import { OnionctlError } from './errors.js';

/** caught by the file readers (util/files.ts parseChecked), which report a UserError */
export class JsonError extends OnionctlError {
  readonly kind = 'uncaught' as const;
}

export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text, (key, value: unknown) => {
      if (key === '__proto__') throw new JsonError('a key named "__proto__"');
      return value;
    });
  } catch (e) {
    if (e instanceof JsonError) throw e;
    if (e instanceof RangeError) throw new JsonError('nested too deeply');
    // the parser's message quotes the text: escaped, bounded
    throw new JsonError(escapeControl((e as Error).message, 200));
  }
}
