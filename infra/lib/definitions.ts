// The one definition of cipherpost's tables and bucket: ../tables.json, shared with the local
// bootstrap (localstack/bootstrap.py). The stack builds its tables and bucket from this file
// only, so the cloud and the local emulator cannot drift apart; a test compares the synthesized
// template with it. Shape: localstack/README.md, "infra/tables.json".
import { readFileSync } from 'node:fs';
import * as path from 'node:path';

/** The repository root (this file is infra/lib/definitions.ts). */
export const REPO_ROOT = path.resolve(__dirname, '..', '..');

/** Where the definition lives. */
export const TABLES_JSON = path.join(REPO_ROOT, 'infra', 'tables.json');

export type KeyType = 'S' | 'N' | 'B';

export interface KeyDefinition {
  readonly name: string;
  readonly type: KeyType;
}

export interface TableDefinition {
  /** The environment variable that carries the table's physical name to the functions. */
  readonly env: string;
  /** The local default name (the CDK app lets CloudFormation choose the physical name). */
  readonly default_name: string;
  readonly partition_key: KeyDefinition;
  readonly sort_key: KeyDefinition | null;
  /** DynamoDB TTL attribute (epoch seconds), or null. */
  readonly ttl_attribute: string | null;
}

export interface BucketDefinition {
  readonly env: string;
  readonly default_name: string;
  readonly expire_after_days: number;
  readonly abort_incomplete_multipart_upload_days: number;
  readonly block_public_access: boolean;
  readonly encryption: 'AES256';
}

export interface Definitions {
  readonly version: 1;
  readonly billing_mode: 'PAY_PER_REQUEST';
  readonly tables: Readonly<Record<string, TableDefinition>>;
  readonly buckets: Readonly<Record<string, BucketDefinition>>;
}

function fail(what: string): never {
  throw new Error(`${TABLES_JSON}: ${what}`);
}

function key(k: unknown, where: string): KeyDefinition {
  const o = k as KeyDefinition;
  if (typeof o !== 'object' || o === null || typeof o.name !== 'string' || !['S', 'N', 'B'].includes(o.type)) {
    fail(`${where} must be {"name": string, "type": "S" | "N" | "B"}`);
  }
  return { name: o.name, type: o.type };
}

/** Reads and checks tables.json (a reader rejects any version but 1, as the bootstrap does). */
export function loadDefinitions(file: string = TABLES_JSON): Definitions {
  const raw = JSON.parse(readFileSync(file, 'utf8'));
  if (raw.version !== 1) fail(`version must be 1, got ${JSON.stringify(raw.version)}`);
  if (raw.billing_mode !== 'PAY_PER_REQUEST') fail('billing_mode must be PAY_PER_REQUEST (on-demand)');
  const tables: Record<string, TableDefinition> = {};
  for (const [logical, t] of Object.entries<any>(raw.tables ?? {})) {
    if (!/^[a-z][a-z0-9_]*$/.test(logical)) fail(`table name ${logical} must be lower-case`);
    if (typeof t.env !== 'string' || !t.env.startsWith('CIPHERPOST_TABLE_')) fail(`tables.${logical}.env must be CIPHERPOST_TABLE_*`);
    if (t.ttl_attribute !== null && typeof t.ttl_attribute !== 'string') fail(`tables.${logical}.ttl_attribute must be a string or null`);
    tables[logical] = {
      env: t.env,
      default_name: t.default_name,
      partition_key: key(t.partition_key, `tables.${logical}.partition_key`),
      sort_key: t.sort_key === null ? null : key(t.sort_key, `tables.${logical}.sort_key`),
      ttl_attribute: t.ttl_attribute,
    };
  }
  const buckets: Record<string, BucketDefinition> = {};
  for (const [logical, b] of Object.entries<any>(raw.buckets ?? {})) {
    if (b.encryption !== 'AES256') fail(`buckets.${logical}.encryption: only AES256 (SSE-S3) is supported`);
    if (b.block_public_access !== true) fail(`buckets.${logical}.block_public_access must be true`);
    for (const f of ['expire_after_days', 'abort_incomplete_multipart_upload_days']) {
      if (!Number.isInteger(b[f]) || b[f] < 1) fail(`buckets.${logical}.${f} must be a positive integer`);
    }
    buckets[logical] = { ...b };
  }
  if (Object.keys(tables).length === 0) fail('no tables');
  return { version: 1, billing_mode: 'PAY_PER_REQUEST', tables, buckets };
}

/** `queue` -> `Queue`, `ws-connect` -> `WsConnect`: for construct ids and output names. */
export function pascal(name: string): string {
  return name
    .split(/[-_]/)
    .filter(Boolean)
    .map((p) => p[0].toUpperCase() + p.slice(1))
    .join('');
}
