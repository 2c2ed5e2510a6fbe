/**
 * The topology's JSON Schema, generated from the zod schema (schema.ts) so that editors check a
 * file as it is typed (yaml-language-server: `# yaml-language-server: $schema=...`). It carries the
 * shape, types, enums and bounds; the checks that need the whole file (references, overlaps,
 * circuits without a path) and the finer value checks stay with `onionctl validate`. Pure.
 */
import { z } from 'zod';
import { TopologySchema } from './schema.js';

export const TOPOLOGY_SCHEMA_ID = 'https://onionctl.invalid/schema/topology-v1.json';

export function topologyJsonSchema(): Record<string, unknown> {
  const s = z.toJSONSchema(TopologySchema, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;
  return {
    $schema: s.$schema,
    $id: TOPOLOGY_SCHEMA_ID,
    title: 'onionctl topology (version 1)',
    description: 'An onionctl overlay topology. Generated from src/topology/schema.ts by `onionctl schema`; `onionctl validate` checks more than this schema can say.',
    ...Object.fromEntries(Object.entries(s).filter(([k]) => k !== '$schema')),
  };
}
