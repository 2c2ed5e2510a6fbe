/**
 * A state that did not come from this run's reconcile (the one inside a saved plan) is checked as
 * if it had just been planned: it must be exactly what the topology allows (every circuit of the
 * topology on an eligible path, over declared links, with addresses from the hops' pools, and
 * nothing else), its counters must be ahead of the state it was planned from, and no SPI handed
 * out before may come back with another epoch or nonce. Pure.
 */
import { formatIPv4 } from '../net/addr.js';
import { linkKey, type Net } from '../topology/net.js';
import { SPI_BASE, type SaRecord, type State } from './model.js';
import { allSas, invalidReason } from './reconcile.js';

/** every SA epoch of a state, current and retiring, with where it is */
function epochs(s: State): { where: string; spi: number; reqid: number; epoch: number; nonce: string | undefined }[] {
  const out: { where: string; spi: number; reqid: number; epoch: number; nonce: string | undefined }[] = [];
  for (const { ref, rec } of allSas(s)) {
    const where = 'circuit' in ref ? `circuit ${ref.circuit} hop ${ref.hop} ${ref.dir}` : `link ${ref.link} ${ref.dir}`;
    const r: SaRecord = rec;
    out.push({ where, spi: r.spi, reqid: r.reqid, epoch: r.epoch, nonce: r.nonce });
    for (const o of r.retiring ?? []) out.push({ where: `${where} (retiring)`, spi: o.spi, reqid: r.reqid, epoch: o.epoch, nonce: o.nonce });
  }
  return out;
}

/**
 * The problems of `state` as a plan of `net` made from `before` (undefined: made from no state);
 * empty when there are none.
 */
export function checkPlannedState(net: Net, before: State | undefined, state: State): string[] {
  const bad: string[] = [];
  if (before) {
    if (state.salt !== before.salt) bad.push('it belongs to another state (its salt differs)');
    if (state.serial < before.serial) bad.push(`its serial ${state.serial} is behind the state's ${before.serial}`);
    if (state.next.spi < before.next.spi || state.next.reqid < before.next.reqid) bad.push('its SPI or reqid counter is behind the state\'s');
  }

  // the topology's links, exactly, each with its own ends
  const wanted = new Map(net.links.map(([a, b]) => [linkKey(a, b), [a, b] as const]));
  for (const [k, l] of Object.entries(state.links)) {
    const w = wanted.get(k);
    if (!w) bad.push(`overlay link ${k} is not in the topology`);
    else if (l.a !== w[0] || l.b !== w[1]) bad.push(`overlay link ${k} has ends ${l.a}, ${l.b}, not ${w[0]}, ${w[1]}`);
  }
  for (const k of wanted.keys()) if (!state.links[k]) bad.push(`overlay link ${k} of the topology is missing`);

  // the topology's circuits, exactly, each as reconcile would keep it
  const defs = new Map(net.circuits.map((c) => [c.name, c]));
  const used = new Map<string, string>();
  for (const [name, c] of Object.entries(state.circuits)) {
    const def = defs.get(name);
    if (!def) {
      bad.push(`circuit ${name} is not in the topology`);
      continue;
    }
    const n = c.hops.length;
    if (c.addrs.length !== n || c.fwd.length !== n || c.rev.length !== n) {
      bad.push(`circuit ${name}: ${n} hops but ${c.addrs.length} addresses and ${c.fwd.length}/${c.rev.length} SAs`);
      continue;
    }
    const why = invalidReason(net, def, c);
    if (why) bad.push(`circuit ${name}: ${c.hops.join(' -> ')} is not a path the topology allows (${why})`);
    const to = def.to.map((x) => `${formatIPv4(x.base)}/${x.len}`);
    if (to.join(',') !== c.to.join(',')) bad.push(`circuit ${name}: destinations ${c.to.join(', ')}, the topology says ${to.join(', ')}`);
    c.hops.forEach((h, i) => {
      const key = `${h} ${c.addrs[i]}`;
      const other = used.get(key);
      if (other) bad.push(`circuit ${name}: address ${c.addrs[i]} at ${h} is also circuit ${other}'s`);
      used.set(key, name);
    });
  }
  for (const name of defs.keys()) if (!state.circuits[name]) bad.push(`circuit ${name} of the topology is missing`);

  // SPIs and reqids: from the counters, each once; an SPI handed out before keeps its epoch and nonce
  const spis = new Map<number, string>();
  const reqids = new Map<number, string>();
  const earlier = new Map(before ? epochs(before).map((e) => [e.spi, e]) : []);
  for (const e of epochs(state)) {
    if (e.spi < SPI_BASE || e.spi >= state.next.spi) bad.push(`${e.where}: SPI 0x${e.spi.toString(16)} is not from the state's counter`);
    const dup = spis.get(e.spi);
    if (dup) bad.push(`${e.where}: SPI 0x${e.spi.toString(16)} is also ${dup}'s`);
    spis.set(e.spi, e.where);
    if (!e.where.endsWith('(retiring)')) {
      if (e.reqid >= state.next.reqid) bad.push(`${e.where}: reqid 0x${e.reqid.toString(16)} is not from the state's counter`);
      const r = reqids.get(e.reqid);
      if (r) bad.push(`${e.where}: reqid 0x${e.reqid.toString(16)} is also ${r}'s`);
      reqids.set(e.reqid, e.where);
    }
    if (before && e.spi < before.next.spi) {
      const was = earlier.get(e.spi);
      if (!was || was.epoch !== e.epoch || was.nonce !== e.nonce) bad.push(`${e.where}: SPI 0x${e.spi.toString(16)} was handed out before with another epoch or key`);
    }
  }
  return bad;
}
