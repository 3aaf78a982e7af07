//! The `attachments` function: API Gateway HTTP API (payload 2.0) events for its routes in,
//! responses out, the work done by [`Backend::attachments`].

use cipherpost_lambda::{
    aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse},
    cipherpost_backend::Backend,
    handle_http,
};

/// Handles one event.
pub async fn handler(
    backend: &Backend,
    event: ApiGatewayV2httpRequest,
) -> ApiGatewayV2httpResponse {
    handle_http(event, |req| async move { backend.attachments(&req).await }).await
}
