//! The `attachments` Lambda: SDK clients built once, then events served by
//! [`cipherpost_fn_attachments::handler`].
#![recursion_limit = "256"]

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    cipherpost_lambda::run(cipherpost_fn_attachments::handler).await
}
