//! `send` and `sync`: queue a message for every addressed device (persist, then push), page
//! through a device's queue, acknowledge.

use std::collections::BTreeSet;

use cipherpost_protocol::UserId;
use futures::future::join_all;
use serde_json::json;

use super::Limited;
use crate::{
    api::{
        AckRequest, AckResponse, DeviceRef, Envelope, Push, SendRequest, SendResponse,
        SyncResponse, B64,
    },
    auth::Caller,
    push::PushOutcome,
    store::{device_key, DeviceRecord, QueueItem, StoreError},
    ApiError, Backend, HttpRequest, HttpResponse,
};

/// API Gateway's WebSocket frame limit: larger envelopes are announced with a sync hint.
pub(crate) const MAX_PUSH_BYTES: usize = 128 * 1024;

/// Longest valid queue position: 13 + 1 + 32 + 1 + 32 + 1 + 10.
const MAX_CURSOR_LEN: usize = 96;

fn valid_cursor(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= MAX_CURSOR_LEN
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b":._-".contains(&b))
}

impl Backend {
    /// Routes of the `send` function.
    pub async fn send(&self, req: &HttpRequest) -> HttpResponse {
        let now = crate::now_ms();
        let result = match (req.method.as_str(), req.segments().as_slice()) {
            ("PUT", ["messages"]) => self.send_message(req, now).await,
            _ => Err(ApiError::not_found("not_found", "no such route")),
        };
        result.unwrap_or_else(HttpResponse::from)
    }

    /// Routes of the `sync` function.
    pub async fn sync(&self, req: &HttpRequest) -> HttpResponse {
        let now = crate::now_ms();
        let result = match (req.method.as_str(), req.segments().as_slice()) {
            ("GET", ["messages"]) => self.sync_queue(req, now).await,
            ("POST", ["messages", "ack"]) => self.ack(req, now).await,
            _ => Err(ApiError::not_found("not_found", "no such route")),
        };
        result.unwrap_or_else(HttpResponse::from)
    }

    async fn send_message(&self, req: &HttpRequest, now: u64) -> Result<HttpResponse, ApiError> {
        let limits = &self.config.limits;
        if req.body.len() > limits.max_body_bytes * 2 + 64 * 1024 {
            return Err(ApiError::new(
                413,
                "body_too_large",
                "the request is larger than any valid message",
            ));
        }
        let caller = self.authenticate(req, now).await?;
        let me = crate::store::device_key(caller.user.as_str(), caller.device_id());
        self.rate_limit(Limited::Sends, &me, now).await?;
        let msg: SendRequest = req.json()?;
        let message_id = msg.message_id.array::<16>("message_id")?;
        let to = match (&msg.to, &msg.group) {
            (Some(to), None) => to,
            (None, Some(group)) => {
                return self
                    .send_group_message(&caller, &msg, group, message_id, now)
                    .await
            }
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_recipient",
                    "a message names exactly one of `to` and `group`",
                ))
            }
        };
        let to =
            UserId::new(to).map_err(|e| ApiError::bad_request("invalid_user", e.to_string()))?;
        if msg.body.0.len() > limits.max_body_bytes {
            return Err(ApiError::new(
                413,
                "body_too_large",
                format!(
                    "the encrypted body is {} bytes; at most {} are allowed (send larger content as an attachment)",
                    msg.body.0.len(),
                    limits.max_body_bytes
                ),
            ));
        }
        if msg.envelopes.is_empty() || msg.envelopes.len() > limits.max_envelopes {
            return Err(ApiError::bad_request(
                "invalid_envelopes",
                format!("a message needs 1 to {} envelopes", limits.max_envelopes),
            ));
        }
        let mut given = BTreeSet::new();
        for e in &msg.envelopes {
            if UserId::new(&e.user).is_err() || e.device_id == 0 {
                return Err(ApiError::bad_request(
                    "invalid_envelopes",
                    "an envelope names an invalid user id or device id 0",
                ));
            }
            if !given.insert(DeviceRef {
                user: e.user.clone(),
                device_id: e.device_id,
            }) {
                return Err(ApiError::bad_request(
                    "invalid_envelopes",
                    "two envelopes for the same device",
                ));
            }
            if e.key.0.is_empty() || e.key.0.len() > 4096 {
                return Err(ApiError::bad_request(
                    "invalid_envelopes",
                    "a key envelope must hold 1 to 4096 bytes",
                ));
            }
        }

        // The addressed devices: every active device of `to` and of the sender, but the sender.
        let mut devices = self.store.list_devices(to.as_str()).await?;
        if to.as_str() != caller.user {
            if !devices.iter().any(|d| d.active) {
                return Err(ApiError::not_found(
                    "unknown_user",
                    format!("no account {to} with active devices"),
                ));
            }
            devices.extend(self.store.list_devices(&caller.user).await?);
        }
        let active: Vec<&DeviceRecord> = devices
            .iter()
            .filter(|d| d.active && !(d.user == caller.user && d.device_id == caller.device_id()))
            .collect();
        if active.is_empty() && to.as_str() != caller.user {
            return Err(ApiError::not_found(
                "unknown_user",
                format!("no account {to} with active devices"),
            ));
        }
        let expected: BTreeSet<DeviceRef> = active
            .iter()
            .map(|d| DeviceRef {
                user: d.user.clone(),
                device_id: d.device_id,
            })
            .collect();
        let send_key = format!(
            "{}#{}#{}",
            caller.user,
            caller.device_id(),
            hex::encode(message_id)
        );

        if msg.ephemeral {
            return Ok(self
                .send_ephemeral(&caller, &msg, &active, &expected, now)
                .await);
        }

        if expected != given {
            // A retry of a message already stored answers as the first time did.
            if let Some((server_ts, queued)) = self.store.get_send(&send_key).await? {
                return Ok(HttpResponse::ok(
                    200,
                    &SendResponse {
                        message_id: msg.message_id,
                        server_ts,
                        queued,
                    },
                ));
            }
            let missing: Vec<&DeviceRef> = expected.difference(&given).collect();
            let stale: Vec<&DeviceRef> = given.difference(&expected).collect();
            return Err(ApiError::conflict(
                "device_mismatch",
                "the message does not address exactly the recipient's and your other active devices; refresh the device lists and re-encrypt the envelopes",
            )
            .with("missing", json!(missing))
            .with("stale", json!(stale)));
        }

        let ttl = now / 1000 + limits.queue_ttl_secs;
        let sort_prefix = format!(
            "{now:013}:{}:{}:{}",
            hex::encode(message_id),
            caller.user,
            caller.device_id()
        );
        let items: Vec<QueueItem> = msg
            .envelopes
            .iter()
            .map(|e| QueueItem {
                device_key: device_key(&e.user, e.device_id),
                sort: sort_prefix.clone(),
                message_id: message_id.to_vec(),
                sender_user: caller.user.clone(),
                sender_device: caller.device_id(),
                body: msg.body.0.clone(),
                key: e.key.0.clone(),
                server_ts: now,
                ttl,
                group: None,
            })
            .collect();
        match self.store.enqueue(&send_key, now, ttl, &items).await {
            Ok(()) => {}
            Err(StoreError::Conditional(reasons)) if reasons.first().copied().unwrap_or(false) => {
                let (server_ts, queued) = self
                    .store
                    .get_send(&send_key)
                    .await?
                    .unwrap_or((now, items.len()));
                return Ok(HttpResponse::ok(
                    200,
                    &SendResponse {
                        message_id: msg.message_id,
                        server_ts,
                        queued,
                    },
                ));
            }
            Err(e) => return Err(e.into()),
        }

        // Persisted; now push to the devices that are online.
        let pushes = items.iter().filter_map(|item| {
            let d = active
                .iter()
                .find(|d| device_key(&d.user, d.device_id) == item.device_key)?;
            let conn = d.connection_id.as_ref()?;
            let envelope = envelope_of(item);
            Some(async move { self.push_to(d, conn, &Push::Envelope { envelope }).await })
        });
        join_all(pushes).await;
        Ok(HttpResponse::ok(
            200,
            &SendResponse {
                message_id: msg.message_id,
                server_ts: now,
                queued: items.len(),
            },
        ))
    }

    /// Ephemeral messages (typing): pushed to the online addressed devices, never stored,
    /// dropped when their signed time is older than the limit.
    async fn send_ephemeral(
        &self,
        caller: &Caller,
        msg: &SendRequest,
        active: &[&DeviceRecord],
        expected: &BTreeSet<DeviceRef>,
        now: u64,
    ) -> HttpResponse {
        let fresh =
            now.saturating_sub(caller.auth.ts_ms) <= self.config.limits.ephemeral_max_age_ms;
        let mut pushed = 0usize;
        if fresh {
            let pushes = msg.envelopes.iter().filter_map(|e| {
                let r = DeviceRef {
                    user: e.user.clone(),
                    device_id: e.device_id,
                };
                if !expected.contains(&r) {
                    return None;
                }
                let d = active
                    .iter()
                    .find(|d| d.user == e.user && d.device_id == e.device_id)?;
                let conn = d.connection_id.as_ref()?;
                let envelope = Envelope {
                    id: String::new(),
                    message_id: msg.message_id.clone(),
                    sender: DeviceRef {
                        user: caller.user.clone(),
                        device_id: caller.device_id(),
                    },
                    body: msg.body.clone(),
                    key: e.key.clone(),
                    server_ts: now,
                    group: None,
                };
                Some(async move { self.push_to(d, conn, &Push::Ephemeral { envelope }).await })
            });
            pushed = join_all(pushes)
                .await
                .into_iter()
                .filter(|o| *o == PushOutcome::Sent)
                .count();
        }
        tracing::debug!(pushed, fresh, "ephemeral message");
        HttpResponse::ok(
            200,
            &SendResponse {
                message_id: msg.message_id.clone(),
                server_ts: now,
                queued: 0,
            },
        )
    }

    /// Pushes to a device's connection; a gone connection is forgotten (the envelope stays
    /// queued for sync). An envelope too large for one frame becomes a sync hint.
    pub(crate) async fn push_to(&self, d: &DeviceRecord, conn: &str, push: &Push) -> PushOutcome {
        self.push_to_device(&d.user, d.device_id, conn, push).await
    }

    /// [`Backend::push_to`] by device address.
    pub(crate) async fn push_to_device(
        &self,
        user: &str,
        device_id: u32,
        conn: &str,
        push: &Push,
    ) -> PushOutcome {
        let mut data = serde_json::to_vec(push).unwrap_or_default();
        if data.len() > MAX_PUSH_BYTES {
            data = serde_json::to_vec(&Push::Sync).unwrap_or_default();
        }
        let outcome = self.pusher.post(conn, data).await;
        match &outcome {
            PushOutcome::Gone => {
                if let Err(e) = self.store.drop_connection(user, device_id, conn).await {
                    tracing::warn!(error = %e, "forgetting a gone connection failed");
                }
            }
            PushOutcome::Failed(e) => {
                tracing::warn!(error = %e, "push failed; the device will sync")
            }
            _ => {}
        }
        outcome
    }

    async fn sync_queue(&self, req: &HttpRequest, now: u64) -> Result<HttpResponse, ApiError> {
        let caller = self.authenticate(req, now).await?;
        let max = self.config.limits.max_sync_page;
        let limit = match req.query_param("limit") {
            None => 100.min(max),
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|l| (1..=max).contains(l))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_limit",
                        format!("limit must be a number from 1 to {max}"),
                    )
                })?,
        };
        let cursor = req.query_param("cursor");
        if let Some(c) = cursor {
            if !valid_cursor(c) {
                return Err(ApiError::bad_request(
                    "invalid_cursor",
                    "the cursor is not one the server gave out",
                ));
            }
        }
        let dk = device_key(&caller.user, caller.device_id());
        let (items, next) = self
            .store
            .queue_page(&dk, cursor, limit, now / 1000)
            .await?;
        Ok(HttpResponse::ok(
            200,
            &SyncResponse {
                envelopes: items.iter().map(envelope_of).collect(),
                next_cursor: next,
            },
        ))
    }

    async fn ack(&self, req: &HttpRequest, now: u64) -> Result<HttpResponse, ApiError> {
        let caller = self.authenticate(req, now).await?;
        let body: AckRequest = req.json()?;
        let max = self.config.limits.max_ack_ids;
        if body.ids.is_empty() || body.ids.len() > max {
            return Err(ApiError::bad_request(
                "invalid_ack",
                format!("acknowledge 1 to {max} ids at a time"),
            ));
        }
        if let Some(bad) = body.ids.iter().find(|i| !valid_cursor(i)) {
            return Err(ApiError::bad_request(
                "invalid_ack",
                format!("{bad:?} is not an envelope id"),
            ));
        }
        let mut ids = body.ids.clone();
        ids.sort();
        ids.dedup();
        // Deletes only within the caller's own queue: another device's envelopes are out of reach.
        let dk = device_key(&caller.user, caller.device_id());
        self.store.ack(&dk, &ids).await?;
        Ok(HttpResponse::ok(
            200,
            &AckResponse {
                acknowledged: ids.len(),
            },
        ))
    }
}

pub(crate) fn envelope_of(item: &QueueItem) -> Envelope {
    Envelope {
        id: item.sort.clone(),
        message_id: B64(item.message_id.clone()),
        sender: DeviceRef {
            user: item.sender_user.clone(),
            device_id: item.sender_device,
        },
        body: B64(item.body.clone()),
        key: B64(item.key.clone()),
        server_ts: item.server_ts,
        group: item.group.clone().map(B64),
    }
}
