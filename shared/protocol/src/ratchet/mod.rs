//! The Double Ratchet (PROTOCOL.md, "Double Ratchet"), split as vodozemac splits it: root
//! key, chain key, message key, and the ratchet state that ties them together.

mod chain;
mod message_key;
mod root;
mod state;

pub(crate) use self::state::Ratchet;
