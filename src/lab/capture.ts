/**
 * Header-only captures (tcpdump -n, snap length 128) of the wire: one tcpdump on "any" in the
 * lab's switch namespace sees every bridge-side veth end, i.e. every node's wire, and names the
 * interface on each line. One process instead of one per interface matters inside User-Mode
 * Linux, where each process start costs about a second.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { script, type LabHost } from './host.js';

export interface Packet {
  iface: string;
  src: string;
  dst: string;
  proto: 'esp' | 'icmp' | 'tcp' | 'udp' | 'other';
  /** ESP SPI as tcpdump prints it (0x........) */
  spi?: string;
}

// tcpdump 4.99 on "any": "IFACE In  IP 198.51.100.10 > 198.51.100.11: ESP(spi=...), length 140"
const LINE = /^(?:(\S+)\s+(?:In|Out|B|M|P)\s+)?IP (\d+\.\d+\.\d+\.\d+)(?:\.\d+)? > (\d+\.\d+\.\d+\.\d+)(?:\.\d+)?: (.*)$/;

export function parseTcpdump(text: string): Packet[] {
  const out: Packet[] = [];
  for (const raw of text.split('\n')) {
    const m = LINE.exec(raw.trim());
    if (!m) continue;
    const rest = m[4]!;
    let proto: Packet['proto'] = 'other';
    if (rest.startsWith('ESP')) proto = 'esp';
    else if (rest.startsWith('ICMP')) proto = 'icmp';
    else if (rest.startsWith('Flags') || rest.startsWith('tcp')) proto = 'tcp';
    else if (rest.startsWith('UDP') || rest.startsWith('udp')) proto = 'udp';
    const spi = proto === 'esp' ? /^ESP\(spi=(0x[0-9a-f]+)/.exec(rest)?.[1] : undefined;
    out.push({ iface: m[1] ?? '', src: m[2]!, dst: m[3]!, proto, ...(spi ? { spi } : {}) });
  }
  return out;
}

export interface Pair {
  src: string;
  dst: string;
  proto: Packet['proto'];
  count: number;
}

export function pairs(pkts: Packet[]): Pair[] {
  const m = new Map<string, Pair>();
  for (const p of pkts) {
    const k = `${p.src}>${p.dst}/${p.proto}`;
    const e = m.get(k);
    if (e) e.count++;
    else m.set(k, { src: p.src, dst: p.dst, proto: p.proto, count: 1 });
  }
  return [...m.values()].sort((a, b) => (a.src + a.dst + a.proto < b.src + b.dst + b.proto ? -1 : 1));
}

export interface Capture {
  stop(): Promise<Packet[]>;
}

async function waitForText(file: string, text: string, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const t = await fs.readFile(file, 'utf8').catch(() => '');
    if (t.includes(text)) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

/** Starts tcpdump on "any" in the lab's switch namespace; `name` names the files in `dir`. */
export async function startCapture(host: LabHost, dir: string, name: string): Promise<Capture> {
  const out = path.join(dir, `${name}.txt`);
  const err = path.join(dir, `${name}.err`);
  const pidf = path.join(dir, `${name}.tcpdump.pid`);
  await fs.rm(err, { force: true });
  await script(host, 'starting tcpdump', [
    `setsid tcpdump -n -t -i any -s 128 --immediate-mode ip >${out} 2>${err} </dev/null &`,
    `echo $! >${pidf}`,
  ]);
  if (!(await waitForText(err, 'listening on', 30_000))) {
    throw new Error(`tcpdump did not start: ${(await fs.readFile(err, 'utf8').catch(() => '')).trim()}`);
  }
  return {
    async stop() {
      // give packets in flight a moment to be written, then stop; tcpdump prints its
      // statistics on exit, which tells us the output is complete
      await new Promise((r) => setTimeout(r, 500));
      await script(host, 'stopping tcpdump', [`kill -INT "$(cat ${pidf})"`]);
      if (!(await waitForText(err, 'packets captured', 30_000))) {
        await host.run(['sh', '-c', `kill -KILL "$(cat ${pidf})"`]);
      }
      await fs.rm(pidf, { force: true });
      return parseTcpdump(await fs.readFile(out, 'utf8'));
    },
  };
}
