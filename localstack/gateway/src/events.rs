//! The Lambda events API Gateway sends and the reading of the responses it gets back.
//!
//! Events are written as the JSON API Gateway would send (HTTP API payload format 2.0; the
//! WebSocket API's `$connect`/`$disconnect` events) and then deserialized into the
//! `aws_lambda_events` types, exactly as `lambda_runtime` does in Lambda: a handler sees here
//! what it would see there, down to header maps and comma-split query parameters. Responses are
//! serialized back to JSON and read the way API Gateway reads them.

use std::collections::{BTreeMap, HashMap};

use aws_lambda_events::apigw::{
    ApiGatewayProxyResponse, ApiGatewayV2httpRequest, ApiGatewayV2httpResponse,
    ApiGatewayWebsocketProxyRequest,
};
use axum::{body::Body, response::Response};
use base64::{engine::general_purpose::STANDARD, Engine};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde_json::{json, Map, Value};

use crate::util::{clf_time, percent_decode, query_pairs, trace_id};

/// The account id in events (moto's default account).
pub(crate) const ACCOUNT_ID: &str = "123456789012";
/// The HTTP API's id in events.
pub(crate) const HTTP_API_ID: &str = "cphttpapi1";
/// The WebSocket API's id in events.
pub(crate) const WS_API_ID: &str = "cpwsapi001";

/// What an HTTP API event is made from.
pub(crate) struct HttpRequestInfo<'a> {
    pub(crate) method: &'a Method,
    /// The path as sent, still percent-encoded.
    pub(crate) raw_path: &'a str,
    pub(crate) raw_query: &'a str,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: &'a [u8],
    pub(crate) route_key: &'a str,
    pub(crate) path_parameters: &'a HashMap<String, String>,
    pub(crate) source_ip: String,
    pub(crate) listen_port: u16,
    pub(crate) request_id: &'a str,
    pub(crate) now_ms: u64,
}

/// The host name API Gateway reports as `domainName` (the Host header without its port).
pub(crate) fn domain_name(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    if host.starts_with('[') {
        // [::1]:8787
        return host
            .split(']')
            .next()
            .map(|h| format!("{h}]"))
            .unwrap_or_else(|| host.into());
    }
    host.rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(host)
        .to_owned()
}

fn domain_prefix(domain: &str) -> &str {
    domain.split('.').next().unwrap_or(domain)
}

/// Header values as text (API Gateway passes header values as strings).
fn header_text(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

/// Whether API Gateway's HTTP API passes a body of this content type as text: only `text/*`,
/// `application/json`, `application/xml` and `application/javascript` (observed on AWS); every
/// other type, and a missing one, is base64-encoded.
pub(crate) fn is_text_content_type(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return false };
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media.starts_with("text/")
        || matches!(
            media.as_str(),
            "application/json" | "application/xml" | "application/javascript"
        )
}

/// The HTTP API payload format 2.0 event.
pub(crate) fn http_event(r: &HttpRequestInfo<'_>) -> Result<ApiGatewayV2httpRequest, String> {
    let user_agent = r
        .headers
        .get(header::USER_AGENT)
        .map(header_text)
        .unwrap_or_default();
    let domain = domain_name(r.headers);

    // Headers: lower-case names (hyper gives them so), repeated ones joined with commas; cookies
    // go to their own field.
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies: Vec<String> = Vec::new();
    for name in r.headers.keys() {
        let values: Vec<String> = r.headers.get_all(name).iter().map(header_text).collect();
        if name == header::COOKIE {
            for v in &values {
                cookies.extend(
                    v.split(';')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(String::from),
                );
            }
            continue;
        }
        headers.insert(name.as_str().to_owned(), values.join(","));
    }
    headers
        .entry("x-forwarded-for".into())
        .and_modify(|v| {
            v.push_str(", ");
            v.push_str(&r.source_ip);
        })
        .or_insert_with(|| r.source_ip.clone());
    headers.insert("x-forwarded-port".into(), r.listen_port.to_string());
    headers.insert("x-forwarded-proto".into(), "http".into());
    headers
        .entry("x-amzn-trace-id".into())
        .or_insert_with(|| trace_id(r.now_ms));

    // Query parameters: decoded, repeated names joined with commas.
    let mut query: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in query_pairs(r.raw_query) {
        query.entry(k).or_default().push(v);
    }
    let query: Map<String, Value> = query
        .into_iter()
        .map(|(k, v)| (k, Value::String(v.join(","))))
        .collect();

    // The decoded path, as HTTP APIs deliver rawPath and requestContext.http.path.
    let path = percent_decode(r.raw_path);

    let content_type = r
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let (body, base64) = if r.body.is_empty() {
        (Value::Null, false)
    } else {
        match std::str::from_utf8(r.body) {
            Ok(text) if is_text_content_type(content_type) => (Value::String(text.into()), false),
            _ => (Value::String(STANDARD.encode(r.body)), true),
        }
    };

    let mut event = json!({
        "version": "2.0",
        "routeKey": r.route_key,
        "rawPath": path,
        "rawQueryString": r.raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": HTTP_API_ID,
            "domainName": domain,
            "domainPrefix": domain_prefix(&domain),
            "http": {
                "method": r.method.as_str(),
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": r.source_ip,
                "userAgent": user_agent,
            },
            "requestId": r.request_id,
            "routeKey": r.route_key,
            "stage": "$default",
            "time": clf_time(r.now_ms),
            "timeEpoch": r.now_ms,
        },
        "isBase64Encoded": base64,
    });
    if let Some(obj) = event.as_object_mut() {
        if !cookies.is_empty() {
            obj.insert("cookies".into(), json!(cookies));
        }
        if !query.is_empty() {
            obj.insert("queryStringParameters".into(), Value::Object(query));
        }
        if !r.path_parameters.is_empty() {
            obj.insert("pathParameters".into(), json!(r.path_parameters));
        }
        if !body.is_null() {
            obj.insert("body".into(), body);
        }
    }
    serde_json::from_value(event).map_err(|e| format!("building the HTTP API event: {e}"))
}

/// The kind of WebSocket lifecycle event.
pub(crate) enum WsEventKind {
    Connect,
    Disconnect { status_code: u16, reason: String },
}

/// What a WebSocket lifecycle event is made from.
pub(crate) struct WsEventInfo<'a> {
    pub(crate) kind: WsEventKind,
    pub(crate) connection_id: &'a str,
    pub(crate) stage: &'a str,
    pub(crate) domain_name: &'a str,
    pub(crate) source_ip: &'a str,
    pub(crate) user_agent: &'a str,
    pub(crate) connected_at_ms: u64,
    pub(crate) now_ms: u64,
    pub(crate) request_id: &'a str,
    /// The upgrade request's headers (`$connect` only).
    pub(crate) headers: Option<&'a HeaderMap>,
    /// The upgrade request's raw query string (`$connect` only).
    pub(crate) raw_query: &'a str,
    pub(crate) listen_port: u16,
}

/// A `$connect` or `$disconnect` event of the WebSocket API.
pub(crate) fn ws_event(w: &WsEventInfo<'_>) -> Result<ApiGatewayWebsocketProxyRequest, String> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut multi: BTreeMap<String, Vec<String>> = BTreeMap::new();
    match (&w.kind, w.headers) {
        (WsEventKind::Connect, Some(h)) => {
            for name in h.keys() {
                let values: Vec<String> = h.get_all(name).iter().map(header_text).collect();
                headers.insert(name.as_str().to_owned(), values.join(","));
                multi.insert(name.as_str().to_owned(), values);
            }
            headers.insert("x-forwarded-for".into(), w.source_ip.into());
            headers.insert("x-forwarded-port".into(), w.listen_port.to_string());
            headers.insert("x-forwarded-proto".into(), "http".into());
            headers.insert("x-amzn-trace-id".into(), trace_id(w.now_ms));
        }
        _ => {
            // What API Gateway puts in a $disconnect event's headers.
            headers.insert("host".into(), w.domain_name.into());
            headers.insert("x-api-key".into(), String::new());
            headers.insert("x-forwarded-for".into(), String::new());
            headers.insert("x-restapi".into(), String::new());
        }
    }
    for (k, v) in &headers {
        multi.entry(k.clone()).or_insert_with(|| vec![v.clone()]);
    }

    let mut context = json!({
        "stage": w.stage,
        "requestId": w.request_id,
        "extendedRequestId": w.request_id,
        "identity": { "sourceIp": w.source_ip, "userAgent": w.user_agent },
        "apiId": WS_API_ID,
        "connectedAt": w.connected_at_ms,
        "connectionId": w.connection_id,
        "domainName": w.domain_name,
        "messageDirection": "IN",
        "requestTime": clf_time(w.now_ms),
        "requestTimeEpoch": w.now_ms,
    });
    if let Some(ctx) = context.as_object_mut() {
        match &w.kind {
            WsEventKind::Connect => {
                ctx.insert("routeKey".into(), "$connect".into());
                ctx.insert("eventType".into(), "CONNECT".into());
            }
            WsEventKind::Disconnect {
                status_code,
                reason,
            } => {
                ctx.insert("routeKey".into(), "$disconnect".into());
                ctx.insert("eventType".into(), "DISCONNECT".into());
                ctx.insert("disconnectStatusCode".into(), json!(status_code));
                ctx.insert("disconnectReason".into(), json!(reason));
            }
        }
    }
    let mut event = json!({
        "headers": headers,
        "multiValueHeaders": multi,
        "requestContext": context,
        "isBase64Encoded": false,
    });
    if matches!(w.kind, WsEventKind::Connect) {
        // WebSocket APIs use the 1.0-style maps: the last value, and all of them.
        let mut single: BTreeMap<String, String> = BTreeMap::new();
        let mut all: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in query_pairs(w.raw_query) {
            single.insert(k.clone(), v.clone());
            all.entry(k).or_default().push(v);
        }
        if let Some(obj) = event.as_object_mut() {
            if !single.is_empty() {
                obj.insert("queryStringParameters".into(), json!(single));
                obj.insert("multiValueQueryStringParameters".into(), json!(all));
            }
        }
    }
    serde_json::from_value(event).map_err(|e| format!("building the WebSocket event: {e}"))
}

/// A response as API Gateway would turn a Lambda proxy response into HTTP.
pub(crate) struct ProxyAnswer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl ProxyAnswer {
    pub(crate) fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

fn insert_header(headers: &mut HeaderMap, name: &str, value: &Value) {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Null => return,
        other => other.to_string(),
    };
    match (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(&text),
    ) {
        (Ok(n), Ok(v)) => {
            headers.append(n, v);
        }
        _ => tracing::warn!(
            header = name,
            "the handler returned an invalid header: dropped"
        ),
    }
}

/// Reads a serialized Lambda proxy response (`statusCode`, `headers`, `body`,
/// `isBase64Encoded`, plus `cookies` for HTTP APIs and `multiValueHeaders` for WebSocket
/// routes). `None` when API Gateway would answer 500 (a malformed response).
fn read_proxy_response(v: &Value, multi_value_headers: bool) -> Option<ProxyAnswer> {
    let code = v.get("statusCode").and_then(Value::as_i64)?;
    let status = u16::try_from(code)
        .ok()
        .filter(|c| (100..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok());
    let Some(status) = status else {
        tracing::warn!(
            code,
            "the handler returned an invalid statusCode: answering 500"
        );
        return None;
    };
    let mut headers = HeaderMap::new();
    if let Some(h) = v.get("headers").and_then(Value::as_object) {
        for (k, val) in h {
            insert_header(&mut headers, k, val);
        }
    }
    if multi_value_headers {
        if let Some(h) = v.get("multiValueHeaders").and_then(Value::as_object) {
            for (k, vals) in h {
                if headers.contains_key(k.as_str()) {
                    continue;
                }
                for val in vals.as_array().into_iter().flatten() {
                    insert_header(&mut headers, k, val);
                }
            }
        }
    }
    if let Some(cookies) = v.get("cookies").and_then(Value::as_array) {
        for c in cookies {
            insert_header(&mut headers, "set-cookie", c);
        }
    }
    let base64 = v
        .get("isBase64Encoded")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let body = match v.get("body") {
        Some(Value::String(s)) if base64 => match STANDARD.decode(s) {
            Ok(b) => b,
            Err(_) => {
                tracing::warn!("isBase64Encoded is true but the body is not base64: answering 500");
                return None;
            }
        },
        Some(Value::String(s)) => s.clone().into_bytes(),
        _ => Vec::new(),
    };
    Some(ProxyAnswer {
        status,
        headers,
        body,
    })
}

/// API Gateway's own answer when an integration fails or answers nonsense.
pub(crate) fn internal_error() -> ProxyAnswer {
    aws_message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
}

/// API Gateway's own answer when an integration times out.
pub(crate) fn service_unavailable() -> ProxyAnswer {
    aws_message(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
}

fn aws_message(status: StatusCode, message: &str) -> ProxyAnswer {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    ProxyAnswer {
        status,
        headers,
        body: json!({ "message": message }).to_string().into_bytes(),
    }
}

/// The HTTP answer to an HTTP API handler's response.
pub(crate) fn http_answer(r: &ApiGatewayV2httpResponse) -> ProxyAnswer {
    match serde_json::to_value(r) {
        Ok(v) => read_proxy_response(&v, false).unwrap_or_else(internal_error),
        Err(e) => {
            tracing::warn!(error = %e, "the handler's response does not serialize: answering 500");
            internal_error()
        }
    }
}

/// The HTTP answer to a WebSocket route handler's response (used for a refused `$connect`).
pub(crate) fn ws_answer(r: &ApiGatewayProxyResponse) -> ProxyAnswer {
    match serde_json::to_value(r) {
        Ok(v) => read_proxy_response(&v, true).unwrap_or_else(internal_error),
        Err(e) => {
            tracing::warn!(error = %e, "the handler's response does not serialize: answering 500");
            internal_error()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use aws_lambda_events::encodings::Body as LBody;

    use super::*;

    #[test]
    fn text_types() {
        assert!(is_text_content_type(Some(
            "application/json; charset=utf-8"
        )));
        assert!(is_text_content_type(Some("Text/Plain")));
        assert!(is_text_content_type(Some("application/xml")));
        assert!(!is_text_content_type(Some("application/octet-stream")));
        assert!(!is_text_content_type(Some(
            "application/x-www-form-urlencoded"
        )));
        assert!(!is_text_content_type(None));
    }

    #[test]
    fn responses() {
        let mut r = ApiGatewayV2httpResponse::default();
        r.status_code = 201;
        r.headers.insert("x-a", HeaderValue::from_static("1"));
        r.cookies = vec!["a=b".into()];
        r.body = Some(LBody::Text("{}".into()));
        let a = http_answer(&r);
        assert_eq!(a.status, StatusCode::CREATED);
        assert_eq!(a.headers["x-a"], "1");
        assert_eq!(a.headers["set-cookie"], "a=b");
        assert_eq!(a.body, b"{}");

        r.body = Some(LBody::Binary(vec![0, 255]));
        r.is_base64_encoded = true;
        assert_eq!(http_answer(&r).body, vec![0, 255]);

        r.status_code = 0;
        assert_eq!(http_answer(&r).status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn domains() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8787"));
        assert_eq!(domain_name(&h), "127.0.0.1");
        h.insert(header::HOST, HeaderValue::from_static("[::1]:8787"));
        assert_eq!(domain_name(&h), "[::1]");
        h.insert(header::HOST, HeaderValue::from_static("api.example.com"));
        assert_eq!(domain_name(&h), "api.example.com");
        assert_eq!(domain_prefix("api.example.com"), "api");
    }
}
