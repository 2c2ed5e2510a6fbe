/** `onionctl fmt FILE... [--check]` (topology/format.ts): in place, atomically, keeping each file's mode. */
import { promises as fs } from 'node:fs';
import { formatTopologyText } from '../topology/format.js';
import { UserError } from '../util/errors.js';
import { MAX_TOPOLOGY_BYTES } from './context.js';
import { writeFileAtomic } from '../util/files.js';

export async function fmtCommand(files: string[], opts: { check?: boolean }): Promise<number> {
  const todo: { file: string; text: string; mode: number }[] = [];
  // every file is read and formatted before any is written: one bad file changes none
  for (const file of files) {
    let st;
    let text: string;
    try {
      st = await fs.stat(file);
      if (!st.isFile()) throw new UserError(`${file} is not a regular file`);
      if (st.size > MAX_TOPOLOGY_BYTES) throw new UserError(`${file} is larger than any topology onionctl reads`);
      text = await fs.readFile(file, 'utf8');
    } catch (e) {
      if (e instanceof UserError) throw e;
      throw new UserError(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    const out = formatTopologyText(text, file);
    if (out !== text) todo.push({ file, text: out, mode: st.mode & 0o777 });
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
