//! The JSON of the HTTP API: the shared [`cipherpost_api`] crate (no AWS dependency, so the CLI
//! does not compile the SDK the backend links).

pub use cipherpost_api::*;
