/** The lab's errors: namespaces, wires, UML guests, host prerequisites (uml.ts has the guest's kinds). */
import { OnionctlError } from '../util/errors.js';

export class LabError extends OnionctlError {
  readonly kind = 'lab' as const;
}
