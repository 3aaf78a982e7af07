//! A small signing test client for end-to-end tests: registers devices, signs requests, opens
//! WebSockets, and reads DynamoDB directly to check stored state. The endpoints come from the
//! environment (`CIPHERPOST_API`, default `http://127.0.0.1:8787`; `AWS_ENDPOINT_URL` for the
//! store), so the same tests run against the local cloud, LocalStack or a deployment.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use cipherpost_backend::api::{
    CreateAccountRequest, LinkDeviceRequest, NewDevice, OneTimePreKeyJson, SignedPreKeyJson, B64,
};
use cipherpost_protocol::{
    AccountKey, ConnectAuth, DeviceCertificate, DeviceId, DeviceIdentity, PreKeyStore, RequestAuth,
    SignedPreKey, UserId,
};
use futures::{SinkExt, StreamExt};
use rand_core::{OsRng, RngCore};
use serde_json::Value;
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

pub mod openapi;
pub mod state;

/// The HTTP API base URL.
pub fn api() -> String {
    std::env::var("CIPHERPOST_API").unwrap_or_else(|_| "http://127.0.0.1:8787".into())
}

/// The WebSocket URL.
pub fn ws_url() -> String {
    std::env::var("CIPHERPOST_WS").unwrap_or_else(|_| "ws://127.0.0.1:8787/ws".into())
}

/// Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A fresh user id no other test run uses.
pub fn fresh_user(prefix: &str) -> String {
    format!("{prefix}-{:08x}", OsRng.next_u32())
}

/// b64 of bytes.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An HTTP answer: status and JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status.
    pub status: u16,
    /// Body (Null when not JSON).
    pub json: Value,
    /// `Retry-After`, if any.
    pub retry_after: Option<String>,
}

/// A device of a test account, with everything it needs to sign and to build sessions.
pub struct Device {
    /// The account.
    pub user: UserId,
    /// The device id.
    pub device_id: DeviceId,
    /// The account key (every device holds it).
    pub account: AccountKey,
    /// The device's identity keys.
    pub identity: DeviceIdentity,
    /// Its certificate.
    pub cert: DeviceCertificate,
    /// Its prekey secrets.
    pub prekeys: PreKeyStore,
    http: reqwest::Client,
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

impl Device {
    /// A new device of `user` (not yet registered), certified by `account`.
    pub fn new(user: &str, account: AccountKey) -> Self {
        let user = UserId::new(user).unwrap();
        let device_id = DeviceId::generate(&mut OsRng);
        let identity = DeviceIdentity::generate(&mut OsRng);
        let cert = account.certify(&user, device_id, &identity.public(), now_ms());
        let mut prekeys = PreKeyStore::new();
        prekeys.add_signed_prekey(
            SignedPreKey::generate(&mut OsRng, &identity, 1, now_ms()),
            now_ms(),
        );
        Self {
            user,
            device_id,
            account,
            identity,
            cert,
            prekeys,
            http: http_client(),
        }
    }

    /// The registration description with `opks` fresh one-time prekeys.
    pub fn new_device_json(&mut self, opks: u32) -> NewDevice {
        let spk = self.prekeys.current_signed_prekey().unwrap().public();
        let one_time = self.prekeys.generate_one_time_prekeys(&mut OsRng, opks);
        NewDevice {
            certificate: B64(self.cert.to_bytes()),
            signed_prekey: SignedPreKeyJson {
                id: spk.id,
                key: B64(spk.key.to_bytes().to_vec()),
                signature: B64(spk.signature.to_bytes().to_vec()),
            },
            one_time_prekeys: one_time
                .iter()
                .map(|o| OneTimePreKeyJson {
                    id: o.id,
                    key: B64(o.key.to_bytes().to_vec()),
                })
                .collect(),
        }
    }

    /// Registers a new account with this as its first device.
    pub async fn create_account(user: &str, opks: u32) -> (Self, Answer) {
        let mut d = Self::new(user, AccountKey::generate(&mut OsRng));
        let body = CreateAccountRequest {
            account_key: B64(d.account.public_key().to_bytes().to_vec()),
            device: d.new_device_json(opks),
        };
        let a = d
            .request(
                "PUT",
                &format!("/v1/accounts/{user}"),
                Some(&serde_json::to_value(&body).unwrap()),
            )
            .await;
        (d, a)
    }

    /// A registered account's first device; panics unless the server says 201.
    pub async fn registered(prefix: &str, opks: u32) -> Self {
        let (d, a) = Self::create_account(&fresh_user(prefix), opks).await;
        assert_eq!(a.status, 201, "{:?}", a.json);
        d
    }

    /// Links a new device to this device's account (this device signs the request).
    pub async fn link_new_device(&self, opks: u32) -> (Self, Answer) {
        let mut d = Self::new(self.user.as_str(), self.account.clone());
        let body = LinkDeviceRequest {
            device: d.new_device_json(opks),
        };
        let a = self
            .request(
                "POST",
                &format!("/v1/accounts/{}/devices", self.user),
                Some(&serde_json::to_value(&body).unwrap()),
            )
            .await;
        (d, a)
    }

    /// Signs and sends a request; the path may carry a query.
    pub async fn request(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Answer {
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        self.request_raw(method, path_and_query, bytes, now_ms())
            .await
    }

    /// The Authorization header for a request.
    pub fn sign(&self, method: &str, path_and_query: &str, body: &[u8], ts: u64) -> String {
        RequestAuth::sign(
            &self.identity,
            &self.user,
            self.device_id,
            method,
            path_and_query,
            ts,
            body,
        )
        .to_header()
    }

    /// Sends raw bytes signed at `ts`.
    pub async fn request_raw(
        &self,
        method: &str,
        path_and_query: &str,
        body: Vec<u8>,
        ts: u64,
    ) -> Answer {
        let auth = self.sign(method, path_and_query, &body, ts);
        send_raw(&self.http, method, path_and_query, body, Some(auth)).await
    }

    /// Opens this device's WebSocket.
    pub async fn connect(&self) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
        let auth = ConnectAuth::sign(
            &mut OsRng,
            &self.identity,
            &self.user,
            self.device_id,
            now_ms(),
        );
        connect_query(&auth.to_query()).await
    }

    /// `user#device`, as the store keys this device's queue.
    pub fn device_key(&self) -> String {
        format!("{}#{}", self.user, self.device_id)
    }
}

/// Sends a request with an optional Authorization header.
pub async fn send_raw(
    http: &reqwest::Client,
    method: &str,
    path_and_query: &str,
    body: Vec<u8>,
    auth: Option<String>,
) -> Answer {
    let url = format!("{}{}", api(), path_and_query);
    let mut rb = http.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    if !body.is_empty() {
        rb = rb.header("content-type", "application/json").body(body);
    }
    let resp = rb
        .send()
        .await
        .expect("the local cloud answers (start it with ./dev up)");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = resp.bytes().await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    // Every answer any test receives must match the API description.
    if let Err(e) = openapi::check_response(method, path_and_query, status, &json) {
        let raw = if json.is_null() && !bytes.is_empty() {
            format!(
                "\n  raw body (not JSON): {}",
                String::from_utf8_lossy(&bytes)
            )
        } else {
            String::new()
        };
        panic!("the answer does not conform to api/openapi.yaml: {e}{raw}");
    }
    Answer {
        status,
        json,
        retry_after,
    }
}

/// An open WebSocket.
pub struct Socket {
    ws: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
}

/// Every push a test receives must match the `Push` schema of `api/openapi.yaml`.
fn checked_push(v: Value) -> Value {
    if let Err(e) = openapi::check_schema("Push", &v) {
        panic!("a WebSocket push does not match api/openapi.yaml: {e}\npush: {v}");
    }
    v
}

/// Opens a WebSocket with a given query string.
pub async fn connect_query(query: &str) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("{}?{}", ws_url(), query)).await?;
    Ok(Socket { ws })
}

impl Socket {
    /// The next text frame as JSON, or None on close or timeout.
    pub async fn next_json(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??
                .ok()?;
            match msg {
                Message::Text(t) => {
                    return Some(checked_push(serde_json::from_str(t.as_str()).ok()?))
                }
                Message::Binary(b) => return Some(checked_push(serde_json::from_slice(&b).ok()?)),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// True when the server closed the socket within `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Closes the socket.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Sends a text frame.
    pub async fn send_text(
        &mut self,
        text: String,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(Message::text(text)).await
    }
}

/// A DynamoDB client on the same endpoint as the functions.
pub async fn dynamo() -> aws_sdk_dynamodb::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&sdk)
}

/// A physical table name, as the functions resolve it.
pub fn table(logical: &str) -> String {
    std::env::var(format!("CIPHERPOST_TABLE_{}", logical.to_uppercase()))
        .unwrap_or_else(|_| format!("cipherpost-{logical}"))
}
