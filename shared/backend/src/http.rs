//! The transport-neutral request and response the service layer works with. The function
//! crates translate API Gateway events to and from these; the service never sees an event.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::ApiError;

/// An HTTP request as the service needs it.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// Upper-case method.
    pub method: String,
    /// The path from `/v1/` on (any stage or base-path prefix removed), as sent.
    pub path: String,
    /// The raw query string as sent, without `?` (empty when none).
    pub query: String,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The body bytes as sent.
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// `PATH_AND_QUERY` as PROTOCOL.md signs it.
    pub fn path_and_query(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        }
    }

    /// The path segments after `/v1/`.
    pub fn segments(&self) -> Vec<&str> {
        self.path.trim_start_matches("/v1/").split('/').collect()
    }

    /// Parses the JSON body, naming what was wrong.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_json",
                "the request needs a JSON body",
            ));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            let code = if e.is_data() {
                "invalid_field"
            } else {
                "invalid_json"
            };
            ApiError::bad_request(code, format!("the request body is not valid: {e}"))
        })
    }

    /// A query parameter (no percent-decoding: our parameters are plain tokens).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// A JSON response.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// JSON body.
    pub body: Value,
    /// `Retry-After` seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl HttpResponse {
    /// A success with a serializable body.
    pub fn ok<T: serde::Serialize>(status: u16, body: &T) -> Self {
        match serde_json::to_value(body) {
            Ok(body) => Self {
                status,
                body,
                retry_after: None,
            },
            Err(e) => Self::from(ApiError::new(
                500,
                "internal",
                format!("response encoding: {e}"),
            )),
        }
    }
}

impl From<ApiError> for HttpResponse {
    fn from(e: ApiError) -> Self {
        Self {
            status: e.status,
            body: e.body(),
            retry_after: e.retry_after,
        }
    }
}

impl<T: serde::Serialize> From<Result<T, ApiError>> for HttpResponse {
    fn from(r: Result<T, ApiError>) -> Self {
        match r {
            Ok(v) => Self::ok(200, &v),
            Err(e) => e.into(),
        }
    }
}
