//! The `ws-disconnect` function: the WebSocket API's `$disconnect` route.

use cipherpost_lambda::{
    aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest},
    cipherpost_backend::{ApiError, Backend},
    connection_id, ws_response,
};

/// Handles one `$disconnect` event.
pub async fn handler(
    backend: &Backend,
    event: ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let Some(id) = connection_id(&event) else {
        return ws_response(
            ApiError::bad_request("invalid_event", "the event has no connection id").into(),
        );
    };
    ws_response(backend.disconnect(id).await)
}
