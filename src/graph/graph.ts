/**
 * `onionctl graph`, the pure part: the overlay and the circuits as Graphviz DOT or Mermaid text.
 * Routers are coloured by operator (with a legend), clients are ellipses, exits have a double
 * border, destinations are notes, and each circuit is a coloured path client -> hops ->
 * destination drawn over the grey overlay links. SVG/PNG rendering (Graphviz `dot`) is in
 * src/cli/graph-command.ts.
 */
import { formatDest, formatIPv4, parseCidr } from '../net/addr.js';
import type { State } from '../state/model.js';
import type { Net, RouterNode } from '../topology/net.js';

/** Pastel fills that keep black text readable (ColorBrewer Set3/Pastel1 family). */
export const OPERATOR_COLOURS = [
  '#8dd3c7', '#fdb462', '#bebada', '#fb8072', '#80b1d3', '#b3de69',
  '#fccde5', '#ffffb3', '#bc80bd', '#ccebc5', '#ffed6f', '#d9d9d9',
];
/** Strong line colours for circuits (ColorBrewer Set1/Dark2 family). */
export const CIRCUIT_COLOURS = [
  '#e41a1c', '#377eb8', '#4daf4a', '#984ea3', '#ff7f00', '#a65628',
  '#f781bf', '#1b9e77', '#d95f02', '#7570b3', '#e7298a', '#66a61e',
];

export interface GraphInput {
  net: Net;
  state: State;
  /** shown in the title, e.g. the topology file's name */
  title: string;
  /** optional operator descriptions from the topology */
  operators?: { name: string; description?: string | undefined }[];
  /** where the paths come from, for the subtitle; default "state serial N" */
  pathsFrom?: string;
  /**
   * draw only the clients and routers on some circuit's path and the links circuits use (the
   * rest of a large overlay is a grey hairball around them)
   */
  circuitsOnly?: boolean;
}

export interface GraphModel {
  title: string;
  subtitle: string;
  operators: { name: string; description?: string; colour: string; routers: number }[];
  clients: { id: string; name: string; addr: string }[];
  routers: { id: string; name: string; operator: string; country?: string; addr: string; colour: string; exit?: { addr: string; iface: string } }[];
  destinations: { id: string; label: string }[];
  links: { a: string; b: string; used: boolean }[];
  circuits: { name: string; colour: string; path: string[]; hops: string[]; to: string[]; client: string }[];
  /**
   * Layout columns, left to right: clients; routers by overlay distance from the nearest client
   * (1 = entry routers); exits; destinations.
   */
  columns: string[][];
}

function columnsOf(net: Net, destinations: string[]): string[][] {
  const dist = new Map<string, number>();
  let frontier = [...net.clients.keys()];
  frontier.forEach((c) => dist.set(c, 0));
  while (frontier.length) {
    const next: string[] = [];
    for (const n of frontier) {
      for (const m of net.adj.get(n) ?? []) {
        if (dist.has(m) || !net.routers.has(m)) continue;
        dist.set(m, dist.get(n)! + 1);
        // exits end a walk: what lies behind an exit is not nearer the clients through it
        if (!net.routers.get(m)!.exit) next.push(m);
      }
    }
    frontier = next;
  }
  const routers = [...net.routers.values()].sort((a, b) => a.index - b.index);
  const inner = routers.filter((r) => !r.exit);
  const maxInner = Math.max(1, ...inner.map((r) => dist.get(r.name) ?? 1));
  const cols: string[][] = Array.from({ length: maxInner + 3 }, () => []);
  for (const c of [...net.clients.values()].sort((a, b) => a.index - b.index)) cols[0]!.push(c.name);
  for (const r of inner) cols[dist.get(r.name) ?? 1]!.push(r.name);
  for (const r of routers.filter((r) => r.exit)) cols[maxInner + 1]!.push(r.name);
  cols[maxInner + 2]!.push(...destinations);
  return cols.filter((c) => c.length > 0);
}

function hslHex(h: number, s: number, l: number): string {
  const a = s * Math.min(l, 1 - l);
  const f = (n: number) => {
    const k = (n + h / 30) % 12;
    const c = l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1));
    return Math.round(255 * c)
      .toString(16)
      .padStart(2, '0');
  };
  return `#${f(0)}${f(8)}${f(4)}`;
}

/** the i-th colour of a palette, then golden-angle hues once the palette runs out */
function pick(palette: readonly string[], i: number, light: boolean): string {
  if (i < palette.length) return palette[i]!;
  return hslHex((i * 137.508) % 360, light ? 0.6 : 0.75, light ? 0.82 : 0.42);
}

function kRange(ks: number[], dflt: number): string {
  if (ks.length === 0) return `k = ${dflt}`;
  const lo = Math.min(...ks);
  const hi = Math.max(...ks);
  return lo === hi ? `k = ${lo}` : `k = ${lo}–${hi} (default ${dflt})`;
}

export function graphModel(input: GraphInput): GraphModel {
  const { net, state } = input;
  const opNames: string[] = [];
  for (const o of input.operators ?? []) if (!opNames.includes(o.name)) opNames.push(o.name);
  for (const r of net.routers.values()) if (!opNames.includes(r.operator)) opNames.push(r.operator);
  const desc = new Map((input.operators ?? []).map((o) => [o.name, o.description]));
  const opColour = new Map(opNames.map((o, i) => [o, pick(OPERATOR_COLOURS, i, true)]));
  const routers = [...net.routers.values()].sort((a, b) => a.index - b.index);

  const destIds = new Map<string, string>();
  const circuits: GraphModel['circuits'] = [];
  net.circuits.forEach((def, i) => {
    const c = state.circuits[def.name];
    if (!c) return;
    const to = c.to.map((t) => formatDest(parseCidr(t)));
    for (const t of to) if (!destIds.has(t)) destIds.set(t, `dst:${destIds.size}`); // ':' is never in a node name
    circuits.push({ name: def.name, colour: pick(CIRCUIT_COLOURS, i, false), path: [c.client, ...c.hops], hops: [...c.hops], to, client: c.client });
  });
  const used = new Set<string>();
  for (const c of circuits) for (let i = 0; i + 1 < c.path.length; i++) used.add([c.path[i]!, c.path[i + 1]!].sort().join('~'));

  const exits = routers.filter((r) => r.exit).length;
  const subtitle = [
    `${routers.length} router${routers.length === 1 ? '' : 's'} (${exits} exit${exits === 1 ? '' : 's'})`,
    `${opNames.length} operator${opNames.length === 1 ? '' : 's'}`,
    `${net.clients.size} client${net.clients.size === 1 ? '' : 's'}`,
    `${circuits.length} circuit${circuits.length === 1 ? '' : 's'}`,
    kRange(circuits.map((c) => c.hops.length), net.hops),
    input.pathsFrom ?? `state serial ${state.serial}`,
  ].join(' · ');

  // --circuits-only: what no circuit passes through is left out
  const onPath = new Set(circuits.flatMap((c) => c.path));
  const keep = (name: string) => !input.circuitsOnly || onPath.has(name);
  const shown = routers.filter((r) => keep(r.name));
  return {
    title: input.title,
    subtitle: input.circuitsOnly ? `${subtitle} · only the circuits' nodes and links (${shown.length} of ${routers.length} routers)` : subtitle,
    operators: opNames.map((o) => ({
      name: o,
      ...(desc.get(o) ? { description: desc.get(o)! } : {}),
      colour: opColour.get(o)!,
      routers: routers.filter((r) => r.operator === o).length,
    })),
    clients: [...net.clients.values()]
      .filter((c) => keep(c.name))
      .sort((a, b) => a.index - b.index)
      .map((c) => ({ id: c.name, name: c.name, addr: formatIPv4(c.underlay.addr) })),
    routers: shown.map((r: RouterNode) => ({
      id: r.name,
      name: r.name,
      operator: r.operator,
      ...(r.country ? { country: r.country } : {}),
      addr: formatIPv4(r.underlay.addr),
      colour: opColour.get(r.operator)!,
      ...(r.exit ? { exit: { addr: formatIPv4(r.exit.addr), iface: r.exit.iface.name } } : {}),
    })),
    destinations: [...destIds].map(([label, id]) => ({ id, label })),
    links: net.links.map(([a, b]) => ({ a, b, used: used.has([a, b].sort().join('~')) })).filter((l) => !input.circuitsOnly || l.used),
    circuits,
    columns: columnsOf(net, [...destIds.values()]).map((col) => col.filter((n) => n.startsWith('dst:') || keep(n))).filter((col) => col.length > 0),
  };
}

// ---------------------------------------------------------------- DOT

const FONT = 'Helvetica,Arial,sans-serif';

function html(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}
function q(s: string): string {
  return `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

/**
 * The title and the key, as one HTML-like table used as the graph label (top, centred): a
 * horizontal band keeps the key out of the layout, which for an LR graph is wide anyway.
 */
function dotKey(m: GraphModel): string {
  // one table, three sections side by side (operators | shapes and lines | circuits), each a
  // fixed number of cells per row, so that rows line up at the top
  const gap = '<TD WIDTH="24"></TD>';
  const head = (t: string, span: number) => `<TD COLSPAN="${span}" ALIGN="LEFT"><B>${t}</B></TD>`;
  const ops = [head('Operators', 3)];
  for (const o of m.operators) {
    ops.push(
      `<TD BGCOLOR="${o.colour}" WIDTH="26" HEIGHT="14" FIXEDSIZE="TRUE" BORDER="1" COLOR="#444444"> </TD>` +
        `<TD ALIGN="LEFT">${html(o.name)}</TD><TD ALIGN="LEFT"><FONT COLOR="#555555">${html(o.description ?? '')}${o.description ? ', ' : ''}${o.routers} router${o.routers === 1 ? '' : 's'}</FONT></TD>`,
    );
  }
  const line = (colour: string, size: number) => `<TD ALIGN="LEFT"><FONT COLOR="${colour}" POINT-SIZE="${size}"><B>━━━</B></FONT></TD>`;
  const shape = (what: string, text: string) => `<TD ALIGN="LEFT"><FONT COLOR="#555555">${what}</FONT></TD><TD ALIGN="LEFT">${text}</TD>`;
  const shapes = [
    head('Shapes and lines', 2),
    shape('ellipse', 'client: name, underlay address'),
    shape('box', 'router: name, operator · country, underlay address'),
    shape('double box', 'exit router, with its SNAT (outside) address'),
    shape('page', 'destination'),
    `${line('#a0a0a0', 9)}<TD ALIGN="LEFT">overlay link (ESP tunnel); dashed under a circuit</TD>`,
  ];
  const circ = [head('Circuits', 2)];
  for (const c of m.circuits) {
    circ.push(`${line(c.colour, 14)}<TD ALIGN="LEFT"><FONT COLOR="${c.colour}"><B>${html(c.name)}</B></FONT>: ${html([...c.path, ...c.to].join(' → '))}</TD>`);
  }
  if (m.circuits.length === 0) circ.push('<TD COLSPAN="2" ALIGN="LEFT"><FONT COLOR="#555555">(none)</FONT></TD>');
  const n = Math.max(ops.length, shapes.length, circ.length);
  const cell = (xs: string[], i: number, span: number) => xs[i] ?? `<TD COLSPAN="${span}"></TD>`;
  const rows: string[] = [];
  for (let i = 0; i < n; i++) rows.push(`<TR>${cell(ops, i, 3)}${gap}${cell(shapes, i, 2)}${gap}${cell(circ, i, 2)}</TR>`);
  return (
    `<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="1" CELLPADDING="2">` +
    `<TR><TD COLSPAN="9"><FONT POINT-SIZE="22"><B>${html(m.title)}</B></FONT></TD></TR>` +
    `<TR><TD COLSPAN="9"><FONT POINT-SIZE="13" COLOR="#555555">${html(m.subtitle)}</FONT></TD></TR>` +
    `<TR><TD COLSPAN="9" HEIGHT="8"></TD></TR>` +
    rows.join('') +
    `<TR><TD COLSPAN="9" HEIGHT="14"></TD></TR>` +
    `</TABLE>`
  );
}

export function toDot(input: GraphInput): string {
  const m = graphModel(input);
  const L: string[] = [];
  const destId = new Map(m.destinations.map((d) => [d.label, d.id]));
  L.push('digraph onionctl {');
  L.push(
    `  graph [rankdir=LR, newrank=true, labelloc=t, labeljust=c, fontname=${q(FONT)}, nodesep=0.45, ranksep=1.1, pad=0.4, bgcolor="white", ` +
      `label=<${dotKey(m)}>];`,
  );
  L.push(`  node [fontname=${q(FONT)}, fontsize=11, shape=box, style="rounded,filled", color="#444444", penwidth=1.2, margin="0.15,0.06"];`);
  L.push(`  edge [fontname=${q(FONT)}, fontsize=10, arrowsize=0.7];`);
  L.push('');
  L.push('  // clients');
  for (const c of m.clients) {
    L.push(
      `  ${q(c.id)} [shape=ellipse, style=filled, fillcolor="#ffffff", color="#222222", penwidth=1.6, ` +
        `label=<<B>${html(c.name)}</B><BR/><FONT POINT-SIZE="9" COLOR="#555555">client</FONT><BR/><FONT FACE="Courier,monospace" POINT-SIZE="10">${c.addr}</FONT>>];`,
    );
  }
  L.push('  // routers, filled with their operator\'s colour; exits have a double border');
  for (const r of m.routers) {
    const who = [r.operator, r.country].filter(Boolean).join(' · ');
    const exitLine = r.exit
      ? `<BR/><FONT POINT-SIZE="9"><B>EXIT</B>&#160;→&#160;</FONT><FONT FACE="Courier,monospace" POINT-SIZE="10">${r.exit.addr}</FONT><FONT POINT-SIZE="9">&#160;(${html(r.exit.iface)})</FONT>`
      : '';
    L.push(
      `  ${q(r.id)} [fillcolor=${q(r.colour)}${r.exit ? ', peripheries=2, penwidth=1.4' : ''}, ` +
        `label=<<B>${html(r.name)}</B><BR/><FONT POINT-SIZE="10">${html(who)}</FONT><BR/><FONT FACE="Courier,monospace" POINT-SIZE="10">${r.addr}</FONT>${exitLine}>];`,
    );
  }
  L.push('  // destinations');
  for (const d of m.destinations) {
    L.push(`  ${q(d.id)} [shape=note, style=filled, fillcolor="#f4f4f4", color="#666666", label=<<FONT POINT-SIZE="9" COLOR="#555555">destination</FONT><BR/><FONT FACE="Courier,monospace" POINT-SIZE="10">${html(d.label)}</FONT>>];`);
  }
  L.push('');
  L.push('  // columns: clients | routers by overlay distance from the clients | exits | destinations');
  m.columns.forEach((col) => L.push(`  { rank=same; ${col.map(q).join('; ')}; }`));
  for (let i = 0; i + 1 < m.columns.length; i++) L.push(`  ${q(m.columns[i]![0]!)} -> ${q(m.columns[i + 1]![0]!)} [style=invis, weight=0];`);
  L.push('');
  L.push('  // overlay links (long-term ESP tunnels): grey, undirected, not constraining the layout');
  for (const l of m.links) {
    L.push(`  ${q(l.a)} -> ${q(l.b)} [dir=none, color="#a0a0a0", penwidth=${l.used ? 1.2 : 1.5}${l.used ? ', style=dashed' : ''}, constraint=false];`);
  }
  L.push('');
  L.push('  // circuits: client -> hops -> destination');
  for (const c of m.circuits) {
    const seq = [...c.path];
    const last = seq[seq.length - 1]!;
    const edges: [string, string, string][] = [];
    for (let i = 0; i + 1 < seq.length; i++) edges.push([seq[i]!, seq[i + 1]!, i === 0 ? c.name : '']);
    for (const t of c.to) edges.push([last, destId.get(t)!, '']);
    for (const [a, b, label] of edges) {
      L.push(
        `  ${q(a)} -> ${q(b)} [color=${q(c.colour)}, penwidth=3.2, constraint=false${label ? `, label=<<B>${html(label)}</B>>, fontcolor=${q(c.colour)}, fontsize=12` : ''}];`,
      );
    }
  }
  L.push('');
  L.push('}');
  return L.join('\n') + '\n';
}

// ---------------------------------------------------------------- Mermaid

function mq(s: string): string {
  // Mermaid labels in "...": no double quotes inside; use #quot;
  return s.replace(/"/g, '#quot;');
}

export function toMermaid(input: GraphInput): string {
  const m = graphModel(input);
  const L: string[] = [];
  const id = new Map<string, string>();
  m.clients.forEach((c, i) => id.set(c.id, `c${i}`));
  m.routers.forEach((r, i) => id.set(r.id, `r${i}`));
  m.destinations.forEach((d, i) => id.set(d.id, `d${i}`));
  const destId = new Map(m.destinations.map((d) => [d.label, d.id]));
  L.push('---');
  L.push(`title: "${mq(`${m.title} — ${m.subtitle}`)}"`);
  L.push('---');
  L.push('flowchart LR');
  m.operators.forEach((o, i) => L.push(`  classDef op${i} fill:${o.colour},stroke:#444,color:#000`));
  L.push('  classDef client fill:#fff,stroke:#222,stroke-width:2px,color:#000');
  L.push('  classDef dest fill:#f4f4f4,stroke:#666,color:#000');
  const opIdx = new Map(m.operators.map((o, i) => [o.name, i]));
  for (const c of m.clients) L.push(`  ${id.get(c.id)}(["<b>${mq(c.name)}</b><br/>client<br/>${c.addr}"]):::client`);
  for (const r of m.routers) {
    const who = [r.operator, r.country].filter(Boolean).join(' · ');
    const text = `<b>${mq(r.name)}</b><br/>${mq(who)}<br/>${r.addr}${r.exit ? `<br/><b>EXIT</b> → ${r.exit.addr} (${mq(r.exit.iface)})` : ''}`;
    // exits are drawn as subroutine boxes (double vertical border)
    L.push(`  ${id.get(r.id)}${r.exit ? `[["${text}"]]` : `["${text}"]`}:::op${opIdx.get(r.operator)}`);
  }
  for (const d of m.destinations) L.push(`  ${id.get(d.id)}[("destination<br/>${mq(d.label)}")]:::dest`);
  let edge = 0;
  const styles: string[] = [];
  for (const l of m.links) {
    L.push(`  ${id.get(l.a)} --- ${id.get(l.b)}`);
    styles.push(`  linkStyle ${edge++} stroke:#9a9a9a,stroke-width:1px${l.used ? ',stroke-dasharray:4 3' : ''}`);
  }
  for (const c of m.circuits) {
    const seq = c.path;
    for (let i = 0; i + 1 < seq.length; i++) {
      L.push(`  ${id.get(seq[i]!)} ==>${i === 0 ? `|${mq(c.name)}|` : ''} ${id.get(seq[i + 1]!)}`);
      styles.push(`  linkStyle ${edge++} stroke:${c.colour},stroke-width:3px,color:${c.colour}`);
    }
    for (const t of c.to) {
      L.push(`  ${id.get(seq[seq.length - 1]!)} ==> ${id.get(destId.get(t)!)}`);
      styles.push(`  linkStyle ${edge++} stroke:${c.colour},stroke-width:3px`);
    }
  }
  L.push('  subgraph legend [Legend]');
  L.push('    direction TB');
  m.operators.forEach((o, i) => L.push(`    lop${i}["${mq(o.name)}${o.description ? `<br/><small>${mq(o.description)}</small>` : ''}"]:::op${i}`));
  m.circuits.forEach((c, i) => L.push(`    lc${i}["<b>${mq(c.name)}</b>: ${mq([...c.path, ...c.to].join(' → '))}"]`));
  L.push('    lshapes["rounded = client · box = router (operator colour) · double-sided box = exit · cylinder = destination · grey = overlay link, dashed under a circuit"]');
  L.push('  end');
  m.circuits.forEach((c, i) => L.push(`  style lc${i} fill:#fff,stroke:${c.colour},stroke-width:3px,color:${c.colour}`));
  L.push(...styles);
  return L.join('\n') + '\n';
}
