/**
 * Helpers for the rekey / rotate / replay / TFC lab test (test/lab/rotation.test.ts):
 *   - one snapshot of every node in one round trip to the lab kernel: onionctl's SAs (parsed in
 *     memory; keys become fingerprints at once), policies, routes, addresses, firewall rules,
 *     /proc/net/xfrm_stat and TCP counters;
 *   - ledgers that check, over the whole test, that no key is ever installed under two SPIs and
 *     that an SA's epochs only move forward;
 *   - small programs run inside the lab kernel: a pacing reader for a long download, and a
 *     replayer that re-sends captured frames unchanged.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { XfrmStateRecord } from '../../src/readback/records.js';
import { parseXfrmStat, parseXfrmStates } from '../../src/readback/xfrm.js';
import type { State } from '../../src/state/model.js';
import { ONIONCTL_SPI, type LabHandle } from './lab.js';

// ---- programs for the lab kernel --------------------------------------------------------------

/**
 * Reads stdin (curl's output) at RATE bytes/s until the file STOP exists, then at full speed;
 * at EOF writes {"bytes", "sha256"} to OUT. Once 64 KiB have arrived it creates OUT.flowing.
 * A slow reader only closes the TCP window (no drops), so the transfer lasts as long as the test
 * needs without the sender losing anything to the pacing itself.
 */
const PACE_PY = `import hashlib, json, os, sys, time
stop, out, rate = sys.argv[1], sys.argv[2], int(sys.argv[3])
h = hashlib.sha256(); n = 0; t0 = time.monotonic(); fast = False; flowing = False
while True:
    b = sys.stdin.buffer.read1(65536 if fast else 8192)
    if not b: break
    h.update(b); n += len(b)
    if not flowing and n >= 65536:
        open(out + '.flowing', 'w').close(); flowing = True
    if not fast:
        fast = os.path.exists(stop)
        ahead = n / rate - (time.monotonic() - t0)
        if ahead > 0 and not fast: time.sleep(ahead)
with open(out + '.tmp', 'w') as f: json.dump({'bytes': n, 'sha256': h.hexdigest()}, f)
os.rename(out + '.tmp', out)
`;

/**
 * sh download.sh DIR URL RATE: curl's exit code goes to DIR/curl.rc, its byte count to
 * DIR/curl.err ("@@size N"), what arrived to DIR/result; DIR/stop ends the pacing.
 */
const DOWNLOAD_SH = `here=$(dirname "$0")
cd "$1" || exit 1
{ curl -sS --max-time 900 -o - -w '%{stderr}@@size %{size_download}\\n' "$2" 2>curl.err; echo $? >curl.rc; } | python3 "$here/pace.py" "$1/stop" "$1/result" "$3"
`;

/** Re-sends every frame of an Ethernet pcap file on an interface, unchanged (AF_PACKET). */
const INJECT_PY = `import socket, struct, sys
data = open(sys.argv[1], 'rb').read()
end = '<' if struct.unpack('<I', data[:4])[0] in (0xa1b2c3d4, 0xa1b23c4d) else '>'
if struct.unpack(end + 'I', data[20:24])[0] != 1: sys.exit('not an Ethernet capture')
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[2], 0))
off, n = 24, 0
while off + 16 <= len(data):
    incl = struct.unpack(end + 'IIII', data[off:off + 16])[2]
    s.send(data[off + 16:off + 16 + incl]); n += 1
    off += 16 + incl
print('sent', n)
`;

export interface LabPrograms {
  dir: string;
  download: string;
  inject: string;
}

/** Writes the programs into DIR (inside the lab directory: the guest sees it through hostfs). */
export async function writePrograms(dir: string): Promise<LabPrograms> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  await fs.writeFile(path.join(dir, 'pace.py'), PACE_PY, { mode: 0o600 });
  await fs.writeFile(path.join(dir, 'download.sh'), DOWNLOAD_SH, { mode: 0o600 });
  await fs.writeFile(path.join(dir, 'inject.py'), INJECT_PY, { mode: 0o600 });
  return { dir, download: path.join(dir, 'download.sh'), inject: path.join(dir, 'inject.py') };
}

// ---- snapshots --------------------------------------------------------------------------------

export interface NodeView {
  /** onionctl's SAs (SPI range), keys as fingerprints only */
  states: XfrmStateRecord[];
  policies: string;
  /** ip route show table all proto 79 */
  routes: string;
  /** ip -4 addr show dev lo */
  lo: string;
  iptables: string;
  xfrmStat: Record<string, number>;
  /** nstat counters of the namespace (TCP_COUNTERS, IcmpInEchos) */
  nstat: Record<string, number>;
}

export interface Snapshot {
  nodes: Map<string, NodeView>;
  /** the servers' namespaces: nstat counters only */
  servers: Map<string, Record<string, number>>;
}

/** TCP counters that tell lost segments from spurious retransmissions (tail-loss probes, RTOs after a stall, segments the receiver reports as duplicates) */
export const TCP_COUNTERS = ['TcpRetransSegs', 'TcpExtTCPLossProbes', 'TcpExtTCPTimeouts', 'TcpExtTCPSpuriousRTOs', 'TcpExtTCPDSACKRecv', 'TcpExtTCPDSACKOldSent'] as const;
const NSTAT = `nstat -asz ${TCP_COUNTERS.join(' ')} IcmpInEchos`;

function parseNstat(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const l of text.split('\n')) {
    const m = /^(\w+)\s+(\d+)/.exec(l.trim());
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}

/**
 * Every node and server, in one round trip to the lab kernel. `counters: true` reads only the SAs
 * and the counters (policies, routes, addresses and firewall rules come back empty): fewer
 * process starts in the emulated kernel.
 */
export async function snapshot(lab: LabHandle, opts: { counters?: boolean } = {}): Promise<Snapshot> {
  const ipt = `${lab.iptables}-save`;
  const config = opts.counters ? 'echo @@; echo @@; echo @@; echo @@' : `echo @@; ip xfrm policy; echo @@; ip route show table all proto 79; echo @@; ip -4 addr show dev lo; echo @@; ${ipt}`;
  const nodeScript = `ip -s xfrm state; ${config}; echo @@; cat /proc/net/xfrm_stat; echo @@; ${NSTAT}`;
  const parts = lab.rec.layout.nodes.map((n) => `echo '@@@ node ${n.name}'; nsenter --net=/run/netns/${n.ns} sh -c '${nodeScript}' || exit 1`);
  for (const s of lab.rec.layout.servers) parts.push(`echo '@@@ server ${s.circuit}'; nsenter --net=/run/netns/${s.ns} ${NSTAT} || exit 1`);
  const r = await lab.root(['sh', '-c', parts.join('\n')]);
  if (r.code !== 0) throw new Error(`reading the nodes failed (exit ${r.code}): ${r.stderr.trim()}`);
  const snap: Snapshot = { nodes: new Map(), servers: new Map() };
  for (const part of r.stdout.split(/^@@@ /m).slice(1)) {
    const nl = part.indexOf('\n');
    const [kind, name] = part.slice(0, nl).split(' ') as [string, string];
    const body = part.slice(nl + 1);
    if (kind === 'server') {
      snap.servers.set(name, parseNstat(body));
      continue;
    }
    const [states, policies, routes, lo, iptables, xfrmStat, nstat] = body.split(/^@@$/m).map((s) => s.replace(/^\n/, ''));
    snap.nodes.set(name, {
      states: parseXfrmStates(states!).filter((s) => s.proto === 'esp' && ONIONCTL_SPI(s.spi)),
      policies: policies!,
      routes: routes!,
      lo: lo!,
      iptables: iptables!,
      xfrmStat: parseXfrmStat(xfrmStat!),
      nstat: parseNstat(nstat!),
    });
  }
  return snap;
}

/** SPIs of onionctl's SAs on one node */
export const spisOn = (v: NodeView): number[] => v.states.map((s) => s.spi);

/** the nodes holding an SA with this SPI */
export function holders(snap: Snapshot, spi: number): string[] {
  return [...snap.nodes].filter(([, v]) => v.states.some((s) => s.spi === spi)).map(([n]) => n);
}

/** true when `text` names the IPv4 address `addr` (not as a prefix of a longer one) */
export function mentions(text: string, addr: string): boolean {
  return new RegExp(`(^|[^0-9.])${addr.replace(/\./g, '\\.')}([^0-9]|$)`, 'm').test(text);
}

// ---- ledgers ----------------------------------------------------------------------------------

export const hex = (spi: number) => `0x${spi.toString(16)}`;

/**
 * Every key seen on any node during the whole test: one key belongs to one SPI, one SPI to one
 * key (both ends hold the same one, and it never changes under that SPI). A key installed twice
 * (under a new SPI, or again after it was removed) shows up as a second SPI for a fingerprint.
 */
export class KeyLedger {
  private readonly fpOf = new Map<number, string>();
  private readonly spiOf = new Map<string, number>();
  readonly problems: string[] = [];
  get spis(): number {
    return this.fpOf.size;
  }

  observe(where: string, snap: Snapshot): void {
    for (const [node, v] of snap.nodes) {
      for (const s of v.states) {
        const fp = s.keyFingerprint;
        if (!fp) {
          this.problems.push(`${where}: ${node} holds spi ${hex(s.spi)} with algorithms that are not an onionctl profile`);
          continue;
        }
        const had = this.fpOf.get(s.spi);
        if (had === undefined) this.fpOf.set(s.spi, fp);
        else if (had !== fp) this.problems.push(`${where}: spi ${hex(s.spi)} on ${node} has another key than before or than its peer`);
        const spi = this.spiOf.get(fp);
        if (spi === undefined) this.spiOf.set(fp, s.spi);
        else if (spi !== s.spi) this.problems.push(`${where}: the key of spi ${hex(spi)} is installed again under spi ${hex(s.spi)} on ${node}`);
      }
    }
  }
}

/** Every SA epoch a state names: "link or1~or2 ab", "circuit web gen 2 hop 1 fwd". */
export function saEpochs(state: State): { id: string; epoch: number; spi: number; current: boolean }[] {
  const out: { id: string; epoch: number; spi: number; current: boolean }[] = [];
  const add = (id: string, rec: { spi: number; epoch: number; retiring?: { spi: number; epoch: number }[] | undefined }) => {
    out.push({ id, epoch: rec.epoch, spi: rec.spi, current: true });
    for (const r of rec.retiring ?? []) out.push({ id, epoch: r.epoch, spi: r.spi, current: false });
  };
  for (const [k, l] of Object.entries(state.links)) {
    add(`link ${k} ab`, l.ab);
    add(`link ${k} ba`, l.ba);
  }
  for (const [name, c] of Object.entries(state.circuits)) {
    c.fwd.forEach((rec, i) => add(`circuit ${name} gen ${c.generation} hop ${i + 1} fwd`, rec));
    c.rev.forEach((rec, i) => add(`circuit ${name} gen ${c.generation} hop ${i + 1} rev`, rec));
  }
  return out;
}

/**
 * Every state written during the test: an SA identity's epoch never goes back, one epoch of one
 * identity has one SPI, and one SPI belongs to one epoch of one identity (SPIs are never reused).
 */
export class EpochLedger {
  private readonly latest = new Map<string, number>();
  private readonly spiOfEpoch = new Map<string, number>();
  private readonly epochOfSpi = new Map<number, string>();
  readonly problems: string[] = [];
  get epochs(): number {
    return this.spiOfEpoch.size;
  }

  observe(where: string, state: State): void {
    for (const e of saEpochs(state)) {
      const key = `${e.id} epoch ${e.epoch}`;
      const spi = this.spiOfEpoch.get(key);
      if (spi === undefined) this.spiOfEpoch.set(key, e.spi);
      else if (spi !== e.spi) this.problems.push(`${where}: ${key} had spi ${hex(spi)}, now ${hex(e.spi)}`);
      const owner = this.epochOfSpi.get(e.spi);
      if (owner === undefined) this.epochOfSpi.set(e.spi, key);
      else if (owner !== key) this.problems.push(`${where}: spi ${hex(e.spi)} of ${owner} is used again for ${key}`);
      if (e.current) {
        const was = this.latest.get(e.id);
        if (was !== undefined && e.epoch < was) this.problems.push(`${where}: ${e.id} went back from epoch ${was} to ${e.epoch}`);
        this.latest.set(e.id, Math.max(was ?? 0, e.epoch));
      }
    }
  }
}
