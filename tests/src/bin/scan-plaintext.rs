//! `scan-plaintext`: reads every item of every DynamoDB table and every object of every S3
//! bucket at the configured endpoint (`AWS_ENDPOINT_URL`, as the functions and tests use it)
//! through the real SDK, and looks for plaintext markers: raw, base64 (standard and URL-safe,
//! at any alignment, and whole values decoded) and hex, in string and binary attributes,
//! nested lists, maps and sets included. Exits 1 naming every place a marker was found, 2 when
//! the store could not be read, 0 when it is clean.
//!
//! `./dev test` runs it after each client end-to-end suite: every plaintext those suites send
//! carries `CIPHERPOST-PLAINTEXT-MARKER-6f2d` (the default marker). `--marker TEXT` (repeatable)
//! looks for other markers instead.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use aws_sdk_dynamodb::types::AttributeValue;
use base64::{
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
    Engine,
};

/// The marker every client end-to-end suite puts in its plaintexts.
const DEFAULT_MARKER: &str = "CIPHERPOST-PLAINTEXT-MARKER-6f2d";

/// One marker and the encodings of it that can be searched for inside longer encoded text.
struct Needle {
    marker: Vec<u8>,
    /// `(encoding, fragment)`: the characters every base64 or hex encoding of a text holding
    /// the marker contains, whatever the marker's offset.
    fragments: Vec<(&'static str, Vec<u8>)>,
}

impl Needle {
    fn new(marker: &str) -> Self {
        let m = marker.as_bytes().to_vec();
        let mut fragments = Vec::new();
        for (name, engine) in [
            ("base64", &STANDARD_NO_PAD),
            ("base64url", &URL_SAFE_NO_PAD),
        ] {
            for k in 0..3usize {
                let mut input = vec![0u8; k];
                input.extend_from_slice(&m);
                let enc = engine.encode(&input);
                // Characters that depend on the marker's bits only.
                let start = (8 * k).div_ceil(6);
                let end = 8 * (k + m.len()) / 6;
                fragments.push((name, enc.as_bytes()[start..end].to_vec()));
            }
        }
        fragments.push(("hex", hex::encode(&m).into_bytes()));
        fragments.push(("hex", hex::encode_upper(&m).into_bytes()));
        Self {
            marker: m,
            fragments,
        }
    }

    /// How `data` holds the marker, if it does.
    fn find(&self, data: &[u8]) -> Option<String> {
        if contains(data, &self.marker) {
            return Some("as is".into());
        }
        for (name, f) in &self.fragments {
            if contains(data, f) {
                return Some(format!("{name}-encoded"));
            }
        }
        // A whole value that is base64 of something holding the marker.
        let trimmed: Vec<u8> = data
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            if let Ok(decoded) = engine.decode(&trimmed) {
                if contains(&decoded, &self.marker) {
                    return Some("base64-encoded (whole value)".into());
                }
            }
        }
        None
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every string and binary leaf of an attribute, with its path.
fn leaves<'a>(path: String, v: &'a AttributeValue, out: &mut Vec<(String, &'a [u8])>) {
    match v {
        AttributeValue::S(s) | AttributeValue::N(s) => out.push((path, s.as_bytes())),
        AttributeValue::B(b) => out.push((path, b.as_ref())),
        AttributeValue::Ss(l) | AttributeValue::Ns(l) => {
            for (i, s) in l.iter().enumerate() {
                out.push((format!("{path}[{i}]"), s.as_bytes()));
            }
        }
        AttributeValue::Bs(l) => {
            for (i, b) in l.iter().enumerate() {
                out.push((format!("{path}[{i}]"), b.as_ref()));
            }
        }
        AttributeValue::L(l) => {
            for (i, x) in l.iter().enumerate() {
                leaves(format!("{path}[{i}]"), x, out);
            }
        }
        AttributeValue::M(m) => {
            for (k, x) in m {
                leaves(format!("{path}.{k}"), x, out);
            }
        }
        _ => {}
    }
}

fn describe_key(
    item: &std::collections::HashMap<String, AttributeValue>,
    keys: &[String],
) -> String {
    keys.iter()
        .map(|k| {
            let v = match item.get(k) {
                Some(AttributeValue::S(s) | AttributeValue::N(s)) => {
                    s.chars().take(80).collect::<String>()
                }
                Some(AttributeValue::B(b)) => format!("<{} bytes>", b.as_ref().len()),
                _ => "?".into(),
            };
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

type Found = Vec<String>;

async fn scan_dynamodb(
    sdk: &aws_config::SdkConfig,
    needles: &[Needle],
    found: &mut Found,
) -> Result<(usize, usize), String> {
    let db = aws_sdk_dynamodb::Client::new(sdk);
    let mut tables = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let page = db
            .list_tables()
            .set_exclusive_start_table_name(start.clone())
            .send()
            .await
            .map_err(|e| {
                format!(
                    "ListTables: {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(&e)
                )
            })?;
        tables.extend(page.table_names().iter().cloned());
        match page.last_evaluated_table_name() {
            Some(t) => start = Some(t.to_string()),
            None => break,
        }
    }
    let mut items = 0;
    for table in &tables {
        let keys: Vec<String> = db
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "DescribeTable {table}: {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(&e)
                )
            })?
            .table()
            .map(|t| {
                t.key_schema()
                    .iter()
                    .map(|k| k.attribute_name().to_string())
                    .collect()
            })
            .unwrap_or_default();
        let mut from = None;
        loop {
            let page = db
                .scan()
                .table_name(table)
                .set_exclusive_start_key(from.clone())
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "Scan {table}: {}",
                        aws_sdk_dynamodb::error::DisplayErrorContext(&e)
                    )
                })?;
            for item in page.items() {
                items += 1;
                let mut out = Vec::new();
                for (name, v) in item {
                    leaves(name.clone(), v, &mut out);
                }
                for (path, data) in out {
                    for n in needles {
                        if let Some(how) = n.find(data) {
                            found.push(format!(
                                "DynamoDB table {table}, item ({}), attribute {path}: marker {:?} {how}",
                                describe_key(item, &keys),
                                String::from_utf8_lossy(&n.marker)
                            ));
                        }
                    }
                }
            }
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => from = Some(k.clone()),
                _ => break,
            }
        }
    }
    Ok((tables.len(), items))
}

async fn scan_s3(
    sdk: &aws_config::SdkConfig,
    needles: &[Needle],
    found: &mut Found,
) -> Result<(usize, usize), String> {
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(true)
            .build(),
    );
    let buckets: Vec<String> = s3
        .list_buckets()
        .send()
        .await
        .map_err(|e| {
            format!(
                "ListBuckets: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )
        })?
        .buckets()
        .iter()
        .filter_map(|b| b.name().map(str::to_string))
        .collect();
    let mut objects = 0;
    for bucket in &buckets {
        let mut token = None;
        loop {
            let page = s3
                .list_objects_v2()
                .bucket(bucket)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "ListObjectsV2 {bucket}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(&e)
                    )
                })?;
            for o in page.contents() {
                let Some(key) = o.key() else { continue };
                objects += 1;
                let data = s3
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| {
                        format!(
                            "GetObject {bucket}/{key}: {}",
                            aws_sdk_s3::error::DisplayErrorContext(&e)
                        )
                    })?
                    .body
                    .collect()
                    .await
                    .map_err(|e| format!("GetObject {bucket}/{key}: {e}"))?
                    .into_bytes();
                for n in needles {
                    if let Some(how) = n.find(&data) {
                        found.push(format!(
                            "S3 object s3://{bucket}/{key}: marker {:?} {how}",
                            String::from_utf8_lossy(&n.marker)
                        ));
                    }
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
    }
    Ok((buckets.len(), objects))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut markers = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--marker", Some(m)) if !m.is_empty() => markers.push(m),
            _ => {
                eprintln!(
                    "usage: scan-plaintext [--marker TEXT]...  (default marker {DEFAULT_MARKER})"
                );
                return ExitCode::from(2);
            }
        }
    }
    if markers.is_empty() {
        markers.push(DEFAULT_MARKER.to_string());
    }
    let needles: Vec<Needle> = markers.iter().map(|m| Needle::new(m)).collect();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let mut found = Vec::new();
    let db = scan_dynamodb(&sdk, &needles, &mut found).await;
    let s3 = scan_s3(&sdk, &needles, &mut found).await;
    let ((tables, items), (buckets, objects)) = match (db, s3) {
        (Ok(d), Ok(s)) => (d, s),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("scan-plaintext: could not read the store: {e}");
            return ExitCode::from(2);
        }
    };
    for f in &found {
        println!("PLAINTEXT FOUND: {f}");
    }
    println!(
        "scan-plaintext: {items} items in {tables} tables, {objects} objects in {buckets} buckets: {}",
        if found.is_empty() {
            "no marker found".to_string()
        } else {
            format!("{} places hold a marker", found.len())
        }
    );
    if found.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
