//! Groups: membership through the server's group routes, messages sealed once with this
//! device's sender key (PROTOCOL.md, "Sender keys") and fanned out by the server, sender keys
//! handed to every member device over the pairwise sessions, and a new sender key whenever a
//! member or one of its devices leaves.
//!
//! Rotation is lazy but complete: when this device learns that the membership shrank (from a
//! group route's answer, a 409 `group_changed`, or a member's group update), it marks the group,
//! and the next message it seals uses a new key id that only the remaining member devices are
//! given. Nothing is ever sealed for a group under a key a departed member holds.

use std::collections::{BTreeMap, BTreeSet};

use cipherpost_protocol::{
    DeviceAddress, DeviceId, GroupId, GroupSenderKeys, MessageId, OwnSenderKey, SenderKeyError,
    SenderKeyRecord, UserId,
};
use rand_core::OsRng;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{arr, b64, dev, queue_content, unb64, Client, Event, Me, MAX_MISMATCH_RETRIES};
use crate::{
    api::{
        devices_digest, AddMembersRequest, CreateGroupRequest, DeviceRef, Envelope, ErrorBody,
        Group, GroupMember, GroupSend, LeaveGroupRequest, SendRequest, B64,
    },
    content::Content,
    error::ClientError,
    now_ms, store,
};

/// The conversation a group's messages are filed under (user ids cannot contain `:`).
pub(crate) fn conversation(group_hex: &str) -> String {
    format!("group:{group_hex}")
}

/// A group as this device knows it.
#[derive(Debug, Clone, Serialize)]
pub struct GroupInfo {
    /// The group id (hex).
    pub group_id: String,
    /// Its name, as the members' end-to-end encrypted group updates set it.
    pub name: String,
    /// The membership version the server last reported.
    pub version: u64,
    /// The members and which of them are admins.
    pub members: Vec<GroupMember>,
    /// How many devices a group message goes to.
    pub devices: usize,
    /// False once this account left or was removed.
    pub active: bool,
}

/// The stored view of one group.
struct LocalGroup {
    name: String,
    version: u64,
    members: Vec<GroupMember>,
    devices: Vec<DeviceRef>,
    rotate: bool,
    active: bool,
}

impl LocalGroup {
    fn info(&self, group_hex: &str) -> GroupInfo {
        GroupInfo {
            group_id: group_hex.to_string(),
            name: self.name.clone(),
            version: self.version,
            members: self.members.clone(),
            devices: self.devices.len(),
            active: self.active,
        }
    }

    fn is_member(&self, user: &str) -> bool {
        self.members.iter().any(|m| m.user == user)
    }
}

fn load_group(conn: &Connection, group_hex: &str) -> Result<Option<LocalGroup>, ClientError> {
    let row: Option<(String, i64, String, String, i64, i64)> = conn
        .query_row(
            "SELECT name, version, members, devices, rotate, active FROM groups WHERE group_id = ?1",
            [group_hex],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )
        .optional()?;
    let Some((name, version, members, devices, rotate, active)) = row else {
        return Ok(None);
    };
    let corrupt = |e: serde_json::Error| ClientError::Internal(format!("stored group: {e}"));
    Ok(Some(LocalGroup {
        name,
        version: version as u64,
        members: serde_json::from_str(&members).map_err(corrupt)?,
        devices: serde_json::from_str(&devices).map_err(corrupt)?,
        rotate: rotate != 0,
        active: active != 0,
    }))
}

/// Stores the server's view of a group (never going back to an older version). A member or a
/// member device that is gone makes this device start a new sender key before its next group
/// message and forget the departed devices' sender keys. Returns whether anything changed.
fn save_group(conn: &Connection, me: &Me, group: &Group) -> Result<bool, ClientError> {
    let gid = arr::<16>(&group.group_id.0, "group id")?;
    let hex_id = hex::encode(gid);
    let old = load_group(conn, &hex_id)?;
    if old.as_ref().is_some_and(|o| o.version > group.version) {
        return Ok(false);
    }
    let users: BTreeSet<&str> = group.members.iter().map(|m| m.user.as_str()).collect();
    let devices: BTreeSet<(&str, u32)> = group
        .devices
        .iter()
        .map(|d| (d.user.as_str(), d.device_id))
        .collect();
    let mut shrank = false;
    if let Some(old) = &old {
        for d in &old.devices {
            if !devices.contains(&(d.user.as_str(), d.device_id)) {
                shrank = true;
                conn.execute(
                    "DELETE FROM sender_keys WHERE group_id = ?1 AND sender_user = ?2 AND sender_device = ?3",
                    params![hex_id, d.user, d.device_id],
                )?;
                conn.execute(
                    "DELETE FROM sender_key_sent WHERE group_id = ?1 AND user = ?2 AND device_id = ?3",
                    params![hex_id, d.user, d.device_id],
                )?;
            }
        }
        for m in &old.members {
            if !users.contains(m.user.as_str()) {
                shrank = true;
                conn.execute(
                    "DELETE FROM sender_keys WHERE group_id = ?1 AND sender_user = ?2",
                    params![hex_id, m.user],
                )?;
            }
        }
    }
    let active = users.contains(me.user.as_str());
    if !active {
        forget_group_keys(conn, &hex_id)?;
    }
    conn.execute(
        "INSERT INTO groups (group_id, version, members, devices, rotate, active)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(group_id) DO UPDATE SET version = excluded.version, members = excluded.members,
             devices = excluded.devices, rotate = (rotate OR excluded.rotate), active = excluded.active",
        params![
            hex_id,
            group.version as i64,
            to_json(&group.members)?,
            to_json(&group.devices)?,
            shrank as i64,
            active as i64
        ],
    )?;
    Ok(old.is_none_or(|o| o.version != group.version || o.active != active))
}

/// JSON text for the `groups` columns.
fn to_json<T: Serialize>(v: &T) -> Result<String, ClientError> {
    serde_json::to_string(v).map_err(|e| ClientError::Internal(e.to_string()))
}

/// This device left the group or was removed: its own and every received sender key go.
fn forget_group_keys(conn: &Connection, group_hex: &str) -> Result<(), ClientError> {
    for sql in [
        "DELETE FROM own_sender_keys WHERE group_id = ?1",
        "DELETE FROM sender_keys WHERE group_id = ?1",
        "DELETE FROM sender_key_sent WHERE group_id = ?1",
    ] {
        conn.execute(sql, [group_hex])?;
    }
    Ok(())
}

fn group_id_from_hex(group_hex: &str) -> Result<GroupId, ClientError> {
    let bytes = hex::decode(group_hex)
        .map_err(|_| ClientError::Usage(format!("{group_hex} is not a group id")))?;
    Ok(GroupId(arr::<16>(&bytes, "group id")?))
}

fn device_address(user: &str, device: u32) -> Result<DeviceAddress, ClientError> {
    let user = UserId::new(user).map_err(ClientError::protocol)?;
    let device = DeviceId::new(device).map_err(ClientError::protocol)?;
    Ok(DeviceAddress::new(user, device))
}

/// The stored sender keys of one sending device in one group.
fn load_sender_keys(
    conn: &Connection,
    group_hex: &str,
    sender: &DeviceRef,
) -> Result<GroupSenderKeys, ClientError> {
    let mut keys = GroupSenderKeys::new();
    let record: Option<Vec<u8>> = conn
        .query_row(
            "SELECT record FROM sender_keys WHERE group_id = ?1 AND sender_user = ?2 AND sender_device = ?3",
            params![group_hex, sender.user, sender.device_id],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(record) = record {
        keys.insert_record(SenderKeyRecord::from_bytes(&record).map_err(ClientError::protocol)?);
    }
    Ok(keys)
}

fn save_sender_keys(
    conn: &Connection,
    group_hex: &str,
    keys: &GroupSenderKeys,
    group: &GroupId,
    sender: &DeviceRef,
) -> Result<(), ClientError> {
    let addr = device_address(&sender.user, sender.device_id)?;
    if let Some(record) = keys.record(group, &addr) {
        conn.execute(
            "INSERT OR REPLACE INTO sender_keys (group_id, sender_user, sender_device, record) VALUES (?1, ?2, ?3, ?4)",
            params![group_hex, sender.user, sender.device_id, &record.to_bytes()[..]],
        )?;
    }
    Ok(())
}

/// Processes a sender key distribution that arrived over the pairwise session with `from`
/// (inside the caller's transaction). Membership is checked when a group message is opened.
pub(super) fn receive_distribution(
    conn: &Connection,
    from: &DeviceRef,
    group_hex: &str,
    distribution: &str,
) -> Result<(), ClientError> {
    let bytes = unb64(distribution, "sender key distribution")?;
    let gid = group_id_from_hex(group_hex)
        .map_err(|_| ClientError::Content("a sender key names an invalid group id".into()))?;
    let dist = cipherpost_protocol::SenderKeyDistribution::from_bytes(&bytes)
        .map_err(ClientError::protocol)?;
    if dist.group_id() != gid {
        return Err(ClientError::Content(
            "a sender key names another group than its message".into(),
        ));
    }
    let mut keys = load_sender_keys(conn, group_hex, from)?;
    let addr = device_address(&from.user, from.device_id)?;
    keys.process_distribution(&addr, &bytes, now_ms())
        .map_err(ClientError::protocol)?;
    save_sender_keys(conn, group_hex, &keys, &gid, from)
}

/// Puts a group message in the outbox: sealed with the sender key only when it is sent, so
/// that the sender key handed to new members and the membership it is sealed for are current.
fn queue_group_content(
    conn: &Connection,
    me: &Me,
    group_hex: &str,
    content: &Content,
) -> Result<String, ClientError> {
    let id = hex::encode(MessageId::generate(&mut OsRng).as_bytes());
    conn.execute(
        "INSERT INTO outbox (message_id, to_user, body, body_key, group_id, content) VALUES (?1, ?2, x'', x'', ?3, ?4)",
        params![id, conversation(group_hex), group_hex, content.encode()?],
    )?;
    if let Content::GroupText { text, sent_ms, .. } = content {
        conn.execute(
            "INSERT INTO messages (message_id, conversation, outgoing, sender_user, sender_device, text, sent_ms, state)
             VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, 'pending')",
            params![id, conversation(group_hex), me.user.as_str(), dev(me.device), text, *sent_ms as i64],
        )?;
    }
    Ok(id)
}

impl Client {
    fn group_path(group_hex: &str) -> Result<String, ClientError> {
        let gid = group_id_from_hex(group_hex)?;
        Ok(format!("/v1/groups/{}", b64(&gid.0)))
    }

    /// Stores a group answer and returns what this device now knows.
    fn store_group(&self, group: &Group) -> Result<GroupInfo, ClientError> {
        let me = self.me()?;
        let hex_id = hex::encode(&group.group_id.0);
        let tx = self.store.write_tx()?;
        save_group(&tx, me, group)?;
        let g = load_group(&tx, &hex_id)?
            .ok_or_else(|| ClientError::Internal("group not stored".into()))?;
        tx.commit()?;
        Ok(g.info(&hex_id))
    }

    /// Asks the server for a group this account is in and stores it.
    async fn fetch_group(&self, group_hex: &str) -> Result<GroupInfo, ClientError> {
        let group: Group = self
            .call_json("GET", &Self::group_path(group_hex)?, None)
            .await?;
        self.store_group(&group)
    }

    /// How a conversation is shown: a contact's user id, or `#name` for a group.
    pub fn conversation_title(&self, conversation: &str) -> String {
        let Some(id) = conversation.strip_prefix("group:") else {
            return conversation.to_string();
        };
        match load_group(&self.store.conn, id) {
            Ok(Some(g)) if !g.name.is_empty() => format!("#{}", g.name),
            _ => format!("#{}", id.chars().take(8).collect::<String>()),
        }
    }

    /// A group by hex id or by (unique) name among this device's groups.
    pub fn resolve_group(&self, name_or_id: &str) -> Result<String, ClientError> {
        let lower = name_or_id.to_ascii_lowercase();
        if load_group(&self.store.conn, &lower)?.is_some() {
            return Ok(lower);
        }
        let mut st = self
            .store
            .conn
            .prepare("SELECT group_id FROM groups WHERE name = ?1 AND active = 1")?;
        let ids = st
            .query_map([name_or_id], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        match ids.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(ClientError::Usage(format!(
                "no group named {name_or_id} (see `cipherpost group list`)"
            ))),
            _ => Err(ClientError::Usage(format!(
                "several groups are named {name_or_id}; use the group id (see `cipherpost group list`)"
            ))),
        }
    }

    /// Creates a group with this account as its admin and `members`, and queues its name for
    /// them (end-to-end encrypted). Call [`Client::flush_outbox`] to send.
    pub async fn group_create(
        &mut self,
        name: &str,
        members: &[String],
    ) -> Result<GroupInfo, ClientError> {
        self.linked_me()?;
        for m in members {
            UserId::new(m).map_err(|_| ClientError::Usage(format!("{m} is not a user id")))?;
        }
        let gid = GroupId::generate(&mut OsRng);
        let req = CreateGroupRequest {
            group_id: B64(gid.0.to_vec()),
            members: members.to_vec(),
        };
        let group: Group = self
            .call_json("POST", "/v1/groups", Some(Self::json(&req)?))
            .await?;
        if group.group_id.0 != gid.0 {
            return Err(ClientError::Internal(
                "the server answered another group".into(),
            ));
        }
        self.store_group(&group)?;
        self.set_group_name(&hex::encode(gid.0), name)
    }

    /// Renames the group for every member (an encrypted group update).
    pub fn set_group_name(
        &mut self,
        group_hex: &str,
        name: &str,
    ) -> Result<GroupInfo, ClientError> {
        let me = self.linked_me()?;
        let tx = self.store.write_tx()?;
        let g = load_group(&tx, group_hex)?
            .ok_or_else(|| ClientError::Usage("unknown group".into()))?;
        tx.execute(
            "UPDATE groups SET name = ?2 WHERE group_id = ?1",
            params![group_hex, name],
        )?;
        queue_group_content(
            &tx,
            me,
            group_hex,
            &Content::GroupUpdate {
                group_id: group_hex.to_string(),
                name: name.to_string(),
            },
        )?;
        tx.commit()?;
        Ok(GroupInfo {
            name: name.to_string(),
            ..g.info(group_hex)
        })
    }

    /// After a membership change: store it and tell the members (the update also hands the
    /// name to new members).
    fn group_changed(&mut self, group: &Group) -> Result<GroupInfo, ClientError> {
        let info = self.store_group(group)?;
        if info.active {
            let name = info.name.clone();
            self.set_group_name(&info.group_id, &name)
        } else {
            Ok(info)
        }
    }

    /// Adds members (admins only).
    pub async fn group_add(
        &mut self,
        group_hex: &str,
        users: &[String],
    ) -> Result<GroupInfo, ClientError> {
        self.linked_me()?;
        let req = AddMembersRequest {
            users: users.to_vec(),
        };
        let path = format!("{}/members", Self::group_path(group_hex)?);
        let group: Group = self
            .call_json("POST", &path, Some(Self::json(&req)?))
            .await?;
        self.group_changed(&group)
    }

    /// Removes a member (admins only); this device's next group message uses a new sender key.
    pub async fn group_remove(
        &mut self,
        group_hex: &str,
        user: &str,
    ) -> Result<GroupInfo, ClientError> {
        self.linked_me()?;
        let path = format!("{}/members/{user}", Self::group_path(group_hex)?);
        let group: Group = self.call_json("DELETE", &path, None).await?;
        self.group_changed(&group)
    }

    /// Makes a member an admin (`admin`) or a plain member (admins only).
    pub async fn group_set_admin(
        &mut self,
        group_hex: &str,
        user: &str,
        admin: bool,
    ) -> Result<GroupInfo, ClientError> {
        self.linked_me()?;
        let path = format!("{}/admins/{user}", Self::group_path(group_hex)?);
        let method = if admin { "PUT" } else { "DELETE" };
        let group: Group = self.call_json(method, &path, None).await?;
        self.store_group(&group)
    }

    /// Leaves the group (the last admin names a `successor`). This device forgets the group's
    /// sender keys.
    pub async fn group_leave(
        &mut self,
        group_hex: &str,
        successor: Option<&str>,
    ) -> Result<(), ClientError> {
        self.linked_me()?;
        let req = LeaveGroupRequest {
            successor: successor.map(str::to_string),
        };
        let path = format!("{}/leave", Self::group_path(group_hex)?);
        let (status, bytes) = self
            .call(None, "POST", &path, Some(Self::json(&req)?))
            .await?;
        if !(200..300).contains(&status) {
            return Err(Self::server_error(status, &bytes));
        }
        let tx = self.store.write_tx()?;
        tx.execute(
            "UPDATE groups SET active = 0 WHERE group_id = ?1",
            [group_hex],
        )?;
        forget_group_keys(&tx, group_hex)?;
        tx.commit()?;
        Ok(())
    }

    /// The group as the server has it now (stored), or as last known once this account is no
    /// longer a member.
    pub async fn group_info(&mut self, group_hex: &str) -> Result<GroupInfo, ClientError> {
        self.linked_me()?;
        match self.fetch_group(group_hex).await {
            Ok(info) => Ok(info),
            Err(ClientError::Server { status: 404, .. }) => {
                let tx = self.store.write_tx()?;
                tx.execute(
                    "UPDATE groups SET active = 0 WHERE group_id = ?1",
                    [group_hex],
                )?;
                forget_group_keys(&tx, group_hex)?;
                let g = load_group(&tx, group_hex)?
                    .ok_or_else(|| ClientError::Usage("unknown group".into()))?;
                tx.commit()?;
                Ok(g.info(group_hex))
            }
            Err(e) => Err(e),
        }
    }

    /// Every group this device knows.
    pub fn groups(&self) -> Result<Vec<GroupInfo>, ClientError> {
        let ids: Vec<String> = {
            let mut st = self
                .store
                .conn
                .prepare("SELECT group_id FROM groups ORDER BY name, group_id")?;
            let ids = st
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<_>, _>>()?;
            ids
        };
        let mut out = Vec::new();
        for id in ids {
            if let Some(g) = load_group(&self.store.conn, &id)? {
                out.push(g.info(&id));
            }
        }
        Ok(out)
    }

    /// Stores a text for the group and puts it in the outbox; returns its id (hex).
    pub fn queue_group_text(&mut self, group_hex: &str, text: &str) -> Result<String, ClientError> {
        let me = self.linked_me()?;
        let tx = self.store.write_tx()?;
        let g = load_group(&tx, group_hex)?
            .ok_or_else(|| ClientError::Usage("unknown group".into()))?;
        if !g.active {
            return Err(ClientError::Usage(
                "this account is no longer a member of that group".into(),
            ));
        }
        let id = queue_group_content(
            &tx,
            me,
            group_hex,
            &Content::GroupText {
                group_id: group_hex.to_string(),
                text: text.to_string(),
                sent_ms: now_ms(),
            },
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// Makes sure every member device the group lists holds this device's current sender key:
    /// starts a new key when the membership shrank, then queues the key for every member
    /// (this account included, for its other devices) that has a device without it, over the
    /// pairwise sessions, and delivers those messages now.
    async fn distribute_sender_key(&mut self, group_hex: &str) -> Result<(), ClientError> {
        let gid = group_id_from_hex(group_hex)?;
        let queued: Vec<(i64, String)> = {
            let me = self.me()?;
            let me_user = me.user.as_str().to_string();
            let me_device = me.device.get();
            let tx = self.store.write_tx()?;
            let g = load_group(&tx, group_hex)?
                .ok_or_else(|| ClientError::Internal("unknown group".into()))?;
            let stored: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT state FROM own_sender_keys WHERE group_id = ?1",
                    [group_hex],
                    |r| r.get(0),
                )
                .optional()?;
            let mut own = match stored {
                Some(s) => OwnSenderKey::from_bytes(&s).map_err(ClientError::protocol)?,
                None => {
                    OwnSenderKey::generate(&mut OsRng, gid, device_address(&me_user, me_device)?)
                }
            };
            if g.rotate {
                own = own.rotate(&mut OsRng);
                tx.execute(
                    "DELETE FROM sender_key_sent WHERE group_id = ?1",
                    [group_hex],
                )?;
                tx.execute(
                    "UPDATE groups SET rotate = 0 WHERE group_id = ?1",
                    [group_hex],
                )?;
                tracing::info!(group = group_hex, "new sender key after a member left");
            }
            tx.execute(
                "INSERT OR REPLACE INTO own_sender_keys (group_id, state) VALUES (?1, ?2)",
                params![group_hex, &own.to_bytes()[..]],
            )?;
            let key_id = i64::from(own.key_id());
            let mut lacking: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            for d in &g.devices {
                if d.user == me_user && d.device_id == me_device {
                    continue;
                }
                let has: Option<i64> = tx
                    .query_row(
                        "SELECT key_id FROM sender_key_sent WHERE group_id = ?1 AND user = ?2 AND device_id = ?3",
                        params![group_hex, d.user, d.device_id],
                        |r| r.get(0),
                    )
                    .optional()?;
                if has != Some(key_id) {
                    lacking.entry(d.user.clone()).or_default().push(d.device_id);
                }
            }
            let distribution = b64(&own.distribution());
            let mut queued = Vec::new();
            for (user, devices) in lacking {
                let content = Content::SenderKey {
                    group_id: group_hex.to_string(),
                    distribution: distribution.clone(),
                };
                let id = queue_content(&tx, me, &user, &content)?;
                let seq: i64 =
                    tx.query_row("SELECT seq FROM outbox WHERE message_id = ?1", [&id], |r| {
                        r.get(0)
                    })?;
                // Recorded now: the outbox delivers it (or reports why not) before anything
                // sealed after it, so it is never sent twice for one key.
                for d in devices {
                    tx.execute(
                        "INSERT OR REPLACE INTO sender_key_sent (group_id, user, device_id, key_id) VALUES (?1, ?2, ?3, ?4)",
                        params![group_hex, user, d, key_id],
                    )?;
                }
                queued.push((seq, user));
            }
            tx.commit()?;
            queued
        };
        for (seq, user) in queued {
            match self.deliver(seq, &user).await {
                Ok(()) => {}
                // That member's key changed: its devices do not get our key until the change
                // is accepted (the distribution waits in the outbox).
                Err(ClientError::KeyChanged(u)) => {
                    tracing::warn!(user = %u, "sender key held back: the member's key changed");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends one group message of the outbox: the sender key first where it is lacking, then
    /// the message sealed for the membership the server has; a 409 `group_changed` stores the
    /// new membership and seals again (with a new key when someone left).
    pub(super) async fn deliver_group(
        &mut self,
        seq: i64,
        group_hex: &str,
    ) -> Result<(), ClientError> {
        let gid = group_id_from_hex(group_hex)?;
        if load_group(&self.store.conn, group_hex)?.is_none() {
            self.fetch_group(group_hex).await?;
        }
        for _ in 0..MAX_MISMATCH_RETRIES {
            let g = load_group(&self.store.conn, group_hex)?
                .ok_or_else(|| ClientError::Internal("unknown group".into()))?;
            if !g.active {
                return Err(ClientError::Server {
                    status: 403,
                    code: "not_a_member".into(),
                    message: "this account is no longer a member of the group".into(),
                });
            }
            self.distribute_sender_key(group_hex).await?;
            let (message_id, body) = {
                let tx = self.store.write_tx()?;
                let row: Option<(String, Vec<u8>, Option<Vec<u8>>)> = tx
                    .query_row(
                        "SELECT message_id, body, content FROM outbox WHERE seq = ?1",
                        [seq],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                let Some((message_id, mut body, content)) = row else {
                    return Ok(()); // another process delivered it
                };
                if body.is_empty() {
                    let content = content.ok_or_else(|| {
                        ClientError::Internal("group message without content".into())
                    })?;
                    let mid = MessageId(arr::<16>(
                        &hex::decode(&message_id)
                            .map_err(|e| ClientError::Internal(e.to_string()))?,
                        "message id",
                    )?);
                    let state: Vec<u8> = tx.query_row(
                        "SELECT state FROM own_sender_keys WHERE group_id = ?1",
                        [group_hex],
                        |r| r.get(0),
                    )?;
                    let mut own =
                        OwnSenderKey::from_bytes(&state).map_err(ClientError::protocol)?;
                    body = match own.encrypt(&mid, &content) {
                        Ok(b) => b,
                        Err(SenderKeyError::ChainExhausted) => {
                            tx.execute(
                                "UPDATE groups SET rotate = 1 WHERE group_id = ?1",
                                [group_hex],
                            )?;
                            tx.commit()?;
                            continue;
                        }
                        Err(e) => return Err(ClientError::protocol(e)),
                    };
                    // The advanced chain is stored with the sealed bytes before they leave; a
                    // retry resends exactly these bytes.
                    tx.execute(
                        "INSERT OR REPLACE INTO own_sender_keys (group_id, state) VALUES (?1, ?2)",
                        params![group_hex, &own.to_bytes()[..]],
                    )?;
                    tx.execute(
                        "UPDATE outbox SET body = ?2, attempts = attempts + 1 WHERE seq = ?1",
                        params![seq, body],
                    )?;
                }
                tx.commit()?;
                (message_id, body)
            };
            let req = SendRequest {
                message_id: B64(
                    hex::decode(&message_id).map_err(|e| ClientError::Internal(e.to_string()))?
                ),
                to: None,
                group: Some(GroupSend {
                    group_id: B64(gid.0.to_vec()),
                    version: g.version,
                    devices_digest: B64(devices_digest(&g.devices).to_vec()),
                }),
                body: B64(body),
                envelopes: Vec::new(),
                ephemeral: false,
            };
            let (status, bytes) = self
                .call(None, "PUT", "/v1/messages", Some(Self::json(&req)?))
                .await?;
            if (200..300).contains(&status) {
                return self.outbox_sent(seq, &message_id, &bytes);
            }
            let err: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
            if status == 409 && err.error == "group_changed" {
                tracing::info!(group = group_hex, "group membership changed; sealing again");
                match &err.group {
                    Some(current) if current.group_id.0 == gid.0 => {
                        self.store_group(current)?;
                    }
                    _ => {
                        self.fetch_group(group_hex).await?;
                    }
                }
                // Sealed again for the new membership (a new member gets the current key, so
                // the old bytes would not open for it).
                self.store
                    .conn
                    .execute("UPDATE outbox SET body = x'' WHERE seq = ?1", [seq])?;
                continue;
            }
            if status == 404 || (status == 403 && err.error == "not_a_member") {
                let tx = self.store.write_tx()?;
                tx.execute(
                    "UPDATE groups SET active = 0 WHERE group_id = ?1",
                    [group_hex],
                )?;
                forget_group_keys(&tx, group_hex)?;
                tx.commit()?;
            }
            return Err(Self::server_error(status, &bytes));
        }
        Err(ClientError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason: "the group's membership kept changing; will retry".into(),
        })
    }

    /// Opens a group envelope: the sender must be a member as the server says (asked once
    /// when this device does not know it as one), its sender key must be held (otherwise the
    /// envelope stays queued until the key arrives), and the content must name the group the
    /// signed header names. Returns (ack, events).
    pub(super) async fn process_group_envelope(
        &mut self,
        env: &Envelope,
        group: &B64,
        ephemeral: bool,
    ) -> Result<(bool, Vec<Event>), ClientError> {
        let Ok(gid) = arr::<16>(&group.0, "group id").map(GroupId) else {
            return Ok((true, Vec::new()));
        };
        if ephemeral {
            return Ok((false, Vec::new()));
        }
        let group_hex = hex::encode(gid.0);
        let sender = &env.sender;
        let known = load_group(&self.store.conn, &group_hex)?;
        if !known.as_ref().is_some_and(|g| g.is_member(&sender.user)) {
            match self.fetch_group(&group_hex).await {
                Ok(_) => {}
                Err(ClientError::Server { status: 404, .. }) => {
                    self.store
                        .notice("dropped a message of a group this account is not in")?;
                    return Ok((true, Vec::new()));
                }
                Err(e) => return Err(e),
            }
        }
        let g = load_group(&self.store.conn, &group_hex)?
            .ok_or_else(|| ClientError::Internal("group not stored".into()))?;
        if !g.is_member(&sender.user) {
            self.store.notice(&format!(
                "dropped a group message from {}, who is not a member",
                sender.user
            ))?;
            return Ok((true, Vec::new()));
        }
        let (Ok(mid), Ok(addr)) = (
            arr::<16>(&env.message_id.0, "message id").map(MessageId),
            device_address(&sender.user, sender.device_id),
        ) else {
            return Ok((true, Vec::new()));
        };
        let me_user = self.me()?.user.as_str().to_string();
        let id = hex::encode(mid.as_bytes());
        let from_self = sender.user == me_user;
        let tx = self.store.write_tx()?;
        let mut keys = load_sender_keys(&tx, &group_hex, sender)?;
        let opened = match keys.decrypt(&addr, &mid, &env.body.0, now_ms()) {
            Ok(d) => d,
            Err(SenderKeyError::UnknownKey { .. }) => {
                // Its sender key travels separately and may come later: keep it queued.
                drop(tx);
                self.awaiting_sender_key = true;
                return Ok((false, Vec::new()));
            }
            Err(e) => {
                drop(tx);
                tracing::warn!(error = %e, sender = %sender.user, "group message refused");
                self.store.notice(&format!(
                    "a group message from {}#{} could not be read: {e}",
                    sender.user, sender.device_id
                ))?;
                return Ok((true, Vec::new()));
            }
        };
        save_sender_keys(&tx, &group_hex, &keys, &gid, sender)?;
        tx.execute(
            "INSERT INTO seen (sender_user, message_id) VALUES (?1, ?2)",
            params![sender.user, id],
        )?;
        let mut events = Vec::new();
        let mut refresh = false;
        match Content::decode(&opened.content) {
            Ok(Content::GroupText {
                group_id,
                text,
                sent_ms,
            }) if group_id == group_hex => {
                let conv = conversation(&group_hex);
                let state = if from_self { "sent" } else { "received" };
                tx.execute(
                    "INSERT OR IGNORE INTO messages (message_id, conversation, outgoing, sender_user, sender_device, text, sent_ms, server_ts, state)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![id, conv, from_self as i64, sender.user, sender.device_id, text, sent_ms as i64, env.server_ts as i64, state],
                )?;
                events.push(Event::Message {
                    conversation: conv,
                    from: format!("{}#{}", sender.user, sender.device_id),
                    text,
                    message_id: id,
                    outgoing: from_self,
                });
            }
            Ok(Content::GroupUpdate { group_id, name }) if group_id == group_hex => {
                tx.execute(
                    "UPDATE groups SET name = ?2 WHERE group_id = ?1",
                    params![group_hex, name],
                )?;
                if !from_self {
                    store::notice(&tx, &format!("{} updated the group {name}", sender.user))?;
                }
                refresh = true;
            }
            Ok(_) => {
                store::notice(
                    &tx,
                    &format!("dropped an unexpected group message from {}", sender.user),
                )?;
            }
            Err(e) => {
                store::notice(
                    &tx,
                    &format!(
                        "a group message from {} could not be read: {e}",
                        sender.user
                    ),
                )?;
            }
        }
        tx.commit()?;
        if refresh {
            // A member changed the group: learn the membership now, so that a removal makes
            // this device's next message use a new sender key.
            if let Err(e) = self.fetch_group(&group_hex).await {
                tracing::info!(error = %e, "group refresh after an update failed");
            }
        }
        Ok((true, events))
    }

    /// Whether this device's stored sender keys open a captured group message (for audits and
    /// tests). Changes nothing; returns the content's text when it opens.
    pub fn try_open_group_message(
        &self,
        group_hex: &str,
        sender: &DeviceRef,
        message_id: &[u8],
        wire: &[u8],
    ) -> Result<String, ClientError> {
        let mid = MessageId(arr::<16>(message_id, "message id")?);
        let addr = device_address(&sender.user, sender.device_id)?;
        let mut keys = load_sender_keys(&self.store.conn, &group_hex.to_ascii_lowercase(), sender)?;
        let opened = keys
            .decrypt(&addr, &mid, wire, now_ms())
            .map_err(ClientError::protocol)?;
        match Content::decode(&opened.content)? {
            Content::GroupText { text, .. } => Ok(text),
            Content::GroupUpdate { name, .. } => Ok(name),
            _ => Ok(String::new()),
        }
    }
}
