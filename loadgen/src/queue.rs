//! The queue check: a scan of the queue table (through the real DynamoDB client, the endpoint
//! from the environment) for the items of one run.

use std::collections::BTreeSet;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::{err, Err};

/// `(device key, message id hex)` of every item in `table` whose device key starts with
/// `prefix` (the run's accounts) and whose message is one of `ids` (the run's messages, so
/// warm-up messages and receipts are left out). One entry per item: a duplicated item shows
/// twice.
pub(crate) async fn scan(
    table: &str,
    prefix: &str,
    ids: &BTreeSet<String>,
) -> Result<Vec<(String, String)>, Err> {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let db = aws_sdk_dynamodb::Client::new(&config);
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let page = db
            .scan()
            .table_name(table)
            .filter_expression("begins_with(device_key, :p)")
            .expression_attribute_values(":p", AttributeValue::S(prefix.to_string()))
            .projection_expression("device_key, sort")
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| {
                err(format!(
                    "scan {table}: {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(e)
                ))
            })?;
        for item in page.items() {
            let (Some(AttributeValue::S(dk)), Some(AttributeValue::S(sort))) =
                (item.get("device_key"), item.get("sort"))
            else {
                continue;
            };
            // sort = server_ts:message id hex:sender user:sender device
            let Some(id) = sort.split(':').nth(1) else {
                continue;
            };
            if ids.contains(id) {
                out.push((dk.clone(), id.to_string()));
            }
        }
        match page.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => break,
        }
    }
    Ok(out)
}
