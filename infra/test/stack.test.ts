// The functions, both APIs, the alarms and the outputs.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { readFileSync, existsSync } from 'node:fs';
import * as path from 'node:path';
import { Match } from 'aws-cdk-lib/assertions';
import { LIMITS } from '../lib/cipherpost-stack';
import { REPO_ROOT, loadDefinitions, pascal } from '../lib/definitions';
import { FUNCTIONS } from '../lib/functions';
import { crateBinaries, render, resources, synth } from './helpers';

const s = synth();
const defs = loadDefinitions();
const fnResource = (name: string) => {
  const found = resources(s, 'AWS::Lambda::Function').find(([lid]) => s.names.get(lid) === `function:${name}`);
  assert.ok(found, `function ${name}`);
  return found[1];
};

/** The HTTP routes of DESIGN.md, "Requests", whose functions exist (attachments comes later). */
const HTTP_ROUTES: Record<string, string> = {
  'PUT /v1/accounts/{user}': 'register',
  'POST /v1/accounts/{user}/devices': 'register',
  'DELETE /v1/accounts/{user}/devices/{device}': 'register',
  'PUT /v1/keys': 'keys',
  'GET /v1/keys/{user}': 'keys',
  'GET /v1/keys': 'keys',
  'PUT /v1/messages': 'send',
  'GET /v1/messages': 'sync',
  'POST /v1/messages/ack': 'sync',
  'POST /v1/groups': 'groups',
  'GET /v1/groups/{group}': 'groups',
  'POST /v1/groups/{group}/members': 'groups',
  'DELETE /v1/groups/{group}/members/{user}': 'groups',
  'PUT /v1/groups/{group}/admins/{user}': 'groups',
  'DELETE /v1/groups/{group}/admins/{user}': 'groups',
  'POST /v1/groups/{group}/leave': 'groups',
  'POST /v1/attachments': 'attachments',
  'GET /v1/attachments/{id}': 'attachments',
};

// ---- functions ---------------------------------------------------------------------------------

test('one function per function crate binary, and the crates build exactly those binaries', () => {
  const bins = crateBinaries();
  // Each crate folder has one binary named like the folder (cargo-lambda-cdk builds --bin <name>).
  for (const [dir, b] of bins) assert.deepEqual(b, [dir], `functions/${dir}/Cargo.toml`);
  assert.deepEqual(FUNCTIONS.map((f) => f.name).sort(), [...bins.keys()].sort());
  assert.equal(resources(s, 'AWS::Lambda::Function').length, bins.size);
});

test('function names in the outputs match the crate binary names in functions/*/Cargo.toml', () => {
  const outputs = s.json.Outputs;
  const bins = [...crateBinaries().values()].flat().sort();
  const fnOutputs = Object.keys(outputs).filter((k) => k.startsWith('FunctionName')).sort();
  assert.deepEqual(fnOutputs, bins.map((b) => `FunctionName${pascal(b)}`).sort());
  for (const bin of bins) {
    const out = outputs[`FunctionName${pascal(bin)}`];
    assert.equal(render(out.Value, s.names), `function:${bin}`, `output for ${bin} names its function`);
    assert.equal(fnResource(bin).Properties.FunctionName, `cipherpost-${bin}`);
    assert.match(out.Description, new RegExp(`--binary-name ${bin} `));
  }
});

test('each function is built from its own crate with its binary name', () => {
  for (const spec of FUNCTIONS) {
    const manifest = path.join(REPO_ROOT, 'functions', spec.name, 'Cargo.toml');
    assert.ok(existsSync(manifest), manifest);
    assert.equal(fnResource(spec.name).Properties.Description, `cipherpost ${spec.name} (functions/${spec.name})`);
  }
});

test('runtime provided.al2023, handler bootstrap, arm64 by default, JSON logs in its own group', () => {
  for (const spec of FUNCTIONS) {
    const p = fnResource(spec.name).Properties;
    assert.equal(p.Runtime, 'provided.al2023');
    assert.equal(p.Handler, 'bootstrap');
    assert.deepEqual(p.Architectures, ['arm64']);
    assert.equal(p.LoggingConfig.LogFormat, 'JSON');
    assert.equal(render(p.LoggingConfig.LogGroup, s.names), `logs:${spec.name}`);
    assert.equal(p.MemorySize, spec.memoryMb);
    assert.equal(p.Timeout, spec.timeoutSeconds);
  }
});

test('memory and timeouts stay within what the APIs wait for', () => {
  for (const spec of FUNCTIONS) {
    assert.ok(spec.memoryMb >= 128 && spec.memoryMb <= 1024, spec.name);
    // HTTP API integrations time out at 30 s, WebSocket integrations at 29 s.
    assert.ok(spec.timeoutSeconds >= 3 && spec.timeoutSeconds <= 29, spec.name);
  }
});

test('-c arch=x86_64 switches every function to x86_64; another value is refused', () => {
  const x = synth({ arch: 'x86_64' });
  for (const [, f] of resources(x, 'AWS::Lambda::Function')) assert.deepEqual(f.Properties.Architectures, ['x86_64']);
  assert.throws(() => synth({ arch: 'sparc' }), /arm64 or x86_64/);
});

test('log retention: 30 days by default, from context, in one log group per function', () => {
  const groups = resources(s, 'AWS::Logs::LogGroup');
  assert.equal(groups.length, FUNCTIONS.length);
  for (const [, g] of groups) assert.equal(g.Properties.RetentionInDays, 30);
  const week = synth({ logRetentionDays: '7' });
  for (const [, g] of resources(week, 'AWS::Logs::LogGroup')) assert.equal(g.Properties.RetentionInDays, 7);
  assert.throws(() => synth({ logRetentionDays: '8' }), /logRetentionDays/);
});

test('environment: table names, bucket, management endpoint of the stage, limits, nothing else', () => {
  for (const spec of FUNCTIONS) {
    const env = fnResource(spec.name).Properties.Environment.Variables;
    const expected = [
      'RUST_LOG',
      ...Object.values(defs.tables).map((t) => t.env),
      ...Object.values(defs.buckets).map((b) => b.env),
      'CIPHERPOST_WS_ENDPOINT',
      ...Object.keys(LIMITS),
    ].sort();
    assert.deepEqual(Object.keys(env).sort(), expected, spec.name);
    assert.equal(
      render(env.CIPHERPOST_WS_ENDPOINT, s.names),
      'https://WebSocketApi.execute-api.${AWS::Region}.${AWS::URLSuffix}/prod',
    );
    for (const [k, v] of Object.entries(LIMITS)) assert.equal(env[k], String(v));
  }
});

test('every CIPHERPOST_ variable the stack sets is one the backend reads, and the reverse', () => {
  const config = readFileSync(path.join(REPO_ROOT, 'shared', 'backend', 'src', 'config.rs'), 'utf8');
  const read = new Set<string>(config.match(/"CIPHERPOST_[A-Z_]+"/g)?.map((x) => x.slice(1, -1)) ?? []);
  // Table variables are built as CIPHERPOST_TABLE_{LOGICAL} from table("logical") calls.
  assert.match(config, /format!\("CIPHERPOST_TABLE_\{\}", logical\.to_uppercase\(\)\)/);
  for (const m of config.matchAll(/table\("([a-z_]+)"\)/g)) read.add(`CIPHERPOST_TABLE_${m[1].toUpperCase()}`);
  const set = Object.keys(fnResource('send').Properties.Environment.Variables).filter((k) => k.startsWith('CIPHERPOST_'));
  assert.deepEqual(set.sort(), [...read].sort());
});

test('the limits equal the backend defaults and DESIGN.md', () => {
  assert.equal(LIMITS.CIPHERPOST_MAX_BODY_BYTES, 12 + 98_400 + 16);
  assert.equal(LIMITS.CIPHERPOST_MAX_DEVICES, 10);
  assert.equal(LIMITS.CIPHERPOST_MAX_PREKEYS_PER_UPLOAD, 100);
  assert.equal(LIMITS.CIPHERPOST_QUEUE_TTL_SECS, defs.buckets.attachments.expire_after_days * 86_400);
  assert.equal(LIMITS.CIPHERPOST_MAX_GROUP_MEMBERS, 1000);
  assert.equal(LIMITS.CIPHERPOST_MAX_ATTACHMENT_BYTES, 100 * 1024 * 1024);
  // The rate limits equal RateLimits::default() in config.rs.
  const config = readFileSync(path.join(REPO_ROOT, 'shared', 'backend', 'src', 'config.rs'), 'utf8');
  const defaults = config.slice(config.indexOf('impl Default for RateLimits'));
  for (const [env, field] of [
    ['CIPHERPOST_LIMIT_SENDS_PER_MINUTE', 'sends_per_minute'],
    ['CIPHERPOST_LIMIT_BUNDLES_PER_HOUR', 'bundles_per_hour'],
    ['CIPHERPOST_LIMIT_BUNDLES_PER_TARGET_PER_HOUR', 'bundles_per_target_per_hour'],
    ['CIPHERPOST_LIMIT_LINKS_PER_HOUR', 'links_per_hour'],
    ['CIPHERPOST_LIMIT_UPLOADS_PER_HOUR', 'uploads_per_hour'],
  ] as const) {
    const m = defaults.match(new RegExp(`${field}: ([0-9_]+),`));
    assert.ok(m, field);
    assert.equal(LIMITS[env], Number(m[1].replace(/_/g, '')), env);
  }
});

// ---- APIs --------------------------------------------------------------------------------------

test('HTTP API: every route of DESIGN.md that has a function, to that function, payload 2.0', () => {
  const routes = resources(s, 'AWS::ApiGatewayV2::Route').filter(([, r]) => render(r.Properties.ApiId, s.names) === 'HttpApi');
  const seen: Record<string, string> = {};
  for (const [, r] of routes) {
    const target = r.Properties.Target['Fn::Join'][1][1].Ref;
    const integration = s.json.Resources[target].Properties;
    assert.equal(integration.IntegrationType, 'AWS_PROXY');
    assert.equal(integration.PayloadFormatVersion, '2.0');
    seen[r.Properties.RouteKey] = render(integration.IntegrationUri, s.names).replace('function:', '');
    assert.equal(r.Properties.AuthorizationType, 'NONE', 'requests are signed by the device, checked in the function');
  }
  assert.deepEqual(seen, HTTP_ROUTES);
  // The functions' own routing agrees.
  for (const spec of FUNCTIONS.filter((f) => f.api === 'http')) {
    assert.deepEqual([...spec.routes].sort(), Object.keys(HTTP_ROUTES).filter((k) => HTTP_ROUTES[k] === spec.name).sort());
  }
});

test('HTTP API: one $default stage, auto-deployed, throttled', () => {
  const stages = resources(s, 'AWS::ApiGatewayV2::Stage').filter(([, r]) => render(r.Properties.ApiId, s.names) === 'HttpApi');
  assert.equal(stages.length, 1);
  const p = stages[0][1].Properties;
  assert.equal(p.StageName, '$default');
  assert.equal(p.AutoDeploy, true);
  assert.deepEqual(p.DefaultRouteSettings, { ThrottlingRateLimit: 500, ThrottlingBurstLimit: 1000 });
  const t = synth({ httpRateLimit: '50', httpBurstLimit: '100', wsRateLimit: '5', wsBurstLimit: '10' });
  t.template.hasResourceProperties('AWS::ApiGatewayV2::Stage', {
    StageName: '$default',
    DefaultRouteSettings: { ThrottlingRateLimit: 50, ThrottlingBurstLimit: 100 },
  });
  t.template.hasResourceProperties('AWS::ApiGatewayV2::Stage', {
    StageName: 'prod',
    DefaultRouteSettings: { ThrottlingRateLimit: 5, ThrottlingBurstLimit: 10 },
  });
});

test('WebSocket API: $connect and $disconnect to their functions on a throttled stage', () => {
  s.template.hasResourceProperties('AWS::ApiGatewayV2::Api', {
    ProtocolType: 'WEBSOCKET',
    RouteSelectionExpression: '$request.body.action',
  });
  const routes = resources(s, 'AWS::ApiGatewayV2::Route').filter(([, r]) => render(r.Properties.ApiId, s.names) === 'WebSocketApi');
  const seen: Record<string, string> = {};
  for (const [, r] of routes) {
    const target = r.Properties.Target['Fn::Join'][1][1].Ref;
    const integration = s.json.Resources[target].Properties;
    assert.equal(integration.IntegrationType, 'AWS_PROXY');
    seen[r.Properties.RouteKey] = render(integration.IntegrationUri, s.names);
  }
  assert.equal(Object.keys(seen).length, 2);
  assert.match(seen.$connect, /^arn:\$\{AWS::Partition\}:apigateway:\$\{AWS::Region\}:lambda:path\/2015-03-31\/functions\/function:ws-connect\/invocations$/);
  assert.match(seen.$disconnect, /function:ws-disconnect\/invocations$/);
  const stages = resources(s, 'AWS::ApiGatewayV2::Stage').filter(([, r]) => render(r.Properties.ApiId, s.names) === 'WebSocketApi');
  assert.equal(stages.length, 1);
  assert.equal(stages[0][1].Properties.StageName, 'prod');
  assert.equal(stages[0][1].Properties.AutoDeploy, true);
  assert.deepEqual(stages[0][1].Properties.DefaultRouteSettings, { ThrottlingRateLimit: 200, ThrottlingBurstLimit: 400 });
});

test('API Gateway may invoke each function only from its own API', () => {
  const perms = resources(s, 'AWS::Lambda::Permission');
  assert.equal(perms.length, Object.keys(HTTP_ROUTES).length + 2);
  for (const [, p] of perms) {
    const fn = render(p.Properties.FunctionName, s.names).replace('function:', '');
    assert.equal(p.Properties.Principal, 'apigateway.amazonaws.com');
    const api = FUNCTIONS.find((f) => f.name === fn)!.api === 'http' ? 'HttpApi' : 'WebSocketApi';
    assert.ok(render(p.Properties.SourceArn, s.names).includes(`:${api}/`), `${fn}: ${render(p.Properties.SourceArn, s.names)}`);
  }
});

test('-c wsStage names the WebSocket stage, its URLs and the functions\' endpoint', () => {
  const t = synth({ wsStage: 'live' });
  t.template.hasResourceProperties('AWS::ApiGatewayV2::Stage', { StageName: 'live' });
  const env = resources(t, 'AWS::Lambda::Function')[0][1].Properties.Environment.Variables;
  assert.ok(render(env.CIPHERPOST_WS_ENDPOINT, t.names).endsWith('/live'));
});

// ---- alarms and outputs ------------------------------------------------------------------------

const alarms = () => resources(s, 'AWS::CloudWatch::Alarm').map(([, a]) => a.Properties);

test('alarms: errors and throttles of each function', () => {
  for (const spec of FUNCTIONS) {
    for (const metric of ['Errors', 'Throttles']) {
      const found = alarms().filter(
        (a) => a.MetricName === metric && a.Namespace === 'AWS/Lambda' &&
          render(a.Dimensions[0].Value, s.names) === `function:${spec.name}`,
      );
      assert.equal(found.length, 1, `${metric} alarm of ${spec.name}`);
      assert.equal(found[0].Threshold, 1);
      assert.equal(found[0].ComparisonOperator, 'GreaterThanOrEqualToThreshold');
      assert.equal(found[0].Statistic, 'Sum');
    }
  }
});

test('alarms: read and write throttles of each table', () => {
  for (const logical of Object.keys(defs.tables)) {
    const found = alarms().filter((a) =>
      a.Metrics?.some((m: any) => m.MetricStat?.Metric?.Namespace === 'AWS/DynamoDB' &&
        render(m.MetricStat.Metric.Dimensions[0].Value, s.names) === `table:${logical}`));
    assert.equal(found.length, 1, `throttle alarm of table ${logical}`);
    const names = found[0].Metrics.filter((m: any) => m.MetricStat).map((m: any) => m.MetricStat.Metric.MetricName).sort();
    assert.deepEqual(names, ['ReadThrottleEvents', 'WriteThrottleEvents']);
  }
});

test('alarms: HTTP API 5xx', () => {
  const found = alarms().filter((a) => a.MetricName === '5xx' && a.Namespace === 'AWS/ApiGateway');
  assert.equal(found.length, 1);
  assert.equal(render(found[0].Dimensions[0].Value, s.names), 'HttpApi');
  assert.equal(found[0].Dimensions[0].Name, 'ApiId');
});

test('every alarm notifies the alarm topic; -c alarmEmail subscribes an address', () => {
  const all = alarms();
  assert.equal(all.length, FUNCTIONS.length * 2 + Object.keys(defs.tables).length + 1);
  for (const a of all) assert.deepEqual(a.AlarmActions.map((x: any) => render(x, s.names)).length, 1);
  assert.equal(resources(s, 'AWS::SNS::Subscription').length, 0);
  const e = synth({ alarmEmail: 'ops@example.com' });
  e.template.hasResourceProperties('AWS::SNS::Subscription', { Protocol: 'email', Endpoint: 'ops@example.com' });
});

test('outputs: both endpoints, the management endpoint, tables, bucket', () => {
  const o = s.json.Outputs;
  assert.equal(render(o.HttpEndpoint.Value, s.names), 'HttpApi.ApiEndpoint');
  assert.equal(render(o.WebSocketEndpoint.Value, s.names), 'wss://WebSocketApi.execute-api.${AWS::Region}.${AWS::URLSuffix}/prod');
  assert.equal(render(o.ManagementEndpoint.Value, s.names), 'https://WebSocketApi.execute-api.${AWS::Region}.${AWS::URLSuffix}/prod');
  for (const logical of Object.keys(defs.tables)) {
    assert.equal(render(o[`Table${pascal(logical)}`].Value, s.names), `table:${logical}`);
  }
  assert.equal(render(o.BucketAttachments.Value, s.names), 'bucket:attachments');
  s.template.hasOutput('AlarmTopicArn', { Value: Match.anyValue() });
});
