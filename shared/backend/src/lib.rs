//! # cipherpost-backend
//!
//! The server's service layer (what each request does) and its adapters: the DynamoDB
//! [`store`], WebSocket [`push`] through the API Gateway management API, configuration from the
//! environment, request authentication and limits. The service layer takes a transport-neutral
//! [`HttpRequest`] and answers an [`HttpResponse`]; it never sees a Lambda event (the function
//! crates translate).

pub mod api;
mod auth;
pub mod config;
mod error;
pub mod http;
pub mod push;
mod service;
pub mod store;

use std::time::{SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, SdkConfig};

pub use crate::{
    config::{Config, ConfigError, RateLimits},
    error::ApiError,
    http::{HttpRequest, HttpResponse},
    push::{PushOutcome, Pusher},
    store::Store,
};

/// The backend's shared state: configuration and SDK clients, built once per process (a Lambda
/// cold start) and passed by reference to every handler.
#[derive(Clone, Debug)]
pub struct Backend {
    /// The configuration.
    pub config: Config,
    /// The DynamoDB store.
    pub store: Store,
    /// WebSocket pushes.
    pub pusher: Pusher,
    /// S3, for attachments.
    pub s3: aws_sdk_s3::Client,
}

impl Backend {
    /// Reads the configuration and the AWS SDK settings (region, credentials, `AWS_ENDPOINT_URL`)
    /// from the environment and builds the clients.
    pub async fn from_env() -> Result<Self, ConfigError> {
        let config = Config::from_env()?;
        let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
        Ok(Self::new(config, &sdk))
    }

    /// Builds the clients from an SDK configuration.
    pub fn new(config: Config, sdk: &SdkConfig) -> Self {
        let dynamo = aws_sdk_dynamodb::Client::new(sdk);
        // Local endpoints (moto, LocalStack) need path-style addressing; on AWS the default
        // virtual-hosted style is kept.
        let local = std::env::var_os("AWS_ENDPOINT_URL").is_some()
            || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(sdk)
                .force_path_style(local)
                .build(),
        );
        let pusher = Pusher::new(config.ws_endpoint.as_ref().map(|endpoint| {
            aws_sdk_apigatewaymanagement::Client::from_conf(
                aws_sdk_apigatewaymanagement::config::Builder::from(sdk)
                    .endpoint_url(endpoint)
                    .build(),
            )
        }));
        let store = Store::new(dynamo, config.tables.clone());
        Self {
            config,
            store,
            pusher,
            s3,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
