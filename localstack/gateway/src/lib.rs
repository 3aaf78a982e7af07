//! # cipherpost-local-gateway
//!
//! API Gateway on one machine: the HTTP API (Lambda proxy, payload format 2.0), the WebSocket
//! API (`$connect` / `$disconnect`) and the `@connections` management API, all on one listener
//! (default `127.0.0.1:8787`). Lambda handlers are called in-process with the very event types
//! `lambda_runtime` would hand them (`aws_lambda_events::apigw`), built from the JSON API
//! Gateway sends; their responses are read the way API Gateway reads them.
//!
//! The library knows no function crate: handlers are given to it as async closures
//! ([`http_handler`], [`ws_handler`]). It enforces API Gateway's limits so clients are tested
//! against them: 10 MB request bodies, 128 KiB WebSocket messages in both directions, the idle
//! timeout (10 minutes) and the maximum connection age (2 hours), the last two configurable.
//!
//! ```no_run
//! use cipherpost_local_gateway::{http_handler, serve, GatewayConfig, Route};
//! use cipherpost_local_gateway::apigw::ApiGatewayV2httpResponse;
//!
//! # async fn run() -> Result<(), cipherpost_local_gateway::GatewayError> {
//! let mut config = GatewayConfig::from_env()?;
//! config.routes.push(Route::new(
//!     http::Method::GET,
//!     "/v1/hello/{name}",
//!     http_handler(|event| async move {
//!         let mut r = ApiGatewayV2httpResponse::default();
//!         r.status_code = 200;
//!         r.body = event.path_parameters.get("name").map(|n| n.clone().into());
//!         r
//!     }),
//! ));
//! serve(config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

mod events;
mod management;
mod routes;
mod util;
mod ws;

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::Duration,
};

pub use aws_lambda_events;
/// The API Gateway event and response types the handlers take and give.
pub use aws_lambda_events::apigw;
use aws_lambda_events::apigw::{
    ApiGatewayProxyResponse, ApiGatewayV2httpRequest, ApiGatewayV2httpResponse,
    ApiGatewayWebsocketProxyRequest,
};
use axum::{
    body::{Body, Bytes},
    extract::{ConnectInfo, Request, State},
    response::{IntoResponse, Response},
    Router,
};
use futures::future::BoxFuture;
use http::{header, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;
use tokio::{net::TcpListener, time::Instant};

use crate::{routes::CompiledRoute, ws::Conn};

/// A handler of HTTP API routes: a Lambda function's handler for payload format 2.0.
pub type HttpHandler = Arc<
    dyn Fn(ApiGatewayV2httpRequest) -> BoxFuture<'static, ApiGatewayV2httpResponse> + Send + Sync,
>;

/// A handler of a WebSocket API route (`$connect`, `$disconnect`).
pub type WsHandler = Arc<
    dyn Fn(ApiGatewayWebsocketProxyRequest) -> BoxFuture<'static, ApiGatewayProxyResponse>
        + Send
        + Sync,
>;

/// Wraps an async function or closure as an [`HttpHandler`].
pub fn http_handler<F, Fut>(f: F) -> HttpHandler
where
    F: Fn(ApiGatewayV2httpRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ApiGatewayV2httpResponse> + Send + 'static,
{
    Arc::new(move |event| Box::pin(f(event)))
}

/// Wraps an async function or closure as a [`WsHandler`].
pub fn ws_handler<F, Fut>(f: F) -> WsHandler
where
    F: Fn(ApiGatewayWebsocketProxyRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ApiGatewayProxyResponse> + Send + 'static,
{
    Arc::new(move |event| Box::pin(f(event)))
}

/// A WebSocket route handler that accepts everything (200, empty body).
pub fn accept_all() -> WsHandler {
    ws_handler(|_| async {
        let mut r = ApiGatewayProxyResponse::default();
        r.status_code = 200;
        r
    })
}

/// One HTTP API route: a method (or `ANY`) and a path template such as
/// `/v1/accounts/{user}` or `/files/{proxy+}`, with its handler.
#[derive(Clone)]
pub struct Route {
    /// The method; `Method::from_bytes(b"ANY")` matches every method.
    pub method: Method,
    /// The path template.
    pub path: String,
    /// The handler.
    pub handler: HttpHandler,
}

impl Route {
    /// A route.
    pub fn new(method: Method, path: impl Into<String>, handler: HttpHandler) -> Self {
        Self {
            method,
            path: path.into(),
            handler,
        }
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// Where the gateway listens by default (env `CIPHERPOST_LISTEN`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// API Gateway's WebSocket message limit: 128 KiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// API Gateway's request payload limit: 10 MB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// API Gateway's WebSocket idle timeout: 10 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// API Gateway's maximum WebSocket connection age: 2 hours.
pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(7200);
/// API Gateway's integration timeout: 30 seconds.
pub const DEFAULT_INTEGRATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the gateway serves, and its limits.
pub struct GatewayConfig {
    /// The listening address; port 0 picks a free one ([`Gateway::local_addr`] tells which).
    pub listen: SocketAddr,
    /// The HTTP API routes.
    pub routes: Vec<Route>,
    /// The `$connect` handler: a non-2xx answer refuses the upgrade with that status and body.
    pub connect: WsHandler,
    /// The `$disconnect` handler (best effort; its answer is ignored).
    pub disconnect: WsHandler,
    /// The WebSocket API's path (`/ws`).
    pub ws_path: String,
    /// The WebSocket API's stage name put in its events (`local`; env `CIPHERPOST_WS_STAGE`).
    pub ws_stage: String,
    /// Largest WebSocket message, either direction (128 KiB; env
    /// `CIPHERPOST_WS_MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
    /// Largest HTTP request body (10 MiB).
    pub max_body_bytes: usize,
    /// A connection without a message either way for this long is closed (10 minutes; env
    /// `CIPHERPOST_WS_IDLE_SECS`).
    pub idle_timeout: Duration,
    /// A connection is closed at this age (2 hours; env `CIPHERPOST_WS_MAX_AGE_SECS`).
    pub max_connection_age: Duration,
    /// A handler running longer is abandoned: 503 for HTTP, a refused upgrade for `$connect`.
    pub integration_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            routes: Vec::new(),
            connect: accept_all(),
            disconnect: accept_all(),
            ws_path: "/ws".into(),
            ws_stage: "local".into(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connection_age: DEFAULT_MAX_CONNECTION_AGE,
            integration_timeout: DEFAULT_INTEGRATION_TIMEOUT,
        }
    }
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("listen", &self.listen)
            .field("routes", &self.routes)
            .field("ws_path", &self.ws_path)
            .field("ws_stage", &self.ws_stage)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connection_age", &self.max_connection_age)
            .field("integration_timeout", &self.integration_timeout)
            .finish_non_exhaustive()
    }
}

fn env_secs(name: &str) -> Result<Option<Duration>, GatewayError> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| Some(Duration::from_secs_f64(s)))
            .ok_or(GatewayError::Env {
                name: name.into(),
                value: v,
                expected: "seconds > 0",
            }),
        Err(_) => Ok(None),
    }
}

impl GatewayConfig {
    /// The defaults overridden by the environment: `CIPHERPOST_LISTEN`,
    /// `CIPHERPOST_WS_IDLE_SECS`, `CIPHERPOST_WS_MAX_AGE_SECS` (seconds, fractions allowed),
    /// `CIPHERPOST_WS_MAX_MESSAGE_BYTES`, `CIPHERPOST_WS_STAGE`.
    pub fn from_env() -> Result<Self, GatewayError> {
        Self::default().with_env()
    }

    /// This configuration overridden by the environment (see [`GatewayConfig::from_env`]).
    pub fn with_env(mut self) -> Result<Self, GatewayError> {
        if let Ok(v) = std::env::var("CIPHERPOST_LISTEN") {
            self.listen = v.trim().parse().map_err(|_| GatewayError::Env {
                name: "CIPHERPOST_LISTEN".into(),
                value: v.clone(),
                expected: "an address such as 127.0.0.1:8787",
            })?;
        }
        if let Some(d) = env_secs("CIPHERPOST_WS_IDLE_SECS")? {
            self.idle_timeout = d;
        }
        if let Some(d) = env_secs("CIPHERPOST_WS_MAX_AGE_SECS")? {
            self.max_connection_age = d;
        }
        if let Ok(v) = std::env::var("CIPHERPOST_WS_MAX_MESSAGE_BYTES") {
            self.max_message_bytes =
                v.trim()
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(GatewayError::Env {
                        name: "CIPHERPOST_WS_MAX_MESSAGE_BYTES".into(),
                        value: v.clone(),
                        expected: "a positive number of bytes",
                    })?;
        }
        if let Ok(v) = std::env::var("CIPHERPOST_WS_STAGE") {
            if !v.is_empty() {
                self.ws_stage = v;
            }
        }
        Ok(self)
    }
}

/// What can stop the gateway from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Binding or serving failed.
    #[error("gateway I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A route template is malformed or declared twice.
    #[error("bad route {0}")]
    Route(String),
    /// An environment variable holds a value that does not parse.
    #[error("environment variable {name} must be {expected}, got {value:?}")]
    Env {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
}

/// State shared by every request and connection.
pub(crate) struct Shared {
    routes: Vec<CompiledRoute>,
    pub(crate) connect: WsHandler,
    pub(crate) disconnect: WsHandler,
    ws_path: String,
    pub(crate) ws_stage: String,
    pub(crate) max_message_bytes: usize,
    max_body_bytes: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connection_age: Duration,
    pub(crate) integration_timeout: Duration,
    pub(crate) port: u16,
    connections: Mutex<HashMap<String, Arc<Conn>>>,
    pub(crate) live_sockets: AtomicUsize,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, HashMap<String, Arc<Conn>>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn register(&self, conn: Arc<Conn>) {
        self.conns().insert(conn.id.clone(), conn);
    }

    /// Removes this very connection (not a later one that reused the id).
    pub(crate) fn unregister(&self, conn: &Arc<Conn>) {
        let mut conns = self.conns();
        if conns.get(&conn.id).is_some_and(|c| Arc::ptr_eq(c, conn)) {
            conns.remove(&conn.id);
        }
    }

    pub(crate) fn connection(&self, id: &str) -> Option<Arc<Conn>> {
        self.conns().get(id).cloned()
    }

    fn close_all(&self) {
        let conns: Vec<Arc<Conn>> = self.conns().values().cloned().collect();
        for c in conns {
            ws::request_close(&c, ws::GOING_AWAY, "Going away");
        }
    }
}

/// The outcome of calling a handler: as in Lambda, a panic or a timeout is a failed invocation.
pub(crate) enum Invocation<T> {
    Done(T),
    Panicked,
    TimedOut,
}

/// Runs a handler on its own task, so a panic is contained like a crashed Lambda invocation.
pub(crate) async fn invoke<T: Send + 'static>(
    future: BoxFuture<'static, T>,
    limit: Duration,
) -> Invocation<T> {
    let mut task = tokio::spawn(future);
    match tokio::time::timeout(limit, &mut task).await {
        Ok(Ok(value)) => Invocation::Done(value),
        Ok(Err(_)) => Invocation::Panicked,
        Err(_) => {
            task.abort();
            Invocation::TimedOut
        }
    }
}

pub(crate) enum BodyError {
    TooLarge,
    Other(String),
}

pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Err(e) => Err(BodyError::Other(e.to_string())),
    }
}

/// The project's JSON error shape, for the gateway's own HTTP API answers.
fn error_json(status: StatusCode, code: &str, message: &str) -> Response {
    let mut response = (
        status,
        json!({ "error": code, "message": message }).to_string(),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn http_api(shared: &Shared, peer: SocketAddr, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Some(matched) = routes::find(&shared.routes, &parts.method, parts.uri.path()) else {
        return error_json(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {} {}", parts.method, parts.uri.path()),
        );
    };
    let body = match read_body(body, shared.max_body_bytes).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return error_json(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                &format!("the request body exceeds {} bytes", shared.max_body_bytes),
            )
        }
        Err(BodyError::Other(e)) => {
            return error_json(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("reading the body: {e}"),
            )
        }
    };
    let request_id = util::new_id();
    let event = events::http_event(&events::HttpRequestInfo {
        method: &parts.method,
        raw_path: parts.uri.path(),
        raw_query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        body: &body,
        route_key: &matched.route.route_key,
        path_parameters: &matched.path_parameters,
        source_ip: peer.ip().to_string(),
        listen_port: shared.port,
        request_id: &request_id,
        now_ms: util::now_ms(),
    });
    let answer = match event {
        Err(e) => {
            tracing::error!(error = %e, "could not build the event");
            events::internal_error()
        }
        Ok(event) => match invoke((matched.route.handler)(event), shared.integration_timeout).await
        {
            Invocation::Done(r) => events::http_answer(&r),
            Invocation::Panicked => {
                tracing::error!(route = %matched.route.route_key, "the handler panicked");
                events::internal_error()
            }
            Invocation::TimedOut => {
                tracing::error!(route = %matched.route.route_key, "the handler timed out");
                events::service_unavailable()
            }
        },
    };
    let mut response = answer.into_response();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("apigw-requestid", v);
    }
    response
}

async fn dispatch(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let (kind, response) = if let Some(id) = management::connection_id(&path) {
        ("@connections", management::handle(&shared, req, &id).await)
    } else if path == shared.ws_path && ws::is_upgrade(&req) {
        ("websocket", ws::upgrade(shared.clone(), peer, req).await)
    } else {
        ("http", http_api(&shared, peer, req).await)
    };
    tracing::info!(
        target: "cipherpost_local_gateway::access",
        "{kind} {method} {path} -> {} ({} ms)",
        response.status().as_u16(),
        started.elapsed().as_millis()
    );
    response
}

/// A bound gateway, ready to serve.
pub struct Gateway {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("local_addr", &self.listener.local_addr().ok())
            .finish()
    }
}

impl Gateway {
    /// Checks the routes and binds the listener.
    pub async fn bind(config: GatewayConfig) -> Result<Self, GatewayError> {
        let mut routes: Vec<CompiledRoute> = Vec::new();
        for r in config.routes {
            let compiled = CompiledRoute::compile(&r.method, &r.path, r.handler)?;
            if routes.iter().any(|c| c.route_key == compiled.route_key) {
                return Err(GatewayError::Route(format!(
                    "{} declared twice",
                    compiled.route_key
                )));
            }
            routes.push(compiled);
        }
        let listener = TcpListener::bind(config.listen).await?;
        let port = listener.local_addr()?.port();
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                routes,
                connect: config.connect,
                disconnect: config.disconnect,
                ws_path: config.ws_path,
                ws_stage: config.ws_stage,
                max_message_bytes: config.max_message_bytes,
                max_body_bytes: config.max_body_bytes,
                idle_timeout: config.idle_timeout,
                max_connection_age: config.max_connection_age,
                integration_timeout: config.integration_timeout,
                port,
                connections: Mutex::new(HashMap::new()),
                live_sockets: AtomicUsize::new(0),
            }),
        })
    }

    /// The address actually bound (the port chosen when the configuration said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves until `shutdown` completes; then closes every WebSocket connection (1001, with
    /// `$disconnect` for each), lets requests in flight finish, and returns.
    pub async fn serve<F>(self, shutdown: F) -> Result<(), GatewayError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let shared = self.shared;
        let routes: Vec<&str> = shared.routes.iter().map(|r| r.route_key.as_str()).collect();
        tracing::info!(
            "local API Gateway on http://{0} (WebSocket ws://{0}{1}, @connections at http://{0}/@connections/{{id}}); routes: {2}",
            self.listener.local_addr()?,
            shared.ws_path,
            if routes.is_empty() { "none".to_owned() } else { routes.join(", ") }
        );
        let app = Router::new().fallback(dispatch).with_state(shared.clone());
        let signal_shared = shared.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: closing WebSocket connections");
            signal_shared.close_all();
        };
        axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(signal)
        .await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared.live_sockets.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            shared.close_all();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Binds and serves until `shutdown` completes ([`Gateway::bind`] then [`Gateway::serve`]).
pub async fn serve<F>(config: GatewayConfig, shutdown: F) -> Result<(), GatewayError>
where
    F: Future<Output = ()> + Send + 'static,
{
    Gateway::bind(config).await?.serve(shutdown).await
}
