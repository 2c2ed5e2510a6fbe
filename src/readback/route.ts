/**
 * Parsers for `ip [-d] route show [table T]` and `ip [-4] addr show`, in iproute2's text form
 * (kept rather than `-j` so that old iproute2 on a router works too). Pure.
 *
 * Without -d, iproute2 leaves out `unicast`, `scope global` and `proto boot`; a route printed
 * without a protocol is therefore `boot`.
 */
import { ReadbackError, type AddressRecord, type RouteRecord } from './records.js';

const ROUTE_TYPES = new Set(['unicast', 'local', 'broadcast', 'multicast', 'blackhole', 'unreachable', 'prohibit', 'throw', 'nat', 'anycast', 'xresolve']);
/** attributes followed by one value */
const VALUED = new Set(['via', 'dev', 'table', 'proto', 'scope', 'src', 'metric', 'tos', 'dsfield', 'from', 'pref', 'expires', 'error', 'nhid', 'realm', 'realms', 'encap']);
/** metrics, which may carry `lock` before the value */
const METRICS = new Set(['mtu', 'advmss', 'window', 'rtt', 'rttvar', 'hoplimit', 'initcwnd', 'initrwnd', 'ssthresh', 'cwnd', 'reordering', 'rto_min', 'quickack', 'congctl', 'features', 'fastopen_no_cookie']);

function parseRouteLine(tokens: string[], table: string, no: number): RouteRecord {
  let i = 0;
  let type = 'unicast';
  if (ROUTE_TYPES.has(tokens[0]!)) type = tokens[i++]!;
  const dst = tokens[i++];
  if (dst === undefined) throw new ReadbackError('route line without a destination', no);
  const r: RouteRecord = { type, dst, table, proto: 'boot', metric: 0, flags: [], other: [] };
  while (i < tokens.length) {
    const k = tokens[i++]!;
    if (VALUED.has(k)) {
      let v = tokens[i++];
      // `via inet 1.2.3.4` / `via inet6 ...` when the gateway's family differs
      if (k === 'via' && (v === 'inet' || v === 'inet6')) v = tokens[i++];
      if (v === undefined) throw new ReadbackError(`"${k}" without a value`, no);
      if (k === 'via') r.via = v;
      else if (k === 'dev') r.dev = v;
      else if (k === 'table') r.table = v;
      else if (k === 'proto') r.proto = v;
      else if (k === 'scope') r.scope = v;
      else if (k === 'src') r.src = v;
      else if (k === 'metric') r.metric = Number(v);
      else if (k === 'tos' || k === 'dsfield') r.tos = v;
      else r.other.push(`${k} ${v}`);
    } else if (METRICS.has(k)) {
      let locked = false;
      if (tokens[i] === 'lock') {
        locked = true;
        i++;
      }
      const v = tokens[i++];
      if (v === undefined) throw new ReadbackError(`"${k}" without a value`, no);
      if (k === 'mtu') {
        r.mtu = Number(v);
        if (locked) r.mtuLocked = true;
      } else if (k === 'advmss') r.advmss = Number(v);
      else if (k === 'quickack') r.quickack = v !== '0';
      else r.other.push(`${k}${locked ? ' lock' : ''} ${v}`);
    } else {
      r.flags.push(k);
    }
  }
  return r;
}

/**
 * Parses `ip route show table T` (or `ip -d route ...`). Routes of another table than `table`
 * carry `table X` in the output and get it from there.
 */
export function parseRoutes(text: string, table = 'main'): RouteRecord[] {
  const out: RouteRecord[] = [];
  text.split('\n').forEach((raw, idx) => {
    const line = raw.trim();
    if (line === '') return;
    const tokens = line.split(/\s+/);
    if (/^\s/.test(raw)) {
      const last = out[out.length - 1];
      if (tokens[0] !== 'nexthop' || !last) throw new ReadbackError(`unexpected indented line (${tokens[0]})`, idx + 1);
      const hop: { via?: string; dev?: string; weight?: number } = {};
      for (let i = 1; i + 1 < tokens.length; i++) {
        const k = tokens[i]!;
        if (k === 'via') hop.via = tokens[i + 1] === 'inet' || tokens[i + 1] === 'inet6' ? tokens[++i + 1]! : tokens[i + 1]!;
        else if (k === 'dev') hop.dev = tokens[i + 1]!;
        else if (k === 'weight') hop.weight = Number(tokens[i + 1]);
        else continue;
        i++;
      }
      (last.nexthops ??= []).push(hop);
      return;
    }
    out.push(parseRouteLine(tokens, table, idx + 1));
  });
  return out;
}

/** Parses `ip addr show [dev D]` (any family); link lines give the device, inet/inet6 lines the addresses. */
export function parseAddresses(text: string): AddressRecord[] {
  const out: AddressRecord[] = [];
  let dev: string | undefined;
  text.split('\n').forEach((raw, idx) => {
    const line = raw.trim();
    if (line === '') return;
    const link = /^\d+:\s+([^:@\s]+)(?:@\S+)?:\s/.exec(line);
    if (link && !/^\s/.test(raw)) {
      dev = link[1]!;
      return;
    }
    const t = line.split(/\s+/);
    if (t[0] !== 'inet' && t[0] !== 'inet6') return; // link/ether, valid_lft, altname ...
    if (!dev) throw new ReadbackError('address line before any interface line', idx + 1);
    const m = /^([^/]+)\/(\d+)$/.exec(t[1] ?? '');
    if (!m) throw new ReadbackError(`expected ADDRESS/LEN after ${t[0]}`, idx + 1);
    const a: AddressRecord = { dev, family: t[0] === 'inet' ? 4 : 6, addr: m[1]!, len: Number(m[2]), flags: [] };
    for (let i = 2; i < t.length; i++) {
      const k = t[i]!;
      if (k === 'scope' || k === 'brd' || k === 'peer' || k === 'metric' || k === 'proto') {
        const v = t[++i];
        if (k === 'scope' && v !== undefined) a.scope = v;
        if (k === 'proto' && v !== undefined) a.proto = v;
      } else if (i === t.length - 1 && a.family === 4 && (k === dev || k.startsWith(`${dev}:`))) {
        a.label = k;
      } else {
        a.flags.push(k);
      }
    }
    out.push(a);
  });
  return out;
}
