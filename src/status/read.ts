/**
 * What status needs of one router read back (remote/read.ts readNode): its objects, its clock (SA
 * ages are computed from the "add" times `ip -s xfrm state` prints in the router's local time)
 * and /proc/net/xfrm_stat. Pure.
 */
import { parseXfrmStat } from '../readback/xfrm.js';
import type { NodeReadback } from '../remote/read.js';
import type { NodeSample } from './status.js';

export function sampleOf(r: NodeReadback): NodeSample {
  const sample: NodeSample = { observed: r.observed };
  if (r.read.clock) sample.clock = r.read.clock;
  const xs = r.read.xfrmStat?.trim();
  if (xs) {
    try {
      sample.xfrmStat = parseXfrmStat(xs);
    } catch (e) {
      sample.xfrmStatError = (e as Error).message;
    }
  }
  return sample;
}
