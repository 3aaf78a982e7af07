// The tables and the bucket come from infra/tables.json and nowhere else.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Match } from 'aws-cdk-lib/assertions';
import { TABLES_JSON } from '../lib/definitions';
import { render, resources, synth } from './helpers';

const json = JSON.parse(readFileSync(TABLES_JSON, 'utf8'));
const s = synth();

test('one table per entry of tables.json, none else', () => {
  const tables = resources(s, 'AWS::DynamoDB::Table').map(([lid]) => s.names.get(lid)).sort();
  assert.deepEqual(tables, Object.keys(json.tables).map((t) => `table:${t}`).sort());
});

for (const [logical, t] of Object.entries<any>(json.tables)) {
  test(`table ${logical} equals tables.json: keys, types, TTL, no index, on-demand`, () => {
    const [, r] = resources(s, 'AWS::DynamoDB::Table').find(([lid]) => s.names.get(lid) === `table:${logical}`)!;
    const p = r.Properties;
    const keys = [{ AttributeName: t.partition_key.name, KeyType: 'HASH' }];
    const attrs = [{ AttributeName: t.partition_key.name, AttributeType: t.partition_key.type }];
    if (t.sort_key) {
      keys.push({ AttributeName: t.sort_key.name, KeyType: 'RANGE' });
      attrs.push({ AttributeName: t.sort_key.name, AttributeType: t.sort_key.type });
    }
    assert.deepEqual(p.KeySchema, keys);
    assert.deepEqual(p.AttributeDefinitions, attrs);
    if (t.ttl_attribute) {
      assert.deepEqual(p.TimeToLiveSpecification, { AttributeName: t.ttl_attribute, Enabled: true });
    } else {
      assert.equal(p.TimeToLiveSpecification, undefined);
    }
    assert.equal(p.BillingMode, json.billing_mode);
    assert.equal(p.ProvisionedThroughput, undefined);
    assert.equal(p.GlobalSecondaryIndexes, undefined);
    assert.equal(p.LocalSecondaryIndexes, undefined, 'the queue must not have an LSI (10 GB partition cap)');
    assert.deepEqual(p.PointInTimeRecoverySpecification, { PointInTimeRecoveryEnabled: true });
    assert.equal(p.TableName, undefined, 'CloudFormation names the tables');
  });
}

test('every function gets every table name in its tables.json variable', () => {
  for (const [lid, fn] of resources(s, 'AWS::Lambda::Function')) {
    const env = fn.Properties.Environment.Variables;
    for (const [logical, t] of Object.entries<any>(json.tables)) {
      assert.equal(render(env[t.env], s.names), `table:${logical}`, `${s.names.get(lid)} ${t.env}`);
    }
    for (const [logical, b] of Object.entries<any>(json.buckets)) {
      assert.equal(render(env[b.env], s.names), `bucket:${logical}`, `${s.names.get(lid)} ${b.env}`);
    }
  }
});

test('retain (the default): deletion protection, Retain policies', () => {
  for (const [, r] of resources(s, 'AWS::DynamoDB::Table')) {
    assert.equal(r.Properties.DeletionProtectionEnabled, true);
    assert.equal(r.DeletionPolicy, 'Retain');
    assert.equal(r.UpdateReplacePolicy, 'Retain');
  }
  for (const [, r] of resources(s, 'AWS::S3::Bucket')) assert.equal(r.DeletionPolicy, 'Retain');
});

test('-c retain=false: no deletion protection, Delete policies', () => {
  const d = synth({ retain: 'false' });
  for (const [, r] of resources(d, 'AWS::DynamoDB::Table')) {
    assert.equal(r.Properties.DeletionProtectionEnabled, false);
    assert.equal(r.DeletionPolicy, 'Delete');
  }
  for (const [, r] of resources(d, 'AWS::S3::Bucket')) assert.equal(r.DeletionPolicy, 'Delete');
  for (const [, r] of resources(d, 'AWS::Logs::LogGroup')) assert.equal(r.DeletionPolicy, 'Delete');
});

test('a bad retain value is refused', () => {
  assert.throws(() => synth({ retain: 'maybe' }), /true or false/);
});

test('the bucket: blocked public access, SSE-S3, lifecycle expiry from tables.json, no ACLs', () => {
  const b = json.buckets.attachments;
  assert.equal(resources(s, 'AWS::S3::Bucket').length, Object.keys(json.buckets).length);
  s.template.hasResourceProperties('AWS::S3::Bucket', {
    PublicAccessBlockConfiguration: {
      BlockPublicAcls: true,
      BlockPublicPolicy: true,
      IgnorePublicAcls: true,
      RestrictPublicBuckets: true,
    },
    BucketEncryption: {
      ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: b.encryption } }],
    },
    LifecycleConfiguration: {
      Rules: [
        Match.objectLike({
          Status: 'Enabled',
          ExpirationInDays: b.expire_after_days,
          AbortIncompleteMultipartUpload: { DaysAfterInitiation: b.abort_incomplete_multipart_upload_days },
        }),
      ],
    },
    OwnershipControls: { Rules: [{ ObjectOwnership: 'BucketOwnerEnforced' }] },
  });
});

test('the bucket policy refuses every request that is not over TLS (1.2 or newer)', () => {
  const [[, policy]] = resources(s, 'AWS::S3::BucketPolicy');
  const st = policy.Properties.PolicyDocument.Statement;
  const tls = st.find((x: any) => x.Condition?.Bool?.['aws:SecureTransport'] === 'false');
  assert.ok(tls, 'a SecureTransport=false deny');
  assert.equal(tls.Effect, 'Deny');
  assert.equal(tls.Action, 's3:*');
  assert.deepEqual(tls.Principal, { AWS: '*' });
  assert.deepEqual(tls.Resource.map((r: any) => render(r, s.names)).sort(), ['bucket:attachments', 'bucket:attachments/*']);
  assert.ok(st.some((x: any) => x.Effect === 'Deny' && x.Condition?.NumericLessThan?.['s3:TlsVersion'] === 1.2));
  assert.ok(st.every((x: any) => x.Effect === 'Deny'), 'the bucket policy grants nothing');
});

test('tables.json is checked when read: version, billing, key types, bucket encryption', async () => {
  const { mkdtempSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { loadDefinitions } = await import('../lib/definitions');
  const dir = mkdtempSync(join(tmpdir(), 'tables-'));
  const variant = (change: (j: any) => void) => {
    const j = structuredClone(json);
    change(j);
    const f = join(dir, `t${Math.random()}.json`);
    writeFileSync(f, JSON.stringify(j));
    return f;
  };
  assert.doesNotThrow(() => loadDefinitions(variant(() => {})));
  assert.throws(() => loadDefinitions(variant((j) => { j.version = 2; })), /version must be 1/);
  assert.throws(() => loadDefinitions(variant((j) => { j.billing_mode = 'PROVISIONED'; })), /PAY_PER_REQUEST/);
  assert.throws(() => loadDefinitions(variant((j) => { j.tables.queue.sort_key.type = 'X'; })), /sort_key/);
  assert.throws(() => loadDefinitions(variant((j) => { j.buckets.attachments.encryption = 'aws:kms'; })), /AES256/);
  assert.throws(() => loadDefinitions(variant((j) => { j.tables.queue.env = 'QUEUE'; })), /CIPHERPOST_TABLE_/);
});
