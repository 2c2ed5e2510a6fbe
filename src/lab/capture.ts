/**
 * Header-only captures (tcpdump -n) on the bridge-side veth ends, i.e. on the wire, and their
 * reduction to the address pairs each observation point saw.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, promises as fs } from 'node:fs';
import { once } from 'node:events';

export interface Packet {
  src: string;
  dst: string;
  proto: 'esp' | 'icmp' | 'tcp' | 'udp' | 'other';
}

const LINE = /^IP (\d+\.\d+\.\d+\.\d+)(?:\.(\d+))? > (\d+\.\d+\.\d+\.\d+)(?:\.(\d+))?: (.*)$/;

/** Parses `tcpdump -n -t -l` lines (IPv4 only; other lines are ignored). */
export function parseTcpdump(text: string): Packet[] {
  const out: Packet[] = [];
  for (const raw of text.split('\n')) {
    const m = LINE.exec(raw.trim());
    if (!m) continue;
    const rest = m[5]!;
    let proto: Packet['proto'] = 'other';
    if (rest.startsWith('ESP')) proto = 'esp';
    else if (rest.startsWith('ICMP')) proto = 'icmp';
    else if (rest.startsWith('Flags') || / tcp /.test(rest) || rest.startsWith('tcp')) proto = 'tcp';
    else if (rest.startsWith('UDP') || rest.startsWith('udp')) proto = 'udp';
    out.push({ src: m[1]!, dst: m[3]!, proto });
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
    else m.set(k, { ...p, count: 1 });
  }
  return [...m.values()].sort((a, b) => (a.src + a.dst + a.proto < b.src + b.dst + b.proto ? -1 : 1));
}

export interface Capture {
  iface: string;
  stop(): Promise<Packet[]>;
}

/** Starts tcpdump on an interface of the current namespace and waits until it listens. */
export async function startCapture(iface: string, file: string, timeoutMs = 15_000): Promise<Capture> {
  const out = createWriteStream(file);
  await once(out, 'open');
  const child: ChildProcess = spawn('tcpdump', ['-n', '-t', '-l', '-i', iface, '-s', '128', '--immediate-mode', 'ip'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.pipe(out);
  let err = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`tcpdump on ${iface} did not start: ${err.trim()}`)), timeoutMs);
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      if (err.includes('listening on')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`tcpdump on ${iface} exited (${code}): ${err.trim()}`));
    });
  });
  return {
    iface,
    async stop() {
      const exited = once(child, 'exit');
      child.kill('SIGINT');
      const t = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(t);
      await new Promise<void>((r) => out.end(r));
      return parseTcpdump(await fs.readFile(file, 'utf8'));
    },
  };
}
