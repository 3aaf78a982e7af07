//! A server that answers garbage (issue #9, "The CLI shows bad server answers as clear
//! errors"): a tiny local HTTP server stands in for a hostile or broken server (not for AWS);
//! each bad answer must become a readable error, never a panic or a silent success.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Read, Write};
use std::net::TcpListener;

use cipherpost_client::{Client, ClientError};
use tempfile::TempDir;

/// Serves `answer` (a whole HTTP response) to every connection; returns the endpoint.
fn serve(answer: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 65536];
            let _ = s.read(&mut buf);
            let _ = s.write_all(answer.as_bytes());
        }
    });
    format!("http://{addr}")
}

async fn register_against(answer: &'static str) -> ClientError {
    let dir = TempDir::new().unwrap();
    let mut c = Client::open(dir.path(), &serve(answer), None).unwrap();
    c.register("hostile-test")
        .await
        .expect_err("a garbage answer is not a success")
}

#[tokio::test]
async fn garbage_answers_are_clear_errors() {
    let cases: [(&str, &'static str, &str); 4] = [
        (
            "a 502 HTML page",
            "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: 37\r\nconnection: close\r\n\r\n<html><h1>502 Bad Gateway</h1></html>",
            "502",
        ),
        (
            "a 400 that is not JSON",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\nconnection: close\r\n\r\nnot json!!!",
            "not json!!!",
        ),
        (
            "a 200 whose body is garbage",
            "HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\ngarbage",
            "garbage",
        ),
        (
            "a 200 naming another account",
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 32\r\nconnection: close\r\n\r\n{\"user\":\"mallory\",\"device_id\":7}",
            "not this registration",
        ),
    ];
    for (what, answer, expect) in cases {
        let e = register_against(answer).await;
        let text = e.to_string();
        assert!(
            text.contains(expect),
            "{what}: {text:?} does not say {expect:?}"
        );
        assert!(!text.trim().is_empty(), "{what}: empty error");
    }
}
