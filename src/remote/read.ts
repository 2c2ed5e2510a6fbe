/**
 * Reads a router back in one remote command (one SSH channel, one shell): xfrm states and
 * policies, routes, lo addresses, iptables (iptables-save, falling back to iptables-legacy-save
 * where the first does not work, as on kernels without nf_tables), nft, the sysctls onionctl
 * sets and, on request, /proc/net/xfrm_stat. Output is split into sections by marker lines.
 *
 * `ip -s xfrm state` prints keys: the text is parsed in memory (keys become fingerprints) and
 * never logged or stored.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { packageRoot } from '../util/files.js';
import { escapeControl } from '../util/text.js';
import { observeNode, type ObservedNode, type OwnershipContext, type ReadbackOutputs } from '../readback/observed.js';
import { TransportError, type Transport } from './transport.js';

export interface RemoteRead {
  outputs: ReadbackOutputs;
  /** sysctl key -> value ("" when the key does not exist) */
  sysctls: Map<string, string>;
  /** which iptables works on the router; undefined: none does */
  iptables?: { save: string; restore: string };
  /** nft exists and can list the ruleset */
  nft: boolean;
  xfrmStat?: string;
  /** the router's clock when read, "YYYY-MM-DD HH:MM:SS" (local time, as SA times print) */
  clock?: string;
}

const MARK = '@@onionctl@@';

export interface ReadOptions {
  sysctlKeys?: string[];
  xfrmStat?: boolean;
}

const SYSCTL_KEY = /^[a-z0-9_.-]+$/i;

let shipped: string | undefined;
/** src/remote/readback.sh, the script itself (shipped beside the code, linted by shellcheck in the tests) */
export function readbackScriptFile(): string {
  return (shipped ??= readFileSync(path.join(packageRoot(), 'src', 'remote', 'readback.sh'), 'utf8'));
}

/** The script as sent to `sh -s`: a header with this read's parameters, then readback.sh. */
export function readScript(o: ReadOptions = {}): string {
  const args: string[] = [];
  for (const k of o.sysctlKeys ?? []) {
    if (!SYSCTL_KEY.test(k)) throw new Error(`internal: bad sysctl key ${k}`);
    args.push(k, `/proc/sys/${k.replace(/\./g, '/')}`);
  }
  const header = [`set --${args.map((a) => ` '${a}'`).join('')}`, `ONIONCTL_XFRM_STAT=${o.xfrmStat ? 1 : 0}`];
  return header.join('\n') + '\n' + readbackScriptFile();
}

/** No line that ip, iptables-save or nft prints comes near this. */
export const MAX_READBACK_LINE = 64 * 1024;
// C0 controls but tab and newline, DEL, C1 controls, and the bidi and zero-width format characters
const READBACK_UNSAFE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]/;

export function parseReadOutput(text: string, node: string): RemoteRead {
  const sections = new Map<string, string>();
  let cur: string | undefined;
  let buf: string[] = [];
  const lines = text.split('\n');
  // what real tools print has no control characters and no endless lines: such output is not
  // parsed at all (it could only be a broken or hostile router)
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.length > MAX_READBACK_LINE) throw new TransportError(node, `${node}: read-back line ${i + 1} is ${line.length} characters long; no tool onionctl reads prints that`);
    const bad = READBACK_UNSAFE.exec(line);
    if (bad) {
      throw new TransportError(node, `${node}: read-back line ${i + 1} holds a control character (U+${bad[0].codePointAt(0)!.toString(16).padStart(4, '0').toUpperCase()}); no tool onionctl reads prints that`);
    }
  }
  for (const line of lines) {
    if (line.startsWith(`${MARK} `)) {
      if (cur !== undefined) sections.set(cur, buf.join('\n'));
      cur = line.slice(MARK.length + 1).trim();
      buf = [];
    } else if (cur !== undefined) buf.push(line);
  }
  if (!sections.has('end') && cur !== 'end') throw new TransportError(node, `${node}: reading the router back was cut short`);
  const need = (k: string): string => {
    const v = sections.get(k);
    if (v === undefined) throw new TransportError(node, `${node}: read-back lacks ${k}`);
    if (v.includes('@@onionctl-fail@@')) throw new TransportError(node, `${node}: reading ${k} failed on the router`);
    return v + '\n';
  };
  const outputs: ReadbackOutputs = {
    xfrmState: need('xfrmState'),
    xfrmPolicy: need('xfrmPolicy'),
    routes: need('routes'),
    addresses: need('addresses'),
  };
  const r: RemoteRead = { outputs, sysctls: new Map(), nft: false };
  const ipt = sections.get('iptables') ?? '';
  // the variant names the command run on the router: only the two onionctl knows
  const m = /^@@variant (iptables|iptables-legacy)\n/.exec(ipt.endsWith('\n') ? ipt : ipt + '\n');
  if (!m && ipt.startsWith('@@variant ')) throw new TransportError(node, `${node}: the read-back names an iptables variant onionctl does not know: ${escapeControl(ipt.split('\n')[0]!.slice(10), 64)}`);
  if (m) {
    r.iptables = { save: `${m[1]}-save`, restore: `${m[1]}-restore` };
    outputs.iptablesSave = ipt.slice(m[0].length);
  }
  const nft = sections.get('nft') ?? '';
  if (nft.startsWith('@@nft ok')) {
    r.nft = true;
    outputs.nft = nft.replace(/^@@nft ok\n?/, '');
  }
  for (const line of (sections.get('sysctls') ?? '').split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) r.sysctls.set(line.slice(0, i), line.slice(i + 1).trim());
  }
  if (sections.has('xfrmStat')) r.xfrmStat = sections.get('xfrmStat')!;
  const clock = /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/m.exec(sections.get('clock') ?? '');
  if (clock) r.clock = clock[0];
  return r;
}

/** One router as onionctl sees it: the raw read (for apply's iptables variant) and its objects, split by owner. */
export interface NodeReadback {
  read: RemoteRead;
  /** observeNode() of the read, with `sysctls` filled in */
  observed: ObservedNode;
}

/**
 * Reads one router: one `sh -s` with the read-back script on stdin, parsed and split into
 * onionctl's objects and foreign ones. The one read path of apply, plan --live, destroy, status,
 * rekey and rotate.
 */
export async function readNode(t: Transport, node: string, o: ReadOptions, ctx: OwnershipContext): Promise<NodeReadback> {
  const r = await t.exec(['sh', '-s'], { stdin: readScript(o) });
  if (r.exitCode !== 0) {
    throw new TransportError(node, `${t.label}: reading the router back failed (exit ${r.exitCode}): ${r.stderr.trim().split('\n').slice(0, 3).join('; ')}`);
  }
  const read = parseReadOutput(r.stdout, node);
  const observed = observeNode(node, read.outputs, ctx);
  observed.sysctls = Object.fromEntries(read.sysctls);
  return { read, observed };
}
