//! The `@connections` management API (what `aws-sdk-apigatewaymanagement` calls):
//! PostToConnection, GetConnection and DeleteConnection, with API Gateway's error shapes.

use axum::{
    body::Body,
    extract::Request,
    response::{IntoResponse, Response},
};
use http::{header, HeaderValue, Method, StatusCode};
use serde_json::json;

use crate::{read_body, util::iso8601, util::percent_decode, ws, BodyError, Shared};

/// The connection id of a management API path: `/@connections/{id}` or
/// `/{stage}/@connections/{id}` (the SDK keeps a stage of its endpoint URL as a prefix). The id
/// segment is percent-decoded.
pub(crate) fn connection_id(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    let id = match segments.as_slice() {
        ["@connections", id] => id,
        [stage, "@connections", id] if !stage.is_empty() => id,
        _ => return None,
    };
    (!id.is_empty()).then(|| percent_decode(id))
}

fn aws_error(status: StatusCode, error_type: &'static str, message: &str) -> Response {
    let mut response = (status, json!({ "message": message }).to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-amzn-errortype", HeaderValue::from_static(error_type));
    response
}

fn gone(id: &str) -> Response {
    aws_error(
        StatusCode::GONE,
        "GoneException",
        &format!("Connection {id} is gone"),
    )
}

fn empty(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

/// Serves one management API request. The SigV4 `authorization` header is not checked.
pub(crate) async fn handle(shared: &Shared, req: Request, id: &str) -> Response {
    let (parts, body) = req.into_parts();
    match parts.method {
        Method::POST => {
            // Read a little past the limit so an oversized post gets API Gateway's 413.
            let data = match read_body(body, shared.max_message_bytes.saturating_mul(2)).await {
                Ok(d) => d,
                Err(BodyError::TooLarge) => return payload_too_large(shared),
                Err(BodyError::Other(e)) => {
                    return aws_error(StatusCode::BAD_REQUEST, "BadRequestException", &e)
                }
            };
            if data.len() > shared.max_message_bytes {
                return payload_too_large(shared);
            }
            let Some(conn) = shared.connection(id) else {
                return gone(id);
            };
            let message = match String::from_utf8(data.to_vec()) {
                Ok(text) => ws::OutMessage::Text(text),
                Err(_) => ws::OutMessage::Binary(data),
            };
            if !ws::post(&conn, message) {
                return gone(id);
            }
            empty(StatusCode::OK)
        }
        Method::GET => {
            let Some(conn) = shared.connection(id) else {
                return gone(id);
            };
            let body = json!({
                "connectedAt": iso8601(conn.connected_at_ms),
                "lastActiveAt": iso8601(conn.last_active_ms()),
                "identity": { "sourceIp": conn.source_ip, "userAgent": conn.user_agent },
            });
            let mut response = (StatusCode::OK, body.to_string()).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Method::DELETE => {
            let Some(conn) = shared.connection(id) else {
                return gone(id);
            };
            if !ws::request_close(&conn, ws::NORMAL, "Connection deleted") {
                return gone(id);
            }
            empty(StatusCode::NO_CONTENT)
        }
        _ => aws_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowedException",
            "the @connections API takes POST, GET and DELETE",
        ),
    }
}

fn payload_too_large(shared: &Shared) -> Response {
    aws_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PayloadTooLargeException",
        &format!(
            "Message too long: the limit is {} bytes",
            shared.max_message_bytes
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            connection_id("/@connections/abc%3D").as_deref(),
            Some("abc=")
        );
        assert_eq!(
            connection_id("/dev/@connections/a%2Fb%2B%3D").as_deref(),
            Some("a/b+=")
        );
        assert_eq!(connection_id("/@connections/"), None);
        assert_eq!(connection_id("/@connections"), None);
        assert_eq!(connection_id("/a/b/@connections/x"), None);
        assert_eq!(connection_id("/v1/keys"), None);
    }
}
