//! The DynamoDB store: every read and write the service layer makes, through `aws-sdk-dynamodb`.
//! Multi-item changes that must happen together are single `TransactWriteItems` calls.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use aws_sdk_dynamodb::{
    error::SdkError,
    operation::transact_write_items::TransactWriteItemsError,
    primitives::Blob,
    types::{
        AttributeValue, DeleteRequest, KeysAndAttributes, Put, PutRequest, ReturnValue, Select,
        TransactWriteItem, Update, WriteRequest,
    },
    Client,
};
use futures::{stream, StreamExt, TryStreamExt};
use rand_core::{OsRng, RngCore};

use crate::config::Tables;

type Item = HashMap<String, AttributeValue>;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A condition of a conditional write failed; `Vec` holds, per item of a transaction, whether
    /// its condition failed.
    #[error("a conditional write was refused")]
    Conditional(Vec<bool>),
    /// DynamoDB could not be reached or answered an error (after the SDK's retries).
    #[error("DynamoDB request failed: {0}")]
    Dynamo(String),
    /// A stored item lacks an attribute or holds the wrong type.
    #[error("stored item is malformed: {0}")]
    Corrupt(&'static str),
}

fn dynamo<E: std::fmt::Debug>(e: E) -> StoreError {
    StoreError::Dynamo(format!("{e:?}"))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn b(v: impl Into<Vec<u8>>) -> AttributeValue {
    AttributeValue::B(Blob::new(v))
}

fn get_s(item: &Item, k: &'static str) -> Result<String, StoreError> {
    item.get(k)
        .and_then(|v| v.as_s().ok())
        .cloned()
        .ok_or(StoreError::Corrupt(k))
}

fn get_n<T: std::str::FromStr>(item: &Item, k: &'static str) -> Result<T, StoreError> {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .ok_or(StoreError::Corrupt(k))
}

fn get_b(item: &Item, k: &'static str) -> Result<Vec<u8>, StoreError> {
    item.get(k)
        .and_then(|v| v.as_b().ok())
        .map(|b| b.as_ref().to_vec())
        .ok_or(StoreError::Corrupt(k))
}

fn get_arr<const N: usize>(item: &Item, k: &'static str) -> Result<[u8; N], StoreError> {
    get_b(item, k)?
        .try_into()
        .map_err(|_| StoreError::Corrupt(k))
}

fn get_list_b(item: &Item, k: &'static str) -> Result<Vec<Vec<u8>>, StoreError> {
    match item.get(k) {
        None => Ok(Vec::new()),
        Some(v) => v
            .as_l()
            .map_err(|_| StoreError::Corrupt(k))?
            .iter()
            .map(|x| {
                x.as_b()
                    .map(|b| b.as_ref().to_vec())
                    .map_err(|_| StoreError::Corrupt(k))
            })
            .collect(),
    }
}

/// The partition key of a device's prekeys and queue: `user#device`.
pub fn device_key(user: &str, device_id: u32) -> String {
    format!("{user}#{device_id}")
}

/// An account.
#[derive(Debug, Clone)]
pub struct AccountRecord {
    /// The user id.
    pub user: String,
    /// The account key in force.
    pub account_key: [u8; 32],
    /// Every rotation, oldest first (`rotate_msg || signature`).
    pub rotations: Vec<Vec<u8>>,
    /// Every revocation (`revoke_msg || signature`).
    pub revocations: Vec<Vec<u8>>,
    /// Active devices.
    pub device_count: u32,
}

/// A device, active or revoked.
#[derive(Debug, Clone)]
pub struct DeviceRecord {
    /// The user id.
    pub user: String,
    /// The device id.
    pub device_id: u32,
    /// `cert_msg || signature` under the account key in force.
    pub certificate: Vec<u8>,
    /// `IKs.pub`, which verifies the device's requests.
    pub signing_key: [u8; 32],
    /// The signed prekey id.
    pub spk_id: u32,
    /// `SPK.pub`.
    pub spk_key: [u8; 32],
    /// The signed prekey's signature.
    pub spk_sig: Vec<u8>,
    /// The highest one-time prekey id ever stored.
    pub max_opk_id: u32,
    /// False once revoked (a revoked id is never registered again).
    pub active: bool,
    /// The device's open WebSocket connection, if any.
    pub connection_id: Option<String>,
}

impl DeviceRecord {
    fn to_item(&self) -> Item {
        HashMap::from([
            ("user".into(), s(&self.user)),
            ("device".into(), n(self.device_id)),
            ("certificate".into(), b(self.certificate.clone())),
            ("signing_key".into(), b(self.signing_key.to_vec())),
            ("spk_id".into(), n(self.spk_id)),
            ("spk_key".into(), b(self.spk_key.to_vec())),
            ("spk_sig".into(), b(self.spk_sig.clone())),
            ("max_opk_id".into(), n(self.max_opk_id)),
            (
                "status".into(),
                s(if self.active { "active" } else { "revoked" }),
            ),
        ])
    }

    fn from_item(item: &Item) -> Result<Self, StoreError> {
        Ok(Self {
            user: get_s(item, "user")?,
            device_id: get_n(item, "device")?,
            certificate: get_b(item, "certificate")?,
            signing_key: get_arr(item, "signing_key")?,
            spk_id: get_n(item, "spk_id")?,
            spk_key: get_arr(item, "spk_key")?,
            spk_sig: get_b(item, "spk_sig")?,
            max_opk_id: get_n(item, "max_opk_id")?,
            active: get_s(item, "status")? == "active",
            connection_id: item
                .get("connection_id")
                .and_then(|v| v.as_s().ok())
                .cloned(),
        })
    }
}

/// A queued envelope.
#[derive(Debug, Clone)]
pub struct QueueItem {
    /// The destination device's `user#device`.
    pub device_key: String,
    /// The sort key: `server_ts (13 digits):message_id hex:sender user:sender device`.
    pub sort: String,
    /// The sender's message id.
    pub message_id: Vec<u8>,
    /// The sending account.
    pub sender_user: String,
    /// The sending device.
    pub sender_device: u32,
    /// The encrypted body.
    pub body: Vec<u8>,
    /// This device's key envelope (empty for a group message).
    pub key: Vec<u8>,
    /// Accepted at (Unix ms).
    pub server_ts: u64,
    /// Expires at (Unix seconds).
    pub ttl: u64,
    /// The group id of a group message.
    pub group: Option<Vec<u8>>,
}

impl QueueItem {
    fn to_item(&self) -> Item {
        let mut item = HashMap::from([
            ("device_key".into(), s(&self.device_key)),
            ("sort".into(), s(&self.sort)),
            ("message_id".into(), b(self.message_id.clone())),
            ("sender_user".into(), s(&self.sender_user)),
            ("sender_device".into(), n(self.sender_device)),
            ("body".into(), b(self.body.clone())),
            ("server_ts".into(), n(self.server_ts)),
            ("ttl".into(), n(self.ttl)),
        ]);
        // A group message has no key envelope: the attribute is left out rather than stored
        // empty.
        if !self.key.is_empty() {
            item.insert("key".into(), b(self.key.clone()));
        }
        if let Some(g) = &self.group {
            item.insert("group_id".into(), b(g.clone()));
        }
        item
    }

    fn from_item(item: &Item) -> Result<Self, StoreError> {
        Ok(Self {
            device_key: get_s(item, "device_key")?,
            sort: get_s(item, "sort")?,
            message_id: get_b(item, "message_id")?,
            sender_user: get_s(item, "sender_user")?,
            sender_device: get_n(item, "sender_device")?,
            body: get_b(item, "body")?,
            key: match item.get("key") {
                None => Vec::new(),
                Some(_) => get_b(item, "key")?,
            },
            server_ts: get_n(item, "server_ts")?,
            ttl: get_n(item, "ttl")?,
            group: match item.get("group_id") {
                None => None,
                Some(_) => Some(get_b(item, "group_id")?),
            },
        })
    }
}

/// A group: its members (user -> admin?) and version. Stored as one item keyed by `group_id`
/// (unpadded base64url of the 16-byte id) with `version` N, `members` M (user -> "admin" |
/// "member"), `creator` S and `created_at` N.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// Unpadded base64url of the 16-byte group id.
    pub group_id: String,
    /// Increases by one with every change.
    pub version: u64,
    /// Members, by user: `true` for admins.
    pub members: BTreeMap<String, bool>,
    /// The account that created the group.
    pub creator: String,
    /// When it was created (Unix ms).
    pub created_at: u64,
}

impl GroupRecord {
    fn to_item(&self) -> Item {
        let members = self
            .members
            .iter()
            .map(|(u, admin)| (u.clone(), s(if *admin { "admin" } else { "member" })))
            .collect();
        HashMap::from([
            ("group_id".into(), s(&self.group_id)),
            ("version".into(), n(self.version)),
            ("members".into(), AttributeValue::M(members)),
            ("creator".into(), s(&self.creator)),
            ("created_at".into(), n(self.created_at)),
        ])
    }

    fn from_item(item: &Item) -> Result<Self, StoreError> {
        let members = item
            .get("members")
            .and_then(|v| v.as_m().ok())
            .ok_or(StoreError::Corrupt("members"))?
            .iter()
            .map(|(u, role)| match role.as_s().map(String::as_str) {
                Ok("admin") => Ok((u.clone(), true)),
                Ok("member") => Ok((u.clone(), false)),
                _ => Err(StoreError::Corrupt("members")),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            group_id: get_s(item, "group_id")?,
            version: get_n(item, "version")?,
            members,
            creator: get_s(item, "creator")?,
            created_at: get_n(item, "created_at")?,
        })
    }
}

/// An active device as a fan-out needs it: its address and open connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveDevice {
    /// The account.
    pub user: String,
    /// The device id.
    pub device_id: u32,
    /// The device's open WebSocket connection, if any.
    pub connection_id: Option<String>,
}

/// The idempotency record of a group send, written before its queue items: the server time
/// (and so every queue key) a retry must reuse, and whether every item was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendRecord {
    /// Accepted at (Unix ms).
    pub server_ts: u64,
    /// Devices it was queued for.
    pub queued: usize,
    /// False while a group send's queue items may not all be written yet.
    pub complete: bool,
}

/// Queue writes in flight at once during a fan-out (BatchWriteItem calls of 25).
const FAN_OUT_CONCURRENCY: usize = 8;
/// Device queries in flight at once when reading a group's devices.
const DEVICE_READ_CONCURRENCY: usize = 16;
/// Keys per BatchGetItem call (DynamoDB's limit).
const BATCH_GET_KEYS: usize = 100;

/// A connection record (for `$disconnect`, which knows only the connection id).
#[derive(Debug, Clone)]
pub struct ConnectionRecord {
    /// The account.
    pub user: String,
    /// The device.
    pub device_id: u32,
}

/// Most items in one DynamoDB transaction.
const MAX_TRANSACTION_ITEMS: usize = 100;

/// The DynamoDB store.
#[derive(Clone, Debug)]
pub struct Store {
    client: Client,
    tables: Tables,
}

fn put(table: &str, item: Item, condition: Option<&str>) -> Result<TransactWriteItem, StoreError> {
    let p = Put::builder().table_name(table).set_item(Some(item));
    let p = match condition {
        Some(c) => p.condition_expression(c),
        None => p,
    };
    Ok(TransactWriteItem::builder()
        .put(p.build().map_err(dynamo)?)
        .build())
}

fn cancellation(e: SdkError<TransactWriteItemsError>) -> StoreError {
    match e.into_service_error() {
        TransactWriteItemsError::TransactionCanceledException(c) => {
            let reasons: Vec<bool> = c
                .cancellation_reasons()
                .iter()
                .map(|r| r.code() == Some("ConditionalCheckFailed"))
                .collect();
            if reasons.iter().any(|x| *x) {
                StoreError::Conditional(reasons)
            } else {
                StoreError::Dynamo(format!("transaction cancelled: {c:?}"))
            }
        }
        other => dynamo(other),
    }
}

impl Store {
    /// A store over `client` with these table names.
    pub fn new(client: Client, tables: Tables) -> Self {
        Self { client, tables }
    }

    /// The table names.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<(), StoreError> {
        self.client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
            .map_err(cancellation)?;
        Ok(())
    }

    fn prekey_puts(
        &self,
        user: &str,
        device_id: u32,
        prekeys: &[(u32, [u8; 32])],
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let dk = device_key(user, device_id);
        prekeys
            .iter()
            .map(|(id, key)| {
                let item = HashMap::from([
                    ("device_key".into(), s(&dk)),
                    ("opk_id".into(), n(id)),
                    ("key".into(), b(key.to_vec())),
                ]);
                put(&self.tables.prekeys, item, None)
            })
            .collect()
    }

    /// Creates an account with its first device and its first one-time prekeys in one
    /// transaction (at most 98 prekeys ride in it; any beyond follow in batches).
    /// `Conditional` means the user id is taken.
    pub async fn create_account(
        &self,
        account_key: &[u8; 32],
        device: &DeviceRecord,
        prekeys: &[(u32, [u8; 32])],
    ) -> Result<(), StoreError> {
        let account = HashMap::from([
            ("user".into(), s(&device.user)),
            ("account_key".into(), b(account_key.to_vec())),
            ("device_count".into(), n(1)),
            ("rotations".into(), AttributeValue::L(vec![])),
            ("revocations".into(), AttributeValue::L(vec![])),
        ]);
        let split = prekeys.len().min(MAX_TRANSACTION_ITEMS - 2);
        let mut items = vec![
            put(
                &self.tables.accounts,
                account,
                Some("attribute_not_exists(#u)"),
            )
            .map(|mut t| {
                if let Some(p) = t.put.as_mut() {
                    p.expression_attribute_names =
                        Some(HashMap::from([("#u".into(), "user".into())]));
                }
                t
            })?,
            put(&self.tables.devices, device.to_item(), None)?,
        ];
        items.extend(self.prekey_puts(&device.user, device.device_id, &prekeys[..split])?);
        self.transact(items).await?;
        self.put_prekeys(&device.user, device.device_id, &prekeys[split..])
            .await
    }

    /// Adds a device to an account whose key is still `account_key`, within the device limit.
    /// `Conditional([account, device, ..])` says which condition failed.
    pub async fn add_device(
        &self,
        account_key: &[u8; 32],
        max_devices: u32,
        device: &DeviceRecord,
        prekeys: &[(u32, [u8; 32])],
    ) -> Result<(), StoreError> {
        let update = Update::builder()
            .table_name(&self.tables.accounts)
            .key("user", s(&device.user))
            .update_expression("SET device_count = device_count + :one")
            .condition_expression("account_key = :ak AND device_count < :max")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":ak", b(account_key.to_vec()))
            .expression_attribute_values(":max", n(max_devices))
            .build()
            .map_err(dynamo)?;
        let split = prekeys.len().min(MAX_TRANSACTION_ITEMS - 2);
        let mut items = vec![
            TransactWriteItem::builder().update(update).build(),
            put(
                &self.tables.devices,
                device.to_item(),
                Some("attribute_not_exists(device)"),
            )?,
        ];
        items.extend(self.prekey_puts(&device.user, device.device_id, &prekeys[..split])?);
        self.transact(items).await?;
        self.put_prekeys(&device.user, device.device_id, &prekeys[split..])
            .await
    }

    /// Revokes a device and rotates the account key in one transaction: the account gets the
    /// new key, the rotation and the revocation; the device is marked revoked and loses its
    /// connection; every remaining device gets its fresh certificate.
    #[allow(clippy::too_many_arguments)]
    pub async fn revoke_device(
        &self,
        user: &str,
        old_key: &[u8; 32],
        new_key: &[u8; 32],
        rotation: &[u8],
        revocation: &[u8],
        revoked: u32,
        connection: Option<&str>,
        certificates: &[(u32, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let account = Update::builder()
            .table_name(&self.tables.accounts)
            .key("user", s(user))
            .update_expression(
                "SET account_key = :new, rotations = list_append(rotations, :rot), \
                 revocations = list_append(revocations, :rev), device_count = device_count - :one",
            )
            .condition_expression("account_key = :old")
            .expression_attribute_values(":new", b(new_key.to_vec()))
            .expression_attribute_values(":old", b(old_key.to_vec()))
            .expression_attribute_values(":rot", AttributeValue::L(vec![b(rotation.to_vec())]))
            .expression_attribute_values(":rev", AttributeValue::L(vec![b(revocation.to_vec())]))
            .expression_attribute_values(":one", n(1))
            .build()
            .map_err(dynamo)?;
        // The connection removed is the one the caller will close: a connection recorded since
        // the caller read the device fails the condition (read again and retry).
        let device = Update::builder()
            .table_name(&self.tables.devices)
            .key("user", s(user))
            .key("device", n(revoked))
            .update_expression("SET #st = :revoked REMOVE connection_id")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":revoked", s("revoked"))
            .expression_attribute_values(":active", s("active"));
        let device = match connection {
            Some(c) => device
                .condition_expression("#st = :active AND connection_id = :conn")
                .expression_attribute_values(":conn", s(c)),
            None => {
                device.condition_expression("#st = :active AND attribute_not_exists(connection_id)")
            }
        }
        .build()
        .map_err(dynamo)?;
        let mut items = vec![
            TransactWriteItem::builder().update(account).build(),
            TransactWriteItem::builder().update(device).build(),
        ];
        for (id, cert) in certificates {
            let u = Update::builder()
                .table_name(&self.tables.devices)
                .key("user", s(user))
                .key("device", n(id))
                .update_expression("SET certificate = :c")
                .condition_expression("#st = :active")
                .expression_attribute_names("#st", "status")
                .expression_attribute_values(":c", b(cert.clone()))
                .expression_attribute_values(":active", s("active"))
                .build()
                .map_err(dynamo)?;
            items.push(TransactWriteItem::builder().update(u).build());
        }
        self.transact(items).await
    }

    /// The account, read consistently.
    pub async fn get_account(&self, user: &str) -> Result<Option<AccountRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.accounts)
            .key("user", s(user))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo)?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        Ok(Some(AccountRecord {
            user: get_s(&item, "user")?,
            account_key: get_arr(&item, "account_key")?,
            rotations: get_list_b(&item, "rotations")?,
            revocations: get_list_b(&item, "revocations")?,
            device_count: get_n(&item, "device_count")?,
        }))
    }

    /// One device, read consistently.
    pub async fn get_device(
        &self,
        user: &str,
        device_id: u32,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.devices)
            .key("user", s(user))
            .key("device", n(device_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo)?;
        out.item.as_ref().map(DeviceRecord::from_item).transpose()
    }

    /// Every device of an account, active and revoked.
    pub async fn list_devices(&self, user: &str) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.tables.devices)
            .key_condition_expression("#u = :u")
            .expression_attribute_names("#u", "user")
            .expression_attribute_values(":u", s(user))
            .consistent_read(true)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for item in page.map_err(dynamo)?.items() {
                out.push(DeviceRecord::from_item(item)?);
            }
        }
        Ok(out)
    }

    /// Replaces the device's signed prekey.
    pub async fn set_signed_prekey(
        &self,
        user: &str,
        device_id: u32,
        id: u32,
        key: &[u8; 32],
        sig: &[u8],
    ) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.tables.devices)
            .key("user", s(user))
            .key("device", n(device_id))
            .update_expression("SET spk_id = :i, spk_key = :k, spk_sig = :s")
            .condition_expression("#st = :active")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":i", n(id))
            .expression_attribute_values(":k", b(key.to_vec()))
            .expression_attribute_values(":s", b(sig.to_vec()))
            .expression_attribute_values(":active", s("active"))
            .send()
            .await
            .map_err(conditional_or)?;
        Ok(())
    }

    /// Raises the device's highest one-time prekey id to `last`, only if every stored id is
    /// below `first`. `Conditional` when an id is not above the stored ones.
    pub async fn reserve_prekey_ids(
        &self,
        user: &str,
        device_id: u32,
        first: u32,
        last: u32,
    ) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.tables.devices)
            .key("user", s(user))
            .key("device", n(device_id))
            .update_expression("SET max_opk_id = :last")
            .condition_expression("max_opk_id < :first AND #st = :active")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":first", n(first))
            .expression_attribute_values(":last", n(last))
            .expression_attribute_values(":active", s("active"))
            .send()
            .await
            .map_err(conditional_or)?;
        Ok(())
    }

    /// Counts one hit on the rate-limit counter `key` (one fixed window; the item expires by
    /// TTL at `expires_at` seconds) and returns the count including this hit: one UpdateItem.
    pub async fn count_hit(&self, key: &str, expires_at: u64) -> Result<u64, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.tables.limits)
            .key("limit_key", s(key))
            .update_expression("ADD hits :one SET #ttl = if_not_exists(#ttl, :ttl)")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":ttl", n(expires_at))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(dynamo)?;
        let attrs = out.attributes.unwrap_or_default();
        get_n(&attrs, "hits")
    }

    /// Stores one-time prekeys (batches of 25, unprocessed items retried).
    pub async fn put_prekeys(
        &self,
        user: &str,
        device_id: u32,
        prekeys: &[(u32, [u8; 32])],
    ) -> Result<(), StoreError> {
        let dk = device_key(user, device_id);
        let writes: Vec<WriteRequest> = prekeys
            .iter()
            .map(|(id, key)| {
                let item = HashMap::from([
                    ("device_key".into(), s(&dk)),
                    ("opk_id".into(), n(id)),
                    ("key".into(), b(key.to_vec())),
                ]);
                Ok(WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item))
                            .build()
                            .map_err(dynamo)?,
                    )
                    .build())
            })
            .collect::<Result<_, StoreError>>()?;
        self.batch_write(&self.tables.prekeys, writes).await
    }

    async fn batch_write(&self, table: &str, writes: Vec<WriteRequest>) -> Result<(), StoreError> {
        for chunk in writes.chunks(25) {
            self.batch_write_chunk(table, chunk.to_vec()).await?;
        }
        Ok(())
    }

    /// One BatchWriteItem of at most 25 writes, its unprocessed items retried with backoff.
    async fn batch_write_chunk(
        &self,
        table: &str,
        mut pending: Vec<WriteRequest>,
    ) -> Result<(), StoreError> {
        let mut attempt = 0u32;
        while !pending.is_empty() {
            let out = self
                .client
                .batch_write_item()
                .request_items(table, pending)
                .send()
                .await
                .map_err(dynamo)?;
            pending = out
                .unprocessed_items
                .and_then(|mut m| m.remove(table))
                .unwrap_or_default();
            if !pending.is_empty() {
                attempt += 1;
                if attempt > 8 {
                    return Err(StoreError::Dynamo(
                        "batch write kept being throttled".into(),
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(25 << attempt.min(6))).await;
            }
        }
        Ok(())
    }

    /// Hands out one one-time prekey of the device, atomically: each is deleted by exactly one
    /// caller (a conditional delete), so none is ever handed out twice.
    pub async fn take_prekey(
        &self,
        user: &str,
        device_id: u32,
    ) -> Result<Option<(u32, [u8; 32])>, StoreError> {
        let dk = device_key(user, device_id);
        for _round in 0..20 {
            let out = self
                .client
                .query()
                .table_name(&self.tables.prekeys)
                .key_condition_expression("device_key = :d")
                .expression_attribute_values(":d", s(&dk))
                .consistent_read(true)
                .limit(10)
                .send()
                .await
                .map_err(dynamo)?;
            let mut ids: Vec<u32> = out
                .items()
                .iter()
                .filter_map(|i| get_n(i, "opk_id").ok())
                .collect();
            if ids.is_empty() {
                return Ok(None);
            }
            // Concurrent callers start at different candidates so fewer of them collide.
            let start = (OsRng.next_u32() as usize) % ids.len();
            ids.rotate_left(start);
            for id in ids {
                let res = self
                    .client
                    .delete_item()
                    .table_name(&self.tables.prekeys)
                    .key("device_key", s(&dk))
                    .key("opk_id", n(id))
                    .condition_expression("attribute_exists(opk_id)")
                    .return_values(ReturnValue::AllOld)
                    .send()
                    .await;
                match res {
                    Ok(o) => {
                        let item = o.attributes.ok_or(StoreError::Corrupt("prekey"))?;
                        return Ok(Some((id, get_arr(&item, "key")?)));
                    }
                    Err(e) if is_conditional(&e) => continue,
                    Err(e) => return Err(dynamo(e)),
                }
            }
        }
        Err(StoreError::Dynamo(
            "could not take a one-time prekey after 20 rounds".into(),
        ))
    }

    /// The number of one-time prekeys the device has left.
    pub async fn count_prekeys(&self, user: &str, device_id: u32) -> Result<u64, StoreError> {
        let dk = device_key(user, device_id);
        let mut total = 0u64;
        let mut pages = self
            .client
            .query()
            .table_name(&self.tables.prekeys)
            .key_condition_expression("device_key = :d")
            .expression_attribute_values(":d", s(&dk))
            .select(Select::Count)
            .consistent_read(true)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            total += page.map_err(dynamo)?.count() as u64;
        }
        Ok(total)
    }

    /// Deletes every item under a partition of the prekeys or queue table.
    pub async fn purge_partition(&self, queue: bool, device_key: &str) -> Result<(), StoreError> {
        let (table, sk) = if queue {
            (&self.tables.queue, "sort")
        } else {
            (&self.tables.prekeys, "opk_id")
        };
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(table)
            .key_condition_expression("device_key = :d")
            .expression_attribute_values(":d", s(device_key))
            .projection_expression("device_key, #sk")
            .expression_attribute_names("#sk", sk)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for item in page.map_err(dynamo)?.items() {
                let mut k = item.clone();
                k.retain(|name, _| name == "device_key" || name == sk);
                keys.push(
                    WriteRequest::builder()
                        .delete_request(
                            DeleteRequest::builder()
                                .set_key(Some(k))
                                .build()
                                .map_err(dynamo)?,
                        )
                        .build(),
                );
            }
        }
        self.batch_write(table, keys).await
    }

    /// Queues envelopes and records the send for idempotency, in one transaction.
    /// `Conditional` with the first flag set means this (sender device, message id) was sent
    /// before and nothing was stored now.
    pub async fn enqueue(
        &self,
        send_key: &str,
        server_ts: u64,
        ttl: u64,
        envelopes: &[QueueItem],
    ) -> Result<(), StoreError> {
        let record = HashMap::from([
            ("send_key".into(), s(send_key)),
            ("server_ts".into(), n(server_ts)),
            ("queued".into(), n(envelopes.len())),
            ("ttl".into(), n(ttl)),
        ]);
        let mut items = vec![put(
            &self.tables.sends,
            record,
            Some("attribute_not_exists(send_key)"),
        )?];
        for e in envelopes {
            items.push(put(&self.tables.queue, e.to_item(), None)?);
        }
        self.transact(items).await
    }

    /// A recorded send: `(server_ts, queued)`.
    pub async fn get_send(&self, send_key: &str) -> Result<Option<(u64, usize)>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.sends)
            .key("send_key", s(send_key))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo)?;
        out.item
            .map(|i| Ok((get_n(&i, "server_ts")?, get_n(&i, "queued")?)))
            .transpose()
    }

    /// One page of a device's queue after `cursor`, skipping expired items.
    pub async fn queue_page(
        &self,
        device_key: &str,
        cursor: Option<&str>,
        limit: usize,
        now_secs: u64,
    ) -> Result<(Vec<QueueItem>, Option<String>), StoreError> {
        let mut q = self
            .client
            .query()
            .table_name(&self.tables.queue)
            .key_condition_expression("device_key = :d")
            .filter_expression("#ttl > :now")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":d", s(device_key))
            .expression_attribute_values(":now", n(now_secs))
            .consistent_read(true)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX));
        if let Some(c) = cursor {
            q = q
                .exclusive_start_key("device_key", s(device_key))
                .exclusive_start_key("sort", s(c));
        }
        let out = q.send().await.map_err(dynamo)?;
        let items = out
            .items()
            .iter()
            .map(QueueItem::from_item)
            .collect::<Result<Vec<_>, _>>()?;
        let next = out
            .last_evaluated_key
            .as_ref()
            .and_then(|k| k.get("sort"))
            .and_then(|v| v.as_s().ok())
            .cloned();
        Ok((items, next))
    }

    /// Deletes acknowledged envelopes from one device's queue.
    pub async fn ack(&self, device_key: &str, sorts: &[String]) -> Result<(), StoreError> {
        let writes = sorts
            .iter()
            .map(|sort| {
                let k = HashMap::from([
                    ("device_key".into(), s(device_key)),
                    ("sort".into(), s(sort)),
                ]);
                Ok(WriteRequest::builder()
                    .delete_request(
                        DeleteRequest::builder()
                            .set_key(Some(k))
                            .build()
                            .map_err(dynamo)?,
                    )
                    .build())
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.batch_write(&self.tables.queue, writes).await
    }

    /// Records the device's connection, returning the one it replaces. `Conditional` when the
    /// device is not active.
    pub async fn set_connection(
        &self,
        user: &str,
        device_id: u32,
        connection_id: &str,
        ttl: u64,
    ) -> Result<Option<String>, StoreError> {
        let conn = HashMap::from([
            ("connection_id".into(), s(connection_id)),
            ("user".into(), s(user)),
            ("device".into(), n(device_id)),
            ("ttl".into(), n(ttl)),
        ]);
        self.client
            .put_item()
            .table_name(&self.tables.connections)
            .set_item(Some(conn))
            .send()
            .await
            .map_err(dynamo)?;
        let out = self
            .client
            .update_item()
            .table_name(&self.tables.devices)
            .key("user", s(user))
            .key("device", n(device_id))
            .update_expression("SET connection_id = :c")
            .condition_expression("#st = :active")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":c", s(connection_id))
            .expression_attribute_values(":active", s("active"))
            .return_values(ReturnValue::UpdatedOld)
            .send()
            .await
            .map_err(conditional_or)?;
        Ok(out
            .attributes
            .and_then(|a| a.get("connection_id").and_then(|v| v.as_s().ok()).cloned())
            .filter(|old| old != connection_id))
    }

    /// The connection record.
    pub async fn get_connection(
        &self,
        connection_id: &str,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.connections)
            .key("connection_id", s(connection_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo)?;
        out.item
            .map(|i| {
                Ok(ConnectionRecord {
                    user: get_s(&i, "user")?,
                    device_id: get_n(&i, "device")?,
                })
            })
            .transpose()
    }

    /// Forgets a connection: its record, and the device's pointer to it if still current.
    pub async fn drop_connection(
        &self,
        user: &str,
        device_id: u32,
        connection_id: &str,
    ) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.tables.devices)
            .key("user", s(user))
            .key("device", n(device_id))
            .update_expression("REMOVE connection_id")
            .condition_expression("connection_id = :c")
            .expression_attribute_values(":c", s(connection_id))
            .send()
            .await;
        match res {
            Ok(_) => {}
            Err(e) if is_conditional(&e) => {}
            Err(e) => return Err(dynamo(e)),
        }
        self.client
            .delete_item()
            .table_name(&self.tables.connections)
            .key("connection_id", s(connection_id))
            .send()
            .await
            .map_err(dynamo)?;
        Ok(())
    }

    /// Remembers `key` until `ttl` (Unix seconds); false when it was already remembered and
    /// has not expired (a replay).
    pub async fn remember_once(
        &self,
        key: &str,
        now_secs: u64,
        ttl: u64,
    ) -> Result<bool, StoreError> {
        let res = self
            .client
            .put_item()
            .table_name(&self.tables.replay)
            .item("replay_key", s(key))
            .item("ttl", n(ttl))
            .condition_expression("attribute_not_exists(replay_key) OR #ttl < :now")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":now", n(now_secs))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_conditional(&e) => Ok(false),
            Err(e) => Err(dynamo(e)),
        }
    }
}

/// Groups and group sends.
impl Store {
    /// The group, read consistently.
    pub async fn get_group(&self, group_id: &str) -> Result<Option<GroupRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.groups)
            .key("group_id", s(group_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo)?;
        out.item.as_ref().map(GroupRecord::from_item).transpose()
    }

    /// Creates a group. `Conditional` when the id is taken.
    pub async fn create_group(&self, group: &GroupRecord) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.tables.groups)
            .set_item(Some(group.to_item()))
            .condition_expression("attribute_not_exists(group_id)")
            .send()
            .await
            .map_err(conditional_or)?;
        Ok(())
    }

    /// Replaces a group whose stored version is still `expected` (optimistic concurrency).
    /// `Conditional` when someone changed (or deleted) it since it was read.
    pub async fn update_group(&self, group: &GroupRecord, expected: u64) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.tables.groups)
            .set_item(Some(group.to_item()))
            .condition_expression("#v = :v")
            .expression_attribute_names("#v", "version")
            .expression_attribute_values(":v", n(expected))
            .send()
            .await
            .map_err(conditional_or)?;
        Ok(())
    }

    /// Deletes a group whose stored version is still `expected`. `Conditional` otherwise.
    pub async fn delete_group(&self, group_id: &str, expected: u64) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.tables.groups)
            .key("group_id", s(group_id))
            .condition_expression("#v = :v")
            .expression_attribute_names("#v", "version")
            .expression_attribute_values(":v", n(expected))
            .send()
            .await
            .map_err(conditional_or)?;
        Ok(())
    }

    /// Which of `users` have no account (BatchGetItem of 100 keys, projected to the key,
    /// unprocessed keys retried with backoff).
    pub async fn missing_accounts(&self, users: &[String]) -> Result<Vec<String>, StoreError> {
        let table = &self.tables.accounts;
        let wanted: BTreeSet<&str> = users.iter().map(String::as_str).collect();
        let mut found: BTreeSet<String> = BTreeSet::new();
        let unique: Vec<&str> = wanted.iter().copied().collect();
        for chunk in unique.chunks(BATCH_GET_KEYS) {
            let keys: Vec<Item> = chunk
                .iter()
                .map(|u| HashMap::from([("user".to_owned(), s(*u))]))
                .collect();
            let mut pending = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .projection_expression("#u")
                    .expression_attribute_names("#u", "user")
                    .consistent_read(true)
                    .build()
                    .map_err(dynamo)?,
            );
            let mut attempt = 0u32;
            while let Some(request) = pending.take() {
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(table, request)
                    .send()
                    .await
                    .map_err(dynamo)?;
                for item in out
                    .responses
                    .as_ref()
                    .and_then(|r| r.get(table))
                    .into_iter()
                    .flatten()
                {
                    found.insert(get_s(item, "user")?);
                }
                pending = out
                    .unprocessed_keys
                    .and_then(|mut m| m.remove(table))
                    .filter(|k| !k.keys().is_empty());
                if pending.is_some() {
                    attempt += 1;
                    if attempt > 8 {
                        return Err(StoreError::Dynamo("batch get kept being throttled".into()));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(25 << attempt.min(6)))
                        .await;
                }
            }
        }
        Ok(wanted
            .into_iter()
            .filter(|u| !found.contains(*u))
            .map(str::to_owned)
            .collect())
    }

    /// The active devices of one account, projected to what a fan-out needs.
    pub async fn active_devices(&self, user: &str) -> Result<Vec<ActiveDevice>, StoreError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.tables.devices)
            .key_condition_expression("#u = :u")
            .projection_expression("#u, device, #st, connection_id")
            .expression_attribute_names("#u", "user")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":u", s(user))
            .consistent_read(true)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for item in page.map_err(dynamo)?.items() {
                if get_s(item, "status")? != "active" {
                    continue;
                }
                out.push(ActiveDevice {
                    user: get_s(item, "user")?,
                    device_id: get_n(item, "device")?,
                    connection_id: item
                        .get("connection_id")
                        .and_then(|v| v.as_s().ok())
                        .cloned(),
                });
            }
        }
        Ok(out)
    }

    /// The active devices of every one of `users`, read in parallel (a bounded number of
    /// queries in flight), sorted by (user, device id).
    pub async fn active_devices_of<'a>(
        &self,
        users: impl IntoIterator<Item = &'a String>,
    ) -> Result<Vec<ActiveDevice>, StoreError> {
        // The futures are built first and then polled a bounded number at a time (a closure
        // inside the stream would make the caller's future not `Send` for every lifetime).
        let reads: Vec<_> = users.into_iter().map(|u| self.active_devices(u)).collect();
        let lists: Vec<Vec<ActiveDevice>> = stream::iter(reads)
            .buffer_unordered(DEVICE_READ_CONCURRENCY)
            .try_collect()
            .await?;
        let mut all: Vec<ActiveDevice> = lists.into_iter().flatten().collect();
        all.sort_by(|a, b| (&a.user, a.device_id).cmp(&(&b.user, b.device_id)));
        Ok(all)
    }

    /// Records a group send before any of its queue items is written: its server time (so a
    /// retry writes the same queue keys) and its size, marked incomplete. `Conditional` when
    /// this (sender device, message id) was recorded before.
    pub async fn begin_group_send(
        &self,
        send_key: &str,
        server_ts: u64,
        queued: usize,
        ttl: u64,
    ) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.tables.sends)
            .set_item(Some(send_record(send_key, server_ts, queued, ttl, false)))
            .condition_expression("attribute_not_exists(send_key)")
            .send()
            .await
            .map_err(conditional_or)?;
        Ok(())
    }

    /// Marks a group send complete once every queue item is written.
    pub async fn complete_group_send(
        &self,
        send_key: &str,
        server_ts: u64,
        queued: usize,
        ttl: u64,
    ) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.tables.sends)
            .set_item(Some(send_record(send_key, server_ts, queued, ttl, true)))
            .send()
            .await
            .map_err(dynamo)?;
        Ok(())
    }

    /// A recorded send with its completeness (a 1:1 send is recorded complete in the same
    /// transaction as its envelopes).
    pub async fn get_send_record(&self, send_key: &str) -> Result<Option<SendRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.sends)
            .key("send_key", s(send_key))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo)?;
        out.item
            .map(|i| {
                Ok(SendRecord {
                    server_ts: get_n(&i, "server_ts")?,
                    queued: get_n(&i, "queued")?,
                    complete: i
                        .get("complete")
                        .and_then(|v| v.as_bool().ok())
                        .copied()
                        .unwrap_or(true),
                })
            })
            .transpose()
    }

    /// Writes queue items in BatchWriteItem calls of 25, a bounded number in flight, each
    /// retrying its unprocessed items with backoff. Puts are idempotent: writing the same items
    /// again (a retry) leaves one item per key.
    pub async fn enqueue_fan_out(&self, items: &[QueueItem]) -> Result<(), StoreError> {
        let table = self.tables.queue.as_str();
        let writes: Vec<WriteRequest> = items
            .iter()
            .map(|e| {
                Ok(WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(e.to_item()))
                            .build()
                            .map_err(dynamo)?,
                    )
                    .build())
            })
            .collect::<Result<_, StoreError>>()?;
        let chunks: Vec<_> = writes
            .chunks(25)
            .map(|chunk| self.batch_write_chunk(table, chunk.to_vec()))
            .collect();
        stream::iter(chunks)
            .buffer_unordered(FAN_OUT_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}

fn send_record(send_key: &str, server_ts: u64, queued: usize, ttl: u64, complete: bool) -> Item {
    HashMap::from([
        ("send_key".into(), s(send_key)),
        ("server_ts".into(), n(server_ts)),
        ("queued".into(), n(queued)),
        ("ttl".into(), n(ttl)),
        ("complete".into(), AttributeValue::Bool(complete)),
    ])
}

fn is_conditional<E: aws_sdk_dynamodb::error::ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    match e {
        SdkError::ServiceError(se) => se.err().code() == Some("ConditionalCheckFailedException"),
        _ => false,
    }
}

fn conditional_or<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    if is_conditional(&e) {
        StoreError::Conditional(vec![true])
    } else {
        dynamo(e)
    }
}
