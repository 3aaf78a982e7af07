//! `ws-connect` and `ws-disconnect`: authenticate a WebSocket at `$connect`, record it as the
//! device's one connection (closing the one it replaces), forget it at `$disconnect`.

use cipherpost_protocol::{verifying_key, ConnectAuth};

use crate::{store::StoreError, ApiError, Backend, HttpResponse};

impl Backend {
    /// `$connect`: `query` is the raw query string, `connection_id` API Gateway's id.
    pub async fn connect(&self, query: &str, connection_id: &str) -> HttpResponse {
        self.connect_inner(query, connection_id, crate::now_ms())
            .await
            .unwrap_or_else(HttpResponse::from)
    }

    async fn connect_inner(
        &self,
        query: &str,
        connection_id: &str,
        now: u64,
    ) -> Result<HttpResponse, ApiError> {
        let auth =
            ConnectAuth::parse_query(query).map_err(|e| ApiError::unauthorized(e.to_string()))?;
        let (user, device_id) = (auth.user_id.as_str().to_owned(), auth.device_id.get());
        let device = self
            .store
            .get_device(&user, device_id)
            .await?
            .filter(|d| d.active)
            .ok_or_else(|| ApiError::unauthorized("the device is not registered or was revoked"))?;
        let key = verifying_key(&device.signing_key, "device signing key")
            .map_err(|_| ApiError::new(500, "internal", "a stored device key is malformed"))?;
        auth.verify(&key, now)
            .map_err(|e| ApiError::unauthorized(e.to_string()))?;
        let nonce_key = format!("nonce#{user}#{device_id}#{}", hex::encode(auth.nonce));
        let now_s = now / 1000;
        if !self
            .store
            .remember_once(
                &nonce_key,
                now_s,
                now_s + self.config.limits.replay_ttl_secs,
            )
            .await?
        {
            return Err(ApiError::unauthorized(
                "this connect nonce was already used (replay)",
            ));
        }
        // A connection lives at most 2 hours at API Gateway; its record expires a little later.
        let ttl = now_s + 3 * 3600;
        let replaced = match self
            .store
            .set_connection(&user, device_id, connection_id, ttl)
            .await
        {
            Ok(r) => r,
            Err(StoreError::Conditional(_)) => {
                return Err(ApiError::unauthorized("the device was revoked"));
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(old) = replaced {
            // One connection per device: the new one replaces the old.
            self.pusher.close(&old).await;
            let _ = self.store.drop_connection(&user, device_id, &old).await;
        }
        tracing::info!(user = %user, device = device_id, "device connected");
        Ok(HttpResponse {
            status: 200,
            body: serde_json::json!({}),
            retry_after: None,
        })
    }

    /// `$disconnect`.
    pub async fn disconnect(&self, connection_id: &str) -> HttpResponse {
        let res: Result<(), ApiError> = async {
            if let Some(c) = self.store.get_connection(connection_id).await? {
                self.store
                    .drop_connection(&c.user, c.device_id, connection_id)
                    .await?;
            }
            Ok(())
        }
        .await;
        match res {
            Ok(()) => HttpResponse {
                status: 200,
                body: serde_json::json!({}),
                retry_after: None,
            },
            Err(e) => e.into(),
        }
    }
}
