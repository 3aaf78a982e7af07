//! The local API Gateway over real sockets: HTTP API events (payload 2.0), the WebSocket API's
//! `$connect`/`$disconnect`, API Gateway's limits, and the `@connections` management API both
//! by hand and through the real `aws-sdk-apigatewaymanagement` client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::{net::SocketAddr, time::Duration};

use aws_sdk_apigatewaymanagement::{
    config::{BehaviorVersion, Credentials, Region},
    primitives::Blob,
    Client as ManagementClient,
};
use base64::{engine::general_purpose::STANDARD, Engine};
use cipherpost_local_gateway::{
    apigw::{
        ApiGatewayProxyResponse, ApiGatewayV2httpRequest, ApiGatewayV2httpResponse,
        ApiGatewayWebsocketProxyRequest,
    },
    aws_lambda_events::encodings::Body,
    http_handler, ws_handler, Gateway, GatewayConfig, Route,
};
use futures::{SinkExt, StreamExt};
use http::{HeaderValue, Method};
use tokio::{
    net::TcpStream,
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::{timeout, Instant},
};
use tokio_tungstenite::{
    connect_async,
    tungstenite::{
        self,
        protocol::{frame::coding::CloseCode, CloseFrame},
        Message,
    },
    MaybeTlsStream, WebSocketStream,
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

/// A gateway on an ephemeral port with recording test handlers.
struct Harness {
    addr: SocketAddr,
    http_events: mpsc::UnboundedReceiver<ApiGatewayV2httpRequest>,
    connects: mpsc::UnboundedReceiver<ApiGatewayWebsocketProxyRequest>,
    disconnects: mpsc::UnboundedReceiver<ApiGatewayWebsocketProxyRequest>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

fn response(status: i64, body: &str) -> ApiGatewayV2httpResponse {
    let mut r = ApiGatewayV2httpResponse::default();
    r.status_code = status;
    r.headers
        .insert("content-type", HeaderValue::from_static("application/json"));
    r.body = Some(Body::Text(body.into()));
    r
}

async fn start(tweak: impl FnOnce(&mut GatewayConfig)) -> Harness {
    let (http_tx, http_events) = mpsc::unbounded_channel();
    let (connect_tx, connects) = mpsc::unbounded_channel();
    let (disconnect_tx, disconnects) = mpsc::unbounded_channel();

    let echo = {
        let tx = http_tx.clone();
        http_handler(move |event: ApiGatewayV2httpRequest| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event);
                let mut r = response(201, r#"{"ok":true}"#);
                r.headers
                    .insert("x-handler", HeaderValue::from_static("echo"));
                r.cookies = vec!["session=1; Path=/".into()];
                r
            }
        })
    };
    let reverse = {
        let tx = http_tx.clone();
        http_handler(move |event: ApiGatewayV2httpRequest| {
            let tx = tx.clone();
            async move {
                let body = match (&event.body, event.is_base64_encoded) {
                    (Some(b), true) => STANDARD.decode(b).unwrap(),
                    (Some(b), false) => b.clone().into_bytes(),
                    (None, _) => Vec::new(),
                };
                let _ = tx.send(event);
                let mut r = ApiGatewayV2httpResponse::default();
                r.status_code = 200;
                r.headers.insert(
                    "content-type",
                    HeaderValue::from_static("application/octet-stream"),
                );
                r.body = Some(Body::Binary(body.into_iter().rev().collect()));
                r.is_base64_encoded = true;
                r
            }
        })
    };
    let panics = http_handler(|_event: ApiGatewayV2httpRequest| async move {
        if true {
            panic!("handler bug");
        }
        response(200, "{}")
    });
    let connect = ws_handler(move |event: ApiGatewayWebsocketProxyRequest| {
        let tx = connect_tx.clone();
        async move {
            let deny = event.query_string_parameters.first("deny") == Some("1");
            let _ = tx.send(event);
            let mut r = ApiGatewayProxyResponse::default();
            if deny {
                r.status_code = 401;
                r.headers
                    .insert("content-type", HeaderValue::from_static("application/json"));
                r.body = Some(Body::Text(
                    r#"{"error":"unauthorized","message":"bad signature"}"#.into(),
                ));
            } else {
                r.status_code = 200;
            }
            r
        }
    });
    let disconnect = ws_handler(move |event: ApiGatewayWebsocketProxyRequest| {
        let tx = disconnect_tx.clone();
        async move {
            let _ = tx.send(event);
            let mut r = ApiGatewayProxyResponse::default();
            r.status_code = 200;
            r
        }
    });

    let mut config = GatewayConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        routes: vec![
            Route::new(Method::PUT, "/v1/accounts/{user}", echo.clone()),
            Route::new(Method::GET, "/v1/keys", echo.clone()),
            Route::new(Method::GET, "/v1/keys/{user}", echo),
            Route::new(Method::POST, "/v1/blobs", reverse),
            Route::new(Method::GET, "/v1/panic", panics),
        ],
        connect,
        disconnect,
        ..GatewayConfig::default()
    };
    tweak(&mut config);
    let gateway = Gateway::bind(config).await.unwrap();
    let addr = gateway.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        gateway
            .serve(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Harness {
        addr,
        http_events,
        connects,
        disconnects,
        stop: Some(stop),
        task: Some(task),
    }
}

impl Harness {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn next_http(&mut self) -> ApiGatewayV2httpRequest {
        timeout(WAIT, self.http_events.recv())
            .await
            .expect("no HTTP event")
            .unwrap()
    }

    async fn next_connect(&mut self) -> ApiGatewayWebsocketProxyRequest {
        timeout(WAIT, self.connects.recv())
            .await
            .expect("no $connect event")
            .unwrap()
    }

    async fn next_disconnect(&mut self) -> ApiGatewayWebsocketProxyRequest {
        timeout(WAIT, self.disconnects.recv())
            .await
            .expect("no $disconnect event")
            .unwrap()
    }

    /// Opens a WebSocket and returns it with its connection id (from the $connect event).
    async fn open(&mut self, query: &str) -> (Socket, String) {
        let url = format!("ws://{}/ws{query}", self.addr);
        let (socket, response) = connect_async(url.as_str()).await.expect("upgrade refused");
        assert_eq!(response.status(), 101);
        let event = self.next_connect().await;
        let id = event.request_context.connection_id.clone().unwrap();
        (socket, id)
    }

    fn management(&self, stage: &str) -> ManagementClient {
        let conf = aws_sdk_apigatewaymanagement::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "static"))
            .endpoint_url(format!("http://{}{stage}", self.addr))
            .build();
        ManagementClient::from_conf(conf)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            timeout(WAIT, task)
                .await
                .expect("gateway did not stop")
                .unwrap();
        }
    }
}

/// The percent-encoding the SDK applies to a connection id in its path.
fn encode_id(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The next data or close frame (pings skipped).
async fn next_frame(socket: &mut Socket) -> Option<Message> {
    loop {
        match timeout(WAIT, socket.next())
            .await
            .expect("nothing arrived on the socket")
        {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
            Some(Err(_)) | None => return None,
        }
    }
}

/// Waits for the server's close frame and returns its code.
async fn close_code(socket: &mut Socket) -> u16 {
    loop {
        match next_frame(socket).await {
            Some(Message::Close(Some(frame))) => return u16::from(frame.code),
            Some(Message::Close(None)) => return 1005,
            Some(_) => continue,
            None => panic!("the socket ended without a close frame"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_gets_a_payload_2_event_and_its_response_back() {
    let mut h = start(|_| {}).await;
    let client = reqwest::Client::new();
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let res = client
        .put(h.url("/v1/accounts/al%20ice?x=1&x=2&y=a%2Bb&flag"))
        .header("content-type", "application/json")
        .header("authorization", "CIPHERPOST sig")
        .header("X-Multi", "a")
        .header("x-multi", "b")
        .header("cookie", "c1=v1; c2=v2")
        .header("user-agent", "gateway-test/1")
        .body(r#"{"hello":"world"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["x-handler"], "echo");
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["set-cookie"], "session=1; Path=/");
    assert!(res.headers().contains_key("apigw-requestid"));
    assert_eq!(res.text().await.unwrap(), r#"{"ok":true}"#);

    let e = h.next_http().await;
    assert_eq!(e.version.as_deref(), Some("2.0"));
    assert_eq!(e.route_key.as_deref(), Some("PUT /v1/accounts/{user}"));
    assert_eq!(e.raw_path.as_deref(), Some("/v1/accounts/al ice"));
    assert_eq!(e.raw_query_string.as_deref(), Some("x=1&x=2&y=a%2Bb&flag"));
    assert_eq!(e.path_parameters["user"], "al ice");
    assert_eq!(e.query_string_parameters.all("x"), Some(vec!["1", "2"]));
    assert_eq!(e.query_string_parameters.first("y"), Some("a+b"));
    assert_eq!(e.query_string_parameters.first("flag"), Some(""));
    assert_eq!(e.headers["authorization"], "CIPHERPOST sig");
    assert_eq!(e.headers["x-multi"], "a,b");
    assert_eq!(e.headers["content-type"], "application/json");
    assert_eq!(e.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(e.headers["x-forwarded-proto"], "http");
    assert!(e.headers.get("cookie").is_none());
    assert_eq!(
        e.cookies,
        Some(vec!["c1=v1".to_owned(), "c2=v2".to_owned()])
    );
    assert_eq!(e.body.as_deref(), Some(r#"{"hello":"world"}"#));
    assert!(!e.is_base64_encoded);
    let ctx = &e.request_context;
    assert_eq!(ctx.http.method, Method::PUT);
    assert_eq!(ctx.http.path.as_deref(), Some("/v1/accounts/al ice"));
    assert_eq!(ctx.http.protocol.as_deref(), Some("HTTP/1.1"));
    assert_eq!(ctx.http.source_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(ctx.http.user_agent.as_deref(), Some("gateway-test/1"));
    assert_eq!(ctx.route_key.as_deref(), Some("PUT /v1/accounts/{user}"));
    assert_eq!(ctx.stage.as_deref(), Some("$default"));
    assert_eq!(ctx.domain_name.as_deref(), Some("127.0.0.1"));
    assert_eq!(ctx.account_id.as_deref(), Some("123456789012"));
    assert!(ctx.apiid.is_some());
    assert_eq!(ctx.request_id.as_ref().map(String::len), Some(16));
    assert!(ctx.time.as_deref().is_some_and(|t| t.ends_with(" +0000")));
    assert!((ctx.time_epoch - started_ms).abs() < 60_000);

    // The most specific route wins; a GET without body has none in the event.
    let res = client.get(h.url("/v1/keys")).send().await.unwrap();
    assert_eq!(res.status(), 201);
    let e = h.next_http().await;
    assert_eq!(e.route_key.as_deref(), Some("GET /v1/keys"));
    assert_eq!(e.raw_query_string.as_deref(), Some(""));
    assert!(e.query_string_parameters.is_empty());
    assert!(e.path_parameters.is_empty());
    assert!(e.body.is_none());
    let res = client.get(h.url("/v1/keys/bob")).send().await.unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(h.next_http().await.path_parameters["user"], "bob");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_bodies_travel_base64_both_ways() {
    let mut h = start(|_| {}).await;
    let client = reqwest::Client::new();
    let data: Vec<u8> = vec![0, 1, 2, 0xff, 0xfe, b'a'];
    let res = client
        .post(h.url("/v1/blobs"))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.bytes().await.unwrap().to_vec(),
        data.iter().rev().copied().collect::<Vec<_>>()
    );
    let e = h.next_http().await;
    assert!(e.is_base64_encoded);
    assert_eq!(STANDARD.decode(e.body.unwrap()).unwrap(), data);

    // UTF-8 text that is not of a text content type is base64 too, as on AWS.
    client
        .post(h.url("/v1/blobs"))
        .body("plain words")
        .send()
        .await
        .unwrap();
    let e = h.next_http().await;
    assert!(e.is_base64_encoded);
    assert_eq!(STANDARD.decode(e.body.unwrap()).unwrap(), b"plain words");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_oversized_bodies_and_failing_handlers() {
    let h = start(|c| c.max_body_bytes = 1024 * 1024).await;
    let client = reqwest::Client::new();

    for (method, path) in [
        (Method::GET, "/v1/nothing"),
        (Method::DELETE, "/v1/keys"),
        (Method::GET, "/v1/keys/a/b"),
    ] {
        let res = client.request(method, h.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 404, "{path}");
        let body: serde_json::Value = res.json_body().await;
        assert_eq!(body["error"], "not_found");
        assert!(body["message"].as_str().unwrap().contains(path));
    }

    let res = client
        .put(h.url("/v1/accounts/alice"))
        .header("content-type", "application/json")
        .body(vec![b' '; 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let body: serde_json::Value = res.json_body().await;
    assert_eq!(body["error"], "payload_too_large");

    // A panicking handler is a failed invocation: API Gateway's own 500.
    let res = client.get(h.url("/v1/panic")).send().await.unwrap();
    assert_eq!(res.status(), 500);
    let body: serde_json::Value = res.json_body().await;
    assert_eq!(body["message"], "Internal Server Error");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_body_limit_is_ten_megabytes() {
    let h = start(|_| {}).await;
    let client = reqwest::Client::new();
    let res = client
        .put(h.url("/v1/accounts/alice"))
        .header("content-type", "application/json")
        .body(vec![b' '; 10 * 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    h.stop().await;
}

trait JsonBody {
    async fn json_body(self) -> serde_json::Value;
}

impl JsonBody for reqwest::Response {
    async fn json_body(self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refused_with_the_handlers_status_and_body() {
    let mut h = start(|_| {}).await;
    let url = format!("ws://{}/ws?user=alice&deny=1", h.addr);
    match connect_async(url.as_str()).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"], "unauthorized");
        }
        other => panic!("expected a refused upgrade, got {other:?}"),
    }
    let e = h.next_connect().await;
    let id = e.request_context.connection_id.unwrap();
    // A refused connection never existed for the management API.
    let res = reqwest::Client::new()
        .post(h.url(&format!("/@connections/{}", encode_id(&id))))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 410);
    // ... and gets no $disconnect.
    assert!(timeout(Duration::from_millis(300), h.disconnects.recv())
        .await
        .is_err());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_event_and_posts_by_hand() {
    let mut h = start(|c| c.ws_stage = "dev".into()).await;
    let url = format!("ws://{}/ws?user=alice&device=3&sig=a%2Bb%3D", h.addr);
    let (mut socket, response) = connect_async(url.as_str()).await.unwrap();
    assert_eq!(response.status(), 101);
    let e = h.next_connect().await;
    let ctx = &e.request_context;
    assert_eq!(ctx.route_key.as_deref(), Some("$connect"));
    assert_eq!(ctx.event_type.as_deref(), Some("CONNECT"));
    assert_eq!(ctx.stage.as_deref(), Some("dev"));
    assert_eq!(ctx.message_direction.as_deref(), Some("IN"));
    assert_eq!(ctx.identity.source_ip.as_deref(), Some("127.0.0.1"));
    assert!(ctx.connected_at > 0 && ctx.request_time_epoch >= ctx.connected_at);
    let id = ctx.connection_id.clone().unwrap();
    assert_eq!(id.len(), 16);
    assert!(id.ends_with('='));
    assert_eq!(e.query_string_parameters.first("user"), Some("alice"));
    assert_eq!(e.query_string_parameters.first("device"), Some("3"));
    assert_eq!(e.query_string_parameters.first("sig"), Some("a+b="));
    assert_eq!(e.headers["sec-websocket-version"], "13");
    assert!(e.headers.contains_key("sec-websocket-key"));

    let client = reqwest::Client::new();
    // Text: arrives as a text frame. The id is percent-encoded, as the SDK sends it.
    let res = client
        .post(h.url(&format!("/@connections/{}", encode_id(&id))))
        .header("content-type", "application/octet-stream")
        .body(r#"{"type":"envelope"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.bytes().await.unwrap().is_empty());
    match next_frame(&mut socket).await {
        Some(Message::Text(t)) => assert_eq!(t.as_str(), r#"{"type":"envelope"}"#),
        other => panic!("expected a text frame, got {other:?}"),
    }
    // Bytes that are not UTF-8: a binary frame; a stage prefix is accepted.
    let res = client
        .post(h.url(&format!("/dev/@connections/{}", encode_id(&id))))
        .body(vec![0xff, 0x00, 0x01])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    match next_frame(&mut socket).await {
        Some(Message::Binary(b)) => assert_eq!(b.to_vec(), vec![0xff, 0x00, 0x01]),
        other => panic!("expected a binary frame, got {other:?}"),
    }
    // GET by hand.
    let res = client
        .get(h.url(&format!("/@connections/{}", encode_id(&id))))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let info: serde_json::Value = res.json_body().await;
    assert!(info["connectedAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(info["identity"]["sourceIp"], "127.0.0.1");

    // An unknown id: 410 with API Gateway's error type header.
    let res = client
        .post(h.url("/@connections/bm9wZW5vcGVub3A%3D"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 410);
    assert_eq!(res.headers()["x-amzn-errortype"], "GoneException");
    let body: serde_json::Value = res.json_body().await;
    assert!(body["message"].is_string());

    // The client closes: $disconnect with its code.
    socket
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    let d = h.next_disconnect().await;
    assert_eq!(d.request_context.route_key.as_deref(), Some("$disconnect"));
    assert_eq!(d.request_context.event_type.as_deref(), Some("DISCONNECT"));
    assert_eq!(
        d.request_context.connection_id.as_deref(),
        Some(id.as_str())
    );
    assert_eq!(d.request_context.disconnect_status_code, Some(1000));
    assert_eq!(d.request_context.disconnect_reason.as_deref(), Some("bye"));
    // Gone afterwards.
    let res = client
        .post(h.url(&format!("/@connections/{}", encode_id(&id))))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 410);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_api_through_the_real_sdk() {
    let mut h = start(|_| {}).await;
    let (mut socket, id) = h.open("?user=alice&device=1").await;

    for stage in ["", "/dev"] {
        let sdk = h.management(stage);
        sdk.post_to_connection()
            .connection_id(&id)
            .data(Blob::new(format!("hello via '{stage}'")))
            .send()
            .await
            .expect("post_to_connection");
        match next_frame(&mut socket).await {
            Some(Message::Text(t)) => assert_eq!(t.as_str(), format!("hello via '{stage}'")),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
    let sdk = h.management("/dev");

    let info = sdk
        .get_connection()
        .connection_id(&id)
        .send()
        .await
        .expect("get_connection");
    let connected = info.connected_at().expect("connectedAt").secs();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - connected).abs() < 60);
    assert!(info.last_active_at().is_some());
    assert_eq!(
        info.identity().and_then(|i| i.source_ip()),
        Some("127.0.0.1")
    );

    // Too large for API Gateway: PayloadTooLargeException.
    let err = sdk
        .post_to_connection()
        .connection_id(&id)
        .data(Blob::new(vec![b'x'; 128 * 1024 + 1]))
        .send()
        .await
        .expect_err("an oversized post must fail");
    assert!(err.into_service_error().is_payload_too_large_exception());
    // Exactly the limit passes.
    sdk.post_to_connection()
        .connection_id(&id)
        .data(Blob::new(vec![b'y'; 128 * 1024]))
        .send()
        .await
        .expect("a post of exactly 128 KiB");
    match next_frame(&mut socket).await {
        Some(Message::Text(t)) => assert_eq!(t.len(), 128 * 1024),
        other => panic!("expected the 128 KiB frame, got {other:?}"),
    }

    // A dead id: GoneException for each operation.
    let err = sdk
        .post_to_connection()
        .connection_id("AAAAAAAAAAAAAAA=")
        .data(Blob::new("x"))
        .send()
        .await
        .expect_err("posting to a dead id must fail");
    assert!(err.into_service_error().is_gone_exception());
    let err = sdk
        .get_connection()
        .connection_id("AAAAAAAAAAAAAAA=")
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_gone_exception());

    // DeleteConnection closes the client's socket and runs $disconnect.
    sdk.delete_connection()
        .connection_id(&id)
        .send()
        .await
        .expect("delete_connection");
    assert_eq!(close_code(&mut socket).await, 1000);
    let d = h.next_disconnect().await;
    assert_eq!(
        d.request_context.connection_id.as_deref(),
        Some(id.as_str())
    );
    assert_eq!(d.request_context.event_type.as_deref(), Some("DISCONNECT"));
    let err = sdk
        .post_to_connection()
        .connection_id(&id)
        .data(Blob::new("late"))
        .send()
        .await
        .expect_err("the deleted connection is gone");
    assert!(err.into_service_error().is_gone_exception());
    let err = sdk
        .delete_connection()
        .connection_id(&id)
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_gone_exception());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_client_message_closes_with_1009() {
    let mut h = start(|_| {}).await;
    let (mut socket, id) = h.open("").await;
    // Up to the limit is fine (and ignored: there is no $default route).
    socket
        .send(Message::Text("x".repeat(128 * 1024).into()))
        .await
        .unwrap();
    socket
        .send(Message::Text("x".repeat(128 * 1024 + 1).into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut socket).await, 1009);
    let d = h.next_disconnect().await;
    assert_eq!(
        d.request_context.connection_id.as_deref(),
        Some(id.as_str())
    );
    assert_eq!(d.request_context.disconnect_status_code, Some(1009));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_and_messages_keep_alive() {
    let mut h = start(|c| c.idle_timeout = Duration::from_millis(1500)).await;
    let (mut socket, id) = h.open("").await;
    // Messages every 400 ms keep it open well past the idle timeout.
    let until = Instant::now() + Duration::from_millis(2500);
    let mut last_sent = Instant::now();
    while Instant::now() < until {
        socket
            .send(Message::Text("keepalive".into()))
            .await
            .unwrap();
        last_sent = Instant::now();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let res = reqwest::Client::new()
        .get(h.url(&format!("/@connections/{}", encode_id(&id))))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "closed although active");
    // Then silence: closed with 1001 and $disconnect.
    assert_eq!(close_code(&mut socket).await, 1001);
    // Not before the idle timeout, counted from the last message.
    assert!(last_sent.elapsed() >= Duration::from_millis(1400));
    let d = h.next_disconnect().await;
    assert_eq!(
        d.request_context.connection_id.as_deref(),
        Some(id.as_str())
    );
    assert_eq!(d.request_context.disconnect_status_code, Some(1001));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_connection_age_closes_even_an_active_socket() {
    let mut h = start(|c| c.max_connection_age = Duration::from_secs(1)).await;
    let opened = Instant::now();
    let (mut socket, id) = h.open("").await;
    let sender = tokio::spawn({
        let url = h.url(&format!("/@connections/{}", encode_id(&id)));
        async move {
            let client = reqwest::Client::new();
            for _ in 0..20 {
                let _ = client.post(&url).body("tick").send().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    assert_eq!(close_code(&mut socket).await, 1001);
    assert!(opened.elapsed() >= Duration::from_millis(900));
    let d = h.next_disconnect().await;
    assert_eq!(
        d.request_context.connection_id.as_deref(),
        Some(id.as_str())
    );
    sender.abort();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sockets_and_runs_disconnect() {
    let mut h = start(|_| {}).await;
    let (mut socket, id) = h.open("").await;
    let stop = h.stop.take().unwrap();
    let task = h.task.take().unwrap();
    stop.send(()).unwrap();
    assert_eq!(close_code(&mut socket).await, 1001);
    let d = h.next_disconnect().await;
    assert_eq!(
        d.request_context.connection_id.as_deref(),
        Some(id.as_str())
    );
    timeout(WAIT, task).await.unwrap().unwrap();
}
