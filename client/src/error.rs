//! Errors a person can act on.

/// Everything the client can fail with. `Display` is the message shown to the user.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached (the outbox keeps unsent messages).
    #[error("cannot reach the server at {endpoint}: {reason}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The server refused a request.
    #[error("the server refused the request ({status} {code}): {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The `error` code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The local store failed.
    #[error("the local store failed: {0}")]
    Store(#[from] rusqlite::Error),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The profile has no account.
    #[error("this profile has no account yet: run `cipherpost register USER` or `cipherpost link request USER`")]
    NotRegistered,
    /// The profile is waiting for its link to be approved.
    #[error("this device is not linked yet: approve the link code on another device, then run `cipherpost sync`")]
    NotLinked,
    /// The user asked for something impossible.
    #[error("{0}")]
    Usage(String),
    /// A contact's account key changed without a signed rotation.
    #[error("the account key of {0} changed: nothing is sent to {0} until you compare safety numbers (`cipherpost verify {0}`) and accept it (`cipherpost verify {0} --accept`)")]
    KeyChanged(String),
    /// The account does not exist (the server has no keys for it).
    #[error("there is no account {0}")]
    NoSuchAccount(String),
    /// The keys the server gave for an account do not verify (not a plain key change, which
    /// is [`ClientError::KeyChanged`]): nothing is sent to it, and the next refresh checks
    /// again.
    #[error("the keys the server gave for {user} do not verify ({reason}); nothing is sent to {user} until they do")]
    KeysInvalid {
        /// The account.
        user: String,
        /// Why.
        reason: String,
    },
    /// A received payload was not understood.
    #[error("{0}")]
    Content(String),
    /// Cryptographic failure (protocol crate).
    #[error("{0}")]
    Protocol(String),
    /// A bug or corrupt state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ClientError {
    /// The process exit code for this error (documented in the README).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) | Self::NoSuchAccount(_) => 2,
            Self::Unreachable { .. } => 3,
            Self::Server { .. } => 4,
            Self::KeyChanged(_) | Self::KeysInvalid { .. } => 5,
            Self::NotRegistered | Self::NotLinked => 6,
            Self::Store(_) | Self::Io(_) => 7,
            _ => 1,
        }
    }

    pub(crate) fn protocol(e: impl std::fmt::Display) -> Self {
        Self::Protocol(e.to_string())
    }
}
