// The cipherpost stack: everything of DESIGN.md in one AWS account and region.
//
//   - DynamoDB tables and the S3 bucket, built from ../tables.json only (see definitions.ts);
//   - one RustFunction (cargo-lambda-cdk) per function crate, with its own least-privilege role
//     (see functions.ts for what each may do, and why);
//   - the HTTP API (payload format 2.0) with every route that has a function, the WebSocket API
//     with $connect and $disconnect on a stage, throttling on both;
//   - CloudWatch alarms (function errors and throttles, table throttles, HTTP 5xx) on an SNS topic;
//   - outputs: both endpoints, the management endpoint, each function's name for
//     `cargo lambda deploy`, the table and bucket names.
//
// Context (`npx cdk deploy -c key=value`):
//   arch=arm64|x86_64     Lambda architecture (arm64 by default: Graviton is ~20% cheaper per
//                          GB-second; x86_64 where the aarch64 Rust target cannot be installed)
//   retain=true|false      keep tables and bucket when the stack is deleted, with DynamoDB
//                          deletion protection (true by default: messages are user data)
//   logRetentionDays=30    CloudWatch Logs retention of every function's log group
//   wsStage=prod           the WebSocket API's stage (part of its URL and management endpoint)
//   httpRateLimit=500 httpBurstLimit=1000   HTTP API default route throttling (requests/s)
//   wsRateLimit=200 wsBurstLimit=400        WebSocket stage throttling (messages and connects/s)
//   alarmEmail=ops@example.com             subscribe an address to the alarm topic
import * as path from 'node:path';
import { CfnOutput, Duration, RemovalPolicy, Stack, StackProps } from 'aws-cdk-lib';
import * as apigw from 'aws-cdk-lib/aws-apigatewayv2';
import { HttpLambdaIntegration, WebSocketLambdaIntegration } from 'aws-cdk-lib/aws-apigatewayv2-integrations';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cwActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import { RustFunction } from 'cargo-lambda-cdk';
import { Construct } from 'constructs';
import { Definitions, KeyType, REPO_ROOT, loadDefinitions, pascal } from './definitions';
import { FUNCTIONS, FunctionSpec } from './functions';

/**
 * The limits the functions read from the environment (shared/backend/src/config.rs). The values
 * are the defaults of DESIGN.md, "Limits"; the queue TTL equals the bucket's expiry of tables.json
 * (both 30 days) so an attachment pointer never outlives its object by design.
 */
export const LIMITS = {
  CIPHERPOST_MAX_BODY_BYTES: 12 + 98_400 + 16,
  CIPHERPOST_MAX_DEVICES: 10,
  CIPHERPOST_MAX_PREKEYS_PER_UPLOAD: 100,
  CIPHERPOST_QUEUE_TTL_SECS: 30 * 86_400,
  CIPHERPOST_MAX_GROUP_MEMBERS: 1000,
  CIPHERPOST_MAX_ATTACHMENT_BYTES: 100 * 1024 * 1024,
  // Abuse limits (config.rs RateLimits): counted in the limits table, 429 above them.
  CIPHERPOST_LIMIT_SENDS_PER_MINUTE: 3_000,
  CIPHERPOST_LIMIT_BUNDLES_PER_HOUR: 600,
  CIPHERPOST_LIMIT_BUNDLES_PER_TARGET_PER_HOUR: 20,
  CIPHERPOST_LIMIT_LINKS_PER_HOUR: 20,
  CIPHERPOST_LIMIT_UPLOADS_PER_HOUR: 300,
} as const;

export interface CipherpostStackProps extends StackProps {
  /** Lambda architecture; default from context `arch`, else arm64. */
  readonly architecture?: lambda.Architecture;
  /** Keep data on stack deletion; default from context `retain`, else true. */
  readonly retain?: boolean;
  /** tables.json, already loaded (tests may pass their own); default: the repository's. */
  readonly definitions?: Definitions;
}

const ATTRIBUTE_TYPES: Record<KeyType, dynamodb.AttributeType> = {
  S: dynamodb.AttributeType.STRING,
  N: dynamodb.AttributeType.NUMBER,
  B: dynamodb.AttributeType.BINARY,
};

function flag(v: unknown, dflt: boolean): boolean {
  if (v === undefined || v === null || v === '') return dflt;
  if (v === true || v === 'true') return true;
  if (v === false || v === 'false') return false;
  throw new Error(`expected true or false, got ${JSON.stringify(v)}`);
}

function int(v: unknown, dflt: number, name: string): number {
  if (v === undefined || v === null || v === '') return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`context ${name} must be a non-negative integer, got ${JSON.stringify(v)}`);
  return n;
}

/** The log retention values CloudWatch accepts, as RetentionDays. */
function retention(days: number): logs.RetentionDays {
  const ok = Object.values(logs.RetentionDays).filter((d): d is number => typeof d === 'number');
  if (!ok.includes(days)) throw new Error(`logRetentionDays must be one of ${ok.join(', ')}, got ${days}`);
  return days as logs.RetentionDays;
}

export class CipherpostStack extends Stack {
  /** Tables by logical name of tables.json. */
  readonly tables: Record<string, dynamodb.Table> = {};
  /** Buckets by logical name of tables.json. */
  readonly buckets: Record<string, s3.Bucket> = {};
  /** Functions by crate/binary name. */
  readonly functions: Record<string, RustFunction> = {};
  readonly httpApi: apigw.HttpApi;
  readonly webSocketApi: apigw.WebSocketApi;
  readonly webSocketStage: apigw.WebSocketStage;
  readonly alarmTopic: sns.Topic;

  constructor(scope: Construct, id: string, props: CipherpostStackProps = {}) {
    super(scope, id, props);
    const ctx = (k: string) => this.node.tryGetContext(k);

    const archName = props.architecture?.name ?? ctx('arch') ?? 'arm64';
    const architecture =
      archName === 'arm64' ? lambda.Architecture.ARM_64
      : archName === 'x86_64' ? lambda.Architecture.X86_64
      : (() => { throw new Error(`context arch must be arm64 or x86_64, got ${JSON.stringify(archName)}`); })();
    const retain = props.retain ?? flag(ctx('retain'), true);
    const removalPolicy = retain ? RemovalPolicy.RETAIN : RemovalPolicy.DESTROY;
    const logRetention = retention(int(ctx('logRetentionDays'), 30, 'logRetentionDays'));
    const wsStageName: string = ctx('wsStage') ?? 'prod';
    const defs = props.definitions ?? loadDefinitions();

    // ---- Tables and bucket: from tables.json only ------------------------------------------
    for (const [logical, t] of Object.entries(defs.tables)) {
      this.tables[logical] = new dynamodb.Table(this, `${pascal(logical)}Table`, {
        partitionKey: { name: t.partition_key.name, type: ATTRIBUTE_TYPES[t.partition_key.type] },
        sortKey: t.sort_key ? { name: t.sort_key.name, type: ATTRIBUTE_TYPES[t.sort_key.type] } : undefined,
        // On-demand: nothing to pay while idle but storage, and no capacity to plan.
        billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
        timeToLiveAttribute: t.ttl_attribute ?? undefined,
        pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
        deletionProtection: retain,
        removalPolicy,
        // Encrypted at rest with the AWS-owned key (DynamoDB's default, no KMS charges).
      });
    }
    for (const [logical, b] of Object.entries(defs.buckets)) {
      this.buckets[logical] = new s3.Bucket(this, `${pascal(logical)}Bucket`, {
        blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
        encryption: s3.BucketEncryption.S3_MANAGED, // tables.json: AES256 (SSE-S3)
        enforceSSL: true, // bucket policy: deny any request not over TLS
        minimumTLSVersion: 1.2,
        objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        lifecycleRules: [
          {
            id: 'expire',
            expiration: Duration.days(b.expire_after_days),
            abortIncompleteMultipartUploadAfter: Duration.days(b.abort_incomplete_multipart_upload_days),
          },
        ],
        removalPolicy,
        // With retain=false the bucket is deleted with the stack only when empty; objects
        // expire on their own (README, "Tear down").
      });
    }

    // ---- APIs ------------------------------------------------------------------------------
    this.httpApi = new apigw.HttpApi(this, 'HttpApi', {
      description: 'cipherpost HTTP API (DESIGN.md, "Requests")',
      createDefaultStage: false,
    });
    new apigw.HttpStage(this, 'HttpDefaultStage', {
      httpApi: this.httpApi,
      stageName: '$default',
      autoDeploy: true,
      throttle: {
        rateLimit: int(ctx('httpRateLimit'), 500, 'httpRateLimit'),
        burstLimit: int(ctx('httpBurstLimit'), 1000, 'httpBurstLimit'),
      },
    });
    this.webSocketApi = new apigw.WebSocketApi(this, 'WebSocketApi', {
      description: 'cipherpost WebSocket API: pushes to online devices',
    });
    this.webSocketStage = new apigw.WebSocketStage(this, 'WebSocketStage', {
      webSocketApi: this.webSocketApi,
      stageName: wsStageName,
      autoDeploy: true,
      throttle: {
        rateLimit: int(ctx('wsRateLimit'), 200, 'wsRateLimit'),
        burstLimit: int(ctx('wsBurstLimit'), 400, 'wsBurstLimit'),
      },
    });
    // The management endpoint the functions push through: https://{apiId}.execute-api.{region}.amazonaws.com/{stage}
    const managementEndpoint = this.webSocketStage.callbackUrl;

    // ---- Environment shared by every function ------------------------------------------------
    const environment: Record<string, string> = { RUST_LOG: 'info' };
    for (const [logical, t] of Object.entries(defs.tables)) environment[t.env] = this.tables[logical].tableName;
    for (const [logical, b] of Object.entries(defs.buckets)) environment[b.env] = this.buckets[logical].bucketName;
    environment.CIPHERPOST_WS_ENDPOINT = managementEndpoint;
    for (const [k, v] of Object.entries(LIMITS)) environment[k] = String(v);

    // ---- Alarms go to one topic ----------------------------------------------------------------
    this.alarmTopic = new sns.Topic(this, 'AlarmTopic', { displayName: 'cipherpost alarms' });
    const alarmEmail: string | undefined = ctx('alarmEmail');
    if (alarmEmail) this.alarmTopic.addSubscription(new subscriptions.EmailSubscription(alarmEmail));
    const alarm = (id: string, metric: cloudwatch.IMetric, threshold: number, description: string) => {
      const a = new cloudwatch.Alarm(this, id, {
        metric,
        threshold,
        evaluationPeriods: 1,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
        alarmDescription: description,
      });
      a.addAlarmAction(new cwActions.SnsAction(this.alarmTopic));
      return a;
    };
    const fiveMinutes = Duration.minutes(5);

    // ---- Functions ---------------------------------------------------------------------------
    for (const spec of FUNCTIONS) {
      const fn = this.addFunction(spec, { architecture, environment, logRetention, removalPolicy });
      this.functions[spec.name] = fn;
      const id = pascal(spec.name);
      if (spec.api === 'http') {
        const integration = new HttpLambdaIntegration(`${id}Integration`, fn, {
          payloadFormatVersion: apigw.PayloadFormatVersion.VERSION_2_0,
        });
        for (const route of spec.routes) {
          const [method, routePath] = route.split(' ');
          this.httpApi.addRoutes({
            path: routePath,
            methods: [method as apigw.HttpMethod],
            integration,
          });
        }
      } else {
        const integration = new WebSocketLambdaIntegration(`${id}Integration`, fn);
        for (const route of spec.routes) this.webSocketApi.addRoute(route, { integration });
      }
      alarm(`${id}ErrorsAlarm`, fn.metricErrors({ period: fiveMinutes, statistic: 'Sum' }), 1,
        `${spec.name}: an invocation failed (panic, configuration error or timeout)`);
      alarm(`${id}ThrottlesAlarm`, fn.metricThrottles({ period: fiveMinutes, statistic: 'Sum' }), 1,
        `${spec.name}: invocations were throttled (account or function concurrency limit)`);
      new CfnOutput(this, `FunctionName${id}`, {
        value: fn.functionName,
        description: `the ${spec.name} function: cargo lambda deploy --binary-name ${spec.name} <this name>`,
      });
    }

    for (const [logical, table] of Object.entries(this.tables)) {
      const metric = new cloudwatch.MathExpression({
        expression: 'FILL(r, 0) + FILL(w, 0)',
        usingMetrics: {
          r: table.metric('ReadThrottleEvents', { period: fiveMinutes, statistic: 'Sum' }),
          w: table.metric('WriteThrottleEvents', { period: fiveMinutes, statistic: 'Sum' }),
        },
        period: fiveMinutes,
        label: `${logical} throttle events`,
      });
      alarm(`${pascal(logical)}TableThrottlesAlarm`, metric, 1, `DynamoDB table ${logical}: requests were throttled`);
      new CfnOutput(this, `Table${pascal(logical)}`, { value: table.tableName, description: `${defs.tables[logical].env}` });
    }
    // 5xx answers of the HTTP API: the functions' own 500/503 (database unavailable) and API
    // Gateway's (integration failure or timeout). A few in five minutes page someone.
    alarm('HttpApi5xxAlarm', this.httpApi.metricServerError({ period: fiveMinutes, statistic: 'Sum' }), 5,
      'HTTP API: 5xx answers (function errors, timeouts or an unavailable database)');

    // ---- Outputs -------------------------------------------------------------------------------
    new CfnOutput(this, 'HttpEndpoint', {
      value: this.httpApi.apiEndpoint,
      description: 'HTTP API base URL (routes under /v1/)',
    });
    new CfnOutput(this, 'WebSocketEndpoint', {
      value: this.webSocketStage.url,
      description: 'WebSocket URL devices connect to (wss://)',
    });
    new CfnOutput(this, 'ManagementEndpoint', {
      value: managementEndpoint,
      description: 'WebSocket management API (CIPHERPOST_WS_ENDPOINT of the functions)',
    });
    for (const [logical, bucket] of Object.entries(this.buckets)) {
      new CfnOutput(this, `Bucket${pascal(logical)}`, { value: bucket.bucketName, description: defs.buckets[logical].env });
    }
    new CfnOutput(this, 'AlarmTopicArn', { value: this.alarmTopic.topicArn, description: 'SNS topic of every alarm' });
  }

  /** One function: its role with exactly the grants of its spec, its log group, its code. */
  private addFunction(
    spec: FunctionSpec,
    o: {
      architecture: lambda.Architecture;
      environment: Record<string, string>;
      logRetention: logs.RetentionDays;
      removalPolicy: RemovalPolicy;
    },
  ): RustFunction {
    const id = pascal(spec.name);
    const crateDir = path.join(REPO_ROOT, 'functions', spec.name);

    // Its own log group, so retention is set without the log-retention custom resource and the
    // role can be scoped to it.
    const logGroup = new logs.LogGroup(this, `${id}Logs`, {
      retention: o.logRetention,
      removalPolicy: o.removalPolicy,
    });

    // Its own role: no managed policy (AWSLambdaBasicExecutionRole would allow writing to every
    // log group), only the statements below.
    const role = new iam.Role(this, `${id}Role`, {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      description: `cipherpost ${spec.name}: least privilege (infra/lib/functions.ts)`,
    });
    role.addToPolicy(new iam.PolicyStatement({
      actions: ['logs:CreateLogStream', 'logs:PutLogEvents'],
      resources: [logGroup.logGroupArn],
    }));
    for (const [logical, actions] of Object.entries(spec.tables)) {
      const table = this.tables[logical];
      if (!table) throw new Error(`function ${spec.name}: table ${logical} is not in tables.json`);
      // Table ARN only: no table has an index (tables.json), so no index ARN is granted.
      role.addToPolicy(new iam.PolicyStatement({ actions: [...actions], resources: [table.tableArn] }));
    }
    for (const [logical, grant] of Object.entries(spec.objects ?? {})) {
      const bucket = this.buckets[logical];
      if (!bucket) throw new Error(`function ${spec.name}: bucket ${logical} is not in tables.json`);
      if (!/^[a-z0-9-]+\/$/.test(grant.prefix)) {
        throw new Error(`function ${spec.name}: object prefix ${grant.prefix} must be a plain folder`);
      }
      // The objects under the prefix only: never the bucket itself, never other keys.
      role.addToPolicy(new iam.PolicyStatement({
        actions: [...grant.actions],
        resources: [bucket.arnForObjects(`${grant.prefix}*`)],
      }));
    }
    if (spec.connections.length > 0) {
      // Only this stage's connections, and only the methods the function uses.
      const base = this.formatArn({ service: 'execute-api', resource: this.webSocketApi.apiId });
      role.addToPolicy(new iam.PolicyStatement({
        actions: ['execute-api:ManageConnections'],
        resources: spec.connections.map((m) => `${base}/${this.webSocketStage.stageName}/${m}/@connections/*`),
      }));
    }

    return new RustFunction(this, `${id}Function`, {
      functionName: `${this.stackName}-${spec.name}`,
      description: `cipherpost ${spec.name} (functions/${spec.name})`,
      manifestPath: path.join(crateDir, 'Cargo.toml'),
      binaryName: spec.name,
      runtime: 'provided.al2023',
      architecture: o.architecture,
      memorySize: spec.memoryMb,
      timeout: Duration.seconds(spec.timeoutSeconds),
      environment: o.environment,
      role,
      logGroup,
      loggingFormat: lambda.LoggingFormat.JSON,
    });
  }
}
