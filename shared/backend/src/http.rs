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
        let first = self.body.iter().find(|b| !b.is_ascii_whitespace());
        if matches!(
            first,
            Some(b'[' | b'"' | b'n' | b't' | b'f' | b'-' | b'0'..=b'9')
        ) {
            // Valid JSON that is not an object (serde would read `[]` as a struct whose fields
            // all have defaults).
            if serde_json::from_slice::<Value>(&self.body).is_ok() {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    "the request body must be a JSON object",
                ));
            }
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

    /// The answer for a request no route of `routes` (`(METHOD, "accounts/{user}/devices")`,
    /// from after `/v1/`) matches. API Gateway routes on the path as sent and hands the function
    /// the decoded path, so a path reaches a function's fallback only when an id held an
    /// encoded `/` (`%2F`): then the id is named as invalid (400 `invalid_user`,
    /// `invalid_device`, `invalid_group`, `invalid_attachment_id`); otherwise 404 `not_found`.
    pub fn unmatched(&self, routes: &[(&str, &str)]) -> ApiError {
        let seg = self.segments();
        let param = routes
            .iter()
            .filter(|(m, _)| *m == self.method)
            .find_map(|(_, pattern)| {
                let parts: Vec<&str> = pattern.split('/').collect();
                split_param(&parts, &seg)
            });
        match param {
            Some("user") => ApiError::bad_request(
                "invalid_user",
                "the user id in the path is invalid: it contains '/' (sent as %2F)",
            ),
            Some("device") => ApiError::bad_request(
                "invalid_device",
                "the device id in the path is invalid: it contains '/' (sent as %2F)",
            ),
            Some("group") => ApiError::bad_request(
                "invalid_group",
                "the group id in the path is invalid: it contains '/' (sent as %2F)",
            ),
            Some(_) => ApiError::bad_request(
                "invalid_attachment_id",
                "the attachment id in the path is invalid: it contains '/' (sent as %2F)",
            ),
            None => ApiError::not_found("not_found", "no such route"),
        }
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

/// The name of the first `{param}` of `pattern` that must take more than one of `seg` (joined
/// by `/`) for the rest to match, if the pattern matches that way.
fn split_param(pattern: &[&str], seg: &[&str]) -> Option<&'static str> {
    fn go(
        pattern: &[&str],
        seg: &[&str],
        split: Option<&'static str>,
    ) -> Option<Option<&'static str>> {
        match pattern.split_first() {
            None => seg.is_empty().then_some(split),
            Some((p, rest)) => {
                if let Some(name) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    let name: &'static str = match name {
                        "user" => "user",
                        "device" => "device",
                        "group" => "group",
                        _ => "id",
                    };
                    (1..=seg.len()).find_map(|n| {
                        let split = if n > 1 { split.or(Some(name)) } else { split };
                        go(rest, &seg[n..], split)
                    })
                } else {
                    match seg.split_first() {
                        Some((s, more)) if s == p => go(rest, more, split),
                        _ => None,
                    }
                }
            }
        }
    }
    go(pattern, seg, None).flatten()
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: &[u8]) -> HttpRequest {
        HttpRequest {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            authorization: None,
            body: body.to_vec(),
        }
    }

    const ROUTES: &[(&str, &str)] = &[
        ("PUT", "accounts/{user}"),
        ("DELETE", "accounts/{user}/devices/{device}"),
        ("DELETE", "groups/{group}/members/{user}"),
    ];

    /// Issue #9: an id holding an encoded `/` (the function sees the decoded path) is named as
    /// the invalid id, not answered as an undocumented 404.
    #[test]
    fn an_id_with_an_encoded_slash_is_named() {
        let code = |m, p| req(m, p, b"").unmatched(ROUTES).code;
        assert_eq!(code("PUT", "/v1/accounts/ab/c"), "invalid_user");
        assert_eq!(code("PUT", "/v1/accounts/../abc"), "invalid_user");
        assert_eq!(
            code("DELETE", "/v1/accounts/abc/devices/1/2"),
            "invalid_device"
        );
        assert_eq!(code("DELETE", "/v1/accounts/a/b/devices/1"), "invalid_user");
        assert_eq!(
            code("DELETE", "/v1/groups/AQ/x/members/abc"),
            "invalid_group"
        );
        assert_eq!(code("DELETE", "/v1/groups/AQ/members/ab/c"), "invalid_user");
        // Nothing to blame: a real 404.
        assert_eq!(code("GET", "/v1/accounts/ab/c"), "not_found");
        assert_eq!(code("PUT", "/v1/elsewhere/x/y"), "not_found");
    }

    #[test]
    fn a_body_that_is_not_a_json_object_is_refused() {
        #[derive(serde::Deserialize, Debug)]
        struct AllOptional {
            #[serde(default)]
            _a: Option<u32>,
        }
        for body in [&b"[]"[..], b"null", b"\"x\"", b"12", b" [1]"] {
            let e = req("PUT", "/v1/keys", body)
                .json::<AllOptional>()
                .unwrap_err();
            assert_eq!(e.code, "invalid_field", "{body:?}");
        }
        for body in [&b"1e999"[..], b"[", b"", b"{"] {
            let e = req("PUT", "/v1/keys", body)
                .json::<AllOptional>()
                .unwrap_err();
            assert_eq!(e.code, "invalid_json", "{body:?}");
        }
        assert!(req("PUT", "/v1/keys", b"{}").json::<AllOptional>().is_ok());
    }
}
