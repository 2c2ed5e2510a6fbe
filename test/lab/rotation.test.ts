/**
 * Key and circuit rotation without IKE on the lab routers (issue 6): `rekey`, `rekey --due`,
 * `rotate`, anti-replay and TFC padding, seen from the routers' kernels and from the wire.
 *
 *                  ┌── or2 ──┐
 *   alice ──ov── or1         or3 ══ outside ══ server        circuit web: tfcpad 512 on layer 1
 *                  └── or4 ──┘                               (two eligible paths)
 *
 * One lab (one User-Mode Linux boot), then these steps in order:
 *   a  rekey --due right after apply: nothing is due, nothing changes
 *   b  TFC padding: pings of five sizes; on alice's wire (layer 1 padded) every ESP packet has one
 *      length, on the next link (unpadded) there are five. Replay: the ESP frames alice sent are
 *      re-sent unchanged to or1; its overlay SA counts them as replays, accepts none, and the
 *      server sees no echo request twice
 *   c  rekey --circuit web --grace 5 while a 20 MiB download runs through the circuit (paced so
 *      that it spans the whole rekey): the download completes intact, every SA of the circuit has
 *      a new SPI and epoch, the old SPIs are gone from every node; packets lost are printed
 *   d  the state's `since` of circuit web's SAs set two hours back: rekey --due renews exactly those
 *   e  rotate --circuit web, then rotate --max-age 0s: a new generation on an eligible path each
 *      time, nothing of the old generation left on any node, traffic flows
 * Throughout: every key seen on any node belongs to one SPI only, and epochs only move forward.
 *
 * Needs root (CI runs as root); ONIONCTL_SKIP_LAB=1 skips it. Timings are printed, never asserted.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash } from 'node:crypto';
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { formatIPv4 } from '../../src/net/addr.js';
import { StateSchema, type CircuitState, type State } from '../../src/state/model.js';
import { LabHandle, leftovers, onionctl, pointerPath, start, type Ran } from '../helpers/lab.js';
import { ipv4Of, parsePcap, writePcap } from '../helpers/pcap.js';
import { EpochLedger, KeyLedger, TCP_COUNTERS, hex, holders, mentions, snapshot, writePrograms, type LabPrograms, type Snapshot } from '../helpers/rotation.js';
import { describeKernels, type LabKernel } from '../helpers/kernels.js';

const MIN = 60_000;
const STEP = 12 * MIN;
const isRoot = process.getuid?.() === 0;
const skip = !isRoot || process.env.ONIONCTL_SKIP_LAB === '1';
const maybe = skip ? describe.skip : describe;
if (skip) console.warn('rotation lab test skipped: it needs root (CI runs as root) and ONIONCTL_SKIP_LAB unset');

const PAD = 512;
const TOPOLOGY = `version: 1
hops: 3
crypto: aes-gcm
operators:
  - name: north
  - name: middle
  - name: east
  - name: south
routers:
  - name: or1
    operator: north
    underlay: { interface: eth0, address: 198.51.100.11/24 }
    pool: 100.64.1.0/24
  - name: or2
    operator: middle
    underlay: { interface: eth0, address: 198.51.100.12/24 }
    pool: 100.64.2.0/24
  - name: or4
    operator: east
    underlay: { interface: eth0, address: 198.51.100.14/24 }
    pool: 100.64.4.0/24
  - name: or3
    operator: south
    underlay: { interface: eth0, address: 198.51.100.13/24 }
    pool: 100.64.3.0/24
    exit:
      interface: eth1
      address: 203.0.113.1/24
      allow:
        - to: 203.0.113.0/24
          proto: tcp
        - to: 203.0.113.0/24
          proto: icmp
clients:
  - name: alice
    underlay: { interface: eth0, address: 198.51.100.10/24 }
    entry: [or1]
links:
  - [or1, or2]
  - [or2, or3]
  - [or1, or4]
  - [or4, or3]
circuits:
  - name: web
    client: alice
    to: [203.0.113.80/32]
    tfcpad: { size: ${PAD}, layers: [1] }
`;

interface TopoDoc {
  hops: number;
  operators: { name: string }[];
  routers: { name: string; operator: string; exit?: unknown }[];
  clients: { name: string; entry: string[] }[];
  links: [string, string][];
}

/** The eligible paths of alice's circuit, worked out from the topology text alone: k hops from an entry along links to an exit, no router or operator twice. */
function eligiblePaths(): string[][] {
  const t = parseYaml(TOPOLOGY) as TopoDoc;
  const op = new Map(t.routers.map((r) => [r.name, r.operator]));
  const exits = new Set(t.routers.filter((r) => r.exit).map((r) => r.name));
  const next = (n: string) => t.links.flatMap(([a, b]) => (a === n ? [b] : b === n ? [a] : []));
  const out: string[][] = [];
  const walk = (p: string[]) => {
    if (p.length === t.hops) {
      if (exits.has(p[p.length - 1]!)) out.push(p);
      return;
    }
    for (const n of next(p[p.length - 1]!)) if (!p.includes(n) && !p.some((x) => op.get(x) === op.get(n))) walk([...p, n]);
  };
  for (const e of t.clients[0]!.entry) walk([e]);
  return out;
}

const show = (r: Ran) => ({ code: r.code, signal: r.signal, stdout: r.stdout.slice(-4000), stderr: r.stderr.slice(-4000) });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(file: string, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (existsSync(file)) return true;
    await sleep(200);
  }
  return existsSync(file);
}

/** every SA record of a circuit: [label, record] */
const circuitSas = (c: CircuitState) => [...c.fwd.map((r, i) => [`hop ${i + 1} fwd`, r] as const), ...c.rev.map((r, i) => [`hop ${i + 1} rev`, r] as const)];
const linkSas = (s: State) => Object.entries(s.links).flatMap(([k, l]) => [[`${k} ab`, l.ab] as const, [`${k} ba`, l.ba] as const]);

/** "+3" / "0" */
const delta = (a: number | undefined, b: number | undefined) => (b ?? 0) - (a ?? 0);

describeKernels('rotation', (k: LabKernel) => {
maybe('rekey, rekey --due, rotate, anti-replay and TFC padding on the lab routers (one lab, steps in order)', () => {
  let tmp: string;
  let topo: string;
  let lab: LabHandle;
  let progs: LabPrograms;
  const keys = new KeyLedger();
  const epochs = new EpochLedger();
  const eligible = eligiblePaths();

  const readState = async (): Promise<State> => StateSchema.parse(JSON.parse(await fs.readFile(lab.ctl.state, 'utf8')));
  /** snapshot of every node and the state, fed to both ledgers */
  const checkpoint = async (where: string, opts: { counters?: boolean } = {}): Promise<{ snap: Snapshot; st: State }> => {
    const snap = await snapshot(lab, opts);
    const st = await readState();
    keys.observe(where, snap);
    epochs.observe(where, st);
    return { snap, st };
  };
  const ctl = (sub: string, args: string[]) => start(lab.ctlArgv(sub, args)).done;
  const addr = (node: string) => formatIPv4(lab.node(node).underlay.addr);
  /** 3 pings (waiting up to 30 s for the replies: the emulated kernel can stall under load) and a 20 kB fetch from alice to the server */
  const traffic = async () => {
    const r = await lab.sh('alice', `ping -n -c 3 -i 0.2 -w 30 ${lab.server} | tail -2; echo "@@curl $(curl -sS -o /dev/null --max-time 60 -w '%{size_download}' http://${lab.server}/obj8.bin 2>&1)"`);
    const replies = Number(/(\d+) (?:packets )?received/.exec(r.stdout)?.[1] ?? 0);
    const bytes = Number(/@@curl (\d+)/.exec(r.stdout)?.[1] ?? 0);
    return { replies, bytes, detail: (r.stdout + r.stderr).trim() };
  };

  beforeAll(async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'onionctl-rotation-lab-'));
    topo = path.join(tmp, 'rotation.yaml');
    await fs.writeFile(topo, TOPOLOGY);
    const up = await onionctl(['lab', 'up', topo, '--seed', '11']);
    if (up.code !== 0) throw new Error(`lab up failed (exit ${up.code}):\n${up.stderr}`);
    lab = LabHandle.open(topo);
    progs = await writePrograms(path.join(lab.rec.dir, 'rotation'));
    await checkpoint('after lab up', { counters: true });
  }, 15 * MIN);

  afterAll(async () => {
    if (!topo) return;
    const id = existsSync(pointerPath(topo)) ? readFileSync(pointerPath(topo), 'utf8').trim() : undefined;
    const down = await onionctl(['lab', 'down', topo]);
    expect(show(down)).toMatchObject({ code: 0 });
    if (id) expect(await leftovers(id)).toEqual([]);
    await fs.rm(tmp, { recursive: true, force: true });
  }, 5 * MIN);

  test('the topology gives circuit web more than one eligible path', () => {
    expect(eligible.length).toBeGreaterThan(1);
  });

  test('a: rekey --due right after apply: nothing is due and nothing changes', async () => {
    const before = await fs.readFile(lab.ctl.state, 'utf8');
    const r = await ctl('rekey', ['--due']);
    expect(show(r)).toMatchObject({ code: 0 });
    expect(r.stdout).toMatch(/Nothing to rekey/);
    expect(await fs.readFile(lab.ctl.state, 'utf8')).toBe(before);
  }, STEP);

  test('b: TFC padding gives every small ESP packet on the padded link one length; a replayed ESP frame is counted and dropped', async () => {
    const st = await readState();
    const c = st.circuits.web!;
    const [h1, h2] = [c.hops[0]!, c.hops[1]!];
    const [A, H1, H2] = [addr('alice'), addr(h1), addr(h2)];
    const dir = path.join(progs.dir, 'capture');
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    const sizes = [16, 64, 128, 200, 300];
    const server = lab.rec.layout.servers[0]!;
    const tcpdump = (veth: string, name: string) =>
      `tcpdump -Z root -n -i ${veth} -s 0 -U -w ${dir}/${name}.pcap esp >${dir}/${name}.err 2>&1 </dev/null & echo $! >${dir}/${name}.pid`;
    const cap = await lab.root([
      'sh',
      '-c',
      [
        `rm -f ${dir}/*`,
        tcpdump(lab.node('alice').underlay.hostVeth, 'padded'),
        tcpdump(lab.node(h2).underlay.hostVeth, 'plain'),
        `i=0; until grep -q listening ${dir}/padded.err && grep -q listening ${dir}/plain.err; do i=$((i+1)); [ $i -lt 300 ] || { echo tcpdump did not start >&2; exit 1; }; sleep 0.1; done`,
        `echo "@@before $(nsenter --net=/run/netns/${server.ns} nstat -asz IcmpInEchos | awk '/IcmpInEchos/ {print $2}')"`,
        `nsenter --net=/run/netns/${lab.node('alice').ns} sh -c 'for s in ${sizes.join(' ')}; do ping -n -q -c 2 -i 0.2 -w 30 -s $s ${lab.server} | grep received; done'`,
        'sleep 1',
        `kill -INT $(cat ${dir}/padded.pid) $(cat ${dir}/plain.pid)`,
        `i=0; until grep -q 'packets captured' ${dir}/padded.err && grep -q 'packets captured' ${dir}/plain.err; do i=$((i+1)); [ $i -lt 300 ] || exit 1; sleep 0.1; done`,
        `echo "@@after $(nsenter --net=/run/netns/${server.ns} nstat -asz IcmpInEchos | awk '/IcmpInEchos/ {print $2}')"`,
      ].join('\n'),
    ]);
    expect({ code: cap.code, stderr: cap.stderr, out: cap.stdout }).toEqual({ code: 0, stderr: '', out: cap.stdout });
    const echoes = delta(Number(/@@before (\d+)/.exec(cap.stdout)?.[1]), Number(/@@after (\d+)/.exec(cap.stdout)?.[1]));
    expect(echoes).toBe(2 * sizes.length); // every ping went through the circuit, once

    // --- TFC: one length on the padded wire, one per ping size on the next link
    const padded = parsePcap(await fs.readFile(path.join(dir, 'padded.pcap')));
    const plain = parsePcap(await fs.readFile(path.join(dir, 'plain.pcap')));
    const lengths = (frames: typeof padded.frames, src: string, dst: string) =>
      frames.filter((f) => {
        const ip = ipv4Of(f.data);
        return ip?.proto === 50 && ip.src === src && ip.dst === dst;
      }).map((f) => f.len);
    const out = { padded: lengths(padded.frames, A, H1), back: lengths(padded.frames, H1, A) };
    const next = { padded: lengths(plain.frames, H1, H2), back: lengths(plain.frames, H2, H1) };
    console.log(
      [
        `TFC padding ${PAD} on layer 1 of circuit web (path alice -> ${c.hops.join(' -> ')}), pings of ${sizes.join(', ')} bytes, 2 each (${(cap.stdout.match(/\d+ received/g) ?? []).join(', ')}):`,
        `  alice -> ${h1} (padded layer inside):  ${out.padded.length} ESP frames, lengths ${[...new Set(out.padded)].join(', ')}`,
        `  ${h1} -> alice (padded layer inside):  ${out.back.length} ESP frames, lengths ${[...new Set(out.back)].join(', ')}`,
        `  ${h1} -> ${h2} (no padded layer):        ${next.padded.length} ESP frames, lengths ${[...new Set(next.padded)].join(', ')}`,
        `  ${h2} -> ${h1} (no padded layer):        ${next.back.length} ESP frames, lengths ${[...new Set(next.back)].join(', ')}`,
      ].join('\n'),
    );
    for (const l of [out.padded, out.back, next.padded, next.back]) expect(l.length).toBe(2 * sizes.length);
    expect(new Set(out.padded).size).toBe(1);
    expect(new Set(out.back).size).toBe(1);
    expect(new Set(next.padded).size).toBe(sizes.length);
    expect(new Set(next.back).size).toBe(sizes.length);
    expect(Math.min(...out.padded)).toBeGreaterThan(Math.max(...next.padded)); // padded up, not merely equal
    // and it is the SA option doing it: alice's layer-1 SAs carry tfcpad, no other SA of hers does
    const snap = await snapshot(lab, { counters: true });
    const padOn = (snap.nodes.get('alice')!.states.filter((s) => s.tfcpad !== undefined)).map((s) => s.spi).sort();
    expect(padOn).toEqual([c.fwd[0]!.spi, c.rev[0]!.spi].sort());
    expect(snap.nodes.get('alice')!.states.find((s) => s.spi === c.fwd[0]!.spi)?.tfcpad).toBe(PAD);

    // --- replay: re-send what alice sent to or1, unchanged, on or1's wire
    const link = st.links[[`alice`, h1].sort().join('~')]!;
    const overlay = link.a === 'alice' ? link.ab : link.ba;
    const sent = padded.frames.filter((f) => {
      const ip = ipv4Of(f.data);
      return ip?.src === A && ip.dst === H1;
    });
    expect(sent.every((f) => ipv4Of(f.data)?.spi === overlay.spi)).toBe(true);
    const replay = path.join(dir, 'replay.pcap');
    await fs.writeFile(replay, writePcap({ linktype: padded.linktype, frames: sent }), { mode: 0o600 });
    const pre = snap; // nothing was sent since
    const inj = await lab.root(['python3', progs.inject, replay, lab.node(h1).underlay.hostVeth]);
    expect({ code: inj.code, stdout: inj.stdout.trim() }).toEqual({ code: 0, stdout: `sent ${sent.length}` });
    await sleep(1000);
    const post = await snapshot(lab, { counters: true });
    const sa = (s: Snapshot) => s.nodes.get(h1)!.states.find((x) => x.spi === overlay.spi)!.counters!;
    const replays = (s: Snapshot) => sa(s).replayErrors + sa(s).replayWindowErrors;
    const seqErr = delta(pre.nodes.get(h1)!.xfrmStat.XfrmInStateSeqError, post.nodes.get(h1)!.xfrmStat.XfrmInStateSeqError);
    const redelivered = delta(pre.servers.get(server.circuit)!.IcmpInEchos, post.servers.get(server.circuit)!.IcmpInEchos);
    console.log(
      `replay: ${sent.length} ESP frames alice -> ${h1} (spi ${hex(overlay.spi)}) re-sent on ${h1}'s wire: ` +
        `SA replay counter +${replays(post) - replays(pre)}, accepted packets +${sa(post).packets - sa(pre).packets}, ` +
        `${h1} XfrmInStateSeqError +${seqErr}, echo requests at the server +${redelivered}`,
    );
    expect(replays(post) - replays(pre)).toBe(sent.length);
    expect(seqErr).toBe(sent.length);
    expect(sa(post).packets - sa(pre).packets).toBe(0);
    expect(redelivered).toBe(0);
  }, STEP);

  test('c: rekey --circuit web --grace 5 during a download: it completes intact, every SA of the circuit has a new SPI, the old ones are gone', async () => {
    const dl = path.join(progs.dir, 'download');
    await fs.rm(dl, { recursive: true, force: true });
    await fs.mkdir(dl, { mode: 0o700 });
    const file = path.join(lab.rec.dir, 'www', '20M.bin');
    const want = readFileSync(file);
    const { snap: pre, st: st0 } = await checkpoint('before rekey --circuit web', { counters: true });
    const c0 = st0.circuits.web!;
    // paced at 64 KiB/s until the rekey is over (at most 320 s), then at full speed
    const rate = 65536;
    const go = await lab.root(['sh', '-c', `setsid nsenter --net=/run/netns/${lab.node('alice').ns} sh ${progs.download} ${dl} http://${lab.server}/20M.bin ${rate} </dev/null >${dl}/download.log 2>&1 & echo started`]);
    expect(go.code).toBe(0);
    const flowing = await waitFor(path.join(dl, 'result.flowing'), 3 * MIN);
    if (!flowing) throw new Error(`the download did not start: ${await fs.readFile(path.join(dl, 'curl.err'), 'utf8').catch(() => '')}`);

    const t0 = Date.now();
    const rk = await ctl('rekey', ['--circuit', 'web', '--grace', '5']);
    const took = (Date.now() - t0) / 1000;
    const spanned = !existsSync(path.join(dl, 'result')) && !existsSync(path.join(dl, 'curl.rc'));
    // the counters right after the rekey (the download still paced), then after the download
    const { snap: mid } = await checkpoint('right after rekey --circuit web', { counters: true });
    await fs.writeFile(path.join(dl, 'stop'), '');
    const finished = (await waitFor(path.join(dl, 'result'), 6 * MIN)) && (await waitFor(path.join(dl, 'curl.rc'), 30_000));
    const { snap: post, st: st1 } = await checkpoint('after the download', { counters: true });
    expect(show(rk)).toMatchObject({ code: 0 });
    expect(spanned).toBe(true); // the transfer ran during the whole rekey
    expect(finished).toBe(true);

    // --- what was lost, printed: during the rekey (paced transfer), and after it (the rest at full speed)
    const srv = lab.rec.layout.servers[0]!.circuit;
    const tcp = (x: Record<string, number>, y: Record<string, number>) => Object.fromEntries(TCP_COUNTERS.map((k) => [k, delta(x[k], y[k])])) as Record<(typeof TCP_COUNTERS)[number], number>;
    const losses = (a: Snapshot, b: Snapshot) => ({
      server: tcp(a.servers.get(srv)!, b.servers.get(srv)!),
      client: tcp(a.nodes.get('alice')!.nstat, b.nodes.get('alice')!.nstat),
      other: [...b.nodes.keys()].flatMap((n) => {
        const [x, y] = [a.nodes.get(n)!.xfrmStat, b.nodes.get(n)!.xfrmStat];
        return Object.keys(y).filter((k) => !['XfrmInNoStates', 'XfrmInStateSeqError', 'XfrmOutNoStates'].includes(k) && delta(x[k], y[k]) !== 0).map((k) => `${n} ${k} +${delta(x[k], y[k])}`);
      }),
      xfrm: [...b.nodes.keys()].map((n) => {
        const [x, y] = [a.nodes.get(n)!.xfrmStat, b.nodes.get(n)!.xfrmStat];
        return { node: n, inNoStates: delta(x.XfrmInNoStates, y.XfrmInNoStates), inSeqError: delta(x.XfrmInStateSeqError, y.XfrmInStateSeqError), outNoStates: delta(x.XfrmOutNoStates, y.XfrmOutNoStates) };
      }),
    });
    const during = losses(pre, mid);
    const after = losses(mid, post);
    const result = JSON.parse(await fs.readFile(path.join(dl, 'result'), 'utf8')) as { bytes: number; sha256: string };
    const curlRc = (await fs.readFile(path.join(dl, 'curl.rc'), 'utf8')).trim();
    const curlSize = Number(/@@size (\d+)/.exec(await fs.readFile(path.join(dl, 'curl.err'), 'utf8'))?.[1]);
    const xfrmLine = (l: ReturnType<typeof losses>) => `${l.xfrm.map((r) => `${r.node} ${r.inNoStates}/${r.inSeqError}/${r.outNoStates}`).join(', ')}; other xfrm errors: ${l.other.join(', ') || 'none'}`;
    // a retransmission the receiver reports as a duplicate (DSACK) was not lost: at most the rest were
    const tcpLine = (t: ReturnType<typeof tcp>) =>
      `at most ${Math.max(0, t.TcpRetransSegs - t.TcpExtTCPDSACKRecv)} segments lost: ${t.TcpRetransSegs} retransmitted, ${t.TcpExtTCPDSACKRecv} of them reported as duplicates by the client (DSACK); tail-loss probes ${t.TcpExtTCPLossProbes}, timeouts ${t.TcpExtTCPTimeouts}`;
    console.log(
      [
        `rekey --circuit web --grace 5 during a 20 MiB download through the circuit (paced at ${rate / 1024} KiB/s until the rekey ended): rekey exit ${rk.code} after ${took.toFixed(1)} s;`,
        `  download: curl exit ${curlRc}, ${result.bytes} of ${want.length} bytes, sha256 ${result.sha256 === createHash('sha256').update(want).digest('hex') ? 'matches' : 'DIFFERS'}`,
        `  TCP, server (the data sender), during the rekey: ${tcpLine(during.server)}`,
        `                           after it (the rest at full speed): ${tcpLine(after.server)}`,
        `  TCP retransmissions in the client namespace (its sshd's management sessions too): +${during.client.TcpRetransSegs} during, +${after.client.TcpRetransSegs} after; duplicate segments received (DSACKs sent) +${during.client.TcpExtTCPDSACKOldSent} / +${after.client.TcpExtTCPDSACKOldSent}`,
        `  xfrm_stat InNoStates/InStateSeqError/OutNoStates per node:`,
        `    during the rekey: ${xfrmLine(during)}`,
        `    after it:         ${xfrmLine(after)}`,
      ].join('\n'),
    );

    // --- the download: complete, intact, no reset
    expect(curlRc).toBe('0');
    expect(curlSize).toBe(want.length);
    expect(result.bytes).toBe(want.length);
    expect(result.sha256).toBe(createHash('sha256').update(want).digest('hex'));

    // --- the state: a new SPI and the next epoch for every SA of the circuit, no previous key left; links untouched
    const c1 = st1.circuits.web!;
    expect(c1.generation).toBe(c0.generation);
    const old = circuitSas(c0);
    const now = circuitSas(c1);
    for (const [i, [label, rec]] of now.entries()) {
      const was = old[i]![1];
      expect({ label, spiChanged: rec.spi !== was.spi, epoch: rec.epoch, retiring: rec.retiring ?? [] }).toEqual({ label, spiChanged: true, epoch: was.epoch + 1, retiring: [] });
    }
    expect(linkSas(st1).map(([l, r]) => [l, r.spi, r.epoch])).toEqual(linkSas(st0).map(([l, r]) => [l, r.spi, r.epoch]));

    // --- the routers: old SPIs nowhere, new ones on exactly their two ends, and the new ones carried the rest of the transfer
    for (const [when, snap] of [['right after the rekey', mid], ['after the download', post]] as const) {
      for (const [label, rec] of old) expect({ when, label, spi: hex(rec.spi), on: holders(snap, rec.spi) }).toEqual({ when, label, spi: hex(rec.spi), on: [] });
    }
    c1.hops.forEach((hop, i) => {
      for (const rec of [c1.fwd[i]!, c1.rev[i]!]) expect({ spi: hex(rec.spi), on: holders(post, rec.spi).sort() }).toEqual({ spi: hex(rec.spi), on: ['alice', hop].sort() });
    });
    const alice = post.nodes.get('alice')!;
    for (const rec of c1.rev) expect(alice.states.find((s) => s.spi === rec.spi)?.counters?.bytes ?? 0).toBeGreaterThan(0);
    // make-before-break: no packet met a missing SA on any node
    for (const r of [...during.xfrm, ...after.xfrm]) expect({ node: r.node, inNoStates: r.inNoStates, outNoStates: r.outNoStates }).toEqual({ node: r.node, inNoStates: 0, outNoStates: 0 });
    expect(keys.problems).toEqual([]);
    expect(epochs.problems).toEqual([]);
  }, STEP);

  test('d: rekey --due renews exactly the SAs that are due (circuit web, made two hours old), nothing else', async () => {
    const st0 = await readState();
    const twoHoursAgo = new Date(Date.now() - 2 * 3600_000).toISOString();
    const edited: State = structuredClone(st0);
    for (const [, rec] of circuitSas(edited.circuits.web!)) rec.since = twoHoursAgo;
    const tmpState = `${lab.ctl.state}.edit`;
    await fs.writeFile(tmpState, JSON.stringify(edited, null, 2) + '\n', { mode: 0o600 });
    await fs.rename(tmpState, lab.ctl.state);

    const r = await ctl('rekey', ['--due', '--grace', '0']);
    const { snap, st: st1 } = await checkpoint('after rekey --due', { counters: true });
    expect(show(r)).toMatchObject({ code: 0 });
    const old = circuitSas(st0.circuits.web!);
    circuitSas(st1.circuits.web!).forEach(([label, rec], i) => {
      const was = old[i]![1];
      expect({ label, spiChanged: rec.spi !== was.spi, epoch: rec.epoch, fresh: Date.parse(rec.since ?? '') > Date.parse(twoHoursAgo) }).toEqual({ label, spiChanged: true, epoch: was.epoch + 1, fresh: true });
    });
    expect(linkSas(st1).map(([l, rec]) => [l, rec.spi, rec.epoch])).toEqual(linkSas(st0).map(([l, rec]) => [l, rec.spi, rec.epoch]));
    for (const [label, rec] of old) expect({ label, on: holders(snap, rec.spi) }).toEqual({ label, on: [] });
    for (const [label, rec] of linkSas(st1)) expect({ label, ends: holders(snap, rec.spi).length }).toEqual({ label, ends: 2 });
    console.log(`rekey --due: ${old.length} SAs of circuit web were due and got new SPIs (${old.map(([, x]) => hex(x.spi)).join(' ')} -> ${circuitSas(st1.circuits.web!).map(([, x]) => hex(x.spi)).join(' ')}); ${linkSas(st1).length} overlay SAs kept theirs`);
    expect(keys.problems).toEqual([]);
    expect(epochs.problems).toEqual([]);
  }, STEP);

  test('e: rotate --circuit web, then rotate --max-age 0s: a new generation on an eligible path, nothing of the old one left, traffic flows', async () => {
    const seen = [(await readState()).circuits.web!.hops.join(' -> ')];
    for (const args of [['--circuit', 'web'], ['--max-age', '0s']]) {
      const c0 = (await readState()).circuits.web!;
      const r = await ctl('rotate', args);
      const { snap, st } = await checkpoint(`after rotate ${args.join(' ')}`);
      expect(show(r)).toMatchObject({ code: 0 });
      const c1 = st.circuits.web!;
      seen.push(c1.hops.join(' -> '));
      expect(c1.generation).toBe(c0.generation + 1);
      expect(Date.parse(c1.created)).toBeGreaterThan(Date.parse(c0.created));
      expect(eligible.map((p) => p.join(' -> '))).toContain(c1.hops.join(' -> '));
      // nothing of the old generation: its SAs, and its addresses in policies, routes, lo, firewall rules
      for (const [label, rec] of circuitSas(c0)) expect({ label, on: holders(snap, rec.spi) }).toEqual({ label, on: [] });
      const gone = c0.addrs.filter((a) => !c1.addrs.includes(a));
      expect(gone.length).toBeGreaterThan(0);
      for (const [node, v] of snap.nodes) {
        for (const a of gone) {
          const where = Object.entries({ policies: v.policies, routes: v.routes, lo: v.lo, iptables: v.iptables }).filter(([, text]) => mentions(text, a)).map(([k]) => k);
          expect({ node, address: a, where }).toEqual({ node, address: a, where: [] });
        }
      }
      // the new generation: each SA on exactly its two ends, each A_ci on alice's lo
      c1.hops.forEach((hop, i) => {
        for (const rec of [c1.fwd[i]!, c1.rev[i]!]) expect({ spi: hex(rec.spi), on: holders(snap, rec.spi).sort() }).toEqual({ spi: hex(rec.spi), on: ['alice', hop].sort() });
      });
      for (const a of c1.addrs) expect(mentions(snap.nodes.get('alice')!.lo, a)).toBe(true);
      const t = await traffic();
      expect({ replies: t.replies, bytes: t.bytes, detail: t.detail }).toEqual({ replies: 3, bytes: 20000, detail: t.detail });
    }
    console.log(`paths of circuit web over ${seen.length - 1} rotations (eligible: ${eligible.map((p) => p.join(' -> ')).join(' | ')}):\n  ${seen.join('\n  ')}`);
    expect(keys.problems).toEqual([]);
    expect(epochs.problems).toEqual([]);
  }, STEP);

  test('no key was ever installed under two SPIs, and no epoch went back', () => {
    console.log(`keys seen: ${keys.spis} SPIs, each with its own key; ${epochs.epochs} SA epochs in the states written`);
    expect(keys.problems).toEqual([]);
    expect(epochs.problems).toEqual([]);
    // 16 SAs after apply, 6 new by rekey, 6 by rekey --due, 6 per rotation
    expect(keys.spis).toBeGreaterThanOrEqual(16 + 6 + 6 + 2 * 6);
  });
});
});
