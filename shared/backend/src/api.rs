//! The JSON of every request and response: the shared [`cipherpost_api`] crate, so that server
//! and client read and write the same types.

pub use cipherpost_api::*;
