//! Configuration from the environment: table names, bucket, endpoints and limits. The AWS
//! endpoint itself comes from the SDK's own variables (`AWS_ENDPOINT_URL`, region, credentials),
//! so the same build talks to moto, LocalStack or AWS.

use std::env;

/// Physical DynamoDB table names (env `CIPHERPOST_TABLE_<LOGICAL>`, default `cipherpost-<logical>`).
#[derive(Debug, Clone)]
pub struct Tables {
    /// Accounts: key `user`.
    pub accounts: String,
    /// Devices: keys `user`, `device`.
    pub devices: String,
    /// One-time prekeys: keys `device_key`, `opk_id`.
    pub prekeys: String,
    /// Envelope queues: keys `device_key`, `sort`; TTL `ttl`.
    pub queue: String,
    /// Idempotency records of sends: key `send_key`; TTL `ttl`.
    pub sends: String,
    /// WebSocket connections: key `connection_id`; TTL `ttl`.
    pub connections: String,
    /// Replay memory of signed requests and connect nonces: key `replay_key`; TTL `ttl`.
    pub replay: String,
    /// Rate-limit counters: key `limit_key`; TTL `ttl`.
    pub limits: String,
    /// Groups: key `group_id` (unpadded base64url of the 16-byte id).
    pub groups: String,
}

/// Tunable limits (DESIGN.md, "Limits").
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest encrypted body accepted: `12 + 98,400 + 16` bytes, the body of the largest
    /// content the protocol allows (96 KiB padded). Env `CIPHERPOST_MAX_BODY_BYTES`.
    pub max_body_bytes: usize,
    /// Active devices per account. Env `CIPHERPOST_MAX_DEVICES`.
    pub max_devices: u32,
    /// One-time prekeys per upload. Env `CIPHERPOST_MAX_PREKEYS_PER_UPLOAD`.
    pub max_prekeys_per_upload: usize,
    /// Below this many one-time prekeys the device is told to refill.
    pub prekeys_low: u64,
    /// Queue TTL in seconds (30 days). Env `CIPHERPOST_QUEUE_TTL_SECS`.
    pub queue_ttl_secs: u64,
    /// Accepted request clock skew in ms (5 minutes).
    pub clock_skew_ms: u64,
    /// How long accepted signatures and nonces are remembered, in seconds (10 minutes).
    pub replay_ttl_secs: u64,
    /// Ephemeral messages older than this (by their signed time) are dropped, in ms.
    pub ephemeral_max_age_ms: u64,
    /// Largest sync page.
    pub max_sync_page: usize,
    /// Most ids per ack.
    pub max_ack_ids: usize,
    /// Most envelopes per message.
    pub max_envelopes: usize,
    /// Largest attachment, in plaintext bytes (100 MiB); the server accepts an object of up to
    /// `attachment_object_len` of it. Env `CIPHERPOST_MAX_ATTACHMENT_BYTES`.
    pub max_attachment_bytes: u64,
    /// How long presigned attachment URLs stay valid, in seconds (15 minutes).
    pub attachment_url_secs: u64,
    /// Most members per group. Env `CIPHERPOST_MAX_GROUP_MEMBERS`.
    pub max_group_members: usize,
    /// Rate limits, counted in the `limits` table so that they hold across function instances.
    pub rate: RateLimits,
}

/// Abuse limits: fixed windows, one counter item per subject and window in the `limits` table
/// (one UpdateItem per limited request). Over the limit a request gets 429 `rate_limited` with
/// `Retry-After` (the seconds to the window's end) and changes nothing. 0 turns a limit off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// Message sends per device per minute. Env `CIPHERPOST_LIMIT_SENDS_PER_MINUTE`.
    pub sends_per_minute: u64,
    /// Key bundle fetches per device per hour, whoever is fetched. Env
    /// `CIPHERPOST_LIMIT_BUNDLES_PER_HOUR`.
    pub bundles_per_hour: u64,
    /// Key bundle fetches per device of one account per hour: each hands out one of that
    /// account's one-time prekeys per device, so this is what stops one device draining them.
    /// Env `CIPHERPOST_LIMIT_BUNDLES_PER_TARGET_PER_HOUR`.
    pub bundles_per_target_per_hour: u64,
    /// Device links per account per hour. Env `CIPHERPOST_LIMIT_LINKS_PER_HOUR`.
    pub links_per_hour: u64,
    /// Attachment uploads per account per hour. Env `CIPHERPOST_LIMIT_UPLOADS_PER_HOUR`.
    pub uploads_per_hour: u64,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            sends_per_minute: 3_000,
            bundles_per_hour: 600,
            bundles_per_target_per_hour: 20,
            links_per_hour: 20,
            uploads_per_hour: 300,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 12 + 98_400 + 16,
            max_devices: 10,
            max_prekeys_per_upload: 100,
            prekeys_low: 10,
            queue_ttl_secs: 30 * 86_400,
            clock_skew_ms: 300_000,
            replay_ttl_secs: 600,
            ephemeral_max_age_ms: 10_000,
            max_sync_page: 500,
            max_ack_ids: 100,
            max_envelopes: 40,
            max_attachment_bytes: 100 * 1024 * 1024,
            attachment_url_secs: 900,
            max_group_members: 1000,
            rate: RateLimits::default(),
        }
    }
}

/// Everything the backend reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Table names.
    pub tables: Tables,
    /// The attachments bucket (env `CIPHERPOST_BUCKET`).
    pub bucket: String,
    /// The WebSocket API's management endpoint (env `CIPHERPOST_WS_ENDPOINT`), e.g.
    /// `https://abc.execute-api.eu-west-1.amazonaws.com/prod`. Without it nothing is pushed
    /// and devices learn of new envelopes by sync.
    pub ws_endpoint: Option<String>,
    /// Limits.
    pub limits: Limits,
}

/// A variable held a value that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name} must be {expected}, got {value:?}")]
pub struct ConfigError {
    name: String,
    expected: &'static str,
    value: String,
}

fn table(logical: &str) -> String {
    env::var(format!("CIPHERPOST_TABLE_{}", logical.to_uppercase()))
        .unwrap_or_else(|_| format!("cipherpost-{logical}"))
}

fn number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, ConfigError> {
    match env::var(name) {
        Ok(v) => v.parse().map_err(|_| ConfigError {
            name: name.into(),
            expected: "a non-negative integer",
            value: v,
        }),
        Err(_) => Ok(default),
    }
}

impl Config {
    /// Reads the configuration.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Limits::default();
        Ok(Self {
            tables: Tables {
                accounts: table("accounts"),
                devices: table("devices"),
                prekeys: table("prekeys"),
                queue: table("queue"),
                sends: table("sends"),
                connections: table("connections"),
                replay: table("replay"),
                limits: table("limits"),
                groups: table("groups"),
            },
            bucket: env::var("CIPHERPOST_BUCKET")
                .unwrap_or_else(|_| "cipherpost-attachments".into()),
            ws_endpoint: env::var("CIPHERPOST_WS_ENDPOINT")
                .ok()
                .filter(|s| !s.is_empty()),
            limits: Limits {
                max_body_bytes: number("CIPHERPOST_MAX_BODY_BYTES", d.max_body_bytes)?,
                max_devices: number("CIPHERPOST_MAX_DEVICES", d.max_devices)?,
                max_prekeys_per_upload: number(
                    "CIPHERPOST_MAX_PREKEYS_PER_UPLOAD",
                    d.max_prekeys_per_upload,
                )?,
                queue_ttl_secs: number("CIPHERPOST_QUEUE_TTL_SECS", d.queue_ttl_secs)?,
                max_attachment_bytes: number(
                    "CIPHERPOST_MAX_ATTACHMENT_BYTES",
                    d.max_attachment_bytes,
                )?,
                max_group_members: number("CIPHERPOST_MAX_GROUP_MEMBERS", d.max_group_members)?,
                rate: RateLimits {
                    sends_per_minute: number(
                        "CIPHERPOST_LIMIT_SENDS_PER_MINUTE",
                        d.rate.sends_per_minute,
                    )?,
                    bundles_per_hour: number(
                        "CIPHERPOST_LIMIT_BUNDLES_PER_HOUR",
                        d.rate.bundles_per_hour,
                    )?,
                    bundles_per_target_per_hour: number(
                        "CIPHERPOST_LIMIT_BUNDLES_PER_TARGET_PER_HOUR",
                        d.rate.bundles_per_target_per_hour,
                    )?,
                    links_per_hour: number(
                        "CIPHERPOST_LIMIT_LINKS_PER_HOUR",
                        d.rate.links_per_hour,
                    )?,
                    uploads_per_hour: number(
                        "CIPHERPOST_LIMIT_UPLOADS_PER_HOUR",
                        d.rate.uploads_per_hour,
                    )?,
                },
                ..d
            },
        })
    }
}
