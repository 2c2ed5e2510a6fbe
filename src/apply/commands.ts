/**
 * One node's ordered changes -> the commands that make them, in stages that apply runs across
 * all nodes in lock step (a stage runs everywhere before the next starts):
 *
 *   receive    new SAs on the end that receives through them: a peer never sends with an SPI the
 *              receiver does not know yet (make-before-break when an SA is rekeyed)
 *   install    settings, fail-closed blocks and the remaining new SAs (the sending ends)
 *   configure  firewall, allow policies, addresses, routes: routers first, then clients (the
 *              engine runs this stage in two waves), so a client switches a circuit to a new path
 *              only once every mix of that path is ready
 *   retire     policies, sending SAs, firewall, routes, addresses and blocks no longer wanted
 *   drain      receiving SAs no longer wanted, once no peer sends with them any more
 *
 * Every command reads its input on stdin (`ip -batch -`, `iptables-restore --noflush`,
 * `nft -f -`, `sysctl --load=-`): SA keys never appear on a command line. A stage with more
 * than one command runs them as one stage script (`sh -s`, stageScript): one SSH channel per
 * stage. Pure.
 */
import type { KeySource } from '../keys/kdf.js';
import type { NodeConfig } from '../model/config.js';
import { formatCidr, formatIPv4 } from '../net/addr.js';
import { ROUTE_PROTO } from '../model/config.js';
import type { OwnedChain } from '../readback/observed.js';
import { NFT_TABLE, OWNER_COMMENT, policyLine, renderIptables, renderNft, routeLine, stateLine, type Templates } from '../render/render.js';
import type { Change } from '../diff/diff.js';
import { orderChanges, phaseOf } from '../diff/order.js';

export const STAGES = ['receive', 'install', 'configure', 'retire', 'drain'] as const;
export type Stage = (typeof STAGES)[number];

/** the stage a change runs in; `own(addr)` says whether an address is the node's own */
export function stageOf(c: Change, own: (addr: number) => boolean): Stage {
  if (c.kind === 'state') {
    if (c.op === 'remove') return own(c.observed.dst) ? 'drain' : 'retire';
    return own(c.desired.dst) ? 'receive' : 'install';
  }
  switch (phaseOf(c)) {
    case 'settings':
    case 'fail closed':
      return 'install';
    case 'firewall':
    case 'policies':
    case 'addresses':
    case 'routes':
      return 'configure';
    default:
      return 'retire';
  }
}

/** a node's own addresses: its underlay (and an exit's outside) address and its lo addresses */
export function ownAddresses(cfg: NodeConfig, ifaceAddrs: number[]): (addr: number) => boolean {
  const set = new Set<number>([...ifaceAddrs, ...cfg.addresses.map((a) => a.addr)]);
  return (a) => set.has(a);
}

export interface Step {
  /** what it does, for progress and errors */
  what: string;
  argv: string[];
  stdin: string;
  /** stdin holds key material: never log it */
  secret: boolean;
  /** how many changes this step carries */
  changes: number;
  /**
   * run instead when `argv` fails because the kernel lacks what it needs (iptables-nft on a
   * kernel without nf_tables for IPv4: then iptables-legacy)
   */
  fallback?: { argv: string[]; when: RegExp };
  /** a stage script (stageScript): the steps it runs, in order, on one SSH channel */
  parts?: Step[];
}

const NO_NFT = /Operation not supported|Protocol not supported|TABLE_ADD failed|Could not fetch rule set/;
const legacyFallback = (restore: string) => (restore === 'iptables-restore' ? { fallback: { argv: ['iptables-legacy-restore', '--noflush'], when: NO_NFT } } : {});

export interface CommandContext {
  keys: KeySource;
  templates: Templates;
  version: string;
  /** the router's iptables-save / -restore pair (from the read-back); default iptables */
  iptables?: { save: string; restore: string };
  /** the router's iptables-save output as read (to skip jump rules it already has) */
  iptablesSave?: string;
  /** the node's own addresses (which end of an SA it is); default: none (every SA "sends") */
  own?: (addr: number) => boolean;
}

const hex32 = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;

/** the `ip -batch` line for a change of an ip-managed kind; undefined for other kinds */
function ipLine(c: Change, keys: KeySource): string | undefined {
  switch (c.kind) {
    case 'state':
      if (c.op === 'add') return stateLine(c.desired, keys, 'secret');
      if (c.op === 'remove') return `xfrm state delete src ${formatIPv4(c.observed.src)} dst ${formatIPv4(c.observed.dst)} proto ${c.observed.proto} spi ${hex32(c.observed.spi)}`;
      // the engine rekeys every replaced SA (new SPI = add + remove); a replace here is a bug
      throw new Error(`internal: state ${c.key} would be re-installed under the same SPI`);
    case 'policy': {
      if (c.op !== 'remove') return policyLine(c.desired);
      const o = c.observed;
      let l = `xfrm policy delete src ${formatCidr(o.src)} dst ${formatCidr(o.dst)}`;
      if (o.proto) l += ` proto ${o.proto}`;
      if (o.selExtra.length > 0) l += ` ${o.selExtra.join(' ')}`;
      l += ` dir ${o.dir}`;
      if (o.mark !== undefined) l += ` mark ${o.mark.replace('/', ' mask ')}`;
      if (o.ifId !== undefined) l += ` if_id ${o.ifId}`;
      return l;
    }
    case 'route': {
      if (c.op !== 'remove') return routeLine(c.desired);
      const o = c.observed;
      let l = `route del ${formatCidr(o.dst)} table ${o.table} proto ${ROUTE_PROTO}`;
      if (o.metric !== 0) l += ` metric ${o.metric}`;
      return l;
    }
    case 'address':
      if (c.op === 'remove') return `address del ${formatIPv4(c.observed.addr)}/${c.observed.len} dev ${c.observed.dev}`;
      return `address replace ${formatIPv4(c.desired.addr)}/32 dev ${c.desired.dev}`;
    default:
      return undefined;
  }
}

const isFirewall = (c: Change) => c.kind === 'chain' || c.kind === 'snat' || c.kind === 'filter' || c.kind === 'rule-order';

/** iptables-restore input that unhooks and deletes some of onionctl's chains */
function iptablesRemoval(chains: OwnedChain[]): string {
  const byTable = new Map<string, OwnedChain[]>();
  for (const c of chains) byTable.set(c.table, [...(byTable.get(c.table) ?? []), c]);
  const lines: string[] = [];
  for (const [table, cs] of byTable) {
    lines.push(`*${table}`);
    for (const c of cs) {
      for (const h of c.hooks) {
        const [chain, ...extra] = h.split(' ');
        lines.push(`-D ${chain}${extra.length > 0 ? ` ${extra.join(' ')}` : ''} -m comment --comment ${OWNER_COMMENT} -j ${c.chain}`);
      }
    }
    for (const c of cs) lines.push(`-F ${c.chain}`, `-X ${c.chain}`);
    lines.push('COMMIT');
  }
  return lines.join('\n') + '\n';
}

/**
 * The steps for one node and one stage. `desired` is the node's full desired configuration: a
 * firewall change rewrites onionctl's chains (or table) as a whole, atomically per table, once,
 * in the configure stage (rule removals included); chains that go entirely are dropped in the
 * drain stage.
 */
export function stageSteps(stage: Stage, desired: NodeConfig, changes: readonly Change[], ctx: CommandContext): Step[] {
  const ordered = orderChanges(changes);
  const own = ctx.own ?? (() => false);
  // old addresses of this node count as its own too (an SA being drained may use one)
  const leaving = new Set<number>();
  for (const c of changes) if (c.kind === 'address' && c.op === 'remove') leaving.add(c.observed.addr);
  const ownOrObserved = (a: number) => own(a) || leaving.has(a);
  const mine = ordered.filter((c) => stageOf(c, ownOrObserved) === stage);
  const steps: Step[] = [];
  const ipt = ctx.iptables ?? { save: 'iptables-save', restore: 'iptables-restore' };

  const sysctls = mine.filter((c) => c.kind === 'sysctl');
  if (sysctls.length > 0) {
    steps.push({
      what: 'sysctl',
      argv: ['sysctl', '-q', '--load=-'],
      stdin: sysctls.map((c) => (c.kind === 'sysctl' ? `${c.desired.key} = ${c.desired.value}` : '')).join('\n') + '\n',
      secret: false,
      changes: sysctls.length,
    });
  }

  const ipLines: string[] = [];
  let ipChanges = 0;
  const flushIp = () => {
    if (ipLines.length === 0) return;
    const secret = ipLines.some((l) => l.startsWith('xfrm state add'));
    steps.push({ what: 'ip -batch', argv: ['ip', '-batch', '-'], stdin: ipLines.join('\n') + '\n', secret, changes: ipChanges });
    ipLines.length = 0;
    ipChanges = 0;
  };

  const fw = ordered.filter(isFirewall);
  const backendOf = (x: Change): string => (x.kind === 'rule-order' ? desired.firewall.backend : ((x.op === 'remove' ? x.observed : x.desired) as { backend: string }).backend);
  const dropped = fw.filter((c): c is Extract<Change, { kind: 'chain'; op: 'remove' }> => c.kind === 'chain' && c.op === 'remove').map((c) => c.observed);
  // rules of a chain that goes entirely leave with it; everything else of the node's own backend is rewritten
  const goes = new Set(dropped.map((c) => `${c.backend} ${c.table} ${c.chain}`));
  const inDropped = (x: Change) => (x.kind === 'snat' || x.kind === 'filter') && x.op === 'remove' && goes.has(`${x.observed.backend} ${x.observed.table} ${x.observed.chain}`);
  const rewrite = fw.filter((c) => backendOf(c) === desired.firewall.backend && !(c.kind === 'chain' && c.op === 'remove') && !inDropped(c));

  for (const c of mine) {
    if (c.kind === 'sysctl' || isFirewall(c)) continue;
    const l = ipLine(c, ctx.keys);
    if (l !== undefined) {
      ipLines.push(l);
      ipChanges++;
    }
    // the firewall goes between the SAs (install) and the allow policies (configure)
  }

  if (stage === 'configure' && rewrite.length > 0) {
    // policies come after the firewall in this stage: emit the firewall first
    const opts = { templates: ctx.templates, version: ctx.version };
    if (desired.firewall.backend === 'iptables') {
      const content = renderIptables(desired, opts);
      steps.push({
        what: 'iptables-restore',
        argv: [ipt.restore, '--noflush'],
        stdin: ctx.iptablesSave !== undefined ? withoutExistingJumps(content, ctx.iptablesSave) : content,
        secret: false,
        changes: rewrite.length,
        ...legacyFallback(ipt.restore),
      });
    } else {
      steps.push({ what: 'nft -f', argv: ['nft', '-f', '-'], stdin: renderNft(desired, opts), secret: false, changes: rewrite.length });
    }
  }
  flushIp();
  if (stage === 'drain' && dropped.length > 0) {
    const iptDrop = dropped.filter((x) => x.backend === 'iptables');
    if (iptDrop.length > 0) steps.push({ what: 'iptables-restore (remove chains)', argv: [ipt.restore, '--noflush'], stdin: iptablesRemoval(iptDrop), secret: false, changes: iptDrop.length });
    const nftDrop = dropped.filter((x) => x.backend === 'nftables');
    if (nftDrop.length > 0) {
      steps.push({ what: 'nft delete table', argv: ['nft', '-f', '-'], stdin: `table ip ${NFT_TABLE}\ndelete table ip ${NFT_TABLE}\n`, secret: false, changes: nftDrop.length });
    }
  }
  return steps;
}

const JUMP = /^-A (\S+) -m comment --comment "?onionctl"? -j (ONIONCTL-\S+)$/;

/**
 * iptables-restore --noflush flushes onionctl's own chains when it declares them, but cannot
 * "add a rule unless present" in a built-in chain: drop the jump lines that the router already
 * has, so that applying twice leaves exactly one jump.
 */
export function withoutExistingJumps(input: string, iptablesSave: string): string {
  const have = new Set<string>();
  let table = '';
  for (const line of iptablesSave.split('\n')) {
    if (line.startsWith('*')) table = line.slice(1).trim();
    const m = JUMP.exec(line.trim());
    if (m) have.add(`${table} ${m[1]} ${m[2]}`);
  }
  table = '';
  return input
    .split('\n')
    .filter((line) => {
      if (line.startsWith('*')) table = line.slice(1).trim();
      const m = JUMP.exec(line.trim());
      return !(m && have.has(`${table} ${m[1]} ${m[2]}`));
    })
    .join('\n');
}

/** The first words of a stage script: how a reader (the apply-fleet benchmark) tells it from the read-back. */
export const STAGE_SCRIPT_HEADER = '# onionctl stage script v1:';
/** what a stage script prints on stderr, and its exit code, where printf is not a shell builtin */
export const NO_BUILTIN_PRINTF = 'onionctl: printf is not a shell builtin in sh here';
export const NO_BUILTIN_PRINTF_EXIT = 125;
const STEP_FAILED = /^onionctl: step (\d+) of (\d+) failed \(exit (\d+)\)$/m;

const shQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * The steps of one stage as one POSIX shell script for `sh -s` on the router, so that a stage
 * costs one SSH channel however many commands it runs. Each command reads its input from the
 * shell's builtin printf through a pipe: no other process's command line and no temporary file
 * ever holds it (a here-document would be a temporary file in bash, and keys must not touch a
 * disk), and the script refuses to run where printf is not a builtin. The commands run in
 * order; the first that fails stops the script, which says on stderr which one it was and exits
 * with its exit code.
 */
export function stageScript(steps: readonly Step[]): string {
  const out = [
    `${STAGE_SCRIPT_HEADER} ${steps.map((s) => s.argv[0]).join(' ')}`,
    `case "$(command -V printf 2>&1)" in *builtin*) ;; *) echo ${shQuote(NO_BUILTIN_PRINTF)} >&2; exit ${NO_BUILTIN_PRINTF_EXIT} ;; esac`,
  ];
  steps.forEach((st, i) => {
    out.push(`printf '%s' ${shQuote(st.stdin)} | ${st.argv.map(shQuote).join(' ')}`);
    out.push(`rc=$?; if [ "$rc" -ne 0 ]; then echo "onionctl: step ${i + 1} of ${steps.length} failed (exit $rc)" >&2; exit "$rc"; fi`);
  });
  out.push('exit 0');
  return out.join('\n') + '\n';
}

/** One step that runs `steps` as a stage script (one channel); a single step stays as it is. */
export function combineSteps(steps: readonly Step[]): Step[] {
  if (steps.length < 2) return [...steps];
  return [
    {
      what: steps.map((s) => s.what).join(', '),
      argv: ['sh', '-s'],
      stdin: stageScript(steps),
      secret: steps.some((s) => s.secret),
      changes: steps.reduce((t, s) => t + s.changes, 0),
      parts: [...steps],
    },
  ];
}

/**
 * How a stage script ended, from its exit code and stderr: ok; no builtin printf (nothing ran);
 * or the step that failed (0-based; the steps before it ran) and the router's message without
 * the script's own line.
 */
export function scriptOutcome(exitCode: number, stderr: string): { ok: true } | { ok: false; noPrintf: true } | { ok: false; failed: number | undefined; message: string } {
  if (exitCode === 0) return { ok: true };
  if (exitCode === NO_BUILTIN_PRINTF_EXIT && stderr.includes(NO_BUILTIN_PRINTF)) return { ok: false, noPrintf: true };
  const m = STEP_FAILED.exec(stderr);
  const message = stderr.replace(STEP_FAILED, '').trim();
  return { ok: false, failed: m ? Number(m[1]) - 1 : undefined, message };
}

/** One shell word of a stage script: '...' segments and \\' escapes, up to a space or the line's end. */
function readWord(text: string, at: number): { word: string; end: number } {
  let word = '';
  let i = at;
  for (;;) {
    if (text[i] === "'") {
      const close = text.indexOf("'", i + 1);
      if (close < 0) throw new Error('stage script: an unterminated quote');
      word += text.slice(i + 1, close);
      i = close + 1;
    } else if (text[i] === '\\' && text[i + 1] === "'") {
      word += "'";
      i += 2;
    } else return { word, end: i };
  }
}

/**
 * The commands of a stage script and their inputs, in order (the inverse of stageScript): for
 * a reader that stands in for a router (tests, the apply-fleet benchmark). Undefined for any
 * other text.
 */
export function parseStageScript(script: string): { argv: string[]; stdin: string }[] | undefined {
  if (!script.startsWith(STAGE_SCRIPT_HEADER)) return undefined;
  const out: { argv: string[]; stdin: string }[] = [];
  const lead = "\nprintf '%s' ";
  for (let at = script.indexOf(lead); at >= 0; at = script.indexOf(lead, at)) {
    const input = readWord(script, at + lead.length);
    if (script.slice(input.end, input.end + 3) !== ' | ') throw new Error('stage script: no pipe after the input');
    const argv: string[] = [];
    let i = input.end + 3;
    for (;;) {
      const w = readWord(script, i);
      argv.push(w.word);
      i = w.end;
      if (script[i] === ' ') i++;
      else break;
    }
    if (script[i] !== '\n') throw new Error('stage script: a command line does not end');
    out.push({ argv, stdin: input.word });
    at = i;
  }
  return out;
}
