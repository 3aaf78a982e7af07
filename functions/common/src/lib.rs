//! What every cipherpost function shares: turning API Gateway events into the backend's
//! transport-neutral requests and its answers back into API Gateway responses, the logging
//! set-up (JSON in Lambda, readable locally), and the runtime loop with clients built once.

use std::future::Future;

use aws_lambda_events::{
    apigw::{
        ApiGatewayProxyResponse, ApiGatewayV2httpRequest, ApiGatewayV2httpResponse,
        ApiGatewayWebsocketProxyRequest,
    },
    encodings::Body,
};
use base64::{engine::general_purpose::STANDARD, Engine};
use cipherpost_backend::{ApiError, Backend, HttpRequest, HttpResponse};
use http::{header, HeaderMap, HeaderValue};
use lambda_runtime::{service_fn, LambdaEvent};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use aws_lambda_events;
pub use cipherpost_backend;

/// Translates an HTTP API (payload 2.0) event. The path is taken from `/v1/` on, so a stage or
/// custom-domain base path never reaches the signature check.
pub fn http_request(event: &ApiGatewayV2httpRequest) -> Result<HttpRequest, ApiError> {
    let raw_path = event
        .raw_path
        .clone()
        .or_else(|| event.request_context.http.path.clone())
        .unwrap_or_default();
    let path = match raw_path.find("/v1/") {
        Some(i) => raw_path[i..].to_owned(),
        None => raw_path,
    };
    let body = match &event.body {
        None => Vec::new(),
        Some(b) if event.is_base64_encoded => STANDARD
            .decode(b)
            .map_err(|_| ApiError::bad_request("invalid_body", "the body is not valid base64"))?,
        Some(b) => b.clone().into_bytes(),
    };
    Ok(HttpRequest {
        method: event
            .request_context
            .http
            .method
            .as_str()
            .to_ascii_uppercase(),
        path,
        query: event.raw_query_string.clone().unwrap_or_default(),
        authorization: event
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body,
    })
}

fn json_headers(retry_after: Option<u64>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(s) = retry_after {
        if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
            h.insert(header::RETRY_AFTER, v);
        }
    }
    h
}

/// Translates a backend answer into an HTTP API response.
pub fn http_response(r: HttpResponse) -> ApiGatewayV2httpResponse {
    let mut out = ApiGatewayV2httpResponse::default();
    out.status_code = i64::from(r.status);
    if r.status == 204 {
        // No Content: no body and no content type.
        return out;
    }
    out.headers = json_headers(r.retry_after);
    out.body = Some(Body::Text(r.body.to_string()));
    out
}

/// Translates a backend answer into a WebSocket route response.
pub fn ws_response(r: HttpResponse) -> ApiGatewayProxyResponse {
    let mut out = ApiGatewayProxyResponse::default();
    out.status_code = i64::from(r.status);
    out.headers = json_headers(r.retry_after);
    out.body = Some(Body::Text(r.body.to_string()));
    out
}

/// Runs an HTTP route handler: event in, the backend's answer out; a bad event is a 400.
pub async fn handle_http<'a, F, Fut>(
    event: ApiGatewayV2httpRequest,
    f: F,
) -> ApiGatewayV2httpResponse
where
    F: FnOnce(HttpRequest) -> Fut,
    Fut: Future<Output = HttpResponse> + 'a,
{
    let response = match http_request(&event) {
        Ok(req) => f(req).await,
        Err(e) => e.into(),
    };
    if response.status >= 500 {
        tracing::error!(status = response.status, body = %response.body, "request failed");
    }
    http_response(response)
}

/// The connect query string in the order PROTOCOL.md signs it, rebuilt from API Gateway's
/// parameter map (API Gateway passes WebSocket query parameters only as a map).
pub fn connect_query(event: &ApiGatewayWebsocketProxyRequest) -> String {
    ["user", "device", "ts", "nonce", "sig"]
        .iter()
        .filter_map(|k| {
            event
                .query_string_parameters
                .first(k)
                .map(|v| format!("{k}={v}"))
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The connection id of a WebSocket event.
pub fn connection_id(event: &ApiGatewayWebsocketProxyRequest) -> Option<&str> {
    event.request_context.connection_id.as_deref()
}

/// Logging: JSON lines in Lambda (CloudWatch), readable text elsewhere; `RUST_LOG` filters.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() {
        builder
            .json()
            .with_current_span(false)
            .without_time()
            .try_init()
    } else {
        builder.try_init()
    };
    // Already initialised (tests, or the local gateway hosting several functions): fine.
    let _ = result;
}

/// The runtime loop of a function: builds the backend once (cold start) and serves events.
pub async fn run<E, R, F, Fut>(handler: F) -> Result<(), lambda_runtime::Error>
where
    E: DeserializeOwned + Send + 'static,
    R: serde::Serialize + Send + 'static,
    F: Fn(&'static Backend, E) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = R> + Send,
{
    init_tracing();
    let backend: &'static Backend = Box::leak(Box::new(Backend::from_env().await?));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<E>| {
        let handler = handler.clone();
        async move { Ok::<R, lambda_runtime::Error>(handler(backend, event.payload).await) }
    }))
    .await
}

/// A JSON value for tests and tools: the body of an HTTP API response.
pub fn response_json(r: &ApiGatewayV2httpResponse) -> Value {
    match &r.body {
        Some(Body::Text(t)) => serde_json::from_str(t).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}
