/**
 * Parsers for `ip [-s] xfrm state`, `ip [-s] xfrm policy` and /proc/net/xfrm_stat, as printed by
 * iproute2 (which has no JSON output for xfrm). Pure: text in, records out.
 *
 * `ip xfrm state` prints every SA's keys. This parser reads each key only to compute
 * fingerprint() (src/keys/kdf.ts), wipes the bytes it decoded, and never copies a key, or a line
 * that held one, into a record or an error message.
 */
import { fingerprint } from '../keys/kdf.js';
import { escapeControl } from '../util/text.js';
import type { SaLimits } from '../keys/lifetimes.js';
import { PROFILES } from '../keys/profiles.js';
import type { CryptoProfileName } from '../topology/schema.js';
import { ReadbackError, type XfrmAlgo, type XfrmPolicyRecord, type XfrmStateCounters, type XfrmStateRecord, type XfrmTmplRecord } from './records.js';

const familyOf = (addr: string): 4 | 6 => (addr.includes(':') ? 6 : 4);

/** "0x4f000009(1325400073)" or "1325400073(0x4f000009)" -> the number before the parenthesis */
function num(token: string | undefined, what: string, line: number): number {
  const t = (token ?? '').replace(/\(.*$/, '').replace(/,$/, '');
  const n = /^0x[0-9a-f]+$/i.test(t) ? Number.parseInt(t.slice(2), 16) : /^\d+$/.test(t) ? Number(t) : Number.NaN;
  if (!Number.isFinite(n)) throw new ReadbackError(`expected a number for ${what}, got ${JSON.stringify(safeWord(token ?? ''))}`, line);
  return n;
}

/** A token safe to repeat in an error message: never a long hex run (key material). */
function safeWord(t: string): string {
  return /[0-9a-f]{9,}/i.test(t) ? '<hex>' : escapeControl(t.slice(0, 40));
}

/** `key value key value` pairs of a line, for the fields that come in any order */
function pairs(tokens: string[]): Map<string, string> {
  const m = new Map<string, string>();
  for (let i = 0; i + 1 < tokens.length; i += 2) m.set(tokens[i]!, tokens[i + 1]!);
  return m;
}

interface Block {
  header: string;
  headerLine: number;
  lines: { text: string; no: number }[];
}

/** Splits the output into objects: a line at column 0 starts one, indented lines belong to it. */
function blocks(text: string): Block[] {
  const out: Block[] = [];
  text.split('\n').forEach((raw, i) => {
    if (raw.trim() === '') return;
    if (!/^\s/.test(raw)) out.push({ header: raw.trim(), headerLine: i + 1, lines: [] });
    else if (out.length > 0) out[out.length - 1]!.lines.push({ text: raw.trim(), no: i + 1 });
    else throw new ReadbackError('indented line before the first object', i + 1);
  });
  return out;
}

// ------------------------------------------------------------------------------------------
// states

const ALGO_KINDS = new Set(['aead', 'enc', 'auth', 'auth-trunc', 'comp']);
/**
 * Lines of `ip xfrm state` that carry configuration onionctl never sets (iproute2 ip/ipxfrm.c,
 * up to 7.1): encapsulation, care-of address, interface id, output mark, security context.
 */
const FOREIGN_STATE_ITEMS = new Set(['encap', 'coa', 'if_id', 'output-mark', 'security']);

interface KeyPart {
  kind: XfrmAlgo['kind'];
  bytes: Buffer;
}

function decodeKey(token: string | undefined): Buffer | undefined {
  if (!token || !/^0x([0-9a-f]{2})+$/i.test(token)) return undefined;
  return Buffer.from(token.slice(2), 'hex');
}

function detectProfile(algos: XfrmAlgo[]): CryptoProfileName | undefined {
  const sig = algos
    .map((a) => `${a.kind} ${a.name} ${a.keyBits}${a.icvBits !== undefined ? ` ${a.icvBits}` : ''}`)
    .sort()
    .join(' + ');
  const gcm = PROFILES['aes-gcm'];
  if (sig === `aead rfc4106(gcm(aes)) ${gcm.keyBytes * 8} ${gcm.icvLen * 8}`) return 'aes-gcm';
  const cbc = PROFILES['aes-cbc-hmac-sha1'];
  if (sig === `auth-trunc hmac(sha1) 160 ${cbc.icvLen * 8} + enc cbc(aes) ${(cbc.keyBytes - 20) * 8}`) return 'aes-cbc-hmac-sha1';
  return undefined;
}

/** The key as the profile's KeySource lays it out (see keys/profiles.ts): GCM whole; CBC enc || auth. */
function profileKey(profile: CryptoProfileName, parts: KeyPart[]): Buffer | undefined {
  if (profile === 'aes-gcm') return parts.find((p) => p.kind === 'aead')?.bytes;
  const enc = parts.find((p) => p.kind === 'enc');
  const auth = parts.find((p) => p.kind === 'auth-trunc' || p.kind === 'auth');
  return enc && auth ? Buffer.concat([enc.bytes, auth.bytes]) : undefined;
}

function parseStateBlock(b: Block): XfrmStateRecord {
  const h = /^src (\S+) dst (\S+)$/.exec(b.header);
  if (!h) throw new ReadbackError(`expected "src ADDR dst ADDR", got ${JSON.stringify(b.header.split(/\s+/).map(safeWord).join(' '))}`, b.headerLine);
  const rec: XfrmStateRecord = {
    family: familyOf(h[1]!),
    src: h[1]!,
    dst: h[2]!,
    proto: '',
    spi: 0,
    reqid: 0,
    mode: '',
    replayWindow: 0,
    esn: false,
    flags: [],
    algos: [],
    other: [],
    extraFlags: [],
  };
  const keys: KeyPart[] = [];
  let section: 'none' | 'esn' | 'lifetime-config' | 'lifetime-current' | 'stats' = 'none';
  let sawProto = false;
  const soft: SaLimits = {};
  const hard: SaLimits = {};
  let sawLifetime = false;
  const counters: Partial<XfrmStateCounters> = {};
  try {
    for (const { text, no } of b.lines) {
      const t = text.split(/\s+/);
      const first = t[0]!;
      // sections whose lines start with words that also start other lines
      if (section === 'stats' && first === 'replay-window') {
        const p = pairs(t);
        counters.replayWindowErrors = num(p.get('replay-window'), 'stats replay-window', no);
        counters.replayErrors = num(p.get('replay'), 'stats replay', no);
        counters.integrityFailed = num(p.get('failed'), 'stats failed', no);
        continue;
      }
      if (section === 'lifetime-current') {
        const m = /^(\d+)\(bytes\), (\d+)\(packets\)$/.exec(text);
        if (m) {
          counters.bytes = Number(m[1]);
          counters.packets = Number(m[2]);
          continue;
        }
        const u = /^add (.+?) use (.+)$/.exec(text);
        if (u) {
          counters.added = u[1]!;
          counters.used = u[2]!;
          continue;
        }
      }
      if (section === 'lifetime-config') {
        // limit: soft (INF)(bytes), hard 274877906944(bytes)   |   expire add: soft 3600(sec), hard 0(sec)
        const m = /^limit: soft (\S+?)\((bytes|packets)\), hard (\S+?)\((bytes|packets)\)$/.exec(text);
        if (m) {
          setLimit(soft, m[2] as 'bytes' | 'packets', limitValue(m[1]!, no));
          setLimit(hard, m[4] as 'bytes' | 'packets', limitValue(m[3]!, no));
          continue;
        }
        const e = /^expire (add|use): soft (\d+)\(sec\), hard (\d+)\(sec\)$/.exec(text);
        if (e) {
          const k = e[1] === 'add' ? 'addSeconds' : 'useSeconds';
          // 0 seconds is "no limit" to the kernel
          setLimit(soft, k, Number(e[2]) || undefined);
          setLimit(hard, k, Number(e[3]) || undefined);
          continue;
        }
        if (first === 'limit:' || first === 'expire') throw new ReadbackError(`unexpected lifetime line ${JSON.stringify(t.map(safeWord).join(' '))}`, no);
      }
      if (section === 'esn') {
        if (first === 'seq-hi') {
          const p = pairs(t.map((x) => x.replace(/,$/, '')));
          rec.seq = num(p.get('seq'), 'esn seq', no);
          rec.oseq = num(p.get('oseq'), 'esn oseq', no);
          continue;
        }
        if (first === 'replay_window') {
          rec.replayWindow = num(t[1], 'esn replay_window', no);
          continue;
        }
        if (/^([0-9a-f]{8} ?)+$/i.test(text)) continue; // the bitmap words
      }
      section = 'none';
      if (first === 'proto') {
        const p = pairs(t);
        rec.proto = p.get('proto')!;
        rec.spi = num(p.get('spi'), 'spi', no);
        if (rec.spi > 0xffffffff) throw new ReadbackError(`an SPI of more than 32 bits (${JSON.stringify(safeWord(p.get('spi') ?? ''))})`, no);
        rec.reqid = num(p.get('reqid') ?? '0', 'reqid', no);
        rec.mode = p.get('mode') ?? '';
        sawProto = true;
      } else if (first === 'replay-window') {
        if (!rec.esn) rec.replayWindow = num(t[1], 'replay-window', no);
        // replay-window N [seq 0x..] [flag F...] [extra_flag X...] [(0xMASK)]
        let into: string[] | undefined;
        for (const x of t.slice(2)) {
          if (x === 'flag') into = rec.flags;
          else if (x === 'extra_flag') into = rec.extraFlags;
          else if (x.startsWith('(') || x === '' || x === 'seq') into = x === 'seq' ? undefined : into;
          else into?.push(x);
        }
      } else if (first === 'dir') {
        // iproute2 6.11+: "dir in", "dir out", "dir other (N)"
        rec.saDir = t.slice(1).join(' ');
      } else if (first === 'pcpu-num') {
        rec.pcpuNum = num(t[1], 'pcpu-num', no);
      } else if (first === 'lastused') {
        // a time, "-", or iproute2's "invalid-time" for one localtime() cannot convert
        rec.lastUsed = t.slice(1).join(' ');
      } else if (first === 'mark') {
        rec.mark = t[1];
      } else if (ALGO_KINDS.has(first)) {
        const kind = first as XfrmAlgo['kind'];
        const name = t[1] ?? '';
        const key = decodeKey(t[2]);
        const rest = t.slice(key || t[2]?.startsWith('0x') ? 3 : 2);
        let keyBits = key ? key.length * 8 : 0;
        const bits = /^\((\d+)$/.exec(rest[0] ?? '');
        if (bits && rest[1] === 'bits)') {
          keyBits = Number(bits[1]);
          rest.splice(0, 2);
        }
        const a: XfrmAlgo = { kind, name, keyBits };
        if ((kind === 'aead' || kind === 'auth-trunc') && rest[0] !== undefined) a.icvBits = num(rest[0], `${kind} length`, no);
        rec.algos.push(a);
        if (key) keys.push({ kind, bytes: key });
      } else if (first === 'anti-replay') {
        if (t[1] === 'esn') {
          rec.esn = true;
          section = 'esn';
        } else {
          const p = pairs(t.slice(2).map((x) => x.replace(/,$/, '')));
          if (p.has('seq')) rec.seq = num(p.get('seq'), 'anti-replay seq', no);
          if (p.has('oseq')) rec.oseq = num(p.get('oseq'), 'anti-replay oseq', no);
        }
      } else if (first === 'sel') {
        const p = pairs(t.slice(1));
        const extra: string[] = [];
        for (let i = 5; i + 1 < t.length; i += 2) if (t[i] !== 'uid') extra.push(`${t[i]} ${t[i + 1]}`);
        rec.sel = { src: p.get('src') ?? '', dst: p.get('dst') ?? '', extra };
      } else if (first === 'lifetime') {
        section = t[1] === 'config:' ? 'lifetime-config' : 'lifetime-current';
        if (section === 'lifetime-config') sawLifetime = true;
      } else if (first === 'stats:') {
        section = 'stats';
      } else if (first === 'tfcpad') {
        const n = num(t[1], 'tfcpad', no);
        if (n > 0) rec.tfcpad = n;
      } else if (first === 'crypto') {
        if (!rec.other.includes('offload')) rec.other.push('offload');
      } else if (FOREIGN_STATE_ITEMS.has(first)) {
        // configuration onionctl never sets: name only (a value could be secret); the diff
        // reports it on onionctl's SAs
        if (!rec.other.includes(first)) rec.other.push(first);
      } else {
        // a line this parser does not know could be configuration or state: refuse to guess,
        // rather than compare (and rekey) on it or silently drop it
        throw new ReadbackError(
          `unknown line in state ${rec.src} -> ${rec.dst}: ${JSON.stringify(t.slice(0, 3).map(safeWord).join(' '))} ` +
            '(this iproute2 prints something onionctl does not know yet; see docs/kernels.md)',
          no,
        );
      }
    }
    if (!sawProto) throw new ReadbackError(`state ${rec.src} -> ${rec.dst} has no "proto ... spi ..." line`, b.headerLine);
    if (sawLifetime) rec.lifetime = { soft, hard };
    if (counters.bytes !== undefined || counters.replayErrors !== undefined) {
      rec.counters = {
        bytes: counters.bytes ?? 0,
        packets: counters.packets ?? 0,
        ...(counters.added !== undefined ? { added: counters.added } : {}),
        ...(counters.used !== undefined ? { used: counters.used } : {}),
        replayWindowErrors: counters.replayWindowErrors ?? 0,
        replayErrors: counters.replayErrors ?? 0,
        integrityFailed: counters.integrityFailed ?? 0,
      };
    }
    const profile = detectProfile(rec.algos);
    if (profile) {
      rec.profile = profile;
      const k = profileKey(profile, keys);
      if (k && k.length === PROFILES[profile].keyBytes) {
        rec.keyFingerprint = fingerprint(k);
        k.fill(0);
      }
    }
  } finally {
    for (const k of keys) k.bytes.fill(0);
  }
  return rec;
}

/** "(INF)" -> undefined (no limit), "1234" -> 1234 */
function limitValue(v: string, line: number): number | undefined {
  if (v === '(INF)') return undefined;
  if (!/^\d+$/.test(v)) throw new ReadbackError(`expected a number or (INF) as a lifetime limit, got ${JSON.stringify(safeWord(v))}`, line);
  return Number(v);
}

function setLimit(l: SaLimits, k: keyof SaLimits, v: number | undefined): void {
  if (v === undefined) delete l[k];
  else l[k] = v;
}

/**
 * A time as `ip -s xfrm state` prints it ("2026-11-24 07:56:19", the router's local time) ->
 * seconds since 1970 on the same naive scale (read as if UTC). Two such times of one router
 * subtract to a duration; compare them with the router's own clock, not the controller's.
 * undefined for "-" (never used) or anything else.
 */
export function xfrmTimeSeconds(text: string | undefined): number | undefined {
  const m = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})$/.exec(text?.trim() ?? '');
  if (!m) return undefined;
  const ms = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6]));
  return Number.isFinite(ms) ? ms / 1000 : undefined;
}

/** Parses `ip xfrm state` or `ip -s xfrm state`. Keys become fingerprints; nothing else is kept of them. */
export function parseXfrmStates(text: string): XfrmStateRecord[] {
  return blocks(text).map(parseStateBlock);
}

// ------------------------------------------------------------------------------------------
// policies

function parsePolicyBlock(b: Block): XfrmPolicyRecord {
  const ht = b.header.split(/\s+/);
  if (ht[0] !== 'src' || ht[2] !== 'dst' || ht.length < 4) {
    throw new ReadbackError(`expected "src SEL dst SEL ...", got ${JSON.stringify(ht.map(safeWord).join(' '))}`, b.headerLine);
  }
  const rec: XfrmPolicyRecord = {
    family: familyOf(ht[1]!),
    src: ht[1]!,
    dst: ht[3]!,
    selExtra: [],
    dir: '',
    action: 'allow',
    priority: 0,
    ptype: 'main',
    flags: [],
    tmpls: [],
    socket: false,
    other: [],
  };
  for (let i = 4; i + 1 < ht.length; i += 2) {
    if (ht[i] === 'proto') rec.proto = ht[i + 1]!;
    else if (ht[i] !== 'uid') rec.selExtra.push(`${ht[i]} ${ht[i + 1]}`);
  }
  let section: 'none' | 'lifetime' | 'tmpl' = 'none';
  let tmpl: XfrmTmplRecord | undefined;
  for (const { text, no } of b.lines) {
    const t = text.split(/\s+/);
    const first = t[0]!;
    if (first === 'dir' || first === 'socket') {
      section = 'none';
      rec.socket = first === 'socket';
      rec.dir = t[1] ?? '';
      // what the kernel prints: in, out, fwd (and for sockets the same words); anything else is not a policy
      if (!/^(?:in|out|fwd)$/.test(rec.dir)) throw new ReadbackError(`policy direction ${JSON.stringify(safeWord(rec.dir))} is not in, out or fwd`, no);
      const p = pairs(t.slice(2));
      if (p.get('action') === 'block') rec.action = 'block';
      if (p.has('index')) rec.index = num(p.get('index'), 'index', no);
      rec.priority = num(p.get('priority') ?? '0', 'priority', no);
      rec.ptype = p.get('ptype') ?? 'main';
      const f = t.indexOf('flag');
      if (f >= 0) for (const x of t.slice(f + 1)) if (!x.startsWith('(') && x !== '') rec.flags.push(x);
    } else if (first === 'mark') {
      rec.mark = t[1]!;
    } else if (first === 'if_id') {
      rec.ifId = t[1]!;
    } else if (first === 'lifetime') {
      section = 'lifetime';
    } else if (section === 'lifetime' && /^(limit:|expire|add|\d+\(bytes\))/.test(first)) {
      continue;
    } else if (first === 'tmpl') {
      section = 'tmpl';
      const p = pairs(t.slice(1));
      const src = p.get('src') ?? '';
      tmpl = { family: familyOf(src || (p.get('dst') ?? '')), src, dst: p.get('dst') ?? '', proto: '', reqid: 0, mode: '', level: 'required' };
      rec.tmpls.push(tmpl);
    } else if (section === 'tmpl' && tmpl && first === 'proto') {
      const p = pairs(t);
      tmpl.proto = p.get('proto')!;
      if (p.has('spi')) tmpl.spi = num(p.get('spi'), 'tmpl spi', no);
      tmpl.reqid = num(p.get('reqid') ?? '0', 'tmpl reqid', no);
      tmpl.mode = p.get('mode') ?? '';
    } else if (section === 'tmpl' && tmpl && first === 'level') {
      tmpl.level = t[1] === 'use' ? 'use' : 'required';
    } else if (section === 'tmpl' && first === 'enc-mask') {
      continue;
    } else if (first === 'security' || first === 'crypto') {
      // "security context ...", "crypto offload parameters: ...": name only, as for states
      const name = first === 'crypto' ? 'offload' : first;
      if (!rec.other.includes(name)) rec.other.push(name);
    } else {
      throw new ReadbackError(
        `unknown line in policy ${rec.src} -> ${rec.dst}: ${JSON.stringify(t.slice(0, 3).map(safeWord).join(' '))} ` +
          '(this iproute2 prints something onionctl does not know yet; see docs/kernels.md)',
        no,
      );
    }
  }
  if (rec.dir === '') throw new ReadbackError(`policy ${rec.src} -> ${rec.dst} has no "dir" line`, b.headerLine);
  return rec;
}

/** Parses `ip xfrm policy` or `ip -s xfrm policy`. A template without `level` is `required`. */
export function parseXfrmPolicies(text: string): XfrmPolicyRecord[] {
  return blocks(text).map(parsePolicyBlock);
}

/** /proc/net/xfrm_stat (per network namespace): XfrmInNoStates 0 ... */
export function parseXfrmStat(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  text.split('\n').forEach((l, i) => {
    if (l.trim() === '') return;
    const m = /^(\w+)\s+(\d+)$/.exec(l.trim());
    if (!m) throw new ReadbackError(`expected "XfrmName COUNT"`, i + 1);
    out[m[1]!] = Number(m[2]);
  });
  return out;
}
