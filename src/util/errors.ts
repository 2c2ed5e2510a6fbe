/**
 * One error hierarchy for the whole program. Every error onionctl throws on purpose is an
 * OnionctlError with a kind; the CLI reports it by that kind, never by its class name.
 *
 *   reported   the user's input, a router, the lab or the machine is at fault: the CLI prints
 *              "onionctl: error: MESSAGE" and exits with exitCode (1)
 *   uncaught   a module's own error that its caller is meant to catch and turn into a reported
 *              one (an address that does not parse, a line of command output): reaching the top
 *              is a bug in onionctl, reported as an internal error (exit 70)
 *
 * Subclasses say which they are; `cause` carries the error underneath, as Error does.
 */
export type ErrorKind =
  /** bad input: options, files, the state, the secret */
  | 'input'
  /** the topology file (TopologyError carries file:line:col diagnostics) */
  | 'topology'
  /** no eligible path for a circuit */
  | 'path'
  /** the state cannot be planned (exhausted SPI space, unknown circuit) */
  | 'plan'
  /** a saved plan that is forged, damaged, stale or for something else */
  | 'saved-plan'
  /** a router could not be reached or a command on it failed */
  | 'transport'
  /** the lab: namespaces, UML guests, host prerequisites */
  | 'lab'
  /** module-level errors that callers catch: a parser, a probe */
  | 'uncaught';

export abstract class OnionctlError extends Error {
  abstract readonly kind: ErrorKind;

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }

  /** the exit code when this error ends a command: 1 when reported, 70 (a bug) when uncaught */
  get exitCode(): 1 | 70 {
    return this.kind === 'uncaught' ? 70 : 1;
  }
}

/** Bad input: a usage mistake, a file that is missing, damaged or unsafe. */
export class UserError extends OnionctlError {
  readonly kind = 'input' as const;
}
