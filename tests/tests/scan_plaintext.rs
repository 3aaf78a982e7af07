//! `scan-plaintext` can fail: a marker written into a DynamoDB item (raw, inside a map,
//! base64 inside a string, in a binary in a list) and into an S3 object (base64, mid-object)
//! is found and named; once they are deleted, the same scan passes. A fresh random marker keeps
//! the test independent of whatever else the local cloud holds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::{collections::HashMap, process::Command};

use aws_sdk_dynamodb::types::AttributeValue;
use base64::{engine::general_purpose::STANDARD, Engine};
use cipherpost_tests::{dynamo, table};
use rand_core::{OsRng, RngCore};

fn scan(marker: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scan-plaintext"))
        .args(["--marker", marker])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[tokio::test]
async fn the_scanner_finds_a_planted_marker_and_passes_without_it() {
    let marker = format!("scan-test-marker-{:016x}", OsRng.next_u64());
    let (code, out) = scan(&marker);
    assert_eq!(code, Some(0), "clean before planting: {out}");

    let db = dynamo().await;
    let groups = table("groups");
    let key = format!("scan-test-{:08x}", OsRng.next_u32());
    let pk = db
        .describe_table()
        .table_name(&groups)
        .send()
        .await
        .unwrap()
        .table()
        .unwrap()
        .key_schema()[0]
        .attribute_name()
        .to_string();
    let mut nested = HashMap::new();
    nested.insert(
        "note".to_string(),
        AttributeValue::S(format!("before {marker} after")),
    );
    db.put_item()
        .table_name(&groups)
        .item(&pk, AttributeValue::S(key.clone()))
        .item("raw_in_map", AttributeValue::M(nested))
        .item(
            "b64",
            AttributeValue::S(STANDARD.encode(format!("x{marker}yz"))),
        )
        .item(
            "bin",
            AttributeValue::L(vec![AttributeValue::B(
                format!("\u{1}\u{2}{marker}").into_bytes().into(),
            )]),
        )
        .send()
        .await
        .unwrap();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    let bucket =
        std::env::var("CIPHERPOST_BUCKET").unwrap_or_else(|_| "cipherpost-attachments".into());
    let object = format!("attachments/{key}");
    let mut data = vec![0u8; 1000];
    OsRng.fill_bytes(&mut data);
    data.extend_from_slice(STANDARD.encode(format!("ab{marker}")).as_bytes());
    data.extend_from_slice(&[0xff; 100]);
    s3.put_object()
        .bucket(&bucket)
        .key(&object)
        .body(data.into())
        .send()
        .await
        .unwrap();

    let (code, out) = scan(&marker);
    assert_eq!(code, Some(1), "{out}");
    for want in [
        format!(
            "table {groups}, item ({pk}={key}), attribute raw_in_map.note: marker {marker:?} as is"
        ),
        format!(
            "table {groups}, item ({pk}={key}), attribute b64: marker {marker:?} base64-encoded"
        ),
        format!("table {groups}, item ({pk}={key}), attribute bin[0]: marker {marker:?} as is"),
        format!("S3 object s3://{bucket}/{object}: marker {marker:?} base64-encoded"),
    ] {
        assert!(out.contains(&want), "missing {want:?} in:\n{out}");
    }

    db.delete_item()
        .table_name(&groups)
        .key(&pk, AttributeValue::S(key.clone()))
        .send()
        .await
        .unwrap();
    s3.delete_object()
        .bucket(&bucket)
        .key(&object)
        .send()
        .await
        .unwrap();
    let (code, out) = scan(&marker);
    assert_eq!(code, Some(0), "clean again: {out}");
    assert!(out.contains("no marker found"), "{out}");
}
