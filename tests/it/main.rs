//! The integration tests: real daemons on loopback addresses, with real TLS and real
//! files, and the real binary where a test needs a process of its own. One test binary,
//! so that the crate and the helpers in `common/` are built and linked once; each module
//! is one theme.

mod common;

mod actions;
mod cert;
mod cli;
mod conflicts;
mod convergence;
mod faults;
mod faults_convergence;
mod group_status;
mod levels;
mod limits;
mod on_conflict;
mod operations;
mod packaging;
mod receive_only;
mod receiver;
mod reload;
mod rollout;
mod service;
mod streaming;
mod sync;
mod tls;
mod tls_mistakes;
mod trust;
mod watch;
mod watch_complete;
mod watch_peers;
mod watch_robustness;
