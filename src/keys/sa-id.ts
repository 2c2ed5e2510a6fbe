/**
 * An SA's identity: which overlay direction or which telescope layer it is. It is part of key
 * derivation (kdf.ts kdfInfo), so its text form never changes:
 *
 *   link:FROM>TO                        the overlay SA from FROM to TO
 *   circuit:NAME:gGEN:hopHOP:fwd|rev    layer HOP of circuit NAME's generation GEN
 *
 * formatSaId is the only writer and parseSaId the only reader of that text. Node and circuit
 * names cannot contain ":" or ">" (topology/schema.ts NAME_RE), so the form is unambiguous.
 */
export type SaDir = 'fwd' | 'rev';

export type SaId =
  | { kind: 'overlay'; from: string; to: string }
  | { kind: 'telescope'; circuit: string; generation: number; hop: number; dir: SaDir };

export function formatSaId(id: SaId): string {
  return id.kind === 'overlay' ? `link:${id.from}>${id.to}` : `circuit:${id.circuit}:g${id.generation}:hop${id.hop}:${id.dir}`;
}

const NAME = '([a-z][a-z0-9_-]{0,30})';
const OVERLAY = new RegExp(`^link:${NAME}>${NAME}$`);
const TELESCOPE = new RegExp(`^circuit:${NAME}:g([1-9][0-9]*):hop([1-9][0-9]*):(fwd|rev)$`);

/** The identity the text names; undefined for anything formatSaId would not have written. */
export function parseSaId(text: string): SaId | undefined {
  const l = OVERLAY.exec(text);
  if (l) return { kind: 'overlay', from: l[1]!, to: l[2]! };
  const c = TELESCOPE.exec(text);
  if (c) return { kind: 'telescope', circuit: c[1]!, generation: Number(c[2]), hop: Number(c[3]), dir: c[4] as SaDir };
  return undefined;
}
