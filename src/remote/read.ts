/**
 * Reads a router back in one remote command (one SSH channel, one shell): xfrm states and
 * policies, routes, lo addresses, iptables (iptables-save, falling back to iptables-legacy-save
 * where the first does not work, as on kernels without nf_tables), nft, the sysctls onionctl
 * sets and, on request, /proc/net/xfrm_stat. Output is split into sections by marker lines.
 *
 * `ip -s xfrm state` prints keys: the text is parsed in memory (keys become fingerprints) and
 * never logged or stored.
 */
import { escapeControl } from '../util/text.js';
import type { ReadbackOutputs } from '../readback/observed.js';
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
/** a newline inside a quoted `case` pattern: a line that starts with it */
const NL = '\n';

export function readScript(o: ReadOptions = {}): string {
  const sec = (name: string) => `echo '${MARK} ${name}'`;
  const lines = [
    'export LC_ALL=C',
    sec('clock'),
    // the router's clock, in the zone `ip -s xfrm state` prints SA add/use times in
    "date '+%Y-%m-%d %H:%M:%S'",
    sec('xfrmState'),
    'ip -s xfrm state || echo "@@onionctl-fail@@"',
    sec('xfrmPolicy'),
    'ip xfrm policy || echo "@@onionctl-fail@@"',
    sec('routes'),
    'ip route show table main || echo "@@onionctl-fail@@"',
    sec('addresses'),
    'ip -4 addr show dev lo || echo "@@onionctl-fail@@"',
    sec('iptables'),
    // which iptables holds onionctl's chains; else the one in use (iptables-nft warns when legacy
    // tables exist); its name tells which restore to use. Matching is done with `case` and the
    // legacy tables are read only when needed: every process start counts on a small router (and
    // a large fraction of a second in an emulated one).
    'a=; b=; ra=1; rb=1; v=',
    'if command -v iptables-save >/dev/null 2>&1; then a=$(iptables-save 2>/dev/null); ra=$?; fi',
    `if [ $ra = 0 ]; then case "$a" in ':ONIONCTL-'*|*'${NL}:ONIONCTL-'*) v=iptables ;; esac; fi`,
    'if [ -z "$v" ] && command -v iptables-legacy-save >/dev/null 2>&1; then b=$(iptables-legacy-save 2>/dev/null); rb=$?; fi',
    `if [ -z "$v" ] && [ $rb = 0 ]; then case "$b" in ':ONIONCTL-'*|*'${NL}:ONIONCTL-'*) v=iptables-legacy ;; esac; fi`,
    'if [ -z "$v" ] && [ $ra = 0 ]; then case "$a" in *"legacy tables present"*) ;; *) v=iptables ;; esac; fi',
    'if [ -z "$v" ] && [ $rb = 0 ]; then v=iptables-legacy; fi',
    'if [ -z "$v" ] && [ $ra = 0 ]; then v=iptables; fi',
    'if [ "$v" = iptables ]; then echo "@@variant iptables"; printf "%s\\n" "$a"; elif [ -n "$v" ]; then echo "@@variant iptables-legacy"; printf "%s\\n" "$b"; fi',
    sec('nft'),
    'if command -v nft >/dev/null 2>&1 && out=$(nft list ruleset 2>/dev/null); then echo "@@nft ok"; printf "%s\\n" "$out"; else echo "@@nft none"; fi',
    sec('sysctls'),
  ];
  for (const k of o.sysctlKeys ?? []) {
    if (!SYSCTL_KEY.test(k)) throw new Error(`internal: bad sysctl key ${k}`);
    const p = `/proc/sys/${k.replace(/\./g, '/')}`;
    // `read` is a shell builtin: no process per key (`val`, not `v`: that one holds the iptables variant)
    lines.push(`val=; read -r val 2>/dev/null < ${p}; printf '%s=%s\\n' '${k}' "$val"`);
  }
  if (o.xfrmStat) lines.push(sec('xfrmStat'), 'cat /proc/net/xfrm_stat 2>/dev/null || true');
  lines.push(sec('end'));
  return lines.join('\n') + '\n';
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

export async function readRouter(t: Transport, node: string, o: ReadOptions = {}): Promise<RemoteRead> {
  const r = await t.exec(['sh', '-s'], { stdin: readScript(o) });
  if (r.exitCode !== 0) {
    throw new TransportError(node, `${t.label}: reading the router back failed (exit ${r.exitCode}): ${r.stderr.trim().split('\n').slice(0, 3).join('; ')}`);
  }
  return parseReadOutput(r.stdout, node);
}
