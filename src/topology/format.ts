/**
 * `onionctl fmt`: a topology file in one canonical layout (the yaml library's: two-space block
 * indentation, `key: value`, flow collections as `{ a: b }` and `[ a, b ]`, one space before a
 * trailing comment), with every comment and every value kept. Formatting never changes what the
 * file means: the result is parsed again and must give the same value, or nothing is written.
 * Pure: the caller reads and writes the file.
 */
import { isDeepStrictEqual } from 'node:util';
import { parseDocument } from 'yaml';
import { SourceText, TopologyError } from './diagnostics.js';

const OPTIONS = { lineWidth: 0 } as const;

/** The canonical text of `text`; a TopologyError (file:line:col) when it is not YAML onionctl reads. */
export function formatTopologyText(text: string, file: string): string {
  const source = new SourceText(file, text);
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: false, strict: true });
  if (doc.errors.length > 0) throw new TopologyError(doc.errors.map((e) => source.at(e.pos[0], `YAML: ${e.message.split('\n')[0]!}`)));
  const out = doc.toString(OPTIONS);
  const before = doc.toJS({ maxAliasCount: 100 }) as unknown;
  const after = parseDocument(out, { uniqueKeys: true, strict: true }).toJS({ maxAliasCount: 100 }) as unknown;
  if (!isDeepStrictEqual(before, after)) throw new TopologyError([source.at(0, 'formatting would change what this file means; it is left as it is (please report this)')]);
  return out;
}
