// What each function may do, stated here once more by hand: a permission added to the stack (an
// action, a table, a management API method, a wider resource) fails this test until it is
// written down here too, on purpose. Derivation: infra/lib/functions.ts.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { FUNCTIONS } from '../lib/functions';
import { permissionsOf, resources, synth } from './helpers';

const s = synth();

const CONNECTIONS = (method: string) =>
  `arn:\${AWS::Partition}:execute-api:\${AWS::Region}:\${AWS::AccountId}:WebSocketApi/prod/${method}/@connections/*`;

const logs = (fn: string) => ({ [`logs:${fn}`]: ['logs:CreateLogStream', 'logs:PutLogEvents'] });

/** resource -> actions, per function. */
const EXPECTED: Record<string, Record<string, string[]>> = {
  register: {
    ...logs('register'),
    'table:accounts': ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem'],
    'table:devices': ['dynamodb:GetItem', 'dynamodb:Query', 'dynamodb:PutItem', 'dynamodb:UpdateItem'],
    'table:prekeys': ['dynamodb:PutItem', 'dynamodb:BatchWriteItem', 'dynamodb:Query'],
    'table:queue': ['dynamodb:Query', 'dynamodb:BatchWriteItem'],
    'table:replay': ['dynamodb:PutItem'],
    'table:limits': ['dynamodb:UpdateItem'],
    'table:connections': ['dynamodb:DeleteItem'],
    [CONNECTIONS('DELETE')]: ['execute-api:ManageConnections'],
  },
  keys: {
    ...logs('keys'),
    'table:accounts': ['dynamodb:GetItem'],
    'table:devices': ['dynamodb:GetItem', 'dynamodb:Query', 'dynamodb:UpdateItem'],
    'table:prekeys': ['dynamodb:Query', 'dynamodb:DeleteItem', 'dynamodb:BatchWriteItem'],
    'table:replay': ['dynamodb:PutItem'],
    'table:limits': ['dynamodb:UpdateItem'],
    'table:connections': ['dynamodb:DeleteItem'],
    [CONNECTIONS('POST')]: ['execute-api:ManageConnections'],
  },
  send: {
    ...logs('send'),
    'table:devices': ['dynamodb:GetItem', 'dynamodb:Query', 'dynamodb:UpdateItem'],
    'table:sends': ['dynamodb:GetItem', 'dynamodb:PutItem'],
    'table:queue': ['dynamodb:PutItem', 'dynamodb:BatchWriteItem'],
    'table:connections': ['dynamodb:DeleteItem'],
    'table:groups': ['dynamodb:GetItem'],
    'table:limits': ['dynamodb:UpdateItem'],
    [CONNECTIONS('POST')]: ['execute-api:ManageConnections'],
  },
  groups: {
    ...logs('groups'),
    'table:groups': ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:DeleteItem'],
    'table:accounts': ['dynamodb:BatchGetItem'],
    'table:devices': ['dynamodb:GetItem', 'dynamodb:Query'],
    'table:replay': ['dynamodb:PutItem'],
  },
  sync: {
    ...logs('sync'),
    'table:devices': ['dynamodb:GetItem'],
    'table:queue': ['dynamodb:Query', 'dynamodb:BatchWriteItem'],
  },
  'ws-connect': {
    ...logs('ws-connect'),
    'table:devices': ['dynamodb:GetItem', 'dynamodb:UpdateItem'],
    'table:replay': ['dynamodb:PutItem'],
    'table:connections': ['dynamodb:PutItem', 'dynamodb:DeleteItem'],
    [CONNECTIONS('DELETE')]: ['execute-api:ManageConnections'],
  },
  'ws-disconnect': {
    ...logs('ws-disconnect'),
    'table:connections': ['dynamodb:GetItem', 'dynamodb:DeleteItem'],
    'table:devices': ['dynamodb:UpdateItem'],
  },
  attachments: {
    ...logs('attachments'),
    'table:devices': ['dynamodb:GetItem'],
    'table:limits': ['dynamodb:UpdateItem'],
    'bucket:attachments/attachments/*': ['s3:PutObject', 's3:GetObject'],
  },
};

const pairs = (m: Record<string, string[]>) =>
  Object.entries(m).flatMap(([res, actions]) => actions.map((a) => `${a} on ${res}`)).sort();

test('every function has an expected permission set, and no other function exists', () => {
  assert.deepEqual(FUNCTIONS.map((f) => f.name).sort(), Object.keys(EXPECTED).sort());
});

for (const [fn, expected] of Object.entries(EXPECTED)) {
  test(`${fn} may do exactly what it needs`, () => {
    assert.deepEqual(permissionsOf(s, fn), pairs(expected));
  });
}

test('one role per function, and no other role or policy in the stack', () => {
  const roles = resources(s, 'AWS::IAM::Role').map(([lid]) => s.names.get(lid)).sort();
  assert.deepEqual(roles, Object.keys(EXPECTED).map((f) => `role:${f}`).sort());
  for (const [lid, p] of resources(s, 'AWS::IAM::Policy')) {
    assert.equal(p.Properties.Roles.length, 1, `${lid} is attached to one role`);
  }
  assert.equal(resources(s, 'AWS::IAM::ManagedPolicy').length, 0);
  assert.equal(resources(s, 'AWS::IAM::User').length, 0);
});

test('no wildcard actions, no "*" resources, only counter updates on the limits table, the bucket only for attachments', () => {
  for (const fn of Object.keys(EXPECTED)) {
    for (const p of permissionsOf(s, fn)) {
      const [action, resource] = p.split(' on ');
      assert.ok(!action.includes('*'), `${fn}: ${p}`);
      assert.notEqual(resource, '*', `${fn}: ${p}`);
      if (resource.startsWith('table:limits')) {
        assert.equal(action, 'dynamodb:UpdateItem', `${fn}: ${p}`);
        assert.ok(['register', 'keys', 'send', 'attachments'].includes(fn), `${fn}: ${p}`);
      }
      if (resource.startsWith('bucket:')) {
        assert.equal(fn, 'attachments', `${fn}: ${p}`);
        // Objects under attachments/ only: never the bucket ARN itself (no listing, no policy).
        assert.equal(resource, 'bucket:attachments/attachments/*', `${fn}: ${p}`);
        assert.ok(['s3:GetObject', 's3:PutObject'].includes(action), `${fn}: ${p}`);
      }
    }
  }
});

test('attachments touches no table but devices (authenticate) and the upload counters, and no connection', () => {
  const perms = permissionsOf(s, 'attachments');
  assert.deepEqual(
    perms.filter((p) => p.startsWith('dynamodb:')).sort(),
    ['dynamodb:GetItem on table:devices', 'dynamodb:UpdateItem on table:limits'],
  );
  assert.ok(!perms.some((p) => p.startsWith('execute-api:')));
});

test('ManageConnections only where a function pushes or closes, on this stage only', () => {
  const holders = Object.keys(EXPECTED).filter((fn) =>
    permissionsOf(s, fn).some((p) => p.startsWith('execute-api:')),
  );
  assert.deepEqual(holders.sort(), ['keys', 'register', 'send', 'ws-connect']);
});

test('a widened grant is seen: grantReadWriteData, an extra table, a wider management ARN', () => {
  const rw = synth({}, (st) => st.tables.queue.grantReadWriteData(st.functions.sync));
  assert.notDeepEqual(permissionsOf(rw, 'sync'), pairs(EXPECTED.sync));
  const extra = synth({}, (st) => st.tables.limits.grant(st.functions.send, 'dynamodb:GetItem'));
  assert.notDeepEqual(permissionsOf(extra, 'send'), pairs(EXPECTED.send));
  const wide = synth({}, (st) => st.webSocketApi.grantManageConnections(st.functions.send));
  assert.notDeepEqual(permissionsOf(wide, 'send'), pairs(EXPECTED.send));
  const bucketWide = synth({}, (st) => st.buckets.attachments.grantRead(st.functions.attachments));
  assert.notDeepEqual(permissionsOf(bucketWide, 'attachments'), pairs(EXPECTED.attachments));
});

test('groups: a widened grant is seen (write on devices, read-write on groups for send, the queue)', () => {
  const dev = synth({}, (st) => st.tables.devices.grantWriteData(st.functions.groups));
  assert.notDeepEqual(permissionsOf(dev, 'groups'), pairs(EXPECTED.groups));
  const rw = synth({}, (st) => st.tables.groups.grantReadWriteData(st.functions.send));
  assert.notDeepEqual(permissionsOf(rw, 'send'), pairs(EXPECTED.send));
  const queue = synth({}, (st) => st.tables.queue.grant(st.functions.groups, 'dynamodb:BatchWriteItem'));
  assert.notDeepEqual(permissionsOf(queue, 'groups'), pairs(EXPECTED.groups));
  const accounts = synth({}, (st) => st.tables.accounts.grant(st.functions.groups, 'dynamodb:GetItem'));
  assert.notDeepEqual(permissionsOf(accounts, 'groups'), pairs(EXPECTED.groups));
});

test('only the groups function writes the groups table; send only reads it', () => {
  for (const fn of Object.keys(EXPECTED)) {
    const onGroups = permissionsOf(s, fn).filter((p) => p.endsWith(' on table:groups')).map((p) => p.split(' on ')[0]);
    if (fn === 'groups') assert.deepEqual(onGroups.sort(), ['dynamodb:DeleteItem', 'dynamodb:GetItem', 'dynamodb:PutItem']);
    else if (fn === 'send') assert.deepEqual(onGroups, ['dynamodb:GetItem']);
    else assert.deepEqual(onGroups, [], fn);
  }
});
