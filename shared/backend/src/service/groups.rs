//! `groups` (create, read, add and remove members, promote and demote admins, leave) and the
//! group half of `send`: a sender-key message checked against the group's current membership
//! and fanned out to every member device but the sender's.
//!
//! A group is one item; every change is a conditional write on the version read (optimistic
//! concurrency), retried a few times against a fresh read when someone else changed it first.

use std::collections::{BTreeMap, BTreeSet};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use cipherpost_protocol::{SenderKeyMessageHeader, UserId};
use futures::{stream, StreamExt};
use serde_json::{json, Value};

use crate::{
    api::{
        devices_digest, AddMembersRequest, CreateGroupRequest, DeviceRef, Envelope, Group,
        GroupMember, GroupSend, LeaveGroupRequest, Push, SendRequest, SendResponse, B64,
    },
    auth::Caller,
    push::PushOutcome,
    store::{device_key, ActiveDevice, GroupRecord, QueueItem, StoreError},
    ApiError, Backend, HttpRequest, HttpResponse,
};

/// Conditional writes tried before a change is refused with 409 `conflict`.
const MAX_WRITE_ATTEMPTS: usize = 3;
/// Pushes in flight at once during a fan-out.
const PUSH_CONCURRENCY: usize = 32;

/// What a change does to the group it read.
enum Change {
    /// Write these members at the next version.
    Members(BTreeMap<String, bool>),
    /// Nothing to change (already so): no write, no new version.
    Unchanged,
    /// The last member left: delete the group.
    Delete,
}

/// The outcome of a change.
enum Changed {
    /// The group as written (or as read, when unchanged).
    Group(GroupRecord),
    /// The group was deleted.
    Deleted,
}

/// The group id of a path segment: unpadded base64url of 16 bytes.
fn path_group_id(segment: &str) -> Result<[u8; 16], ApiError> {
    URL_SAFE_NO_PAD
        .decode(segment.as_bytes())
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_group",
                "a group id is 16 bytes in unpadded base64url",
            )
        })
}

fn table_key(group_id: &[u8; 16]) -> String {
    URL_SAFE_NO_PAD.encode(group_id)
}

fn user_id(user: &str) -> Result<String, ApiError> {
    UserId::new(user)
        .map(|u| u.as_str().to_owned())
        .map_err(|e| ApiError::bad_request("invalid_user", e.to_string()))
}

/// Checked user ids: valid, no duplicates.
fn user_ids(users: &[String]) -> Result<BTreeSet<String>, ApiError> {
    let mut out = BTreeSet::new();
    for u in users {
        if !out.insert(user_id(u)?) {
            return Err(ApiError::bad_request(
                "duplicate_member",
                format!("{u} is listed twice"),
            ));
        }
    }
    Ok(out)
}

fn too_many(max: usize, got: usize) -> ApiError {
    ApiError::bad_request(
        "too_many_members",
        format!("a group has at most {max} members; this would make {got}"),
    )
}

fn unknown_group() -> ApiError {
    ApiError::not_found(
        "unknown_group",
        "no such group among the groups you are a member of",
    )
}

fn not_admin() -> ApiError {
    ApiError::new(
        403,
        "not_admin",
        "only the group's admins may change its members and admins",
    )
}

fn unknown_member(user: &str) -> ApiError {
    ApiError::not_found(
        "unknown_member",
        format!("{user} is not a member of the group"),
    )
}

/// The group as the API shows it, with the active devices of its members.
fn group_json(group_id: &[u8; 16], g: &GroupRecord, devices: &[ActiveDevice]) -> Group {
    let mut devices: Vec<DeviceRef> = devices
        .iter()
        .map(|d| DeviceRef {
            user: d.user.clone(),
            device_id: d.device_id,
        })
        .collect();
    devices.sort();
    Group {
        group_id: B64(group_id.to_vec()),
        version: g.version,
        // BTreeMap order: sorted by user.
        members: g
            .members
            .iter()
            .map(|(user, admin)| GroupMember {
                user: user.clone(),
                admin: *admin,
            })
            .collect(),
        devices,
    }
}

fn is_admin(g: &GroupRecord, user: &str) -> bool {
    g.members.get(user).copied().unwrap_or(false)
}

impl Backend {
    /// Routes of the `groups` function.
    pub async fn groups(&self, req: &HttpRequest) -> HttpResponse {
        let now = crate::now_ms();
        // The ids in the path are checked before anything else (as the account routes do), so
        // a malformed one is named as such rather than failing the signature check.
        let seg = req.segments();
        let ids = match seg.as_slice() {
            ["groups", g, "members" | "admins", u] => path_group_id(g).and_then(|_| user_id(u)),
            ["groups", g, ..] => path_group_id(g).map(|_| String::new()),
            _ => Ok(String::new()),
        };
        if let Err(e) = ids {
            return e.into();
        }
        let result = match (req.method.as_str(), seg.as_slice()) {
            ("POST", ["groups"]) => self.create_group(req, now).await,
            ("GET", ["groups", g]) => self.read_group(req, g, now).await,
            ("POST", ["groups", g, "members"]) => self.add_members(req, g, now).await,
            ("DELETE", ["groups", g, "members", u]) => self.remove_member(req, g, u, now).await,
            ("PUT", ["groups", g, "admins", u]) => self.set_admin(req, g, u, true, now).await,
            ("DELETE", ["groups", g, "admins", u]) => self.set_admin(req, g, u, false, now).await,
            ("POST", ["groups", g, "leave"]) => self.leave_group(req, g, now).await,
            _ => Err(req.unmatched(&[
                ("GET", "groups/{group}"),
                ("POST", "groups/{group}/members"),
                ("DELETE", "groups/{group}/members/{user}"),
                ("PUT", "groups/{group}/admins/{user}"),
                ("DELETE", "groups/{group}/admins/{user}"),
                ("POST", "groups/{group}/leave"),
            ])),
        };
        result.unwrap_or_else(HttpResponse::from)
    }

    /// The group with its members' active devices.
    async fn group_view(&self, group_id: &[u8; 16], g: &GroupRecord) -> Result<Group, ApiError> {
        let devices = self.store.active_devices_of(g.members.keys()).await?;
        Ok(group_json(group_id, g, &devices))
    }

    /// The group, if `caller` is a member of it; otherwise 404 whether or not it exists.
    async fn member_group(&self, caller: &Caller, key: &str) -> Result<GroupRecord, ApiError> {
        self.store
            .get_group(key)
            .await?
            .filter(|g| g.members.contains_key(&caller.user))
            .ok_or_else(unknown_group)
    }

    /// Applies `change` to the group read as `first`, as a conditional write on its version; on
    /// a conflict reads the group again and re-applies, up to [`MAX_WRITE_ATTEMPTS`] writes.
    /// `change` sees the group as stored and decides everything (membership, admin rights),
    /// so a concurrent change is never overwritten or bypassed.
    async fn change_group<F>(
        &self,
        caller: &Caller,
        key: &str,
        first: GroupRecord,
        change: F,
    ) -> Result<Changed, ApiError>
    where
        F: Fn(&GroupRecord) -> Result<Change, ApiError>,
    {
        let mut g = first;
        for attempt in 1..=MAX_WRITE_ATTEMPTS {
            let written = match change(&g)? {
                Change::Unchanged => return Ok(Changed::Group(g)),
                Change::Delete => self
                    .store
                    .delete_group(key, g.version)
                    .await
                    .map(|()| Changed::Deleted),
                Change::Members(members) => {
                    let next = GroupRecord {
                        version: g.version + 1,
                        members,
                        ..g.clone()
                    };
                    self.store
                        .update_group(&next, g.version)
                        .await
                        .map(|()| Changed::Group(next))
                }
            };
            match written {
                Ok(done) => return Ok(done),
                Err(StoreError::Conditional(_)) if attempt < MAX_WRITE_ATTEMPTS => {
                    g = self.member_group(caller, key).await?;
                }
                Err(StoreError::Conditional(_)) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict(
            "conflict",
            "the group kept changing while this change was made; retry",
        ))
    }

    /// The answer to a change: 200 with the group, or 204 when it was deleted.
    async fn changed_answer(
        &self,
        group_id: &[u8; 16],
        changed: Changed,
    ) -> Result<HttpResponse, ApiError> {
        match changed {
            Changed::Group(g) => Ok(HttpResponse::ok(200, &self.group_view(group_id, &g).await?)),
            Changed::Deleted => Ok(HttpResponse {
                status: 204,
                body: Value::Null,
                retry_after: None,
            }),
        }
    }

    async fn create_group(&self, req: &HttpRequest, now: u64) -> Result<HttpResponse, ApiError> {
        let caller = self.authenticate(req, now).await?;
        let body: CreateGroupRequest = req.json()?;
        let group_id = body.group_id.array::<16>("group_id")?;
        let max = self.config.limits.max_group_members;
        // The size first, before any other work or lookup.
        let with_caller = body.members.len() + usize::from(!body.members.contains(&caller.user));
        if with_caller > max {
            return Err(too_many(max, with_caller));
        }
        let mut users = user_ids(&body.members)?;
        users.insert(caller.user.clone());
        let others: Vec<String> = users
            .iter()
            .filter(|u| **u != caller.user)
            .cloned()
            .collect();
        if let Some(u) = self.store.missing_accounts(&others).await?.first() {
            return Err(ApiError::not_found(
                "unknown_user",
                format!("there is no account {u}"),
            ));
        }
        let record = GroupRecord {
            group_id: table_key(&group_id),
            version: 1,
            members: users
                .into_iter()
                .map(|u| {
                    let admin = u == caller.user;
                    (u, admin)
                })
                .collect(),
            creator: caller.user.clone(),
            created_at: now,
        };
        self.accept_once(&caller, now).await?;
        match self.store.create_group(&record).await {
            Ok(()) => {}
            Err(StoreError::Conditional(_)) => {
                return Err(ApiError::conflict(
                    "group_exists",
                    "a group with this id exists; choose another random id",
                ))
            }
            Err(e) => return Err(e.into()),
        }
        Ok(HttpResponse::ok(
            201,
            &self.group_view(&group_id, &record).await?,
        ))
    }

    async fn read_group(
        &self,
        req: &HttpRequest,
        segment: &str,
        now: u64,
    ) -> Result<HttpResponse, ApiError> {
        let caller = self.authenticate(req, now).await?;
        let group_id = path_group_id(segment)?;
        let g = self.member_group(&caller, &table_key(&group_id)).await?;
        Ok(HttpResponse::ok(
            200,
            &self.group_view(&group_id, &g).await?,
        ))
    }

    async fn add_members(
        &self,
        req: &HttpRequest,
        segment: &str,
        now: u64,
    ) -> Result<HttpResponse, ApiError> {
        let caller = self.authenticate(req, now).await?;
        let group_id = path_group_id(segment)?;
        let body: AddMembersRequest = req.json()?;
        let max = self.config.limits.max_group_members;
        if body.users.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_members",
                "name at least one user to add",
            ));
        }
        if body.users.len() > max {
            return Err(too_many(max, body.users.len()));
        }
        let users = user_ids(&body.users)?;
        let key = table_key(&group_id);
        let g = self.member_group(&caller, &key).await?;
        if !is_admin(&g, &caller.user) {
            return Err(not_admin());
        }
        let new: Vec<String> = users
            .iter()
            .filter(|u| !g.members.contains_key(*u))
            .cloned()
            .collect();
        if g.members.len() + new.len() > max {
            return Err(too_many(max, g.members.len() + new.len()));
        }
        if let Some(u) = self.store.missing_accounts(&new).await?.first() {
            return Err(ApiError::not_found(
                "unknown_user",
                format!("there is no account {u}"),
            ));
        }
        self.accept_once(&caller, now).await?;
        let changed = self
            .change_group(&caller, &key, g, |g| {
                if !is_admin(g, &caller.user) {
                    return Err(not_admin());
                }
                let mut members = g.members.clone();
                for u in &new {
                    members.entry(u.clone()).or_insert(false);
                }
                if members.len() == g.members.len() {
                    return Ok(Change::Unchanged);
                }
                if members.len() > max {
                    return Err(too_many(max, members.len()));
                }
                Ok(Change::Members(members))
            })
            .await?;
        self.changed_answer(&group_id, changed).await
    }

    async fn remove_member(
        &self,
        req: &HttpRequest,
        segment: &str,
        user: &str,
        now: u64,
    ) -> Result<HttpResponse, ApiError> {
        let caller = self.authenticate(req, now).await?;
        let group_id = path_group_id(segment)?;
        let user = user_id(user)?;
        let key = table_key(&group_id);
        let g = self.member_group(&caller, &key).await?;
        let change = |g: &GroupRecord| {
            if !is_admin(g, &caller.user) {
                return Err(not_admin());
            }
            if user == caller.user {
                return Err(ApiError::bad_request(
                    "cannot_remove_self",
                    "to remove yourself, leave the group (POST /v1/groups/{group}/leave)",
                ));
            }
            if !g.members.contains_key(&user) {
                return Err(unknown_member(&user));
            }
            let mut members = g.members.clone();
            members.remove(&user);
            Ok(Change::Members(members))
        };
        // Refuse before remembering the request: bad input changes nothing.
        change(&g)?;
        self.accept_once(&caller, now).await?;
        let changed = self.change_group(&caller, &key, g, change).await?;
        self.changed_answer(&group_id, changed).await
    }

    async fn set_admin(
        &self,
        req: &HttpRequest,
        segment: &str,
        user: &str,
        admin: bool,
        now: u64,
    ) -> Result<HttpResponse, ApiError> {
        let caller = self.authenticate(req, now).await?;
        let group_id = path_group_id(segment)?;
        let user = user_id(user)?;
        let key = table_key(&group_id);
        let g = self.member_group(&caller, &key).await?;
        let change = |g: &GroupRecord| {
            if !is_admin(g, &caller.user) {
                return Err(not_admin());
            }
            let Some(current) = g.members.get(&user).copied() else {
                return Err(unknown_member(&user));
            };
            if current == admin {
                return Ok(Change::Unchanged);
            }
            if !admin && g.members.values().filter(|a| **a).count() <= 1 {
                return Err(ApiError::conflict(
                    "last_admin",
                    "the group's last admin cannot be demoted; promote another member first",
                ));
            }
            let mut members = g.members.clone();
            members.insert(user.clone(), admin);
            Ok(Change::Members(members))
        };
        change(&g)?;
        self.accept_once(&caller, now).await?;
        let changed = self.change_group(&caller, &key, g, change).await?;
        self.changed_answer(&group_id, changed).await
    }

    async fn leave_group(
        &self,
        req: &HttpRequest,
        segment: &str,
        now: u64,
    ) -> Result<HttpResponse, ApiError> {
        let caller = self.authenticate(req, now).await?;
        let group_id = path_group_id(segment)?;
        let body: LeaveGroupRequest = if req.body.is_empty() {
            LeaveGroupRequest::default()
        } else {
            req.json()?
        };
        let key = table_key(&group_id);
        let g = self.member_group(&caller, &key).await?;
        let change = |g: &GroupRecord| {
            let mut members = g.members.clone();
            if !g.members.contains_key(&caller.user) {
                return Err(unknown_group());
            }
            members.remove(&caller.user);
            if members.is_empty() {
                return Ok(Change::Delete);
            }
            let admins_left = members.values().any(|a| *a);
            match &body.successor {
                Some(s) if *s != caller.user && members.contains_key(s) => {
                    members.insert(s.clone(), true);
                }
                Some(s) => {
                    return Err(ApiError::conflict(
                        "successor_required",
                        format!("the successor must be another member of the group, not {s}"),
                    ))
                }
                None if !admins_left => {
                    return Err(ApiError::conflict(
                        "successor_required",
                        "the last admin leaving must name another member as successor",
                    ))
                }
                None => {}
            }
            Ok(Change::Members(members))
        };
        change(&g)?;
        self.accept_once(&caller, now).await?;
        let changed = self.change_group(&caller, &key, g, change).await?;
        self.changed_answer(&group_id, changed).await
    }

    /// The stored answer of a send already recorded complete, if any.
    async fn completed_send(
        &self,
        send_key: &str,
        message_id: &B64,
    ) -> Result<Option<HttpResponse>, ApiError> {
        Ok(self
            .store
            .get_send_record(send_key)
            .await?
            .filter(|r| r.complete)
            .map(|r| {
                HttpResponse::ok(
                    200,
                    &SendResponse {
                        message_id: message_id.clone(),
                        server_ts: r.server_ts,
                        queued: r.queued,
                    },
                )
            }))
    }

    /// A group send (`SendRequest.group` set): checks the sender-key header against the caller,
    /// the group and the message id, the membership the sender encrypted for against the
    /// current one, then queues the body for every member device but the sending one.
    ///
    /// Idempotent on (sender device, message id): the send is recorded with its server time
    /// before any queue item is written, so a retry after a first attempt died half-way writes
    /// the same queue keys again (a put of the same key replaces, never adds) and then marks
    /// the record complete; a retry of a complete send answers as the first did.
    pub(crate) async fn send_group_message(
        &self,
        caller: &Caller,
        msg: &SendRequest,
        group: &GroupSend,
        message_id: [u8; 16],
        now: u64,
    ) -> Result<HttpResponse, ApiError> {
        let limits = &self.config.limits;
        let group_id = group.group_id.array::<16>("group.group_id")?;
        let digest = group.devices_digest.array::<32>("group.devices_digest")?;
        if !msg.envelopes.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_envelopes",
                "a group message carries no key envelopes (the sender key travels in advance)",
            ));
        }
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
        let invalid = |why: String| ApiError::bad_request("invalid_group_message", why);
        let header = SenderKeyMessageHeader::parse(&msg.body.0)
            .map_err(|e| invalid(format!("the body is not a sender-key message: {e}")))?;
        if header.group_id.0 != group_id {
            return Err(invalid("the message's header names another group".into()));
        }
        if header.sender.user_id.as_str() != caller.user
            || header.sender.device_id.get() != caller.device_id()
        {
            return Err(invalid(
                "the message's header names another sender than the signing device".into(),
            ));
        }
        if header.message_id.0 != message_id {
            return Err(invalid(
                "the message's header names another message id".into(),
            ));
        }

        let send_key = format!(
            "{}#{}#{}",
            caller.user,
            caller.device_id(),
            hex::encode(message_id)
        );
        let g = self
            .store
            .get_group(&table_key(&group_id))
            .await?
            .ok_or_else(unknown_group)?;
        if !g.members.contains_key(&caller.user) {
            // A retry of a message stored before the sender left answers as the first time did.
            if let Some(done) = self.completed_send(&send_key, &msg.message_id).await? {
                return Ok(done);
            }
            return Err(ApiError::new(
                403,
                "not_a_member",
                "only members send to a group",
            ));
        }
        let devices = self.store.active_devices_of(g.members.keys()).await?;
        let current = group_json(&group_id, &g, &devices);
        if group.version != g.version || devices_digest(&current.devices) != digest {
            if let Some(done) = self.completed_send(&send_key, &msg.message_id).await? {
                return Ok(done);
            }
            return Err(ApiError::conflict(
                "group_changed",
                "the group's members or their devices changed; update the sender keys and resend",
            )
            .with("group", json!(current)));
        }
        let targets: Vec<&ActiveDevice> = devices
            .iter()
            .filter(|d| !(d.user == caller.user && d.device_id == caller.device_id()))
            .collect();

        if msg.ephemeral {
            return Ok(self
                .send_group_ephemeral(caller, msg, &group_id, &targets, now)
                .await);
        }

        let ttl = now / 1000 + limits.queue_ttl_secs;
        let (server_ts, resumed) = match self
            .store
            .begin_group_send(&send_key, now, targets.len(), ttl)
            .await
        {
            Ok(()) => (now, false),
            Err(StoreError::Conditional(_)) => match self.store.get_send_record(&send_key).await? {
                Some(r) if r.complete => {
                    return Ok(HttpResponse::ok(
                        200,
                        &SendResponse {
                            message_id: msg.message_id.clone(),
                            server_ts: r.server_ts,
                            queued: r.queued,
                        },
                    ))
                }
                // A first attempt died half-way: finish it with its server time.
                Some(r) => (r.server_ts, true),
                None => {
                    return Err(ApiError::unavailable(
                        "the send's record expired while it was retried; retry",
                    ))
                }
            },
            Err(e) => return Err(e.into()),
        };
        let ttl = server_ts / 1000 + limits.queue_ttl_secs;
        let mid_hex = hex::encode(message_id);
        let items: Vec<QueueItem> = targets
            .iter()
            .map(|d| QueueItem {
                device_key: device_key(&d.user, d.device_id),
                sort: format!(
                    "{server_ts:013}:{mid_hex}:{}:{}",
                    caller.user,
                    caller.device_id()
                ),
                message_id: message_id.to_vec(),
                sender_user: caller.user.clone(),
                sender_device: caller.device_id(),
                body: msg.body.0.clone(),
                key: Vec::new(),
                server_ts,
                ttl,
                group: Some(group_id.to_vec()),
            })
            .collect();
        self.store.enqueue_fan_out(&items).await?;
        self.store
            .complete_group_send(&send_key, server_ts, items.len(), ttl)
            .await?;

        // Persisted; now push to the devices that are online. A resumed send may have pushed
        // already: it only hints a sync, so no device is handed the envelope twice.
        let pushes: Vec<(&ActiveDevice, &str, Push)> = targets
            .iter()
            .zip(&items)
            .filter_map(|(d, item)| {
                let conn = d.connection_id.as_deref()?;
                let push = if resumed {
                    Push::Sync
                } else {
                    Push::Envelope {
                        envelope: super::messages::envelope_of(item),
                    }
                };
                Some((*d, conn, push))
            })
            .collect();
        self.push_all(&pushes).await;
        Ok(HttpResponse::ok(
            200,
            &SendResponse {
                message_id: msg.message_id.clone(),
                server_ts,
                queued: items.len(),
            },
        ))
    }

    /// Pushes to many devices, a bounded number at a time.
    async fn push_all(&self, pushes: &[(&ActiveDevice, &str, Push)]) -> Vec<PushOutcome> {
        let posts: Vec<_> = pushes
            .iter()
            .map(|(d, conn, push)| self.push_to_device(&d.user, d.device_id, conn, push))
            .collect();
        stream::iter(posts)
            .buffer_unordered(PUSH_CONCURRENCY)
            .collect()
            .await
    }

    /// An ephemeral group message (typing): pushed to the online member devices, never stored,
    /// dropped when its signed time is older than the limit.
    async fn send_group_ephemeral(
        &self,
        caller: &Caller,
        msg: &SendRequest,
        group_id: &[u8; 16],
        targets: &[&ActiveDevice],
        now: u64,
    ) -> HttpResponse {
        let fresh =
            now.saturating_sub(caller.auth.ts_ms) <= self.config.limits.ephemeral_max_age_ms;
        let mut pushed = 0usize;
        if fresh {
            let envelope = Envelope {
                id: String::new(),
                message_id: msg.message_id.clone(),
                sender: DeviceRef {
                    user: caller.user.clone(),
                    device_id: caller.device_id(),
                },
                body: msg.body.clone(),
                key: B64::default(),
                server_ts: now,
                group: Some(B64(group_id.to_vec())),
            };
            let pushes: Vec<(&ActiveDevice, &str, Push)> = targets
                .iter()
                .filter_map(|d| {
                    let conn = d.connection_id.as_deref()?;
                    Some((
                        *d,
                        conn,
                        Push::Ephemeral {
                            envelope: envelope.clone(),
                        },
                    ))
                })
                .collect();
            pushed = self
                .push_all(&pushes)
                .await
                .iter()
                .filter(|o| **o == PushOutcome::Sent)
                .count();
        }
        tracing::debug!(pushed, fresh, "ephemeral group message");
        HttpResponse::ok(
            200,
            &SendResponse {
                message_id: msg.message_id.clone(),
                server_ts: now,
                queued: 0,
            },
        )
    }
}
