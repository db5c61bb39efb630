//! Helpers shared by the integration tests: groups of real nodes, file helpers, tree
//! snapshots, a TCP forwarder that gives a node a second address, a runner for the real
//! binary that cannot hang, and waits for a condition with a deadline.
//!
//! Nothing here sleeps to synchronise: every wait is on an event (a task, a channel, a
//! child process) or polls a condition, with a deadline that fails the test.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

mod addresses;
mod binary;
mod config;
mod engine;
mod faults;
mod files;
mod forwarder;
mod group;
mod running;
mod snapshot;
mod wait;

// For the same reason, each uses a different subset of these modules.
#[allow(unused_imports)]
pub use self::{
    addresses::*, binary::*, config::*, engine::*, faults::*, files::*, forwarder::*, group::*,
    running::*, snapshot::*, wait::*,
};
