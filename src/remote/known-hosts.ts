/**
 * OpenSSH known_hosts matching (ssh2 accepts any host key unless told otherwise). Supports plain
 * and hashed (|1|salt|hmac) host fields, comma-separated patterns with * and ? wildcards and !
 * negation, [host]:port entries for non-standard ports, and @revoked markers. @cert-authority
 * lines are ignored (onionctl does not do host certificates).
 */
import { createHash, createHmac } from 'node:crypto';

export interface KnownHostEntry {
  marker?: 'revoked' | 'cert-authority';
  hosts: string;
  keyType: string;
  /** the key blob, SSH wire format */
  key: Buffer;
  line: number;
}

export function parseKnownHosts(text: string): KnownHostEntry[] {
  const out: KnownHostEntry[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const fields = line.split(/\s+/);
    let marker: KnownHostEntry['marker'];
    if (fields[0]?.startsWith('@')) {
      const m = fields.shift()!;
      if (m === '@revoked') marker = 'revoked';
      else if (m === '@cert-authority') marker = 'cert-authority';
      else return;
    }
    const [hosts, keyType, b64] = fields;
    if (!hosts || !keyType || !b64) return;
    const key = Buffer.from(b64, 'base64');
    if (key.length === 0) return;
    out.push({ ...(marker ? { marker } : {}), hosts, keyType, key, line: i + 1 });
  });
  return out;
}

/** The name known_hosts uses for a host and port: "host" for 22, "[host]:port" otherwise. */
export function hostField(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

/**
 * known_hosts patterns compiled once: each connection checks every entry of the file, so a fleet
 * of 1,000 routers with a line each compiled a million regular expressions. Bounded, since the
 * patterns come from files.
 */
const compiled = new Map<string, RegExp>();
const COMPILED_MAX = 100_000;

function globMatch(pattern: string, s: string): boolean {
  // a pattern without wildcards (the usual line) is a case-insensitive name
  if (!pattern.includes('*') && !pattern.includes('?')) return pattern.length === s.length && pattern.toLowerCase() === s.toLowerCase();
  let re = compiled.get(pattern);
  if (re) return re.test(s);
  if (compiled.size >= COMPILED_MAX) compiled.clear();
  re = new RegExp(
    '^' +
      pattern
        .split('')
        .map((c) => (c === '*' ? '.*' : c === '?' ? '.' : c.replace(/[.+^${}()|[\]\\]/g, '\\$&')))
        .join('') +
      '$',
    'i',
  );
  compiled.set(pattern, re);
  return re.test(s);
}

function hashedMatch(field: string, name: string): boolean {
  const m = /^\|1\|([^|]+)\|([^|]+)$/.exec(field);
  if (!m) return false;
  const salt = Buffer.from(m[1]!, 'base64');
  const want = Buffer.from(m[2]!, 'base64');
  const got = createHmac('sha1', salt).update(name).digest();
  return got.length === want.length && got.equals(want);
}

/** Does the host field of an entry match this host (known_hosts name form)? */
export function hostsMatch(hosts: string, name: string): boolean {
  if (hosts.startsWith('|1|')) return hashedMatch(hosts, name);
  let matched = false;
  for (const pat of hosts.split(',')) {
    if (pat.startsWith('!')) {
      if (globMatch(pat.slice(1), name)) return false;
    } else if (globMatch(pat, name)) matched = true;
  }
  return matched;
}

export function fingerprintSha256(key: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(key).digest('base64').replace(/=+$/, '');
}

/** The key type named inside an SSH wire-format public key blob. */
export function keyTypeOf(key: Buffer): string {
  if (key.length < 4) return 'unknown';
  const n = key.readUInt32BE(0);
  return key.subarray(4, 4 + n).toString('latin1');
}

export type HostKeyVerdict =
  | { ok: true }
  | { ok: false; reason: 'unknown' | 'changed' | 'revoked'; message: string };

/**
 * Checks an offered host key. `names` are the known_hosts names to look up (e.g. the host name
 * and its address, each in hostField form).
 */
export function verifyHostKey(entries: KnownHostEntry[], names: string[], offered: Buffer, label: string): HostKeyVerdict {
  const fp = `${keyTypeOf(offered)} ${fingerprintSha256(offered)}`;
  const relevant = entries.filter((e) => e.marker !== 'cert-authority' && names.some((n) => hostsMatch(e.hosts, n)));
  if (relevant.some((e) => e.marker === 'revoked' && e.key.equals(offered))) {
    return { ok: false, reason: 'revoked', message: `host key for ${label} is marked @revoked in known_hosts (offered ${fp})` };
  }
  const plain = relevant.filter((e) => e.marker === undefined);
  if (plain.some((e) => e.key.equals(offered))) return { ok: true };
  const sameType = plain.filter((e) => keyTypeOf(e.key) === keyTypeOf(offered));
  if (sameType.length > 0) {
    return {
      ok: false,
      reason: 'changed',
      message:
        `HOST KEY CHANGED for ${label}: offered ${fp}, known_hosts line ${sameType[0]!.line} has ${fingerprintSha256(sameType[0]!.key)}. ` +
        'Someone may be intercepting the connection, or the router was reinstalled; verify out of band before updating known_hosts.',
    };
  }
  return {
    ok: false,
    reason: 'unknown',
    message: `host key for ${label} is not known (offered ${fp}); verify it out of band, then add it to known_hosts or pin it as ssh.hostKey in the topology`,
  };
}

/** A pinned key as written in the topology: "ssh-ed25519 AAAA... [comment]". */
export function parsePinnedKey(text: string): Buffer {
  const parts = text.trim().split(/\s+/);
  const b64 = parts.length >= 2 ? parts[1]! : parts[0]!;
  const key = Buffer.from(b64, 'base64');
  if (key.length < 8) throw new Error(`pinned host key "${text.slice(0, 40)}" is not an OpenSSH public key`);
  return key;
}
