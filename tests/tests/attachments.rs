//! Attachments through S3 against the local cloud (issue #6): presigned PUT and GET, the size
//! limit, unknown and malformed ids, authentication. Every answer is checked against
//! api/openapi.yaml by the harness.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use cipherpost_protocol::attachment_object_len;
use cipherpost_tests::{b64, send_raw, Device};
use rand_core::{OsRng, RngCore};
use serde_json::json;

const MIB: u64 = 1024 * 1024;

fn random_id() -> String {
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    b64(&id)
}

#[tokio::test]
async fn presigned_put_then_get_round_trips_an_object_through_s3() {
    let a = Device::registered("att", 1).await;
    let b = Device::registered("att", 1).await;
    let mut object = vec![0u8; 300_000];
    OsRng.fill_bytes(&mut object);

    let r = a
        .request(
            "POST",
            "/v1/attachments",
            Some(&json!({"size": object.len()})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    let id = r.json["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 22);
    assert_eq!(r.json["expires_in"], 900);
    assert_eq!(r.json["method"], "PUT");
    assert_eq!(
        r.json["headers"]["content-length"],
        object.len().to_string()
    );
    let url = r.json["upload_url"].as_str().unwrap().to_owned();
    assert!(url.contains(&format!("/attachments/{id}?")), "{url}");
    // The signature covers Content-Length: S3 holds the upload to the declared size.
    let signed = url
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("X-Amz-SignedHeaders="))
        .unwrap();
    assert!(
        signed.split("%3B").any(|h| h == "content-length"),
        "signed headers: {signed}"
    );
    assert!(url.contains("X-Amz-Expires=900"), "{url}");

    let http = reqwest::Client::new();
    let put = http
        .put(&url)
        .header("content-length", object.len())
        .body(object.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());

    // Any registered device may fetch it: the object is useless without the pointer's key.
    let r = b
        .request("GET", &format!("/v1/attachments/{id}"), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["id"], id.as_str());
    assert_eq!(r.json["size"], object.len() as u64);
    assert_eq!(r.json["expires_in"], 900);
    let got = http
        .get(r.json["download_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert!(got.status().is_success());
    assert_eq!(got.bytes().await.unwrap().as_ref(), object.as_slice());

    // Two declarations never share an id.
    let r2 = a
        .request("POST", "/v1/attachments", Some(&json!({"size": 10})))
        .await;
    assert_eq!(r2.status, 201);
    assert_ne!(r2.json["id"], id.as_str());
}

#[tokio::test]
async fn an_oversized_declaration_is_413_and_the_limit_itself_is_accepted() {
    let a = Device::registered("att", 1).await;
    let max = attachment_object_len(100 * MIB).unwrap();
    let r = a
        .request("POST", "/v1/attachments", Some(&json!({"size": max + 1})))
        .await;
    assert_eq!(r.status, 413, "{:?}", r.json);
    assert_eq!(r.json["error"], "attachment_too_large");
    assert!(r.json.get("upload_url").is_none());
    let r = a
        .request("POST", "/v1/attachments", Some(&json!({"size": u64::MAX})))
        .await;
    assert_eq!(r.status, 413, "{:?}", r.json);
    let r = a
        .request("POST", "/v1/attachments", Some(&json!({"size": max})))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
}

#[tokio::test]
async fn bad_sizes_and_bodies_are_400() {
    let a = Device::registered("att", 1).await;
    for (body, code) in [
        (json!({"size": 0}), "invalid_size"),
        (json!({}), "invalid_field"),
        (json!({"size": "12"}), "invalid_field"),
        (json!({"size": -1}), "invalid_field"),
        (json!({"size": 1.5}), "invalid_field"),
        (json!({"size": 12, "name": "x"}), "invalid_field"),
    ] {
        let r = a.request("POST", "/v1/attachments", Some(&body)).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.json);
        assert_eq!(r.json["error"], code, "{body}");
    }
    let r = a.request("POST", "/v1/attachments", None).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["error"], "invalid_json");
}

#[tokio::test]
async fn unknown_ids_are_404_and_malformed_ids_400() {
    let a = Device::registered("att", 1).await;
    let r = a
        .request("GET", &format!("/v1/attachments/{}", random_id()), None)
        .await;
    assert_eq!(r.status, 404, "{:?}", r.json);
    assert_eq!(r.json["error"], "unknown_attachment");
    for bad in [
        "short",
        "AAAAAAAAAAAAAAAAAAAAAB",   // non-canonical last character
        "AAAAAAAAAAAAAAAAAAAAAAAA", // 18 bytes
        "AAAAAAAAAAAAAAAAAAAA+A",   // standard alphabet
        "a.b",
    ] {
        let r = a
            .request("GET", &format!("/v1/attachments/{bad}"), None)
            .await;
        assert_eq!(r.status, 400, "{bad}: {:?}", r.json);
        assert_eq!(r.json["error"], "invalid_attachment_id", "{bad}");
    }
}

#[tokio::test]
async fn unauthenticated_requests_are_401() {
    let http = reqwest::Client::new();
    let r = send_raw(
        &http,
        "POST",
        "/v1/attachments",
        br#"{"size":10}"#.to_vec(),
        None,
    )
    .await;
    assert_eq!(r.status, 401, "{:?}", r.json);
    let r = send_raw(
        &http,
        "GET",
        &format!("/v1/attachments/{}", random_id()),
        Vec::new(),
        None,
    )
    .await;
    assert_eq!(r.status, 401, "{:?}", r.json);
    // A signature for another body does not authorize this one.
    let a = Device::registered("att", 1).await;
    let auth = a.sign(
        "POST",
        "/v1/attachments",
        br#"{"size":10}"#,
        cipherpost_tests::now_ms(),
    );
    let r = send_raw(
        &http,
        "POST",
        "/v1/attachments",
        br#"{"size":99}"#.to_vec(),
        Some(auth),
    )
    .await;
    assert_eq!(r.status, 401, "{:?}", r.json);
}
