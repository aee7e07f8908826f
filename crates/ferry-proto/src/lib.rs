//! The local protocol between ferry clients and the `ferryd` daemon.
//!
//! Wire types are a compatibility boundary: they are kept apart from the daemon's database
//! rows and the engine's types, and `docs/PROTOCOL.md` describes them for clients in other
//! languages.
//!
//! # Frames and order
//! Every message is one frame ([`frame`]): a 4-byte big-endian length, then JSON. The client
//! speaks first with [`ClientFrame::Hello`]; the daemon answers [`ServerFrame::Welcome`] or an
//! [`ServerFrame::Error`] and closes. Then the client sends [`ClientFrame::Request`]s, each
//! with an id of its choosing; the daemon answers each with a [`ServerFrame::Response`] or
//! [`ServerFrame::Error`] carrying the same id. After an `attach`, [`ServerFrame::Event`]s
//! for that session arrive between responses, in order.
//!
//! # Unknown messages
//! A frame that is not valid JSON of a known message closes the connection after an error
//! frame (code `malformed_frame`); unknown fields inside known messages are ignored, so
//! later versions can add fields.
//!
//! # Trust boundary
//! The socket is `0600` in a `0700` folder and the daemon checks the peer's uid on every
//! connection; everything a client sends is still validated as untrusted input.

pub mod frame;
mod message;
mod secrets;

pub use message::*;
pub use secrets::{hide_url_password, hide_url_passwords, without_url_password};

/// The protocol version this crate speaks; sent in `hello` and `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Compatible additions to protocol version 1, counted: a client may use an addition only
/// with a daemon whose `welcome` names this revision or a later one. A daemon that does not
/// know a request closes the connection (`malformed_frame`), so a newer client talking to an
/// older daemon still running must check first.
///
/// - 0: the protocol as first published (daemons before revisions send none).
/// - 1: `get_tasks`, the tombstones of removed tasks, `set_rate_limit`.
/// - 2: the session options `retry`, `waits_for_connectivity`, `user_agent`,
///   `allow_insecure_redirects` and `tls` (a daemon before them ignores them, so a client
///   must not attach with any of them set to other than its default).
pub const PROTOCOL_REVISION: u32 = 2;
