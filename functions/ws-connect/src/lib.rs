//! The `ws-connect` function: the WebSocket API's `$connect` route. A non-2xx answer makes API
//! Gateway refuse the upgrade.

use cipherpost_lambda::{
    aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest},
    cipherpost_backend::{ApiError, Backend},
    connect_query, connection_id, ws_response,
};

/// Handles one `$connect` event.
pub async fn handler(
    backend: &Backend,
    event: ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let Some(id) = connection_id(&event) else {
        return ws_response(
            ApiError::bad_request("invalid_event", "the event has no connection id").into(),
        );
    };
    ws_response(backend.connect(&connect_query(&event), id).await)
}
