//! Snapshots of the stored state a test's own accounts can reach, to prove that a refused
//! request changed nothing (issue #9, "Bad input").
//!
//! A snapshot holds every item, in a canonical text form, of the tables a request can write:
//! `accounts`, `devices`, `sends` and `groups` are scanned with a filter on a tag that every
//! user id of the test contains (so that an item written under a mangled id that still carries
//! the tag is seen too, and other tests' items are not), `prekeys` and `queue` are read by
//! partition for the test's devices (those tables are large on a shared emulator). The
//! `replay` and `limits` tables are left out on purpose: a refused request may be remembered
//! as used (replay) or counted against a rate limit, and both are expected writes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;

use crate::{dynamo, table};

/// One table's items, each in canonical text.
pub type Items = BTreeSet<String>;

/// Every watched table's items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot(pub BTreeMap<&'static str, Items>);

/// The scope of a snapshot: the tag in every user id of the test, and its device keys.
#[derive(Debug, Clone)]
pub struct Scope {
    /// A string every user id of the test contains.
    pub tag: String,
    /// `user#device` of every device of the test.
    pub device_keys: Vec<String>,
}

/// An attribute value as stable text (maps and sets sorted).
pub fn canon(v: &AttributeValue) -> String {
    match v {
        AttributeValue::S(s) => format!("S({s:?})"),
        AttributeValue::N(n) => format!("N({n})"),
        AttributeValue::B(b) => format!("B({:?})", b.as_ref()),
        AttributeValue::Bool(b) => format!("BOOL({b})"),
        AttributeValue::Null(_) => "NULL".into(),
        AttributeValue::L(l) => format!("L[{}]", l.iter().map(canon).collect::<Vec<_>>().join(",")),
        AttributeValue::M(m) => format!("M{{{}}}", item_text(m)),
        AttributeValue::Ss(s) => format!("SS{:?}", s.iter().collect::<BTreeSet<_>>()),
        AttributeValue::Ns(s) => format!("NS{:?}", s.iter().collect::<BTreeSet<_>>()),
        AttributeValue::Bs(s) => format!(
            "BS{:?}",
            s.iter()
                .map(|b| b.as_ref().to_vec())
                .collect::<BTreeSet<_>>()
        ),
        other => format!("{other:?}"),
    }
}

fn item_text(m: &HashMap<String, AttributeValue>) -> String {
    m.iter()
        .map(|(k, v)| (k.clone(), canon(v)))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

async fn scan_containing(
    c: &aws_sdk_dynamodb::Client,
    logical: &str,
    attribute: &str,
    tag: &str,
) -> Items {
    let mut out = Items::new();
    let mut start = None;
    loop {
        let r = c
            .scan()
            .table_name(table(logical))
            .filter_expression("contains(#a, :t)")
            .expression_attribute_names("#a", attribute)
            .expression_attribute_values(":t", AttributeValue::S(tag.to_owned()))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap_or_else(|e| panic!("scan {logical}: {e:?}"));
        out.extend(r.items().iter().map(item_text));
        start = r.last_evaluated_key().cloned();
        if start.is_none() {
            return out;
        }
    }
}

async fn query_partition(
    c: &aws_sdk_dynamodb::Client,
    logical: &str,
    key: &str,
    value: &str,
) -> Items {
    let mut out = Items::new();
    let mut start = None;
    loop {
        let r = c
            .query()
            .table_name(table(logical))
            .key_condition_expression("#k = :v")
            .expression_attribute_names("#k", key)
            .expression_attribute_values(":v", AttributeValue::S(value.to_owned()))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap_or_else(|e| panic!("query {logical}: {e:?}"));
        out.extend(r.items().iter().map(item_text));
        start = r.last_evaluated_key().cloned();
        if start.is_none() {
            return out;
        }
    }
}

impl Scope {
    /// Reads the snapshot.
    pub async fn snapshot(&self) -> Snapshot {
        let c = dynamo().await;
        let mut m = BTreeMap::new();
        m.insert(
            "accounts",
            scan_containing(&c, "accounts", "user", &self.tag).await,
        );
        m.insert(
            "devices",
            scan_containing(&c, "devices", "user", &self.tag).await,
        );
        m.insert(
            "sends",
            scan_containing(&c, "sends", "send_key", &self.tag).await,
        );
        m.insert(
            "groups",
            scan_containing(&c, "groups", "creator", &self.tag).await,
        );
        let mut prekeys = Items::new();
        let mut queue = Items::new();
        for dk in &self.device_keys {
            prekeys.extend(query_partition(&c, "prekeys", "device_key", dk).await);
            queue.extend(query_partition(&c, "queue", "device_key", dk).await);
        }
        m.insert("prekeys", prekeys);
        m.insert("queue", queue);
        Snapshot(m)
    }
}

impl Snapshot {
    /// What changed from `self` to `after`, one line per added or removed item; empty when
    /// nothing did.
    pub fn diff(&self, after: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        for (t, before) in &self.0 {
            let empty = Items::new();
            let now = after.0.get(t).unwrap_or(&empty);
            for gone in before.difference(now) {
                out.push(format!("{t}: removed {gone}"));
            }
            for new in now.difference(before) {
                out.push(format!("{t}: added {new}"));
            }
        }
        out
    }
}
