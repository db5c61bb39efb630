//! gosyncd keeps configuration directories identical on every server of a group.
//!
//! Data flows one way: [`config`] -> [`sync`] (scan, fetch manifests, [`plan`], push) on
//! the sending side; [`server`] -> [`apply`] on the receiving side.

pub mod access;
pub mod apply;
pub mod backup;
pub mod certgen;
pub mod certs;
pub mod cli;
pub mod client;
pub mod config;
pub mod diff;
pub mod group;
pub mod hooks;
pub mod manifest;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod paths;
pub mod plan;
pub mod protocol;
pub mod reconcile;
pub(crate) mod rollback;
pub mod server;
pub mod sync;
pub mod tls;
pub mod tree;

pub mod baseline;
pub mod daemon;
#[cfg(test)]
mod testing;
pub mod watcher;
