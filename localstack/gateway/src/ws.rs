//! The WebSocket API: `$connect` at the upgrade, the open connections, API Gateway's limits
//! (message size, idle timeout, maximum age) and `$disconnect` when a connection ends.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
        FromRequestParts, Request,
    },
    response::{IntoResponse, Response},
};
use http::{header, HeaderMap};
use tokio::{
    sync::mpsc,
    time::{sleep_until, timeout, Instant},
};

use crate::{
    events::{self, WsEventInfo, WsEventKind},
    invoke,
    util::{new_id, now_ms},
    Invocation, Shared,
};

/// Close codes (RFC 6455).
pub(crate) const NORMAL: u16 = 1000;
pub(crate) const GOING_AWAY: u16 = 1001;
pub(crate) const NO_STATUS: u16 = 1005;
pub(crate) const ABNORMAL: u16 = 1006;
pub(crate) const TOO_BIG: u16 = 1009;

/// What the rest of the gateway can ask of a connection's task.
pub(crate) enum Command {
    /// Send one frame (a POST to `@connections`).
    Send(Message),
    /// Close with this code and reason (DELETE on `@connections`, or gateway shutdown).
    Close { code: u16, reason: &'static str },
}

#[derive(Clone, Copy)]
struct Activity {
    at: Instant,
    at_ms: u64,
}

/// An open connection as the registry knows it.
pub(crate) struct Conn {
    pub(crate) id: String,
    pub(crate) tx: mpsc::UnboundedSender<Command>,
    pub(crate) connected_at_ms: u64,
    connected_at: Instant,
    last_active: Mutex<Activity>,
    pub(crate) source_ip: String,
    pub(crate) user_agent: String,
    domain_name: String,
}

impl Conn {
    /// Counts as activity for the idle timeout and `lastActiveAt`.
    pub(crate) fn touch(&self) {
        let mut a = self
            .last_active
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *a = Activity {
            at: Instant::now(),
            at_ms: now_ms(),
        };
    }

    fn activity(&self) -> Activity {
        *self
            .last_active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn last_active_ms(&self) -> u64 {
        self.activity().at_ms
    }
}

/// Whether a request asks for a WebSocket upgrade.
pub(crate) fn is_upgrade(req: &Request) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn header_string(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Runs `$connect` and, when it answers 2xx, accepts the upgrade.
pub(crate) async fn upgrade(shared: Arc<Shared>, peer: SocketAddr, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let id = new_id();
    let now = now_ms();
    let source_ip = peer.ip().to_string();
    let user_agent = header_string(&parts.headers, header::USER_AGENT);
    let domain_name = events::domain_name(&parts.headers);
    let request_id = new_id();
    let event = events::ws_event(&WsEventInfo {
        kind: WsEventKind::Connect,
        connection_id: &id,
        stage: &shared.ws_stage,
        domain_name: &domain_name,
        source_ip: &source_ip,
        user_agent: &user_agent,
        connected_at_ms: now,
        now_ms: now,
        request_id: &request_id,
        headers: Some(&parts.headers),
        raw_query: parts.uri.query().unwrap_or(""),
        listen_port: shared.port,
    });
    let event = match event {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "could not build the $connect event");
            return events::internal_error().into_response();
        }
    };
    let answer = match invoke((shared.connect)(event), shared.integration_timeout).await {
        Invocation::Done(r) => events::ws_answer(&r),
        Invocation::Panicked => events::internal_error(),
        Invocation::TimedOut => events::internal_error(),
    };
    if !answer.status.is_success() {
        tracing::info!(connection_id = %id, status = answer.status.as_u16(), "$connect refused");
        return answer.into_response();
    }

    // Registered before the 101 goes out: a POST right after the client sees the upgrade is
    // queued for the socket, never lost to a race.
    let (tx, rx) = mpsc::unbounded_channel();
    let conn = Arc::new(Conn {
        id: id.clone(),
        tx,
        connected_at_ms: now,
        connected_at: Instant::now(),
        last_active: Mutex::new(Activity {
            at: Instant::now(),
            at_ms: now,
        }),
        source_ip,
        user_agent,
        domain_name,
    });
    shared.register(conn.clone());
    tracing::info!(connection_id = %id, "$connect accepted");

    let protocol = answer
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    let mut upgrade = upgrade
        // The 128 KiB limit is enforced below, with API Gateway's close code; tungstenite's own
        // limits only bound memory.
        .max_message_size(shared.max_message_bytes.max(1 << 20) * 4)
        .max_frame_size(shared.max_message_bytes.max(1 << 20) * 4);
    if let Some(p) = protocol {
        upgrade = upgrade.protocols([p.to_owned()]);
    }
    let failed_shared = shared.clone();
    let failed_conn = conn.clone();
    upgrade
        .on_failed_upgrade(move |e| {
            tracing::warn!(connection_id = %failed_conn.id, error = %e, "the upgrade failed");
            tokio::spawn(async move {
                failed_shared.unregister(&failed_conn);
                disconnect(
                    &failed_shared,
                    &failed_conn,
                    ABNORMAL,
                    "Upgrade failed".into(),
                )
                .await;
            });
        })
        .on_upgrade(move |socket| run(shared, conn, rx, socket))
}

/// Why a connection ended.
struct Ended {
    code: u16,
    reason: String,
    /// The gateway sent the close frame and should wait for the client's answer.
    by_server: bool,
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) -> Ended {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if let Err(e) = socket.send(Message::Close(Some(frame))).await {
        tracing::debug!(error = %e, "sending the close frame failed");
    }
    Ended {
        code,
        reason: reason.to_owned(),
        by_server: true,
    }
}

/// One open connection: frames in, posts out, limits, then `$disconnect`.
async fn run(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    mut socket: WebSocket,
) {
    shared
        .live_sockets
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let age_deadline = conn.connected_at + shared.max_connection_age;
    let ended = loop {
        let idle_deadline = conn.activity().at + shared.idle_timeout;
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(t))) => {
                    if t.len() > shared.max_message_bytes {
                        break close(&mut socket, TOO_BIG, "Message too big").await;
                    }
                    // No $default route: API Gateway would route it there; here it is dropped.
                    tracing::debug!(connection_id = %conn.id, bytes = t.len(), "client message ignored");
                    conn.touch();
                }
                Some(Ok(Message::Binary(b))) => {
                    if b.len() > shared.max_message_bytes {
                        break close(&mut socket, TOO_BIG, "Message too big").await;
                    }
                    tracing::debug!(connection_id = %conn.id, bytes = b.len(), "client message ignored");
                    conn.touch();
                }
                // Control frames: answered by the WebSocket layer, and not activity (API
                // Gateway's idle timeout counts only messages).
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    break match frame {
                        Some(f) => Ended { code: f.code, reason: f.reason.to_string(), by_server: false },
                        None => Ended {
                            code: NO_STATUS,
                            reason: "Client-side close frame status not set".into(),
                            by_server: false,
                        },
                    };
                }
                Some(Err(e)) => {
                    let text = e.to_string();
                    if text.contains("too long") || text.contains("Space limit") {
                        break close(&mut socket, TOO_BIG, "Message too big").await;
                    }
                    tracing::debug!(connection_id = %conn.id, error = %text, "socket error");
                    break Ended { code: ABNORMAL, reason: "Connection closed abnormally".into(), by_server: false };
                }
                None => {
                    break Ended { code: ABNORMAL, reason: "Connection closed abnormally".into(), by_server: false };
                }
            },
            command = rx.recv() => match command {
                Some(Command::Send(message)) => {
                    if let Err(e) = socket.send(message).await {
                        tracing::debug!(connection_id = %conn.id, error = %e, "send failed");
                        break Ended { code: ABNORMAL, reason: "Connection closed abnormally".into(), by_server: false };
                    }
                    conn.touch();
                }
                Some(Command::Close { code, reason }) => break close(&mut socket, code, reason).await,
                None => break close(&mut socket, GOING_AWAY, "Going away").await,
            },
            () = sleep_until(idle_deadline) => {
                // Activity may have come from a POST meanwhile: look again.
                if conn.activity().at + shared.idle_timeout <= Instant::now() {
                    tracing::info!(connection_id = %conn.id, "idle timeout");
                    break close(&mut socket, GOING_AWAY, "Going away").await;
                }
            }
            () = sleep_until(age_deadline) => {
                tracing::info!(connection_id = %conn.id, "maximum connection age reached");
                break close(&mut socket, GOING_AWAY, "Going away").await;
            }
        }
    };
    // Gone for the management API from here on; queued posts are dropped, as when API
    // Gateway drops a connection.
    shared.unregister(&conn);
    rx.close();
    if ended.by_server {
        // Give the client a moment to answer the close frame, for a clean TCP shutdown.
        let _ = timeout(Duration::from_secs(2), async {
            while let Some(Ok(m)) = socket.recv().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    drop(socket);
    tracing::info!(connection_id = %conn.id, code = ended.code, reason = %ended.reason, "disconnected");
    disconnect(&shared, &conn, ended.code, ended.reason).await;
    shared
        .live_sockets
        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
}

/// Calls the `$disconnect` handler (best effort, as with API Gateway: its answer is ignored).
async fn disconnect(shared: &Shared, conn: &Conn, code: u16, reason: String) {
    let now = now_ms();
    let request_id = new_id();
    let event = events::ws_event(&WsEventInfo {
        kind: WsEventKind::Disconnect {
            status_code: code,
            reason,
        },
        connection_id: &conn.id,
        stage: &shared.ws_stage,
        domain_name: &conn.domain_name,
        source_ip: &conn.source_ip,
        user_agent: &conn.user_agent,
        connected_at_ms: conn.connected_at_ms,
        now_ms: now,
        request_id: &request_id,
        headers: None,
        raw_query: "",
        listen_port: shared.port,
    });
    match event {
        Ok(event) => match invoke((shared.disconnect)(event), shared.integration_timeout).await {
            Invocation::Done(r) if !(200..300).contains(&r.status_code) => {
                tracing::warn!(connection_id = %conn.id, status = r.status_code, "$disconnect answered non-2xx");
            }
            Invocation::Done(_) => {}
            Invocation::Panicked => {
                tracing::error!(connection_id = %conn.id, "$disconnect handler panicked");
            }
            Invocation::TimedOut => {
                tracing::error!(connection_id = %conn.id, "$disconnect handler timed out");
            }
        },
        Err(e) => tracing::error!(error = %e, "could not build the $disconnect event"),
    }
}

/// A message posted through `@connections`.
pub(crate) enum OutMessage {
    /// Valid UTF-8: sent as a text frame.
    Text(String),
    /// Anything else: sent as a binary frame.
    Binary(Bytes),
}

/// Queues a posted message for the connection's socket; false when the connection is gone.
pub(crate) fn post(conn: &Conn, message: OutMessage) -> bool {
    let message = match message {
        OutMessage::Text(t) => Message::Text(t.into()),
        OutMessage::Binary(b) => Message::Binary(b),
    };
    let queued = conn.tx.send(Command::Send(message)).is_ok();
    if queued {
        conn.touch();
    }
    queued
}

/// Used by DELETE on `@connections` and by shutdown.
pub(crate) fn request_close(conn: &Conn, code: u16, reason: &'static str) -> bool {
    conn.tx.send(Command::Close { code, reason }).is_ok()
}
