/**
 * Reading and writing classic pcap files (what `tcpdump -w` writes), enough for lab tests that
 * look at ESP on the wire: frame lengths, IPv4 addresses, the ESP SPI and sequence number, and
 * re-sending chosen frames unchanged (a replay attacker on the wire).
 */

export interface PcapFrame {
  /** capture time, seconds */
  ts: number;
  /** length on the wire */
  len: number;
  /** the captured bytes (caplen of them) */
  data: Buffer;
}

export interface Pcap {
  /** 1: Ethernet */
  linktype: number;
  frames: PcapFrame[];
}

export interface Ipv4Info {
  src: string;
  dst: string;
  /** IP protocol number (50: ESP) */
  proto: number;
  /** IPv4 total length */
  ipLen: number;
  /** ESP SPI and sequence number, for proto 50 */
  spi?: number;
  seq?: number;
}

const MAGICS: Record<number, { le: boolean; nano: boolean }> = {
  0xa1b2c3d4: { le: true, nano: false },
  0xa1b23c4d: { le: true, nano: true },
};

export function parsePcap(buf: Buffer): Pcap {
  if (buf.length < 24) throw new Error('not a pcap file: shorter than its header');
  let fmt = MAGICS[buf.readUInt32LE(0)];
  let le = true;
  if (!fmt) {
    fmt = MAGICS[buf.readUInt32BE(0)];
    le = false;
    if (!fmt) throw new Error(`not a pcap file (magic 0x${buf.readUInt32LE(0).toString(16)})`);
  }
  const u32 = (o: number) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  const linktype = u32(20) & 0x0fffffff;
  const frames: PcapFrame[] = [];
  let off = 24;
  while (off + 16 <= buf.length) {
    const sec = u32(off);
    const frac = u32(off + 4);
    const caplen = u32(off + 8);
    const len = u32(off + 12);
    if (off + 16 + caplen > buf.length) break; // a record cut short (tcpdump killed mid-write)
    frames.push({ ts: sec + frac / (fmt.nano ? 1e9 : 1e6), len, data: buf.subarray(off + 16, off + 16 + caplen) });
    off += 16 + caplen;
  }
  return { linktype, frames };
}

/** A pcap file (microsecond, little-endian) holding these frames. */
export function writePcap(p: Pcap): Buffer {
  const head = Buffer.alloc(24);
  head.writeUInt32LE(0xa1b2c3d4, 0);
  head.writeUInt16LE(2, 4);
  head.writeUInt16LE(4, 6);
  head.writeUInt32LE(262144, 16);
  head.writeUInt32LE(p.linktype, 20);
  const parts: Buffer[] = [head];
  for (const f of p.frames) {
    const h = Buffer.alloc(16);
    h.writeUInt32LE(Math.floor(f.ts), 0);
    h.writeUInt32LE(Math.round((f.ts % 1) * 1e6) % 1e6, 4);
    h.writeUInt32LE(f.data.length, 8);
    h.writeUInt32LE(f.len, 12);
    parts.push(h, f.data);
  }
  return Buffer.concat(parts);
}

/** The IPv4 header (and ESP header) of an Ethernet frame; undefined for anything else. */
export function ipv4Of(frame: Buffer, linktype = 1): Ipv4Info | undefined {
  if (linktype !== 1) throw new Error(`only Ethernet captures are handled (link type ${linktype})`);
  let off = 12;
  let type = frame.length >= 14 ? frame.readUInt16BE(off) : 0;
  if (type === 0x8100 && frame.length >= 18) {
    off += 4;
    type = frame.readUInt16BE(off);
  }
  off += 2;
  if (type !== 0x0800 || frame.length < off + 20) return undefined;
  const ihl = (frame[off]! & 0x0f) * 4;
  const ip = (o: number) => `${frame[o]}.${frame[o + 1]}.${frame[o + 2]}.${frame[o + 3]}`;
  const info: Ipv4Info = { src: ip(off + 12), dst: ip(off + 16), proto: frame[off + 9]!, ipLen: frame.readUInt16BE(off + 2) };
  if (info.proto === 50 && frame.length >= off + ihl + 8) {
    info.spi = frame.readUInt32BE(off + ihl);
    info.seq = frame.readUInt32BE(off + ihl + 4);
  }
  return info;
}
