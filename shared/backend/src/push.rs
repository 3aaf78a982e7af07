//! WebSocket push through the API Gateway management API (`aws-sdk-apigatewaymanagement`).

use aws_sdk_apigatewaymanagement::{primitives::Blob, Client};

/// What happened to a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Delivered to the connection.
    Sent,
    /// The connection is gone: forget it; the envelope stays queued.
    Gone,
    /// Any other failure (the envelope stays queued; the device syncs).
    Failed(String),
    /// No management endpoint is configured.
    Disabled,
}

/// Posts to and closes WebSocket connections.
#[derive(Clone, Debug)]
pub struct Pusher {
    client: Option<Client>,
}

impl Pusher {
    /// A pusher over `client`; `None` disables pushes.
    pub fn new(client: Option<Client>) -> Self {
        Self { client }
    }

    /// Posts `data` to a connection.
    pub async fn post(&self, connection_id: &str, data: Vec<u8>) -> PushOutcome {
        let Some(client) = &self.client else {
            return PushOutcome::Disabled;
        };
        match client
            .post_to_connection()
            .connection_id(connection_id)
            .data(Blob::new(data))
            .send()
            .await
        {
            Ok(_) => PushOutcome::Sent,
            Err(e) => match e.as_service_error() {
                Some(se) if se.is_gone_exception() => PushOutcome::Gone,
                _ => PushOutcome::Failed(format!("{e:?}")),
            },
        }
    }

    /// Closes a connection (a newer one of the same device replaced it, or the device was
    /// revoked). A connection already gone is fine.
    pub async fn close(&self, connection_id: &str) {
        if let Some(client) = &self.client {
            if let Err(e) = client
                .delete_connection()
                .connection_id(connection_id)
                .send()
                .await
            {
                if !e
                    .as_service_error()
                    .is_some_and(|se| se.is_gone_exception())
                {
                    tracing::warn!(connection_id, error = ?e, "closing a connection failed");
                }
            }
        }
    }
}
