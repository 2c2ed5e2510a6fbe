/** `onionctl fmt FILE... [--check]` (topology/format.ts): in place, atomically, keeping each file's mode. */
import { promises as fs } from 'node:fs';
import { formatTopologyText } from '../topology/format.js';
import { UserError } from '../util/errors.js';
import { readTopologyText } from './context.js';
import { writeFileAtomic } from '../util/files.js';

export async function fmtCommand(files: string[], opts: { check?: boolean }): Promise<number> {
  const todo: { file: string; text: string; mode: number }[] = [];
  // every file is read and formatted before any is written: one bad file changes none
  for (const file of files) {
    // rewritten in place: only a regular file (readTopologyText also reads a pipe)
    const st = await fs.stat(file).catch(() => undefined);
    if (st && !st.isFile()) throw new UserError(`${file} is not a regular file`);
    const text = await readTopologyText(file);
    const out = formatTopologyText(text, file);
    if (out !== text) todo.push({ file, text: out, mode: st!.mode & 0o777 });
  }
  if (opts.check) {
    for (const t of todo) process.stdout.write(`${t.file}\n`);
    if (todo.length > 0) process.stderr.write(`onionctl: ${todo.length} of ${files.length} file${files.length === 1 ? '' : 's'} not formatted; run onionctl fmt on ${todo.length === 1 ? 'it' : 'them'}\n`);
    return todo.length > 0 ? 1 : 0;
  }
  for (const t of todo) {
    // through a symbolic link to the file itself (the link stays a link)
    await writeFileAtomic(await fs.realpath(t.file), t.text, t.mode);
    process.stdout.write(`${t.file}\n`);
  }
  return 0;
}
