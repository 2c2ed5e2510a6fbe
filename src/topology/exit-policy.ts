/**
 * An exit's `allow` list as a policy: which traffic to which destination it lets out (everything
 * else from a circuit's address is dropped by the exit's firewall, exit-nat/build.ts). Used by
 * path selection (an exit is eligible for a circuit only when it admits all the circuit says it
 * carries) and by audit (what an exit would drop of a circuit's traffic). Pure.
 */
import { cidrContains, type Cidr } from '../net/addr.js';
import type { AllowResolved, Traffic } from './net.js';

type Range = [number, number];

const rangeOf = (p: number | string): Range => {
  if (typeof p === 'number') return [p, p];
  const [a, b] = p.split('-').map(Number) as [number, number];
  return [a, b ?? a];
};

/** the port ranges, merged and sorted */
function merged(ports: readonly (number | string)[]): Range[] {
  const rs = ports.map(rangeOf).sort((x, y) => x[0] - y[0]);
  const out: Range[] = [];
  for (const r of rs) {
    const last = out[out.length - 1];
    if (last && r[0] <= last[1] + 1) last[1] = Math.max(last[1], r[1]);
    else out.push([r[0], r[1]]);
  }
  return out;
}

const ALL_PORTS: Range[] = [[1, 65535]];

/** The ports of `want` that `have` does not cover, as ranges. */
function uncovered(want: Range[], have: Range[]): Range[] {
  const out: Range[] = [];
  for (const [a, b] of want) {
    let from = a;
    for (const [c, d] of have) {
      if (d < from || c > b) continue;
      if (c > from) out.push([from, c - 1]);
      from = Math.max(from, d + 1);
      if (from > b) break;
    }
    if (from <= b) out.push([from, b]);
  }
  return out;
}

const rangesText = (rs: Range[]) => rs.map(([a, b]) => (a === b ? String(a) : `${a}-${b}`)).join(',');

/** How a circuit's traffic reads in messages: "udp 53", "tcp", "any traffic". */
export function trafficText(t: Traffic): string {
  if (t.proto === 'any') return 'any traffic';
  return t.ports ? `${t.proto} ${rangesText(merged(t.ports))}` : t.proto;
}

/**
 * What of `traffic` to `dest` the exit's allow list drops, in words; undefined when it lets all
 * of it out. A rule counts for `dest` only when its `to` contains all of `dest`.
 */
export function droppedTraffic(allow: readonly AllowResolved[], dest: Cidr, traffic: Traffic): string | undefined {
  const rules = allow.filter((a) => cidrContains(a.to, dest));
  if (rules.some((a) => a.proto === 'any')) return undefined;
  const protos = traffic.proto === 'any' ? (['tcp', 'udp', 'icmp'] as const) : [traffic.proto];
  const missing: string[] = [];
  for (const p of protos) {
    const mine = rules.filter((a) => a.proto === p);
    if (p === 'icmp') {
      if (mine.length === 0) missing.push('icmp');
      continue;
    }
    const have = mine.some((a) => !a.ports) ? ALL_PORTS : merged(mine.flatMap((a) => a.ports ?? []));
    const want = traffic.proto === p && traffic.ports ? merged(traffic.ports) : ALL_PORTS;
    const gap = uncovered(want, have);
    if (gap.length > 0) missing.push(gap.length === 1 && gap[0]![0] === 1 && gap[0]![1] === 65535 ? p : `${p} ${rangesText(gap)}`);
  }
  // traffic "any" also carries protocols other than tcp, udp and icmp: only an "any" rule admits those
  if (traffic.proto === 'any') missing.push('other protocols');
  return missing.length > 0 ? missing.join(', ') : undefined;
}

/** An exit admits a circuit when every destination is covered and, if the circuit states its traffic, all of it gets out. */
export function allowAdmits(allow: readonly AllowResolved[], to: readonly Cidr[], traffic: Traffic | undefined): boolean {
  return to.every((d) => (traffic ? droppedTraffic(allow, d, traffic) === undefined : allow.some((a) => cidrContains(a.to, d))));
}
