/**
 * Parsers for `iptables-save` (nf_tables and legacy print the same format) and `nft list
 * ruleset` / `nft list table ...`, plus the conversions of single rules back into the model's
 * SnatRule / FilterRule, for the rule shapes render/render.ts writes. Pure.
 */
import { ANY, parseCidr, parseIPv4, type Cidr } from '../net/addr.js';
import type { FilterRule, SnatRule } from '../model/config.js';
import { ReadbackError, type IptablesChainRecord, type IptablesRuleRecord, type IptablesSave, type NftChainRecord, type NftRuleRecord, type NftTableRecord } from './records.js';

const BUILTIN: Record<string, string[]> = {
  filter: ['INPUT', 'FORWARD', 'OUTPUT'],
  nat: ['PREROUTING', 'INPUT', 'OUTPUT', 'POSTROUTING'],
  mangle: ['PREROUTING', 'INPUT', 'FORWARD', 'OUTPUT', 'POSTROUTING'],
  raw: ['PREROUTING', 'OUTPUT'],
  security: ['INPUT', 'FORWARD', 'OUTPUT'],
};

/** Splits a line into words as a shell would for iptables-save output: "a \"b\"" is one word. */
export function shellWords(line: string, no = 0): string[] {
  const out: string[] = [];
  let i = 0;
  while (i < line.length) {
    while (line[i] === ' ' || line[i] === '\t') i++;
    if (i >= line.length) break;
    let w = '';
    while (i < line.length && line[i] !== ' ' && line[i] !== '\t') {
      if (line[i] === '"' || line[i] === "'") {
        const q = line[i]!;
        i++;
        while (i < line.length && line[i] !== q) {
          if (q === '"' && line[i] === '\\' && i + 1 < line.length) i++;
          w += line[i++];
        }
        if (i >= line.length) throw new ReadbackError('unterminated quote', no);
        i++;
      } else {
        w += line[i++];
      }
    }
    out.push(w);
  }
  return out;
}

export function parseIptablesSave(text: string): IptablesSave {
  const save: IptablesSave = { tables: [], chains: [], rules: [] };
  let table: string | undefined;
  text.split('\n').forEach((raw, idx) => {
    const no = idx + 1;
    let line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    if (line.startsWith('*')) {
      table = line.slice(1);
      save.tables.push(table);
      return;
    }
    if (line === 'COMMIT') {
      table = undefined;
      return;
    }
    if (!table) throw new ReadbackError('rule or chain outside a *table section', no);
    if (line.startsWith(':')) {
      const [name, policy] = line.slice(1).split(/\s+/);
      const builtin = (BUILTIN[table] ?? []).includes(name!) || (policy !== undefined && policy !== '-');
      const c: IptablesChainRecord = { table, chain: name!, builtin };
      if (policy && policy !== '-') c.policy = policy;
      save.chains.push(c);
      return;
    }
    // iptables-save -c prefixes counters: [12:3456] -A CHAIN ...
    line = line.replace(/^\[\d+:\d+\]\s+/, '');
    const w = shellWords(line, no);
    if (w[0] !== '-A' || w[1] === undefined) throw new ReadbackError(`expected "-A CHAIN ...", got ${JSON.stringify(w[0])}`, no);
    const args = w.slice(2);
    const rule: IptablesRuleRecord = { table, chain: w[1], args, text: line };
    const j = args.findIndex((a) => a === '-j' || a === '-g' || a === '--jump' || a === '--goto');
    if (j >= 0 && args[j + 1] !== undefined) rule.target = args[j + 1]!;
    const c = args.indexOf('--comment');
    if (c >= 0 && args[c + 1] !== undefined) rule.comment = args[c + 1]!;
    save.rules.push(rule);
  });
  return save;
}

const cidrOrAny = (t: string): Cidr => (t === '0.0.0.0/0' ? ANY : parseCidr(t));

/** "80,443,8000:8080" -> [80, 443, "8000-8080"], as the topology writes them */
function portList(text: string): (number | string)[] {
  return text.split(',').map((p) => {
    const r = p.replace(':', '-');
    return /^\d+$/.test(r) ? Number(r) : r;
  });
}

/** What both parsers read, as the planner writes it: optional fields only when present. */
function filterRule(r: Omit<FilterRule, 'established' | 'ports'> & { established: boolean; ports: FilterRule['ports'] }): FilterRule {
  const { ports, established, ipsecIn, ipsecOut, ...rest } = r;
  return {
    src: rest.src,
    dst: rest.dst,
    proto: rest.proto,
    ...(ports ? { ports } : {}),
    ...(established ? { established } : {}),
    ...(ipsecIn !== undefined ? { ipsecIn } : {}),
    ...(ipsecOut !== undefined ? { ipsecOut } : {}),
    action: rest.action,
    comment: rest.comment,
  };
}

/**
 * One iptables rule of an onionctl chain as a FilterRule, or undefined when it uses anything the
 * renderer never writes (then it cannot be onionctl's as rendered, and the diff removes it).
 */
export function iptablesFilterRule(args: string[]): FilterRule | undefined {
  let src = ANY;
  let dst = ANY;
  let proto: FilterRule['proto'] = 'any';
  let ports: (number | string)[] | undefined;
  let established = false;
  let ipsecIn: number | undefined;
  let ipsecOut: number | undefined;
  // -m policy: one --dir, --pol ipsec and --reqid each, in this order (as iptables-save prints them)
  let pol: { dir?: 'in' | 'out'; ipsec?: boolean } | undefined;
  let action: FilterRule['action'] | undefined;
  let comment = '';
  try {
    for (let i = 0; i < args.length; i++) {
      const a = args[i]!;
      const v = args[i + 1];
      switch (a) {
        case '-s':
          src = cidrOrAny(v!);
          i++;
          break;
        case '-d':
          dst = cidrOrAny(v!);
          i++;
          break;
        case '-p':
          if (v === 'tcp' || v === 'udp' || v === 'icmp' || v === 'esp') proto = v;
          else if (v !== 'all') return undefined;
          i++;
          break;
        case '-m':
          if (pol) return undefined; // a policy match without its reqid
          if (v === 'policy') pol = {};
          else if (v !== 'multiport' && v !== 'conntrack' && v !== 'comment') return undefined;
          i++;
          break;
        case '--dir':
          if (!pol || pol.dir || (v !== 'in' && v !== 'out')) return undefined;
          pol.dir = v;
          i++;
          break;
        case '--pol':
          if (!pol?.dir || pol.ipsec || v !== 'ipsec') return undefined;
          pol.ipsec = true;
          i++;
          break;
        case '--reqid': {
          if (!pol?.ipsec || !/^\d+$/.test(v ?? '')) return undefined;
          const n = Number(v);
          if (n > 0xffffffff) return undefined;
          if (pol.dir === 'in') {
            if (ipsecIn !== undefined) return undefined;
            ipsecIn = n;
          } else {
            if (ipsecOut !== undefined) return undefined;
            ipsecOut = n;
          }
          pol = undefined;
          i++;
          break;
        }
        case '--dports':
          ports = portList(v!);
          i++;
          break;
        case '--ctstate': {
          const s = new Set(v!.split(','));
          if (s.size !== 2 || !s.has('RELATED') || !s.has('ESTABLISHED')) return undefined;
          established = true;
          i++;
          break;
        }
        case '--comment':
          comment = v!;
          i++;
          break;
        case '-j':
          if (v === 'ACCEPT') action = 'accept';
          else if (v === 'DROP') action = 'drop';
          else return undefined;
          i++;
          break;
        default:
          return undefined;
      }
    }
  } catch {
    return undefined;
  }
  if (!action || pol) return undefined;
  return filterRule({ src, dst, proto, ports, established, ipsecIn, ipsecOut, action, comment });
}

/** `-s A -o IF -m comment --comment C -j SNAT --to-source X` as a SnatRule, or undefined. */
export function iptablesSnatRule(args: string[]): SnatRule | undefined {
  let src: Cidr | undefined;
  let outIf: string | undefined;
  let to: number | undefined;
  let comment = '';
  try {
    for (let i = 0; i < args.length; i++) {
      const a = args[i]!;
      const v = args[i + 1];
      if (a === '-s') src = cidrOrAny(v!);
      else if (a === '-o') outIf = v!;
      else if (a === '-m' && v === 'comment') {
        /* the comment follows */
      } else if (a === '--comment') comment = v!;
      else if (a === '-j' && v === 'SNAT') {
        /* --to-source follows */
      } else if (a === '--to-source') to = parseIPv4(v!);
      else return undefined;
      i++;
    }
  } catch {
    return undefined;
  }
  if (!src || outIf === undefined || to === undefined) return undefined;
  return { src, outIf, to, comment };
}

// ------------------------------------------------------------------------------------------
// nftables

/** nft tokens: quoted strings, braces and commas on their own */
function nftWords(text: string, no: number): string[] {
  const out: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|([{},])|([^\s{},"]+)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(text))) {
    if (m[1] !== undefined) out.push(`"${m[1].replace(/\\(.)/g, '$1')}`);
    else out.push(m[2] ?? m[3]!);
  }
  if ((text.match(/"/g) ?? []).length % 2 !== 0) throw new ReadbackError('unterminated quote', no);
  return out;
}

const unq = (w: string | undefined) => (w?.startsWith('"') ? w.slice(1) : w);

/**
 * Parses `nft list ruleset` or `nft list table FAMILY NAME`: tables, their chains (with base
 * chain type/hook/priority/policy) and rules. Counters and `# handle N` are dropped from rule
 * text; sets, maps and flowtables are listed by name only.
 */
export function parseNftRuleset(text: string): NftTableRecord[] {
  const tables: NftTableRecord[] = [];
  let table: NftTableRecord | undefined;
  let chain: NftChainRecord | undefined;
  let skipDepth = 0;
  text.split('\n').forEach((raw, idx) => {
    const no = idx + 1;
    const line = raw.replace(/\s+# handle \d+\s*$/, '').trim();
    if (line === '' || line.startsWith('#')) return;
    if (skipDepth > 0) {
      skipDepth += (line.match(/\{/g) ?? []).length - (line.match(/\}/g) ?? []).length;
      return;
    }
    let m: RegExpExecArray | null;
    if (!table) {
      if ((m = /^table (\S+) (\S+) \{$/.exec(line))) {
        table = { family: m[1]!, name: m[2]!, chains: [], other: [] };
        tables.push(table);
        return;
      }
      throw new ReadbackError(`expected "table FAMILY NAME {"`, no);
    }
    if (!chain) {
      if (line === '}') {
        table = undefined;
        return;
      }
      if ((m = /^chain (\S+) \{$/.exec(line))) {
        chain = { name: m[1]!, rules: [] };
        table.chains.push(chain);
        return;
      }
      if ((m = /^(set|map|flowtable|counter|quota|ct helper|ct timeout|ct expectation|limit|secmark|synproxy) (\S+) \{/.exec(line))) {
        table.other.push(`${m[1]} ${m[2]}`);
        skipDepth = (line.match(/\{/g) ?? []).length - (line.match(/\}/g) ?? []).length;
        return;
      }
      if (/^flags /.test(line)) return;
      throw new ReadbackError(`unexpected line in table ${table.family} ${table.name}`, no);
    }
    if (line === '}') {
      chain = undefined;
      return;
    }
    if ((m = /^type (\S+) hook (\S+)(?: device \S+)? priority ([^;]+);(?:\s*policy (\w+);)?$/.exec(line))) {
      chain.type = m[1]!;
      chain.hook = m[2]!;
      chain.priority = m[3]!.trim();
      if (m[4]) chain.policy = m[4];
      return;
    }
    const ruleText = line.replace(/\bcounter packets \d+ bytes \d+\s*/g, '').replace(/\s+/g, ' ').trim();
    const r: NftRuleRecord = { text: ruleText };
    const words = nftWords(ruleText, no);
    const c = words.indexOf('comment');
    if (c >= 0 && words[c + 1]?.startsWith('"')) r.comment = unq(words[c + 1]);
    chain.rules.push(r);
  });
  if (table) throw new ReadbackError(`table ${table.family} ${table.name} is not closed`);
  return tables;
}

function nftPorts(words: string[], i: number): { ports: (number | string)[]; next: number } {
  const ports: (number | string)[] = [];
  const one = (w: string) => {
    if (!/^\d+(-\d+)?$/.test(w)) throw new Error(`not a port: ${w}`);
    ports.push(/^\d+$/.test(w) ? Number(w) : w);
  };
  if (words[i] === '{') {
    i++;
    while (words[i] !== '}') {
      if (words[i] === undefined) throw new Error('unterminated set');
      if (words[i] !== ',') one(words[i]!);
      i++;
    }
    return { ports, next: i + 1 };
  }
  one(words[i]!);
  return { ports, next: i + 1 };
}

function nftAddr(w: string | undefined): Cidr {
  if (w === undefined) throw new Error('address missing');
  return w.includes('/') ? parseCidr(w) : { base: parseIPv4(w), len: 32 };
}

/** A rule of onionctl's nft `forward` chain as a FilterRule, or undefined for other shapes. */
export function nftFilterRule(text: string): FilterRule | undefined {
  let src = ANY;
  let dst = ANY;
  let proto: FilterRule['proto'] = 'any';
  let ports: (number | string)[] | undefined;
  let established = false;
  let ipsecIn: number | undefined;
  let ipsecOut: number | undefined;
  let action: FilterRule['action'] | undefined;
  let comment = '';
  try {
    const w = nftWords(text, 0);
    for (let i = 0; i < w.length; ) {
      const a = w[i]!;
      if (a === 'ip' && w[i + 1] === 'saddr') {
        src = nftAddr(w[i + 2]);
        i += 3;
      } else if (a === 'ip' && w[i + 1] === 'daddr') {
        dst = nftAddr(w[i + 2]);
        i += 3;
      } else if ((a === 'tcp' || a === 'udp') && w[i + 1] === 'dport') {
        proto = a;
        const p = nftPorts(w, i + 2);
        ports = p.ports;
        i = p.next;
      } else if ((a === 'meta' && w[i + 1] === 'l4proto') || (a === 'ip' && w[i + 1] === 'protocol')) {
        const p = w[i + 2];
        if (p !== 'tcp' && p !== 'udp' && p !== 'icmp' && p !== 'esp') return undefined;
        if (proto !== 'any' && proto !== p) return undefined;
        proto = p;
        i += 3;
      } else if (a === 'ct' && w[i + 1] === 'state') {
        // nft prints a flag list as "established,related" (tokens: established , related)
        const states = [w[i + 2] ?? ''];
        i += 3;
        while (w[i] === ',' && w[i + 1] !== undefined) {
          states.push(w[i + 1]!);
          i += 2;
        }
        const s = new Set(states);
        if (s.size !== 2 || !s.has('established') || !s.has('related')) return undefined;
        established = true;
      } else if (a === 'ipsec' && (w[i + 1] === 'in' || w[i + 1] === 'out') && w[i + 2] === 'reqid') {
        const v = w[i + 3] ?? '';
        if (!/^\d+$/.test(v) || Number(v) > 0xffffffff) return undefined;
        if (w[i + 1] === 'in') {
          if (ipsecIn !== undefined) return undefined;
          ipsecIn = Number(v);
        } else {
          if (ipsecOut !== undefined) return undefined;
          ipsecOut = Number(v);
        }
        i += 4;
      } else if (a === 'accept' || a === 'drop') {
        action = a;
        i++;
      } else if (a === 'comment') {
        comment = unq(w[i + 1]) ?? '';
        i += 2;
      } else return undefined;
    }
  } catch {
    return undefined;
  }
  if (!action) return undefined;
  return filterRule({ src, dst, proto, ports, established, ipsecIn, ipsecOut, action, comment });
}

/** `ip saddr A oifname "IF" snat [ip] to X comment "C"` as a SnatRule, or undefined. */
export function nftSnatRule(text: string): SnatRule | undefined {
  try {
    const w = nftWords(text, 0);
    let src: Cidr | undefined;
    let outIf: string | undefined;
    let to: number | undefined;
    let comment = '';
    for (let i = 0; i < w.length; ) {
      if (w[i] === 'ip' && w[i + 1] === 'saddr') {
        src = nftAddr(w[i + 2]);
        i += 3;
      } else if (w[i] === 'oifname') {
        outIf = unq(w[i + 1]);
        i += 2;
      } else if (w[i] === 'snat') {
        const j = w[i + 1] === 'ip' ? i + 2 : i + 1;
        if (w[j] !== 'to') return undefined;
        to = parseIPv4(w[j + 1]!);
        i = j + 2;
      } else if (w[i] === 'comment') {
        comment = unq(w[i + 1]) ?? '';
        i += 2;
      } else return undefined;
    }
    if (!src || outIf === undefined || to === undefined) return undefined;
    return { src, outIf, to, comment };
  } catch {
    return undefined;
  }
}
