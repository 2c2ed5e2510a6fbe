/**
 * NodeConfig -> the per-router files:
 *   NAME.ip        input to `ip -batch -`
 *   NAME.iptables  input to `iptables-restore --noflush`   (or NAME.nft, input to `nft -f`)
 *   NAME.sysctl    input to `sysctl -p -`
 * Pure and deterministic: the same config gives the same bytes. In `redacted` mode (the default,
 * for files meant for review and diffing) keys are replaced by a short fingerprint; `secret`
 * mode writes the real keys and is only for apply (files written 0600 by the caller).
 */
import { formatCidr, formatIPv4, type Cidr } from '../net/addr.js';
import { fingerprint, type KeySource } from '../keys/kdf.js';
import type { SaLifetime } from '../keys/lifetimes.js';
import { PROFILES } from '../keys/profiles.js';
import { ROUTE_PROTO, type FilterRule, type NodeConfig, type Route, type XfrmPolicy, type XfrmState } from '../model/config.js';

export type KeyMode = 'redacted' | 'secret';

export interface Templates {
  ip: string;
  iptables: string;
  nft: string;
  sysctl: string;
}

export interface RenderOptions {
  keys: KeySource;
  mode: KeyMode;
  templates: Templates;
  version: string;
}

export interface RenderedFile {
  name: string;
  content: string;
  /** true when the content carries key material */
  secret: boolean;
}

function fill(tmpl: string, vars: Record<string, string>): string {
  return tmpl.replace(/\{\{(\w+)\}\}/g, (_, k: string) => {
    const v = vars[k];
    if (v === undefined) throw new Error(`template variable {{${k}}} has no value`);
    return v;
  });
}

const hex32 = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;

/**
 * The `limit` words of an SA, one `limit` keyword per value (iproute2 takes one LIMIT after each
 * `limit`). Absent members are no limit and are left out (the kernel's default is none).
 */
export function limitWords(l: SaLifetime): string {
  const w: string[] = [];
  const one = (name: string, v: number | undefined) => {
    if (v !== undefined) w.push(`limit ${name} ${v}`);
  };
  one('time-soft', l.soft.addSeconds);
  one('time-hard', l.hard.addSeconds);
  one('time-use-soft', l.soft.useSeconds);
  one('time-use-hard', l.hard.useSeconds);
  one('byte-soft', l.soft.bytes);
  one('byte-hard', l.hard.bytes);
  one('packet-soft', l.soft.packets);
  one('packet-hard', l.hard.packets);
  return w.join(' ');
}

export function stateLine(s: XfrmState, keys: KeySource, mode: KeyMode): string {
  const p = PROFILES[s.profile];
  const key = keys.key(s.key, p.keyBytes);
  // redacted: each key part shows as a one-way fingerprint, enough to see in a diff that it changed
  const show = mode === 'secret' ? (b: Buffer) => `0x${b.toString('hex')}` : (b: Buffer) => `redacted:fp=${fingerprint(b)}`;
  const algo = p.algo(key, show);
  // iproute2 refuses `flag esn` without a replay window, and moves the window into the ESN replay
  // context (printed back as "replay-window 0" plus "anti-replay esn context: ... replay_window W")
  if (s.replayWindow <= 0) throw new Error(`internal: SA ${hex32(s.spi)} has no replay window`);
  const limits = limitWords(s.lifetime);
  return (
    `xfrm state add src ${formatIPv4(s.src)} dst ${formatIPv4(s.dst)} proto esp spi ${hex32(s.spi)} ` +
    `reqid ${hex32(s.reqid)} mode tunnel replay-window ${s.replayWindow}${s.esn ? ' flag esn' : ''} ${algo}` +
    `${limits ? ` ${limits}` : ''}${s.tfcpad !== undefined ? ` tfcpad ${s.tfcpad}` : ''}`
  );
}

export function policyLine(p: XfrmPolicy): string {
  let line = `xfrm policy update src ${formatCidr(p.src)} dst ${formatCidr(p.dst)}`;
  if (p.proto) line += ` proto ${p.proto}`;
  line += ` dir ${p.dir} priority ${p.priority}`;
  if (p.action === 'block') line += ' action block';
  for (const t of p.tmpls) {
    line += ` tmpl src ${formatIPv4(t.src)} dst ${formatIPv4(t.dst)} proto esp reqid ${hex32(t.reqid)} mode tunnel level required`;
  }
  return line;
}

export function routeLine(r: Route): string {
  let l = `route replace ${formatCidr(r.dst)} via ${formatIPv4(r.via)} dev ${r.dev}`;
  if (r.src !== undefined) l += ` src ${formatIPv4(r.src)}`;
  l += ` proto ${ROUTE_PROTO}`;
  if (r.mtu !== undefined) l += ` mtu ${r.mtu}`;
  if (r.advmss !== undefined) l += ` advmss ${r.advmss}`;
  if (r.quickack) l += ' quickack 1';
  return l;
}

export function renderIp(cfg: NodeConfig, o: RenderOptions): string {
  const lines: string[] = [
    fill(o.templates.ip, {
      version: o.version,
      kind: cfg.kind,
      node: cfg.node,
      keys: o.mode === 'secret' ? 'CONTAINS KEYS: keep this file 0600 and delete it after apply.' : 'Keys are redacted (fp = fingerprint); this file is safe to review and diff.',
    }).trimEnd(),
  ];
  const block = cfg.policies.filter((p) => p.action === 'block');
  const allow = cfg.policies.filter((p) => p.action !== 'block');
  const section = (title: string, items: string[]) => {
    if (items.length === 0) return;
    lines.push('', `# ${title}`, ...items);
  };
  section('fail closed', block.map((p) => `${policyLine(p)} # ${p.comment}`));
  section('SAs', cfg.states.map((s) => `${stateLine(s, o.keys, o.mode)} # ${s.comment}`));
  section('policies', allow.map((p) => `${policyLine(p)} # ${p.comment}`));
  section('addresses', cfg.addresses.map((a) => `address replace ${formatIPv4(a.addr)}/32 dev ${a.dev} # ${a.comment}`));
  section(
    'routes',
    cfg.routes.map((r) => `${routeLine(r)} # ${r.comment}`),
  );
  return lines.join('\n') + '\n';
}

const quote = (s: string) => `"${s.replace(/["\\]/g, '')}"`;

/**
 * A filter rule as iptables can hold it: multiport takes at most 15 ports (a range counts as two),
 * so a longer port list becomes several rules, each with a slice of the list. The diff keys the
 * desired rules by these units, so that it compares what a router can hold.
 */
export function iptablesUnits(r: FilterRule): FilterRule[] {
  if (!r.ports || (r.proto !== 'tcp' && r.proto !== 'udp')) return [r];
  const out: FilterRule[] = [];
  let cur: (number | string)[] = [];
  let weight = 0;
  for (const p of r.ports) {
    const w = String(p).includes('-') || String(p).includes(':') ? 2 : 1;
    if (weight + w > 15) {
      out.push({ ...r, ports: cur });
      cur = [];
      weight = 0;
    }
    cur.push(p);
    weight += w;
  }
  if (cur.length > 0) out.push({ ...r, ports: cur });
  return out;
}

/** The iptables-restore lines of one filter rule: one per unit (iptablesUnits). */
export function iptablesRule(chain: string, r: FilterRule): string[] {
  const base = [`-A ${chain}`];
  if (r.src.len > 0) base.push(`-s ${formatCidr(r.src)}`);
  if (r.dst.len > 0) base.push(`-d ${formatCidr(r.dst)}`);
  if (r.proto !== 'any') base.push(`-p ${r.proto}`);
  if (r.established) base.push('-m conntrack --ctstate ESTABLISHED,RELATED');
  if (r.ipsecIn !== undefined) base.push(`-m policy --dir in --pol ipsec --reqid ${r.ipsecIn}`);
  if (r.ipsecOut !== undefined) base.push(`-m policy --dir out --pol ipsec --reqid ${r.ipsecOut}`);
  const tail = `-m comment --comment ${quote(r.comment)} -j ${r.action === 'accept' ? 'ACCEPT' : 'DROP'}`;
  if (r.ports && (r.proto === 'tcp' || r.proto === 'udp')) {
    return iptablesUnits(r).map((u) => `${base.join(' ')} -m multiport --dports ${u.ports!.map((p) => String(p).replace('-', ':')).join(',')} ${tail}`);
  }
  return [`${base.join(' ')} ${tail}`];
}

export const IPT_CHAIN_FORWARD = 'ONIONCTL-FORWARD';
export const IPT_CHAIN_POSTROUTING = 'ONIONCTL-POSTROUTING';
export const OWNER_COMMENT = 'onionctl';

export function renderIptables(cfg: NodeConfig, o: Pick<RenderOptions, 'templates' | 'version'>): string {
  const lines = [fill(o.templates.iptables, { version: o.version, kind: cfg.kind, node: cfg.node }).trimEnd(), ''];
  lines.push('*nat', `:${IPT_CHAIN_POSTROUTING} - [0:0]`, `-A POSTROUTING -m comment --comment ${OWNER_COMMENT} -j ${IPT_CHAIN_POSTROUTING}`);
  for (const s of cfg.firewall.snat) {
    lines.push(`-A ${IPT_CHAIN_POSTROUTING} -s ${formatCidr(s.src)} -o ${s.outIf} -m comment --comment ${quote(s.comment)} -j SNAT --to-source ${formatIPv4(s.to)}`);
  }
  lines.push('COMMIT', '*filter', `:${IPT_CHAIN_FORWARD} - [0:0]`, `-A FORWARD -m comment --comment ${OWNER_COMMENT} -j ${IPT_CHAIN_FORWARD}`);
  for (const r of cfg.firewall.forward) lines.push(...iptablesRule(IPT_CHAIN_FORWARD, r));
  lines.push('COMMIT');
  return lines.join('\n') + '\n';
}

function nftAddr(dir: 'saddr' | 'daddr', c: Cidr): string {
  if (c.len === 0) return '';
  return `ip ${dir} ${c.len === 32 ? formatIPv4(c.base) : formatCidr(c)} `;
}

function nftRule(r: FilterRule): string {
  let l = nftAddr('saddr', r.src) + nftAddr('daddr', r.dst);
  if (r.proto === 'tcp' || r.proto === 'udp') {
    l += r.ports ? `${r.proto} dport { ${r.ports.map(String).join(', ')} } ` : `meta l4proto ${r.proto} `;
  } else if (r.proto === 'icmp') l += 'meta l4proto icmp ';
  else if (r.proto === 'esp') l += 'meta l4proto esp ';
  if (r.established) l += 'ct state established,related ';
  if (r.ipsecIn !== undefined) l += `ipsec in reqid ${r.ipsecIn} `;
  if (r.ipsecOut !== undefined) l += `ipsec out reqid ${r.ipsecOut} `;
  return `${l}${r.action} comment ${quote(r.comment)}`;
}

export const NFT_TABLE = 'onionctl';

export function renderNft(cfg: NodeConfig, o: Pick<RenderOptions, 'templates' | 'version'>): string {
  const t = '\t';
  const lines = [
    fill(o.templates.nft, { version: o.version, kind: cfg.kind, node: cfg.node }).trimEnd(),
    '',
    `table ip ${NFT_TABLE} {`,
    '}',
    `delete table ip ${NFT_TABLE}`,
    `table ip ${NFT_TABLE} {`,
    `${t}chain postrouting {`,
    `${t}${t}type nat hook postrouting priority srcnat; policy accept;`,
    ...cfg.firewall.snat.map(
      (s) => `${t}${t}ip saddr ${s.src.len === 32 ? formatIPv4(s.src.base) : formatCidr(s.src)} oifname ${quote(s.outIf)} snat to ${formatIPv4(s.to)} comment ${quote(s.comment)}`,
    ),
    `${t}}`,
    `${t}chain forward {`,
    `${t}${t}type filter hook forward priority filter; policy accept;`,
    ...cfg.firewall.forward.map((r) => `${t}${t}${nftRule(r)}`),
    `${t}}`,
    '}',
  ];
  return lines.join('\n') + '\n';
}

export function renderSysctl(cfg: NodeConfig, o: Pick<RenderOptions, 'templates' | 'version'>): string {
  const lines = [fill(o.templates.sysctl, { version: o.version, kind: cfg.kind, node: cfg.node }).trimEnd()];
  for (const s of cfg.sysctls) lines.push(`${s.key} = ${s.value}`);
  return lines.join('\n') + '\n';
}

export function renderNode(cfg: NodeConfig, o: RenderOptions): RenderedFile[] {
  const fw =
    cfg.firewall.backend === 'nftables'
      ? { name: `${cfg.node}.nft`, content: renderNft(cfg, o), secret: false }
      : { name: `${cfg.node}.iptables`, content: renderIptables(cfg, o), secret: false };
  return [
    { name: `${cfg.node}.ip`, content: renderIp(cfg, o), secret: o.mode === 'secret' },
    fw,
    { name: `${cfg.node}.sysctl`, content: renderSysctl(cfg, o), secret: false },
  ];
}
