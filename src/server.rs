//! The HTTPS API every node serves: an axum router (testable without a socket) and the
//! mutual-TLS listener in front of it.
//!
//! It serves the daemon's shared state, [`crate::node::Node`], and keeps none of its
//! own. It is split in three: `routes` owns the handlers and how their refusals become
//! statuses ([`router`], [`ApiError`]); `body` streams a request's body to a blocking
//! reader; and `listener` binds, accepts and limits connections ([`bind`], [`serve`]).
//! This module keeps only what the listener tells the router of each client. Every
//! refusal is logged with the client's address.

use std::net::SocketAddr;
use std::sync::Arc;

mod body;
mod listener;
mod routes;

pub use listener::{bind, serve};
pub use routes::{router, ApiError};

/// The client's address, attached to each request by the listener.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// Who the client's certificate names (subject and alternative names), attached to each
/// request by the listener, for logs.
#[derive(Clone, Debug)]
pub struct ClientSubject(pub Arc<str>);
