/**
 * The topology file format: one zod schema, strict objects everywhere (an unknown key is an
 * error, so a typo never silently drops a setting). Semantic checks that need the whole file
 * (references, overlaps, eligibility) live in validate.ts.
 */
import { z } from 'zod';
import { AddrError, parseCidr, parseIfAddr } from '../net/addr.js';
import { checkPublicKeyLine } from './ssh-key.js';

/** Conservative: safe as an argument to ip(8), in a file name and in a shell word. */
export const NAME_RE = /^[a-z][a-z0-9_-]{0,30}$/;
/** Linux interface names: IFNAMSIZ-1 = 15 characters, no slash, no whitespace. */
export const IFNAME_RE = /^[a-zA-Z][a-zA-Z0-9_.-]{0,14}$/;
export const COUNTRY_RE = /^[A-Z]{2}$/;

const name = z
  .string()
  .regex(NAME_RE, 'names must start with a lower-case letter and contain only a-z, 0-9, "_" and "-" (at most 31 characters)');

const ifname = z
  .string()
  .regex(IFNAME_RE, 'interface names are at most 15 characters of a-z, A-Z, 0-9, "_", "." and "-"');

function addrCheck(parse: (s: string) => unknown) {
  return (s: string, ctx: z.RefinementCtx) => {
    try {
      parse(s);
    } catch (e) {
      if (e instanceof AddrError) ctx.addIssue({ code: 'custom', message: e.message });
      else throw e;
    }
  };
}
const cidr = z.string().superRefine(addrCheck(parseCidr));
/** An interface address: not its subnet's network or broadcast address (the kernel would route it as such). */
const ifaddr = z.string().superRefine(
  addrCheck((s) => {
    const a = parseIfAddr(s);
    if (a.len <= 30) {
      const host = a.len === 0 ? 0xffffffff : (~(~0 << (32 - a.len))) >>> 0;
      const bits = (a.addr & host) >>> 0;
      if (bits === 0) throw new AddrError(`${s} is the network address of its subnet, not a host address`);
      if (bits === host) throw new AddrError(`${s} is the broadcast address of its subnet, not a host address`);
    }
    return a;
  }),
);

export const HOPS_MIN = 2;
/** k telescope layers + 1 overlay layer; the kernel carries at most 5 nested tunnel layers. */
export const HOPS_MAX = 4;

const hops = z
  .number()
  .int()
  .min(HOPS_MIN, `hops must be at least ${HOPS_MIN}`)
  .max(
    HOPS_MAX,
    `hops must be at most ${HOPS_MAX}: k telescope layers plus the overlay layer go into one policy, and a real kernel carries at most 5 nested tunnel layers (it accepts 6 templates but the 6-layer bundle fails when sending)`,
  );

export const CRYPTO_PROFILES = ['aes-gcm', 'aes-cbc-hmac-sha1'] as const;
export const NAT_BACKENDS = ['iptables', 'nftables'] as const;

const distinct = z.strictObject({
  countries: z.boolean().optional(),
  subnets16: z.boolean().optional(),
});

const underlay = z.strictObject({
  interface: ifname,
  address: ifaddr,
  mtu: z.number().int().min(576).max(65535).optional(),
});

const PORT_HELP = 'a port is a number from 1 to 65535, or a range "FIRST-LAST" such as "8000-8080"';

/** What is wrong with one entry of a `ports` list; undefined when it is a port or a range the kernel takes. */
export function portProblem(v: unknown): string | undefined {
  const ok = (n: number) => Number.isInteger(n) && n >= 1 && n <= 65535;
  if (typeof v === 'number') return ok(v) ? undefined : `port ${v} is out of range: ${PORT_HELP}`;
  if (typeof v !== 'string') return PORT_HELP;
  const m = /^(\d{1,5})-(\d{1,5})$/.exec(v);
  if (!m) return `${JSON.stringify(v.slice(0, 40))} is not a port: ${PORT_HELP}${/^[a-z]/i.test(v) ? ' (service names are not looked up)' : ''}`;
  const [a, b] = [Number(m[1]), Number(m[2])];
  if (!ok(a) || !ok(b)) return `port range "${v}" goes outside 1-65535`;
  if (a > b) return `port range "${v}" runs backwards; write "${b}-${a}"`;
  return undefined;
}

const portEntry = z.union([z.number(), z.string()]).superRefine((v, ctx) => {
  const why = portProblem(v);
  if (why) ctx.addIssue({ code: 'custom', message: why });
}) as z.ZodType<number | string>;

const allowRule = z
  .strictObject({
    to: cidr,
    proto: z.enum(['tcp', 'udp', 'icmp', 'any']).default('any'),
    ports: z.array(portEntry).min(1).optional(),
  })
  .superRefine((r, ctx) => {
    if (r.ports && r.proto !== 'tcp' && r.proto !== 'udp') {
      ctx.addIssue({ code: 'custom', path: ['ports'], message: `ports apply to tcp and udp only: with proto ${r.proto} they would match nothing; give proto tcp or udp, or drop the ports` });
    }
  });

const exit = z.strictObject({
  /** Outside interface; defaults to the underlay interface. */
  interface: ifname.optional(),
  /** The address A_ck is SNATed to; defaults to the underlay address. */
  address: ifaddr.optional(),
  nat: z.enum(NAT_BACKENDS).optional(),
  allow: z.array(allowRule).min(1),
});

const ssh = z.strictObject({
  host: z.string().min(1).optional(),
  port: z.number().int().min(1).max(65535).optional(),
  user: z.string().regex(/^[a-z_][a-z0-9_-]{0,31}$/).optional(),
  /** Pinned host key, "ssh-ed25519 AAAA..." (as in known_hosts, without the host field). */
  hostKey: z
    .string()
    .superRefine((v, ctx) => {
      const err = checkPublicKeyLine(v);
      if (err) ctx.addIssue({ code: 'custom', message: err });
    })
    .optional(),
});

const router = z.strictObject({
  name,
  operator: name,
  country: z.string().regex(COUNTRY_RE, 'country is an ISO 3166 alpha-2 code such as DE').optional(),
  underlay,
  pool: cidr,
  exit: exit.optional(),
  /** firewall backend for this router (an exit's own `exit.nat` wins); default: the topology's */
  nat: z.enum(NAT_BACKENDS).optional(),
  ssh: ssh.optional(),
});

const client = z.strictObject({
  name,
  underlay,
  /** Entry routers: the first hop of each of this client's circuits is one of these. */
  entry: z.array(name).min(1),
  ssh: ssh.optional(),
});

const operator = z.strictObject({
  name,
  description: z.string().optional(),
});

const link = z.tuple([name, name]);

/** ESP TFC padding: the kernel caps the padded length at the layer's path MTU. */
export const TFCPAD_MIN = 64;
export const TFCPAD_MAX = 65535;
export const TFCPAD_LAYER_SETS = ['telescope', 'overlay', 'all'] as const;

/**
 * Per-circuit TFC padding (ip xfrm state ... tfcpad SIZE): packets shorter than `size` are padded
 * to it on the chosen layers, in both directions. `layers`: telescope layer numbers 1..k (1 is
 * the entry's, k the exit's, innermost), or "telescope" (all k), "overlay" (the overlay links
 * the circuit runs over: shared with other circuits, so it pads all their traffic too), "all".
 */
const tfcpad = z.strictObject({
  size: z
    .number()
    .int()
    .min(TFCPAD_MIN, `tfcpad size must be at least ${TFCPAD_MIN} bytes`)
    .max(TFCPAD_MAX, `tfcpad size must be at most ${TFCPAD_MAX} bytes (the kernel pads to at most the path MTU anyway)`),
  layers: z.union([z.enum(TFCPAD_LAYER_SETS), z.array(z.number().int().min(1, 'telescope layers are numbered from 1 (the entry) to k (the exit)')).min(1)]).default('telescope'),
});

const circuit = z
  .strictObject({
    name,
    client: name,
    to: z.array(cidr).min(1),
    /**
     * What the circuit carries. When given, only an exit whose `allow` list admits all of it to
     * every destination is chosen (as Tor matches exit policies per stream); unstated, any exit
     * whose list covers the destinations is, and audit says which traffic that exit would drop.
     */
    proto: z.enum(['tcp', 'udp', 'icmp', 'any']).optional(),
    ports: z.array(portEntry).min(1).optional(),
    hops: hops.optional(),
    distinct: distinct.optional(),
    tfcpad: tfcpad.optional(),
  })
  .superRefine((c, ctx) => {
    if (c.ports && c.proto !== 'tcp' && c.proto !== 'udp') {
      ctx.addIssue({ code: 'custom', path: ['ports'], message: `ports need proto tcp or udp${c.proto ? ` (this circuit says ${c.proto})` : ''}` });
    }
  });

const keys = z.strictObject({
  source: z.enum(['kdf', 'random']).default('kdf'),
});

export const TopologySchema = z.strictObject({
  version: z.literal(1),
  hops: hops.default(3),
  crypto: z.enum(CRYPTO_PROFILES).default('aes-gcm'),
  keys: keys.default({ source: 'kdf' }),
  nat: z.enum(NAT_BACKENDS).default('iptables'),
  distinct: distinct.default({}),
  /** Extra route options for generated routes, e.g. the lab sets quickack. */
  routeOptions: z.strictObject({ quickack: z.boolean().optional() }).optional(),
  operators: z.array(operator).min(1),
  routers: z.array(router).min(1),
  clients: z.array(client).default([]),
  links: z.array(link).default([]),
  circuits: z.array(circuit).default([]),
});

export type TopologyInput = z.input<typeof TopologySchema>;
export type Topology = z.output<typeof TopologySchema>;
export type RouterSpec = Topology['routers'][number];
export type ClientSpec = Topology['clients'][number];
export type CircuitSpec = Topology['circuits'][number];
export type ExitSpec = NonNullable<RouterSpec['exit']>;
export type AllowRule = ExitSpec['allow'][number];
export type CryptoProfileName = (typeof CRYPTO_PROFILES)[number];
export type NatBackend = (typeof NAT_BACKENDS)[number];
