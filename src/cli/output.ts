/**
 * How the CLI talks to a person: colour, --quiet and --verbose. Set once per run from the
 * command line and the environment (configureOutput); the commands ask here.
 *
 *   colour   `+` green, `~` yellow, `-` red, `!` and errors red, on a terminal only; off with
 *            NO_COLOR (https://no-color.org), --no-color, or when the stream is not a terminal
 *   quiet    no per-router progress and no notes; results, errors and JSON are still printed
 *   verbose  every progress event on its own line (also on a terminal), and an internal error's
 *            stack (as ONIONCTL_DEBUG=1)
 */
export interface OutputSettings {
  quiet: boolean;
  verbose: boolean;
  colour: boolean;
}

export const settings: OutputSettings = { quiet: false, verbose: false, colour: true };

/** The global flags, taken out of argv (wherever they stand) and into `settings`; the environment carries them to child runs. */
export function configureOutput(argv: string[], env: NodeJS.ProcessEnv = process.env): string[] {
  const rest: string[] = [];
  let seenDashDash = false;
  for (const a of argv) {
    if (a === '--') seenDashDash = true;
    if (!seenDashDash && (a === '--quiet' || a === '-q')) env.ONIONCTL_QUIET = '1';
    else if (!seenDashDash && a === '--verbose') env.ONIONCTL_VERBOSE = '1';
    else if (!seenDashDash && a === '--no-color') env.NO_COLOR = '1';
    else rest.push(a);
  }
  settings.quiet = env.ONIONCTL_QUIET === '1';
  settings.verbose = env.ONIONCTL_VERBOSE === '1';
  settings.colour = env.NO_COLOR === undefined || env.NO_COLOR === '';
  if (settings.quiet && settings.verbose) settings.verbose = false;
  return rest;
}

const SGR = { red: '31', green: '32', yellow: '33', bold: '1' } as const;
const paint = (s: string, c: keyof typeof SGR) => `\u001b[${SGR[c]}m${s}\u001b[0m`;

/** Whether text written to `stream` is coloured. */
export const colourOn = (stream: { isTTY?: boolean }) => settings.colour && stream.isTTY === true;

/** Colours the change lines of a plan ("  + ...", "  ~ ...", "  - ...", "  ! ...") for a terminal. */
export function colourPlan(text: string, stream: { isTTY?: boolean }): string {
  if (!colourOn(stream)) return text;
  return text.replace(/^( {2,})([+~!-]) (.*)$/gm, (_m, ind: string, sym: string, rest: string) => {
    const c = sym === '+' ? 'green' : sym === '~' ? 'yellow' : 'red';
    return `${ind}${paint(`${sym} ${rest}`, c)}`;
  });
}

/** "onionctl: error: ..." in red on a terminal. */
export const colourError = (line: string, stream: { isTTY?: boolean }) => (colourOn(stream) ? paint(line, 'red') : line);

/** An informational line on stderr ("onionctl: ..."), left out with --quiet. */
export function note(s: string): void {
  if (!settings.quiet) process.stderr.write(`onionctl: ${s}\n`);
}
