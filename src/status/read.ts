/**
 * Reading a router for `status`: the read-back of src/remote/read.ts (xfrm states with -s,
 * policies, sysctls, /proc/net/xfrm_stat) in one remote command, preceded by one line with the
 * router's local clock, so that SA ages can be computed from the "add" times `ip -s xfrm state`
 * prints in the router's local time. The output holds keys until observeNode() has turned them
 * into fingerprints: it is parsed here and never kept, logged or printed.
 */
import { observeNode, type OwnershipContext } from '../readback/observed.js';
import { parseXfrmStat } from '../readback/xfrm.js';
import { parseReadOutput, readScript } from '../remote/read.js';
import { TransportError, type Transport } from '../remote/transport.js';
import type { NodeSample } from './status.js';

export const CLOCK_MARK = '@@onionctl-clock';

export function statusScript(sysctlKeys: string[]): string {
  // before the read-back's first section marker, so parseReadOutput ignores it
  return `printf '${CLOCK_MARK} %s\\n' "$(date '+%Y-%m-%d %H:%M:%S')"\n` + readScript({ sysctlKeys, xfrmStat: true });
}

/** Parses what statusScript printed into a sample. */
export function parseStatusOutput(text: string, node: string, ctx: OwnershipContext): NodeSample {
  const read = parseReadOutput(text, node);
  const observed = observeNode(node, read.outputs, ctx);
  observed.sysctls = Object.fromEntries(read.sysctls);
  const sample: NodeSample = { observed };
  const m = new RegExp(`^${CLOCK_MARK} (\\d{4}-\\d{2}-\\d{2} \\d{2}:\\d{2}:\\d{2})$`, 'm').exec(text.slice(0, 200));
  if (m) sample.clock = m[1]!;
  const xs = read.xfrmStat?.trim();
  if (xs) {
    try {
      sample.xfrmStat = parseXfrmStat(xs);
    } catch (e) {
      sample.xfrmStatError = (e as Error).message;
    }
  }
  return sample;
}

export async function readForStatus(t: Transport, node: string, sysctlKeys: string[], ctx: OwnershipContext): Promise<NodeSample> {
  const r = await t.exec(['sh', '-s'], { stdin: statusScript(sysctlKeys) });
  if (r.exitCode !== 0) {
    throw new TransportError(node, `${t.label}: reading the router failed (exit ${r.exitCode}): ${r.stderr.trim().split('\n').slice(0, 3).join('; ')}`);
  }
  return parseStatusOutput(r.stdout, node, ctx);
}
