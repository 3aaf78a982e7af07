// What each Lambda function is and what it may do. One entry per crate in functions/ that has a
// binary (functions/common is a library). The permissions are derived from the store methods
// each route calls (shared/backend/src/store.rs, called from shared/backend/src/service/*.rs and
// auth.rs), and nothing else: least privilege, one role per function.
//
// DynamoDB actions in IAM terms:
//   - a TransactWriteItems call is authorised item by item: each Put needs dynamodb:PutItem,
//     each Update dynamodb:UpdateItem on that item's table (there is no "TransactWriteItems"
//     IAM action; a ConditionCheck item would need dynamodb:ConditionCheckItem, none is used);
//   - BatchWriteItem needs dynamodb:BatchWriteItem on the table (puts and deletes alike);
//   - conditional writes, ReturnValues and consistent reads need nothing more.
//
// Store method -> actions:
//   create_account      TransactWrite: Put accounts, Put devices, Put prekeys; then put_prekeys
//   add_device          TransactWrite: Update accounts, Put devices, Put prekeys; then put_prekeys
//   revoke_device       TransactWrite: Update accounts, Update devices (revoked one + each remaining)
//   get_account         GetItem accounts
//   get_device          GetItem devices            (authenticate() calls it on every request)
//   list_devices        Query devices
//   set_signed_prekey   UpdateItem devices
//   reserve_prekey_ids  UpdateItem devices
//   put_prekeys         BatchWriteItem prekeys
//   take_prekey         Query prekeys, DeleteItem prekeys
//   count_prekeys       Query prekeys
//   purge_partition     Query + BatchWriteItem on prekeys or queue
//   enqueue             TransactWrite: Put sends, Put queue
//   get_send            GetItem sends
//   queue_page          Query queue
//   ack                 BatchWriteItem queue
//   set_connection      PutItem connections, UpdateItem devices
//   get_connection      GetItem connections
//   drop_connection     UpdateItem devices, DeleteItem connections
//   remember_once       PutItem replay             (accept_once() and the connect nonce)
//   get_group           GetItem groups
//   create_group        PutItem groups (conditional: the id is new)
//   update_group        PutItem groups (conditional on the version read)
//   delete_group        DeleteItem groups (conditional on the version read)
//   missing_accounts    BatchGetItem accounts (keys only)
//   active_devices(_of) Query devices (one per member, bounded parallelism)
//   begin_group_send    PutItem sends (conditional: the first attempt)
//   complete_group_send PutItem sends
//   get_send_record     GetItem sends
//   enqueue_fan_out     BatchWriteItem queue (chunks of 25 in parallel)
//   count_hit           UpdateItem limits          (rate_limit(): sends, bundle fetches, links, uploads)
// WebSocket management API (shared/backend/src/push.rs):
//   Pusher::post  -> POST   @connections/{id}  (execute-api:ManageConnections on .../POST/@connections/*)
//   Pusher::close -> DELETE @connections/{id}  (execute-api:ManageConnections on .../DELETE/@connections/*)
//
// S3 (shared/backend/src/service/attachments.rs), on the bucket's `attachments/*` objects only:
//   create_attachment   presigned PutObject  -> s3:PutObject (a presigned URL acts with the
//                       permissions of the credentials that signed it: the function's role)
//   get_attachment      HeadObject + presigned GetObject -> s3:GetObject (HeadObject is
//                       authorised as GetObject; without s3:ListBucket a missing key answers 403,
//                       which the backend also reads as "unknown")
//
// The `limits` table holds the rate-limit counters: register (links), keys (bundle fetches),
// send (sends) and attachments (uploads) may only UpdateItem it.

export type DynamoAction =
  | 'dynamodb:GetItem'
  | 'dynamodb:Query'
  | 'dynamodb:PutItem'
  | 'dynamodb:UpdateItem'
  | 'dynamodb:DeleteItem'
  | 'dynamodb:BatchGetItem'
  | 'dynamodb:BatchWriteItem';

/** The S3 object actions a function may use. */
export type S3Action = 's3:GetObject' | 's3:PutObject';

/** S3 grants on the objects of one bucket under one key prefix. */
export interface ObjectGrant {
  /** Key prefix the grant is limited to, e.g. `attachments/`. */
  readonly prefix: string;
  readonly actions: readonly S3Action[];
}

/** The management API methods a function uses on the WebSocket stage's connections. */
export type ConnectionMethod = 'POST' | 'DELETE';

export interface FunctionSpec {
  /** The crate folder under functions/ and its binary's name (they are the same). */
  readonly name: string;
  /** Which API invokes it, and on which routes (HTTP route keys or WebSocket route keys). */
  readonly api: 'http' | 'websocket';
  readonly routes: readonly string[];
  /** Memory in MB: Lambda gives CPU in proportion (1,769 MB = one vCPU). */
  readonly memoryMb: number;
  /** Timeout in seconds. */
  readonly timeoutSeconds: number;
  /** Table (logical name of tables.json) -> the DynamoDB actions the function may call on it. */
  readonly tables: Readonly<Record<string, readonly DynamoAction[]>>;
  /** Management API methods on the WebSocket stage's @connections (empty: none). */
  readonly connections: readonly ConnectionMethod[];
  /** Bucket (logical name of tables.json) -> object grants under a prefix (absent: none). */
  readonly objects?: Readonly<Record<string, ObjectGrant>>;
}

// Memory: a cipherpost function is a ~5-10 MB static Rust binary using ~20-30 MB of RAM; its
// work is a few DynamoDB round trips plus one Ed25519 signature check (~50 us). 256 MB is the
// smallest size whose CPU share keeps the cold start (TLS handshakes, SDK set-up) and the
// signature checks short; more memory buys little for I/O-bound work and costs linearly.
// ws-disconnect does two DynamoDB calls and nothing that needs CPU: 128 MB.
//
// Timeouts: HTTP API waits at most 30 s for an integration, a WebSocket API 29 s. A normal request
// takes tens of milliseconds; 10 s covers the SDK's retries (3 attempts with backoff) of a slow
// DynamoDB call and fails a stuck invocation well before the client gives up (sends are
// idempotent, so the client's retry is safe). register gets 29 s: a revocation purges the revoked
// device's whole queue (Query + BatchWriteItem in 25s) after it is committed.
const DEFAULT_MEMORY_MB = 256;
const DEFAULT_TIMEOUT_S = 10;

export const FUNCTIONS: readonly FunctionSpec[] = [
  {
    name: 'register',
    api: 'http',
    routes: [
      'PUT /v1/accounts/{user}',
      'POST /v1/accounts/{user}/devices',
      'DELETE /v1/accounts/{user}/devices/{device}',
    ],
    memoryMb: DEFAULT_MEMORY_MB,
    timeoutSeconds: 29,
    tables: {
      // create_account (Put), link: get_account + add_device (Update), revoke: get_account + revoke_device (Update)
      accounts: ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem'],
      // authenticate (Get), list_devices (Query), create/add (Put), revoke_device + drop_connection (Update)
      devices: ['dynamodb:GetItem', 'dynamodb:Query', 'dynamodb:PutItem', 'dynamodb:UpdateItem'],
      // the first prekeys ride in the transaction (Put), the rest by put_prekeys; revoke purges them
      prekeys: ['dynamodb:PutItem', 'dynamodb:BatchWriteItem', 'dynamodb:Query'],
      // revoke purges the revoked device's queue
      queue: ['dynamodb:Query', 'dynamodb:BatchWriteItem'],
      // accept_once on link and revoke
      replay: ['dynamodb:PutItem'],
      // rate_limit on links
      limits: ['dynamodb:UpdateItem'],
      // revoke drops the revoked device's connection
      connections: ['dynamodb:DeleteItem'],
    },
    // revoke closes the revoked device's WebSocket
    connections: ['DELETE'],
  },
  {
    name: 'keys',
    api: 'http',
    routes: ['PUT /v1/keys', 'GET /v1/keys/{user}', 'GET /v1/keys'],
    memoryMb: DEFAULT_MEMORY_MB,
    timeoutSeconds: DEFAULT_TIMEOUT_S,
    tables: {
      // bundle: get_account
      accounts: ['dynamodb:GetItem'],
      // authenticate (Get), bundle: list_devices (Query), reserve_prekey_ids / set_signed_prekey /
      // drop_connection of a gone socket (Update)
      devices: ['dynamodb:GetItem', 'dynamodb:Query', 'dynamodb:UpdateItem'],
      // count_prekeys + take_prekey (Query), take_prekey (Delete), put_prekeys (BatchWrite)
      prekeys: ['dynamodb:Query', 'dynamodb:DeleteItem', 'dynamodb:BatchWriteItem'],
      // accept_once on upload
      replay: ['dynamodb:PutItem'],
      // rate_limit on bundle fetches
      limits: ['dynamodb:UpdateItem'],
      // drop_connection when the prekeys_low push finds the socket gone
      connections: ['dynamodb:DeleteItem'],
    },
    // pushes prekeys_low to a device that runs low
    connections: ['POST'],
  },
  {
    name: 'send',
    api: 'http',
    routes: ['PUT /v1/messages'],
    memoryMb: DEFAULT_MEMORY_MB,
    timeoutSeconds: DEFAULT_TIMEOUT_S,
    tables: {
      // authenticate (Get), list_devices of recipient and sender / active_devices of the group's
      // members (Query), drop_connection (Update)
      devices: ['dynamodb:GetItem', 'dynamodb:Query', 'dynamodb:UpdateItem'],
      // enqueue's transaction and begin/complete_group_send (Put), get_send(_record) for retries (Get)
      sends: ['dynamodb:GetItem', 'dynamodb:PutItem'],
      // enqueue's transaction (Put), a group message's enqueue_fan_out (BatchWrite)
      queue: ['dynamodb:PutItem', 'dynamodb:BatchWriteItem'],
      // drop_connection of a gone socket
      connections: ['dynamodb:DeleteItem'],
      // a group send reads the group (get_group) to check membership and version
      groups: ['dynamodb:GetItem'],
      // rate_limit on sends
      limits: ['dynamodb:UpdateItem'],
    },
    // pushes envelopes and ephemeral messages
    connections: ['POST'],
  },
  {
    name: 'groups',
    api: 'http',
    routes: [
      'POST /v1/groups',
      'GET /v1/groups/{group}',
      'POST /v1/groups/{group}/members',
      'DELETE /v1/groups/{group}/members/{user}',
      'PUT /v1/groups/{group}/admins/{user}',
      'DELETE /v1/groups/{group}/admins/{user}',
      'POST /v1/groups/{group}/leave',
    ],
    memoryMb: DEFAULT_MEMORY_MB,
    timeoutSeconds: DEFAULT_TIMEOUT_S,
    tables: {
      // get_group (Get), create_group / update_group (Put, conditional), delete_group when the
      // last member leaves (Delete)
      groups: ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:DeleteItem'],
      // missing_accounts: do the members to add exist
      accounts: ['dynamodb:BatchGetItem'],
      // authenticate (Get), active_devices of every member for the answer (Query)
      devices: ['dynamodb:GetItem', 'dynamodb:Query'],
      // accept_once on every change
      replay: ['dynamodb:PutItem'],
    },
    connections: [],
  },
  {
    name: 'sync',
    api: 'http',
    routes: ['GET /v1/messages', 'POST /v1/messages/ack'],
    memoryMb: DEFAULT_MEMORY_MB,
    timeoutSeconds: DEFAULT_TIMEOUT_S,
    tables: {
      // authenticate
      devices: ['dynamodb:GetItem'],
      // queue_page (Query), ack (BatchWrite deletes, within the caller's own partition)
      queue: ['dynamodb:Query', 'dynamodb:BatchWriteItem'],
    },
    connections: [],
  },
  {
    name: 'ws-connect',
    api: 'websocket',
    routes: ['$connect'],
    memoryMb: DEFAULT_MEMORY_MB,
    timeoutSeconds: DEFAULT_TIMEOUT_S,
    tables: {
      // get_device (Get), set_connection + drop_connection of the replaced socket (Update)
      devices: ['dynamodb:GetItem', 'dynamodb:UpdateItem'],
      // remember_once of the connect nonce
      replay: ['dynamodb:PutItem'],
      // set_connection (Put), drop_connection of the replaced socket (Delete)
      connections: ['dynamodb:PutItem', 'dynamodb:DeleteItem'],
    },
    // closes the connection the new one replaces
    connections: ['DELETE'],
  },
  {
    name: 'ws-disconnect',
    api: 'websocket',
    routes: ['$disconnect'],
    memoryMb: 128,
    timeoutSeconds: DEFAULT_TIMEOUT_S,
    tables: {
      // get_connection (Get), drop_connection (Delete)
      connections: ['dynamodb:GetItem', 'dynamodb:DeleteItem'],
      // drop_connection clears the device's pointer
      devices: ['dynamodb:UpdateItem'],
    },
    connections: [],
  },
  {
    name: 'attachments',
    api: 'http',
    routes: ['POST /v1/attachments', 'GET /v1/attachments/{id}'],
    memoryMb: DEFAULT_MEMORY_MB,
    timeoutSeconds: DEFAULT_TIMEOUT_S,
    tables: {
      // authenticate
      devices: ['dynamodb:GetItem'],
      // rate_limit on uploads
      limits: ['dynamodb:UpdateItem'],
    },
    connections: [],
    objects: {
      // presigned PUT (create), HeadObject + presigned GET (get); the function never reads or
      // writes an object's bytes itself
      attachments: { prefix: 'attachments/', actions: ['s3:PutObject', 's3:GetObject'] },
    },
  },
  // The stack, its outputs and the tests pick up every entry of this list; the tests fail until
  // each crate under functions/ has an entry.
];
